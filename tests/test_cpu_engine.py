"""The CPU engine (MEDADAPT_ENGINE=openvino) against its real server process, in its own venv.

The venv is installed by ``scripts/cpu_engine.sh setup`` when missing (CI installs it as its own step); the tests skip,
with the reason printed, only when that install fails. On the tiny random model the graph runs unquantized (fp32),
so every row must give exactly the in-process engine's tokens with its own adapter; on SmolLM2 (real weights, the
shipped precision int8) the engine's next-token distributions must agree with the in-process fp32 engine within the
fidelity measured by ``bench/cpu_engine.py`` (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest

from medadapt.config import REPO_ROOT
from medadapt.serve.api import BASE, GenSettings
from medadapt.pipeline import Pipeline
from tests.merged_model import merged_model
from tests.test_engine import make_adapter
from tests.test_pipeline import SETTINGS, ScriptedRetriever

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
SCRIPT = REPO_ROOT / "scripts" / "cpu_engine.sh"
Q = [{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}]
RAG = [{"role": "system", "content": "Context: [1] Scurvy results from a lack of ascorbic acid in the diet."},
       {"role": "user", "content": "Which vitamin deficiency causes scurvy?"}]
GREEDY = GenSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def python() -> Path:
    """The engine venv's python (installed here when missing); skips with the reason when it cannot install."""
    from medadapt.serve.cpu_engine import engine_installed, venv_python

    py = venv_python(Path(os.environ.get("MEDADAPT_CACHE_DIR", "~/.cache/medadapt")).expanduser())
    if engine_installed(py):
        r = subprocess.run(["bash", str(SCRIPT), "setup"], capture_output=True, text=True, timeout=1800)
        why = engine_installed(py)
        if why:
            reason = f"the CPU engine could not be installed ({SCRIPT.name} setup): {r.stderr[-500:]} {why}"
            print(f"SKIP: {reason}")
            pytest.skip(reason)
    return py


