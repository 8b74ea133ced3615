"""Training under ``accelerate launch`` with 2 CPU processes (gloo) on the tiny model, against one process.

One log, one adapter and the same optimizer steps as one process with the same global batch, a loss within tolerance;
a STOP stops both ranks on the same step and the run resumes; SIGKILL of one rank fails the run, which resumes.
The DeepSpeed / FSDP settings are checked as far as this CPU allows: they map into TrainingArguments.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medadapt.config import REPO_ROOT, TrainConfig, load_train_config
from medadapt.jobs.runner import JobManager
from medadapt.jobs.launcher import Launcher, accelerate_configs

TWO = Launcher("accelerate", 2)


def job_env(cfg, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MEDADAPT_DATA_DIR": cfg.paths.data_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs"),
            "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def overrides(cfg, **over) -> list[str]:
    base = {"base_model": cfg.model.name_or_path, "report_to": "none", "lora.r": 4, "lora.alpha": 8,
            "warmup_ratio": 0.0, "eval_fraction": 0, "save_steps": 100, "logging_steps": 1, **over}
    return [f"{k}={v}" for k, v in base.items()]


def train(job: str, cfg, tmp_path: Path, name: str, launcher: Launcher, **over) -> tuple[dict, list[dict]]:
    run_dir = tmp_path / name
    argv = launcher.wrap([sys.executable, "-m", f"trainers.{job}", "--config", f"configs/offline/{job}.yaml",
                          "--output_dir", str(run_dir), *overrides(cfg, **over)])
    done = subprocess.run(argv, cwd=REPO_ROOT, env=job_env(cfg, tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(f"{job}: finished") == 1  # rank 0 alone prints the summary
    return json.loads((run_dir / "status.json").read_text()), log_lines(run_dir)


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def train_losses(lines: list[dict]) -> list[float]:
    return [x["loss"] for x in lines if x.get("loss") is not None]


@pytest.mark.parametrize("job, over", [
    ("sft", {"max_steps": -1, "num_epochs": 1, "max_samples": 32, "max_length": 320}),
    ("cpt", {"max_steps": -1, "num_epochs": 1, "max_samples": 40, "max_length": 64}),
])
def test_two_processes_train_like_one_with_the_same_global_batch(cfg, tmp_path, job, over):
    one, one_log = train(job, cfg, tmp_path, "one", Launcher(), per_device_batch_size=4,
                         gradient_accumulation_steps=1, **over)
    two, two_log = train(job, cfg, tmp_path, "two", TWO, per_device_batch_size=2, gradient_accumulation_steps=1,
                         **over)
    assert one["status"] == two["status"] == "finished" and two["world_size"] == 2
    assert one["steps"] == two["steps"] >= 4  # epochs over the same rows, global batch 4 both times
    steps = [x["step"] for x in two_log if "loss" in x]
    assert steps == list(range(1, two["steps"] + 1))  # one log: each step once (rank 0 alone writes)
    assert {x["total_steps"] for x in two_log} == {two["steps"]}  # planned steps count both ranks
    run = tmp_path / "two"
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "adapter" / "README.md").exists()
    assert not list(run.glob("adapter.tmp-*")) and not list(run.glob("adapter.old-*"))
    meta = json.loads((run / "adapter" / "medadapt.json").read_text())
    assert meta["steps"] == two["steps"]
    a, b = train_losses(one_log), train_losses(two_log)
    assert len(a) == len(b)
    # the tiny random model sits near ln(vocab) ≈ 10.8 nats; the logged loss is the mean over both ranks (a sum
    # would read ~21.6, one rank's share alone drifts further), so the runs agree closely
    assert abs(sum(a) / len(a) - sum(b) / len(b)) < 0.05, (a, b)
    assert two["final_loss"] == pytest.approx(b[-1])


def wait_for(pred, timeout=240.0, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def sft_config(cfg, **over) -> TrainConfig:
    base = {"base_model": cfg.model.name_or_path, "report_to": "none", "lora": {"r": 4, "alpha": 8},
            "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_samples": 48, "eval_fraction": 0,
            "warmup_ratio": 0.0, "logging_steps": 1, **over}
    return load_train_config(REPO_ROOT / "configs" / "offline" / "sft.yaml", base)


def test_stop_reaches_both_ranks_on_one_step_then_the_run_resumes(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    jobs = JobManager(cfg)
    run = jobs.start(sft_config(cfg, max_steps=10, save_steps=100), source="test", launcher=TWO)
    launch = json.loads((run / "launch.json").read_text())
    assert launch["launcher"] == TWO.to_dict() and "accelerate.commands.launch" in launch["argv"]
    wait_for(lambda: (s := jobs.poll(run)) and s.step >= 2)
    jobs.stop()
    snap = jobs.wait(run, 240)
    proc = jobs._proc
    assert proc.wait(60) == 0  # both ranks left cleanly: a rank still training would hang the other in a collective
    status = json.loads((run / "status.json").read_text())
    assert snap.status == status["status"] == "stopped", (snap.error, status)
    stopped_at = status["steps"]
    assert 2 <= stopped_at < 10 and (run / "checkpoints" / f"checkpoint-{stopped_at}" / "trainer_state.json").exists()
    assert "Traceback" not in (run / "stdout.log").read_text()
    jobs.resume(run)
    assert "accelerate.commands.launch" in json.loads((run / "launch.json").read_text())["argv"]
    done = jobs.wait(run, 300)
    status = json.loads((run / "status.json").read_text())
    assert done.status == status["status"] == "finished", done.error
    assert status["steps"] == 10
    assert [x["step"] for x in log_lines(run) if "loss" in x] == list(range(1, 11))


def rank_pid(launcher_pid: int, rank: int) -> int:
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "trainers.sft" in " ".join(child.cmdline()):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return 0


def test_sigkill_of_one_rank_fails_the_run_which_resumes(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    jobs = JobManager(cfg)
    run = jobs.start(sft_config(cfg, max_steps=8, save_steps=2), source="test", launcher=TWO)
    ckpt = run / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    wait_for(ckpt.exists, every=0.05)
    victim = wait_for(lambda: rank_pid(jobs._proc.pid, 1))
    os.kill(victim, signal.SIGKILL)
    snap = jobs.wait(run, 240)
    assert jobs._proc.wait(120) != 0
    assert snap.status == "failed" and snap.error, snap
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert not (run / "adapter").exists()
    jobs.resume(run)
    done = jobs.wait(run, 300)
    assert done.status == "finished", done.error
    assert [x["step"] for x in log_lines(run) if "loss" in x] == list(range(1, 9))


# ---------------------------------------------------------------- settings only (no processes)

def test_planned_steps_count_every_rank():
    from trainers.common import planned_steps

    t = TrainConfig(per_device_batch_size=2, gradient_accumulation_steps=1, max_steps=-1, num_epochs=1)
    assert planned_steps(t, 24, world=1) == 12 and planned_steps(t, 24, world=2) == 6
    assert planned_steps(t, 25, world=2) == 7  # the DistributedSampler pads 25 rows to 13 per rank


def test_shipped_accelerate_configs_name_their_deepspeed_files():
    names = [Path(p).name for p in accelerate_configs()]
    assert names[0] == "ddp.yaml" and {"deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"} <= set(names)
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for rel in accelerate_configs():
        data = yaml.safe_load((REPO_ROOT / rel).read_text())
        kinds[Path(rel).stem] = data["distributed_type"]
        assert load_config_from_file(str(REPO_ROOT / rel)).distributed_type == data["distributed_type"]
        ds = data.get("deepspeed_config", {}).get("deepspeed_config_file")
        if ds:
            stage = json.loads((REPO_ROOT / ds).read_text())["zero_optimization"]["stage"]
            assert f"zero{stage}" in rel
    assert kinds == {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED",
                     "fsdp": "FSDP"}


def test_launcher_wraps_the_trainer_command():
    argv = [sys.executable, "-m", "trainers.sft", "--config", "c.yaml"]
    assert Launcher().wrap(argv) == argv
    assert TWO.wrap(argv) == [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                              "configs/accelerate/ddp.yaml", "--num_processes", "2", "-m", "trainers.sft",
                              "--config", "c.yaml"]
    assert TWO.command(argv).startswith("accelerate launch --config_file configs/accelerate/ddp.yaml "
                                        "--num_processes 2 -m trainers.sft")
    assert Launcher("accelerate", 0).problems() and Launcher("mpi").problems()
    assert Launcher("accelerate", 2, "configs/accelerate/nope.yaml").problems()


def test_single_process_training_arguments_carry_no_sharding(tmp_path):
    """DeepSpeed and FSDP come only from the accelerate config a run is launched with: a plain run has neither."""
    from trainers.common import Runtime, training_args

    args = training_args(TrainConfig(), tmp_path, Runtime(False, False, False), False, "none", "t")
    assert args.ddp_find_unused_parameters is False and not args.deepspeed and not args.fsdp
