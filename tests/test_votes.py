"""Votes: appended with context, validated, tallied; a torn line does not break reading."""
import json

import pytest

from medadapt.votes import VoteError, read_votes, record_vote, tally, votes_path


def result(done=True, sft_status="unavailable"):
    answers = {v: {"status": "done", "adapter": "", "answer": f"{v} says hi"} for v in ("base", "rag", "msft")}
    answers["sft"] = {"status": sft_status, "adapter": "/x", "answer": ""}
    return {"question": "Q?", "settings": {"temperature": 0.0}, "answers": answers, "done": done}


def test_vote_appended_with_question_variants_settings(cfg):
    rec = record_vote(cfg, "rag", result())
    record_vote(cfg, "all_bad", result())
    lines = votes_path(cfg).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == json.loads(json.dumps(rec))
    assert rec["question"] == "Q?" and rec["variants"]["rag"]["answer"] == "rag says hi"
    assert rec["settings"] == {"temperature": 0.0}
    assert tally(read_votes(cfg)) == {"base": 0, "rag": 1, "sft": 0, "msft": 0, "all_bad": 1}


@pytest.mark.parametrize("choice,res,msg", [
    ("rag", None, "Ask a question"), ("rag", result(done=False), "Ask a question"),
    ("sft", result(), "did not answer"), ("best", result(), "Unknown choice"), ("", result(), "Unknown choice"),
])
def test_bad_votes_refused(cfg, choice, res, msg):
    with pytest.raises(VoteError, match=msg):
        record_vote(cfg, choice, res)
    assert not votes_path(cfg).exists()


def test_torn_line_skipped(cfg):
    record_vote(cfg, "base", result())
    with open(votes_path(cfg), "a") as f:
        f.write('{"choice": "rag", "quest')
    assert [v["choice"] for v in read_votes(cfg)] == ["base"]


def test_votes_figure_counts_and_empty_state():
    from medadapt.ui.votes_view import votes_figure

    fig = votes_figure({"base": 1, "rag": 3, "sft": 0, "msft": 0, "all_bad": 0})
    assert list(fig.data[0].y) == [1, 3, 0, 0, 0] and fig.data[0].text[1] == "3 (75%)"
    assert "4 votes" in fig.layout.title.text and not fig.layout.annotations
    empty = votes_figure({"base": 0, "rag": 0, "sft": 0, "msft": 0, "all_bad": 0})
    assert "No votes yet" in empty.layout.annotations[0].text


def test_parallel_votes_on_the_same_answers_record_one(cfg, monkeypatch):
    """Issue 32, finding 9: "already voted" was checked and set without a lock, so parallel votes on one session's
    answers all passed the check. With the answers' key, the check and the append are one atomic step."""
    import os
    import threading
    import time

    from medadapt import votes
    from medadapt.votes import answers_key

    slow_fsync = os.fsync
    monkeypatch.setattr(votes.os, "fsync", lambda fd: (time.sleep(0.05), slow_fsync(fd)))  # widen the race window
    res, outcomes, barrier = result(), [], threading.Barrier(6)

    def vote(choice):
        barrier.wait()
        try:
            votes.record_vote(cfg, choice, res, answers_key("session-1", res))
            outcomes.append("recorded")
        except VoteError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=vote, args=(c,)) for c in ("base", "rag", "msft", "all_bad", "rag", "base")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("recorded") == 1 and len(read_votes(cfg)) == 1, outcomes
    assert all("already voted" in o for o in outcomes if o != "recorded")
    other_session = answers_key("session-2", res)  # the same answers in another page: its own vote
    votes.record_vote(cfg, "base", res, other_session)
    changed = dict(res, answers={**res["answers"], "base": {**res["answers"]["base"], "answer": "new"}})
    votes.record_vote(cfg, "base", changed, answers_key("session-1", changed))  # new answers, new vote
    assert len(read_votes(cfg)) == 3


def test_a_vote_names_adapters_by_their_run(cfg):
    rec = record_vote(cfg, "rag", result(), adapter_names={"sft": "sft-20260101-000000"})
    assert rec["variants"]["sft"]["adapter"] == "sft-20260101-000000" and "/x" not in votes_path(cfg).read_text()


def test_a_vote_keeps_a_bounded_excerpt_and_a_hash(cfg):
    import hashlib

    from medadapt.votes import QUESTION_CHARS

    big = dict(result(), question="What causes anemia? " * 15_000)  # 300 KB
    big["answers"]["rag"]["answer"] = "x" * 100_000
    rec = record_vote(cfg, "rag", big)
    assert len(rec["question"]) == QUESTION_CHARS and rec["question_chars"] == len(big["question"])
    assert rec["question_sha256"] == hashlib.sha256(big["question"].encode()).hexdigest()
    assert votes_path(cfg).stat().st_size < 5_000


def test_already_voted_answers_are_refused(cfg):
    record_vote(cfg, "rag", result())
    with pytest.raises(VoteError, match="already voted"):
        record_vote(cfg, "base", dict(result(), voted=True))
    assert len(read_votes(cfg)) == 1


def test_incremental_tally_follows_appends_torn_lines_and_truncation(cfg):
    from medadapt.votes import tally_votes

    assert tally_votes(cfg) == {"base": 0, "rag": 0, "sft": 0, "msft": 0, "all_bad": 0}
    record_vote(cfg, "rag", result())
    record_vote(cfg, "base", result())
    assert tally_votes(cfg) == tally(read_votes(cfg))
    with open(votes_path(cfg), "a") as f:
        f.write('{"choice": "msft", "quest')  # half a line: not counted yet
    assert tally_votes(cfg)["msft"] == 0
    with open(votes_path(cfg), "a") as f:
        f.write('ion": "Q?"}\n')  # completed
    assert tally_votes(cfg)["msft"] == 1 and tally_votes(cfg) == tally(read_votes(cfg))
    votes_path(cfg).write_text("")  # replaced by an empty file: counted again from zero
    assert sum(tally_votes(cfg).values()) == 0
