"""Engine on the tiny random model with two tiny random LoRA adapters: mixed batches equal single-variant runs."""
from __future__ import annotations

import json

import pytest

from medadapt.serve.api import AdapterLoadError
from medadapt.serve.engine import BASE, Engine, GenSettings, PromptTooLongError, UnknownAdapterError

Q = [{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}]
RAG = [{"role": "system", "content": "Context: [1] Scurvy results from a lack of ascorbic acid in the diet."},
       {"role": "user", "content": "Which vitamin deficiency causes scurvy?"}]
GREEDY = GenSettings(max_new_tokens=12)
MIXED = [(Q, BASE), (Q, "a1"), (Q, "a2"), (RAG, BASE)]


def make_adapter(model_dir: str, out, r: int, seed: int, modules_to_save: list[str] | None = None) -> str:
    """A random LoRA adapter with non-zero B (so it changes outputs), saved as a PEFT folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"],
                        modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir) -> str:
    """The conftest tiny model with larger random weights, so greedy outputs vary instead of repeating one token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("noisy-model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a1": make_adapter(model_dir, root / "a1", r=4, seed=1),
            "a2": make_adapter(model_dir, root / "a2", r=8, seed=2)}


def make_engine(model_dir: str, adapters: dict[str, str]) -> Engine:
    engine = Engine(model_dir)
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    return engine


@pytest.fixture(scope="module")
def engine(model_dir, adapters) -> Engine:
    return make_engine(model_dir, adapters)


