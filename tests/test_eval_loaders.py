"""Evaluation data: every layout's fixture (tests/data/eval, written in the Hub layouts) reads into
the expected (context, question, answers) triples, from JSONL and through `datasets`; bad records
are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from shine_hf import InvalidInputError
from shine_hf.evaluation import EvalExample, load_examples
from shine_hf.evaluation.loaders import detect_layout, examples_from_records

DATA = Path(__file__).parent / "data" / "eval"
TARSK = "Tarsk is a city on the river Vel. It was founded in 1203 by Alva Mor."

EXPECTED = {
    "squad": [
        (TARSK, "When was Tarsk founded?", ("1203", "in 1203")),
        (TARSK, "Who founded Tarsk?", ("Alva Mor",)),
    ],  # the third (SQuAD v2 unanswerable) question is skipped
    "hotpotqa": [
        ("Alva Mor\nAlva Mor was a merchant. She founded Tarsk in 1203.\n\nTarsk\nTarsk is a city on the river "
         "Vel.\n\nQorsk\nQorsk lies in the mountains. It has no river.",
         "Which river flows through the city that Alva Mor founded?", ("Vel",)),
        ("Tarsk\nTarsk is a city on the river Vel.\n\nQorsk\nQorsk is a city in the mountains.",
         "Are Tarsk and Qorsk both cities?", ("yes",)),
    ],
    "msmarco": [
        ("Tarsk is a city on the river Vel.\n\nQorsk lies in the mountains.", "what river flows through tarsk",
         ("Vel", "The river Vel flows through Tarsk.")),
        ("Tarsk was founded in 1203 by Alva Mor.", "when was tarsk founded", ("1203", "in 1203")),
    ],  # "No Answer Present." is skipped
    "musique": [
        ("Alva Mor\nAlva Mor founded Tarsk in 1203.\n\nTarsk\nTarsk is a city on the river Vel.\n\nQorsk\nQorsk "
         "lies in the mountains.", "Which river flows through the city founded by Alva Mor?",
         ("Vel", "River Vel", "the Vel")),
    ],  # the unanswerable record is skipped
    "records": [
        (TARSK, "When was Tarsk founded?", ("1203", "in 1203")),
        (TARSK, "Who founded Tarsk?", ("Alva Mor",)),
        ("Qorsk lies in the mountains.", "Where does Qorsk lie?", ("in the mountains",)),
        ("Qorsk lies in the mountains.", "What lies in the mountains?", ("Qorsk", "the city of Qorsk")),
    ],
}
SKIPPED = {"squad": 1, "hotpotqa": 0, "msmarco": 1, "musique": 1, "records": 0}


def triples(data):
    return [(e.context, e.question, e.answers) for e in data.examples]


def rows(layout):
    return [json.loads(line) for line in (DATA / f"{layout}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout", list(EXPECTED))
def test_each_layout_reads_into_the_expected_triples(layout):
    data = load_examples(DATA / f"{layout}.jsonl")
    assert data.layout == layout and detect_layout(rows(layout)[0]) == layout
    assert triples(data) == EXPECTED[layout]
    assert data.skipped == SKIPPED[layout]
    assert triples(load_examples(DATA / f"{layout}.jsonl", layout=layout)) == EXPECTED[layout]


@pytest.mark.parametrize("layout", ["squad", "hotpotqa", "msmarco", "musique"])
def test_hub_layouts_read_the_same_through_datasets(layout, tmp_path):
    """The same records as Arrow data (what `datasets.load_dataset` gives for the Hub copies):
    a parquet file, a saved DatasetDict split, a Hub-style data directory, and a Dataset object."""
    dataset = datasets.Dataset.from_list(rows(layout))
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    assert triples(load_examples(tmp_path / "rows.parquet")) == EXPECTED[layout]
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "saved"))
    assert triples(load_examples(tmp_path / "saved", split="validation")) == EXPECTED[layout]
    (tmp_path / "repo" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet"))
    assert triples(load_examples(str(tmp_path / "repo"), split="test")) == EXPECTED[layout]
    assert triples(load_examples(dataset)) == EXPECTED[layout]


def test_list_of_struct_columns_read_like_struct_of_lists():
    """`datasets` List(struct) features give a list of dicts instead of a dict of lists."""
    hotpot = rows("hotpotqa")[0]
    hotpot["context"] = [{"title": t, "sentences": s} for t, s in zip(hotpot["context"]["title"],
                                                                       hotpot["context"]["sentences"])]
    marco = rows("msmarco")[0]
    marco["passages"] = [{"is_selected": i, "passage_text": t} for i, t in zip(marco["passages"]["is_selected"],
                                                                               marco["passages"]["passage_text"])]
    assert triples(examples_from_records([hotpot])) == EXPECTED["hotpotqa"][:1]
    assert triples(examples_from_records([marco])) == EXPECTED["msmarco"][:1]
    original = rows("hotpotqa")[0]  # the original HotpotQA JSON: [title, sentences] pairs
    original["context"] = [[t, s] for t, s in zip(original["context"]["title"], original["context"]["sentences"])]
    assert triples(examples_from_records([original])) == EXPECTED["hotpotqa"][:1]


def test_official_squad_json_and_examples_and_limit(tmp_path):
    assert triples(load_examples(DATA / "squad-v1.1.json")) == EXPECTED["squad"]
    data = load_examples(DATA / "records.jsonl", limit=3)
    assert triples(data) == EXPECTED["records"][:3]
    examples = [EvalExample("doc", "q?", ("a",), id="x")]
    assert load_examples(examples).examples == examples
    (tmp_path / "list.json").write_text(json.dumps(rows("records")))
    assert triples(load_examples(tmp_path / "list.json")) == EXPECTED["records"]
    first, second = load_examples(DATA / "records.jsonl"), load_examples(DATA / "records.jsonl", limit=2)
    assert first.fingerprint != second.fingerprint
    assert first.fingerprint == load_examples(DATA / "records.jsonl").fingerprint


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "q?", "answers": ["a"]}, "record 1 of .*bad.jsonl has no field 'context'"),
        ({"context": "doc", "answers": ["a"]}, "has no field 'question'"),
        ({"context": "doc", "question": "q?"}, "has no field 'answers'"),
        ({"context": "   ", "question": "q?", "answers": ["a"]}, "the context is empty"),
        ({"context": "doc", "question": "", "answers": ["a"]}, "the question is empty"),
        ({"context": "doc", "question": "q?", "answers": []}, "no gold answer"),
        ({"context": "doc", "question": "q?", "answers": [3]}, "answers must be a string or a list of strings"),
        ({"context": "doc", "questions": ["q?"], "answers": ["a", "b"]}, "same length"),
        ({"context": ["not", "paragraphs"], "question": "q?", "answer": "a"}, "'context' must hold"),
        ({"query": "q", "passages": {"passage_text": "x"}, "answers": ["a"]}, "'passages' needs"),
    ],
)
def test_bad_records_are_refused_by_name(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({"context": "doc", "question": "fine?", "answers": ["a"]}))
    with pytest.raises(InvalidInputError, match=message):
        load_examples(path)


def test_unreadable_sources_are_refused(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"context": "doc", "question": "q?", "answer": "a"}\n{oops\n')
    with pytest.raises(InvalidInputError, match=r"broken.jsonl line 2 is not valid JSON"):
        load_examples(tmp_path / "broken.jsonl")
    with pytest.raises(InvalidInputError, match="No such data file"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidInputError, match="Unknown data layout 'trivia'"):
        load_examples(DATA / "records.jsonl", layout="trivia")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInputError, match="holds no examples"):
        load_examples(tmp_path / "empty.jsonl")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows("squad"))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InvalidInputError, match="no split 'test'; it has train"):
        load_examples(tmp_path / "dd")
    with pytest.raises(InvalidInputError, match="limit must be at least 1"):
        load_examples(DATA / "records.jsonl", limit=0)
