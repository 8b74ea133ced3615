"""Memory and fidelity of serving a full fine-tuned model as a low-rank delta against the base (medadapt.delta).

The seed's published models are LoRA merges saved as full bfloat16 weights: MSFT = base + CPT (rank 8, embed_tokens
and lm_head trained whole) + SFT (rank 16), each merge rounded to bfloat16. This bench builds that shape of model
from the offline base (SmolLM2-135M-Instruct, real weights; the 1.5B reference model is not reachable here): random
LoRA factors of PEFT's init scale with trained-size B matrices, a perturbed embedding, both merges rounded to
bfloat16. It then extracts the delta at several ranks and reports, per rank, the adapter's size against a second full
model, the energy of the weight delta kept, and base + delta against the full model on a few medical prompts: argmax
next-token agreement and KL(full || delta) per position (``kl_base``: the full model's own KL from the base).

    python bench/delta_fidelity.py [--ranks 8,16,24,32,64]                                    # synthetic proxy
    python bench/delta_fidelity.py --base deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \
        --tuned MilyaShams/DeepSeek-R1-Distill-Qwen-1.5B-medical-msft-merged --ranks 24,64    # a real published model

With ``--tuned`` (a Hub id or a folder; the Hub when it answers, else the Hugging Face cache, as the app loads it) the
figures are those of that real model against ``--base`` (the profile's base by default); without it the proxy above.
Ends with ``RESULT source=<synthetic|real> rank_<r>_agree=... rank_<r>_kl=... rank_<r>_mb=... full_mb=...
kl_base=...``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "A 45-year-old man presents with crushing chest pain radiating to the left arm. The most likely diagnosis is",
    "Which vitamin deficiency causes megaloblastic anemia with neurological symptoms?",
    "The first-line treatment for uncomplicated community-acquired pneumonia in an adult is",
    "Primary hypothyroidism is characterized by a high TSH and a low free T4 because",
    "In diabetic ketoacidosis, the potassium level must be checked before insulin because",
    "The mechanism of action of aspirin is the irreversible inhibition of",
    "A child with a barking cough and inspiratory stridor most likely has",
    "Iron deficiency anemia in an elderly man should prompt an evaluation for",
]


def merge_lora(model, rank: int, scale: float, seed: int, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj")) -> None:
    """Add a random rank-``rank`` LoRA (rsLoRA scaling alpha/sqrt(r), alpha = 2r) to every target, in float32."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.rsplit(".", 1)[-1] in targets:
                out_f, in_f = mod.weight.shape
                a = (torch.rand(rank, in_f, generator=g) * 2 - 1) / in_f ** 0.5  # PEFT's kaiming-uniform scale
                b = torch.randn(out_f, rank, generator=g) * scale
                mod.weight += (2 * rank / rank ** 0.5) * (b @ a)


def bf16_round(model) -> None:
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def rank_sweep(base: Path, tuned: Path, work: Path, ranks: str, dtype: str, source: str,
               label: str = "") -> tuple[str, float]:
    """Extract the delta of ``tuned`` against ``base`` at each of ``ranks`` (comma-separated) into ``work`` and print
    a line a rank (``label`` first); returns the RESULT line's rank fields and the full model's KL from the base."""
    from medadapt.delta import extract_delta, fidelity

    results, kl_base = {}, None
    for r in (int(x) for x in ranks.split(",")):
        out = work / f"delta-r{r}"
        t0 = time.perf_counter()
        report = extract_delta(base, tuned, out, r, dtype=dtype, source=source)
        secs = time.perf_counter() - t0
        mb = (out / "adapter_model.safetensors").stat().st_size / 2**20
        fid = fidelity(base, tuned, out, PROMPTS)
        kl_base = fid["kl_base"]
        results[r] = (fid["agree"], fid["kl"], mb)
        d = report["delta"]
        print(f"{label}rank {r:3d}: adapter {mb:7.1f} MB ({d['full_copies']} whole; not represented: "
              f"{len(d['unrepresented'])}), energy kept min {d['energy_kept_min']} mean {d['energy_kept_mean']}, "
              f"extract {secs:.1f} s, agree {fid['agree']:.4f}, KL {fid['kl']:.5f} nats (full vs base "
              f"{fid['kl_base']:.4f}, {fid['positions']} positions)", flush=True)
    fields = " ".join(f"rank_{r}_agree={a:.4f} rank_{r}_kl={k:.5f} rank_{r}_mb={m:.1f}"
                      for r, (a, k, m) in results.items())
    return fields, kl_base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="8,16,24,32,64")
    ap.add_argument("--scale", type=float, default=0.01, help="std of the LoRA B entries (trained adapters: ~1e-2)")
    ap.add_argument("--tuned", help="a real full fine-tuned model (Hub id or folder) instead of the synthetic proxy")
    ap.add_argument("--base", help="its base model (Hub id or folder; default: the --profile's base model)")
    ap.add_argument("--profile", default="reference", help="with --tuned: the profile whose base is the default")
    ap.add_argument("--dtype", default="bfloat16", help="with --tuned: the delta's stored dtype")
    args = ap.parse_args()
    if args.tuned:
        return real(args)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medadapt.config import load_config
    from medadapt.models import base_model_path

    torch.set_num_threads(1)
    base = base_model_path(load_config("offline"))
    work = Path(tempfile.mkdtemp(prefix="delta-bench-"))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    bf16_round(model)  # the base as the seed merged into it: bfloat16 weights
    base_bf16 = work / "base"
    model.save_pretrained(base_bf16)
    AutoTokenizer.from_pretrained(base).save_pretrained(base_bf16)
    merge_lora(model, 8, args.scale, 1)  # CPT: r8 ...
    with torch.no_grad():  # ... with embed_tokens (tied to lm_head here) trained whole at a small lr
        emb = model.get_input_embeddings().weight
        emb += 0.002 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(3))
    bf16_round(model)
    merge_lora(model, 16, args.scale, 2)  # SFT: a fresh r16 on the merged CPT model
    bf16_round(model)
    tuned = work / "msft-merged"
    model.save_pretrained(tuned)
    AutoTokenizer.from_pretrained(base).save_pretrained(tuned)
    full_mb = sum(p.numel() for p in model.parameters()) * 2 / 2**20  # a second bf16 copy of the model
    fields, kl_base = rank_sweep(base_bf16, tuned, work, args.ranks, "bfloat16", "bench")
    print(f"RESULT source=synthetic {fields} full_mb={full_mb:.1f} kl_base={kl_base:.4f}")
    return 0


def real(args: argparse.Namespace) -> int:
    """The same figures for a real published model against its real base (downloaded or from the HF cache)."""
    from medadapt.adapters import model_folder_of
    from medadapt.config import load_config
    from medadapt.models import base_model_path

    base = model_folder_of(args.base or base_model_path(load_config(args.profile)))
    tuned = model_folder_of(args.tuned)
    full_mb = sum(f.stat().st_size for f in tuned.glob("*.safetensors")) / 2**20
    work = Path(tempfile.mkdtemp(prefix="delta-real-"))
    fields, kl_base = rank_sweep(base, tuned, work, args.ranks, args.dtype, args.tuned, f"{args.tuned} ")
    print(f"RESULT source=real model={args.tuned} {fields} full_mb={full_mb:.1f} kl_base={kl_base:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
