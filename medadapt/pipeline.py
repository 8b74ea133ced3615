"""The one place that wires question → retriever → prompt → engine → parser into four ``Answer`` records.

``Pipeline.compare`` validates the question, retrieves once (question only), builds each variant's messages, starts
every available variant in ONE engine call (:class:`medadapt.serve.api.TextEngine`) and yields a ``CompareResult``
snapshot as tokens arrive. Concurrent calls run side by side: the in-process engine batches their rows together, a
remote engine sends their requests in parallel; only adapter loading is serialized (and an adapter another call is
using is never unloaded). Variants that cannot run (adapter not trained, index not built) or that fail (a remote
server down, slow or broken mid-stream) get a clear message in their column; the others still answer.
"""
from __future__ import annotations

import hashlib
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medadapt.config import AppConfig, ConfigError, GenSettings, check_value, user_settings
from medadapt.variants import VARIANTS
from medadapt.prompts import build_messages, truncate_question
from medadapt.reasoning import cited_numbers, split_reasoning

DISCLAIMER = "Research demo, not medical advice. Do not use for diagnosis or treatment."
NOT_TRAINED = "Not trained yet — see the Training tab."
TRUNCATED_NOTICE = "The question was too long for the model's context window and was truncated."
MAX_QUESTION_CHARS = 4000  # a long USMLE vignette is ~2,000; anything past this is cut before any other work
CHARS_NOTICE = f"The question was truncated to its first {MAX_QUESTION_CHARS:,} characters (the limit)."
MIN_QUESTION_TOKENS = 32


class InputError(ValueError):
    """The user's input cannot be answered; the message says why and what to do."""


@dataclass
class Answer:
    variant: str
    status: str = "pending"  # pending | streaming | done | unavailable | error
    message: str = ""  # why a variant is unavailable, or a notice
    adapter: str = ""  # adapter path (sft/msft)
    raw: str = ""
    reasoning: str = ""
    answer: str = ""
    truncated: bool = False  # stopped inside the chain of thought
    hit_limit: bool = False  # stopped at max_new_tokens
    budget_closed: bool = False  # the thinking budget closed the chain of thought
    n_tokens: int = 0
    ttft_s: float | None = None
    total_s: float = 0.0
    retrieval_s: float = 0.0
    snippets: list[Any] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)
    engine_adapter: str = ""  # the name the engine knows this variant's adapter by


@dataclass
class CompareResult:
    question: str
    answers: dict[str, Answer]
    settings: dict[str, Any]
    notices: list[str] = field(default_factory=list)
    done: bool = False
    voted: bool = False  # this session already voted on these answers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_question(text: Any) -> str:
    """Normalise user text: str only, invalid code points and control characters removed, whitespace trimmed."""
    if not isinstance(text, str):
        raise InputError("The question must be text.")
    text = text[:MAX_QUESTION_CHARS]  # first: every later step (normalising, tokenizing, retrieval) is then bounded
    if not text.strip():
        raise InputError("Please type a medical question (the box is empty).")
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # surrogates → U+FFFD
    text = unicodedata.normalize("NFC", text)
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs", "Co", "Cn"))
    text = text.replace("\ufffd", "").strip()
    if not "".join(c for c in text if unicodedata.category(c) != "Cf").strip():  # e.g. only zero-width spaces
        raise InputError("The question holds only control or invalid characters; please type it as plain text.")
    return text


def generation_settings(cfg: AppConfig, values: Mapping[str, Any],
                        cls: type[GenSettings] = GenSettings) -> GenSettings:
    """A user's decoding settings by name as one ``cls``: each of :func:`~medadapt.config.user_settings` checked
    against its bounds (max new tokens also against :attr:`AppConfig.max_new_tokens_limit`), or InputError naming the
    bad value and its allowed range; a setting not given is the profile's (``seed`` always is)."""
    profile = {f.name: getattr(cfg.generation, f.name, f.default) for f in fields(cls)}
    given = {k: v for k, v in values.items() if v is not None}
    user = {k: checked(cls, k, given.get(k, profile[k]), cfg.max_new_tokens_limit if k == "max_new_tokens" else None)
            for k in user_settings(cls)}
    return cls(**{**profile, **user})


