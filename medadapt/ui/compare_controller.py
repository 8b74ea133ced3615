"""The Compare tab's behaviour: a question and its settings in, four streamed columns out; votes, exports, the index
and adapter lists, the first-run setup line.

:class:`CompareController` holds every handler the tab builder (:mod:`medadapt.ui.compare`) binds its events to; it
returns values and ``gr.update``/``gr.skip``, never builds layout. The compare event's inputs are named once,
:func:`compare_inputs`: the request's fields, then every user setting of :class:`~medadapt.config.GenSettings` in its
field order. The page and the raw queue callers (:func:`compare_data`) derive their positional data from it, and
:meth:`CompareController.answer` builds the ``GenSettings`` once from the named values and passes it whole.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gradio as gr

from medadapt.config import GenSettings, RagConfig, user_settings
from medadapt.pipeline import InputError, checked, generation_settings
from medadapt.refs import adapter_name
from medadapt.setup_chain import STEP_READY, interrupted
from medadapt.env import request_duration
from medadapt.state import AppState
from medadapt.ui import render
from medadapt.ui.common import warn
from medadapt.ui.redact import path_redactor
from medadapt.variants import VARIANTS
from medadapt.votes import VoteError, answers_key, record_vote, tally_votes

UPDATE_EVERY_S = 0.12  # stream UI updates at most ~8 times a second
REQUEST = ("question", "sft_adapter", "msft_adapter", "rag_everywhere", "top_k")  # then the generation settings
COLUMN_PARTS = ("answer", "reasoning", "stats", "snippets")


def compare_inputs(settings: type[GenSettings] = GenSettings) -> tuple[str, ...]:
    """The compare event's inputs by name, in the order the page sends them."""
    return REQUEST + user_settings(settings)


def compare_data(question: str, defaults: GenSettings | None = None, **named: Any) -> list[Any]:
    """A compare event's positional data from named values (benches, tests, ``gradio_client``): adapters ``""`` (the
    default), no RAG ablation, the default top-k; a generation setting not named is ``defaults``' (``GenSettings()``)."""
    defaults = defaults or GenSettings()
    values = {"question": question, "sft_adapter": "", "msft_adapter": "", "rag_everywhere": False,
              "top_k": RagConfig.__dataclass_fields__["top_k"].default, **vars(defaults), **named}
    names = compare_inputs(type(defaults))
    unknown = set(named) - set(names)
    if unknown:
        raise TypeError(f"not a compare input: {sorted(unknown)}")
    return [values[name] for name in names]


def column_outputs(res: Any) -> list[Any]:
    """Each column's answer, reasoning, stats and snippets, column by column."""
    out: list[Any] = []
    for v in VARIANTS:
        ans = res.answers[v]
        out += [render.answer_markdown(ans), render.reasoning_markdown(ans), render.stats_markdown(ans),
                render.snippets_html(ans)]
    return out


