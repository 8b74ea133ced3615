"""The release step: train the profile's SFT and MSFT with the shipped recipe, evaluate them, and write the adapters,
the retrieval index and the results into the repository, together (maintainers; the app only reads them).

    python -m medadapt.release [--profile offline] [--work DIR]     # everything, resumable: run it again to continue
    python -m medadapt.release reevaluate [--n 200 --cot-n 50]       # the shipped adapters again (no training)
    python -m medadapt.release check                                 # the shipped files against their checksums
    python -m medadapt.release agree NEW.json                        # a re-run's predictions against the shipped ones

Stages (each skipped when its output is in the work dir, ``runs/release-<profile>`` by default):

1. **train**: ``python -m trainers.sft`` and ``python -m trainers.msft`` on ``configs/<profile>/{sft,msft}.yaml``;
2. **index**: ``python -m medadapt.retrieval build`` into a fresh index dir, old table versions removed;
3. **stage**: each adapter's weights in half precision (``adapter_model.safetensors``; its sha256 is its identity,
   :func:`medadapt.shipped.adapter_checksum`), its config and a ``medadapt.json`` without server paths; the table;
4. **eval**: ``python -m eval run`` on exactly the staged files (base, RAG on the staged table, SFT, MSFT): the
   loglik views at ``--n`` items per benchmark, chain of thought on the first ``--cot-n`` of them (greedy, 512
   tokens), and again under the thinking budget (``cot_budget``); merged into one file;
5. **open**: the held-out open prompts (:mod:`eval.open_answers`) for base, SFT and MSFT; **perplexity**: base, the
   MSFT run's CPT stage and MSFT on CPT's held-out passages and a general control (``python -m eval perplexity``,
   the Benchmarks tab's perplexity panel; the CPT stage adapter itself does not ship);
6. **install**: model cards (recipe, data, results, checksum), the manifest ``release.json`` and the results file
   ``results/<profile>/release.json`` naming each adapter by checksum, swapped into the repository together: the
   previous release's files are replaced, never mixed with the new ones.

``reevaluate`` skips stages 1-3: the shipped release itself (adapters, index, manifest) is staged byte for byte, so
its checksums stay, and stages 4-6 evaluate it again (other sizes, another machine) and install the new results with
new model cards; the perplexity panel is kept (the CPT stage adapter it needs does not ship).

Every subprocess runs niced, with its own runs, index and results dirs under the work dir, so the app and other jobs
are not disturbed. ``--sft RUN --msft RUN --index DIR`` reuse finished trainings and a built index (a trial).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medadapt.config import REPO_ROOT, AppConfig, load_config
from medadapt.jobs.rundir import read_json, write_json_atomic
from medadapt.shipped import KINDS, MANIFEST, WEIGHTS, adapter_checksum, base_model_id, read_manifest, shipped_root

log = logging.getLogger("medadapt.release")

RESULTS_NAME = "release.json"  # results/<profile>/release.json
PERPLEXITY_NAME = "perplexity-release.json"  # results/<profile>/perplexity-release.json (the perplexity panel)
COT_TOKENS = 512
THINK_BUDGET = 448  # 512 - 64 tokens for the answer line (docs/PERFORMANCE.md, "A thinking budget")
AGREEMENT_GOAL = 0.97  # same predictions on loglik item-views when the shipped results are re-run
N, COT_N, OPEN_N = 200, 50, 100  # the evaluation's default sizes (items per benchmark; open prompts)


# ---------------------------------------------------------------- small helpers

def rel(path: Path) -> str:
    """A path as the repository names it (relative to its root), for files that ship."""
    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


class Release:
    """One release of a profile, built in ``work`` and installed into ``shipped_root(cfg)`` and the results dir."""

    def __init__(self, cfg: AppConfig, work: Path, *, n: int = N, cot_n: int = COT_N, open_n: int = OPEN_N,
                 nice: int = 10, reuse: dict[str, Path] | None = None, index_from: Path | None = None,
                 configs: Path | None = None) -> None:
        self.cfg, self.work = cfg, Path(work).resolve()
        self.configs = Path(configs) if configs else REPO_ROOT / "configs" / cfg.profile
        self.n, self.cot_n, self.open_n, self.nice = n, cot_n, open_n, nice
        self.reuse = reuse or {}
        self.index_from = index_from
        self.stage_dir = self.work / "stage" / cfg.profile
        self.eval_dir = self.work / "eval"
        self.work.mkdir(parents=True, exist_ok=True)

    # -- subprocesses
    def env(self, name: str = "") -> dict[str, str]:
        """The jobs' environment: the app's config (model, data, cache: :func:`medadapt.jobs.runner.child_env`),
        with the work dir's own index and results dirs, the staged release as the shipped one, and a runs dir per job (the
        trainings share one; each evaluation and the index hold their own job lock, so the baselines' evaluation runs
        beside a training or the adapters' evaluation)."""
        from medadapt.jobs.runner import child_env

        runs = "runs" if name.startswith("train") else "runs-" + name  # each job its own lock: evaluations in parallel
        env = child_env(self.cfg)
        env.update(MEDADAPT_RUNS_DIR=str(self.work / runs), MEDADAPT_INDEX_DIR=str(self.work / "index"),
                   MEDADAPT_RESULTS_DIR=str(self.work / "results"), MEDADAPT_SHIPPED_DIR=str(self.stage_dir),
                   WANDB_MODE="disabled")
        env.pop("MEDADAPT_SETUP_TRAIN", None)
        return env

    def run(self, name: str, argv: list[str]) -> None:
        """Run one stage's command (niced), its output in ``<work>/<name>.log``; raises when it fails."""
        cmd = (["nice", "-n", str(self.nice)] if self.nice else []) + [sys.executable, *argv]
        logfile = self.work / f"{name}.log"
        log.info("%s: %s (log: %s)", name, " ".join(argv), logfile)
        t0 = time.time()
        with open(logfile, "a", encoding="utf-8") as out:
            out.write(f"=== {datetime.now():%Y-%m-%d %H:%M:%S} $ {' '.join(cmd)}\n")
            out.flush()
            rc = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env(name), stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise RuntimeError(f"{name} failed (exit {rc}); see {logfile}")
        self.note(name, round(time.time() - t0, 1))

    def note(self, key: str, value: Any) -> None:
        """Record a stage's wall time (or any fact) in ``<work>/release-state.json``."""
        path = self.work / "release-state.json"
        state = read_json(path)
        state[key] = value
        write_json_atomic(path, state)

    # -- 1. train
    def train(self) -> dict[str, Path]:
        """The finished run dir of each kind (trained here unless reused)."""
        runs = {}
        for kind in KINDS:
            run = Path(self.reuse[kind]) if kind in self.reuse else self.work / kind
            status = read_json(run / "status.json").get("status")
            if status != "finished":
                config = self.configs / f"{kind}.yaml"
                resume = ["--resume"] if any((run / "checkpoints").glob("**/checkpoint-*")) else []
                self.run(f"train-{kind}", ["-m", f"trainers.{kind}", "--config", str(config), "--output_dir",
                                           str(run), *resume])
            runs[kind] = run
        return runs

    # -- 2. index
    def index(self) -> Path:
        """The LanceDB folder holding the profile's built table, old versions removed."""
        folder = Path(self.index_from) if self.index_from else self.work / "index"
        table = folder / f"{self.cfg.rag.table}.lance"
        if not self.index_from and not (self.work / "index.done").exists():
            self.run("index", ["-m", "medadapt.retrieval", "build", "--profile", self.cfg.profile])
            (self.work / "index.done").write_text(datetime.now().isoformat())
        if not table.is_dir():
            raise RuntimeError(f"no table {self.cfg.rag.table} in {folder}")
        compact_table(folder, self.cfg.rag.table)
        return folder

    # -- 3. stage
    def stage(self, runs: dict[str, Path], index: Path) -> dict[str, Any]:
        """Half-precision adapters and the table in ``stage_dir``; returns the manifest (without results)."""
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        adapters = {}
        for kind, run in runs.items():
            out = self.stage_dir / kind
            meta = stage_adapter(run / "adapter", out, base_model_id(self.cfg))
            adapters[kind] = {"path": kind, "sha256": adapter_checksum(out), "bytes": (out / WEIGHTS).stat().st_size,
                              "dtype": "float16", "steps": meta.get("steps"), "final_loss": meta.get("final_loss"),
                              "final_eval_loss": meta.get("final_eval_loss"), "wall_s": meta.get("wall_s"),
                              "recipe": rel(self.configs / f"{kind}.yaml")}
        table = self.cfg.rag.table
        rows = self.stage_index(index)
        dest = self.stage_dir / "index"
        manifest = {"profile": self.cfg.profile, "base_model": base_model_id(self.cfg),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": git_commit(),
                    "command": f"python -m medadapt.release --profile {self.cfg.profile}" + self.size_flags(),
                    "adapters": adapters,
                    "index": {"path": "index", "table": table, "embedder": self.cfg.rag.embedder,
                              "corpus": list(self.cfg.rag.corpus), "rows": rows, "bytes": folder_bytes(dest)},
                    "results": rel(self.results_path())}
        write_json_atomic(self.stage_dir / MANIFEST, manifest)
        return manifest

    def restage(self) -> dict[str, Any]:
        """The shipped release, byte for byte, as the stage (``reevaluate``); returns its manifest with this
        evaluation recorded beside the build that made the adapters."""
        shipped = shipped_root(self.cfg)
        manifest = read_manifest(shipped) if shipped is not None else {}
        if not manifest:
            raise RuntimeError(f"profile {self.cfg.profile} has no shipped release to evaluate again ({shipped})")
        if self.stage_dir.exists():
            shutil.rmtree(self.stage_dir)
        shutil.copytree(shipped, self.stage_dir)
        for kind, entry in manifest["adapters"].items():
            got = adapter_checksum(self.stage_dir / entry["path"])
            if got != entry["sha256"]:
                raise RuntimeError(f"shipped {kind} has sha256 {got}, its manifest says {entry['sha256']}")
        manifest["evaluation"] = {"command": f"python -m medadapt.release reevaluate --profile {self.cfg.profile}"
                                  + self.size_flags(), "created": datetime.now(timezone.utc).isoformat(
                                      timespec="seconds"), "code": git_commit()}
        manifest["results"] = rel(self.results_path())
        write_json_atomic(self.stage_dir / MANIFEST, manifest)
        return manifest

    def size_flags(self) -> str:
        """The evaluation's sizes as command-line flags, those at their defaults left out."""
        return "".join(f" --{k} {v}" for k, v, d in (("n", self.n, N), ("cot-n", self.cot_n, COT_N),
                                                     ("open-n", self.open_n, OPEN_N)) if v != d)

    # -- 4. eval
    def evaluate(self, groups: tuple[str, ...] = ("base", "rag", "adapters")) -> dict[str, Any] | None:
        """Every view the Benchmarks tab shows, of all four variants, on the staged files; one merged results dict.

        All four variants run in one process per mode; when the baselines (base, RAG: they depend on no adapter) were
        evaluated ahead (``python -m medadapt.release baselines``), only the adapters run and the files are merged.
        A finished file is kept when the release is run again. Returns None unless every group was asked for."""
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        self.stage_index_copy()
        specs = {"base": "base", "rag": "rag", "adapters": ",".join(f"{k}={self.stage_dir / k}" for k in KINDS)}
        runs = [("loglik", ["--mode", "loglik", "--n", str(self.n)]),
                ("cot", ["--mode", "cot", "--n", str(self.cot_n), "--batch_size", "50",
                         "--max_new_tokens", str(COT_TOKENS)]),
                ("cot_budget", ["--mode", "cot", "--n", str(self.cot_n), "--batch_size", "50",
                                "--max_new_tokens", str(COT_TOKENS), "--think_budget", str(THINK_BUDGET)])]
        runs = runs if self.cot_n > 0 else runs[:1]  # --cot-n 0: the loglik views only
        plan = []  # (file, variants, args) in the merge's order: per mode, base, RAG, then the adapters
        for name, args in runs:
            early = [self.eval_dir / f"{name}-{g}.json" for g in ("base", "rag")]
            if set(groups) == set(specs) and not all(map(complete_results, early)) and not self.baselines_running():
                plan.append((self.eval_dir / f"{name}.json", ",".join(specs.values()), args))  # all four at once
            else:  # the baselines' own files (evaluated ahead or beside this process), the adapters' alone
                plan += [(self.eval_dir / f"{name}-{g}.json", specs[g], args) for g in specs if g in groups]
        beside = self.baselines_running()  # then the adapters first, and the baselines' files waited for
        for out, variants, args in sorted(plan, key=lambda t: beside and t[0].stem.endswith(("-base", "-rag"))):
            if beside and out.stem.endswith(("-base", "-rag")):
                self.wait_for(out)
            if not complete_results(out):
                self.run(f"eval-{out.stem}", ["-m", "eval", "run", "--profile", self.cfg.profile,
                                              "--variants", variants, *args, "--out", str(out)])
        files = [out for out, _, _ in plan]
        if set(groups) != set(specs):
            return None
        merged = self.eval_dir / "merged.json"
        self.run("eval-merge", ["-m", "eval", "merge", *map(str, files), "--out", str(merged)])
        return json.loads(merged.read_text(encoding="utf-8"))

    def baselines_running(self) -> bool:
        """Whether ``python -m medadapt.release baselines`` is evaluating in this work dir now (its pid file)."""
        try:
            pid = int((self.work / "baselines.pid").read_text())
            os.kill(pid, 0)
            return pid != os.getpid()
        except (OSError, ValueError):
            return False

    def wait_for(self, out: Path) -> None:
        """Wait while the baselines process writes ``out`` (the adapters were evaluated meanwhile)."""
        log.info("waiting for the baselines' %s", out.name)
        while self.baselines_running() and not complete_results(out):
            time.sleep(10)

    def stage_index_copy(self) -> None:
        """RAG is evaluated on the staged table: a copy of it becomes the subprocesses' index dir."""
        dest = self.work / "index"
        table = self.cfg.rag.table
        if not (self.stage_dir / "index" / f"{table}.lance").is_dir():
            self.stage_index(self.index())
        if self.index_from or not (dest / f"{table}.lance").is_dir():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(self.stage_dir / "index", dest)

    def stage_index(self, index: Path) -> int:
        """The built table into the stage folder (with its sources record, without its build time); its rows."""
        dest = self.stage_dir / "index"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        table = self.cfg.rag.table
        shutil.copytree(index / f"{table}.lance", dest / f"{table}.lance")
        record = index / f"{table}.sources.json"
        if record.exists():
            sources = read_json(record)
            sources.pop("time", None)
            write_json_atomic(dest / record.name, sources)
        return count_rows(dest, table)

    # -- 5. open questions
    def open_questions(self) -> dict[str, Any]:
        out = self.work / "open.json"
        if not out.exists():
            variants = "base," + ",".join(f"{k}={self.stage_dir / k}" for k in KINDS)
            self.run("open", ["-m", "eval.open_answers", "--profile", self.cfg.profile, "--variants", variants,
                              "--split", "test", "--n", str(self.open_n), "--out", str(out)])
        return json.loads(out.read_text(encoding="utf-8"))

    # -- 5b. what CPT buys (the Benchmarks tab's perplexity panel)
    def perplexity(self, runs: dict[str, Path]) -> dict[str, Any] | None:
        """Per-token perplexity of base, the MSFT run's CPT stage and the staged MSFT on CPT's held-out passages and
        the general control (``python -m eval perplexity``); None when the MSFT run kept no CPT stage adapter."""
        cpt = runs["msft"] / "cpt_adapter"
        out = self.work / "perplexity.json"
        if not (cpt / WEIGHTS).is_file():
            log.warning("no CPT stage adapter in %s: no perplexity panel in this release", runs["msft"])
            return None
        if not out.exists():
            self.run("perplexity", ["-m", "eval", "perplexity", "--profile", self.cfg.profile, "--variants",
                                    f"base,cpt={cpt},msft={self.stage_dir / 'msft'}", "--out", str(out)])
        return json.loads(out.read_text(encoding="utf-8"))

    # -- 6. install
    def results_path(self, name: str = RESULTS_NAME) -> Path:
        """``<results_dir>/<profile>/release.json`` (the repository's ``results/`` unless configured elsewhere)."""
        return self.cfg.paths.resolve("results_dir") / self.cfg.profile / name

    def finish(self, manifest: dict[str, Any], results: dict[str, Any], open_res: dict[str, Any],
               ppl: dict[str, Any] | None = None) -> dict[str, int]:
        """Name the adapters by checksum in the results, write the cards, swap everything into the repository;
        returns the size of each shipped part in bytes."""
        target = shipped_root(self.cfg)
        if target is None:
            raise RuntimeError(f"profile {self.cfg.profile} has no paths.shipped_dir to ship into")
        results = name_adapters(results, manifest, self.stage_dir, target)
        extra = {}
        if ppl is not None:  # its adapters by checksum already (eval.perplexity); the shipped one by its folder
            for entry in (ppl.get("adapters") or {}).values():
                if entry.get("adapter") and Path(entry["adapter"]).resolve() == (self.stage_dir / "msft").resolve():
                    entry["adapter"] = rel(target / "msft")
            manifest["perplexity"] = rel(self.results_path(PERPLEXITY_NAME))
            extra[self.results_path(PERPLEXITY_NAME)] = scrub(ppl)
        results["open_questions"] = {k: open_res[k] for k in ("split", "n_prompts", "decoding", "run_words", "summary")
                                     if k in open_res}
        results["open_questions"]["rows"] = {v: [{k: r[k] for k in ("id", "answer", "restates", "letter",
                                                                   "unfinished")} for r in rows]
                                             for v, rows in open_res.get("rows", {}).items()}
        for kind in KINDS:
            card = model_card(kind, read_json(self.stage_dir / kind / "medadapt.json"), manifest, results,
                              rel(target / kind), self.cot_n)
            (self.stage_dir / kind / "README.md").write_text(card, encoding="utf-8")
        write_json_atomic(self.stage_dir / MANIFEST, manifest)
        sizes = install(self.stage_dir, target, results, self.results_path(), extra)
        return sizes


