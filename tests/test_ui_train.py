"""Training tab on loopback: gradio_client drives start/progress/stop/resume/finish on the fake trainer, a headless
Chromium clicks Start, and one run uses the real SFT trainer on the tiny model."""
from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest

from medadapt.adapters import list_adapters
from medadapt.config import REPO_ROOT, load_config, load_train_config
from medadapt.jobs.runner import JobManager
from medadapt.jobs.train_form import FIELDS
from tests.net import free_port

FAKE = Path(__file__).parent / "fixtures" / "fake_trainer.py"
SFT_FILE = str(REPO_ROOT / "configs" / "offline" / "sft.yaml")
SFT_YAML = "offline/sft.yaml"  # how the form names it: no server path on the page


def launch_tab(cfg, jobs: JobManager):
    import gradio as gr

    from medadapt.ui.train import build_train_tab

    state = types.SimpleNamespace(cfg=cfg, jobs=jobs)
    with gr.Blocks() as demo:
        comps = build_train_tab(state)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    return demo, f"http://127.0.0.1:{port}/", comps


@pytest.fixture(scope="module")
def fake_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-ui")
    (tmp / "data").mkdir()
    (tmp / "data" / "broken.json").write_text("{oops")
    cfg = load_config("offline", {"paths": {"data_dir": str(tmp / "data"), "runs_dir": str(tmp / "runs"),
                                            "results_dir": str(tmp / "results")}})
    jobs = JobManager(cfg, {j: [sys.executable, str(FAKE)] for j in ("sft", "cpt", "msft")})
    demo, url, comps = launch_tab(cfg, jobs)
    yield types.SimpleNamespace(cfg=cfg, jobs=jobs, url=url, comps=comps)
    jobs.terminate()
    demo.close()


def form(values: dict, **changes) -> list:
    merged = {**values, **changes}
    return [merged[f.key] for f in FIELDS]


def poll_until(client, pred, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = client.predict(api_name="/poll")
        if pred(out[3]):
            return out
        time.sleep(0.2)
    raise AssertionError(f"live state never matched; last: {out[3]}")


def test_form_via_client_preview_and_refusals(fake_app):
    from gradio_client import Client

    client = Client(fake_app.url, verbose=False)
    update = client.predict("sft", api_name="/configs")
    assert update["value"] == SFT_YAML and [SFT_YAML, SFT_YAML] in update["choices"]
    loaded = client.predict("sft", SFT_YAML, api_name="/load_config")
    values = dict(zip((f.key for f in FIELDS), loaded[:len(FIELDS)]))
    shipped = load_train_config(SFT_FILE)
    assert values["lora.r"] == shipped.lora.r and values["learning_rate"] == shipped.learning_rate
    assert "job: sft" in loaded[len(FIELDS)]
    assert loaded[len(FIELDS) + 1].startswith("python -m trainers.sft --config configs/offline/sft.yaml")

    for job in ("cpt", "msft"):  # every shipped config loads into the form without a message
        path = client.predict(job, api_name="/configs")["value"]
        out = client.predict(job, path, api_name="/load_config")
        assert path.endswith(f"{job}.yaml") and f"job: {job}" in out[-3] and out[-1] == ""

    yaml_text, cli, msg = client.predict("sft", SFT_YAML, *form(values, **{"lora.r": 32}), api_name="/preview")
    assert "r: 32" in yaml_text and cli.endswith("--set lora.r=32") and msg == ""
    _, _, msg = client.predict("sft", SFT_YAML, *form(values, **{"lora.r": 0, "dataset": "/etc/passwd"}),
                               api_name="/preview")
    assert "LoRA rank r: must be between 1 and 512" in msg and "outside the data dir" in msg
    msg = client.predict("", "sft", SFT_YAML, *form(values, learning_rate=5.0), api_name="/start")
    assert "Learning rate: must be between" in msg
    assert fake_app.jobs.running() is None and fake_app.jobs.list_runs() == []


def test_controller_handlers_work_without_a_page(tmp_path):
    """The tab's behaviour lives in its controller: reachable without building the layout or a server."""
    from medadapt.ui.train_controller import TrainController

    cfg = load_config("offline", {"paths": {"data_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs")}})
    ctl = TrainController(types.SimpleNamespace(cfg=cfg, jobs=JobManager(cfg)))
    values = ctl.form_defaults("sft", SFT_YAML)
    assert values["lora.r"] == load_train_config(SFT_FILE).lora.r
    yaml_text, cli, msg = ctl.preview("sft", SFT_YAML, *form(values, **{"lora.r": 32}))
    assert "r: 32" in yaml_text and cli.endswith("--set lora.r=32") and msg == ""
    msg = ctl.preview("sft", SFT_YAML, *form(values, learning_rate=5.0))[2]
    assert "Learning rate: must be between 1e-07 and 0.1 (got 5)" in msg
    assert "no run named" in ctl.show_run("../x")[1] and ctl.runs_table() == []
    # the launcher inputs follow the form fields: accelerate with N processes shows the exact command
    _, cli, msg = ctl.preview("sft", SFT_YAML, *form(values), "accelerate", 2, "configs/accelerate/fsdp.yaml")
    assert msg == "" and cli.startswith("accelerate launch --config_file configs/accelerate/fsdp.yaml "
                                        "--num_processes 2 -m trainers.sft --config configs/offline/sft.yaml")
    assert ctl.preview("sft", SFT_YAML, *form(values), "single", 2, "configs/accelerate/ddp.yaml")[1].startswith(
        "python -m trainers.sft")
    assert "processes must be between 1 and 64" in ctl.preview("sft", SFT_YAML, *form(values), "accelerate", 0,
                                                               "configs/accelerate/ddp.yaml")[2]


