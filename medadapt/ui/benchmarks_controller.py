"""The Benchmarks tab's behaviour: which results file and view to show, the figures and table for them, the
adapters' provenance, and evaluations launched as background jobs.

:class:`BenchmarksController` holds every handler the tab builder (:mod:`medadapt.ui.benchmarks`) binds its events
to; it returns values and ``gr.update``/``gr.skip``, never builds layout. Files are read through
:mod:`eval.results_files` (under ``results_dir`` only), figures come from :mod:`medadapt.charts.results`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from medadapt.data.benchmarks import has_breakdown, task_label
from eval.provenance import mark as provenance_mark, provenance, provenance_markdown
from eval.report import ALL, benchmarks_of
from eval.results_files import list_perplexity, list_results, read_results
from eval.views import default_view, views_of
from medadapt.charts.results import (accuracy_figure, decomposition_figure, distribution_figure, perplexity_figure,
                                     significance_figure, subject_figure)
from medadapt.shipped import adapter_checksum, shipped_results
from medadapt.ui.benchmarks_view import (drilldown_html, eval_args, item_choices, perplexity_markdown, progress_text,
                                         table_with_tests, view_choices, views_markdown)
from medadapt.ui.common import unlocked
from medadapt.ui.redact import path_redactor
from medadapt.variants import variant_label


def bench_choices(benches: list[str], everything: bool = False) -> list[tuple[str, str]]:
    """(label, name) of each benchmark, after "all items" when ``everything``."""
    return ([("all items", ALL)] if everything else []) + [(task_label(b), b) for b in benches]


class BenchmarksController:
    """The Benchmarks tab's event handlers over one app state (``cfg``, optional ``jobs`` and ``default_adapter``)."""

    def __init__(self, state: Any) -> None:
        self.state, self.cfg = state, state.cfg
        self.results_dir = self.cfg.paths.resolve("results_dir")
        self.shown = path_redactor(self.cfg)  # no absolute server paths in messages
        self.started: dict[str, Path] = {}  # run name -> run dir of the evaluations started from this app

    # ---------------------------------------------------------------- files
    def files(self) -> list[tuple[str, str]]:
        """(label, name) of every results file; the shipped release's results (what Compare serves) first."""
        return list_results(self.results_dir, shipped_results(self.cfg))

    def load(self, path: str | None) -> dict | None:
        """A results file by its name under ``results_dir`` (never outside it)."""
        return read_results(path, self.results_dir)

    def perplexity_files(self) -> list[tuple[str, str]]:
        return list_perplexity(self.results_dir)

    def on_refresh(self) -> Any:
        ch = self.files()
        return gr.update(choices=ch, value=ch[0][1] if ch else None)

    # ---------------------------------------------------------------- provenance
    def running(self) -> dict[str, str | None]:
        """The checksum of the adapter each Compare column serves by default (what a result is checked against)."""
        default = getattr(self.state, "default_adapter", lambda kind: None)  # a bare state (tests) serves none
        return {kind: adapter_checksum(default(kind)) for kind in ("sft", "msft")}

    def provenance_text(self, res: dict | None) -> str:
        text = provenance_markdown(res, self.running(), variant_label) if res else ""
        return f"**Which adapter each result belongs to** (by checksum):\n\n{text}" if text else ""

    def table(self, res: dict | None, view: str | None = None) -> tuple[list[str], list[list]]:
        """Header and rows, each adapter variant's row marked with its checksum (and where Compare runs another)."""
        header, rows = table_with_tests(res, view) if res else (["variant"], [])
        info = provenance(res, self.running()) if res else {}
        by_label = sorted(((variant_label(v), i) for v, i in info.items()), key=lambda x: -len(x[0]))
        out = []
        for r in rows:
            hit = next((i for lab, i in by_label if str(r[0]) == lab or str(r[0]).startswith(lab + " ⚠")), None)
            out.append([str(r[0]) + provenance_mark(hit)] + list(r[1:]) if hit else r)
        return header, out

    # ---------------------------------------------------------------- one file, one view
    def on_view(self, path: str, view: str, show_paper: bool, sig_bench: str, sub_bench: str, dist_bench: str):
        """Chart, table, paired tests, subjects and answers of ``path`` in ``view`` (the file's default if absent)."""
        res = self.load(path)
        view = view if res and view in views_of(res) else (default_view(res) if res else None)
        header, rows = self.table(res, view)
        return (accuracy_figure(res, show_paper, view), gr.update(value=rows, headers=header),
                significance_figure(res, sig_bench or ALL, view),
                subject_figure(res, sub_bench, view) if sub_bench else go.Figure(),
                distribution_figure(res, dist_bench, view) if dist_bench else go.Figure())

    def on_file(self, path: str, show_paper: bool):
        """Every figure, table and choice of the tab for a newly picked file, in its default view."""
        res = self.load(path)
        b = benchmarks_of(res) if res else []
        sub = [x for x in b if has_breakdown(x)]
        view = default_view(res) if res else None
        per_view = self.on_view(path, view, show_paper, ALL, sub[0] if sub else None, b[0] if b else None)
        first = b[0] if b else None
        return (*per_view[:3], gr.update(choices=bench_choices(sub), value=sub[0] if sub else None),
                per_view[3], gr.update(choices=bench_choices(b, True), value=ALL),
                gr.update(choices=bench_choices(b), value=first),
                gr.update(choices=item_choices(res, first) if b else [], value=None), drilldown_html(None, "", ""),
                gr.update(choices=view_choices(res), value=view), views_markdown(res),
                gr.update(choices=bench_choices(b, True), value=ALL), decomposition_figure(res, ALL),
                gr.update(choices=bench_choices(b), value=first), per_view[4])

    def on_provenance(self, path: str) -> str:
        return self.provenance_text(self.load(path))

    def on_paper(self, path: str, show_paper: bool, view: str | None):
        return accuracy_figure(self.load(path), show_paper, view)

    def on_significance(self, path: str, bench: str, view: str | None):
        return significance_figure(self.load(path), bench or ALL, view)

    def on_subjects(self, path: str, bench: str, view: str | None):
        return subject_figure(self.load(path), bench, view)

    def on_decomposition(self, path: str, bench: str):
        return decomposition_figure(self.load(path), bench or ALL)

    def on_distribution(self, path: str, bench: str, view: str | None):
        return distribution_figure(self.load(path), bench, view)

    def on_items(self, path: str, bench: str):
        return gr.update(choices=item_choices(self.load(path), bench), value=None)

    def on_item(self, path: str, bench: str, item: str) -> str:
        return drilldown_html(self.load(path), bench, item)

    def on_perplexity(self, path: str):
        ppl = self.load(path)
        return perplexity_figure(ppl), perplexity_markdown(ppl)

    # ---------------------------------------------------------------- evaluation jobs
    def on_run(self, variants, mode, n, bench_sel, secret="", request: gr.Request = None):
        """(message, the run's name): the name is the page session's own (a gr.State), so each page follows the
        evaluation it started and no other."""
        if not unlocked(self.cfg, secret, request):
            return ("🔒 Evaluation launches are locked in public mode: enter the admin secret, or duplicate the Space.",
                    gr.skip())
        jobs = getattr(self.state, "jobs", None)
        if jobs is None or not hasattr(jobs, "start_eval"):
            return "This app has no job runner; run `python -m eval run ...` from a shell.", gr.skip()
        try:
            run_dir = Path(jobs.start_eval(eval_args(variants, mode, n, bench_sel)))
        except Exception as e:  # noqa: BLE001 — JobBusyError, ValueError: shown to the user
            return self.shown(f"⚠️ {e}"), gr.skip()
        self.started[run_dir.name] = run_dir
        return self.shown(f"Started evaluation in `{run_dir}`."), run_dir.name

    def on_poll(self, run: str | None = None) -> str:
        """The progress of the evaluation this page started (``run``: its name, from the page's session)."""
        jobs = getattr(self.state, "jobs", None)
        run_dir = self.started.get(run or "")
        return self.shown(progress_text(jobs.poll(run_dir) if run_dir and jobs else None))
