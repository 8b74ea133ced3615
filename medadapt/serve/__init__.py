"""Serving: the engine protocol (``api``), which engine serves (``choice``), the in-process engine (``engine`` with
``batching``, ``decoding``, ``think_budget``, ``multilora``), the OpenAI-compatible server (``remote``) and the CPU
engine (``cpu_engine``, its server in ``openvino/``, run from the engine's own venv)."""
