"""JobManager against the fake trainer (tests/fixtures/fake_trainer.py): start, progress, stop, resume, failures."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medadapt.adapters import list_adapters
from medadapt.config import TrainConfig, load_config
from medadapt.jobs.runner import JobBusyError, JobError, JobManager
from medadapt.jobs.rundir import parse_jsonl, pid_alive, summarize

FAKE = Path(__file__).parent / "fixtures" / "fake_trainer.py"


@pytest.fixture
def jcfg(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.json").write_text("{not json")
    (data / "good.json").write_text("[]")
    return load_config("offline", {"paths": {"data_dir": str(data), "runs_dir": str(tmp_path / "runs"),
                                             "results_dir": str(tmp_path / "results")}})


def fake_manager(cfg) -> JobManager:
    return JobManager(cfg, {job: [sys.executable, str(FAKE)] for job in ("sft", "cpt", "msft", "eval")})


def wait_for(pred, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_start_progress_stop_resume_finish(jcfg, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.1")
    jobs = fake_manager(jcfg)
    run = jobs.start(TrainConfig(job="sft", max_steps=30, eval_steps=3, dataset=["local:good"]), source="test")
    assert run.parent == jcfg.paths.resolve("runs_dir") / "offline" and run.name.startswith("sft-")
    assert jobs.running() == run
    snap = wait_for(lambda: (s := jobs.poll()) and s.step >= 3 and s.eval_loss is not None and s)
    assert snap.status == "running" and snap.total_steps == 30 and snap.loss > 0 and snap.tokens_per_s
    assert 0 < snap.fraction < 1 and snap.config == "test"
    with pytest.raises(JobBusyError, match="already running"):
        jobs.start(TrainConfig(job="cpt"))
    with pytest.raises(JobBusyError):
        jobs.resume(run)

    jobs.stop()
    stopped = jobs.wait(run, 20)
    assert stopped.status == "stopped" and stopped.step < 30
    ckpt = stopped.step
    assert (run / "checkpoints" / f"checkpoint-{ckpt}").is_dir()
    assert jobs.running() is None
    with pytest.raises(JobError, match="no job is running"):
        jobs.stop()

    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.01")
    assert jobs.resume(run) == run
    done = jobs.wait(run, 30)
    assert done.status == "finished", done.error
    steps = [r["step"] for r in done.records if "loss" in r]
    assert steps == list(range(1, 31)), "resume must continue after the checkpoint, not restart"
    assert done.step == 30 and done.eta_s == 0.0 and done.adapter
    assert [(a.run_dir, a.origin) for a in list_adapters(jcfg, "sft") if a.origin != "shipped"] == [(run, "trained")]
    with pytest.raises(JobError, match="already finished"):
        jobs.resume(run)
    assert [s.run_dir for s in jobs.list_runs()] == [run]
    assert "=== " in (run / "stdout.log").read_text()  # launch header + appended output of both processes


@pytest.mark.parametrize("job,dataset,shown", [
    ("sft", "local:broken", ("bad data file", "broken.json")),  # the trainer reports the error itself
    ("cpt", "local:__crash__", ("exited with code 1", "simulated crash")),  # a crash without a status: the runner
])
def test_a_failed_job_shows_its_error(jcfg, job, dataset, shown):
    jobs = fake_manager(jcfg)
    run = jobs.start(TrainConfig(job=job, max_steps=5, dataset=[dataset]))
    snap = jobs.wait(run, 20)
    assert snap.status == "failed"
    assert all(s in snap.error for s in shown), snap.error
    assert json.loads((run / "status.json").read_text())["status"] == "failed"  # persisted for the runs list
    with pytest.raises(JobError, match="no checkpoint"):
        jobs.resume(run)


def test_dead_pid_with_running_status_is_failed(jcfg):
    dead = subprocess.Popen([sys.executable, "-c", "print('bye')"])
    dead.wait()
    assert not pid_alive(dead.pid)
    run = jcfg.paths.resolve("runs_dir") / "offline" / "sft-20240101-000000"
    (run / "log.jsonl").parent.mkdir(parents=True)
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    (run / "stdout.log").write_text("Traceback ...\nMemoryError\n")
    (run / "status.json").write_text(json.dumps({"status": "running", "job": "sft", "pid": dead.pid}))
    jobs = fake_manager(jcfg)  # a fresh app: nothing to re-attach to
    assert jobs.running() is None
    snap = jobs.poll(run)
    assert snap.status == "failed" and "no longer alive" in snap.error and "MemoryError" in snap.error


def test_new_manager_reattaches_to_running_job(jcfg, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.05")
    first = fake_manager(jcfg)
    run = first.start(TrainConfig(job="sft", max_steps=200))
    wait_for(lambda: first.poll(run).step >= 1)
    second = fake_manager(jcfg)  # e.g. the app restarted while the job kept running
    assert second.running() == run and second.poll().status == "running"
    with pytest.raises(JobBusyError):
        second.start(TrainConfig(job="sft"))
    second.stop()
    assert first.wait(run, 20).status == "stopped"


def test_eval_job_uses_same_contract(jcfg):
    jobs = fake_manager(jcfg)
    run = jobs.start_eval(["--set", "max_steps=3"])
    assert jobs.wait(run, 20).status == "finished"
    assert run.name.startswith("eval-") and jobs.list_runs() == []
    assert [s.job for s in jobs.list_runs(jobs=("eval",))] == ["eval"]


def test_parse_jsonl_skips_partial_and_corrupt_lines():
    text = '{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
    assert [r["step"] for r in parse_jsonl(text)] == [1, 2]


def test_summarize_msft_reports_current_stage():
    recs = [{"stage": "cpt", "step": s, "total_steps": 4, "loss": 3.0} for s in (1, 2, 3, 4)]
    recs += [{"stage": "sft", "step": 1, "total_steps": 10, "loss": 2.0, "eta_s": 9.0}]
    snap = summarize(Path("/x/msft-1"), {"job": "msft"}, recs, "running")
    assert (snap.stage, snap.step, snap.total_steps, snap.eta_s, snap.job) == ("sft", 1, 10, 9.0, "msft")


def test_forced_stop_signals_the_job(jcfg, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.05")
    jobs = fake_manager(jcfg)
    run = jobs.start(TrainConfig(job="sft", max_steps=500))
    wait_for(lambda: jobs.poll(run).step >= 1)
    (run / "STOP").touch()
    jobs.stop(force=True)
    snap = jobs.wait(run, 20)
    assert snap.status == "stopped" and snap.step < 500
    assert "got SIGTERM" in (run / "stdout.log").read_text()


def test_log_is_read_incrementally_and_waits_for_complete_lines(jcfg):
    run = jcfg.paths.resolve("runs_dir") / "offline" / "cpt-20240101-000000"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"status": "finished", "job": "cpt", "steps": 3}))
    log = run / "log.jsonl"
    log.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo')
    jobs = fake_manager(jcfg)
    assert [r["step"] for r in jobs.poll(run).records] == [1]
    with open(log, "a") as f:
        f.write('ss": 2.0}\n{"step": 3, "loss": 1.0}\n')
    snap = jobs.poll(run)
    assert [r["loss"] for r in snap.records] == [3.0, 2.0, 1.0] and snap.loss == 1.0
    log.write_text('{"step": 1, "loss": 9.0}\n')  # rewritten from scratch
    assert [r["loss"] for r in jobs.poll(run).records] == [9.0]


def test_one_job_across_processes_via_the_job_lock(cfg, tmp_path):
    """A job this app did not start (it holds the runs dir's job lock) shows as running, blocks a second job, and a
    trainer started from the shell meanwhile is refused with a message naming it."""
    import os

    from medadapt.config import REPO_ROOT
    from medadapt.jobs.lock import hold_job_lock, lock_holder

    jobs = JobManager(cfg)
    other = cfg.paths.resolve("runs_dir") / cfg.profile / "sft-from-the-shell"
    other.mkdir(parents=True)
    (other / "status.json").write_text(json.dumps({"status": "running", "job": "sft", "pid": os.getpid()}))
    with hold_job_lock(cfg, other, "sft"):
        assert lock_holder(cfg)["run_dir"] == str(other)
        assert jobs.running() == other and jobs.active_run() == other
        with pytest.raises(JobBusyError, match="sft-from-the-shell"):
            jobs.start(TrainConfig(job="sft"))
        env = dict(os.environ, MEDADAPT_RUNS_DIR=str(cfg.paths.resolve("runs_dir")), MEDADAPT_PROFILE="offline",
                   MEDADAPT_MODEL=cfg.model.name_or_path, MEDADAPT_DATA_DIR=str(cfg.paths.resolve("data_dir")))
        out = subprocess.run([sys.executable, "-m", "trainers.sft", "--config", "configs/offline/sft.yaml",
                              "--output_dir", str(tmp_path / "second"), "report_to=none"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "already running" in out.stdout and "sft-from-the-shell" in out.stdout
        assert json.loads((tmp_path / "second" / "status.json").read_text())["status"] == "failed"
    assert lock_holder(cfg) is None and jobs.running() is None
