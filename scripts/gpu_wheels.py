"""Wheels for ``bench/gpu_check.sh`` on a lent GPU machine: bare, offline, Python 3.12, manylinux x86-64.

The machines' image (``bench/device_packages.txt``) has torch 2.11 (CUDA 13), transformers 5.17, accelerate,
sentence-transformers 6.0, numpy, pyarrow, ... but not bitsandbytes, pydantic or datasets, and nothing can be fetched
there. This script downloads here, into the git-ignored ``.whl/``, what the checks import that the image lacks or
holds at another version than ``requirements.txt`` pins (:data:`CARRY`), trims bitsandbytes to its CUDA 13 and CPU
libraries (its wheel holds one 4-27 MB library per CUDA/ROCm/XPU version), and puts the real R1 tokenizer
(:mod:`medadapt.r1_tokenizer`, ``tokenizer.json`` xz-compressed) in ``.whl/r1-tokenizer/``. Then it proves the set
complete with pip's own resolver: ``pip install --dry-run --no-index`` for Python 3.12 / manylinux x86-64 over the
carried wheels plus a stub wheel per device package (its version where the image's list has one, else assumed to be
this machine's, and said so), and prints what travels: the working tree plus ``.whl`` must stay under the device
tool's 64 MiB.

    python scripts/gpu_wheels.py            # download (once), trim, resolve, size; last line: RESULT ...
    python scripts/gpu_wheels.py --check    # resolve and size only (no download)

LanceDB (``lancedb==0.40.0``) is not carried: its native library is 185 MB (75 MB as a wheel, ~50 MB xz), more than
the whole budget leaves; ``--with lancedb`` tries and the size line says whether it fits.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WHEELS = ROOT / ".whl"
DEVICE_LIST = ROOT / "bench" / "device_packages.txt"
LIMIT_MB = 64.0  # the device tool: working tree + carried paths, one call
PYTHON, PLATFORMS = "3.12", ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
# name -> version: requirements.txt's pin, or (unpinned there) the version this machine's test suite runs with
PINNED = {"transformers": "5.24.0", "peft": "0.21.0", "datasets": "5.2.0", "bitsandbytes": "0.50.0",
          "sentence-transformers": "6.2.0", "lancedb": "0.40.0"}
CARRY = ("transformers", "peft", "datasets", "bitsandbytes", "sentence-transformers", "pydantic", "pydantic-core",
         "annotated-types", "typing-inspection", "dill", "multiprocess")
OPTIONAL = {"lancedb": ("lancedb", "deprecation", "lance-namespace", "lance-namespace-urllib3-client")}
# what bench/gpu_check.py imports (directly or through medadapt/trainers): resolved for the device
NEEDED = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "pydantic", "pyyaml", "numpy",
          "safetensors", "sentence-transformers", "psutil", "tokenizers", "huggingface-hub", "scipy")
BNB_KEEP = re.compile(r"bitsandbytes/libbitsandbytes_(cpu|cuda13\d)\.so$")  # torch cu130 on the image


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_of(name: str) -> str:
    return PINNED.get(name) or md.version(name)


def device_packages(path: Path = DEVICE_LIST) -> dict[str, str | None]:
    """``{name: version or None}`` of the device image's list (None: the version was not read there)."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            out[norm(name)] = ver or None
    return out


def download(names: list[str]) -> None:
    WHEELS.mkdir(exist_ok=True)
    for name in names:
        spec = f"{name}=={version_of(name)}"
        have = [p for p in WHEELS.glob("*.whl") if wheel_name(p) == (norm(name), version_of(name))]
        if have:
            continue
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               PYTHON, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d",
               str(WHEELS), spec]
        subprocess.run(cmd, check=True)


def wheel_name(path: Path) -> tuple[str, str]:
    dist, ver = path.name.split("-")[:2]
    return norm(dist), ver


