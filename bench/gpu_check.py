"""GPU checks for the reference path, self-contained (no Hub, no data dir): run by ``bench/gpu_check.sh``.

Builds a small random Qwen2 (the DeepSeek-R1-Distill architecture and chat template, a byte-level BPE trained here on
the fixture corpus) and measures, each as its own ``RESULT`` line:

- ``qlora``: 4-bit NF4 QLoRA training steps through the trainers' own loader (``trainers.common.load_trainable``,
  bitsandbytes, paged 8-bit AdamW): tokens/s, peak memory, finite loss;
- ``unsloth``: the same with Unsloth where it imports (``unsloth_ok=0`` and the reason otherwise);
- ``decode``: the engine's batched mixed-adapter decode in bfloat16 (base + a delta adapter rows in one batch);
- ``packing``: packed vs padded CPT batches (issue #4), useful tokens/s on CUDA.

    python bench/gpu_check.py [--which qlora,unsloth,decode,packing] [--hidden 512 --layers 8]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMPLATE = ROOT / "tests" / "fixtures" / "r1_distill_chat_template.jinja"


def corpus_texts() -> list[str]:
    texts = []
    for path in sorted((ROOT / "tests" / "fixtures").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            for key in ("contents", "question", "Question", "Complex_CoT", "exp"):
                if isinstance(rec.get(key), str):
                    texts.append(rec[key])
    return texts


def build_model(out: Path, hidden: int, layers: int) -> str:
    """A random Qwen2 with a BPE tokenizer trained on the fixtures, R1's special tokens and chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus_texts() * 4, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=specials[0], eos_token=specials[1],
                                  pad_token=specials[2], additional_special_tokens=specials[3:])
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = TEMPLATE.read_text(encoding="utf-8").rstrip("\n")
    torch.manual_seed(0)
    heads = max(2, hidden // 64)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def batches(tok, n: int, rows: int, length: int, packed: bool, seed: int = 0) -> list[dict]:
    """CPT batches of the fixture texts: packed blocks, or one padded example per text (trainers.formatting)."""
    from trainers.formatting import PadCollator, cpt_examples

    texts = corpus_texts()
    random.Random(seed).shuffle(texts)
    texts = texts * math.ceil(n * rows * (8 if packed else 1) / max(1, len(texts)))
    ex = cpt_examples(tok, texts, length, packing=packed)[: n * rows]
    collate = PadCollator(tok.pad_token_id)
    return [collate(ex[i:i + rows]) for i in range(0, n * rows, rows)]


def train_steps(model, opt, data: list[dict], device: str) -> tuple[float, int, float]:
    """(seconds, useful tokens, last loss) over ``data`` after one warm-up step."""
    import torch

    secs = tokens = 0
    loss = float("nan")
    for i, batch in enumerate(data):
        batch = {k: v.to(device) for k, v in batch.items()}
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        torch.cuda.synchronize()
        if i:
            secs += time.perf_counter() - t0
            tokens += int(batch["attention_mask"].sum())
        loss = float(out.loss)
    return secs, tokens, loss


def check_qlora(path: str, unsloth: bool, steps: int) -> str:
    import torch

    from medadapt.config import TrainConfig
    from trainers.common import load_trainable, runtime

    name = "unsloth" if unsloth else "qlora"
    tcfg = TrainConfig(job="sft", load_in_4bit=True, use_unsloth="true" if unsloth else "false", max_length=512,
                       base_model=path)
    try:
        rt = runtime(tcfg)  # CUDA, 4-bit, Unsloth as asked; precision auto: bf16 where the GPU has it
        torch.cuda.reset_peak_memory_stats()
        model, tok = load_trainable(tcfg, path, rt)
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        secs, tokens, loss = train_steps(model, opt, batches(tok, steps + 1, 8, 512, packed=True), "cuda")
        four_bit = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
        peak = torch.cuda.max_memory_allocated() / 2**20
        return (f"RESULT {name}_ok=1 {name}_tokens_per_s={tokens / secs:.0f} {name}_peak_mb={peak:.0f} "
                f"{name}_loss={loss:.3f} {name}_linear4bit={four_bit} {name}_loss_finite={int(math.isfinite(loss))}")
    except Exception as e:  # noqa: BLE001 — report and go on to the next check
        traceback.print_exc()
        return f"RESULT {name}_ok=0 {name}_error={type(e).__name__}:{str(e)[:80].replace(' ', '_')}"


def check_decode(path: str, new_tokens: int) -> str:
    import torch

    from medadapt.delta import extract_delta
    from medadapt.engine import BASE, Engine, GenSettings
    from medadapt.prompts import build_messages

    work = Path(tempfile.mkdtemp(prefix="gpu-decode-"))
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        for layer in tuned.model.layers:
            w = layer.self_attn.q_proj.weight
            w += 0.02 * torch.randn(w.shape[0], 8) @ torch.randn(8, w.shape[1]) / w.shape[1] ** 0.5
    tuned.to(torch.bfloat16).save_pretrained(work / "tuned")
    extract_delta(path, work / "tuned", work / "delta", 8, dtype="bfloat16", device="cuda")
    engine = Engine(path, "bfloat16", reasoning_template=True, device="cuda", max_context=4096)
    engine.load_adapter("sft", work / "delta")
    qs = ["Which vitamin is only in animal food?", "What causes megaloblastic anemia?",
          "First-line drug for hypertension?", "Why check potassium before insulin in DKA?"] * 2
    reqs = [(build_messages(q, system_role=False), "sft" if i % 2 else BASE) for i, q in enumerate(qs)]
    settings = GenSettings(max_new_tokens=new_tokens, temperature=0.6, top_p=0.95, seed=0)
    list(engine.stream(reqs[:2], GenSettings(max_new_tokens=8)))  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    final = []
    for final in engine.stream(reqs, settings):
        pass
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    n = sum(r.n_tokens for r in final)
    return (f"RESULT decode_rows={len(reqs)} decode_tokens={n} decode_tokens_per_s={n / secs:.0f} "
            f"decode_dtype=bfloat16 decode_opens_think={int(engine.prompt_opens_think())}")


def check_packing(path: str, steps: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medadapt.models import load_tokenizer

    tok = load_tokenizer(path)
    out = {}
    for packed in (False, True):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        data = batches(tok, steps + 1, 8, 1024, packed)
        secs, tokens, _ = train_steps(model, opt, data, "cuda")
        nonpad = sum(int(b["attention_mask"].sum()) for b in data) / sum(b["attention_mask"].numel() for b in data)
        out[packed] = (tokens / secs, nonpad)
    return (f"RESULT packing_padded_tokens_per_s={out[False][0]:.0f} packing_packed_tokens_per_s={out[True][0]:.0f} "
            f"packing_speedup={out[True][0] / out[False][0]:.2f} packing_padded_nonpad={out[False][1]:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", default="qlora,unsloth,decode,packing")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--new_tokens", type=int, default=128)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("RESULT cuda=0 (no CUDA device: nothing measured)")
        return 1
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    path = build_model(Path(tempfile.mkdtemp(prefix="gpu-check-")), args.hidden, args.layers)
    which = args.which.split(",")
    checks = {"qlora": lambda: check_qlora(path, False, args.steps),
              "unsloth": lambda: check_qlora(path, True, args.steps),
              "decode": lambda: check_decode(path, args.new_tokens),
              "packing": lambda: check_packing(path, args.steps)}
    for name in which:
        try:
            print(checks[name](), flush=True)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            print(f"RESULT {name}_ok=0 {name}_error={type(e).__name__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
