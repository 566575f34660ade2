"""The training rows of scripts/make_small_backbone.py: joined documents and closed-book questions."""

import argparse
import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_small_backbone as backbone_script


@pytest.fixture(scope="module")
def tokenizer():
    return backbone_script.build_tokenizer()


def rows(tokenizer, count: int, **options):
    defaults = dict(seed=0, batch_size=8, lm_fraction=0.0, copy_fraction=0.0, no_system_fraction=0.0, max_turns=6,
                    joined_fraction=0.0, max_joined=4, closed_book_fraction=0.0, closed_book_entities=20)
    args = argparse.Namespace(**{**defaults, **options})
    train_entities = {e for r in backbone_script.canonical_splits()["train"] for e in r["entities"]}
    stream = backbone_script.TrainingRows(tokenizer, train_entities, args)
    return [tokenizer.decode(row["input_ids"]) for row in itertools.islice(iter(stream), count)], stream


def test_joined_rows_hold_several_people_and_ask_about_them(tokenizer):
    texts, _ = rows(tokenizer, 16, joined_fraction=1.0)
    people = [text.count(" was born on ") for text in texts]
    assert min(people) >= 2 and max(people) <= 4
    assert all("?" in text for text in texts)


def test_closed_book_rows_ask_known_people_without_their_document(tokenizer):
    texts, stream = rows(tokenizer, 16, closed_book_fraction=1.0)
    known = {e for record in stream.known for e in record["entities"]}
    assert len(known) == 20
    assert all(" was born on " not in text for text in texts)  # no document in the prompt
    assert all(any(name in text for name in known) for text in texts)


def test_joined_validation_groups_keep_every_question():
    test = backbone_script.canonical_splits()["test"]
    groups = backbone_script.joined_records(test, 4)
    assert len(groups) == len(test) // 4
    grouped = test.select(range(4 * len(groups)))
    assert sum(len(g["questions"]) for g in groups) == sum(len(r["questions"]) for r in grouped)
