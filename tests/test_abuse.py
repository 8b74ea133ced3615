"""Public mode against a hostile client, through the real app and Gradio's real queue on loopback (issue 17).

Clients are told apart by their source address (127.0.0.x) and session, as the request guard tells them apart.
A handler is held "running" by holding the pipeline's generation lock, so the queue fills deterministically.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from bench.queue_client import QueueClient, fn_index
from medadapt.config import load_config
from medadapt.pipeline import DISCLAIMER
from medadapt.ui import guard
from medadapt.ui.guard import SESSIONS_PER_WINDOW, WHAT
from medadapt.ui.compare_controller import compare_data
from medadapt.ui.inflight import GENERATE, Limits
from tests.net import free_port

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "app_data"
LIMIT_KINDS = ["address", "session", "gen-address", "gen-session"]
QUESTION = compare_data("What causes scurvy?", max_new_tokens=16, top_k=2, sft_adapter="none", msft_adapter="none")


@pytest.fixture(scope="module")
def public_app(tmp_path_factory, tiny_model_dir):
    """The whole app in public mode: tiny model, no index, and an SFT adapter whose weights are garbage."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard, "GENERATIONS_PER_WINDOW", 10_000)  # the 6-a-minute ration has its own test (test_app.py)
        yield from _public_app(tmp_path_factory, tiny_model_dir)


def _public_app(tmp_path_factory, tiny_model_dir):
    from medadapt.state import AppState
    from medadapt.ui.common import launch_options
    from medadapt.ui.interface import build_demo

    tmp = tmp_path_factory.mktemp("public")
    cfg = load_config("offline", {
        "public": True, "model": {"name_or_path": tiny_model_dir, "display_name": "tiny-random"},
        "paths": {"data_dir": str(FIXTURE_DATA), "runs_dir": str(tmp / "runs"), "index_dir": str(tmp / "index"),
                  "results_dir": str(tmp / "results")}})
    assert cfg.public
    adapter = tmp / "runs" / "offline" / "sft-20260101-000000" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (adapter / "adapter_model.safetensors").write_text("not a safetensors file")
    (adapter / "medadapt.json").write_text(json.dumps({"job": "sft"}))
    state = AppState.create(cfg)
    demo = build_demo(state)
    demo.queue(default_concurrency_limit=1, max_size=64)
    options = launch_options(cfg, demo)
    inflight = options["app_kwargs"]["middleware"][0].kwargs["inflight"]
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **options)
    yield {"url": f"http://127.0.0.1:{port}", "state": state, "demo": demo, "inflight": inflight, "tmp": tmp,
           "compare": fn_index(demo, "compare")}
    demo.close()


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Gate:
    """The engine's model lock, held by a test: it stops every generation between decode steps (questions stay
    running). It remembers whether the test holds it, so a teardown never releases the decode loop's hold."""

    def __init__(self, lock) -> None:
        self.lock, self.held = lock, False

    def acquire(self) -> None:
        self.lock.acquire()
        self.held = True

    def release(self) -> None:
        self.held = False
        self.lock.release()


def gate(app) -> Gate:
    return app.setdefault("gate", Gate(app["state"].pipeline.engine._model_lock))


@pytest.fixture
def app(public_app):
    """The public app with default limits; afterwards the lock is free and every event has finished."""
    yield public_app
    lock = gate(public_app)
    if lock.held:
        lock.release()
    wait_until(lambda: not public_app["demo"]._queue.event_ids_to_events)
    public_app["inflight"].limits = Limits()
    public_app["demo"]._queue.max_size = 64


def test_a_flooding_client_is_refused_while_another_is_answered(app):
    lock = gate(app)
    lock.acquire()  # the first question holds the generation slot until released
    flooder = QueueClient(app["url"], "127.0.0.2")
    replies = [flooder.join(app["compare"], QUESTION, session=f"flood{i}")[0] for i in range(12)]
    assert replies[0].status == 200 and all(r.status == 429 for r in replies[1:])  # one question in line
    assert all("questions in progress from your address" in r.error and r.retry_after >= 1
               and re.search(r"about \d+ s; retry then", r.error) for r in replies[1:])
    cheap = fn_index(app["demo"], "refresh_adapters")  # fast events, each from a fresh session (a page load)
    replies = [flooder.join(cheap, [], session=f"flood-cheap{i}")[0] for i in range(20)]
    assert [r.status for r in replies] == [200] * (SESSIONS_PER_WINDOW - 1) + [429] * (21 - SESSIONS_PER_WINDOW)
    assert all("new sessions" in r.error and r.retry_after >= 1 and re.search(r"Retry in \d+ s", r.error)
               for r in replies[SESSIONS_PER_WINDOW - 1:])
    assert flooder.join(cheap, [], session="flood0")[0].status == 200  # its existing sessions still work
    honest = QueueClient(app["url"], "127.0.0.3")
    reply, event_id = honest.join(app["compare"], QUESTION)
    assert reply.status == 200 and event_id
    lock.release()
    done = honest.wait(event_id)
    assert DISCLAIMER in done.output[0] and "tokens" in done.output[2]