class CompareController:
    """The Compare tab's event handlers over one app state (``cfg``, ``pipeline``, adapters, optional ``setup``).

    ``settings``: the :class:`~medadapt.config.GenSettings` class the named values are built into."""

    def __init__(self, state: AppState, settings: type[GenSettings] = GenSettings) -> None:
        self.state, self.cfg, self.settings = state, state.cfg, settings
        self.inputs = compare_inputs(settings)
        self.shown = path_redactor(self.cfg)  # no absolute server paths in what a visitor sees

    # ---------------------------------------------------------------- asking
    def named(self, values: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(self.inputs, values))

    def ask(self, *values: Any) -> Iterator[tuple]:
        """The compare event: positional values in :attr:`inputs` order (what Gradio passes)."""
        yield from self.answer(self.named(values))

    def duration(self, *values: Any) -> int:
        """Seconds of GPU a ZeroGPU Space reserves for :meth:`ask` with these values."""
        sent = self.named(values).get("max_new_tokens")
        return request_duration(self.cfg.generation.max_new_tokens if sent is None else sent)

    def answer(self, request: Mapping[str, Any]) -> Iterator[tuple]:
        """Four columns, the notices and the result, streamed; a bad value is a warning, never a crash."""
        n_out = len(VARIANTS) * len(COLUMN_PARTS)
        shown = self.shown
        try:
            settings = generation_settings(self.cfg, request, self.settings)
            top_k = request.get("top_k")
            k = checked(RagConfig, "top_k", self.cfg.rag.top_k if top_k is None else top_k)
            adapters = {kind: self.state.checked_adapter(kind, request.get(f"{kind}_adapter"))
                        for kind in ("sft", "msft")}
            stream = self.state.pipeline.compare(request.get("question"), settings, adapters,
                                                 bool(request.get("rag_everywhere")), k)
            last = 0.0
            for res in stream:
                now = time.monotonic()
                if res.done or now - last >= UPDATE_EVERY_S:
                    last = now
                    for ans in res.answers.values():
                        ans.message = shown(ans.message)
                    notes = " ".join(f"⚠️ {shown(n)}" for n in res.notices)
                    yield *column_outputs(res), notes, res
        except InputError as e:
            warn(shown(str(e)))
            yield *[gr.update()] * n_out, f"⚠️ {shown(str(e))}", gr.update()
        except Exception as e:  # the app never crashes on a user's input: report and keep serving
            yield *[gr.update()] * n_out, f"⚠️ Generation failed: {type(e).__name__}: {shown(str(e))}", gr.update()

    # ---------------------------------------------------------------- votes and exports
    def adapter_names(self, res: Any) -> dict[str, str]:
        """How an export or a vote names each column's adapter: its run (:func:`medadapt.refs.adapter_name`)."""
        return {v: adapter_name(self.cfg, a.adapter) for v, a in res.answers.items()}

    def vote(self, choice: str | None, result: Any, request: gr.Request = None):
        data = result.to_dict() if result else None
        key = answers_key(getattr(request, "session_hash", None) or "", data) if data else None
        try:  # one vote per session per set of answers, checked and recorded atomically (parallel votes race)
            record_vote(self.cfg, choice or "", data, key, self.adapter_names(result) if result else None)
        except VoteError as e:
            return f"⚠️ {e}", gr.skip()
        except OSError as e:
            return f"⚠️ The vote could not be saved: {self.shown(str(e))}", gr.skip()
        result.voted = True
        counts = tally_votes(self.cfg)
        return "Thanks — vote recorded. Tally so far: " + ", ".join(f"{k} {n}" for k, n in counts.items()), result

    def export(self, result: Any, exported: str):
        """The result as Markdown and JSON in the page, which saves them in the browser: no file on the server, no
        server path in either (adapters by their run's name), and each set of answers made once."""
        if result is None or not result.done:
            warn("Ask a question and wait for the answers before exporting.")
            return gr.skip(), gr.skip(), gr.skip(), exported
        key = answers_key("", result.to_dict())
        if key == exported:  # already in the page: nothing to make again
            return gr.skip(), gr.skip(), gr.skip(), exported
        names = self.adapter_names(result)
        md = self.shown(render.result_markdown(result, names))
        js = self.shown(json.dumps(render.result_json(result, names), indent=2, default=str, ensure_ascii=False))
        return gr.update(visible=True), md, js, key

    # ---------------------------------------------------------------- index, adapters, setup
    def adapter_dropdown(self, kind: str) -> dict[str, Any]:
        """Choices: the default (``""``, resolved when asked, so a column the setup prepares starts answering without
        a reload; its label says what it resolves to now), every listed adapter with its origin (shipped, trained
        here, published), and none. Values are names, never server paths (:meth:`AppState.adapters`), and so are
        the labels."""
        from medadapt.state import NO_ADAPTER

        choices = [(self.shown(label), name) for label, name in self.state.adapter_choices(kind)]
        return {"choices": [(self.shown(self.state.default_label(kind)), "")] + choices + [("(none)", NO_ADAPTER)],
                "value": ""}

    def refresh(self) -> list[Any]:
        return [gr.update(**self.adapter_dropdown(k)) for k in ("sft", "msft")]

    def index_status(self) -> str:
        s = self.state.pipeline.index_status()
        if s.get("built"):
            return f"📚 Index **{s['table']}**: {s['rows']:,} snippets, embedder `{s['embedder']}` ({s['dim']}-d)."
        return "📚 Retrieval index not built yet — press **Build index** (or run `python -m medadapt.retrieval build`)."

    def build(self, progress=gr.Progress()) -> str:
        if self.cfg.public:
            return "Building the index is disabled in public mode."
        setup = self.state.setup
        if setup is not None and setup.message_for("rag"):
            return f"📚 The first-run setup is on it: {setup.message_for('rag')}."
        try:
            self.state.pipeline.build_index(lambda done, total: progress((done, total), desc="Embedding snippets"))
        except Exception as e:
            return f"⚠️ Index build failed: {type(e).__name__}: {self.shown(str(e))}"
        return self.index_status()

    def setup_text(self) -> str:
        """The first-run setup's line ('' without a setup)."""
        setup = self.state.setup
        if setup is None:
            return ""
        st = setup.state()
        return self.shown(render.setup_markdown(st, interrupted(st)))

    def setup_tick(self, seen: str):
        """The setup line; the adapter choices and index line are refreshed when a step finishes."""
        text = self.setup_text()
        done = ",".join(s for s, r in self.state.setup.state().steps.items() if r.status in STEP_READY)
        if done == seen:
            return text, gr.skip(), gr.skip(), gr.skip(), seen
        return text, *self.refresh(), self.index_status(), done
