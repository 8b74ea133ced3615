"""The GPU check's parts that run without a GPU: ``bench/gpu_check.py`` imports everything its checks use and says
clearly that there is no CUDA; ``scripts/gpu_wheels.py``'s dry resolution (pip's own resolver, ``--dry-run
--no-index`` for Python 3.12 manylinux) accepts a complete wheel set and names what is missing or unused; the
bitsandbytes wheel is trimmed to its CPU and CUDA 13 libraries with a RECORD that matches."""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

from medadapt.config import REPO_ROOT


@pytest.fixture(scope="module")
def gw():
    spec = importlib.util.spec_from_file_location("gpu_wheels", REPO_ROOT / "scripts" / "gpu_wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_check_imports_everything_and_fails_clearly_without_cuda():
    r = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py"), "--which", "qlora,msft,lancedb"],
                       capture_output=True, text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 1, r.stderr[-2000:]
    assert "RESULT v_python=" in out and "v_bitsandbytes=" in out  # every module the checks use imported
    assert "RESULT cuda=0" in out
    for name in ("qlora", "msft", "lancedb"):
        assert f"RESULT {name}_ok=0 {name}_error=no_cuda" in out


def wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), files: dict | None = None) -> Path:
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                                for r in requires)
    content = {f"{info}/METADATA": meta, f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
               "Tag: py3-none-any\n", **(files or {})}
    rows = [f"{k},sha256={urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b'=').decode()},{len(v)}"
            for k, v in content.items()]
    content[f"{info}/RECORD"] = "\n".join(rows + [f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in content.items():
            z.writestr(k, v)
    return path


def test_the_dry_resolution_proves_a_set_complete_and_names_what_is_missing_or_unused(gw, tmp_path):
    wheels, device = tmp_path / "whl", tmp_path / "device.txt"
    wheels.mkdir()
    device.write_text("# the image\ngamma==1.0\ntorch==2.11.0\n")
    wheel(wheels, "alpha", "1.0", ("beta>=2", "gamma>=1", "torch<3"))
    beta = wheel(wheels, "beta", "2.0")
    res = gw.resolve(("alpha",), wheels, device)
    assert res["ok"], res["error"]
    assert res["carried"] == ["alpha==1.0", "beta==2.0"] and res["device"] == ["gamma==1.0", "torch==2.11.0"]
    beta.unlink()
    res = gw.resolve(("alpha",), wheels, device)
    assert not res["ok"] and "beta" in res["error"]  # pip says what it could not find
    wheel(wheels, "beta", "2.0")
    wheel(wheels, "delta", "0.1")
    res = gw.resolve(("alpha",), wheels, device)
    assert not res["ok"] and res["unused"] == ["delta==0.1"]
    device.write_text("gamma==0.5\ntorch==2.11.0\n")  # the image's copy is too old
    (wheels / "delta-0.1-py3-none-any.whl").unlink()
    assert not gw.resolve(("alpha",), wheels, device)["ok"]


def test_bitsandbytes_is_trimmed_to_cpu_and_cuda13(gw, tmp_path, monkeypatch):
    libs = {f"bitsandbytes/libbitsandbytes_{v}.so": "x" * 10 for v in ("cpu", "cuda118", "cuda128", "cuda130",
                                                                      "cuda132", "rocm72", "xpu2026")}
    path = wheel(tmp_path, "bitsandbytes", "0.50.0", files={"bitsandbytes/__init__.py": "", **libs})
    monkeypatch.setattr(gw, "WHEELS", tmp_path)
    gw.trim_bitsandbytes()
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-0.50.0.dist-info/RECORD").decode()
    kept = sorted(n.rsplit("_", 1)[1] for n in names if n.endswith(".so"))
    assert kept == ["cpu.so", "cuda130.so", "cuda132.so"] and "bitsandbytes/__init__.py" in names
    assert {line.split(",")[0] for line in record.splitlines()} == names
