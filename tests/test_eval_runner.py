"""`run_eval` on a tiny random SHINE model: one internalize per distinct document, answers equal to
`generate_text`'s, token counts, resumable results, and bad input refused before any model work."""

from __future__ import annotations

import json

import pytest

from shine_hf import ContextTooLongError, InvalidInputError
from shine_hf.evaluation import CONDITIONS, EvalExample, SftConfig, run_eval
from shine_hf.evaluation.results import summarize
from shine_hf.modeling.prompting import in_context_question, question_prompt
from shine_hf.testing.models import tiny_shine

DOCS = ["Alice signed the contract in Lyon.", "The fox jumps over the dog.", "Veloria's capital is Tarsk."]
# document 0 has questions 0, 2 and 4 (not contiguous), document 1 has 1 and 5, document 2 has 3
EXAMPLES = [
    EvalExample(DOCS[0], "Who signed the contract?", ("Alice",)),
    EvalExample(DOCS[1], "What jumps?", ("the fox",)),
    EvalExample(DOCS[0], "Where was it signed?", ("Lyon",)),
    EvalExample(DOCS[2], "What is the capital of Veloria?", ("Tarsk",)),
    EvalExample(DOCS[0], "What was signed?", ("the contract", "a contract")),
    EvalExample(DOCS[1], "What does the fox jump over?", ("the dog",)),
]
# what an evaluation measures (seconds, memory) differs from run to run; everything else must not
MEASURED = {"prepare_seconds_per_document", "answer_seconds_per_question", "seconds_per_question", "peak_memory_mb"}
FAST_SFT = SftConfig(steps=2, learning_rate=1e-2)


@pytest.fixture(scope="module")
def model():
    return tiny_shine("qwen3", seed=0)


def unmeasured(summary):
    return {c: {k: v for k, v in s.items() if k not in MEASURED} for c, s in summary.items()}


def test_each_distinct_document_is_internalized_once(model, monkeypatch):
    calls = []
    internalize = model.internalize

    def counting(context, *args, **kwargs):
        calls.append([model.tokenizer.decode(ids) for ids in context])
        return internalize(context, *args, **kwargs)

    monkeypatch.setattr(model, "internalize", counting)
    results = run_eval(model, EXAMPLES, conditions="shine", batch_size=2, max_new_tokens=3)
    # 3 distinct documents, 2 per call: 2 calls, every document exactly once, for 6 questions
    assert calls == [DOCS[:2], DOCS[2:]]
    assert results["summary"]["shine"]["n"] == 6 and results["summary"]["shine"]["documents"] == 3
    batches = results["batches"]["shine"]
    assert [b["documents"] for b in batches] == [[0, 1], [2]]
    assert [b["examples"] for b in batches] == [[0, 1, 2, 4, 5], [3]]


def test_answers_and_token_counts_are_those_of_generate_text(model):
    results = run_eval(model, EXAMPLES, conditions=["shine", "in_context", "question_only"], batch_size=4,
                       max_new_tokens=4)
    system = model.config.system_prompt
    tokenizer = model.tokenizer
    for example, row in zip(EXAMPLES, results["examples"]):
        adapter = model.internalize(example.context)
        predictions = row["predictions"]
        assert predictions["shine"]["prediction"] == model.generate_text(example.question, adapter=adapter,
                                                                         max_new_tokens=4)
        assert predictions["in_context"]["prediction"] == model.generate_text(
            example.question, context=example.context, system_prompt=system, max_new_tokens=4)
        assert predictions["question_only"]["prediction"] == model.generate_text(
            example.question, system_prompt=system, max_new_tokens=4)
        prompts = {"shine": question_prompt(tokenizer, example.question),
                   "in_context": question_prompt(tokenizer, in_context_question(example.context, example.question),
                                                 system),
                   "question_only": question_prompt(tokenizer, example.question, system)}
        for condition, prompt in prompts.items():
            assert predictions[condition]["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)
                                                                  ["input_ids"])
            assert 1 <= predictions[condition]["generated_tokens"] <= 4
    summary = results["summary"]
    memory = model.config.num_memory_tokens
    document_tokens = sum(len(tokenizer(d)["input_ids"]) + memory for d in DOCS)
    assert summary["shine"]["document_tokens_per_question"] == pytest.approx(document_tokens / 6)
    assert summary["in_context"]["document_tokens_per_question"] == 0
    assert summary["in_context"]["prompt_tokens_per_question"] > summary["question_only"]["prompt_tokens_per_question"]
    for s in summary.values():
        assert s["tokens_per_question"] == pytest.approx(s["prompt_tokens_per_question"]
                                                         + s["generated_tokens_per_question"]
                                                         + s["document_tokens_per_question"])
        assert s["seconds_per_question"] >= s["answer_seconds_per_question"] > 0
        assert s["peak_memory_mb"] >= 0
    assert summary["shine"]["prepare_seconds_per_document"] > 0
    assert summary["in_context"]["prepare_seconds_per_document"] is None