def test_a_client_refused_again_and_again_is_refused_before_its_body_is_read(app, monkeypatch):
    monkeypatch.setattr(guard, "TARPIT_S", 0.5)
    lock = gate(app)
    lock.acquire()
    flooder = QueueClient(app["url"], "127.0.0.9")
    assert flooder.join(app["compare"], QUESTION)[0].status == 200
    replies = [flooder.join(app["compare"], QUESTION)[0] for _ in range(guard.REFUSALS_PER_WINDOW)]
    assert all("questions in progress" in r.error for r in replies)
    cheap = fn_index(app["demo"], "refresh_adapters")
    for data in ([], ["x" * 1_000_000]):  # fine on its own, and a 1 MB body: both refused unread, and late
        t0 = time.perf_counter()
        reply = flooder.join(cheap, data)[0]
        assert reply.status == 429 and "Too many refused requests" in reply.error
        assert time.perf_counter() - t0 >= 0.45
        assert 1 <= reply.retry_after <= guard.REFUSAL_WINDOW_S + 1
    assert QueueClient(app["url"], "127.0.0.10").join(cheap, [])[0].status == 200  # others are not affected


@pytest.mark.parametrize("kind", LIMIT_KINDS)
def test_each_in_flight_limit_counts_queued_and_running_events(app, kind):
    """Only the limit under test is small; joins past it are refused until one of the client's events ends."""
    small = {"address": "per_address", "session": "per_session", "gen-address": "generations_per_address",
             "gen-session": "generations_per_session"}[kind]
    app["inflight"].limits = Limits(**{k: 50 for k in ("per_session", "per_address", "generations_per_session",
                                                       "generations_per_address")} | {small: 2})
    lock = gate(app)
    lock.acquire()
    client = QueueClient(app["url"], f"127.0.1.{LIMIT_KINDS.index(kind) + 1}")  # a fresh address: fresh session ration
    sessions = [client.session] * 4 if kind.endswith("session") else [f"s{kind}{i}" for i in range(4)]
    replies = [client.join(app["compare"], QUESTION, session=s)[0] for s in sessions]
    assert [r.status for r in replies] == [200, 200, 429, 429]
    assert WHAT[kind] in replies[2].error and "at most 2 at a time" in replies[2].error
    other = QueueClient(app["url"], f"127.0.2.{LIMIT_KINDS.index(kind) + 1}")  # another client is not affected
    assert other.join(app["compare"], QUESTION)[0].status == 200
    lock.release()
    wait_until(lambda: not app["demo"]._queue.event_ids_to_events)
    assert client.join(app["compare"], QUESTION, session=sessions[0])[0].status == 200  # slots freed on completion


def test_full_queue_says_when_to_retry(app, monkeypatch):
    app["demo"]._queue.max_size = 2
    line = app["demo"]._queue.event_queue_per_concurrency_id[GENERATE]
    monkeypatch.setattr(line, "concurrency_limit", 1)  # one question generating, so the others wait in line
    lock = gate(app)
    lock.acquire()
    for i in (11, 12, 13):  # one running, two waiting: the queue is full
        assert QueueClient(app["url"], f"127.0.0.{i}").join(app["compare"], QUESTION)[0].status == 200
        wait_until(lambda: len(app["demo"]._queue) == max(0, i - 11))  # the first one is running, not waiting
    late = QueueClient(app["url"], "127.0.0.14")
    reply = late.join(app["compare"], QUESTION)[0]
    assert reply.status == 503 and reply.retry_after >= 1
    assert re.search(r"queue is full .*Retry in \d+ s", reply.error)
    monkeypatch.setattr(app["inflight"], "queue_full", lambda: False)  # a join racing past the guard's check:
    reply = late.join(app["compare"], QUESTION)[0]  # Gradio refuses it, and the guard still says when to retry
    assert reply.status == 503 and reply.retry_after >= 1 and re.search(r"Retry in \d+ s", reply.error)
    assert "Max size" not in reply.error


