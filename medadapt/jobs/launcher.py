"""How a training job is launched: one process, or ``accelerate launch`` with N processes (DDP, DeepSpeed, FSDP).

Pure (stdlib only): :class:`medadapt.jobs.runner.JobManager` wraps a trainer's argv with :meth:`Launcher.wrap` and records the
launcher in ``launch.json`` (a resume relaunches the same way); the Training tab shows :meth:`Launcher.command`.
Under accelerate every rank runs the trainer; rank 0 alone writes the run dir (:mod:`trainers.dist`).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medadapt.config import REPO_ROOT

KINDS = ("single", "accelerate")
KIND_LABELS = {"single": "Single process", "accelerate": "accelerate launch (N processes)"}
ACCELERATE_DIR = REPO_ROOT / "configs" / "accelerate"
DEFAULT_CONFIG = "configs/accelerate/ddp.yaml"
MAX_PROCESSES = 64


def accelerate_configs() -> list[str]:
    """The shipped accelerate configs, relative to the repo (``ddp`` first)."""
    names = sorted(p.name for p in ACCELERATE_DIR.glob("*.yaml"))
    names.sort(key=lambda n: n != "ddp.yaml")
    return [f"configs/accelerate/{n}" for n in names]


@dataclass(frozen=True)
class Launcher:
    kind: str = "single"
    num_processes: int = 1
    config_file: str = DEFAULT_CONFIG  # accelerate only; relative to the repo root or absolute

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Launcher:
        data = data or {}
        n = data.get("num_processes")
        return cls(str(data.get("kind") or "single"), 1 if n is None else int(n),
                   str(data.get("config_file") or DEFAULT_CONFIG))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problems(self) -> list[str]:
        """What is wrong with this launcher (empty: it can run)."""
        out = []
        if self.kind not in KINDS:
            out.append(f"launcher must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not 1 <= self.num_processes <= MAX_PROCESSES:
            out.append(f"processes must be between 1 and {MAX_PROCESSES}, not {self.num_processes}")
        if self.kind == "accelerate" and not self.config_path.is_file():
            out.append(f"accelerate config {self.config_file} does not exist")
        return out

    @property
    def config_path(self) -> Path:
        p = Path(self.config_file).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    def wrap(self, argv: list[str]) -> list[str]:
        """The argv that runs ``argv`` (``[python, -m, module, args…]`` or ``[python, script, args…]``)."""
        if self.kind != "accelerate":
            return list(argv)
        return [argv[0], "-m", "accelerate.commands.launch", "--config_file", self.config_file,
                "--num_processes", str(self.num_processes), *argv[1:]]

    def command(self, argv: list[str]) -> str:
        """The shell command a user would type: ``python …`` or ``accelerate launch …``."""
        full = self.wrap(argv)
        if full and full[0] == sys.executable:
            full = ["python", *full[1:]]
        if full[1:3] == ["-m", "accelerate.commands.launch"]:
            full = ["accelerate", "launch", *full[3:]]
        return shlex.join(full)