def test_all_four_conditions_and_the_results_file(model, tmp_path):
    output = tmp_path / "results.json"
    results = run_eval(model, EXAMPLES, output=output, batch_size=4, max_new_tokens=3, sft=FAST_SFT)
    assert list(results["summary"]) == list(CONDITIONS)
    on_disk = json.loads(output.read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["complete"] and on_disk["data"]["documents"] == 3 and on_disk["data"]["examples"] == 6
    assert [b["documents"] for b in on_disk["batches"]["sft"]] == [[0], [1], [2]]  # one LoRA per document
    assert all(len(run) == 2 for b in on_disk["batches"]["sft"] for run in b["losses"])
    assert on_disk["summary"] == summarize(on_disk, CONDITIONS)
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary files left


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_without_redoing_batches(model, tmp_path, monkeypatch):
    settings = dict(conditions=["shine", "question_only", "sft"], batch_size=2, max_new_tokens=3, sft=FAST_SFT)
    uninterrupted = run_eval(model, EXAMPLES, output=tmp_path / "full.json", **settings)

    def crash_after_two_question_only_batches(condition, done, total):
        if condition == "question_only" and done >= 4:
            raise Crash

    output = tmp_path / "resumed.json"
    with pytest.raises(Crash):
        run_eval(model, EXAMPLES, output=output, progress=crash_after_two_question_only_batches, **settings)
    partial = json.loads(output.read_text())
    assert not partial["complete"]
    assert [b["index"] for b in partial["batches"]["question_only"]] == [0, 1]
    generated = []
    generate = model.generate
    monkeypatch.setattr(model, "generate",
                        lambda *a, **k: generated.append(k["input_ids"].shape[0]) or generate(*a, **k))
    resumed = run_eval(model, EXAMPLES, output=output, **settings)
    # only the last question-only batch ran again, then SFT: document 0 (3 questions in batches of 2),
    # document 1 (2 questions), document 2 (1 question)
    assert generated == [2, 2, 1, 2, 1]
    assert resumed["batches"]["shine"] == partial["batches"]["shine"]  # first run's measurements kept
    assert resumed["batches"]["question_only"][:2] == partial["batches"]["question_only"]
    assert unmeasured(resumed["summary"]) == unmeasured(uninterrupted["summary"])
    assert [r["predictions"] for r in resumed["examples"]] == [r["predictions"] for r in uninterrupted["examples"]]
    assert len(resumed["environment"]) == 2
    rerun = run_eval(model, EXAMPLES, output=output, **settings)  # nothing left to do
    assert generated == [2, 2, 1, 2, 1] and rerun["summary"] == resumed["summary"]


def test_bad_input_is_refused_before_any_model_work(tmp_path):
    missing_model = str(tmp_path / "no-such-checkpoint")  # loading it would fail with a CheckpointError
    good = [{"context": "doc", "question": "q?", "answers": ["a"]}]
    with pytest.raises(InvalidInputError, match=r"Unknown condition.*'oracle'.*choose from shine, in_context"):
        run_eval(missing_model, good, conditions="shine,oracle")
    with pytest.raises(InvalidInputError, match=r"directory .*nowhere does not exist"):
        run_eval(missing_model, good, output=tmp_path / "nowhere" / "results.json")
    with pytest.raises(InvalidInputError, match="is a directory"):
        run_eval(missing_model, good, output=tmp_path)
    with pytest.raises(InvalidInputError, match=r"record 2 of .* has no field 'question'"):
        run_eval(missing_model, [*good, {"context": "doc", "answers": ["a"]}])
    with pytest.raises(InvalidInputError, match="the context is empty"):
        run_eval(missing_model, [{"context": "", "question": "q?", "answers": ["a"]}])
    with pytest.raises(InvalidInputError, match="batch_size must be at least 1"):
        run_eval(missing_model, good, batch_size=0)
    with pytest.raises(InvalidInputError, match="SFT steps must be at least 1"):
        run_eval(missing_model, good, sft=SftConfig(steps=0))
    (tmp_path / "notes.json").write_text("my notes")
    with pytest.raises(InvalidInputError, match="not a results file of shine eval"):
        run_eval(missing_model, good, output=tmp_path / "notes.json")
    assert (tmp_path / "notes.json").read_text() == "my notes"


def test_a_results_file_of_another_run_is_not_resumed(model, tmp_path):
    output = tmp_path / "results.json"
    run_eval(model, EXAMPLES, conditions="question_only", output=output, max_new_tokens=2)
    with pytest.raises(InvalidInputError, match=r"other settings \(max_new_tokens\)"):
        run_eval(model, EXAMPLES, conditions="question_only", output=output, max_new_tokens=3)
    with pytest.raises(InvalidInputError, match=r"other settings \(data \(the examples differ\)\)"):
        run_eval(model, EXAMPLES[:3], conditions="question_only", output=output, max_new_tokens=2)


def test_documents_and_prompts_too_long_for_the_backbone_are_refused_before_generating(model, monkeypatch):
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generated"))
    long_doc = " ".join(["contract"] * 600)
    with pytest.raises(ContextTooLongError, match=r"Document 1 has .* tokens; with 64 memory tokens"):
        run_eval(model, [EvalExample(long_doc, "q?", ("a",))], conditions="shine")
    with pytest.raises(ContextTooLongError, match="Example 1: its in_context prompt has"):
        run_eval(model, [EvalExample(long_doc, "q?", ("a",))], conditions="in_context")
