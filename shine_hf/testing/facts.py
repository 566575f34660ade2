"""Synthetic facts about invented people: a toy QA dataset whose answers exist only in its documents.

Every entity (an invented name) gets a birth date, a city, a profession, a height and a company
with an employee count, written with the fixed sentence templates of ``FACT_TEMPLATES``; every
question's answer is a substring of its document, and names, cities and companies are built from
syllable lists, so no real corpus knows these facts. The small models shipped in
``shine_hf.assets`` were trained and are measured on ``synthetic_facts(**FACTS_DATA)``; the
benchmarks, the demo and the tests use it too.

Nothing is computed at import time: the one-word name list and the question patterns are built,
once, on first use.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets

__all__ = [
    "CITIES",
    "COMPANIES",
    "FACT_TEMPLATES",
    "MONTHS",
    "PROFESSIONS",
    "fact_attribute",
    "one_token_name_pool",
    "synthetic_facts",
    "synthetic_facts_about",
]

_NAME_SYLLABLES = (
    "ka", "lo", "mi", "ta", "ve", "ri", "zo", "bu", "ne", "sa", "du", "fe", "go", "pi",
)  # fmt: skip
_FIRST_ENDINGS = ("n", "l", "ra", "th", "ne")
_LAST_ENDINGS = ("vik", "dor", "mund", "vey", "quist")
_PLACE_ONSETS = ("Tar", "Vel", "Qor", "Brin", "Dus", "Kel", "Mor", "Zan", "Hul", "Frey")
_PLACE_ENDINGS = ("sk", "vor", "mar", "dun", "eth")
_COMPANY_ONSETS = ("Ox", "Trel", "Quan", "Vex", "Plor", "Zim", "Drav", "Kest")
_COMPANY_ENDINGS = ("tek", "cor", "ware", "lux")
PROFESSIONS = (
    "baker", "pilot", "chemist", "tailor", "farmer", "nurse", "librarian", "carpenter",
    "painter", "sailor", "teacher", "dentist", "jeweler", "plumber", "banker", "potter",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
CITIES = tuple(a + b for a in _PLACE_ONSETS for b in _PLACE_ENDINGS)
COMPANIES = tuple(a + b for a in _COMPANY_ONSETS for b in _COMPANY_ENDINGS)

# (sentence template, its (question, answer) templates); the fields are those of _entity_facts.
FACT_TEMPLATES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("{name} was born on {birth_date}.", (("When was {name} born?", "{birth_date}"),)),
    ("{name} lives in {city}.", (("Where does {name} live?", "{city}"),)),
    ("{name} works as a {profession}.", (("What does {name} work as?", "{profession}"),)),
    ("{name} is {height} cm tall.", (("How tall is {name}?", "{height} cm"),)),
    (
        "{name} founded {company}, which has {employees} employees.",
        (
            ("Which company did {name} found?", "{company}"),
            ("How many employees does {company} have?", "{employees}"),
        ),
    ),
)


@functools.cache
def one_token_name_pool() -> tuple[str, ...]:
    """The 1000 invented one-word names (three distinct syllables) that ``synthetic_facts(...,
    one_token_names=True)`` draws from; fixed across versions and seeds."""
    words = [
        (a + b + c).capitalize()
        for a in _NAME_SYLLABLES
        for b in _NAME_SYLLABLES
        for c in _NAME_SYLLABLES
        if len({a, b, c}) == 3
    ]
    random.Random(1931).shuffle(words)
    return tuple(words[:1000])


def _full_names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        first = "".join(rng.choices(_NAME_SYLLABLES, k=2)) + rng.choice(_FIRST_ENDINGS)
        last = "".join(rng.choices(_NAME_SYLLABLES, k=2)) + rng.choice(_LAST_ENDINGS)
        names.add(f"{first.capitalize()} {last.capitalize()}")
    return sorted(names)


def _entity_facts(name: str, company: str, rng: random.Random) -> dict[str, str]:
    return {
        "name": name,
        "birth_date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1900, 1999)}",
        "city": rng.choice(CITIES),
        "profession": rng.choice(PROFESSIONS),
        "height": str(rng.randint(150, 199)),
        "company": company,
        "employees": str(rng.randint(11, 989)),
    }


def _document(
    names: Sequence[str],
    rng: random.Random,
    questions_per_entity: int | None,
    shuffle_sentences: bool,
) -> dict[str, Any]:
    sentences: list[str] = []
    qa_pairs: list[tuple[str, str]] = []
    companies = rng.sample(COMPANIES, len(names))
    for name, company in zip(names, companies, strict=True):
        facts = _entity_facts(name, company, rng)
        entity_qa = []
        for sentence, qa_templates in FACT_TEMPLATES:
            sentences.append(sentence.format(**facts))
            entity_qa += [(q.format(**facts), a.format(**facts)) for q, a in qa_templates]
        if questions_per_entity is not None:
            picked = sorted(rng.sample(range(len(entity_qa)), min(questions_per_entity, len(entity_qa))))
            entity_qa = [entity_qa[i] for i in picked]
        qa_pairs += entity_qa
    if shuffle_sentences:
        rng.shuffle(sentences)
    return {
        "context": " ".join(sentences),
        "questions": [q for q, _ in qa_pairs],
        "answers": [a for _, a in qa_pairs],
        "entities": list(names),
    }


def _split_sizes(total: int, fractions: Sequence[float]) -> list[int]:
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ValueError("split_fractions needs three positive fractions (train, validation, test).")
    scale = sum(fractions)
    validation = max(1, round(total * fractions[1] / scale))
    test = max(1, round(total * fractions[2] / scale))
    train = total - validation - test
    if train < 1:
        raise ValueError(f"{total} entities are too few for three splits.")
    return [train, validation, test]


def synthetic_facts(
    num_entities: int,
    seed: int = 0,
    *,
    entities_per_document: tuple[int, int] = (1, 2),
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    one_token_names: bool = False,
    questions_per_entity: int | None = None,
    shuffle_sentences: bool = False,
) -> DatasetDict:
    """A toy QA dataset about invented people whose facts exist only in their own documents.

    Each document describes 1 or 2 entities (``entities_per_document``, inclusive) and asks up to
    six questions per entity ("When was X born?" → "12 May 1931", "Where does X live?" → "Tarsk",
    …), every answer a substring of the document.

    Args:
        num_entities: Entities in all splits together (at least 3).
        seed: Everything is deterministic given the seed.
        entities_per_document: Inclusive range of entities per document.
        split_fractions: Entity shares of train / validation / test; splits have DISJOINT
            entities (every split gets at least one).
        one_token_names: Draw one-word names from ``one_token_name_pool()`` (at most 1000 entities),
            so a word-level tokenizer gives every name (and city, company) a single token.
            Otherwise names are two invented words ("Kalon Mitavik").
        questions_per_entity: Keep this many randomly chosen QA pairs per entity (None: all six).
        shuffle_sentences: Shuffle the sentences of each document.

    Returns:
        ``DatasetDict`` with ``train``/``validation``/``test``; columns ``context``, ``questions``,
        ``answers`` (the QA schema of ``shine_hf.data.load_qa_dataset``) and ``entities`` (names
        described).
    """
    low, high = entities_per_document
    if not 1 <= low <= high:
        raise ValueError(f"Bad entities_per_document {entities_per_document}.")
    rng = random.Random(seed)
    if one_token_names:
        pool = one_token_name_pool()
        if num_entities > len(pool):
            raise ValueError(f"one_token_names allows at most {len(pool)} entities.")
        names = rng.sample(pool, num_entities)
    else:
        names = _full_names(rng, num_entities)
        rng.shuffle(names)
    splits = {}
    start = 0
    for split, size in zip(("train", "validation", "test"), _split_sizes(num_entities, split_fractions), strict=True):
        split_names, start = names[start : start + size], start + size
        documents = []
        position = 0
        while position < len(split_names):
            count = rng.randint(low, high)
            group = split_names[position : position + count]
            documents.append(_document(group, rng, questions_per_entity, shuffle_sentences))
            position += count
        splits[split] = Dataset.from_list(documents)
    return DatasetDict(splits)


def synthetic_facts_about(entities: Iterable[str], seeds: Iterable[int], **facts_kwargs: Any) -> Dataset:
    """Fresh random facts about known entities: the documents of ``synthetic_facts(**facts_kwargs,
    seed=s)`` for every seed ``s`` (all splits, in order) that describe only ``entities``.

    More training documents about the training entities, without ever touching held-out ones."""
    entities = set(entities)
    parts = []
    for seed in seeds:
        for split in synthetic_facts(**{**facts_kwargs, "seed": seed}).values():
            parts.append(split.filter(lambda described: set(described) <= entities, input_columns="entities"))
    if not parts:
        raise ValueError("synthetic_facts_about needs at least one seed.")
    return concatenate_datasets(parts)


def fact_attribute(question: str) -> str | None:
    """Which attribute a ``synthetic_facts`` question asks for (``"birth_date"``, ``"city"``,
    ``"profession"``, ``"height"``, ``"company"``, ``"employees"``), or None for any other text.

    Lets evaluations report scores per question type (``shine_hf.evaluation.f1_by_question_type``)."""
    for pattern, attribute in _question_patterns():
        if pattern.fullmatch(question.strip()):
            return attribute
    return None


@functools.cache
def _question_patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    patterns = []
    for _, qa_templates in FACT_TEMPLATES:
        for question, answer in qa_templates:
            regex = re.sub(r"\\\{\w+\\\}", ".+?", re.escape(question))
            patterns.append((re.compile(regex), re.search(r"\{(\w+)\}", answer).group(1)))
    return tuple(patterns)