def test_routes_that_skip_the_queue_or_are_unused_are_refused(app):
    """Outside a Space Gradio opens /run/<api> and /api/<api>, which skip the queue and every limit on it."""
    for route in ("run", "api"):
        r = httpx.post(f"{app['url']}/gradio_api/{route}/compare", json={"data": QUESTION}, timeout=30)
        assert r.status_code == 403 and "queue" in r.json()["error"]
    r = httpx.post(f"{app['url']}/gradio_api/component_server", timeout=30,  # a new session each, no use here
                   json={"session_hash": "x1", "component_id": 1, "fn_name": "f", "data": None})
    assert r.status_code == 403 and "no component server" in r.json()["error"]


def test_oversized_request_is_refused_before_it_is_parsed(app):
    client = QueueClient(app["url"], "127.0.0.6")
    reply = client.join(app["compare"], ["x" * (3 * 1024 * 1024), *QUESTION[1:]])[0]
    assert reply.status == 413 and "too large" in reply.error
    reply = client.call(app["compare"], ["What causes anemia? " * 50_000, *QUESTION[1:]])  # 1 MB: cut, answered
    assert reply.status == 200 and "truncated" in reply.output[16] and DISCLAIMER in reply.output[0]


def test_messages_show_no_absolute_server_paths(app):
    """The Compare columns (index not built, adapter that does not load) and the Training tab's errors."""
    tmp = str(app["tmp"])
    out = QueueClient(app["url"], "127.0.0.7").call(app["compare"], compare_data("What causes scurvy?", max_new_tokens=16,
                                                                                 top_k=2, msft_adapter="none")).output
    texts = [t for t in out if isinstance(t, str)]
    assert "not built in $MEDADAPT_INDEX_DIR" in out[4], out[4]  # the RAG column
    assert "could not be loaded" in out[8] and "$MEDADAPT_RUNS_DIR/offline/sft-20260101-000000/adapter" in out[8]
    assert not [t for t in texts if tmp in t or re.search(r"(?<![\w.:/~$-])/(tmp|root|home|work)/", t)], texts
    run = QueueClient(app["url"], "127.0.0.8").call(fn_index(app["demo"], "show_run"), ["nope"]).output
    assert "no run named 'nope' in $MEDADAPT_RUNS_DIR/offline" in run[1] and tmp not in run[1]


def test_path_redactor_keeps_relative_names():
    from medadapt.config import REPO_ROOT
    from medadapt.ui.redact import path_redactor

    cfg = load_config("offline", {"paths": {"runs_dir": "/srv/x/runs", "index_dir": "/srv/x/runs/index"}})
    shown = path_redactor(cfg)
    assert shown("PEFT could not load /srv/x/runs/offline/sft-1/adapter: bad") == \
        "PEFT could not load $MEDADAPT_RUNS_DIR/offline/sft-1/adapter: bad"
    assert shown("not built in /srv/x/runs/index/t.lance") == "not built in $MEDADAPT_INDEX_DIR/t.lance"
    assert shown(f"Saved `{REPO_ROOT}/configs/offline/sft.yaml`") == "Saved `configs/offline/sft.yaml`"
    assert shown('File "/usr/lib/python3/site-packages/torch/nn/module.py", line 3') == 'File "…/module.py", line 3'
    assert shown("<pre>/srv/x/runs2/a&#x27;</pre>") == "<pre>…/a&#x27;</pre>"  # a sibling folder is not the root
    same = "see http://127.0.0.1:7860/gradio_api/info, 3/4 and/or /etc"
    assert shown(same) == same


def test_a_visitor_page_works_within_the_limits(app):
    """A real browser in public mode: the page's own load events and polls stay under the limits, a question is
    answered, and asking again right after the answer is not refused."""
    from playwright.sync_api import sync_playwright

    refused = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("response", lambda r: refused.append((r.status, r.url)) if r.status in (403, 413, 429, 503) else None)
        page.goto(app["url"])
        for question in ("What causes scurvy?", "What causes rickets?"):  # the second right after the first
            page.get_by_label("Medical question").fill(question)
            with page.expect_response(lambda r: "queue/join" in r.url and r.request.method == "POST") as join:
                page.locator("#ma-ask").click()
            assert join.value.status == 200
            page.locator("#ma-stats-base").get_by_text("tokens").wait_for(timeout=60_000)
            wait_until(lambda: not app["inflight"].events())
        page.get_by_role("tab", name="Training").click()
        page.wait_for_timeout(3000)  # a couple of the tab's polls
        browser.close()
    assert not refused, refused
