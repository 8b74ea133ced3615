"""First-run setup (medadapt.setup_chain): the real chain — a real index build, real training steps on the tiny
model — from the shell, after a kill, with a failing step, with two app processes, and in the browser."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medadapt.config import REPO_ROOT, GenSettings, load_config
from medadapt.pipeline import DISCLAIMER
from medadapt.setup_chain import STEPS, SetupChain, SetupLock, StepRecord, progress_text, setup_enabled
from tests.conftest import DATA_DIR

FIXTURE_CORPUS = Path(__file__).parent / "fixtures" / "app_data" / "medrag_textbooks"
from medadapt.variants import VARIANTS  # noqa: E402
from tests.net import free_port  # noqa: E402

STAGE = {"max_length": 1024, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "eval_fraction": 0.1,
         "max_eval_samples": 1, "eval_steps": 100, "save_steps": 2}


def setup_configs(folder: Path, sft_steps: int) -> None:
    """The setup's own sft.yaml and msft.yaml: a few real training steps on the tiny model."""
    import yaml

    sft = {"job": "sft", "dataset": ["local:medical_o1"], "lora": {"r": 4, "alpha": 8}, **STAGE,
           "max_steps": sft_steps, "report_to": "none"}
    cpt = {"lora": {"r": 4, "alpha": 8}, **STAGE, "max_length": 64, "packing": True, "max_steps": 2}
    msft = {"job": "msft", "dataset": ["local:medical_o1"], **STAGE, "max_steps": 2, "report_to": "none", "cpt": cpt}
    (folder / "sft.yaml").write_text(yaml.safe_dump(sft))
    (folder / "msft.yaml").write_text(yaml.safe_dump(msft))


