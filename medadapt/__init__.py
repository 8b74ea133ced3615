"""MedAdapt: compare base, RAG, SFT and MSFT variants of one small LLM on medical questions."""

__version__ = "0.1.0"