def checked(cls: type, key: str, raw: Any, hi: float | None = None) -> Any:
    """A user's value for setting ``key`` of config dataclass ``cls`` within its bounds, or InputError saying them."""
    try:
        return check_value(cls, key, raw, hi)
    except ConfigError as e:
        raise InputError(f"{e}.") from None


def adapter_name(kind: str, path: Path) -> str:
    """A stable engine adapter name for an adapter folder (PEFT names may not contain dots)."""
    return f"{kind}_{hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]}"


class Pipeline:
    """Runs the compare chain over a shared engine and (lazily opened) retriever."""

    def __init__(self, cfg: AppConfig, engine_factory: Callable[[], Any], retriever_factory: Callable[[], Any]):
        self.cfg = cfg
        self._engine_factory, self._retriever_factory = engine_factory, retriever_factory
        self._engine = None
        self._retriever = None
        self._adapter_lock = threading.Lock()  # adapter loads/unloads and the start that pins them
        self._in_use: Counter[str] = Counter()  # adapter name -> running generations using it
        # what a column the first-run setup is still preparing says (medadapt.setup_chain.SetupChain.message_for)
        self.preparing: Callable[[str], str | None] = lambda variant: None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    def retriever(self):
        """The retriever, opened on first use; raises IndexNotBuiltError while there is no index."""
        if self._retriever is None:
            self._retriever = self._retriever_factory()
        return self._retriever

    def index_status(self) -> dict[str, Any]:
        from medadapt.retrieval.rag import index_status

        return index_status(self.cfg)

    def build_index(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Build (or resume) the retrieval index, then reopen the retriever on it."""
        from medadapt.retrieval.rag import build_index

        rows = build_index(self.cfg, progress=progress)
        self._retriever = None
        return rows

    def retrieve(self, question: str, k: int | None = None, mode: str | None = None) -> tuple[list[Any], float, str]:
        """Snippets within the context budget, seconds taken, and an error message ('' when fine). A question typed
        with lettered options retrieves per option (``rag.option_queries``; each snippet names its option)."""
        from medadapt.retrieval.rag import IndexNotBuiltError, fit_to_budget, question_options

        t0 = time.perf_counter()
        stem, options = question_options(question)
        try:
            if options and self.cfg.rag.option_queries != "question":  # one query per option, fused (MedRAG)
                hits = self.retriever().retrieve_options(stem, options, self.cfg.rag.option_top_k,
                                                         self.cfg.rag.option_queries, mode)
            else:
                hits = self.retriever().retrieve(question, k=k, mode=mode)
        except IndexNotBuiltError as e:
            return [], 0.0, str(e)
        hits = fit_to_budget(hits, self.engine.count_tokens, self.cfg.rag.context_tokens)
        return hits, time.perf_counter() - t0, ""

    def _plan(self, adapters: dict[str, Path | None]) -> dict[str, Answer]:
        answers = {v: Answer(v) for v in VARIANTS}
        for kind in ("sft", "msft"):
            path = adapters.get(kind)
            if path is None:
                answers[kind].status, answers[kind].message = "unavailable", self.preparing(kind) or NOT_TRAINED
            else:
                answers[kind].adapter = str(path)
        return answers

    def compare(
        self,
        question: Any,
        settings: GenSettings,
        adapters: dict[str, Path | None],
        rag_everywhere: bool = False,
        top_k: int | None = None,
    ) -> Iterator[CompareResult]:
        """Yield snapshots of all four answers; raises InputError for an unusable question before any work.
        ``settings`` (:func:`generation_settings`) goes to the engine as it is."""
        text = clean_question(question)
        engine = self.engine
        answers = self._plan(adapters)
        shown = {k: getattr(settings, k) for k in user_settings(type(settings))}  # what the user set
        result = CompareResult(text, answers, dict(shown, rag_everywhere=rag_everywhere, top_k=top_k))
        if len(question) > MAX_QUESTION_CHARS:
            result.notices.append(CHARS_NOTICE)
        waiting = getattr(engine, "preparing", lambda: None)()  # a server engine still converting or starting
        if waiting:
            failed = getattr(engine, "failed", lambda: False)()
            for ans in answers.values():
                ans.status, ans.message = ("error" if failed else "unavailable"), waiting
            result.done = True
            yield result
            return
        snippets, r_s, r_err = self.retrieve(text, k=top_k)
        needs_rag = ["rag"] + (["sft", "msft"] if rag_everywhere else [])
        for v in needs_rag:
            if answers[v].status == "unavailable":
                continue
            answers[v].snippets, answers[v].retrieval_s = snippets, r_s
            if r_err and v == "rag":
                answers[v].status, answers[v].message = "unavailable", self.preparing("rag") or r_err
            elif r_err:
                answers[v].message = "No retrieval (index not built)."

        with self._adapter_lock:  # load what this call needs; never unload what a running call uses
            self._sync_adapters(engine, answers, self._in_use)
            requests, order = self._requests(engine, text, answers, settings.max_new_tokens, result,
                                             self.cfg.model.system_prompt)
            generation = engine.start(requests, settings) if requests else None
            pinned = [a for _, a in requests]
            self._in_use.update(pinned)
        try:
            yield result
            if generation is not None:
                opened = engine.prompt_opens_think()
                for rows in generation:
                    for v, row in zip(order, rows):
                        self._update(answers[v], row, opened)
                    yield result
        finally:
            if generation is not None:
                generation.close()  # a stopped request stops only its own rows
            with self._adapter_lock:
                self._in_use.subtract(pinned)
        for v in order:
            if answers[v].status != "error":
                answers[v].status = "done"
        result.done = True
        yield result

    @staticmethod
    def _sync_adapters(engine: Any, answers: dict[str, Answer], in_use: Counter | None = None) -> None:
        """Load the adapters these answers need (reusing a loaded copy of the same folder), unload the others that no
        running generation uses."""
        from medadapt.serve.api import AdapterLoadError

        loaded = {Path(p).resolve(): name for name, p in engine.adapters.items()}
        wanted = set()
        for kind in ("sft", "msft"):
            ans = answers[kind]
            if ans.status == "unavailable":
                continue
            name = loaded.get(Path(ans.adapter).resolve()) or adapter_name(kind, Path(ans.adapter))
            try:
                if not engine.has_adapter(name):
                    engine.load_adapter(name, ans.adapter)
            except AdapterLoadError as e:
                ans.status, ans.message = "error", f"Adapter could not be loaded: {e}"
                continue
            ans.engine_adapter = name
            wanted.add(name)
        for name in set(engine.adapters) - wanted:  # each loaded adapter costs a little on every decode step
            if not (in_use or {}).get(name, 0) > 0:
                engine.unload_adapter(name)

    @staticmethod
    def _requests(engine: Any, text: str, answers: dict[str, Answer], max_new: int, result: CompareResult,
                  system_role: bool = True) -> tuple[list[tuple[list[dict], str]], list[str]]:
        """Messages and adapter name per runnable variant, the question cut to fit the context window.

        ``system_role=False`` (``model.system_prompt``; the DeepSeek-R1 family): the instructions open the user turn."""
        from medadapt.serve.api import BASE

        requests, order = [], []
        for v, ans in answers.items():
            if ans.status in ("unavailable", "error"):
                continue
            overhead = engine.prompt_tokens(build_messages("", snippets=ans.snippets, system_role=system_role))
            q, cut = truncate_question(text, engine.count_tokens, engine.max_context - max_new - overhead)
            if cut and TRUNCATED_NOTICE not in result.notices:
                result.notices.append(TRUNCATED_NOTICE)
            if len(q) < min(len(text), MIN_QUESTION_TOKENS):
                ans.status, ans.message = "error", "Not enough room in the context window; lower max new tokens."
                continue
            requests.append((build_messages(q, snippets=ans.snippets, system_role=system_role),
                             ans.engine_adapter or BASE))
            order.append(v)
            ans.status = "streaming"
        return requests, order

    @staticmethod
    def _update(ans: Answer, row: Any, opened: bool) -> None:
        parsed = split_reasoning(row.text, opened=opened)
        ans.raw, ans.reasoning, ans.answer = row.text, parsed.reasoning, parsed.answer
        ans.n_tokens, ans.ttft_s, ans.total_s = row.n_tokens, row.first_token_s, row.elapsed_s
        ans.truncated = parsed.truncated and row.finished
        ans.hit_limit = row.finished and row.finish_reason == "length"
        ans.budget_closed = row.budget_closed
        if ans.snippets:
            ans.cited = cited_numbers(parsed.answer or row.text, len(ans.snippets))
        if row.finish_reason == "error":
            ans.status, ans.message = "error", row.error
        elif row.finished:
            ans.status = "done"