@pytest.fixture(scope="module")
def noisy_model(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny model with larger random weights, so greedy answers vary (as tests/test_engine.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("cpu-noisy-model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory, noisy_model) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cpu-adapters")
    return {"sft": make_adapter(noisy_model, root / "sft", 4, 1), "msft": make_adapter(noisy_model, root / "msft", 8, 2),
            "late": make_adapter(noisy_model, root / "late", 4, 3),
            "whole": make_adapter(noisy_model, root / "whole", 4, 4, modules_to_save=["lm_head"])}


@pytest.fixture(scope="module")
def tiny_graph(python, noisy_model, tmp_path_factory) -> Path:
    """The tiny model's graph, unquantized (converted in the engine's venv)."""
    from medadapt.serve.cpu_engine import ensure_graph

    return ensure_graph(python, noisy_model, tmp_path_factory.mktemp("cpu-graph") / "graph", "fp32")


@pytest.fixture(scope="module")
def tiny_engine(python, noisy_model, tiny_adapters, tiny_graph, tmp_path_factory):
    from medadapt.serve.cpu_engine import CPUEngine

    cache = tmp_path_factory.mktemp("cpu-cache")
    engine = CPUEngine(noisy_model, python=python, graph=tiny_graph, precision="fp32", cache_dir=cache,
                       adapters={"sft": Path(tiny_adapters["sft"]), "msft": Path(tiny_adapters["msft"])},
                       stall_timeout_s=60)
    engine.wait_ready(900)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def local(noisy_model, tiny_adapters):
    """The in-process engine on the same model and adapters: the reference."""
    from medadapt.serve.engine import Engine

    engine = Engine(noisy_model)
    for name, path in tiny_adapters.items():
        engine.load_adapter(name, path)
    return engine


def final(engine, requests, settings=GREEDY):
    snaps = list(engine.start(requests, settings))
    return snaps, snaps[-1]


def test_rows_stream_each_with_its_own_adapter_as_the_in_process_engine(tiny_engine, local):
    requests = [(Q, BASE), (RAG, BASE), (Q, "sft"), (Q, "msft")]
    snaps, rows = final(tiny_engine, requests)
    assert all(r.finished and r.finish_reason in ("eos", "length") and not r.error for r in rows), rows
    assert len(snaps) > 3 and snaps[1][0].n_tokens < rows[0].n_tokens, "tokens arrive step by step"
    assert [r.text for r in rows] == local.generate_batch([m for m, _ in requests], [a for _, a in requests], GREEDY)
    assert len({rows[0].text, rows[2].text, rows[3].text}) == 3, "each adapter changes the answer"
    assert all(r.first_token_s is not None and r.first_token_s <= r.elapsed_s for r in rows)


def test_a_raw_text_prompt_is_tokenized_as_the_in_process_engine_does(tiny_engine, local):
    """The study protocol's raw prompts (no chat template, the tokenizer's BOS): the same ids and tokens."""
    raw = "### Question:\nWhich vitamin deficiency causes scurvy?\n### Response:"
    assert tiny_engine._prompt_ids(raw) == local._prompt_ids(raw)
    _, rows = final(tiny_engine, [(raw, BASE), (raw, "sft")])
    assert [r.text for r in rows] == local.generate_batch([raw, raw], [BASE, "sft"], GREEDY)


def test_teacher_forced_distributions_equal_the_in_process_model(tiny_engine, local):
    """The fp32 graph is the model: log-probabilities within 1e-3 of transformers' with and without an adapter."""
    import torch

    ids = local._prompt_ids(Q)
    cont = local.tokenizer(" Vitamin C deficiency causes it.", add_special_tokens=False)["input_ids"]
    for adapter in (BASE, "msft"):
        got = tiny_engine.score(ids, cont, adapter)
        with local._model_lock, torch.no_grad():
            local._multilora.router.set_rows([adapter])
            ref = torch.log_softmax(local.model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1], -1).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-3, adapter


def test_stopping_one_generation_stops_only_its_rows(tiny_engine):
    long = GenSettings(max_new_tokens=200)
    keep = tiny_engine.start([(Q, BASE), (Q, "sft")], GenSettings(max_new_tokens=40))
    stop = tiny_engine.start([(Q, "msft"), (RAG, BASE)], long)
    it = iter(stop)
    next(it)
    next(it)
    stop.close()
    rows = list(keep)[-1]
    assert all(r.finished and not r.error and r.n_tokens > 0 for r in rows)
    deadline = time.monotonic() + 30
    while httpx.get(tiny_engine.url + "/health").json()["live_rows"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(tiny_engine.url + "/health").json()["live_rows"] == 0, "the stopped rows left the batch"


def test_an_adapter_added_at_run_time_answers_as_in_process(tiny_engine, local, tiny_adapters):
    """A run published after the engine started (the Training tab's) and an adapter with a whole lm_head copy (a
    published model's delta) are loaded by folder, without a restart."""
    tiny_engine.load_adapter("late", tiny_adapters["late"])
    tiny_engine.load_adapter("whole", tiny_adapters["whole"])
    assert {"late", "whole"} <= set(tiny_engine.adapters)
    assert any("lm_head" in n for n in tiny_engine.adapter_notes["whole"])
    _, rows = final(tiny_engine, [(Q, "late"), (Q, "whole"), (Q, BASE)])
    ref = local.generate_batch([Q, Q, Q], ["late", "whole", BASE], GREEDY)
    assert [r.text for r in rows] == ref  # the whole lm_head copy as its rank-64 SVD: exact at hidden size 64
    assert rows[1].text != rows[2].text
    tiny_engine.unload_adapter("late")
    assert "late" not in httpx.get(tiny_engine.url + "/adapters").json()["adapters"]


def test_a_row_the_server_cannot_run_fails_alone(tiny_engine, local):
    body = {"prompts": [local._prompt_ids(Q)] * 2, "adapters": [BASE, "nobody"], "max_new": [6, 6],
            "settings": asdict(GenSettings())}
    with httpx.stream("POST", tiny_engine.url + "/generate", json=body, timeout=60) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert {"row_error": [1, "the CPU engine has no adapter 'nobody' loaded"]} in lines
    done = [e for line in lines for e in line.get("e", []) if e[2] is not None]
    assert [e[0] for e in done] == [0]


def test_the_pipeline_answers_in_all_four_columns(tiny_engine, cfg, tiny_adapters):
    pipe = Pipeline(cfg, lambda: tiny_engine, lambda: ScriptedRetriever())
    result = list(pipe.compare("Which vitamin deficiency causes scurvy?", SETTINGS,
                               {"sft": Path(tiny_adapters["sft"]), "msft": Path(tiny_adapters["late"])}))[-1]
    assert {v: a.status for v, a in result.answers.items()} == dict.fromkeys(result.answers, "done")
    assert result.answers["sft"].engine_adapter == "sft"  # reused by folder
    assert all(a.raw and a.n_tokens for a in result.answers.values())


def test_a_dead_engine_process_ends_its_rows_and_comes_back(python, noisy_model, tiny_adapters, tiny_graph, tmp_path):
    """The server killed mid-answer: its rows end with a message; the next question restarts it, adapters again."""
    from medadapt.serve.cpu_engine import CPUEngine

    engine = CPUEngine(noisy_model, python=python, graph=tiny_graph, precision="fp32", cache_dir=tmp_path,
                       adapters={"sft": Path(tiny_adapters["sft"])})
    try:
        engine.wait_ready(900)
        gen = engine.start([(Q, BASE), (Q, "sft")], GenSettings(max_new_tokens=400))
        it = iter(gen)
        next(it)
        os.killpg(engine.process.proc.pid, signal.SIGKILL)
        rows = list(it)[-1]
        assert all(r.finished and r.finish_reason == "error" and "stopped" in r.error for r in rows), rows
        assert engine.preparing().startswith("preparing:")  # the next question restarts it
        engine.wait_ready(900)
        _, rows = final(engine, [(Q, BASE), (Q, "sft")])
        assert all(r.finished and not r.error for r in rows) and "sft" in engine.adapters
    finally:
        engine.close()


def test_an_interrupted_conversion_resumes_at_its_stage(python, noisy_model, tmp_path):
    """A conversion killed while compressing keeps its trace in ``<graph>.partial``; the next start resumes there
    (no second trace), its stages reported as progress, and the graph it ends with serves."""
    from medadapt.serve.cpu_engine import CPUEngine, _engine_env, ensure_graph, graph_ready

    out, work = tmp_path / "graph", tmp_path / "graph.partial"
    proc = subprocess.Popen([str(python), "-m", "medadapt.serve.openvino.convert", "--model", noisy_model, "--out", str(work),
                             "--precision", "int8"], cwd=REPO_ROOT, env=_engine_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("STAGE compressing"):
            proc.kill()
            break
    proc.wait()
    assert (work / "traced.done").is_file() and not graph_ready(work)
    stages: list[str] = []
    ensure_graph(python, noisy_model, out, "int8", stages.append)
    assert graph_ready(out) and not work.exists()
    assert any("earlier attempt" in s for s in stages) and not any(s.startswith("tracing") for s in stages), stages
    assert json.loads((out / "graph.json").read_text())["precision"] == "int8"
    engine = CPUEngine(noisy_model, python=python, graph=out, precision="int8", cache_dir=tmp_path)
    try:
        engine.wait_ready(900)
        _, rows = final(engine, [(Q, BASE)])
        assert rows[0].finished and not rows[0].error and rows[0].n_tokens > 0
    finally:
        engine.close()


@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    """Two rank-16 LoRA adapters on SmolLM2's 7 projections (random, of a trained adapter's size)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root, out = tmp_path_factory.mktemp("smol-adapters"), {}
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    for seed, name in enumerate(("sft", "msft"), 5):
        torch.manual_seed(seed)
        pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                    "o_proj", "gate_proj", "up_proj",
                                                                                    "down_proj"]))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.06)
        pm.save_pretrained(root / name)
        model = pm.unload()
        out[name] = str(root / name)
    return out


def test_smollm2_int8_rows_agree_with_the_in_process_fp32_engine_per_adapter(python, smollm2_dir, smol_adapters):
    """Real weights at the shipped precision (int8; the graph converted once into the cache, as the app does): each
    row's next-token distributions under its own adapter match the fp32 in-process engine's with that adapter
    within the measured fidelity (bench/cpu_engine.py: top-1 agreement >= 0.97 over the evaluated items' prompts)."""
    import torch

    from medadapt.serve.cpu_engine import CPUEngine
    from medadapt.serve.engine import Engine
    from medadapt.prompts import build_messages

    cache = Path(os.environ.get("MEDADAPT_CACHE_DIR", "~/.cache/medadapt")).expanduser()
    engine = CPUEngine(smollm2_dir, python=python, precision="int8", cache_dir=cache,
                       adapters={k: Path(v) for k, v in smol_adapters.items()})
    local = Engine(smollm2_dir)
    try:
        engine.wait_ready(1800)
        for name, path in smol_adapters.items():
            local.load_adapter(name, path)
        questions = ["Which vitamin deficiency causes scurvy?", "What is the first-line treatment of anaphylaxis?",
                     "Which nerve is injured in a fracture of the surgical neck of the humerus?"]
        stats = {}
        for adapter in (BASE, "sft", "msft"):
            agree = n = 0
            kl = drift = 0.0
            for q in questions:
                msgs = build_messages(q)
                ids = local._prompt_ids(msgs)
                text = local.generate_batch([msgs], [adapter], GenSettings(max_new_tokens=24))[0]
                cont = local.tokenizer(text, add_special_tokens=False)["input_ids"][:24]
                got = engine.score(ids, cont, adapter)
                with local._model_lock, torch.no_grad():
                    ref = []
                    for a in (adapter, BASE):
                        local._multilora.router.set_rows([a])
                        ref.append(torch.log_softmax(local.model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1],
                                                     -1).numpy())
                p = np.exp(ref[0])
                agree += int((got.argmax(-1) == ref[0].argmax(-1)).sum())
                n += len(cont)
                kl += float((p * (ref[0] - got)).sum())
                drift += float((p * (ref[0] - ref[1])).sum())  # how far the adapter moves the model
            stats[adapter] = (agree / n, kl / n, drift / n)
        for adapter, (agreement, kl, drift) in stats.items():
            assert agreement >= 0.9 and kl < 0.05, (adapter, stats)
            if adapter != BASE:
                assert drift > 5 * kl, (adapter, stats)  # the row really ran its adapter, not the base
    finally:
        engine.close()


def test_an_engine_that_cannot_start_says_so_in_every_column(cfg, noisy_model, tmp_path):
    from medadapt.serve.cpu_engine import CPUEngine

    engine = CPUEngine(noisy_model, python=tmp_path / "no-venv" / "bin" / "python", cache_dir=tmp_path)
    with pytest.raises(Exception, match="scripts/cpu_engine.sh setup"):
        engine.wait_ready(60)
    result = list(Pipeline(cfg, lambda: engine, lambda: ScriptedRetriever()).compare("Q?", SETTINGS, {}))[-1]
    assert all(a.status == "error" and "cpu_engine.sh setup" in a.message for a in result.answers.values())


def test_the_cpu_reference_profile_runs_the_study_model_through_the_engine(python, tiny_r1_model_dir, tmp_path,
                                                                            monkeypatch):
    """``MEDADAPT_PROFILE=reference`` without a GPU: the reference profile's ``cpu:`` section (the CPU engine, its
    precision and speed in the banner, a thinking budget, the 2,000-snippet RAG slice), the real R1 tokenizer and
    template, and a published full model (changed projections, final norm and whole lm_head, as the seed's CPT/MSFT)
    served as its delta: Compare answers in every column and the delta row decodes what the full model decodes."""
    import torch
    from transformers import AutoModelForCausalLM

    from medadapt import env
    from medadapt.adapters import prepare_delta
    from medadapt.config import load_config
    from medadapt.serve.choice import make_engine
    from medadapt.prompts import build_messages

    published = merged_model(tiny_r1_model_dir, tmp_path / "published-sft", 1, norm=0.3, lm_head=0.05)
    full = AutoModelForCausalLM.from_pretrained(published)

    monkeypatch.setattr(env, "gpu_present", lambda: False)
    monkeypatch.setenv("MEDADAPT_CPU_ENGINE_VENV", str(python.parent.parent))
    cfg = load_config("reference", {
        "model": {"name_or_path": tiny_r1_model_dir, "display_name": "tiny-r1", "dtype": "float32"},
        "engine": {"precision": "fp32"},  # the tiny model unquantized: the delta row must equal the full model
        "adapters": {"delta_rank": 4, "models": {"sft": [str(published)]}},
        "paths": {"runs_dir": str(tmp_path / "runs"), "index_dir": str(tmp_path / "index"),
                  "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache")}})
    assert cfg.engine.kind == "openvino" and "no GPU: the CPU engine" in cfg.reason
    assert cfg.rag.corpus_limit == 2000 and 0 < cfg.generation.think_budget < cfg.generation.max_new_tokens
    shipped = load_config("reference")
    assert "CPU engine (OpenVINO, int8 weights, about" in shipped.describe() and "tokens/s per column" in \
        shipped.describe()
    delta = prepare_delta(cfg, "sft", str(published))
    engine = make_engine(cfg)
    try:
        engine.wait_ready(900)
        pipe = Pipeline(cfg, lambda: engine, lambda: ScriptedRetriever())
        settings = GenSettings(max_new_tokens=16)
        q = "Which vitamin is only in animal food?"
        result = list(pipe.compare(q, settings, {"sft": delta, "msft": None}))[-1]
        sft, base = result.answers["sft"], result.answers["base"]
        assert sft.status == base.status == result.answers["rag"].status == "done" and sft.n_tokens == 16
        assert any("lm_head" in n for n in engine.adapter_notes[sft.engine_adapter])
        tok = engine.tokenizer
        ids = tok(engine.render(build_messages(q, system_role=False)), add_special_tokens=False,
                  return_tensors="pt").input_ids
        assert engine.prompt_opens_think()  # the real R1 template opens <think>
        with torch.no_grad():
            ref = full.eval().generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
        assert sft.raw == tok.decode(ref, skip_special_tokens=True) and sft.raw != base.raw
        # the thinking budget closes the R1 reasoning where the in-process engine closes it
        from medadapt.serve.engine import Engine

        budget = GenSettings(max_new_tokens=16, think_budget=4)
        msgs = build_messages(q, system_role=False)
        _, rows = final(engine, [(msgs, BASE)], budget)
        local = list(Engine(tiny_r1_model_dir, reasoning_template=True).stream([(msgs, BASE)], budget))[-1]
        assert rows[0].budget_closed and local[0].budget_closed and rows[0].text == local[0].text
    finally:
        engine.close()
