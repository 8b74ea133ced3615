"""Scoring views: the ways one results file scores the same items, and how a prediction row is read per view.

A loglik run records three views for every item from one pass over each prompt (:func:`eval.loglik.score_multi`);
a cot run records one. ``python -m eval merge`` puts a cot run's view next to the loglik views of the same variants
and items, so one file holds them all. A row of ``predictions`` carries ``views = {view: {"pred", "correct",
"invalid"}}``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class ViewSpec:
    name: str
    label: str
    what: str  # one sentence for the tab


VIEWS: dict[str, ViewSpec] = {v.name: v for v in (
    ViewSpec("letter", "letter", "log-likelihood of the option letter after “Answer:” (the usual MCQ "
             "score, lm-eval's acc; it rewards a model that learned which letter to say)"),
    ViewSpec("letter_cal", "letter, content-free calibrated", "the same letter scores divided by the "
             "model's prior over letters on content-free copies of the prompt that keep the label space "
             "(Zhao et al. 2021; 24 copies per benchmark, the prior's spread recorded)"),
    ViewSpec("letter_batch_cal", "letter, batch-calibrated", "the same letter scores divided by "
             "the model's mean letter distribution over the evaluated items of the benchmark "
             "(batch calibration, Zhou et al. 2024; no labels used, no extra pass)"),
    ViewSpec("circular", "circular", "right only if the letter score picks the gold option under every "
             "cyclic rotation of the options (MMBench's CircularEval); a letter prior cannot raise it"),
    ViewSpec("debiased", "debiased (all positions)", "the option whose letter log-probability averaged "
             "over the positions it takes in the rotations is highest (permutation debiasing, PriDe); a "
             "position prior cancels exactly"),
    ViewSpec("text_norm", "option text per character (acc_norm)", "log-likelihood of each option's text "
             "divided by its characters (lm-evaluation-harness's acc_norm), no letter involved"),
    ViewSpec("text_sum", "option text, summed (acc)", "total log-likelihood of each option's text, no "
             "length normalization (lm-evaluation-harness's acc on the option texts), no letter involved"),
    ViewSpec("cot", "chain of thought", "generated reasoning, then the parsed “Answer: X”"),
    ViewSpec("cot_budget", "chain of thought, thinking budget", "the same, but a reasoning still open "
             "after the budget is closed (`</think>`) and the model answers (budget forcing, s1)"),
    ViewSpec("study", "study protocol", "the original study's evaluation as its notebooks ran it: its raw "
             "prompt (no chat template), temperature 0.01, its items, and its parser: the first “answer/"
             "choice/option is X” anywhere in the output, reasoning included, else the first standalone "
             "letter (PubMedQA: the first yes/no/maybe)"),
    ViewSpec("study_project_parser", "study protocol, project's parser", "the same "
             "generations read by the project's answer filter (the answer after the "
             "reasoning): the difference to the study view is the parser's alone"),
)}
LOGLIK_VIEWS = ("letter", "letter_cal", "letter_batch_cal", "circular", "debiased", "text_norm", "text_sum")
PRIOR_FREE_VIEWS = ("letter_batch_cal", "circular", "debiased")  # a letter prior cannot raise these
PRIOR_SENSITIVE_VIEWS = ("letter", "letter_cal")  # a letter prior can move these: checked against the prior-free ones
TEXT_VIEWS = ("text_norm", "text_sum")  # no letter involved
STUDY_VIEWS = ("study", "study_project_parser")  # the two views of one study-protocol run (eval.study)
GENERATED_VIEWS = ("cot", "cot_budget", *STUDY_VIEWS)  # views of a cot run: its think budget or protocol decides
PROTOCOLS = {"project": "project protocol", "study": "study protocol (the original notebooks)"}
MODE_VIEW = {"loglik": "letter", "cot": "cot"}  # the one view of a file written before views existed
INVALID = "invalid"
TEXT_NORM_UNIT = "chars"  # what text_norm divides by (files from before lm-eval's acc_norm divided by UTF-8 bytes)


def cot_view(think_budget: int) -> str:
    """The view a cot run records: ``cot_budget`` under a thinking budget, else ``cot``."""
    return "cot_budget" if think_budget > 0 else "cot"


def run_key(view: str) -> str:
    """The run a view comes from, as a merged file keys each run's timing: ``loglik``, the generated view, or
    ``study`` for both views of a study-protocol run."""
    if view in STUDY_VIEWS:
        return "study"
    return view if view in GENERATED_VIEWS else "loglik"


def protocol_label(results: dict) -> str:
    """Which evaluation protocol wrote a results file (a merged file: each one it holds, study first)."""
    runs = {run_key(v) for v in results.get("views") or []}
    names = (["study"] if results.get("protocol") == "study" or "study" in runs else []) + \
        (["project"] if results.get("protocol", "project") == "project" or runs - {"study"} else [])
    return " + ".join(PROTOCOLS[n] for n in names)


def results_run(results: dict) -> str:
    """The :func:`run_key` of the run that wrote a (not merged) results file."""
    if (results.get("mode") or "loglik") == "loglik":
        return "loglik"
    return next((v for v in results.get("views") or [] if v in GENERATED_VIEWS), "cot")


def decoding_note(results: dict, view: str) -> str:
    """How a generated view was decoded, from its run's recorded config ("" for a loglik view or when unknown)."""
    if view not in GENERATED_VIEWS:
        return ""
    run = run_key(view)
    own = results.get("config") if results_run(results) == run else None
    ev = ((results.get("config_by_run") or {}).get(run) or own or {}).get("eval") or {}
    if not ev:
        return ""
    temp = ev.get("temperature") or 0
    parts = ["greedy" if temp <= 0 else f"temperature {temp:g}, top-p {ev.get('top_p', 1.0):g}"]
    if ev.get("repetition_penalty", 1.0) != 1.0:
        parts.append(f"repetition penalty {ev['repetition_penalty']:g}")
    parts.append(f"{ev.get('max_new_tokens')} new tokens")
    if ev.get("think_budget"):
        parts.append(f"thinking budget {ev['think_budget']} tokens")
    if run == "study":
        parts.insert(0, "raw prompt, no chat template")
    return ", ".join(parts)


