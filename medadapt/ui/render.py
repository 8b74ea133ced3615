"""Pure view functions: an ``Answer`` record → the Markdown/HTML its column shows. No gradio, no model."""
from __future__ import annotations

import html
import json
import time
from typing import Any

from medadapt.pipeline import DISCLAIMER, Answer, CompareResult
from medadapt.variants import variant_label

SUBTITLES = {
    "base": "the base model as is",
    "rag": "base model + retrieved textbook snippets",
    "sft": "LoRA fine-tuned on Q → CoT → A",
    "msft": "continual pretraining, then the same SFT",
}


def answer_markdown(ans: Answer) -> str:
    """The column's main text: final answer (or state), then the disclaimer."""
    if ans.status == "unavailable":
        body = f"*{ans.message}*"
    elif ans.status == "error":
        body = f"⚠️ {ans.message}"
    elif ans.status == "pending":
        body = "*waiting…*"
    elif not ans.answer and ans.status == "streaming":
        body = "*thinking…*" if ans.reasoning else "*generating…*"
    elif not ans.answer:
        body = "*(no final answer after the chain of thought)*" if ans.reasoning else "*(empty output)*"
    else:
        body = ans.answer
    note = f"\n\n*{ans.message}*" if ans.message and ans.status not in ("unavailable", "error") else ""
    return f"{body}{note}\n\n<span class='ma-disclaimer'>{DISCLAIMER}</span>"


def reasoning_markdown(ans: Answer) -> str:
    if ans.status in ("unavailable", "pending"):
        return ""
    if not ans.reasoning:
        return "*No separate chain of thought in this output.*" if ans.status == "done" else ""
    flag = "\n\n**⚠ truncated before `</think>`**" if ans.truncated else ""
    return ans.reasoning + flag


def stats_markdown(ans: Answer) -> str:
    """Token count, time to first token, total time, retrieval time, truncation flags."""
    if ans.status in ("unavailable", "pending"):
        return ""
    parts = [f"**{ans.n_tokens}** tokens"]
    if ans.ttft_s is not None:
        parts.append(f"TTFT {ans.ttft_s:.2f} s")
    parts.append(f"total {ans.total_s:.1f} s")
    if ans.retrieval_s:
        parts.append(f"retrieval {ans.retrieval_s * 1000:.0f} ms")
    if ans.budget_closed:
        parts.append("reasoning closed at the thinking budget")
    if ans.truncated:
        parts.append("⚠ truncated")
    elif ans.hit_limit:
        parts.append("⚠ hit max tokens")
    return " · ".join(parts)


def snippets_html(ans: Answer) -> str:
    """Retrieved snippets (title, source, score, expandable text); cited ones are marked."""
    if not ans.snippets:
        return ""
    items = []
    for i, s in enumerate(ans.snippets, 1):
        cited = i in ans.cited
        badge = "<span class='ma-cited'>cited</span>" if cited else ""
        option = getattr(s, "option", "")
        if option:  # per-option retrieval: which option's query found it
            badge += f" <span class='ma-src'>from option {html.escape(option)}'s query</span>"
        items.append(
            f"<details class='ma-snippet{' is-cited' if cited else ''}'><summary><b>[{i}]</b> "
            f"{html.escape(s.title)} <span class='ma-src'>{html.escape(s.source)} · score {s.score:.3f}</span> "
            f"{badge}</summary><div class='ma-snippet-text'>{html.escape(s.content)}</div></details>"
        )
    return "<div class='ma-snippets'><div class='ma-snippets-head'>Retrieved snippets</div>" + "".join(items) + "</div>"


def result_markdown(res: CompareResult, adapter_names: dict[str, str] | None = None) -> str:
    """The whole side-by-side result as a Markdown document (for export); ``adapter_names`` names each column's
    adapter (its run, :func:`medadapt.refs.adapter_name`) instead of its folder."""
    lines = [f"# MedAdapt comparison\n\n> {DISCLAIMER}\n\n**Question:** {res.question}\n",
             f"**Settings:** `{json.dumps(res.settings)}`\n"]
    lines += [f"*Notice:* {n}\n" for n in res.notices]
    for v, ans in res.answers.items():
        lines.append(f"## {variant_label(v)}\n")
        if ans.status in ("unavailable", "error"):
            lines.append(f"*{ans.message}*\n")
            continue
        if ans.adapter:
            lines.append(f"Adapter: `{(adapter_names or {}).get(v, ans.adapter)}`\n")
        if ans.reasoning:
            lines.append("<details><summary>Chain of thought</summary>\n\n" + ans.reasoning + "\n\n</details>\n")
        lines.append(ans.answer or "*(no final answer)*")
        lines.append(f"\n_{stats_markdown(ans)}_\n")
        for i, s in enumerate(ans.snippets, 1):
            via = f", from option {s.option}'s query" if getattr(s, "option", "") else ""
            lines.append(f"- [{i}] **{s.title}** ({s.source}, score {s.score:.3f}{via}){' — cited' if i in ans.cited else ''}")
    return "\n".join(lines) + "\n"


def result_json(res: CompareResult, adapter_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The result as a JSON-ready dict (for export), each adapter named as in :func:`result_markdown`."""
    data = {"disclaimer": DISCLAIMER, **res.to_dict()}
    for v, ans in data["answers"].items():
        if adapter_names is not None:
            ans["adapter"] = adapter_names.get(v, "")
        ans.pop("engine_adapter", None)  # the engine's internal name
    data.pop("voted", None)
    return data


SETUP_DONE_SHOWN_S = 600  # the "setup finished" line stays this long, then the Compare tab is quiet again
SETUP_ICONS = {"pending": "○", "waiting": "○", "running": "◐", "done": "✓", "skipped": "✓", "failed": "✗",
               "stopped": "‖"}  # plain glyphs: they render without an emoji font


def setup_markdown(st: Any, interrupted: bool = False) -> str:
    """One line on the first-run setup (a ``medadapt.setup_chain.SetupState``): each step's state and progress;
    ``interrupted``: its process is gone (:func:`medadapt.setup_chain.interrupted`)."""
    from medadapt.setup_chain import HOW, STEP_TITLES, progress_text

    if st.status == "idle" or all(r.status == "skipped" for r in st.steps.values()):
        return ""
    if st.status == "done" and st.ended and time.time() - st.ended > SETUP_DONE_SHOWN_S:
        return ""  # finished a while ago: nothing left to say
    parts = []
    for step, rec in st.steps.items():
        ready = f"ready ({HOW[rec.how]})" if rec.how in HOW else "ready"
        detail = {"running": progress_text(step, rec), "waiting": "waiting for another job", "pending": "queued",
                  "done": ready, "skipped": ready, "stopped": "stopped (Resume in the Training tab)",
                  "failed": f"failed: {html.escape(rec.error.splitlines()[0] if rec.error else '?')}"}[rec.status]
        parts.append(f"{SETUP_ICONS[rec.status]} **{STEP_TITLES.get(step, step)}** — {detail}")
    if st.status == "running" and interrupted:
        head = "**First-run setup interrupted** (its app process exited) — restart the app to continue it:"
    elif st.status == "running":
        head = "**First-run setup** — preparing what this machine lacks; each column answers as soon as its part is done:"
    elif st.status == "failed":
        head = ("**First-run setup finished with errors** — the other columns work; see the failed run in the "
                "Training tab, fix it, then restart the app or run `python -m medadapt setup`:")
    elif st.status == "stopped":
        head = "**First-run setup paused**:"
    else:
        head = "**First-run setup finished**:"
    return head + " " + " · ".join(parts)
