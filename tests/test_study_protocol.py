"""``--protocol study`` (eval.study) against the original study's own code: its notebooks' prompt, parser and
item-selection cells are copied below verbatim (notebooks/evaluation_sft_model.ipynb of
github.com/MilyaushaShamsutdinova/MedAdapt-LLM; the four eval notebooks share them) and run on the Hub-dataset
fixtures through the same ``datasets`` calls; the project's port must give the same prompts, ground truths, items in
the same order and the same parsed answers. Then the protocol end to end on the tiny R1 model, and the project's
protocol on the same items next to it."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

HUB = Path(__file__).parent / "fixtures" / "hub"


# ---------------------------------------------------------------- the notebooks' code, verbatim (reference)

def format_prompt_medmcqa(example):
    """Formats a single example into a prompt for the LLM."""
    question = example['question']
    options = {
        "A": example['opa'],
        "B": example['opb'],
        "C": example['opc'],
        "D": example['opd']
    }
    
    prompt = f"""
You are an expert in solving multiple-choice questions accurately and explaining your reasoning clearly.
Given a question and a list of answer choices (A, B, C, D), your task is to:
1. Reason shortly about the question and answer choices to find evidances to support your answer.
2. Identify the correct answer. Please choose the single best answer from the options provided.
3. Output the final answer in the format: Answer: [Option Letter]

Question: {question}
Options:
A. {options['A']}
B. {options['B']}
C. {options['C']}
D. {options['D']}

Reasoning:
    """
    return prompt


def format_prompt_medqa(example):
    """Formats a single example into a prompt for the LLM."""
    question = example['sent1']
    options = {
        "A": example['ending0'],
        "B": example['ending1'],
        "C": example['ending2'],
        "D": example['ending3'],
    }
    
    prompt = f"""
You are an expert in solving multiple-choice questions accurately and explaining your reasoning clearly.
Given a question and a list of answer choices (A, B, C, D), your task is to:
1. Reason shortly about the question and answer choices to find evidances to support your answer.
2. Identify the correct answer. Please choose the single best answer from the options provided.
3. Output the final answer in the format: Answer: [Option Letter]

Question: {question}
Options:
A. {options['A']}
B. {options['B']}
C. {options['C']}
D. {options['D']}

Reasoning:
    """
    return prompt


def format_prompt_mmlu(example):
    """Formats a single example into a prompt for the LLM."""
    question = example['question']
    options = {
        "A": example['choices'][0],
        "B": example['choices'][1],
        "C": example['choices'][2],
        "D": example['choices'][3]
    }
    
    prompt = f"""
You are an expert in solving multiple-choice questions accurately and explaining your reasoning clearly.
Given a question and a list of answer choices (A, B, C, D), your task is to:
1. Reason shortly about the question and answer choices to find evidances to support your answer.
2. Identify the correct answer. Please choose the single best answer from the options provided.
3. Output the final answer in the format: Answer: [Option Letter]

Question: {question}
Options:
A. {options['A']}
B. {options['B']}
C. {options['C']}
D. {options['D']}

Reasoning:
    """
    return prompt


def format_prompt_pubmedqa(example):
    """Formats a single example into a prompt for the LLM."""
    question = example['question']
    if not isinstance(example.get('context'), dict) or 'contexts' not in example['context']:
        print(f"Warning: Skipping example due to missing or invalid context field.")
        return None

    context_passages = example['context']['contexts']
    full_context = "\n\n".join(context_passages)

    prompt = f"""
You are an expert in analyzing scientific texts and answering questions based on provided context and explaining your reasoning clearly.
Your task is to determine the answer to the question ('yes', 'no', or 'maybe') based only on the information given in the context. Follow these steps:
1. Analyze the provided context in relation to the question. Summarize the key evidence (or lack thereof) relevant to answering the question. This is your reasoning.
2. Based on your reasoning from the context, determine if the answer to the question is 'yes', 'no', or 'maybe'.
3. Output your reasoning first. After the reasoning, start a new line and provide the final decision in the specific format: Answer: [yes/no/maybe]

Context:
{full_context}

Question: {question}

