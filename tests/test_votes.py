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


def test_exports_are_pruned_after_their_ttl(tmp_path):
    import os
    import time

    from medadapt.exports import new_export_dir, prune_exports

    old, fresh = new_export_dir(tmp_path), new_export_dir(tmp_path)
    (old / "medadapt-comparison.md").write_text("x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert prune_exports(tmp_path) == 1
    assert not old.exists() and fresh.exists()
    third = new_export_dir(tmp_path)  # every export prunes first
    assert third.parent == tmp_path and len(list(tmp_path.iterdir())) == 2
