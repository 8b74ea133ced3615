"""Token-level unlikelihood training (trainers/unlikelihood.py): the candidates, the term, and a job trained with it."""
from __future__ import annotations

import pytest

from medadapt.config import REPO_ROOT, load_train_config
from medadapt.data.sft import SftRow
from tests.test_trainers import ROWS, losses, tcfg
from trainers.formatting import PadCollator, end_of_turn, sft_example
from trainers.unlikelihood import previous_target_mask, trained_positions, unlikelihood_sum, unlikelihood_trainer

torch = pytest.importorskip("torch")


def examples(tok, rows: list[SftRow]) -> list[dict]:
    """Token examples of ``rows`` as the SFT job builds them (bare prompt, the template's end of turn)."""
    return [sft_example(tok, r.question, r.cot, r.answer, None, end_of_turn(tok)) for r in rows]


def test_candidates_are_the_rows_earlier_target_tokens_without_the_gold():
    targets = torch.tensor([5, 6, 5, 7, 1, 1, 2])
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    mask = previous_target_mask(targets, rows, 10)
    assert [m.nonzero().flatten().tolist() for m in mask] == [[], [5], [6], [5, 6], [], [], [1]]


def test_the_term_is_minus_log_one_minus_p_summed_over_the_candidates():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 10, generator=gen)
    targets, rows = torch.tensor([5, 6, 5, 7, 1, 1, 2]), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    p = logits.softmax(-1)
    expected = -sum(torch.log(1 - p[k, c]) for k, cands in enumerate([[], [5], [6], [5, 6], [], [], [1]])
                    for c in cands)
    assert torch.allclose(unlikelihood_sum(logits, targets, rows), expected, atol=1e-5)
    assert unlikelihood_sum(logits[:1], targets[:1], rows[:1]).item() == 0.0  # no candidate: no term


def test_full_and_targets_only_batches_give_the_same_term(tok, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    rows = examples(tok, ROWS[:3])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    terms = []
    for targets_only in (False, True):
        batch = PadCollator(tok.pad_token_id, targets_only)(rows)
        with torch.no_grad():
            logits = model(**batch).logits
        terms.append(unlikelihood_sum(*trained_positions(batch, logits)))
    assert terms[0] > 0 and torch.allclose(terms[0], terms[1], atol=1e-4)


def test_trainer_adds_the_term_in_training_and_reports_plain_cross_entropy_in_eval(tok, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    rows = examples(tok, ROWS[:3])
    batch = PadCollator(tok.pad_token_id, targets_only=True)(rows)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = unlikelihood_trainer(Trainer, 2.0)(model=model, args=args)
    with torch.no_grad():
        model.eval()
        plain = model(**batch).loss
        evaluated = trainer.compute_loss(model, dict(batch))
        model.train()
        trained = trainer.compute_loss(model, dict(batch))
        term = unlikelihood_sum(model(**batch).logits, batch["shift_labels"], batch["logits_to_keep"].nonzero()[:, 0])
    assert torch.allclose(evaluated, plain)
    assert torch.allclose(trained, plain + 2.0 * term / len(batch["shift_labels"]), atol=1e-5)


LOOPS = [SftRow(f"medical_o1:{i}", "medical_o1", r.question, "cardiac output, stroke volume, " * 4, r.answer)
         for i, r in enumerate(ROWS)]


def repeat_mass(model, batch) -> float:
    """Mean probability, per trained position, of the tokens the answer already produced (other than the next one)."""
    with torch.no_grad():
        logits, targets, positions = trained_positions(batch, model.eval()(**batch).logits)
    mask = previous_target_mask(targets, positions, logits.shape[-1])
    return float((logits.softmax(-1) * mask).sum(-1).mean())


def test_training_with_the_term_puts_less_mass_on_repeating_itself(tok, tiny_model_dir, tmp_path):
    """Trained on answers that repeat a phrase, the plain model learns to expect any earlier word anywhere; with the
    unlikelihood term it keeps far less probability on the earlier words that do not come next."""
    from transformers import Trainer

    rows = examples(tok, LOOPS[:4])
    mass = {weight: repeat_mass(train_tiny(tiny_model_dir, tok, rows, cls, tmp_path / str(weight), 20),
                                PadCollator(tok.pad_token_id, targets_only=True)(rows))
            for weight, cls in ((0.0, Trainer), (4.0, unlikelihood_trainer(Trainer, 4.0)))}
    assert mass[0.0] > 0.1 and mass[4.0] < 0.5 * mass[0.0], mass


def train_tiny(model_dir: str, tok, rows: list[dict], trainer_cls: type, out, steps: int):
    """The tiny model trained on ``rows`` (batches of 4, lr 1e-2, seed 0) with ``trainer_cls``, in eval mode."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True, seed=0, per_device_train_batch_size=4,
                             max_steps=steps, learning_rate=1e-2, save_strategy="no", remove_unused_columns=False,
                             disable_tqdm=True)
    trainer_cls(model=model, args=args, train_dataset=rows, processing_class=tok,
                data_collator=PadCollator(tok.pad_token_id, targets_only=True)).train()
    return model.eval()


def test_an_sft_job_trains_with_the_weight(cfg, tmp_path, monkeypatch):
    """The job's loss is the cross-entropy plus the term: the same first step (same seed, rows and start) logs a
    higher loss with the weight than without."""
    import medadapt.data.sft as sft_data
    from trainers import sft

    monkeypatch.setattr(sft_data, "load_sft_rows", lambda cfg, datasets=(): list(ROWS))
    first = {}
    for weight in (0.0, 4.0):
        out = tmp_path / f"ul{weight}"
        status = sft.run(tcfg("sft", out, max_steps=1, eval_fraction=0.0, save_steps=100, unlikelihood=weight), cfg)
        assert status["status"] == "finished"
        first[weight] = next(x["loss"] for x in losses(out) if "loss" in x)
    assert first[0.0] < first[4.0] < first[0.0] + 0.1, first


def test_the_weight_is_bounded_and_off_by_default():
    from medadapt.config import ConfigError

    assert load_train_config(REPO_ROOT / "configs" / "seed" / "sft.yaml").unlikelihood == 0.0
    with pytest.raises(ConfigError, match="Unlikelihood weight"):
        load_train_config(REPO_ROOT / "configs" / "offline" / "sft.yaml", {"unlikelihood": -1})