Reasoning:
    """
    return prompt


def get_ground_truth_medmcqa(example):
    """Maps the correct option index (cop) to the corresponding letter."""
    mapping = {0: 'A', 1: 'B', 2: 'C', 3: 'D'}
    cop_index = example.get('cop')
    if cop_index is None or cop_index not in mapping:
        print(f"Warning: Invalid 'cop' value found: {cop_index} in example ID {example.get('id')}. Skipping ground truth.")
        return None
    return mapping[cop_index]


def get_ground_truth_medqa(example):
    """Maps the label to the corresponding letter."""
    mapping = {0: 'A', 1: 'B', 2: 'C', 3: 'D'}
    label = example.get('label')
    if label is None or label not in mapping:
        print(f"Warning: Invalid 'cop' value found: {label} in example ID {example.get('id')}. Skipping ground truth.")
        return None
    return mapping[label]


def get_ground_truth_mmlu(example):
    """Maps the label to the corresponding letter."""
    mapping = {0: 'A', 1: 'B', 2: 'C', 3: 'D'}
    label = example.get('answer')
    if label is None or label not in mapping:
        print(f"Warning: Invalid 'cop' value found: {label} in example ID {example.get('id')}. Skipping ground truth.")
        return None
    return mapping[label]


def get_ground_truth_pubmedqa(example):
    """Extracts the ground truth ('yes', 'no', 'maybe') from the example."""
    decision = example.get('final_decision')
    if decision not in ['yes', 'no', 'maybe']:
        print(f"Warning: Invalid 'final_decision' value found: {decision}. Skipping ground truth.")
        return None
    return decision


def extract_choice_mcq(generated_text):
    """Extracts the predicted choice (A, B, C, or D) from the LLM's output."""
    text = generated_text.strip()

    # Check for phrases like "The answer is A" or "Answer: A"
    match = re.search(r'(?:answer|choice|option) is\s*:?\s*([A-D])', text, re.IGNORECASE)
    if match:
        return match.group(1).upper()

    # Look for the first standalone letter A, B, C, or D in the text
    match = re.search(r'\b([A-D])\b', text)
    if match:
        return match.group(1).upper()

    # Fallback - If no clear choice found, return None
    print(f"Warning: Could not extract answer from text: '{text[:100]}...{text[-100:]}'")
    return None


def extract_yes_no_maybe(generated_text):
    """Extracts the predicted choice (yes, no, maybe) from the LLM's output."""
    text = generated_text.strip().lower()

    # Explicit "Answer: yes/no/maybe" potentially followed by punctuation/eos
    match = re.search(r'(?:answer|decision)\s*[:\-]?\s*(yes|no|maybe)\b', text)
    if match:
        return match.group(1)

    # Look for the first occurrence of "yes", "no", or "maybe" as a whole word
    match = re.search(r'\b(yes|no|maybe)\b', text)
    if match:
        return match.group(1)

    # Fallback - If no clear choice found, return None
    print(f"Warning: Could not extract answer from text: '{text[:100]}...{text[-100:]}'")
    return None


def notebook_samples(num_samples: int, num_samples_subset: int) -> dict[str, tuple[list[str], list[str]]]:
    """The notebooks' dataset cells with the fixtures' folders for the Hub ids (their constants made small):
    ``{benchmark: (prompts, ground truths)}`` in the notebooks' order."""
    from datasets import concatenate_datasets, load_dataset

    SEED = 4242
    NUM_SAMPLES = num_samples
    NUM_SAMPLES_SUBSET = num_samples_subset
    ds_medmcqa = load_dataset(str(HUB / "openlifescienceai/medmcqa"), split="validation")
    ds_medmcqa = ds_medmcqa.shuffle(seed=SEED).select(range(NUM_SAMPLES))
    ds_medqa = load_dataset(str(HUB / "GBaker/MedQA-USMLE-4-options-hf"), split="validation")
    ds_medqa = ds_medqa.shuffle(seed=SEED).select(range(NUM_SAMPLES))
    MMLU_MEDICAL_SUBSETS = [
        "anatomy",
        "clinical_knowledge",
        "professional_medicine",
        "college_biology",
        "college_medicine",
        "medical_genetics",
        "professional_medicine"
    ]
    datasets_mmlu = []
    for subset in MMLU_MEDICAL_SUBSETS:
        ds = load_dataset(str(HUB / "cais/mmlu"), subset, split="test")
        ds = ds.shuffle(seed=SEED).select(range(NUM_SAMPLES_SUBSET))
        datasets_mmlu.append(ds)
    ds_mmlu = concatenate_datasets(datasets_mmlu)
    ds_mmlu = ds_mmlu.shuffle(seed=SEED).select(range(NUM_SAMPLES))
    ds_pubmedqa = load_dataset(str(HUB / "qiaojin/PubMedQA"), "pqa_labeled", split="train")
    ds_pubmedqa = ds_pubmedqa.shuffle(seed=SEED).select(range(NUM_SAMPLES))
    out = {}
    for name, ds, fmt, truth in (("medmcqa", ds_medmcqa, format_prompt_medmcqa, get_ground_truth_medmcqa),
                                 ("medqa", ds_medqa, format_prompt_medqa, get_ground_truth_medqa),
                                 ("mmlu_medical", ds_mmlu, format_prompt_mmlu, get_ground_truth_mmlu),
                                 ("pubmedqa", ds_pubmedqa, format_prompt_pubmedqa, get_ground_truth_pubmedqa)):
        out[name] = ([fmt(ex) for ex in ds], [truth(ex) for ex in ds])
    return out


