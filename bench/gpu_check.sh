#!/usr/bin/env bash
# GPU checks of the reference path on a bare, offline CUDA machine, in one shot (bench/gpu_check.py has the checks;
# each prints one `RESULT ...` line). Nothing is fetched: the wheels the machine's image lacks travel in .whl/
# (made here beforehand by `python scripts/gpu_wheels.py`, which also proves the set complete for the image) and are
# installed with --no-index --no-deps into a temporary site dir that goes first on PYTHONPATH.
#   python scripts/gpu_wheels.py                  # here: download, trim, resolve, size (git-ignored .whl/)
#   bash bench/gpu_check.sh                       # there (device tool: carry .whl), under 8 minutes on one H100
#   bash bench/gpu_check.sh --which qlora,decode  # a subset; other flags go to bench/gpu_check.py
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 WANDB_MODE=disabled \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
SITE="$(mktemp -d /tmp/medadapt-site.XXXXXX)"
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl; then
    echo "RESULT wheels_installed=$(ls .whl/*.whl | wc -l) site=$SITE"
  else
    echo "RESULT wheels_installed=0 (pip --no-index --no-deps failed; see above)"
  fi
else
  echo "RESULT wheels_installed=0 (no .whl/: run python scripts/gpu_wheels.py here first)"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the image's own package list, for bench/device_packages.txt (and $OUT when the device tool runs this)
"$PY" -m pip list --format=freeze 2>/dev/null > "${OUT:-/tmp}/device_pip_list.txt" || true
# are the carried wheels' requirements met by the image? (what the dry check here assumed)
"$PY" - <<'EOF'
import importlib.metadata as md, re, pathlib
from packaging.requirements import Requirement
unmet = []
for whl in sorted(pathlib.Path(".whl").glob("*.whl")):
    name = whl.name.split("-")[0]
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        unmet.append(f"{name}:not_installed"); continue
    for r in map(Requirement, reqs):
        if r.marker and not r.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(r.name)
        except md.PackageNotFoundError:
            unmet.append(f"{name}->{r.name}:missing"); continue
        if r.specifier and not r.specifier.contains(have, prereleases=True):
            unmet.append(f"{name}->{r.name}{r.specifier}:has_{have}")
print(f"RESULT deps_ok={int(not unmet)} deps_unmet={','.join(unmet) or 'none'}")
EOF
TOK=""
[ -d .whl/r1-tokenizer ] && TOK="--tokenizer .whl/r1-tokenizer"
# shellcheck disable=SC2086
"$PY" bench/gpu_check.py $TOK "$@"
