"""`run_eval` on a tiny random SHINE model: one internalize per distinct document, answers equal to
`generate_text`'s, token counts, resumable results, and bad input refused before any model work; long
documents read in chunks (composed or routed) on the shipped facts models."""

from __future__ import annotations

import json

import pytest

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from facts_documents import facts_model, held_out, long_document

from shine_hf import ContextTooLongError, InvalidInputError, RoutedAdapter
from shine_hf.evaluation import CONDITIONS, EvalExample, SftConfig, run_eval
from shine_hf.evaluation.metrics import f1_score
from shine_hf.evaluation.results import summarize
from shine_hf.modeling.chunking import split_text
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


# ---------------------------------------------------------------- long documents: chunked, composed or routed

CHUNK_TOKENS = 40  # the shipped facts documents have 34 tokens: one chunk per joined document


@pytest.fixture(scope="module")
def joined_facts():
    """Two long documents of four held-out facts documents each, and one facts document alone (read
    whole), with every question of each: the examples, the documents and the facts model."""
    records = held_out(9)
    documents = [long_document(records[:4]), long_document(records[4:8]), records[8]["context"]]
    groups = [records[:4], records[4:8], records[8:]]
    examples = [EvalExample(document, question, (answer,)) for document, group in zip(documents, groups)
                for record in group for question, answer in zip(record["questions"], record["answers"])]
    return examples, documents, facts_model()


@pytest.fixture(scope="module")
def chunked_runs(joined_facts):
    """run_eval's shine condition on the joined facts documents, for every way of reading them."""
    examples, _, model = joined_facts
    return {(compose, top_k): run_eval(model, examples, conditions="shine", chunk_tokens=CHUNK_TOKENS,
                                       compose=compose, top_k=top_k, max_new_tokens=8)
            for compose, top_k in (("concat", 1), ("mean", 1), ("route", 1), ("route", 2))}


@pytest.mark.parametrize(("compose", "top_k"), [("concat", 1), ("mean", 1), ("route", 1), ("route", 2)])
def test_long_documents_are_read_in_chunks_composed_or_routed(joined_facts, chunked_runs, compose, top_k):
    examples, documents, model = joined_facts
    results = chunked_runs[compose, top_k]
    tokenizer, memory = model.tokenizer, model.config.num_memory_tokens
    expected, read_tokens = [], 0
    for document in documents:
        if len(tokenizer(document)["input_ids"]) > CHUNK_TOKENS:
            chunks = split_text(document, tokenizer, CHUNK_TOKENS, 0)
            read_tokens += sum(len(tokenizer(chunk)["input_ids"]) + memory for chunk in chunks)
            if compose == "route":
                adapter = RoutedAdapter.from_document(model, document, chunk_tokens=CHUNK_TOKENS, top_k=top_k)
            else:
                adapter = model.internalize(document, chunk_tokens=CHUNK_TOKENS, compose=compose)
        else:  # a document that fits is read whole, whatever the compose mode
            read_tokens += len(tokenizer(document)["input_ids"]) + memory
            adapter = model.internalize(document)
        questions = [e.question for e in examples if e.context == document]
        expected += model.generate_text(questions, adapter=adapter, max_new_tokens=8)
    assert [row["predictions"]["shine"]["prediction"] for row in results["examples"]] == expected
    assert results["settings"]["chunking"] == {"chunk_tokens": CHUNK_TOKENS, "overlap_tokens": 0, "compose": compose,
                                               "top_k": top_k}
    assert [b["chunks"] for b in results["batches"]["shine"]] == [[4, 4, 1]]
    summary = results["summary"]["shine"]
    assert summary["chunks_per_document"] == 3
    # every chunk read counts its tokens and the memory tokens: 8 chunks of 34 tokens, then 34 tokens whole
    assert read_tokens == 9 * (34 + memory)
    assert summary["document_tokens_per_question"] == pytest.approx(read_tokens / len(examples))


