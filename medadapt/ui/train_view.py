"""HTML and table rendering for the Training tab (pure: snapshots in, strings and rows out)."""
from __future__ import annotations

import html
from pathlib import Path

from medadapt.jobs.rundir import RunDir, RunSnapshot, tail

STATUS_COLORS = {"starting": "#64748b", "running": "#2563eb", "stopping": "#d97706", "finished": "#16a34a",
                 "failed": "#dc2626", "stopped": "#d97706", "unknown": "#64748b"}
RUN_COLUMNS = ["run", "job", "config", "status", "steps", "train loss", "eval loss", "wall time", "adapter"]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#64748b")
    return (f"<span style='background:{color};color:white;border-radius:999px;padding:2px 10px;"
            f"font-size:.8em;font-weight:600;text-transform:uppercase;letter-spacing:.04em'>{status}</span>")


def eta(snap: RunSnapshot) -> float | None:
    if snap.eta_s is not None:
        return snap.eta_s
    if snap.elapsed_s and 0 < snap.fraction < 1:
        return snap.elapsed_s * (1 - snap.fraction) / snap.fraction
    return None


def stat(label: str, value: str) -> str:
    return (f"<div style='min-width:90px'><div style='font-size:.72em;opacity:.65;text-transform:uppercase;"
            f"letter-spacing:.05em'>{label}</div><div style='font-size:1.05em;font-weight:600'>{value}</div></div>")


def progress_html(snap: RunSnapshot | None) -> str:
    """The live card: run name, status badge, progress bar, step/total, elapsed, ETA, tokens/s, losses, error."""
    box = "border:1px solid var(--border-color-primary);border-radius:12px;padding:12px 16px;"
    if snap is None:
        return (f"<div style='{box}opacity:.75'>No training run yet. Pick a job and a config, adjust the "
                "hyperparameters and press <b>Start training</b>.</div>")
    pct = 100.0 if snap.status == "finished" else 100.0 * snap.fraction
    color = STATUS_COLORS.get(snap.status, "#64748b")
    total = snap.total_steps or "?"
    stage = f" · stage <b>{html.escape(snap.stage)}</b>" if snap.stage else ""
    stats = "".join([
        stat("step", f"{snap.step} / {total}"), stat("progress", f"{pct:.0f}%"),
        stat("elapsed", duration(snap.elapsed_s)), stat("ETA", duration(eta(snap)) if snap.active else "–"),
        stat("tokens/s", num(snap.tokens_per_s, ",.0f")), stat("train loss", num(snap.loss)),
        stat("eval loss", num(snap.eval_loss)),
    ])
    error = ""
    if snap.error:
        error = (f"<pre style='margin-top:10px;padding:8px;border-radius:8px;background:#fef2f2;color:#991b1b;"
                 f"white-space:pre-wrap;max-height:220px;overflow:auto;font-size:.82em'>{html.escape(snap.error)}</pre>")
    note = {"starting": "loading the model and data…", "stopping": "saving a checkpoint at the next step…"}.get(
        snap.status, "")
    return (
        f"<div id='ma-train-progress' data-status='{snap.status}' style='{box}'>"
        f"<div style='display:flex;justify-content:space-between;align-items:center;margin-bottom:8px'>"
        f"<div><b>{html.escape(snap.run_dir.name)}</b> <span style='opacity:.7'>{html.escape(snap.job)}"
        f"{stage}</span> <span style='opacity:.6;font-size:.85em'>{note}</span></div>{badge(snap.status)}</div>"
        f"<div style='height:12px;background:var(--background-fill-secondary);border-radius:6px;overflow:hidden;"
        f"border:1px solid var(--border-color-primary)'><div style='width:{pct:.1f}%;height:100%;background:{color};"
        f"transition:width .6s'></div></div>"
        f"<div style='display:flex;flex-wrap:wrap;gap:8px 22px;margin-top:10px'>{stats}</div>{error}</div>"
    )


def run_row(snap: RunSnapshot) -> list[str]:
    adapter = str(Path(snap.adapter)) if snap.adapter else ""
    return [snap.run_dir.name, snap.job, snap.config, snap.status, str(snap.step), num(snap.loss),
            num(snap.eval_loss), duration(snap.wall_s if snap.wall_s is not None else snap.elapsed_s), adapter]


def model_card(snap: RunSnapshot) -> str:
    """The adapter's README (model card), or why there is none."""
    card = snap.run_dir / "adapter" / "README.md"
    head = f"**{snap.run_dir.name}** · {snap.job} · {snap.status} · {snap.step} steps · run dir `{snap.run_dir}`\n\n"
    if snap.error:
        head += f"```text\n{snap.error}\n```\n\n"
    if card.exists():
        return head + card.read_text(encoding="utf-8", errors="replace")
    return head + ("_No adapter yet: the run has not finished._" if snap.status != "finished"
                   else "_The run finished without publishing an adapter card._")


def tail_text(snap: RunSnapshot, lines: int = 40) -> str:
    return tail(RunDir(snap.run_dir).stdout_file, lines)
