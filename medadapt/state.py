"""The single ``AppState``: config, pipeline (engine + retriever, both lazy) and the job manager."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medadapt.adapters import list_adapters, resolve_adapter
from medadapt.config import AppConfig
from medadapt.refs import to_ref

NO_ADAPTER = "none"  # the Compare dropdown's "(none)" choice; "" is "the default adapter" (default_label)


def _engine_factory(cfg: AppConfig):
    def make():
        from medadapt.serve.choice import make_engine

        return make_engine(cfg)  # in-process (continuous batching) or a remote server (MEDADAPT_ENGINE=openai)

    return make


def _retriever_factory(cfg: AppConfig):
    def make():
        from medadapt.retrieval.rag import Retriever

        return Retriever.open(cfg)

    return make


@dataclass
class AppState:
    cfg: AppConfig
    pipeline: Any = None
    jobs: Any = None
    setup: Any = None  # medadapt.setup_chain.SetupChain: the first-run setup (started by app.py)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: AppConfig) -> "AppState":
        from medadapt.jobs.runner import JobManager
        from medadapt.pipeline import Pipeline

        from medadapt.setup_chain import SetupChain

        jobs = JobManager(cfg)
        state = cls(cfg, Pipeline(cfg, _engine_factory(cfg), _retriever_factory(cfg)), jobs)
        state.setup = SetupChain(cfg, jobs)
        state.pipeline.preparing = state.setup.message_for
        return state

    def preload(self, wait_index_s: float = 1800.0) -> None:
        """Load the engine (base model and default adapters) now, and in the background open the retriever (the
        embedder, the table) as soon as the index is there (the setup copies a shipped one in a second), so the first
        question pays neither."""
        import logging
        import threading
        import time

        self.pipeline.engine

        def warm() -> None:
            deadline = time.time() + wait_index_s
            while time.time() < deadline:
                try:
                    if self.pipeline.index_status().get("built"):
                        self.pipeline.retriever().retrieve("warm-up query")
                        return
                except Exception as e:  # noqa: BLE001 — a warm-up only: the first question reports real errors
                    logging.getLogger(__name__).info("retriever warm-up: %s: %s", type(e).__name__, e)
                    return
                time.sleep(2.0)

        threading.Thread(target=warm, name="medadapt-warm-retriever", daemon=True).start()

    def adapters(self, kind: str) -> list[tuple[str, str, Path]]:
        """(label, name, folder) of every adapter the ``kind`` column offers, each label starting with its origin
        (:attr:`medadapt.adapters.AdapterInfo.label`): shipped, trained here (newest first), published models once
        prepared; the MSFT column also offers CPT-only models (stage 1 of MSFT); plus an explicitly configured one.
        The name (:func:`medadapt.refs.to_ref`) is what the page carries (the UI redacts the labels)."""
        infos = list_adapters(self.cfg, kind) + (list_adapters(self.cfg, "cpt") if kind == "msft" else [])
        found = [(a.label, a.ref or to_ref(self.cfg, a.path) or f"{kind}:{a.path.name}", a.path) for a in infos]
        configured = resolve_adapter(self.cfg, kind)
        if configured is not None and configured not in {p for _, _, p in found}:
            found.insert(0, (f"configured · {kind}: {configured}", to_ref(self.cfg, configured) or f"configured:{kind}",
                             configured))
        return found

    def adapter_choices(self, kind: str) -> list[tuple[str, str]]:
        """(label, name) of every adapter of ``kind`` (:meth:`adapters`): the Compare dropdown's choices."""
        return [(label, name) for label, name, _ in self.adapters(kind)]

    def checked_adapter(self, kind: str, name: str | None) -> Path | None:
        """The folder of the adapter a user picked, only if it is one of the listed ones: the page sends a name
        (:meth:`adapters`), resolved here by lookup, never joined to a folder (no arbitrary paths from requests).

        ``""`` (or None) means the newest one now (so a column starts answering once the setup trains its adapter,
        without a reload); ``NO_ADAPTER`` means none.
        """
        from medadapt.pipeline import InputError

        if not name:
            return self.default_adapter(kind)
        if name == NO_ADAPTER:
            return None
        found = next((p for _, n, p in self.adapters(kind) if n == name), None)
        if found is None:
            raise InputError(f"Unknown {kind.upper()} adapter; pick one from the list (press Refresh adapters after "
                             "training).")
        return Path(found)

    def default_adapter(self, kind: str) -> Path | None:
        """What the column runs when nothing is picked: ``adapters.<kind>`` (``auto``: the shipped adapter, else the
        newest trained one, else a prepared published model; :func:`medadapt.adapters.default_adapter`)."""
        return resolve_adapter(self.cfg, kind)

    def default_label(self, kind: str) -> str:
        """The default choice's label: what it resolves to now (origin first), or that there is none yet and why."""
        path = self.default_adapter(kind)
        if path is not None:
            label = next((lab for lab, _, p in self.adapters(kind) if p == path), f"{kind}: {path.name}")
            return f"default: {label}"
        waiting = self.setup.message_for(kind) if self.setup is not None else None
        return "default: none yet — " + (waiting.removeprefix("preparing: ") if waiting else
                                         "train one in the Training tab")