def view_label(name: str) -> str:
    spec = VIEWS.get(name)
    return spec.label if spec else name


def mode_view(results: dict) -> str:
    """The view a run's mode scores first (loglik when the file names no mode)."""
    return MODE_VIEW.get(results.get("mode") or "loglik", "letter")


def views_of(results: dict) -> list[str]:
    """The views a results file holds, in display order."""
    views = results.get("views") or [mode_view(results)]
    return [v for v in VIEWS if v in views] + [v for v in views if v not in VIEWS]


def default_view(results: dict) -> str:
    return views_of(results)[0]


def row_view(row: dict, view: str | None, results: dict) -> dict | None:
    """``{"pred", "correct", "invalid", ...}`` of one prediction row under ``view`` (None: the file's first view);
    None when the row was not scored in that view (e.g. a cot view run on fewer items)."""
    return row["views"].get(view or default_view(results))


def prediction_counts(rows: list[dict]) -> dict[str, int]:
    """How often each answer was predicted (``invalid`` for rows without one)."""
    return dict(Counter(r.get("pred") or INVALID for r in rows))


def text_sum_view(text_logprobs: list[float], options: dict[str, str], answer: str) -> dict:
    """The ``text_sum`` view: the option text with the highest total log-probability (lm-eval's acc)."""
    from eval.scoring import choose

    pred = list(options)[choose(text_logprobs)]
    return {"pred": pred, "correct": pred == answer, "invalid": False}


def loglik_row_views(logprobs: dict, options: dict[str, str], answer: str, cf_prior: list[float] | None,
                     batch_prior: list[float] | None) -> dict[str, dict]:
    """Every loglik view of one item from its stored log-probabilities (``letter``, ``text``, ``rotations``: the
    letter log-probabilities under rotations 1..k-1) and the two priors; a view whose inputs are missing is left out."""
    from eval.circular import circular_view, debiased_view
    from eval.scoring import calibrate, choose

    letters = list(options)
    out: dict[str, dict] = {}

    def pick(i: int) -> dict:
        return {"pred": letters[i], "correct": letters[i] == answer, "invalid": False}

    lps = logprobs.get("letter")
    if lps and len(lps) == len(letters):
        out["letter"] = pick(choose(lps))
        if cf_prior and len(cf_prior) == len(letters):
            out["letter_cal"] = pick(choose(calibrate(lps, cf_prior)))
        if batch_prior and len(batch_prior) == len(letters):
            out["letter_batch_cal"] = pick(choose(calibrate(lps, batch_prior)))
        rot = logprobs.get("rotations")
        if rot and len(rot) == len(letters) - 1:
            out["circular"] = circular_view([lps, *rot], letters, answer)
            out["debiased"] = debiased_view([lps, *rot], letters, answer)
    text = logprobs.get("text")
    if text and len(text) == len(letters):
        out["text_norm"] = text_norm_view(text, options, answer)
        out["text_sum"] = text_sum_view(text, options, answer)
    return out


def text_norm_view(text_logprobs: list[float], options: dict[str, str], answer: str) -> dict:
    """The ``text_norm`` view of one item from its options' total log-probabilities (`` <text>`` each, in option
    order): the highest per character of the option text, as lm-evaluation-harness's acc_norm."""
    from eval.scoring import choose, norm_lengths

    letters = list(options)
    pred = letters[choose(text_logprobs, norm_lengths(list(options.values())))]
    return {"pred": pred, "correct": pred == answer, "invalid": False}
