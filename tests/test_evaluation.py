"""F1/EM scoring, the three-mode evaluation, and the gate of the shipped small backbone."""

from __future__ import annotations

import time

import pytest

from shine_hf.evaluation import (
    MODES,
    evaluate_backbone,
    evaluate_qa,
    exact_match,
    f1_by_question_type,
    f1_score,
    normalize_answer,
    qa_pairs,
    score_answers,
    with_other_contexts,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   cat,  an owl and THE dog. ", "cat owl and dog"),
        ("12 May 1931", "12 may 1931"),
        ("theatre", "theatre"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_f1_and_exact_match():
    assert f1_score("12 May 1931", "12 may 1931.") == 1.0
    assert exact_match("The Tarsk", "tarsk") == 1.0
    assert exact_match("Tarsk city", "Tarsk") == 0.0
    # 1 common token: precision 1/2, recall 1/3 -> F1 0.4
    assert f1_score("May 1931x", "12 May 1931") == pytest.approx(0.4)
    assert f1_score("May 1931", "12 May 1931") == pytest.approx(0.8)
    assert f1_score("nothing", "Tarsk") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("", "Tarsk") == 0.0
    assert f1_score("the", "Tarsk") == 0.0  # only an article: empty after normalisation
    # several references: the best one counts
    assert f1_score("Velmar", ["Tarsk", "Velmar"]) == 1.0
    assert exact_match("velmar", ("Tarsk", "Velmar")) == 1.0
    with pytest.raises(ValueError):
        f1_score("x", [])


def test_score_answers_and_qa_pairs():
    scores = score_answers(["Tarsk", "12 May", "x"], ["Tarsk", "12 May 1931", "y"])
    assert scores["n"] == 3
    assert scores["em"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert score_answers([], []) == {"f1": 0.0, "em": 0.0, "n": 0}
    with pytest.raises(ValueError):
        score_answers(["a"], [])
    records = [
        {"context": "c1", "questions": ["q1", "q2"], "answers": ["a1", "a2"]},
        {"context": "c2", "question": "q3", "answer": "a3"},
    ]
    assert qa_pairs(records) == [("c1", "q1", "a1"), ("c1", "q2", "a2"), ("c2", "q3", "a3")]
    assert qa_pairs(records, limit=1) == [("c1", "q1", "a1"), ("c1", "q2", "a2")]


def test_f1_by_question_type_and_other_contexts():
    rows = [("Where does A live?", "Tarsk", "Tarsk"), ("Where does B live?", "Velmar", "Tarsk"),
            ("How tall is A?", "180 cm", "170 cm"), ("Who?", "x", "x")]
    kind = {"Where": "city", "How": "height"}.get
    assert f1_by_question_type(rows, lambda q: kind(q.split()[0])) == {"city": 0.5, "height": 0.5, "other": 1.0}
    records = [{"context": f"c{i}", "questions": [f"q{i}"], "answers": [f"a{i}"]} for i in range(3)]
    swapped = with_other_contexts(records)
    assert [r["context"] for r in swapped] == ["c1", "c2", "c0"]
    assert [r["questions"] for r in swapped] == [["q0"], ["q1"], ["q2"]] and records[0]["context"] == "c0"
    with pytest.raises(ValueError, match="two"):
        with_other_contexts(records[:1])


def test_evaluate_qa_all_modes_on_a_tiny_model():
    from shine_hf.testing.models import tiny_shine

    model = tiny_shine("qwen3")
    records = [
        {"context": "Alice lives in Lyon.", "questions": ["Where does Alice live?", "Who lives in Lyon?"],
         "answers": ["Lyon", "Alice"]},
        {"context": "The contract was signed in 1998.", "questions": ["When was it signed?"], "answers": ["1998"]},
    ]
    results = evaluate_qa(model, records, max_new_tokens=4, batch_size=2, return_predictions=True)
    assert set(results) == set(MODES)
    for mode in MODES:
        assert results[mode]["n"] == 3
        assert 0.0 <= results[mode]["em"] <= results[mode]["f1"] <= 1.0 or results[mode]["em"] == 0.0
        assert len(results[mode]["predictions"]) == 3
        assert all(isinstance(p, str) for _, _, p in results[mode]["predictions"])
    assert not model.training
    # a plain causal LM (no SHINE mode) with its tokenizer
    backbone_scores = evaluate_backbone(model.backbone, model.tokenizer, records, max_new_tokens=4)
    assert backbone_scores["n"] == 3
    with pytest.raises(ValueError, match="ShineForCausalLM"):
        evaluate_qa(model.backbone, records, ("shine",), tokenizer=model.tokenizer)
    with pytest.raises(ValueError, match="Unknown mode"):
        evaluate_qa(model, records, ("oracle",))


def test_evaluate_qa_baselines_use_the_prompts_of_generate_text():
    """in_context / question_only answers equal generate_text's with the baseline system prompt."""
    from shine_hf.testing.models import tiny_shine

    model = tiny_shine("llama")
    records = [{"context": "Alice lives in Lyon.", "questions": ["Where does Alice live?"], "answers": ["Lyon"]}]
    got = evaluate_qa(model, records, ("in_context", "question_only"), max_new_tokens=5, return_predictions=True)
    sp = model.config.system_prompt
    expected_ic = model.generate_text("Where does Alice live?", system_prompt=sp, context="Alice lives in Lyon.",
                                      max_new_tokens=5)
    expected_q = model.generate_text("Where does Alice live?", system_prompt=sp, max_new_tokens=5)
    assert got["in_context"]["predictions"][0][2] == expected_ic
    assert got["question_only"]["predictions"][0][2] == expected_q
    # the plain-LM path builds the same prompts
    plain = evaluate_qa(model.backbone, records, ("in_context",), tokenizer=model.tokenizer, system_prompt=sp,
                        max_new_tokens=5, return_predictions=True)
    assert plain["in_context"]["predictions"][0][2] == expected_ic


GATE_F1 = 0.8  # issue 6: in-context F1 on held-out documents before any hypernetwork training


@pytest.fixture(scope="module")
def shipped_backbone_scores():
    """Load the shipped facts backbone offline; score it in context on 20 held-out documents."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shine_hf.assets import FACTS_BACKBONE, FACTS_CONTEXT_TEMPLATE, FACTS_DATA
    from shine_hf.testing.facts import synthetic_facts

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        start = time.time()
        assert (FACTS_BACKBONE / "model.safetensors").is_file()
        size = sum(p.stat().st_size for p in FACTS_BACKBONE.rglob("*") if p.is_file())
        assert size < 8 * 2**20
        model = AutoModelForCausalLM.from_pretrained(FACTS_BACKBONE).eval()
        tokenizer = AutoTokenizer.from_pretrained(FACTS_BACKBONE)
        splits = synthetic_facts(**FACTS_DATA)
        train_entities = {e for row in splits["train"] for e in row["entities"]}
        held_out = splits["test"].select(range(20))
        assert not train_entities & {e for row in held_out for e in row["entities"]}
        # every word of the documents is in the vocabulary and names are single tokens
        assert tokenizer.unk_token_id not in tokenizer(held_out[0]["context"])["input_ids"]
        assert len(tokenizer(held_out[0]["entities"][0], add_special_tokens=False)["input_ids"]) == 1
        scores = evaluate_backbone(model, tokenizer, held_out, max_new_tokens=8,
                                   context_template=FACTS_CONTEXT_TEMPLATE)
        scores["seconds"] = time.time() - start
        return scores
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def test_shipped_backbone_loads_offline_and_reads_held_out_documents(shipped_backbone_scores):
    scores = shipped_backbone_scores
    assert scores["n"] == 120
    assert scores["seconds"] < 20


def test_shipped_backbone_passes_the_in_context_gate(shipped_backbone_scores):
    """The gate of issue 6 on 20 held-out documents (the full test split measures 1.000, RESULTS.md)."""
    assert shipped_backbone_scores["f1"] >= GATE_F1, shipped_backbone_scores


def test_shipped_hypernetwork_answers_from_the_generated_lora(monkeypatch):
    """facts-shine on 10 held-out documents: the question alone + the document's LoRA answers (the
    full test split measures F1 1.000, RESULTS.md); another document's LoRA gives other answers."""
    from shine_hf import ShineForCausalLM
    from shine_hf.assets import FACTS_DATA, FACTS_SHINE
    from shine_hf.testing.facts import synthetic_facts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = ShineForCausalLM.from_pretrained(FACTS_SHINE).eval()  # backbone ../facts-llama, resolved locally
    held_out = synthetic_facts(**FACTS_DATA)["test"].select(range(10))
    own = evaluate_qa(model, held_out, ("shine",), max_new_tokens=8)["shine"]
    other = evaluate_qa(model, with_other_contexts(held_out), ("shine",), max_new_tokens=8)["shine"]
    assert own["n"] == other["n"] == 60
    assert own["f1"] >= 0.9, own
    assert other["f1"] <= 0.3, other
