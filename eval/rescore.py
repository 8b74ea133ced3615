"""Re-score the ``text_norm`` view of a results file from its stored log-probabilities, without running a model.

Every loglik row stores ``logprobs = {"letter": [...], "text": [...]}``; ``text`` holds each option's total
log-probability of `` <option text>`` (summed over its tokens, rounded to 4 decimals). Files written before
``text_norm`` followed lm-evaluation-harness's acc_norm divided those sums by the UTF-8 bytes of `` <option text>``;
:func:`rescore_text_norm` divides by the option text's characters instead (:func:`eval.views.text_norm_view`), using
the options stored in the file's ``items``, and recomputes the summaries. Run::

    python -m eval rescore results/offline/views-20261129.json [--out NEW.json]

(without ``--out`` the file is rewritten in place, atomically).
"""
from __future__ import annotations

from eval.views import TEXT_NORM_UNIT, default_view, loglik_row_views, text_norm_view


def rescore_text_norm(results: dict) -> dict:
    """Recompute every row's ``text_norm`` view in place; returns ``{"rows", "changed", "by_variant": {v: {bench:
    changed}}}``. Rows without stored option-text log-probabilities (cot runs) are left as they are."""
    from eval.report import add_summaries

    items = {b: {it["id"]: it for it in its} for b, its in results.get("items", {}).items()}
    first = default_view(results)
    rows = changed = 0
    by_variant: dict[str, dict[str, int]] = {}
    for name, entry in results.get("variants", {}).items():
        for bench, preds in entry.get("predictions", {}).items():
            for r in preds:
                text = (r.get("logprobs") or {}).get("text")
                item = items.get(bench, {}).get(r.get("id"))
                if not text or item is None or len(text) != len(item["options"]):
                    continue
                view = text_norm_view(text, item["options"], item["answer"])
                old = r.setdefault("views", {}).get("text_norm", {})
                rows += 1
                if old.get("pred") != view["pred"]:
                    changed += 1
                    by_variant.setdefault(name, {}).setdefault(bench, 0)
                    by_variant[name][bench] += 1
                r["views"]["text_norm"] = {**old, **view}
                if first == "text_norm":
                    r.update(view)
    if rows:
        results["text_norm_unit"] = TEXT_NORM_UNIT
        add_summaries(results)
    return {"rows": rows, "changed": changed, "by_variant": by_variant}


def rescore_views(results: dict) -> dict:
    """Every loglik view a file's stored log-probabilities allow (:func:`eval.views.loglik_row_views`): text_norm and
    text_sum from ``logprobs.text``, letter_batch_cal from ``logprobs.letter`` (the batch prior: each variant's mean
    letter distribution over the benchmark's rows, recorded as ``calibration[bench].batch_prior``), letter_cal from the
    recorded content-free prior, circular and debiased where ``logprobs.rotations`` were stored. Returns ``{"rows",
    "changed": {view: predictions changed}, "views": [views added or recomputed]}``."""
    from eval.scoring import letter_prior
    from eval.report import add_summaries
    from eval.views import LOGLIK_VIEWS, views_of

    items = {b: {it["id"]: it for it in its} for b, its in results.get("items", {}).items()}
    first = default_view(results)
    rows, changed, seen = 0, {}, set()
    for entry in results.get("variants", {}).values():
        for bench, preds in entry.get("predictions", {}).items():
            stored = [r for r in preds if (r.get("logprobs") or {}).get("letter") and r.get("id") in items.get(bench, {})]
            if not stored:
                continue
            batch = letter_prior([r["logprobs"]["letter"] for r in stored])
            cal = entry.setdefault("calibration", {}).setdefault(bench, {"letters": list(items[bench][stored[0]["id"]][
                "options"])})
            cal["batch_prior"] = [round(p, 4) for p in batch]
            for r in stored:
                item = items[bench][r["id"]]
                views = loglik_row_views(r["logprobs"], item["options"], item["answer"], cal.get("prior"), batch)
                rows += 1
                for name, view in views.items():
                    old = r.setdefault("views", {}).get(name, {})
                    if old.get("pred") != view["pred"]:
                        changed[name] = changed.get(name, 0) + 1
                    r["views"][name] = {**old, **view}
                    seen.add(name)
                    if name == first:
                        r.update(view)
    if rows:
        results["text_norm_unit"] = TEXT_NORM_UNIT
        results["views"] = views_of({"views": [v for v in LOGLIK_VIEWS if v in seen] + list(results.get("views", []))})
        add_summaries(results)
    return {"rows": rows, "changed": changed, "views": [v for v in LOGLIK_VIEWS if v in seen]}