def test_routing_answers_joined_facts_documents_where_composition_does_not(joined_facts, chunked_runs):
    examples, documents, model = joined_facts
    expected = []
    for document in documents:
        router = RoutedAdapter.from_document(model, document, chunk_tokens=CHUNK_TOKENS)
        expected += model.generate_text([e.question for e in examples if e.context == document], adapter=router,
                                        max_new_tokens=8)
    routed_f1 = sum(f1_score(answer, e.answers) for answer, e in zip(expected, examples)) / len(examples)
    routed, composed = (chunked_runs[mode, 1]["summary"]["shine"]["f1"] for mode in ("route", "concat"))
    assert routed == pytest.approx(routed_f1) == 1.0  # every question answered from its own person's chunk
    assert composed < routed  # one composed adapter mixes the four people's facts (docs/long_documents.md)


def test_without_chunk_tokens_a_long_document_is_refused_with_the_hint(model, monkeypatch):
    long_doc = " ".join(["contract"] * 600)  # 603 tokens; the tiny backbone reads 448 with its memory tokens
    examples = [EvalExample(long_doc, "What was signed?", ("the contract",))]
    with pytest.raises(ContextTooLongError, match=r"has 603 tokens.*pass chunk_tokens / --chunk-tokens"):
        run_eval(model, examples, conditions="shine")
    results = run_eval(model, examples, conditions="shine", chunk_tokens=model.max_context_tokens, max_new_tokens=3)
    adapter = model.internalize(long_doc, chunk_tokens=model.max_context_tokens)
    assert results["examples"][0]["predictions"]["shine"]["prediction"] == model.generate_text(
        "What was signed?", adapter=adapter, max_new_tokens=3)
    assert results["batches"]["shine"][0]["chunks"] == [2]
    monkeypatch.setattr(model, "internalize", lambda *a, **k: pytest.fail("internalized"))
    with pytest.raises(InvalidInputError, match=r"chunk_tokens=449 is beyond what the backbone can read"):
        run_eval(model, examples, conditions="shine", chunk_tokens=model.max_context_tokens + 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compose": "sum"}, r"Unknown compose 'sum': choose from concat, mean, route"),
        ({"top_k": 0}, "top_k must be a positive integer, got 0"),
        ({"chunk_tokens": 0}, "chunk_tokens must be a positive integer, got 0"),
        ({"chunk_tokens": 8, "overlap_tokens": 8}, r"chunk_tokens \(8\) must be larger than overlap_tokens \(8\)"),
        ({"chunk_tokens": 8, "overlap_tokens": -1}, "overlap_tokens must be an integer >= 0"),
        ({"overlap_tokens": 4}, "overlap_tokens applies to documents read in chunks: pass chunk_tokens / --chunk"),
        ({"compose": "route", "top_k": 2}, "compose and top_k apply to documents read in chunks: pass chunk_tokens"),
        ({"chunk_tokens": 8, "compose": "mean", "top_k": 2}, "top_k=2 applies to routed chunks: pass compose='route'"),
    ],
)
def test_bad_chunking_options_are_refused_before_any_model_work(tmp_path, options, message):
    missing_model = str(tmp_path / "no-such-checkpoint")  # loading it would fail with a CheckpointError
    with pytest.raises(InvalidInputError, match=message):
        run_eval(missing_model, [{"context": "doc", "question": "q?", "answers": ["a"]}], **options)


def test_a_results_file_with_other_chunking_is_not_resumed(model, tmp_path):
    output = tmp_path / "results.json"
    settings = dict(conditions="shine", output=output, max_new_tokens=2, chunk_tokens=6)
    first = run_eval(model, EXAMPLES, **settings)
    assert first["settings"]["chunking"]["chunk_tokens"] == 6 and sum(first["batches"]["shine"][0]["chunks"]) > 3
    for other in ({"compose": "mean"}, {"compose": "route"}, {"chunk_tokens": 7}, {"overlap_tokens": 2},
                  {"chunk_tokens": None}):
        with pytest.raises(InvalidInputError, match=r"other settings \(chunking\)"):
            run_eval(model, EXAMPLES, **{**settings, **other})
    assert run_eval(model, EXAMPLES, **settings)["batches"] == first["batches"]  # the same settings resume
    # chunking only concerns the shine condition: other conditions record none and ignore it
    assert run_eval(model, EXAMPLES, conditions="question_only", chunk_tokens=6,
                    max_new_tokens=2)["settings"]["chunking"] is None