def complete_results(path: Path) -> bool:
    """A results file whose every variant finished (a re-run continues the stage otherwise)."""
    data = read_json(path)
    return bool(data.get("variants")) and all(v.get("status") == "ok" for v in data["variants"].values())


def compact_table(folder: Path, table: str) -> None:
    """Merge the table's fragments and drop every old version (what ships is the latest version only)."""
    from datetime import timedelta

    import lancedb

    tbl = lancedb.connect(str(folder)).open_table(table)
    tbl.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)


def count_rows(folder: Path, table: str) -> int:
    import lancedb

    return lancedb.connect(str(folder)).open_table(table).count_rows()


def stage_adapter(src: Path, out: Path, base_id: str) -> dict[str, Any]:
    """Copy a trained adapter as it ships: weights in float16, its config, and a ``medadapt.json`` without server
    paths; returns that record."""
    import torch
    from safetensors.torch import load_file, save_file

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tensors = load_file(str(src / WEIGHTS))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    worst = max(float((v.float() - half[k].float()).abs().max()) for k, v in tensors.items())
    save_file(half, str(out / WEIGHTS), metadata={"format": "pt"})
    os.chmod(out / WEIGHTS, 0o644)
    config = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    meta = json.loads((src / "medadapt.json").read_text(encoding="utf-8"))
    meta = scrub(meta)
    meta.update(base_model=base_id, shipped={"dtype": "float16", "trained_dtype": str(next(iter(tensors.values())).dtype),
                                              "max_rounding_error": worst, "sha256": adapter_checksum(out)})
    (out / "medadapt.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    return meta


def scrub(value: Any) -> Any:
    """A record without absolute server paths: each becomes its last component (``…/name``)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in ("run_dir", "output_dir")}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and len(value) > 1:
        return "…/" + Path(value).name
    if isinstance(value, str) and ": /" in value:  # lineage lines "base: /root/.cache/…/model"
        head, _, path = value.partition(": /")
        return f"{head}: …/{Path('/' + path).name}"
    return value


def name_adapters(results: dict[str, Any], manifest: dict[str, Any], stage: Path, target: Path) -> dict[str, Any]:
    """The results as they ship: each adapter variant's folder as the repository names it, the release record
    (adapters by checksum, the index, the manifest), and a check that every checksum matches."""
    where = {str((stage / k).resolve()): k for k in KINDS}
    for name, entry in results.get("variants", {}).items():
        kind = where.get(str(Path(entry["adapter"]).resolve())) if entry.get("adapter") else None
        if kind is None:
            continue
        recorded = (entry.get("adapter_meta") or {}).get("sha256")
        if recorded != manifest["adapters"][kind]["sha256"]:
            raise RuntimeError(f"{name} was evaluated on adapter {recorded}, the staged {kind} is "
                               f"{manifest['adapters'][kind]['sha256']}")
        entry["adapter"] = rel(target / kind)
    results["release"] = {"adapters": {k: {"sha256": v["sha256"], "path": rel(target / v["path"])}
                                       for k, v in manifest["adapters"].items()},
                          "index": {**manifest["index"], "path": rel(target / manifest["index"]["path"])},
                          "manifest": rel(target / MANIFEST), "created": manifest["created"], "code": manifest["code"],
                          "command": manifest["command"],
                          **({"evaluation": manifest["evaluation"]} if manifest.get("evaluation") else {})}
    return scrub_results(results)


def scrub_results(results: dict[str, Any]) -> dict[str, Any]:
    """Absolute paths out of what the results file keeps about adapters and configs."""
    for entry in results.get("variants", {}).values():
        if isinstance(entry.get("adapter_meta"), dict):
            entry["adapter_meta"] = scrub(entry["adapter_meta"])
    for key in ("config", "config_by_run"):
        if key in results:
            results[key] = scrub(results[key])
    return results


def install(stage: Path, target: Path, results: dict[str, Any], results_path: Path,
            extra: dict[Path, dict[str, Any]] | None = None) -> dict[str, int]:
    """Put the staged folder in place of ``target`` and write the results file (and ``extra`` files: the perplexity
    panel's), one right after the other; the old release is moved aside first and removed last. Returns bytes per
    shipped part."""
    tmp = target.with_name(f".{target.name}.new-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(stage, tmp)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_results = results_path.with_name(f".{results_path.name}.tmp-{os.getpid()}")
    tmp_results.write_text(json.dumps(results, separators=(",", ":"), ensure_ascii=False, default=str),
                           encoding="utf-8")
    os.replace(tmp_results, results_path)
    for path, data in (extra or {}).items():
        write_json_atomic(path, data)
    if old.exists():
        shutil.rmtree(old)
    sizes = {k: folder_bytes(target / k) for k in KINDS}
    sizes["index"] = folder_bytes(target / "index")
    sizes["manifest"] = (target / MANIFEST).stat().st_size
    sizes["results"] = results_path.stat().st_size
    sizes.update({path.stem: path.stat().st_size for path in extra or {}})
    return sizes


# ---------------------------------------------------------------- the model card

def results_rows(results: dict[str, Any], variant: str) -> list[str]:
    """Markdown table rows: each view's accuracy per benchmark for ``variant`` and base (95% CI)."""
    from medadapt.data.benchmarks import task_label
    from eval.report import ALL, benchmarks_of, summarize
    from eval.views import view_label, views_of

    benches = benchmarks_of(results)
    rows = ["| view | variant | " + " | ".join(task_label(b) for b in benches) + " | average [95% CI] |",
            "| --- | --- | " + " | ".join("---" for _ in benches) + " | --- |"]
    for view in views_of(results):
        summ = summarize(results, view)
        for v in (variant, "base"):
            per = summ.get(v)
            if not per:
                continue
            cells = [f"{100 * per[b]['acc']:.1f}" if b in per else "—" for b in benches]
            avg = per.get(ALL)
            rows.append(f"| {view_label(view)} | {v} | " + " | ".join(cells) + " | "
                        + (f"{100 * avg['acc']:.1f} [{100 * avg['ci_low']:.1f}, {100 * avg['ci_high']:.1f}]"
                           if avg else "—") + " |")
    return rows


def model_card(kind: str, meta: dict[str, Any], manifest: dict[str, Any], results: dict[str, Any],
               where: str, cot_n: int) -> str:
    """The shipped adapter's README.md: Hugging Face front matter and training (as every trained adapter's card),
    then the checksum, recipe, data, results per view beside base, the open-question figure and how to reproduce."""
    from trainers.publish import model_card as training_card

    sha = manifest["adapters"][kind]["sha256"]
    n = max((len(v) for v in results.get("item_ids", {}).values()), default=0)
    data = meta.get("data", {})
    lines = [training_card(meta).rstrip(), "", "## Release", "",
             f"Shipped by `{manifest['command']}` on {manifest['created']} (code `{manifest['code'] or '?'}`) as float16 "
             f"safetensors. The Compare tab serves it by default; the Benchmarks tab's results file "
             f"`{manifest['results']}` names it by this checksum."
             + (f" Evaluated again by `{manifest['evaluation']['command']}` on {manifest['evaluation']['created']} "
                f"(code `{manifest['evaluation']['code'] or '?'}`)." if manifest.get("evaluation") else ""), "",
             f"- **sha256** of `{WEIGHTS}`: `{sha}`",
             f"- recipe: `{manifest['adapters'][kind]['recipe']}` (the full config is above)",
             f"- data: {', '.join(data.get('sources', [])) or '-'} ({data.get('train_examples', '?')} training "
             f"examples); the evaluated items excluded: {json.dumps(data.get('excluded_eval_items', {}))}", "",
             f"## Results (seeded samples: {n} items per benchmark, "
             + (f"chain of thought on the first {cot_n})" if cot_n else "the log-likelihood views only)"), "",
             *results_rows(results, kind), ""]
    open_q = results.get("open_questions", {}).get("summary", {})
    if open_q:
        lines += ["## Open questions", "",
                  f"Held-out prompts asked without options ({results['open_questions'].get('n_prompts')}, "
                  "`python -m eval.open_answers`): the share of answers that restate the question or name an option "
                  "letter never offered, 95% CI.", ""]
        for v in ("base", kind):
            s = open_q.get(v)
            if s:
                lines.append(f"- {v}: {100 * s['share']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] "
                             f"({s['restates']} restate, {s['letter']} letter, of {s['n']})")
        lines.append("")
    lines += ["## Reproduce", "", "```bash", manifest["command"] + "    # train, evaluate, ship (maintainers)",
              f"python -m eval run --variants {kind}={where} --mode loglik --n {n} --out /tmp/rerun.json",
              "python -m medadapt.release agree /tmp/rerun.json    # same predictions as the shipped results?",
              "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- checks

def check(cfg: AppConfig) -> list[str]:
    """What is wrong with the shipped release: a weights file whose sha256 is not the manifest's, a results file that
    names other adapters or variants evaluated on other checksums. [] when all agree."""
    root = shipped_root(cfg)
    man = read_manifest(root)
    if not man:
        return [f"no shipped release for profile {cfg.profile} ({root})"]
    problems = []
    for kind, entry in man.get("adapters", {}).items():
        got = adapter_checksum(root / entry["path"])
        if got != entry["sha256"]:
            problems.append(f"{kind}: {root / entry['path'] / WEIGHTS} has sha256 {got}, the manifest {entry['sha256']}")
    results = read_json(REPO_ROOT / man.get("results", ""))
    if not results:
        return problems + [f"the results file {man.get('results')} is missing"]
    named = {k: v.get("sha256") for k, v in results.get("release", {}).get("adapters", {}).items()}
    for kind, entry in man.get("adapters", {}).items():
        if named.get(kind) != entry["sha256"]:
            problems.append(f"{man['results']} names {kind} {named.get(kind)}, the manifest {entry['sha256']}")
    for name, entry in results.get("variants", {}).items():
        sha = (entry.get("adapter_meta") or {}).get("sha256")
        if entry.get("adapter") and sha not in named.values():
            problems.append(f"{man['results']}: variant {name} was evaluated on {sha}, not a shipped adapter")
    return problems


def agreement(shipped: dict[str, Any], rerun: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{variant: {view: {"same", "n", "share"}}}``: how many item-views of a re-run predict what the shipped
    results predict (same variant name, same items)."""
    from eval.views import row_view, views_of

    out: dict[str, dict[str, Any]] = {}
    views = [v for v in views_of(rerun) if v in views_of(shipped)]
    for name, entry in rerun.get("variants", {}).items():
        mine = shipped.get("variants", {}).get(name)
        if not mine or entry.get("status") != "ok":
            continue
        per = {}
        for view in views:
            same = n = 0
            for bench, rows in entry.get("predictions", {}).items():
                theirs = {r["id"]: r for r in mine.get("predictions", {}).get(bench, [])}
                for r in rows:
                    if r["id"] not in theirs:
                        continue
                    a, b = row_view(r, view, rerun), row_view(theirs[r["id"]], view, shipped)
                    if a is None or b is None:
                        continue
                    n += 1
                    same += a.get("pred") == b.get("pred")
            if n:
                per[view] = {"same": same, "n": n, "share": same / n}
        out[name] = per
    return out


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medadapt.release", description=__doc__.split("\n")[0])
    p.add_argument("cmd", nargs="?", default="build", choices=["build", "reevaluate", "baselines", "check", "agree"],
                   help="build: everything (default); baselines: only the index and the evaluation of base and RAG "
                        "(--groups), which no adapter changes, ahead of the training; reevaluate: the shipped release's "
                        "adapters and index evaluated again, new results installed; check; agree")
    p.add_argument("--groups", default="base,rag", help="baselines: the groups to evaluate now (base, rag)")
    p.add_argument("file", nargs="?", help="agree: a results file of `python -m eval run` on the shipped adapters")
    p.add_argument("--profile", default="offline")
    p.add_argument("--work", help="work dir (default runs/release-<profile>; kept, so a re-run continues)")
    p.add_argument("--n", type=int, default=N, help="loglik items per benchmark (default %(default)s)")
    p.add_argument("--cot-n", type=int, default=COT_N, help="chain-of-thought items per benchmark; 0: no chain-of-"
                   "thought views (default %(default)s)")
    p.add_argument("--open-n", type=int, default=OPEN_N, help="held-out open prompts (default %(default)s)")
    p.add_argument("--sft", help="reuse this finished SFT run dir instead of training")
    p.add_argument("--msft", help="reuse this finished MSFT run dir instead of training")
    p.add_argument("--index", help="reuse this index dir (holding the profile's table) instead of building")
    p.add_argument("--nice", type=int, default=10, help="niceness of the subprocesses (0: none)")
    p.add_argument("--configs", help="the trainer configs' folder (default configs/<profile>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(args.profile)
    if args.cmd == "check":
        problems = check(cfg)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if not problems:
            man = read_manifest(shipped_root(cfg))
            print("ok: " + ", ".join(f"{k} {v['sha256'][:12]}" for k, v in man["adapters"].items())
                  + f"; results {man['results']} names them")
        return 1 if problems else 0
    if args.cmd == "agree":
        if not args.file:
            p.error("agree needs a results file")
        man = read_manifest(shipped_root(cfg))
        shipped = read_json(REPO_ROOT / man.get("results", ""))
        rerun = read_json(Path(args.file))
        worst = 1.0
        for name, per in agreement(shipped, rerun).items():
            for view, a in per.items():
                print(f"{name} {view}: {a['same']}/{a['n']} same predictions ({100 * a['share']:.1f}%)")
                if view in ("letter", "letter_cal", "text_norm"):
                    worst = min(worst, a["share"])
        print(f"RESULT loglik_agreement_min={100 * worst:.1f} goal={100 * AGREEMENT_GOAL:.0f}")
        return 0 if worst >= AGREEMENT_GOAL else 1
    work = Path(args.work) if args.work else cfg.paths.resolve("runs_dir") / f"release-{cfg.profile}"
    reuse = {k: Path(v) for k, v in (("sft", args.sft), ("msft", args.msft)) if v}
    rel_ = Release(cfg, work, n=args.n, cot_n=args.cot_n, open_n=args.open_n, nice=args.nice, reuse=reuse,
                   index_from=Path(args.index) if args.index else None,
                   configs=Path(args.configs) if args.configs else None)
    t0 = time.time()
    if args.cmd == "baselines":
        (work / "baselines.pid").write_text(str(os.getpid()))  # `build` evaluates the adapters beside it meanwhile
        rel_.evaluate(tuple(g for g in args.groups.split(",") if g in ("base", "rag")))
        print(f"baselines evaluated in {rel_.eval_dir} ({time.time() - t0:.0f} s); `build` reuses them")
        return 0
    if args.cmd == "reevaluate":
        runs, manifest = {}, rel_.restage()
    else:
        runs = rel_.train()
        manifest = rel_.stage(runs, rel_.index())
    open_res = rel_.open_questions()  # ahead of the views: they may wait for a `baselines` process at the end
    ppl = rel_.perplexity(runs) if runs else None  # reevaluate: the shipped perplexity panel stays
    results = rel_.evaluate()
    sizes = rel_.finish(manifest, results, open_res, ppl)
    total = sum(sizes.values())
    print("shipped: " + ", ".join(f"{k} {mb(v)}" for k, v in sizes.items()) + f"; total {mb(total)}")
    print("checksums: " + ", ".join(f"{k} {v['sha256']}" for k, v in manifest["adapters"].items()))
    target = shipped_root(cfg)
    print(f"commit with: git add {rel(target)} {rel(rel_.results_path())} && git commit -m 'release' -- "
          f"{rel(target)} {rel(rel_.results_path())}")
    print(f"RESULT release_mb={total / 2**20:.1f} wall_s={time.time() - t0:.0f} "
          + " ".join(f"{k}_sha256={v['sha256'][:12]}" for k, v in manifest["adapters"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
