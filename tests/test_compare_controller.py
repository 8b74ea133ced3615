"""The Compare tab's handlers called without building the page, and one decoding setting followed from the named
values at the UI edge to the decoder."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated

from pydantic import Field

from medadapt.config import GenSettings
from medadapt.pipeline import DISCLAIMER, Pipeline
from medadapt.ui.compare_controller import CompareController, compare_data, compare_inputs
from tests.test_pipeline import make


@dataclass
class WithMinP(GenSettings):
    """A test config that adds one decoding setting: its definition with bounds is all it takes."""

    min_p: Annotated[float, Field(ge=0.0, le=1.0, title="Min-p")] = 0.0


def controller(cfg, pipeline, settings=GenSettings) -> CompareController:
    state = SimpleNamespace(cfg=cfg, pipeline=pipeline, setup=None, checked_adapter=lambda kind, name: None)
    return CompareController(state, settings)


def test_a_new_decoding_setting_reaches_the_decoder(cfg, monkeypatch):
    """``min_p`` exists only in the test config: the page's inputs, the raw callers' data and the handler take it,
    and the in-process engine's decoder gets it inside the one settings object, with no other file changed."""
    from medadapt.retrieval.rag import IndexNotBuiltError
    from medadapt.serve import batching
    from medadapt.serve.engine import Engine

    seen = []
    real = batching.pick_tokens

    def decoder(logits, settings, generator, seen_tokens=None):
        seen.append(settings)
        return real(logits, settings, generator, seen_tokens)

    monkeypatch.setattr(batching, "pick_tokens", decoder)

    def no_index():
        raise IndexNotBuiltError("no index in this test")

    ctl = controller(cfg, Pipeline(cfg, lambda: Engine.from_config(cfg), no_index), WithMinP)
    assert ctl.inputs == compare_inputs(WithMinP) and ctl.inputs[-1] == "min_p"
    data = compare_data("What causes scurvy?", WithMinP(), max_new_tokens=16, min_p=0.3)
    *columns, notes, result = list(ctl.ask(*data))[-1]
    assert DISCLAIMER in columns[0] and result.done and result.settings["min_p"] == 0.3
    assert seen and all(isinstance(s, WithMinP) and s.min_p == 0.3 and s.max_new_tokens == 16 for s in seen)
    *_, notes, _ = list(ctl.answer({"question": "Q?", "min_p": 2.0}))[-1]  # checked against its bounds
    assert "Min-p: must be between 0 and 1" in notes


def test_compare_handlers_without_the_page(cfg):
    pipe, engine, _ = make(cfg)
    ctl = controller(cfg, pipe)
    data = compare_data("Best drug for MI?", max_new_tokens=32, top_k=1, temperature=0.5)
    assert data[:5] == ["Best drug for MI?", "", "", False, 1] and len(data) == len(ctl.inputs)
    *columns, notes, result = list(ctl.ask(*data))[-1]
    assert len(columns) == 16 and DISCLAIMER in columns[0] and "Aspirin" in columns[4] and notes == ""
    assert result.settings == {"max_new_tokens": 32, "temperature": 0.5, "top_p": 1.0, "repetition_penalty": 1.0,
                               "think_budget": 0, "rag_everywhere": False, "top_k": 1}
    named = list(ctl.answer({"question": "Q?"}))[-1][-1]  # a setting not sent is the profile's
    assert named.settings["max_new_tokens"] == cfg.generation.max_new_tokens
    assert named.settings["top_k"] == cfg.rag.top_k
    *_, notes, _ = list(ctl.answer({"question": "Q?", "top_k": 99}))[-1]
    assert "Snippets retrieved (top-k): must be between 1 and 10" in notes
    *_, notes, _ = list(ctl.answer({"question": "  "}))[-1]
    assert "empty" in notes
    assert ctl.duration(*data) < ctl.duration(*compare_data("Q?", max_new_tokens=4096))
    box, md, js, key = ctl.export(result, "")
    assert box["visible"] and "Best drug for MI?" in md and '"question": "Best drug for MI?"' in js
    assert ctl.export(result, key)[-1] == key  # made once per set of answers
    assert ctl.setup_text() == "" and "index" in ctl.index_status().lower()
