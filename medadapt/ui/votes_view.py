"""The arena-vote tally shown in the Benchmarks tab ("which answer is best?" votes from the Compare tab)."""
from __future__ import annotations

from typing import Any

import gradio as gr
import plotly.graph_objects as go

from medadapt.variants import variant_color, variant_label
from medadapt.votes import tally_votes

ALL_BAD_COLOR = "#dc2626"


def votes_figure(counts: dict[str, int]) -> go.Figure:
    """Bar chart of votes per choice, with each bar's share of all votes."""
    total = sum(counts.values())
    labels = [variant_label(k) if k != "all_bad" else "All bad" for k in counts]
    text = [f"{n} ({100 * n / total:.0f}%)" if total else "0" for n in counts.values()]
    fig = go.Figure(go.Bar(x=labels, y=list(counts.values()), text=text, textposition="outside",
                           marker_color=[ALL_BAD_COLOR if k == "all_bad" else variant_color(k) for k in counts]))
    fig.update_layout(title=f"Arena votes: which answer is best? ({total} vote{'s' if total != 1 else ''})",
                      yaxis_title="votes", height=320, margin=dict(t=50, b=30, l=50, r=20), template="plotly_white")
    if not total:
        fig.add_annotation(text="No votes yet: vote under the four answers in the Compare tab.", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def build_votes_section(state: Any) -> dict[str, Any]:
    c: dict[str, Any] = {}

    def refresh():
        return votes_figure(tally_votes(state.cfg))

    with gr.Accordion("Arena votes from the Compare tab", open=True):
        c["plot"] = gr.Plot(refresh(), show_label=False)
        c["refresh"] = gr.Button("↻ Refresh votes", size="sm")
    c["refresh"].click(refresh, outputs=c["plot"], api_name="vote_tally")
    c["refresh_fn"] = refresh
    return c