def hf_reference(model_dir: str, adapters: dict[str, str], messages: list[dict], adapter: str, n: int) -> str:
    """Plain HF ``generate`` on that one variant (PEFT model for an adapter), greedy."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if adapter != BASE:
        model = PeftModel.from_pretrained(model, adapters[adapter]).eval()
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_mixed_batch_equals_each_variant_alone(engine, model_dir, adapters):
    mixed = engine.generate_batch([m for m, _ in MIXED], [a for _, a in MIXED], GREEDY)
    alone = [engine.generate_batch([m], [a], GREEDY)[0] for m, a in MIXED]
    reference = [hf_reference(model_dir, adapters, m, a, GREEDY.max_new_tokens) for m, a in MIXED]
    assert all(len(set(text)) > 3 for text in mixed), f"degenerate outputs: {mixed}"
    assert mixed == alone
    assert mixed == reference
    assert len(set(mixed[:3])) == 3, "the adapters should change the output"
    assert mixed[0] != mixed[3], "the RAG prompt should change the output"


def test_modules_to_save_adapter_matches_reference(tmp_path, model_dir):
    path = make_adapter(model_dir, tmp_path / "mts", r=4, seed=3, modules_to_save=["lm_head"])
    engine = make_engine(model_dir, {"m": path})
    got = engine.generate_batch([Q, Q], [BASE, "m"], GREEDY)
    assert got == [hf_reference(model_dir, {"m": path}, Q, a, GREEDY.max_new_tokens) for a in (BASE, "m")]


def test_stream_yields_growing_rows_until_each_finishes(engine):
    snapshots = list(engine.stream(MIXED, GREEDY))
    assert len(snapshots) > GREEDY.max_new_tokens // 2
    for row in range(len(MIXED)):
        counts = [snap[row].n_tokens for snap in snapshots]
        assert counts == sorted(counts) and counts[-1] > 0
        assert snapshots[-1][row].finished and snapshots[-1][row].finish_reason in ("eos", "length")
        assert snapshots[-1][row].first_token_s is not None
        assert snapshots[-1][row].elapsed_s >= snapshots[-1][row].first_token_s
        assert snapshots[-1][row].adapter == MIXED[row][1]
    assert [s.text for s in snapshots[-1]] == engine.generate_batch([m for m, _ in MIXED],
                                                                    [a for _, a in MIXED], GREEDY)
    assert any(s.text for s in snapshots[len(snapshots) // 2]), "text should arrive before the end"


def test_sampling_is_reproducible_with_a_seed(engine):
    hot = GenSettings(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    first = engine.generate_batch([Q, Q], [BASE, "a1"], hot)
    assert engine.generate_batch([Q, Q], [BASE, "a1"], hot) == first
    other = GenSettings(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=8)
    assert engine.generate_batch([Q, Q], [BASE, "a1"], other) != first


def test_missing_and_corrupt_adapters_raise(engine, tmp_path, adapters):
    with pytest.raises(AdapterLoadError, match="not a folder"):
        engine.load_adapter("x", tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterLoadError, match="corrupt"):
        engine.load_adapter("x", bad)
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterLoadError, match="adapter_config"):
        engine.load_adapter("x", bad)
    assert not engine.has_adapter("x")
    with pytest.raises(UnknownAdapterError):
        engine.generate_batch([Q], ["x"], GREEDY)


def test_read_adapter_scaling_matches_peft_and_refuses_other_kinds(tmp_path, model_dir):
    """rsLoRA and a per-module alpha give the scaling PEFT's own layers use; non-LoRA or weightless folders fail."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from medadapt.serve.multilora import read_adapter

    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, alpha_pattern={"q_proj": 32},
                        target_modules=["q_proj", "v_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(tmp_path / "rs")
    got = read_adapter("rs", tmp_path / "rs").lora
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(tmp_path / "rs"))
    want = {n.removeprefix("base_model.model."): m.scaling["default"] for n, m in peft_model.named_modules()
            if isinstance(getattr(m, "scaling", None), dict)}
    assert want and {m: s for m, (_, _, s) in got.items()} == pytest.approx(want)
    assert {s for m, s in want.items() if m.endswith("q_proj")} == {32 / 2}  # alpha_pattern / sqrt(r)
    (tmp_path / "rs" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(AdapterLoadError, match="not LORA"):
        read_adapter("ia3", tmp_path / "rs")
    (tmp_path / "rs" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (tmp_path / "rs" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterLoadError, match="no adapter_model"):
        read_adapter("empty", tmp_path / "rs")


def test_reloading_a_name_replaces_the_adapter(model_dir, adapters):
    engine = make_engine(model_dir, {"a": adapters["a1"]})
    before = engine.generate_batch([Q], ["a"], GREEDY)
    engine.load_adapter("a", adapters["a2"])
    assert engine.generate_batch([Q], ["a"], GREEDY) == engine.generate_batch([Q], ["a"], GREEDY) != before
    fresh = make_engine(model_dir, {"a": adapters["a2"]})
    assert engine.generate_batch([Q], ["a"], GREEDY) == fresh.generate_batch([Q], ["a"], GREEDY)
    engine.unload_adapter("a")
    assert not engine.has_adapter("a")
    with pytest.raises(UnknownAdapterError):
        engine.generate_batch([Q], ["a"], GREEDY)


def test_from_config_loads_the_adapters_that_exist(cfg, adapters):
    import shutil

    run = cfg.paths.resolve("runs_dir") / cfg.profile / "sft-20260101-000000"
    shutil.copytree(adapters["a1"], run / "adapter")
    (run / "adapter" / "medadapt.json").write_text(json.dumps({"job": "sft"}))
    engine = Engine.from_config(cfg)
    assert engine.has_adapter("sft") and not engine.has_adapter("msft") and engine.has_adapter(BASE)
    assert engine.max_context == cfg.model.max_context


@pytest.mark.parametrize("setting,asks", [("off", 1), ("on", 16)])
def test_the_batching_setting_sets_how_many_questions_generate_at_once(cfg, monkeypatch, setting, asks):
    from medadapt.serve.choice import concurrent_generations, make_engine

    monkeypatch.setenv("MEDADAPT_BATCHING", setting)
    monkeypatch.delenv("MEDADAPT_ENGINE", raising=False)
    monkeypatch.delenv("MEDADAPT_CONCURRENT_ASKS", raising=False)
    engine = make_engine(cfg)
    assert engine._batcher is not None and concurrent_generations() == asks


def test_prompt_rendering_and_limits(engine, model_dir):
    text = engine.render(Q)
    assert Q[0]["content"] in text and not engine.prompt_opens_think()
    assert engine.count_tokens(text) > 5
    r1 = Engine(model_dir, reasoning_template=True, max_context=60)
    assert r1.render(Q).endswith("<think>\n") and r1.prompt_opens_think()
    with pytest.raises(PromptTooLongError):
        r1.generate_batch([[{"role": "user", "content": "word " * 100}]], [BASE], GREEDY)
    (state,) = list(r1.stream([(Q, BASE)], GenSettings(max_new_tokens=500)))[-1]
    assert state.n_tokens <= 60 - r1.count_tokens(r1.render(Q))
    assert state.finish_reason == "length" or state.finish_reason == "eos"


# ---------------------------------------------------------------- continuous batching


def consume(generation, until: int | None = None) -> list:
    """Iterate a generation (at most ``until`` snapshots); the last snapshot."""
    last = []
    for i, last in enumerate(generation, 1):
        if until is not None and i >= until:
            break
    return last


def steps_of(engine: Engine, requests: list, settings: GenSettings) -> tuple[list[str], int]:
    before = engine._batcher.steps
    texts = [s.text for s in consume(engine.start(requests, settings))]
    return texts, engine._batcher.steps - before


def test_concurrent_requests_share_one_batch_and_equal_single_runs(engine):
    """Three users' requests, the later two joining while the first is decoding: each gets exactly the tokens it
    gets alone (greedy), and together they take fewer decode steps than one after another."""
    import threading

    jobs = [MIXED, [(RAG, "a2"), (Q, "a1")], [(Q, BASE), (RAG, "a1"), (Q, "a2")]]
    alone = [steps_of(engine, reqs, GREEDY) for reqs in jobs]
    before = engine._batcher.steps
    first = engine.start(jobs[0], GREEDY)
    it = iter(first)
    next(it), next(it)  # the first user is decoding now
    results: dict[int, list[str]] = {}

    def user(k: int) -> None:
        results[k] = [s.text for s in consume(engine.start(jobs[k], GREEDY))]

    threads = [threading.Thread(target=user, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    last = []
    for last in it:
        pass
    for t in threads:
        t.join()
    results[0] = [s.text for s in last]
    together = engine._batcher.steps - before
    assert [results[k] for k in range(3)] == [texts for texts, _ in alone]
    assert together < sum(steps for _, steps in alone) - 5, (together, [s for _, s in alone])
    assert not engine._batcher.live  # every row left the batch


def test_stopping_one_request_stops_only_its_rows(engine):
    long = GenSettings(max_new_tokens=30)
    engine.eos_ids, eos = set(), engine.eos_ids  # no early EOS: every row runs its 30 tokens
    try:
        want = [s.text for s in consume(engine.start(MIXED, long))]
        stopped = engine.start(MIXED, long)
        other = engine.start(MIXED, long)
        consume(stopped, until=3)
        stopped.close()
        steps_at_stop = engine._batcher.steps
        got = [s.text for s in consume(other)]
        events_after = stopped.job.events.qsize()
    finally:
        engine.eos_ids = eos
    assert got == want
    assert engine._batcher.steps - steps_at_stop >= 20  # the other request decoded on ...
    assert events_after <= 3  # ... while the stopped one got at most the steps already under way


def test_eos_rows_leave_and_others_keep_their_tokens(engine):
    """A row that ends early (EOS) leaves the batch; the rows still decoding are unaffected."""
    short, long = GenSettings(max_new_tokens=2), GenSettings(max_new_tokens=14)
    want = [s.text for s in consume(engine.start(MIXED, long))]
    a, b = engine.start(MIXED, long), engine.start([(Q, "a1")], short)
    assert [s.text for s in consume(a)] == want
    assert len(consume(b)[0].text) > 0


def test_a_failed_step_reaches_every_job_in_it_and_the_loop_goes_on(engine, monkeypatch):
    """A step that breaks after a job's last token (its rows already left the batch, the job admitted in an earlier
    step) still ends that job with the error instead of leaving its consumer waiting forever; the loop goes on."""
    batcher, real_drop, calls = engine._batcher, engine._batcher._drop, []
    three = GenSettings(max_new_tokens=3)
    engine.eos_ids, eos = set(), engine.eos_ids  # the row runs its 3 tokens
    try:
        want = engine.generate_batch([Q], [BASE], three)

        def drop_then_break() -> None:
            real_drop()
            calls.append(1)
            if len(calls) > 2 and not batcher.live:  # the drop after the step that gave the last token
                raise RuntimeError("step broke")

        monkeypatch.setattr(batcher, "_drop", drop_then_break)
        job = engine.start([(Q, BASE)], three).job
        events = [job.events.get(timeout=60)]
        while not isinstance(events[-1], BaseException):
            events.append(job.events.get(timeout=60))
        assert "step broke" in str(events[-1])
        monkeypatch.setattr(batcher, "_drop", real_drop)
        assert engine.generate_batch([Q], [BASE], three) == want
    finally:
        engine.eos_ids = eos


def test_loading_an_adapter_while_others_decode(model_dir, adapters):
    engine = make_engine(model_dir, {"a1": adapters["a1"]})
    long = GenSettings(max_new_tokens=20)
    want = engine.generate_batch([Q, RAG], ["a1", BASE], long)
    running = engine.start([(Q, "a1"), (RAG, BASE)], long)
    it = iter(running)
    next(it)
    engine.load_adapter("a2", adapters["a2"])  # waits for the current step, never breaks the running rows
    late = engine.generate_batch([Q], ["a2"], GREEDY)
    last = []
    for last in it:
        pass
    assert [s.text for s in last] == want
    fresh = make_engine(model_dir, {"a2": adapters["a2"]})
    assert late == fresh.generate_batch([Q], ["a2"], GREEDY)


def test_think_budget_in_the_batch_and_alone(engine):
    """An R1-style prompt (it ends inside ``<think>``): with a budget of 5 every row's reasoning is closed after five
    tokens and the row answers on; each row in the mixed batch equals the row asked alone; a prompt without
    ``<think>`` is untouched."""
    budget = GenSettings(max_new_tokens=20, think_budget=5)
    plain = engine.generate_batch([m for m, _ in MIXED], [a for _, a in MIXED], GenSettings(max_new_tokens=20))
    assert engine.generate_batch([m for m, _ in MIXED], [a for _, a in MIXED], budget) == plain
    eos = engine.eos_ids
    try:
        engine.reasoning_template, engine.eos_ids = True, set()
        rows = consume(engine.start(MIXED, budget))
        alone = [consume(engine.start([request], budget))[0] for request in MIXED]
        assert [(r.text, r.budget_closed) for r in alone] == [(r.text, r.budget_closed) for r in rows]
    finally:
        engine.reasoning_template, engine.eos_ids = False, eos
    assert all(r.budget_closed and r.n_tokens == 20 and "</think>" in r.text for r in rows)
    head = [len(engine.tokenizer(r.text.split("</think>")[0], add_special_tokens=False).input_ids) for r in rows]
    assert all(4 <= n <= 6 for n in head), head  # five reasoning tokens (re-tokenized text may merge or split one)
