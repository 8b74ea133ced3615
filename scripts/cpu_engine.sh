#!/usr/bin/env bash
# The CPU engine (MEDADAPT_ENGINE=openvino, medadapt/serve/cpu_engine.py) in its own venv: OpenVINO runtime + NNCF weight
# compression, torch (tracing the graph, sampling) and transformers (the tokenizer), pinned apart from the app's env.
#
#   scripts/cpu_engine.sh setup                      # create the venv (once; ~1 min, ~1 GB)
#   scripts/cpu_engine.sh prepare [--profile P]      # convert the profile's model now (the app does it on first use)
#   scripts/cpu_engine.sh serve GRAPH_DIR MODEL_DIR PORT [NAME=ADAPTER_DIR ...]
#
# The app starts and stops the server itself; `serve` is for running it by hand (then MEDADAPT_CPU_ENGINE_URL=
# http://127.0.0.1:PORT). Env: MEDADAPT_CPU_ENGINE_VENV (default ~/.cache/medadapt/openvino-venv),
# MEDADAPT_CPU_ENGINE_THREADS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MEDADAPT_CPU_ENGINE_VENV:-$HOME/.cache/medadapt/openvino-venv}"
PINS=(openvino==2026.4.1 nncf==3.4.0 torch==2.13.0 "transformers==5.5.4" safetensors numpy)

setup() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openvino, nncf, torch, transformers" 2>/dev/null; then
    echo "CPU engine venv ready: $VENV"; return 0
  fi
  local t0; t0=$(date +%s)
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch==2.13.0 first and alone: it resolves to the CPU wheel, and the rest must not pull another build
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q "${PINS[@]}"
  "$VENV/bin/python" -c "import openvino, nncf; print('openvino', openvino.__version__, '| nncf', nncf.__version__)"
  local bytes; bytes=$(du -sb "$VENV" | cut -f1)
  printf '{"seconds": %s, "bytes": %s}\n' "$(( $(date +%s) - t0 ))" "$bytes" > "$VENV/install.json"  # bench/cpu_engine.py
}

case "${1:-}" in
  setup) setup ;;
  prepare) shift; cd "$ROOT"; exec python -m medadapt.serve.cpu_engine prepare "$@" ;;
  serve)
    shift
    graph="$1" model="$2" port="$3"; shift 3
    args=()
    for a in "$@"; do args+=(--adapter "$a"); done
    cd "$ROOT"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m medadapt.serve.openvino.server --graph "$graph" \
      --model "$model" --port "$port" --threads "${MEDADAPT_CPU_ENGINE_THREADS:-2}" \
      --cache-dir "$HOME/.cache/medadapt/ov-cache" "${args[@]}" ;;
  *) echo "usage: $0 setup | prepare [--profile P] | serve GRAPH_DIR MODEL_DIR PORT [NAME=ADAPTER_DIR ...]" >&2; exit 2 ;;
esac
