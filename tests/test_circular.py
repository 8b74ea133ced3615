"""Circular evaluation (issue 35): every rotation of an item's options scored in one row that shares the prompt's
prefix, the circular and debiased views, and content-free copies that keep the label space."""
from __future__ import annotations

import math

import pytest

from medadapt.data.benchmarks import BenchItem, evaluated_items
from tests.test_eval_run import tiny  # noqa: F401 — the module-scoped tiny model fixture


def test_rotations_put_every_option_at_every_position():
    from eval.circular import rotate, to_original

    options = {"A": "w", "B": "x", "C": "y", "D": "z"}
    shown = [rotate(options, "C", r) for r in range(4)]
    assert shown[1] == ({"A": "x", "B": "y", "C": "z", "D": "w"}, "B")
    for letter in "ABCD":  # each option text stands once at each display position
        assert sorted(opts[letter] for opts, _ in shown) == ["w", "x", "y", "z"]
    assert all(opts[ans] == "y" for opts, ans in shown)  # the gold text moves with its letter
    assert to_original([0.1, 0.2, 0.3, 0.4], 1) == [0.4, 0.1, 0.2, 0.3]  # display i shows original (i + 1) % 4


def test_circular_and_debiased_views_resist_a_position_prior():
    from eval.circular import INCONSISTENT, circular_view, debiased_view

    letters = list("ABCD")
    content = [math.log(p) for p in (0.1, 0.2, 0.6, 0.1)]  # the model prefers option C on content
    bias = [6.0, 0, 0, 0]  # and "A" on every input
    rotations = [[content[(i + r) % 4] + bias[i] for i in range(4)] for r in range(4)]
    assert circular_view(rotations, letters, "A") == {"pred": INCONSISTENT, "correct": False, "invalid": False}
    assert debiased_view(rotations, letters, "C")["pred"] == "C"  # the bias cancels over the positions
    clean = [[content[(i + r) % 4] for i in range(4)] for r in range(4)]
    assert circular_view(clean, letters, "C") == {"pred": "C", "correct": True, "invalid": False}


def _rotated_prompts(cfg, tok, items):
    from eval.circular import rotate
    from eval.prompting import continuations, loglik_prompt
    from dataclasses import replace

    render = lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    out = []
    for it in items:
        rots = [replace(it, options=o, answer=a) for o, a in (rotate(it.options, it.answer, r)
                                                               for r in range(len(it.options)))]
        out.append([(loglik_prompt(x, "chat", render), continuations(x, "letter"), continuations(it, "text"))
                    for x in rots])
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_rotations_in_one_row_score_like_separate_prompts(cfg, tiny, batch_size):  # noqa: F811
    from eval.evaluate import loglik_requests
    from eval.loglik import encode, score_branches, score_requests

    model, tok = tiny
    items = [it for v in evaluated_items(cfg, ["medqa", "pubmedqa"], n=2).values() for it in v]
    reqs = loglik_requests(cfg, tok, items, lambda it: None)
    assert all(len(r.branches) == len(it.options) for r, it in zip(reqs, items))
    assert all(len(r.prefix) > len(r.branches[0].suffix) for r in reqs)  # most of the prompt is shared
    got = score_branches(model, reqs, batch_size, tok.pad_token_id)
    for per_item, scores in zip(_rotated_prompts(cfg, tok, items), got):
        letter = [encode(tok, p, conts, False, 2048) for p, conts, _ in per_item]
        want = score_requests(model, letter, 8, tok.pad_token_id)
        for w, s in zip(want, scores):
            assert s["letter"] == pytest.approx(w, abs=1e-3)
        text = score_requests(model, [encode(tok, per_item[0][0], per_item[0][2], False, 2048)], 8, tok.pad_token_id)
        assert scores[0]["text"] == pytest.approx(text[0], abs=1e-3)


def test_content_free_copies_keep_the_label_space(cfg, tiny):  # noqa: F811
    from eval.calibration import CONTENT_FREE, CONTENT_FREE_FILL, content_free_items
    from eval.scoring import prior_spread
    from eval.evaluate import content_free_request

    pub = BenchItem("pubmedqa", "1", "Does X cause Y?", {"A": "yes", "B": "no", "C": "maybe"}, "A",
                    context="An abstract.")
    mcq = BenchItem("medqa", "2", "Which drug?", {"A": "aspirin", "B": "heparin", "C": "insulin", "D": "statin"}, "B")
    pub_free, mcq_free = content_free_items(pub), content_free_items(mcq)
    assert len(pub_free) == len(mcq_free) == len(CONTENT_FREE) * len(CONTENT_FREE_FILL) == 24
    assert all(cf.options == pub.options and cf.context != pub.context and cf.question in CONTENT_FREE
               for cf in pub_free)  # PubMedQA's options are its label set: they stay
    assert all(set(cf.options) == set("ABCD") and set(cf.options.values()) <= set(CONTENT_FREE_FILL)
               for cf in mcq_free)  # letters stay, option texts (content) go
    spread = prior_spread([[0.0, 0.0], [math.log(3), 0.0]])
    assert spread["prior_sd"][0] == pytest.approx(math.sqrt(0.03125)) and spread["prior_se"][0] < spread["prior_sd"][0]
    model, tok = tiny
    req = content_free_request(cfg, tok, pub, rag=False)
    assert len(req.branches) == 24 and len(req.prefix) > 5  # the copies share the template's prefix
