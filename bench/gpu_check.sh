#!/usr/bin/env bash
# GPU checks for the reference path on a CUDA machine (one command; nothing from the Hub or a data dir is needed):
# QLoRA 4-bit training steps, Unsloth where its wheels install, the engine's bf16 batched decode, packed vs padded
# tokens/s. Each check prints one `RESULT ...` line (bench/gpu_check.py has the details).
#   bash bench/gpu_check.sh            # in a venv with requirements.txt (+ requirements-gpu.txt)
#   UNSLOTH_VENV=1 bash bench/gpu_check.sh   # also try Unsloth's working pair in a separate venv (needs PyPI)
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "RESULT cuda=0"
python -c "import bitsandbytes" 2>/dev/null || pip install -q -r requirements-gpu.txt
python bench/gpu_check.py --which qlora,decode,packing "$@"
if python -c "import unsloth" 2>/dev/null; then
  python bench/gpu_check.py --which unsloth "$@"
elif [ "${UNSLOTH_VENV:-0}" = 1 ]; then
  # the documented working pair (requirements-gpu.txt): its own venv, the project's code on top
  python -m venv /tmp/unsloth-venv && . /tmp/unsloth-venv/bin/activate \
    && pip install -q -r requirements.txt "unsloth==2026.10.9" "unsloth_zoo==2026.10.9" \
         "transformers==5.17.0" "trl==1.15.0" "datasets>=4.3,<5" \
    && python bench/gpu_check.py --which unsloth "$@" || echo "RESULT unsloth_ok=0 unsloth_error=install_failed"
else
  echo "RESULT unsloth_ok=0 unsloth_error=not_installed (UNSLOTH_VENV=1 tries the pair in requirements-gpu.txt)"
fi
