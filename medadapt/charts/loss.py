"""Pure plotly figure builders for training runs: loss curves (train and eval, raw and EMA-smoothed)."""
from __future__ import annotations

from typing import Any

TRAIN_COLOR, EVAL_COLOR = "#2563eb", "#ea580c"


def ema(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard-style smoothing); ``weight`` 0 returns the values."""
    out, acc = [], 0.0
    for n, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** n) if weight else v)
    return out


def loss_series(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """x/y lists of train and eval loss; MSFT stages are laid end to end (a stage whose steps restart at 1 is
    shifted after the previous one; global steps are kept as they are).

    Returns ``train_x, train_y, eval_x, eval_y`` and ``stage_starts`` (x where each later stage begins).
    """
    out: dict[str, list[float]] = {"train_x": [], "train_y": [], "eval_x": [], "eval_y": [], "stage_starts": []}
    offset, stage, stage_max = 0, None, 0
    stage_names: list[str] = []
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, (int, float)):
            continue
        rec_stage = rec.get("stage")
        if rec_stage is not None and rec_stage != stage:
            if stage is not None:
                offset += stage_max if step <= stage_max else 0
                out["stage_starts"].append(offset if step <= stage_max else offset + stage_max)
            stage, stage_max = rec_stage, 0
            stage_names.append(rec_stage)
        stage_max = max(stage_max, step)
        if isinstance(rec.get("loss"), (int, float)):
            out["train_x"].append(offset + step)
            out["train_y"].append(float(rec["loss"]))
        if isinstance(rec.get("eval_loss"), (int, float)):
            out["eval_x"].append(offset + step)
            out["eval_y"].append(float(rec["eval_loss"]))
    out["stages"] = stage_names  # type: ignore[assignment]
    return out


def loss_figure(records: list[dict[str, Any]], smoothing: float = 0.9, title: str = "Loss", height: int = 340):
    """Train loss (raw, faint) + its EMA (bold) + eval loss (markers) against the step."""
    import plotly.graph_objects as go

    s = loss_series(records)
    fig = go.Figure()
    if s["train_y"]:
        fig.add_trace(go.Scatter(x=s["train_x"], y=s["train_y"], name="train (raw)", mode="lines",
                                 line={"color": TRAIN_COLOR, "width": 1}, opacity=0.3))
        fig.add_trace(go.Scatter(x=s["train_x"], y=ema(s["train_y"], smoothing), name="train (smoothed)",
                                 mode="lines", line={"color": TRAIN_COLOR, "width": 2.5}))
    if s["eval_y"]:
        fig.add_trace(go.Scatter(x=s["eval_x"], y=s["eval_y"], name="eval", mode="lines+markers",
                                 line={"color": EVAL_COLOR, "width": 2}, marker={"size": 7}))
    for x, name in zip(s["stage_starts"], s["stages"][1:]):
        fig.add_vline(x=x, line={"dash": "dot", "color": "#64748b"}, annotation_text=f"{name} stage",
                      annotation_position="top left")
    if not s["train_y"] and not s["eval_y"]:
        fig.add_annotation(text="waiting for the first logged loss…", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font={"size": 15, "color": "#64748b"})
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 50, "r": 20, "t": 45, "b": 40}, xaxis_title="step", yaxis_title="loss",
                      legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
                      hovermode="x unified")
    return fig
