"""The token loop (continuous batcher, one job) on a tiny random Llama: a batch of prompts of different lengths ==
each prompt alone == HF generate; stops; sampling."""
from __future__ import annotations

import threading

import pytest
import torch

from medadapt.serve.batching import Batcher, Job
from medadapt.config import GenSettings
from medadapt.serve.decoding import pick_tokens

GREEDY = GenSettings()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The conftest tiny model with larger random weights, so greedy outputs vary instead of repeating one token."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return m


PROMPTS = [[1, 504, 2201, 318, 17, 905], [1, 88, 99], [1, 4000, 12, 13, 14, 15, 16, 17, 18, 19, 20]]


def run(model, prompts, max_new, settings=GREEDY, eos_ids=frozenset(), budget=None):
    """One job's events from a batcher of its own, merged into per-row token lists and finish reasons."""
    batcher = Batcher(model, lambda: set(eos_ids), lambda names: {}, threading.Lock())
    job = Job(prompts, max_new, ["base"] * len(prompts), settings, budget=budget)
    batcher.submit(job)
    tokens, reasons, events = [[] for _ in prompts], [None] * len(prompts), 0
    while None in reasons:
        event = job.events.get(timeout=120)
        if isinstance(event, BaseException):
            raise event
        events += 1
        for row, tok, reason in event:
            assert reasons[row] is None, "no token after a row finished"
            tokens[row].append(tok)
            reasons[row] = reason
    return tokens, reasons, events


def test_batch_of_different_lengths_equals_each_alone_and_hf_generate(model):
    batch, reasons, _ = run(model, PROMPTS, [10, 10, 10])
    alone = [run(model, [p], [10])[0][0] for p in PROMPTS]
    with torch.inference_mode():
        hf = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
              for p in PROMPTS]
    assert batch == alone == hf
    assert reasons == ["length"] * 3
    assert len({tuple(t) for t in batch}) == 3 and all(len(set(t)) > 2 for t in batch)


def test_eos_stops_one_row_while_the_others_continue(model):
    free, _, _ = run(model, PROMPTS, [8, 8, 8])
    others = set(free[0]) | set(free[2])
    stop_at = next(i for i, tok in enumerate(free[1]) if tok not in others)
    eos = free[1][stop_at]
    tokens, reasons, _ = run(model, PROMPTS, [8, 8, 8], eos_ids={eos})
    assert tokens[1] == free[1][:stop_at + 1] and reasons[1] == "eos"
    assert tokens[0] == free[0] and tokens[2] == free[2] and reasons[0] == reasons[2] == "length"


def test_per_row_budgets(model):
    tokens, reasons, events = run(model, PROMPTS, [2, 5, 1])
    assert [len(t) for t in tokens] == [2, 5, 1] and reasons == ["length"] * 3
    assert events == 4, "one event per loop turn (prefill + first step, then a step each) until the last row is done"


def test_sampling_is_seeded_and_top_p_keeps_the_head():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0]] * 64)
    assert pick_tokens(logits, GREEDY, None).tolist() == [1] * 64
    hot = GenSettings(temperature=1.0, top_p=1.0)
    draws = [pick_tokens(logits, hot, torch.Generator().manual_seed(s)).tolist() for s in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2] and len(set(draws[0])) > 1
    narrow = GenSettings(temperature=1.0, top_p=0.5)
    assert pick_tokens(logits, narrow, torch.Generator().manual_seed(3)).tolist() == [1] * 64


def test_sampled_generation_is_reproducible(model):
    hot = GenSettings(temperature=1.0, top_p=0.9, seed=5)
    a, _, _ = run(model, PROMPTS, [6, 6, 6], hot)
    b, _, _ = run(model, PROMPTS, [6, 6, 6], hot)
    c, _, _ = run(model, PROMPTS, [6, 6, 6], GenSettings(temperature=1.0, top_p=0.9, seed=6))
    assert a == b != c


def test_repetition_penalty_math_and_pick():
    from medadapt.serve.decoding import penalize_repeats

    logits = torch.tensor([[10.0, 8.0, -1.0]])
    seen = torch.tensor([[True, False, True]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[5.0, 8.0, -2.0]]
    assert penalize_repeats(logits, seen, 1.0) is logits
    assert pick_tokens(logits, GenSettings(), None, seen).tolist() == [0]  # penalty 1: plain argmax
    assert pick_tokens(logits, GenSettings(repetition_penalty=2.0), None, seen).tolist() == [1]


def test_repetition_penalty_breaks_loops_in_the_batch(tiny_model_dir):
    """A greedy loop (the plain tiny model repeats its own tokens) is broken by the penalty; penalty 1 is greedy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    plain, _, _ = run(model, PROMPTS, [24] * 3)
    again, _, _ = run(model, PROMPTS, [24] * 3, GenSettings(repetition_penalty=1.0))
    assert again == plain
    guarded, _, _ = run(model, PROMPTS, [24] * 3, GenSettings(repetition_penalty=1.8))
    assert sum(len(set(t)) for t in plain) < 3 * 24 / 2  # it loops
    assert sum(len(set(t)) for t in guarded) > sum(len(set(t)) for t in plain)
    for row in range(len(PROMPTS)):  # each row's first token is unaffected (nothing generated yet)
        assert guarded[row][0] == plain[row][0]


def test_think_budget_forces_the_closing_ids_and_the_model_goes_on_from_them(model):
    """Prompts that open the reasoning, budget 4: every row's 5th to 7th tokens are the forced ids, the first four
    and what follows are the model's own (the same as decoding alone from the forced prefix)."""
    from medadapt.serve.think_budget import ThinkBudget

    forced = (7, 8, 9)
    free, _, _ = run(model, PROMPTS, [12] * 3)
    rows = ThinkBudget(4, forced, lambda ids: "", opened=True).rows(3)
    got, reasons, _ = run(model, PROMPTS, [12] * 3, budget=rows)
    assert [t[:4] for t in got] == [t[:4] for t in free] and all(t[4:7] == [7, 8, 9] for t in got)
    assert [t[7:] for t in got] == [run(model, [p + t[:7]], [5])[0][0] for p, t in zip(PROMPTS, got)]
    assert reasons == ["length"] * 3 and rows.forced == [True] * 3
