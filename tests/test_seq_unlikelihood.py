"""Sequence-level unlikelihood training (trainers/unlikelihood.py): repeated n-grams of the model's own greedy
continuations, the term on them, and a job trained with it."""
from __future__ import annotations

import pytest

from medadapt.config import REPO_ROOT, load_train_config
from tests.test_trainers import ROWS, losses, tcfg
from tests.test_unlikelihood import examples, train_tiny
from trainers.formatting import IGNORE, PadCollator
from trainers.unlikelihood import (greedy_continuations, prompts_of, repeated_ngram_mask, sequence_unlikelihood,
                                   sequence_unlikelihood_trainer)

torch = pytest.importorskip("torch")


def test_tokens_of_an_ngram_seen_before_are_marked():
    assert repeated_ngram_mask([1, 2, 3, 4, 1, 2, 3, 4, 5]) == [False] * 4 + [True] * 4 + [False]
    assert repeated_ngram_mask([7, 7, 7, 7, 7]) == [False] + [True] * 4  # the whole 2nd 4-gram, as Welleck et al.
    assert repeated_ngram_mask([1, 2, 3, 1, 2, 3], n=3) == [False] * 3 + [True] * 3
    assert not any(repeated_ngram_mask([1, 2, 3, 4, 5, 1, 2, 3]))  # a repeated 3-gram is not a 4-gram
    assert repeated_ngram_mask([1, 2]) == [False, False]


def test_prompts_are_the_tokens_before_the_first_trained_label(tok):
    batch = PadCollator(tok.pad_token_id)(examples(tok, ROWS[:2]))
    prompts = prompts_of(batch)
    for row, labels, prompt in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), prompts):
        assert prompt == row[:len(prompt)] and labels[len(prompt)] != IGNORE
        assert all(y == IGNORE for y in labels[:len(prompt)])
    assert tok.decode(prompts[0]).rstrip().endswith("assistant")  # the chat template's generation prompt


def test_batched_continuations_equal_one_prompt_at_a_time(tok, tiny_model_dir):
    """Left padding changes nothing: each row of the batch continues as it does alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).train()
    prompts = prompts_of(PadCollator(tok.pad_token_id)(examples(tok, ROWS[:3])))
    assert len({len(p) for p in prompts}) > 1  # rows of different lengths: padding is exercised
    ends = {tok.eos_token_id}
    batched = greedy_continuations(model, prompts, tok.pad_token_id, ends, 24)
    alone = [greedy_continuations(model, [p], tok.pad_token_id, ends, 24)[0] for p in prompts]
    assert batched == alone and all(0 < len(c) <= 24 for c in batched)
    assert model.training  # put back in training mode


def test_the_term_is_minus_log_one_minus_p_of_the_repeated_tokens(tok, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = [[1, 5, 9, 11], [3, 4]]
    conts = [[20, 21, 22, 23, 20, 21, 22, 23, 30], [40, 41, 42, 43, 44]]  # row 0 repeats a 4-gram, row 1 does not
    marks = [repeated_ngram_mask(c) for c in conts]
    assert [j for j, m in enumerate(marks[0]) if m] == [4, 5, 6, 7] and not any(marks[1])
    with torch.no_grad():
        term = sequence_unlikelihood(model, prompts, conts, marks, tok.pad_token_id)
        probs = model(input_ids=torch.tensor([prompts[0] + conts[0]])).logits[0].softmax(-1)
    start = len(prompts[0])
    expected = -sum(torch.log(1 - probs[start + j - 1, conts[0][j]]) for j in range(4, 8))
    assert torch.allclose(term, expected, atol=1e-4)
    # nothing repeated: no term, and no forward pass (there is no model to run)
    assert sequence_unlikelihood(None, prompts[1:], conts[1:], marks[1:], tok.pad_token_id) is None


def repeated_share(model, tok, rows) -> float:
    prompts = prompts_of(PadCollator(tok.pad_token_id)(rows))
    conts = greedy_continuations(model, prompts, tok.pad_token_id, {tok.eos_token_id}, 48)
    return sum(sum(repeated_ngram_mask(c)) for c in conts) / sum(len(c) for c in conts)


def test_training_with_the_term_makes_the_model_loop_less(tok, tiny_model_dir, tmp_path):
    """Trained on the same rows, the model whose own greedy loops are penalised loops less on those prompts."""
    from transformers import Trainer

    rows = examples(tok, ROWS)
    share = {weight: repeated_share(train_tiny(tiny_model_dir, tok, rows, cls, tmp_path / str(weight), 32), tok, rows)
             for weight, cls in ((0.0, Trainer), (4.0, sequence_unlikelihood_trainer(Trainer, 4.0, 1, 48)))}
    assert share[0.0] > 0.2 and share[4.0] < 0.5 * share[0.0], share


def test_an_sft_job_trains_with_it_and_logs_how_much_it_loops(cfg, tmp_path, monkeypatch):
    import medadapt.data.sft as sft_data
    from trainers import sft

    monkeypatch.setattr(sft_data, "load_sft_rows", lambda cfg, datasets=(): list(ROWS))
    out = tmp_path / "seq"
    status = sft.run(tcfg("sft", out, max_steps=4, eval_fraction=0.0, save_steps=100, seq_unlikelihood=1.0,
                          seq_unlikelihood_every=2, seq_unlikelihood_tokens=16), cfg)
    assert status["status"] == "finished"
    logged = {x["step"]: x for x in losses(out) if "loss" in x}
    assert sorted(logged) == [1, 2, 3, 4]
    assert [s for s, x in logged.items() if "repeated_share" in x] == [2, 4]  # every 2nd step
    assert all(0.0 <= logged[s]["repeated_share"] <= 1.0 for s in (2, 4))


def test_its_settings_are_bounded_and_off_by_default():
    from medadapt.config import ConfigError

    for config in ("seed/sft.yaml", "offline/sft.yaml", "offline/msft.yaml"):  # off in every shipped recipe
        assert load_train_config(REPO_ROOT / "configs" / config).seq_unlikelihood == 0.0
    for key, bad in (("seq_unlikelihood", -1), ("seq_unlikelihood_every", 0), ("seq_unlikelihood_tokens", 4)):
        with pytest.raises(ConfigError, match="Sequence unlikelihood"):
            load_train_config(REPO_ROOT / "configs" / "offline" / "sft.yaml", {key: bad})
