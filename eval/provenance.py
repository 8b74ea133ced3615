"""Which adapter each result belongs to, and whether it is the one the Compare tab runs (pure: no I/O, no torch).

A results file records each adapter variant's identity as ``variants[v].adapter_meta.sha256``: the sha256 of its
``adapter_model.safetensors`` (:func:`medadapt.shipped.adapter_checksum`, written by ``python -m eval run``). The
Benchmarks tab passes the checksums of the adapters Compare serves by default (``{kind: sha256 or None}``) and marks
every result measured on another adapter, or on one whose identity was not recorded (files written before), so the
numbers beside the answers are never silently another draw of the recipe.
"""
from __future__ import annotations

from typing import Any

SHORT = 12


def variant_kind(name: str, entry: dict[str, Any]) -> str | None:
    """The Compare column an adapter variant compares with (``sft`` / ``msft`` / ``cpt``), None without an adapter."""
    if not entry.get("adapter"):
        return None
    job = (entry.get("adapter_meta") or {}).get("job")
    if job in ("sft", "msft", "cpt"):
        return "msft" if job == "cpt" else job
    core = name.split("+", 1)[0].split("@", 1)[0].split("=", 1)[0]
    return core if core in ("sft", "msft") else None


def provenance(results: dict[str, Any], running: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """``{variant: {"kind", "sha256", "running", "same"}}`` for every adapter variant of ``results``: ``same`` is
    True only when the recorded checksum equals the one Compare runs for that kind."""
    out = {}
    for name, entry in results.get("variants", {}).items():
        kind = variant_kind(name, entry)
        if kind is None:
            continue
        sha = (entry.get("adapter_meta") or {}).get("sha256")
        now = running.get(kind)
        out[name] = {"kind": kind, "sha256": sha, "running": now, "same": bool(sha) and sha == now}
    return out


def short(sha: str | None) -> str:
    return sha[:SHORT] if sha else "not recorded"


def mark(info: dict[str, Any] | None) -> str:
    """A variant's label suffix in the results table: its adapter, and a warning when Compare runs another."""
    if info is None:
        return ""
    return f" · adapter {short(info['sha256'])}" + ("" if info["same"] else " ⚠ not the adapter Compare runs")


def provenance_markdown(results: dict[str, Any], running: dict[str, str | None], label=lambda v: v) -> str:
    """One line per adapter variant: the adapter it was measured on (by checksum) and what Compare runs now."""
    lines = []
    for name, info in provenance(results, running).items():
        now = f"`{short(info['running'])}`" if info["running"] else "no adapter"
        if info["same"]:
            lines.append(f"- ✅ **{label(name)}**: adapter `{short(info['sha256'])}`, the one Compare runs.")
        else:
            lines.append(f"- ⚠️ **{label(name)}**: adapter `{short(info['sha256'])}`; Compare's {info['kind'].upper()} "
                         f"column runs {now} by default, so these numbers are not those of its answers.")
    return "\n".join(lines)
