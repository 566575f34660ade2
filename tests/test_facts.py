"""Tests for shine_hf.testing.facts: disjoint splits, answers in their documents, determinism,
question types, fresh facts about known entities, one-token names, and no work at import."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shine_hf.testing.facts import (
    CITIES,
    COMPANIES,
    fact_attribute,
    one_token_name_pool,
    synthetic_facts,
    synthetic_facts_about,
)


def name_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(name)}\b")


@pytest.mark.parametrize("one_token_names", [False, True])
def test_synthetic_splits_have_disjoint_entities(one_token_names):
    facts = synthetic_facts(120, seed=5, one_token_names=one_token_names)
    assert list(facts) == ["train", "validation", "test"]
    entities = {split: {e for doc in facts[split]["entities"] for e in doc} for split in facts}
    assert sum(len(e) for e in entities.values()) == 120
    assert len(entities["train"]) == 96 and len(entities["validation"]) == 12 and len(entities["test"]) == 12
    for a in facts:
        for b in facts:
            if a == b:
                continue
            assert not entities[a] & entities[b]
            contexts = " ".join(facts[b]["context"])
            assert not any(name_pattern(name).search(contexts) for name in entities[a])
    if one_token_names:
        assert all(" " not in e and e in one_token_name_pool() for s in entities.values() for e in s)


def test_synthetic_answers_are_in_their_documents():
    facts = synthetic_facts(60, seed=1)
    for split in facts.values():
        for doc in split:
            assert 1 <= len(doc["entities"]) <= 2
            assert len(doc["questions"]) == len(doc["answers"]) == 6 * len(doc["entities"])
            for question, answer in zip(doc["questions"], doc["answers"], strict=True):
                assert answer in doc["context"]
                assert question.endswith("?")
            for name in doc["entities"]:
                assert name in doc["context"]
    doc = facts["train"][0]
    name = doc["entities"][0]
    born = doc["questions"].index(f"When was {name} born?")
    assert re.fullmatch(r"\d{1,2} [A-Z][a-z]+ 19\d\d", doc["answers"][born])
    assert doc["answers"][doc["questions"].index(f"Where does {name} live?")] in CITIES


def test_synthetic_facts_options_and_determinism():
    a = synthetic_facts(30, seed=2, questions_per_entity=2, shuffle_sentences=True)
    b = synthetic_facts(30, seed=2, questions_per_entity=2, shuffle_sentences=True)
    assert all(a[s].to_list() == b[s].to_list() for s in a)
    assert a["train"].to_list() != synthetic_facts(30, seed=3)["train"].to_list()
    for doc in a["train"]:
        assert len(doc["questions"]) == 2 * len(doc["entities"])
    singles = synthetic_facts(10, seed=0, entities_per_document=(1, 1))
    assert all(len(e) == 1 for s in singles.values() for e in s["entities"])
    with pytest.raises(ValueError, match="at most"):
        synthetic_facts(len(one_token_name_pool()) + 1, one_token_names=True)
    with pytest.raises(ValueError, match="too few"):
        synthetic_facts(2)


@pytest.mark.parametrize("one_token_names", [False, True])
def test_fact_attribute_names_what_each_question_asks(one_token_names):
    facts = synthetic_facts(20, seed=6, one_token_names=one_token_names, entities_per_document=(1, 1))
    for doc in facts["train"]:
        name = doc["entities"][0]
        asked = {fact_attribute(q): a for q, a in zip(doc["questions"], doc["answers"], strict=True)}
        assert set(asked) == {"birth_date", "city", "profession", "height", "company", "employees"}
        assert f"{name} lives in {asked['city']}." in doc["context"]
        assert f"{name} is {asked['height']} tall." in doc["context"]  # the answer is "NNN cm"
    assert fact_attribute("Who signed the contract?") is None
    assert fact_attribute("  Where does Ana Lopez live? ") == "city"


def test_synthetic_facts_about_keeps_only_the_given_entities():
    # one-token names come from one fixed list, so the same entities recur under other seeds
    kwargs = {"num_entities": 1000, "one_token_names": True, "entities_per_document": (1, 2)}
    canonical = synthetic_facts(seed=0, **kwargs)
    train = {e for row in canonical["train"] for e in row["entities"]}
    fresh = synthetic_facts_about(train, [1, 2], **kwargs)
    assert len(fresh) > 100 and all(set(row["entities"]) <= train for row in fresh)
    expected = [row for seed in (1, 2) for split in synthetic_facts(seed=seed, **kwargs).values()
                for row in split if set(row["entities"]) <= train]
    assert fresh.to_list() == expected  # every seed, every split, in order
    with pytest.raises(ValueError, match="seed"):
        synthetic_facts_about(train, [], **kwargs)


def test_one_token_names_are_one_word_level_token():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    facts = synthetic_facts(50, seed=4, one_token_names=True)
    texts = [c for s in facts.values() for c in s["context"]] + [
        q for s in facts.values() for d in s["questions"] for q in d
    ]
    word_level = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    for split in facts.values():
        for doc in split:
            for answer in doc["answers"]:
                assert "[UNK]" not in word_level.encode(answer).tokens
            for name in doc["entities"]:
                assert word_level.encode(name).tokens == [name]


def test_the_invented_vocabularies_are_disjoint():
    """A name that is also a city or a company would make answers ambiguous."""
    groups = [set(one_token_name_pool()), set(CITIES), set(COMPANIES)]
    assert [len(g) for g in groups] == [1000, len(CITIES), len(COMPANIES)]
    for i, first in enumerate(groups):
        for second in groups[i + 1 :]:
            assert not first & second


def test_importing_computes_nothing():
    code = ("import shine_hf.testing.facts as f; "
            "print(f.one_token_name_pool.cache_info().currsize, f._question_patterns.cache_info().currsize)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]