def test_launch_progress_stop_resume_finish_via_client(fake_app, monkeypatch):
    from gradio_client import Client

    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.1")
    client = Client(fake_app.url, verbose=False)
    values = dict(zip((f.key for f in FIELDS), client.predict("sft", SFT_YAML, api_name="/load_config")))
    args = form(values, max_steps=40, eval_steps=4)
    assert "Started" in client.predict("", "sft", SFT_YAML, *args, api_name="/start")
    out = poll_until(client, lambda live: live.get("step", 0) >= 4 and live.get("loss"))
    html, plot = out[0], out[1]
    assert "step" in html and "/ 40" in html and "tokens/s" in html and "1,234" in html
    assert "train (smoothed)" in plot["plot"] and "eval" in plot["plot"]

    again = client.predict("", "sft", SFT_YAML, *args, api_name="/start")
    assert "already running" in again

    assert "Stop requested" in client.predict("", api_name="/stop")
    stopped = poll_until(client, lambda live: live["status"] == "stopped")[3]
    run = fake_app.jobs.runs_root / stopped["run"]
    assert any((run / "checkpoints").iterdir()) and stopped["step"] < 40
    fake_app.jobs.wait(run, 10)  # the process has exited

    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.01")
    assert "Resumed" in client.predict("", "", api_name="/resume")
    done = poll_until(client, lambda live: live["status"] == "finished")
    assert done[3]["step"] == 40 and done[4]["data"][0][0] == run.name and done[4]["data"][0][3] == "finished"
    assert done[6] == run.name  # the finished_run signal other tabs refresh their adapter choices on
    listed = list_adapters(fake_app.cfg, "sft")  # what the Compare tab lists: the shipped release's, then this one
    assert [(a.run_dir, a.origin) for a in listed if a.origin != "shipped"] == [(run, "trained")]
    _, card = client.predict(run.name, api_name="/show_run")
    assert "Fake sft adapter" in card and "finished" in card
    for bad in ("..", "../runs", "/etc"):
        assert "no run named" in client.predict(bad, api_name="/show_run")[1]
        assert "no run named" in client.predict("", bad, api_name="/resume")


