"""Loss chart builders: EMA smoothing, train/eval series, MSFT stages laid end to end."""
from __future__ import annotations

import pytest

from medadapt.charts.loss import ema, loss_figure, loss_series


def test_ema_is_debiased_and_smooths():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    assert ema([1.0, 3.0], 0.0) == [1.0, 3.0]
    smooth = ema([1.0, 5.0, 1.0, 5.0], 0.8)
    assert max(smooth) - min(smooth) < 4.0 and smooth[0] == 1.0


def test_loss_series_splits_train_and_eval_and_chains_stages():
    recs = [{"stage": "cpt", "step": 1, "loss": 3.0}, {"stage": "cpt", "step": 2, "loss": 2.5},
            {"stage": "cpt", "step": 2, "eval_loss": 2.8}, {"stage": "sft", "step": 1, "loss": 2.0},
            {"note": "no step"}]
    s = loss_series(recs)
    assert (s["train_x"], s["train_y"]) == ([1, 2, 3], [3.0, 2.5, 2.0])
    assert (s["eval_x"], s["eval_y"], s["stage_starts"]) == ([2], [2.8], [2])


def test_loss_figure_traces_and_empty_state():
    recs = [{"step": i, "loss": 3.0 / i} for i in range(1, 6)] + [{"step": 5, "eval_loss": 1.0}]
    fig = loss_figure(recs)
    assert [t.name for t in fig.data] == ["train (raw)", "train (smoothed)", "eval"]
    assert list(fig.data[2].y) == [1.0]
    empty = loss_figure([])
    assert not empty.data and "waiting" in empty.layout.annotations[0].text


def test_global_step_stages_are_not_shifted():
    recs = [{"stage": "cpt", "step": 1, "loss": 3.0}, {"stage": "cpt", "step": 2, "loss": 2.9},
            {"stage": "sft", "step": 3, "loss": 2.0}, {"stage": "sft", "step": 4, "loss": 1.9}]
    s = loss_series(recs)
    assert s["train_x"] == [1, 2, 3, 4] and s["stage_starts"] == [2] and s["stages"] == ["cpt", "sft"]