def make_env(tmp: Path, model_dir: str, sft_steps: int = 4, corpus: Path = FIXTURE_CORPUS) -> dict[str, str]:
    """A fresh machine in ``tmp``: real benchmark/SFT data, a small corpus, empty runs and index, tiny configs."""
    data = tmp / "data"
    data.mkdir()
    for name in ("medmcqa", "medqa", "mmlu_medical", "pubmedqa", "medical_o1_sft"):  # copies: the Training form
        shutil.copytree(DATA_DIR / name, data / name)  # refuses data paths that resolve outside the data dir
    shutil.copytree(corpus, data / "medrag_textbooks")
    configs = tmp / "configs"
    configs.mkdir()
    setup_configs(configs, sft_steps)
    env = dict(os.environ, MEDADAPT_PROFILE="offline", MEDADAPT_DATA_DIR=str(data), MEDADAPT_RUNS_DIR=str(tmp / "runs"),
               MEDADAPT_INDEX_DIR=str(tmp / "index"), MEDADAPT_RESULTS_DIR=str(tmp / "results"),
               MEDADAPT_MODEL=model_dir, MEDADAPT_SETUP_CONFIGS=str(configs), HF_HUB_OFFLINE="1",
               MEDADAPT_SHIPPED_DIR=str(tmp / "no-release"),  # the repository's shipped release is not this machine's
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("MEDADAPT_SETUP", None)
    return env


def config_from(env: dict[str, str]):
    keys = ("MEDADAPT_DATA_DIR", "MEDADAPT_RUNS_DIR", "MEDADAPT_INDEX_DIR", "MEDADAPT_RESULTS_DIR", "MEDADAPT_MODEL",
            "MEDADAPT_SHIPPED_DIR")
    keys = tuple(k for k in keys if k in env)
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        return load_config("offline")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def setup_cli(env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medadapt", "setup"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def state_of(env: dict[str, str]) -> dict:
    path = Path(env["MEDADAPT_RUNS_DIR"]) / "offline" / "setup.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_dirs(env: dict[str, str], job: str) -> list[Path]:
    return sorted((Path(env["MEDADAPT_RUNS_DIR"]) / "offline").glob(f"{job}-*"))


def test_progress_text_and_switch(monkeypatch):
    rec = StepRecord(status="running", step=40, total_steps=120, eta_s=175)
    assert progress_text("sft", rec) == "training SFT, step 40/120, about 3 min left"
    rec = StepRecord(status="running", step=1024, total_steps=4697, eta_s=42, stage="")
    assert progress_text("index", rec) == "building the retrieval index, 1,024/4,697 snippets, about 40 s left"
    rec = StepRecord(status="running", step=3, total_steps=40, eta_s=600, stage="cpt")
    assert progress_text("msft", rec).startswith("training MSFT (continual pretraining), step 3/40")
    for value, on in (("off", False), ("0", False), ("OFF", False), ("on", True), ("", True)):
        monkeypatch.setenv("MEDADAPT_SETUP", value)
        assert setup_enabled() is on


def test_setup_cli_builds_everything_then_skips(tmp_path, tiny_model_dir):
    from medadapt.adapters import resolve_adapter
    from medadapt.retrieval.rag import index_status

    env = make_env(tmp_path, tiny_model_dir)
    out = setup_cli(env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RAG index: done" in out.stdout and "SFT adapter: done" in out.stdout and "MSFT adapter: done" in out.stdout
    assert "100%" in out.stderr  # tqdm progress
    cfg = config_from(env)
    assert index_status(cfg)["complete"]
    assert resolve_adapter(cfg, "sft") is not None and resolve_adapter(cfg, "msft") is not None
    st = state_of(env)
    assert st["status"] == "done" and st["steps"]["sft"]["total_steps"] == 4
    assert json.loads((Path(st["steps"]["msft"]["run_dir"]) / "status.json").read_text())["steps"] == 4  # 2 CPT + 2 SFT
    before = {job: run_dirs(env, job) for job in STEPS}
    again = setup_cli(env)
    assert again.returncode == 0, again.stderr
    assert {job: run_dirs(env, job) for job in STEPS} == before  # nothing redone


def kill_group(pid: int) -> None:
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_setup_resumes_after_kill(tmp_path, tiny_model_dir):
    """Kill -9 the setup and its training job mid-SFT: the next run continues the same run from its checkpoint."""
    env = make_env(tmp_path, tiny_model_dir, sft_steps=10)
    proc = subprocess.Popen([sys.executable, "-m", "medadapt", "setup"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    sft_run = None
    while time.time() < deadline:
        sft_run = state_of(env).get("steps", {}).get("sft", {}).get("run_dir")
        if sft_run and list((Path(sft_run) / "checkpoints").glob("checkpoint-4")):
            break
        time.sleep(0.5)
    else:
        kill_group(proc.pid)
        pytest.fail("the SFT step never reached its second checkpoint")
    job_pid = json.loads((Path(sft_run) / "status.json").read_text())["pid"]
    kill_group(proc.pid)
    kill_group(job_pid)
    proc.wait(10)
    time.sleep(0.5)
    logged_before = [r["step"] for r in map(json.loads, (Path(sft_run) / "log.jsonl").read_text().splitlines())
                     if "loss" in r]
    assert logged_before and max(logged_before) < 10
    index_runs = run_dirs(env, "index")

    out = setup_cli(env)
    assert out.returncode == 0, out.stdout + out.stderr
    st = state_of(env)
    assert st["steps"]["sft"]["run_dir"] == sft_run and run_dirs(env, "sft") == [Path(sft_run)]  # the same run
    assert run_dirs(env, "index") == index_runs  # the finished index is not rebuilt
    steps = [r["step"] for r in map(json.loads, (Path(sft_run) / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(steps) and steps[-1] == 10 and steps.count(1) == 1  # continued, not restarted at step 1
    assert "--resume" in (Path(sft_run) / "stdout.log").read_text()


def test_failed_step_says_what_and_other_columns_answer(tmp_path, tiny_model_dir):
    """A corrupt corpus file: the index and MSFT (its CPT reads the corpus) fail with a message; base and SFT answer."""
    from medadapt.state import AppState

    corpus = tmp_path / "corrupt_corpus"
    corpus.mkdir()
    (corpus / "Broken_Book.jsonl").write_text('{"id": "b0", "title": "T", "content": "fine"}\n{not json at all\n')
    env = make_env(tmp_path, tiny_model_dir, sft_steps=2, corpus=corpus)
    out = setup_cli(env)
    assert out.returncode == 1
    assert "error: building the retrieval index failed" in out.stderr and "Broken_Book.jsonl" in out.stderr
    assert "python -m medadapt setup" in out.stderr  # what to do
    st = state_of(env)
    assert [st["steps"][s]["status"] for s in STEPS] == ["failed", "done", "failed"]

    cfg = config_from(env)
    cfg.generation.max_new_tokens = 8
    state = AppState.create(cfg)
    settings = GenSettings(max_new_tokens=8)
    adapters = {k: state.checked_adapter(k, "") for k in ("sft", "msft")}
    res = list(state.pipeline.compare("What causes scurvy?", settings, adapters))[-1]
    a = res.answers
    assert a["base"].status == "done" and a["sft"].status == "done" and a["sft"].n_tokens > 0
    assert a["rag"].status == "unavailable" and "Setup failed while building the retrieval index" in a["rag"].message
    assert "Broken_Book.jsonl" in a["rag"].message and "restart the app" in a["rag"].message
    assert a["msft"].status == "unavailable" and "Setup failed while training MSFT" in a["msft"].message


def test_setup_lock_is_exclusive(tmp_path):
    first, second = SetupLock(tmp_path / "setup.lock"), SetupLock(tmp_path / "setup.lock")
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_two_app_processes_run_one_setup(tmp_path, tiny_model_dir):
    env = make_env(tmp_path, tiny_model_dir, sft_steps=2)
    procs, logs = [], []
    for i in range(2):
        log = open(tmp_path / f"app{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "app.py", "--no-preload", "--port", str(free_port())],
                                      cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        deadline = time.time() + 300
        while state_of(env).get("status") not in ("done", "failed") and time.time() < deadline:
            time.sleep(1)
        assert state_of(env).get("status") == "done", state_of(env)
    finally:
        for p in procs:
            kill_group(p.pid)
            p.wait(10)
        for log in logs:
            log.close()
    assert [len(run_dirs(env, job)) for job in STEPS] == [1, 1, 1]
    texts = [(tmp_path / f"app{i}.log").read_text() for i in range(2)]
    assert sum("another process runs it" in t for t in texts) == 1, texts


@pytest.mark.slow
def test_browser_columns_switch_from_preparing_to_answers(tmp_path, tiny_model_dir, monkeypatch):
    """A fresh state in the browser: the columns say what is being prepared, then answer — no reload, no restart."""
    from playwright.sync_api import sync_playwright

    from medadapt.state import AppState
    from medadapt.ui.common import launch_options
    from medadapt.ui.interface import build_demo

    env = make_env(tmp_path, tiny_model_dir, sft_steps=6)
    monkeypatch.setenv("MEDADAPT_SETUP_CONFIGS", env["MEDADAPT_SETUP_CONFIGS"])
    cfg = config_from(env)
    cfg.generation.max_new_tokens = 16  # the slider minimum
    state = AppState.create(cfg)
    demo = build_demo(state)
    demo.queue(default_concurrency_limit=1, max_size=64)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(cfg))
    assert state.setup.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("Medical question").fill("Which vitamin deficiency causes scurvy?")
            page.locator("#ma-ask").click()
            try:
                page.locator("#ma-stats-base").get_by_text("tokens").wait_for(timeout=60_000)
            except Exception:
                page.screenshot(path="/tmp/browser-fail.png", full_page=True)
                raise AssertionError(page.locator("body").inner_text()[:3000])
            early = {v: page.locator(f"#ma-answer-{v}").inner_text() for v in VARIANTS}
            assert "preparing" in early["msft"], early
            page.locator("#ma-setup-status").get_by_text("First-run setup").wait_for(timeout=15_000)  # polled
            page.screenshot(path=str(tmp_path / "preparing.png"), full_page=True)
            page.get_by_text("First-run setup finished").wait_for(timeout=240_000)  # the page's own poll
            page.locator("#ma-ask").click()
            for v in VARIANTS:
                page.locator(f"#ma-stats-{v}").get_by_text("tokens").wait_for(timeout=60_000)
            late = {v: page.locator(f"#ma-answer-{v}").inner_text() for v in VARIANTS}
            page.screenshot(path=str(tmp_path / "ready.png"), full_page=True)
            browser.close()
    finally:
        state.setup.join(60)
        demo.close()
    assert all("preparing" not in t and DISCLAIMER in t for t in late.values()), late
    assert state_of(env)["status"] == "done"


def test_start_twice_runs_one_chain_and_reports_nothing_to_do(cfg, monkeypatch):
    """A second start() while the chain runs is refused; a profile that lacks nothing ends 'done', all skipped."""
    import medadapt.setup_chain as chain_mod
    from medadapt.jobs.runner import JobManager

    monkeypatch.setattr(chain_mod, "step_needed", lambda cfg, step: time.sleep(0.3) or False)
    monkeypatch.setattr(chain_mod, "adapter_tasks", lambda cfg, step, train=False: [])
    chain = SetupChain(cfg, JobManager(cfg))
    assert chain.start() and not chain.start()
    chain.join(10)
    st = chain.state()
    assert st.status == "done" and [r.status for r in st.steps.values()] == ["skipped"] * 3
    assert chain.message_for("rag") is None and chain.message_for("sft") is None
