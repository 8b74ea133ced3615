"""The four variants the app compares: their names, labels and colours, defined once for every tab, chart and CLI."""
from __future__ import annotations

VARIANTS = ("base", "rag", "sft", "msft")
LABELS = {"base": "Base", "rag": "RAG", "sft": "SFT", "msft": "MSFT"}
COLORS = {"base": "#64748b", "rag": "#0d9488", "sft": "#2563eb", "msft": "#9333ea"}
EXTRA_COLORS = ("#ea580c", "#16a34a", "#db2777", "#ca8a04")  # other variants of an eval run (e.g. sft-r8)


def variant_label(name: str) -> str:
    """``Base``/``RAG``/``SFT``/``MSFT``; any other name (an eval variant like ``sft-r8``) as it is."""
    return LABELS.get(name, name)


def variant_color(name: str, i: int = 0) -> str:
    """The variant's colour (a ``+rag`` suffix keeps it); other names take the ``i``-th extra colour."""
    return COLORS.get(name.removesuffix("+rag"), EXTRA_COLORS[i % len(EXTRA_COLORS)])
