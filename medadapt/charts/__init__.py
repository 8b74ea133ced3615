"""Plotly figures, pure: training loss curves (:mod:`.loss`) and evaluation results (:mod:`.results`)."""