# ---------------------------------------------------------------- the port against the reference

@pytest.fixture
def hub_fixtures(monkeypatch):
    monkeypatch.setenv("MEDADAPT_HUB_DATASETS_DIR", str(HUB))


@pytest.mark.parametrize("n,per_entry", [(3, 2), (4, 1)])
def test_items_prompts_and_truths_are_the_notebooks(hub_fixtures, n, per_entry):
    from eval.study import study_items

    ref = notebook_samples(n, per_entry)
    got = study_items(["medmcqa", "medqa", "mmlu_medical", "pubmedqa"], n=n, mmlu_per_entry=per_entry)
    for name, (prompts, truths) in ref.items():
        assert [s.prompt for s in got[name]] == prompts, name
        assert [s.truth for s in got[name]] == truths, name
    assert got["pubmedqa"][0].truth in ("yes", "no", "maybe")
    assert all(s.item.options["A"] in s.prompt for rows in got.values() for s in rows if s.item.benchmark != "pubmedqa")


def test_mmlu_lists_professional_medicine_twice_and_keeps_both_copies(hub_fixtures):
    from eval.study import study_items

    rows = study_items(["mmlu_medical"], n=14, mmlu_per_entry=2)["mmlu_medical"]  # 7 entries x 2 fixture rows
    ids = [s.item.id for s in rows]
    assert len(ids) == len(set(ids)) == 14
    twice = sorted(i for i in ids if i.endswith("#2"))
    assert twice == ["professional_medicine-0#2", "professional_medicine-1#2"]
    assert {s.item.subject for s in rows} == {"anatomy", "clinical_knowledge", "professional_medicine",
                                              "college_biology", "college_medicine", "medical_genetics"}


def test_sampling_more_rows_than_a_dataset_has_says_so(hub_fixtures):
    from eval.study import StudyDataError, study_items

    with pytest.raises(StudyDataError, match="samples 50 rows but the dataset has 4"):
        study_items(["medmcqa"], n=50)


def _texts(rng: random.Random) -> list[str]:
    pieces = ["The answer is B.", "answer is: c", "Answer: C", "Option is D", "choice is  a", "A 45-year-old man",
              "so (B) fits", "<think>\nLet me think", "</think>\n\n", "Therefore, ", "ANSWER IS d", "option C",
              "is A", "Decision: maybe", "answer - yes", "No.", "MAYBE", "yesterday", "not sure", "\n", "B)", "I",
              "The final answer: A", "answer: no", "yes", "Final decision:no"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(400)]


def test_parsers_read_every_text_as_the_notebooks_do():
    from eval import study

    texts = _texts(random.Random(7)) + ["", "   ", "A", "the answer is a bit unclear, so B", "Answer:\nB"]
    for t in texts:
        assert study.extract_choice_mcq(t)[0] == extract_choice_mcq(t), t
        assert study.extract_yes_no_maybe(t)[0] == extract_yes_no_maybe(t), t
    # the notebooks' quirks, kept: "Answer: C" is not "answer is", so the first standalone letter wins
    assert study.extract_choice_mcq("A 45-year-old man... Answer: C") == ("A", "first_letter")
    assert study.extract_choice_mcq("<think>the answer is a bit</think>") == ("A", "answer_is")


# ---------------------------------------------------------------- end to end on the tiny R1 model

@pytest.fixture
def study_env(tmp_path, monkeypatch, tiny_r1_model_dir, hub_fixtures):
    """Env for the CLI's own load_config: the reference profile on the tiny R1 model, temp dirs, Hub fixtures."""
    for var, val in {"MEDADAPT_MODEL": tiny_r1_model_dir, "MEDADAPT_RUNS_DIR": str(tmp_path / "runs"),
                     "MEDADAPT_RESULTS_DIR": str(tmp_path / "results"),
                     "MEDADAPT_INDEX_DIR": str(tmp_path / "index")}.items():
        monkeypatch.setenv(var, val)
    return tmp_path


