"""MedAdapt web app (also the Hugging Face Spaces ``app_file``).

Run: ``python app.py`` (profile ``auto``: offline when the Hub is unreachable). Options: ``--profile``, ``--host``,
``--port``, ``--share``. Env: ``MEDADAPT_PROFILE``, ``MEDADAPT_DATA_DIR``, ``MEDADAPT_PUBLIC``, ``MEDADAPT_ADMIN_PASSWORD``,
``MEDADAPT_TRUSTED_PROXIES`` (the proxies whose ``X-Forwarded-For`` is believed, :mod:`medadapt.ui.proxies`),
``MEDADAPT_SETUP=off`` (no automatic first-run setup of the index and adapters), ``MEDADAPT_ENGINE=openai`` with
``MEDADAPT_OPENAI_BASE_URL`` / ``MEDADAPT_OPENAI_API_KEY`` (generate on an OpenAI-compatible server such as vLLM,
:mod:`medadapt.serve.remote`), ``MEDADAPT_BATCHING=off`` (the in-process engine answers one question at a time),
``MEDADAPT_CONCURRENT_ASKS`` (questions generating at once, default 16). On a Hugging Face Space
(``SPACE_ID``) the hardware picks the profile and persistent storage (``/data``) keeps runs, index and results
(:mod:`medadapt.env`).
"""
from __future__ import annotations

import argparse
import logging
import os

QUEUE_CONCURRENCY = 4  # the light events (votes, exports, refreshes); Compare sets its own (serve.choice.concurrent_generations)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MedAdapt: base vs RAG vs SFT vs MSFT, side by side")
    p.add_argument("--profile", default=None, help="offline | reference | auto | path to a profile YAML")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true")
    p.add_argument("--no-preload", action="store_true", help="load the model on the first question instead of now")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from medadapt.env import use_persistent_hf_home

    use_persistent_hf_home()  # a Space with persistent storage keeps downloaded models and datasets in /data
    from medadapt.config import load_config
    from medadapt.setup_chain import setup_enabled
    from medadapt.state import AppState
    from medadapt.ui.common import launch_options
    from medadapt.ui.interface import build_demo

    cfg = load_config(args.profile)
    logging.info(cfg.describe())
    state = AppState.create(cfg)
    if setup_enabled():  # build the index and train the adapters this profile lacks, in the background
        state.setup.start()
    if not args.no_preload:
        state.preload()  # the base model and adapters now, the retriever once the index is there
    demo = build_demo(state)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=64)  # Compare questions: their own, higher limit
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options(cfg, demo))


if __name__ == "__main__":
    main()
