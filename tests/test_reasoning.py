"""The reasoning parser on every output shape, and answer/citation extraction on tricky strings."""

from medadapt.reasoning import cited_numbers, split_reasoning


def test_full_think_tags():
    r = split_reasoning("<think>Chest pain, ST elevation.\nSo STEMI.</think>\n\nGive aspirin. Answer: B")
    assert r.reasoning == "Chest pain, ST elevation.\nSo STEMI."
    assert r.answer == "Give aspirin. Answer: B"
    assert not r.truncated and r.has_tags


def test_only_closing_tag_when_template_opened_think():
    r = split_reasoning("The vignette suggests DVT.\n</think>\nPatent foramen ovale.", opened=True)
    assert r.reasoning == "The vignette suggests DVT."
    assert r.answer == "Patent foramen ovale."
    assert not r.truncated


def test_only_closing_tag_without_flag_still_splits():
    r = split_reasoning("thinking…</think>Answer: A")
    assert (r.reasoning, r.answer) == ("thinking…", "Answer: A")


def test_no_tags_is_all_answer():
    r = split_reasoning("  Epinephrine intramuscularly.  ")
    assert r == type(r)("", "Epinephrine intramuscularly.", False, False)


def test_truncated_inside_reasoning_is_flagged():
    r = split_reasoning("<think>First consider the differential: MI, PE, dissec")
    assert r.truncated and r.answer == "" and r.reasoning.startswith("First consider")


def test_truncated_when_template_opened_and_never_closed():
    r = split_reasoning("Let me think about the renal findings", opened=True)
    assert r.truncated and r.answer == "" and r.reasoning == "Let me think about the renal findings"


def test_text_before_open_tag_is_not_the_answer():
    r = split_reasoning("<think>a</think>b")
    assert (r.reasoning, r.answer) == ("a", "b")


def test_stray_close_before_open():
    # a stray </think> before an opening tag: the part up to the first closing tag is reasoning
    r = split_reasoning("x</think>y<think>z</think>w")
    assert r.reasoning == "x" and r.answer.startswith("y")


def test_cited_numbers():
    assert cited_numbers("Per [2] and [1, 3]; also [2-4] and [9].", k=4) == [2, 1, 3, 4]
    assert cited_numbers("no citations", k=3) == []