def test_study_run_then_the_project_protocol_on_the_same_items(study_env, monkeypatch):
    """``--protocol study`` poses the notebooks' raw prompts (BOS, no template) with their decoding, reads both
    parsers; ``--mode cot --ids`` runs the project's protocol on the same items; merged, the views sit side by side."""
    import eval.evaluate as ev
    from eval.report import summary_table
    from eval.run import main
    from eval.views import decoding_note, protocol_label

    seen: list = []
    real = ev.eval_engine

    def spy(cfg, kind="local"):
        engine = real(cfg, kind)
        start = engine.start

        def record(requests, settings):
            seen.append(([p for p, _ in requests], settings))
            return start(requests, settings)
        engine.start = record
        return engine
    monkeypatch.setattr(ev, "eval_engine", spy)
    tmp_path = study_env
    study_out, project_out, both_out = (tmp_path / f"{k}.json" for k in ("study", "project", "both"))
    args = ["run", "--variants", "base", "--benchmarks", "medqa,pubmedqa", "--n", "2", "--max_new_tokens", "6",
            "--profile", "reference", "--dtype", "float32", "--batch_size", "4"]
    assert main(args + ["--protocol", "study", "--out", str(study_out)]) == 0
    res = json.loads(study_out.read_text())
    assert res["protocol"] == "study" and res["views"] == ["study", "study_project_parser"]
    assert (res["config"]["eval"]["temperature"], res["config"]["eval"]["seed"]) == (0.01, 4242)
    assert res["config"]["study"]["n"] == 2 and res["tasks"]["medqa"].startswith("MedQA-USMLE validation")
    prompts, settings = seen[0]
    ref = notebook_samples(2, 1)
    assert prompts == ref["medqa"][0] and isinstance(prompts[0], str)  # the notebook's raw prompts, in its order
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.01, 1.0, 6)
    for rows, name in ((res["variants"]["base"]["predictions"][b], b) for b in ("medqa", "pubmedqa")):
        for row in rows:
            want = (extract_choice_mcq if name == "medqa" else extract_yes_no_maybe)(row["raw"])
            view = row["views"]["study"]
            got = view["pred"] if name == "medqa" else {"A": "yes", "B": "no", "C": "maybe"}.get(view["pred"])
            assert got == want and set(row["views"]) == {"study", "study_project_parser"}

    seen.clear()
    assert main(args + ["--mode", "cot", "--ids", str(study_out), "--out", str(project_out)]) == 0
    project = json.loads(project_out.read_text())
    assert project["protocol"] == "project" and project["item_ids"] == res["item_ids"]
    assert isinstance(seen[0][0][0], list)  # chat messages: the project's prompt through the template
    assert main(["merge", str(study_out), str(project_out), "--out", str(both_out)]) == 0
    both = json.loads(both_out.read_text())
    assert both["views"] == ["cot", "study", "study_project_parser"]
    row = both["variants"]["base"]["predictions"]["medqa"][0]
    assert set(row["views"]) == {"cot", "study", "study_project_parser"}
    assert protocol_label(both) == "study protocol (the original notebooks) + project protocol"
    assert decoding_note(both, "study_project_parser").startswith("raw prompt, no chat template, temperature 0.01")
    for view in both["views"]:
        header, table = summary_table(both, view)
        assert table and header


def test_study_refuses_what_it_did_not_do(study_env, capsys):
    from eval.run import main

    assert main(["run", "--protocol", "study", "--mode", "loglik", "--profile", "reference"]) == 2
    assert main(["run", "--protocol", "study", "--think_budget", "64", "--profile", "reference"]) == 2
    assert "mode cot" in capsys.readouterr().err


def test_study_rag_asks_with_the_whole_prompt_for_two_snippets(study_env, monkeypatch):
    """The study's RAG: the whole benchmark prompt is the query, top-k 2, the documents around the prompt."""
    import eval.evaluate as ev
    from eval.run import main
    from eval.study import rag_prompt
    from medadapt.retrieval.rag import Snippet

    asked, sent = [], []

    def retrieve(cfg, samples, k, query=None, mode=None):
        out = {}
        for name, items in samples.items():
            for it in items:
                asked.append((query(name, it), k, mode))
            out[name] = {it.id: [Snippet(f"s{i}", f"Book {i}", "Book", f"fact {i}", 0.5) for i in range(k)]
                         for it in items}
        return out

    real = ev.eval_engine

    def spy(cfg, kind="local"):
        engine = real(cfg, kind)
        start = engine.start
        engine.start = lambda requests, settings: (sent.extend(p for p, _ in requests), start(requests, settings))[1]
        return engine
    monkeypatch.setattr(ev, "retrieve_all", retrieve)
    monkeypatch.setattr(ev, "eval_engine", spy)
    out = study_env / "rag.json"
    assert main(["run", "--protocol", "study", "--variants", "rag", "--benchmarks", "pubmedqa", "--n", "2",
                 "--max_new_tokens", "4", "--profile", "reference", "--dtype", "float32", "--out", str(out)]) == 0
    prompts = notebook_samples(2, 1)["pubmedqa"][0]
    assert asked == [(p, 2, "dense") for p in prompts]
    assert sent == [rag_prompt(p, ["Book 0. fact 0", "Book 1. fact 1"]) for p in prompts]
    assert json.loads(out.read_text())["retrieval"]["k"] == 2
