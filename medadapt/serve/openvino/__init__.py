"""The CPU engine's server side, run from its own venv (``scripts/cpu_engine.sh``): the decoder traced to an OpenVINO
graph with gathered multi-LoRA (``graph``), adapters as graph inputs (``adapters``), the continuous-batching loop
(``runtime``), the HTTP server (``server``) and the conversion CLI (``convert``)."""
