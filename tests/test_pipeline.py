"""The compare pipeline over a scripted engine and retriever: routing, messages, unavailable variants, limits."""
from __future__ import annotations

from pathlib import Path

import pytest

from medadapt.serve.api import AdapterLoadError
from medadapt.config import GenSettings
from medadapt.serve.engine import BASE, RowState
from medadapt.pipeline import NOT_TRAINED, InputError, Pipeline, adapter_name, clean_question, generation_settings
from medadapt.retrieval.rag import IndexNotBuiltError, Snippet

SNIPPETS = [Snippet("FA_1", "First Aid", "First_Aid_Step1", "Aspirin inhibits COX.", 0.9),
            Snippet("P_2", "Pathoma", "Pathoma_Husain", "MI causes coagulative necrosis.", 0.5)]


class ScriptedEngine:
    """Word-count tokens; each row emits '<think>why</think>' then an answer citing [1], one word per step."""

    max_context = 400

    def __init__(self):
        self.adapters: dict[str, Path] = {}
        self.requests = None
        self.failing: dict[str, str] = {}  # adapter -> the error its rows end with after one word

    def count_tokens(self, text):
        return len(text.split())

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def prompt_tokens(self, messages):
        return self.count_tokens(self.render(messages))

    def prompt_opens_think(self):
        return False

    def has_adapter(self, name):
        return name == BASE or name in self.adapters

    def load_adapter(self, name, path):
        if not Path(path, "adapter_config.json").exists():
            raise AdapterLoadError(f"no adapter at {path}")
        self.adapters[name] = Path(path)

    def unload_adapter(self, name):
        del self.adapters[name]

    def start(self, requests, settings):
        self.requests = requests
        return ScriptedGeneration(self._rows(requests))

    def _rows(self, requests):
        words = ["<think>why</think>", "Aspirin", "[1]."]
        for step in range(1, len(words) + 1):
            yield [RowState(a, " ".join(words[:step]), step, 0.01, 0.02 * step, True, "error", self.failing[a])
                   if a in self.failing and step > 1 else
                   RowState(a, " ".join(words[:step]), step, 0.01, 0.02 * step, step == len(words),
                            "eos" if step == len(words) else None) for _, a in requests]


class ScriptedGeneration:
    def __init__(self, rows):
        self.rows, self.closed = rows, False

    def __iter__(self):
        return self.rows

    def close(self):
        self.closed = True


class ScriptedRetriever:
    def __init__(self, fail=False):
        self.fail, self.queries = fail, []

    def retrieve(self, question, k=None, mode=None):
        if self.fail:
            raise IndexNotBuiltError("index not built: run `python -m medadapt.retrieval build`")
        self.queries.append(question)
        return SNIPPETS[: k or 2]


def make(cfg, fail_index=False):
    engine, retriever = ScriptedEngine(), ScriptedRetriever(fail_index)
    return Pipeline(cfg, lambda: engine, lambda: retriever), engine, retriever


SETTINGS = GenSettings(max_new_tokens=32, temperature=0.0, top_p=1.0)


def test_four_variants_one_batch_with_adapters_and_citations(cfg, trained_runs):
    pipe, engine, retriever = make(cfg)
    results = list(pipe.compare("Best drug for MI?", SETTINGS, trained_runs))
    final = results[-1]
    assert final.done and len(results) >= 3  # initial snapshot, streamed steps, final
    adapters = [a for _, a in engine.requests]
    assert adapters == [BASE, BASE, adapter_name("sft", trained_runs["sft"]), adapter_name("msft", trained_runs["msft"])]
    assert retriever.queries == ["Best drug for MI?"]  # question only, once
    rag_user = engine.requests[1][0][1]["content"]
    assert "[1] First Aid: Aspirin inhibits COX." in rag_user and "[1]" not in engine.requests[0][0][1]["content"]
    rag = final.answers["rag"]
    assert rag.status == "done" and rag.answer == "Aspirin [1]." and rag.reasoning == "why" and rag.cited == [1]
    assert final.answers["base"].snippets == [] and final.answers["sft"].n_tokens == 3


def test_adapters_reused_by_folder_and_unused_ones_unloaded(cfg, trained_runs):
    pipe, engine, _ = make(cfg)
    engine.adapters["sft"] = trained_runs["sft"]  # loaded at start-up under its kind's name
    list(pipe.compare("Q1?", SETTINGS, trained_runs))
    assert [a for _, a in engine.requests][2] == "sft"  # same folder: no second copy
    list(pipe.compare("Q2?", SETTINGS, {"sft": None, "msft": trained_runs["msft"]}))
    assert set(engine.adapters) == {adapter_name("msft", trained_runs["msft"])}


def test_missing_adapters_say_not_trained_and_others_answer(cfg):
    pipe, engine, _ = make(cfg)
    final = list(pipe.compare("Q about anemia?", SETTINGS, {"sft": None, "msft": None}))[-1]
    for v in ("sft", "msft"):
        assert final.answers[v].status == "unavailable" and final.answers[v].message == NOT_TRAINED
    assert final.answers["base"].status == final.answers["rag"].status == "done"
    assert len(engine.requests) == 2