def trim_bitsandbytes() -> None:
    """Rewrite the bitsandbytes wheel with only its CPU and CUDA 13 libraries (RECORD rewritten to match)."""
    for whl in WHEELS.glob("bitsandbytes-*.whl"):
        with zipfile.ZipFile(whl) as z:
            names = z.namelist()
            drop = [n for n in names if n.endswith(".so") and not BNB_KEEP.search(n)]
            if not drop:
                continue
            tmp = whl.with_suffix(".tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
                record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
                rows = []
                for n in names:
                    if n in drop or n == record_name:
                        continue
                    data = z.read(n)
                    out.writestr(z.getinfo(n), data)
                    digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                    rows.append(f"{n},sha256={digest},{len(data)}")
                out.writestr(record_name, "\n".join(rows + [f"{record_name},,"]) + "\n")
        tmp.replace(whl)
        print(f"trimmed {whl.name}: dropped {len(drop)} libraries (kept CPU and CUDA 13)")


def pack_tokenizer() -> Path:
    """The real R1 tokenizer folder in ``.whl/r1-tokenizer`` (``tokenizer.json`` as ``tokenizer.json.xz``)."""
    from medadapt.r1_tokenizer import r1_tokenizer_dir

    src, dst = r1_tokenizer_dir("hub"), WHEELS / "r1-tokenizer"
    if (dst / "tokenizer.json.xz").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "tokenizer.json":
            (dst / "tokenizer.json.xz").write_bytes(lzma.compress(f.read_bytes(), preset=9))
        elif f.is_file():
            shutil.copy2(f, dst / f.name)
    return dst


def stub_wheel(folder: Path, name: str, version: str) -> None:
    """A metadata-only wheel standing for a package the device already has."""
    dist = re.sub(r"[-.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: medadapt-stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as z:
        for k, v in files.items():
            z.writestr(k, v)


def resolve(needed: tuple[str, ...] = NEEDED, wheels: Path = WHEELS, device_list: Path = DEVICE_LIST) -> dict:
    """pip's dry-run resolution of ``needed`` for the device over the wheels in ``wheels`` and a stub per package of
    ``device_list``: ``{"ok", "carried", "device", "assumed", "unused", "duplicates", "error"}``."""
    device = device_packages(device_list)
    carried_wheels = {wheel_name(p): p for p in wheels.glob("*.whl")}
    carried_names = {n for n, _ in carried_wheels}
    assumed = []
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs"
        stubs.mkdir()
        for name, ver in device.items():
            if name in carried_names:
                continue  # the carried wheel shadows the image's copy (PYTHONPATH first)
            if ver is None:
                try:
                    ver = md.version(name)
                except md.PackageNotFoundError:
                    ver = "0"  # unknown here too: it satisfies no lower bound, so a need for it shows
                assumed.append(name)
            stub_wheel(stubs, name, ver)
        pins = {n: v for n, v in carried_wheels}
        reqs = [f"{n}=={pins[norm(n)]}" if norm(n) in pins else n for n in needed]
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--quiet",
               "--find-links", str(wheels), "--find-links", str(stubs), "--only-binary=:all:", "--python-version",
               PYTHON, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
               "--target", str(Path(tmp) / "target"), "--report", str(report), *reqs]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:  # pip names what it could not find
            return {"ok": False, "error": (r.stderr or r.stdout).strip()[-1500:], "assumed": []}
        installs = json.loads(report.read_text())["install"]
    chosen = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    from_stub = {n for n, i in ((norm(i["metadata"]["name"]), i) for i in installs)
                 if "stubs" in i["download_info"]["url"]}
    unused = sorted(f"{n}=={v}" for n, v in carried_wheels if n not in chosen or n in from_stub)
    dupes = sorted(n for n in carried_names if sum(1 for m, _ in carried_wheels if m == n) > 1)
    ok = not unused and not dupes
    return {"ok": ok, "carried": sorted(f"{n}=={chosen[n]}" for n in chosen if n not in from_stub),
            "device": sorted(f"{n}=={chosen[n]}" for n in from_stub),
            "assumed": sorted(a for a in assumed if a in from_stub), "unused": unused, "duplicates": dupes,
            "error": "" if ok else f"carried but not needed: {unused}; two versions: {dupes}"}


def tree_bytes() -> int:
    """What the device tool sends besides carried paths: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in out if p and (ROOT / p.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="resolve and size what .whl holds; download nothing")
    ap.add_argument("--with", dest="extra", action="append", default=[], choices=sorted(OPTIONAL),
                    help="also carry an optional package set (its size is reported against the budget)")
    args = ap.parse_args(argv)
    names = list(CARRY) + [n for e in args.extra for n in OPTIONAL[e]]
    if not args.check:
        download(names)
        trim_bitsandbytes()
        pack_tokenizer()
    res = resolve(NEEDED + tuple(args.extra))
    carried, tree = folder_bytes(WHEELS), tree_bytes()
    total = (carried + tree) / 2**20
    print(json.dumps({k: v for k, v in res.items() if k != "ok"}, indent=1))
    if res["assumed"]:
        print(f"note: {len(res['assumed'])} device packages' versions were not read on the device and are assumed to "
              f"be this machine's: {', '.join(res['assumed'])}")
    fits = total < LIMIT_MB
    print(f"RESULT wheels_resolve={int(res['ok'])} carried_mb={carried / 2**20:.1f} tree_mb={tree / 2**20:.1f} "
          f"travel_mb={total:.1f} limit_mb={LIMIT_MB:.0f} fits={int(fits)} carried_packages={len(res.get('carried', []))} "
          f"device_versions_assumed={len(res['assumed'])}")
    return 0 if res["ok"] and fits else 1


if __name__ == "__main__":
    sys.exit(main())
