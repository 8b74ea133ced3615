#!/usr/bin/env bash
# The other CPU engines bench/cpu_engine.py measures against the project's (scripts/cpu_engine.sh), each in its own
# venv under the cache dir; none of them is used by the app.
#
#   scripts/cpu_candidates.sh llamacpp   # llama.cpp as the ik_llama.cpp fork's prebuilt wheel (ik-llama-cpp-python:
#                                        # libllama + a ctypes API + llama-quantize; llama-cpp-python is source only
#                                        # and takes 25+ min to build here), plus its converter's deps (~2 min)
#   scripts/cpu_candidates.sh ovgenai    # OpenVINO GenAI + optimum-intel (export with NNCF int8/int4) (~2 min)
#
# Each writes install.json ({"seconds", "bytes"}) into its folder. Env: MEDADAPT_CANDIDATES_DIR
# (default ~/.cache/medadapt/candidates).
set -euo pipefail
DIR="${MEDADAPT_CANDIDATES_DIR:-$HOME/.cache/medadapt/candidates}"
IK_LLAMA_CPP_PYTHON=0.1.5
GGUF=0.19.0
OV=2026.4.1

record() {  # record <folder> <start seconds>
  local secs=$(( $(date +%s) - $2 )) bytes
  bytes=$(du -sb "$1" | cut -f1)
  printf '{"seconds": %s, "bytes": %s}\n' "$secs" "$bytes" > "$1/install.json"
  echo "installed $1 in ${secs} s, $(( bytes / 1048576 )) MiB"
}

llamacpp() {
  local root="$DIR/llamacpp" t0
  if [ -x "$root/venv/bin/python" ] && "$root/venv/bin/python" -c "import ik_llama_cpp, gguf, torch" 2>/dev/null; then
    echo "llama.cpp (ik_llama.cpp) ready: $root"; return 0
  fi
  t0=$(date +%s)
  rm -rf "$root" && mkdir -p "$root"
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q --upgrade pip
  # the runtime: libllama/libggml (AVX2), a ctypes API, llama-quantize and convert_hf_to_gguf.py (in venv/bin)
  "$root/venv/bin/pip" install -q "ik-llama-cpp-python==$IK_LLAMA_CPP_PYTHON"
  # what the converter imports (it ships no LoRA converter: bench/llamacpp_worker.py writes GGUF LoRAs with gguf)
  "$root/venv/bin/pip" install -q torch==2.13.0
  "$root/venv/bin/pip" install -q "gguf==$GGUF" "transformers==5.5.4" safetensors sentencepiece protobuf
  record "$root" "$t0"
}

ovgenai() {
  local root="$DIR/ovgenai" t0
  if [ -x "$root/venv/bin/python" ] && "$root/venv/bin/python" -c "import openvino_genai, optimum.intel" 2>/dev/null; then
    echo "OpenVINO GenAI ready: $root"; return 0
  fi
  t0=$(date +%s)
  rm -rf "$root" && mkdir -p "$root"
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q --upgrade pip
  "$root/venv/bin/pip" install -q torch==2.13.0
  # optimum-intel wants torchvision (not used for text models; it would pull another torch): its other deps by hand
  "$root/venv/bin/pip" install -q "openvino==$OV" "openvino-genai==$OV.0" "openvino-tokenizers==$OV.0" nncf==3.4.0 \
    "optimum~=2.3.0" "transformers==5.5.4" "huggingface-hub<1.22" "requests>=2.33,<3" setuptools safetensors
  "$root/venv/bin/pip" install -q --no-deps optimum-intel==2.2.0
  record "$root" "$t0"
}

case "${1:-}" in
  llamacpp) llamacpp ;;
  ovgenai) ovgenai ;;
  *) echo "usage: $0 llamacpp | ovgenai" >&2; exit 2 ;;
esac