def test_corrupt_adapter_is_an_error_in_its_column_only(cfg, tmp_path):
    pipe, _, _ = make(cfg)
    bad = tmp_path / "broken"
    bad.mkdir()
    final = list(pipe.compare("Q?", SETTINGS, {"sft": bad, "msft": None}))[-1]
    assert final.answers["sft"].status == "error" and "could not be loaded" in final.answers["sft"].message
    assert final.answers["base"].status == "done"


def test_index_not_built_marks_rag_unavailable(cfg):
    pipe, engine, _ = make(cfg, fail_index=True)
    final = list(pipe.compare("Q?", SETTINGS, {}))[-1]
    assert final.answers["rag"].status == "unavailable" and "retrieval build" in final.answers["rag"].message
    assert [a for _, a in engine.requests] == [BASE]


def test_rag_everywhere_adds_snippets_to_finetuned(cfg, trained_runs):
    pipe, engine, _ = make(cfg)
    final = list(pipe.compare("Q?", SETTINGS, trained_runs, rag_everywhere=True))[-1]
    assert all("[1] First Aid" in msgs[1]["content"] for msgs, _ in engine.requests[1:])
    assert final.answers["msft"].cited == [1]


def test_long_question_truncated_with_notice(cfg):
    pipe, engine, _ = make(cfg)
    final = list(pipe.compare("word " * 5000, SETTINGS, {}))[-1]
    assert any("truncated" in n for n in final.notices)
    for msgs, _ in engine.requests:
        assert engine.prompt_tokens(msgs) <= engine.max_context - SETTINGS.max_new_tokens


@pytest.mark.parametrize("bad", ["", "   \n\t ", "\x00\x01\x02", "\ud800\udfff", None, 42])
def test_bad_questions_rejected_clearly(bad):
    with pytest.raises(InputError):
        clean_question(bad)


def test_clean_question_strips_controls_keeps_text():
    assert clean_question("  Dose\x07 of\u200b aspirin?\ud800 ") == "Dose of\u200b aspirin?"


@pytest.mark.parametrize("values,word", [({"max_new_tokens": "abc"}, "Max new tokens"), ({"temperature": -1}, "Temperature"),
                                         ({"top_p": 0}, "Top-p"), ({"max_new_tokens": 10**9}, "Max new tokens"),
                                         ({"temperature": float("nan")}, "Temperature")])
def test_bad_settings_rejected_with_name(cfg, values, word):
    with pytest.raises(InputError, match=word):
        generation_settings(cfg, values)


def test_settings_by_name_fill_in_the_profile(cfg):
    settings = generation_settings(cfg, {"max_new_tokens": "32", "temperature": None})
    assert (settings.max_new_tokens, settings.temperature, settings.seed) == (32, cfg.generation.temperature,
                                                                              cfg.generation.seed)


def test_huge_question_is_capped_before_any_work(cfg):
    """A 1 MB question is cut to the character limit first: retrieval and prompts only ever see the capped text."""
    from medadapt.pipeline import CHARS_NOTICE, MAX_QUESTION_CHARS

    pipe, engine, retriever = make(cfg)
    huge = "What causes anemia with a\u0301\u0302 combining mark? " * 25_000
    assert len(huge) > 1_000_000
    final = list(pipe.compare(huge, SETTINGS, {}))[-1]
    assert CHARS_NOTICE in final.notices and f"{MAX_QUESTION_CHARS:,} characters" in CHARS_NOTICE
    assert retriever.queries and all(len(q) <= MAX_QUESTION_CHARS for q in retriever.queries)
    assert len(final.question) <= MAX_QUESTION_CHARS
    assert all(sum(len(m["content"]) for m in msgs) < MAX_QUESTION_CHARS + 2000 for msgs, _ in engine.requests)


def test_concurrent_compares_run_side_by_side_and_keep_used_adapters(cfg, trained_runs):
    """A second question starts and finishes while the first is still streaming (no generation lock); it does not
    unload the adapters the first one is using; once both ended, unused adapters go."""
    pipe, engine, _ = make(cfg)
    first = pipe.compare("Q1?", SETTINGS, trained_runs)
    next(first)  # started: its rows are generating
    in_use = set(engine.adapters)
    assert len(in_use) == 2
    second = list(pipe.compare("Q2?", SETTINGS, {"sft": None, "msft": None}))[-1]
    assert second.done and second.answers["base"].status == "done"
    assert set(engine.adapters) == in_use  # still loaded: the first question uses them
    final = list(first)[-1]
    assert final.done and final.answers["sft"].answer == "Aspirin [1]."
    list(pipe.compare("Q3?", SETTINGS, {"sft": None, "msft": None}))
    assert not engine.adapters


def test_a_failing_row_is_an_error_in_its_column_only(cfg, trained_runs):
    pipe, engine, _ = make(cfg)
    engine.adapters["sft"] = trained_runs["sft"]
    engine.failing["sft"] = "the model server was too slow: no token for 5 s after 1 tokens"
    final = list(pipe.compare("Q?", SETTINGS, trained_runs))[-1]
    assert final.answers["sft"].status == "error" and "too slow" in final.answers["sft"].message
    assert {v: a.status for v, a in final.answers.items() if v != "sft"} == {"base": "done", "rag": "done",
                                                                             "msft": "done"}