def test_failed_job_shows_its_error(fake_app):
    from gradio_client import Client

    client = Client(fake_app.url, verbose=False)
    fake_app.jobs.wait(fake_app.jobs.active_run(), 10) if fake_app.jobs.running() else None
    values = dict(zip((f.key for f in FIELDS), client.predict("cpt", "", api_name="/load_config")))
    msg = client.predict("", "cpt", "", *form(values, max_steps=5, dataset="local:broken"), api_name="/start")
    assert "Started" in msg, msg
    out = poll_until(client, lambda live: live["status"] == "failed")
    assert "bad data file" in out[3]["error"] and "bad data file" in out[0] and "FAILED" in out[0].upper()


def test_public_mode_locks_launching(fake_app, monkeypatch):
    from gradio_client import Client

    from medadapt.ui.common import unlocked

    client = Client(fake_app.url, verbose=False)
    from medadapt.ui import common

    monkeypatch.setenv("MEDADAPT_PUBLIC", "1")
    monkeypatch.delenv("MEDADAPT_ADMIN_PASSWORD", raising=False)
    monkeypatch.setattr(common, "ADMIN_THROTTLE", common.SecretThrottle(base=0.0))  # the lock itself, not the wait
    assert not unlocked(fake_app.cfg, "")
    assert "locked" in client.predict("anything", "sft", SFT_YAML, *form({f.key: 1 for f in FIELDS}), api_name="/start")
    monkeypatch.setenv("MEDADAPT_ADMIN_PASSWORD", "s3cret")
    assert not unlocked(fake_app.cfg, "wrong") and unlocked(fake_app.cfg, "s3cret")
    assert "locked" in client.predict("wrong", api_name="/stop")
    assert "no job is running" in client.predict("s3cret", api_name="/stop")


def test_browser_start_shows_loss_chart(fake_app, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium")
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.15")
    if fake_app.jobs.running():
        fake_app.jobs.wait(fake_app.jobs.running(), 10)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(fake_app.url)
        page.get_by_label("Max steps").fill("200")
        page.locator("#ma-train-start").click()
        page.locator("#ma-train-message").get_by_text("Started").wait_for(timeout=20_000)
        page.locator("#ma-train-chart .scatterlayer .trace").first.wait_for(timeout=20_000)
        page.locator("#ma-train-progress[data-status='running']").wait_for(timeout=20_000)
        page.wait_for_timeout(2500)
        shot = tmp_path / "training-tab.png"
        page.screenshot(path=str(shot), full_page=True)
        traces = page.locator("#ma-train-chart .scatterlayer .trace").count()
        second = browser.new_page(viewport={"width": 1200, "height": 900})  # another tab re-attaches to the job
        second.goto(fake_app.url)
        second.locator("#ma-train-progress[data-status='running']").wait_for(timeout=60_000)
        page.locator("#ma-train-stop").click()
        page.locator("#ma-train-progress[data-status='stopped']").wait_for(timeout=60_000)
        second.locator("#ma-train-progress[data-status='stopped']").wait_for(timeout=60_000)
        run = fake_app.jobs.active_run()
        page.locator(f"#ma-train-runs >> text={run.name} >> visible=true").first.click()
        page.locator("#ma-train-card").get_by_text("stopped").first.wait_for(timeout=20_000)
        browser.close()
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 20_000 and traces >= 2
    assert json.loads((run / "status.json").read_text())["status"] == "stopped"


@pytest.mark.slow
def test_real_sft_trainer_stop_resume_finish_via_client(cfg):
    """The real ``python -m trainers.sft`` on the tiny model, launched, stopped and resumed from the tab."""
    from gradio_client import Client

    jobs = JobManager(cfg)
    demo, url, _ = launch_tab(cfg, jobs)
    try:
        client = Client(url, verbose=False)
        values = dict(zip((f.key for f in FIELDS), client.predict("sft", SFT_YAML, api_name="/load_config")))
        args = form(values, max_steps=6, eval_steps=2, save_steps=100, max_samples=24, max_length=256)
        assert "Started" in client.predict("", "sft", SFT_YAML, *args, api_name="/start")
        live = poll_until(client, lambda s: s.get("step", 0) >= 1 and s.get("loss") or s.get("status") == "failed",
                          timeout=150)[3]
        assert live["status"] == "running", live.get("error")
        assert "Stop requested" in client.predict("", api_name="/stop")
        stopped = poll_until(client, lambda s: s["status"] in ("stopped", "failed", "finished"), timeout=60)[3]
        assert stopped["status"] == "stopped", stopped.get("error")
        run = jobs.runs_root / stopped["run"]
        jobs.wait(run, 60)
        assert any((run / "checkpoints").rglob("checkpoint-*")) and stopped["step"] < 6

        assert "Resumed" in client.predict("", "", api_name="/resume")
        done = poll_until(client, lambda s: s["status"] in ("finished", "failed"), timeout=150)
        assert done[3]["status"] == "finished", done[3].get("error")
        assert done[3]["step"] == 6 and "train (smoothed)" in done[1]["plot"]
        assert load_train_config(run / "config.yaml").max_steps == 6
        adapters = list_adapters(cfg, "sft")  # what the Compare tab's dropdown lists, newest first
        assert adapters and adapters[0].run_dir == run
        _, card = client.predict(run.name, api_name="/show_run")
        assert "finished" in card and "6 steps" in card
    finally:
        jobs.terminate()
        demo.close()


@pytest.mark.slow
def test_real_trainer_bad_data_file_fails_with_its_error(tmp_path, tiny_model_dir):
    from medadapt.ui.train_view import progress_html

    bad = tmp_path / "data" / "medical_o1_sft"
    bad.mkdir(parents=True)
    (bad / "medical_o1_sft_en_first10.json").write_text("[{broken")
    cfg = load_config("offline", {"model": {"name_or_path": tiny_model_dir},
                                  "paths": {"data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs")}})
    jobs = JobManager(cfg)
    run = jobs.start(load_train_config(SFT_FILE, {"max_steps": 2, "dataset": ["local:medical_o1"]}))
    snap = jobs.wait(run, 150)
    where = "medical_o1_sft_en_first10.json: not valid JSON at line 1"  # the shared reader names file and position
    assert snap.status == "failed" and "DataFormatError" in snap.error and where in snap.error
    assert where in progress_html(snap) and "data-status='failed'" in progress_html(snap)


