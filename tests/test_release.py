"""The release step and what the app makes of it (issue 37): shipped adapters identified by checksum everywhere,
the first-run setup skipping training (and the index build) when a release is shipped, adapters labelled by origin,
and the Benchmarks tab marking results measured on another adapter than Compare runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medadapt.config import REPO_ROOT, load_config
from tests.conftest import make_random_adapter
from tests.test_setup import config_from, make_env

SHIPPED = REPO_ROOT / "assets" / "shipped" / "offline"


def trained_run(root: Path, kind: str, base: str, seed: int) -> Path:
    """A finished training run of ``kind`` (random LoRA weights) per the run-directory contract."""
    run = root / f"{kind}-2026010{seed}-000000"
    adapter = make_random_adapter(base, run / "adapter", seed)
    (adapter / "medadapt.json").write_text(json.dumps({
        "job": kind, "base_model": base, "steps": 2, "final_loss": 1.5, "run_dir": str(run),
        "lineage": [f"base: {base}"], "data": {"sources": ["medmcqa"], "train_examples": 8},
        "config": {"job": kind, "lora": {"r": 4}, "output_dir": str(run)}}))
    (run / "status.json").write_text(json.dumps({"status": "finished", "job": kind, "adapter": str(adapter)}))
    return run


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_model_dir):
    """``python -m medadapt.release`` on the tiny model: two finished runs reused, the fixture corpus's index, every
    evaluation at the smallest n; shipped into a temp folder (never the repository's)."""
    tmp = tmp_path_factory.mktemp("release")
    env = make_env(tmp, tiny_model_dir)
    env.update(MEDADAPT_SHIPPED_DIR=str(tmp / "shipped" / "offline"), MEDADAPT_RESULTS_DIR=str(tmp / "results"))
    cfg = config_from(env)
    runs = {k: trained_run(tmp / "trained", k, tiny_model_dir, i) for i, k in enumerate(("sft", "msft"), 1)}
    from medadapt.retrieval.rag import build_index

    idx_cfg = load_config("offline", {"paths": {"index_dir": str(tmp / "built-index"), "data_dir": env[
        "MEDADAPT_DATA_DIR"]}})
    assert build_index(idx_cfg) > 0
    out = subprocess.run([sys.executable, "-m", "medadapt.release", "--work", str(tmp / "work"), "--sft",
                          str(runs["sft"]), "--msft", str(runs["msft"]), "--index", str(tmp / "built-index"),
                          "--n", "2", "--cot-n", "1", "--open-n", "2", "--nice", "0"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"tmp": tmp, "env": env, "cfg": cfg, "runs": runs, "stdout": out.stdout,
            "target": tmp / "shipped" / "offline", "results": tmp / "results" / "offline" / "release.json"}


@pytest.mark.timeout(1800)  # the release fixture: five subprocesses (three evaluations, merge, open questions)
def test_release_names_its_adapters_by_checksum_everywhere(released):
    from safetensors import safe_open

    from medadapt.release import check
    from medadapt.shipped import adapter_checksum, file_sha256

    target, cfg = released["target"], released["cfg"]
    manifest = json.loads((target / "release.json").read_text())
    results = json.loads(released["results"].read_text())
    for kind in ("sft", "msft"):
        sha = file_sha256(target / kind / "adapter_model.safetensors")
        assert manifest["adapters"][kind]["sha256"] == sha == adapter_checksum(target / kind)
        assert results["release"]["adapters"][kind]["sha256"] == sha
        assert results["variants"][kind]["adapter_meta"]["sha256"] == sha  # evaluated on exactly the shipped file
        assert results["variants"][kind]["status"] == "ok"
        with safe_open(str(target / kind / "adapter_model.safetensors"), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
        card = (target / kind / "README.md").read_text()
        assert sha in card and "## Results" in card and "## Open questions" in card and "configs/" not in sha
    assert {"letter", "cot", "cot_budget"} <= set(results["views"])  # every view, one file
    assert set(results["variants"]) == {"base", "rag", "sft", "msft"}
    assert results["open_questions"]["summary"]["base"]["n"] == 2
    assert (target / "index" / f"{cfg.rag.table}.lance").is_dir() and manifest["index"]["rows"] > 0
    shipped = "".join(p.read_text(errors="ignore") for p in target.rglob("*") if p.suffix in (".json", ".md"))
    shipped += released["results"].read_text()
    for private in ("work", "trained", "built-index", "data"):  # no path of the machine that built it ships
        assert str(released["tmp"] / private) not in shipped
    assert check(cfg) == [] and "RESULT release_mb=" in released["stdout"]
    weights = target / "sft" / "adapter_model.safetensors"  # a changed byte is caught
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    try:
        assert any("sft" in p and "sha256" in p for p in check(cfg))
    finally:
        data[-1] ^= 1
        weights.write_bytes(bytes(data))


def test_install_replaces_the_release_and_its_results_together(tmp_path):
    from medadapt.release import install

    stage, target, results = tmp_path / "stage", tmp_path / "shipped" / "offline", tmp_path / "r" / "release.json"
    for gen in (1, 2):
        for kind in ("sft", "msft"):
            (stage / kind).mkdir(parents=True, exist_ok=True)
            (stage / kind / "adapter_model.safetensors").write_text(f"weights {gen}")
        (stage / "index").mkdir(exist_ok=True)
        (stage / "release.json").write_text(json.dumps({"gen": gen}))
        sizes = install(stage, target, {"gen": gen}, results)
        assert json.loads((target / "release.json").read_text()) == json.loads(results.read_text()) == {"gen": gen}
        assert (target / "sft" / "adapter_model.safetensors").read_text() == f"weights {gen}"
        assert set(sizes) == {"sft", "msft", "index", "manifest", "results"}
    assert [p.name for p in target.parent.iterdir()] == ["offline"]  # no old or half-written copy left


@pytest.fixture
def shipped_cfg(released, tmp_path):
    """The tiny model's offline config with the released folder shipped, fresh runs and index dirs."""
    env = dict(released["env"], MEDADAPT_RUNS_DIR=str(tmp_path / "runs"), MEDADAPT_INDEX_DIR=str(tmp_path / "index"))
    return config_from(env), env


@pytest.mark.timeout(1800)
def test_setup_skips_training_and_copies_the_index_when_a_release_ships(shipped_cfg, monkeypatch):
    from medadapt.jobs.runner import JobManager
    from medadapt.retrieval.rag import index_status
    from medadapt.setup_chain import SetupChain

    cfg, env = shipped_cfg
    monkeypatch.setenv("MEDADAPT_SETUP_CONFIGS", env["MEDADAPT_SETUP_CONFIGS"])
    jobs = JobManager(cfg, commands={k: [sys.executable, str(REPO_ROOT / "tests" / "fixtures" / "fake_trainer.py")]
                                     for k in ("sft", "msft")})
    st = SetupChain(cfg, jobs, train=False).run()
    assert {s: (r.status, r.how) for s, r in st.steps.items()} == {
        "index": ("done", "copied"), "sft": ("skipped", "shipped"), "msft": ("skipped", "shipped")}
    assert index_status(cfg)["complete"] and not list((Path(env["MEDADAPT_RUNS_DIR"]) / "offline").glob("sft-*"))
    asked = SetupChain(cfg, jobs, train=True).run()  # asked to train: it trains, next to the shipped adapters
    assert {s: r.status for s, r in asked.steps.items()} == {"index": "skipped", "sft": "done", "msft": "done"}
    assert asked.steps["sft"].how == "trained" and len(list((Path(env["MEDADAPT_RUNS_DIR"]) / "offline").glob(
        "sft-*"))) == 1


@pytest.mark.timeout(1800)
def test_compare_lists_adapters_by_origin_and_defaults_to_the_shipped_one(shipped_cfg, tiny_model_dir):
    from medadapt.adapters import list_adapters
    from medadapt.pipeline import InputError
    from medadapt.shipped import adapter_checksum, short
    from medadapt.state import AppState

    cfg, env = shipped_cfg
    mine = trained_run(Path(env["MEDADAPT_RUNS_DIR"]) / "offline", "sft", tiny_model_dir, 7)
    state = AppState(cfg, None, None)
    choices = state.adapter_choices("sft")
    shipped_sha = adapter_checksum(Path(env["MEDADAPT_SHIPPED_DIR"]) / "sft")
    assert choices == [(f"shipped · sft {short(shipped_sha)}", "shipped:sft"),
                       (f"trained here · {mine.name}", f"runs:offline/{mine.name}/adapter")]
    assert state.default_adapter("sft") == Path(env["MEDADAPT_SHIPPED_DIR"]) / "sft"
    assert state.default_label("sft") == f"default: shipped · sft {short(shipped_sha)}"
    assert state.checked_adapter("sft", f"runs:offline/{mine.name}/adapter") == mine / "adapter"  # by its name
    with pytest.raises(InputError):
        state.checked_adapter("sft", str(mine / "adapter"))  # never a path from a request
    other = load_config("offline", {"model": {"name_or_path": str(Path(tiny_model_dir).parent)},
                                    "paths": {"runs_dir": env["MEDADAPT_RUNS_DIR"]}})
    assert [a.origin for a in list_adapters(other, "sft")] == ["trained"]  # the release is not for another base
    assert [label for label, _ in AppState(other, None, None).adapter_choices("sft")] == [f"trained here · {mine.name}"]


@pytest.mark.timeout(1800)
def test_benchmarks_tab_marks_results_of_another_adapter(released):
    from eval.provenance import mark, provenance, provenance_markdown

    results = json.loads(released["results"].read_text())
    sha = results["release"]["adapters"]["sft"]["sha256"]
    msft = results["release"]["adapters"]["msft"]["sha256"]
    running = {"sft": sha, "msft": "f" * 64}
    info = provenance(results, running)
    assert info["sft"]["same"] and not info["msft"]["same"] and set(info) == {"sft", "msft"}
    assert mark(info["sft"]) == f" · adapter {sha[:12]}" and "not the adapter Compare runs" in mark(info["msft"])
    text = provenance_markdown(results, running)
    assert f"✅ **sft**: adapter `{sha[:12]}`" in text and f"⚠️ **msft**: adapter `{msft[:12]}`" in text
    old = {"variants": {"sft": {"adapter": "/tmp/old/adapter", "adapter_meta": {"job": "sft"}}}}  # before checksums
    assert provenance_markdown(old, running).count("not recorded") == 1


def test_the_repository_release_matches_its_checksums():
    """The shipped release in the repository: manifest, weights and results file agree (after `medadapt.release`)."""
    from medadapt.release import check

    if not (SHIPPED / "release.json").exists():
        pytest.skip("no release shipped yet: run python -m medadapt.release")
    assert check(load_config("offline")) == []


def test_build_evaluates_the_adapters_beside_a_running_baselines_process(tmp_path, monkeypatch):
    """While ``release baselines`` runs, ``build`` evaluates the adapters' files first, each evaluation under its own
    lock, then waits for the baselines' files and merges them in the canonical order."""
    from medadapt.release import Release

    cfg = load_config("offline", {"paths": {"shipped_dir": str(tmp_path / "shipped")}})
    rel = Release(cfg, tmp_path / "work", n=2, cot_n=1, nice=0)
    monkeypatch.setattr(rel, "stage_index_copy", lambda: None)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (rel.work / "baselines.pid").write_text(str(sleeper.pid))
    ran, waited = [], []

    def fake_run(name, argv):  # the evaluation's command line, recorded; its file written as a finished one
        ran.append(name)
        out = Path(argv[argv.index("--out") + 1])
        out.write_text(json.dumps({"variants": {"x": {"status": "ok"}}}))

    def fake_wait(out):
        waited.append(out.name)
        out.write_text(json.dumps({"variants": {"x": {"status": "ok"}}}))  # the baselines process finished it

    monkeypatch.setattr(rel, "run", fake_run)
    monkeypatch.setattr(rel, "wait_for", fake_wait)
    try:
        assert rel.baselines_running()
        assert rel.env("eval-loglik-adapters")["MEDADAPT_RUNS_DIR"] != rel.env("eval-loglik-base")["MEDADAPT_RUNS_DIR"]
        rel.evaluate(("base", "rag", "adapters"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert ran == ["eval-loglik-adapters", "eval-cot-adapters", "eval-cot_budget-adapters", "eval-merge"]
    assert waited == [f"{m}-{g}.json" for m in ("loglik", "cot", "cot_budget") for g in ("base", "rag")]
    assert not rel.baselines_running()  # a dead process's pid file is not a running baselines


@pytest.mark.timeout(1800)
def test_reevaluate_keeps_the_shipped_adapters_and_replaces_their_results(released):
    """``release reevaluate`` evaluates the shipped files again (here at other sizes) without training: the weights,
    the index and the perplexity panel stay byte for byte; the results, cards and manifest record the new evaluation."""
    from medadapt.release import check

    target, env, cfg = released["target"], released["env"], released["cfg"]
    weights = {k: (target / k / "adapter_model.safetensors").read_bytes() for k in ("sft", "msft")}
    before = json.loads((target / "release.json").read_text())
    out = subprocess.run([sys.executable, "-m", "medadapt.release", "reevaluate", "--work",
                          str(released["tmp"] / "work-again"), "--n", "3", "--cot-n", "0", "--open-n", "2",
                          "--nice", "0"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not (released["tmp"] / "work-again" / "sft").exists()  # nothing trained
    for kind, data in weights.items():
        assert (target / kind / "adapter_model.safetensors").read_bytes() == data
    manifest = json.loads((target / "release.json").read_text())
    results = json.loads(released["results"].read_text())
    assert manifest["adapters"] == before["adapters"] and manifest["command"] == before["command"]
    assert manifest["evaluation"]["command"].endswith("reevaluate --profile offline --n 3 --cot-n 0 --open-n 2")
    assert results["release"]["evaluation"] == manifest["evaluation"]
    assert {len(ids) for ids in results["item_ids"].values()} == {3} and "cot" not in results["views"]
    assert "Evaluated again by `python -m medadapt.release reevaluate" in (target / "sft" / "README.md").read_text()
    assert check(cfg) == []
