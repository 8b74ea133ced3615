#!/usr/bin/env bash
# The other CPU engines bench/cpu_engine.py measures against the project's (scripts/cpu_engine.sh), each in its own
# venv under the cache dir; none of them is used by the app.
#
#   scripts/cpu_candidates.sh llamacpp   # llama.cpp's llama-server + llama-quantize, built from the llama.cpp source
#                                        # that llama-cpp-python's sdist vendors (PyPI ships no built server for this
#                                        # platform), plus its converters' Python deps (~5-10 min on 2 cores)
#   scripts/cpu_candidates.sh ovgenai    # OpenVINO GenAI + optimum-intel (export with NNCF int8/int4) (~2 min)
#
# Each writes install.json ({"seconds", "bytes"}) into its folder. Env: MEDADAPT_CANDIDATES_DIR
# (default ~/.cache/medadapt/candidates).
set -euo pipefail
DIR="${MEDADAPT_CANDIDATES_DIR:-$HOME/.cache/medadapt/candidates}"
LLAMA_CPP_PYTHON=0.3.36
OV=2026.4.1

record() {  # record <folder> <start seconds>
  local secs=$(( $(date +%s) - $2 )) bytes
  bytes=$(du -sb "$1" | cut -f1)
  printf '{"seconds": %s, "bytes": %s}\n' "$secs" "$bytes" > "$1/install.json"
  echo "installed $1 in ${secs} s, $(( bytes / 1048576 )) MiB"
}

llamacpp() {
  local root="$DIR/llamacpp" t0
  if [ -x "$root/bin/llama-server" ] && [ -x "$root/venv/bin/python" ]; then echo "llama.cpp ready: $root"; return 0; fi
  t0=$(date +%s)
  rm -rf "$root" && mkdir -p "$root/src"
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q --upgrade pip
  "$root/venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$root/src"
  tar xzf "$root/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$root/src"
  local lc="$root/src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  cmake -S "$lc" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF > "$root/cmake.log"
  cmake --build "$root/build" --target llama-server llama-quantize -j"$(nproc)" > "$root/build.log"
  mkdir -p "$root/bin" && cp "$root/build/bin/llama-server" "$root/build/bin/llama-quantize" "$root/bin/"
  # the converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py) and their gguf-py, with what they import
  cp -r "$lc/convert_hf_to_gguf.py" "$lc/convert_lora_to_gguf.py" "$lc/gguf-py" "$lc/conversion" "$root/"
  "$root/venv/bin/pip" install -q torch==2.13.0
  "$root/venv/bin/pip" install -q "transformers==5.5.4" safetensors numpy sentencepiece protobuf pyyaml
  rm -rf "$root/build" "$root/src"
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