def test_admin_secret_guesses_are_throttled_per_client(monkeypatch):
    """Wrong secrets from one client make it wait longer and longer (even the right secret waits); others are not
    affected; a right secret after the wait clears the count."""
    from types import SimpleNamespace

    from medadapt.ui import common

    now = [1000.0]
    throttle = common.SecretThrottle(base=1.0, cap=300.0, clock=lambda: now[0])
    monkeypatch.setattr(common, "ADMIN_THROTTLE", throttle)
    monkeypatch.setenv("MEDADAPT_ADMIN_PASSWORD", "s3cret")
    cfg = SimpleNamespace(public=True)
    attacker, admin = (SimpleNamespace(client=SimpleNamespace(host=h)) for h in ("10.9.9.9", "127.0.0.1"))
    assert not common.unlocked(cfg, "guess1", attacker)
    assert not common.unlocked(cfg, "s3cret", attacker)  # within the 1 s wait: refused even when right
    now[0] += 1.1
    assert not common.unlocked(cfg, "guess2", attacker)
    assert throttle.wait_s("10.9.9.9") == pytest.approx(2.0)
    for _ in range(10):  # each wrong attempt after its wait doubles the next wait, up to the cap
        now[0] += throttle.wait_s("10.9.9.9") + 0.01
        common.unlocked(cfg, "guess", attacker)
    assert throttle.wait_s("10.9.9.9") == pytest.approx(300.0)
    assert common.unlocked(cfg, "s3cret", admin)  # another client is not throttled
    now[0] += 300.1
    assert common.unlocked(cfg, "s3cret", attacker) and throttle.wait_s("10.9.9.9") == 0
    assert not common.unlocked(cfg, "", attacker) and throttle.wait_s("10.9.9.9") == 0  # no secret: no attempt
