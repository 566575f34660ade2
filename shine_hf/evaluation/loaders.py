"""Evaluation data: (context, question, gold answers) examples from files, datasets and the Hub.

Every source becomes a list of `EvalExample`. Layouts (detected from the first record, or named
with ``layout=``):

- ``records``: ``context`` (str) with ``question`` + ``answers`` (or ``answer``), or with
  ``questions`` + ``answers`` (one entry per question) — the QA-record layout of ``shine_hf.data``.
  An answer is a string, a list of gold strings, or a SQuAD dict ``{"text": [...]}``.
- ``squad``: the Hub layout of SQuAD (``rajpurkar/squad``, ``rajpurkar/squad_v2``): ``context``,
  ``question``, ``answers: {"text": [...], "answer_start": [...]}``. Questions without a gold
  answer (SQuAD v2's unanswerable ones) are skipped and counted. The official
  ``{"data": [{"paragraphs": [{"context", "qas"}]}]}`` JSON file is read too.
- ``hotpotqa``: HotpotQA's Hub layout (``hotpotqa/hotpot_qa``, distractor setting): ``question``,
  ``answer``, ``context: {"title": [...], "sentences": [[...], ...]}`` (also as a list of
  ``{"title", "sentences"}``, or the original JSON's list of ``[title, sentences]`` pairs). The
  document is every paragraph, ``title`` line then its sentences, joined by blank lines.
- ``msmarco``: MS MARCO's Hub layout (``microsoft/ms_marco``): ``query``, ``answers``,
  ``wellFormedAnswers``, ``passages: {"passage_text": [...], ...}``. The document is the passages
  joined by blank lines; the gold answers are ``answers`` + ``wellFormedAnswers``. Queries whose
  only answer is "No Answer Present." are skipped and counted.
- ``musique``: MuSiQue's layout (``dgslibisey/MuSiQue``, the original JSONL): ``question``,
  ``answer``, ``answer_aliases``, ``paragraphs: [{"title", "paragraph_text", ...}]``. The
  document is every paragraph (title line, text) joined by blank lines; the gold answers are
  ``answer`` + ``answer_aliases``. Records with ``answerable: false`` are skipped and counted.

Sources: a list of `EvalExample` or of record dicts, a ``datasets.Dataset`` / ``DatasetDict``, a
``.jsonl`` / ``.json`` file (read line by line, so errors name the line), a ``.parquet`` /
``.csv`` / ``.arrow`` file, a directory written by ``Dataset.save_to_disk`` or holding a Hub
dataset's files, or a Hub dataset id (``datasets.load_dataset(id, config, split=split)``).
A record that misses a field, or has an empty context or no gold answer, raises
``InvalidInputError`` naming the record, before any model work.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..modeling.errors import InvalidInputError

__all__ = ["LAYOUTS", "EvalData", "EvalExample", "detect_layout", "examples_from_records", "load_examples"]

logger = logging.getLogger(__name__)

NO_ANSWER = "No Answer Present."  # MS MARCO's marker of a query its passages do not answer


@dataclass(frozen=True)
class EvalExample:
    """One question about one document, with every gold answer."""

    context: str
    question: str
    answers: tuple[str, ...]
    id: str | None = None


@dataclass
class EvalData:
    """Examples read from a source, with what was skipped and the layout that was read."""

    examples: list[EvalExample]
    layout: str
    source: str
    skipped: int = 0

    @property
    def fingerprint(self) -> str:
        """sha256 over every (context, question, answers): identifies the data of a results file."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(json.dumps([example.context, example.question, list(example.answers)]).encode())
        return digest.hexdigest()


class _Skip(Exception):
    """A record with no gold answer by its dataset's own convention (unanswerable)."""


def _field(record: Mapping[str, Any], name: str, where: str, layout: str) -> Any:
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"{where} is a {type(record).__name__}, not a JSON object.")
    value = record.get(name)
    if value is None:
        raise InvalidInputError(f"{where} has no field {name!r} (the {layout} layout needs it).")
    return value


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{where}: the {what} must be a string, not {type(value).__name__}.")
    if not value.strip():
        raise InvalidInputError(f"{where}: the {what} is empty.")
    return value


def _gold(value: Any, where: str) -> tuple[str, ...]:
    """Gold answers given as a string, a list of strings, or a SQuAD dict {"text": [...]}."""
    if isinstance(value, Mapping):
        if "text" not in value:
            raise InvalidInputError(f"{where}: an answer dict needs a 'text' field.")
        value = value["text"]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise InvalidInputError(f"{where}: answers must be a string or a list of strings, not {value!r}.")
    answers = tuple(v for v in values if v.strip())
    if not answers:
        raise InvalidInputError(f"{where}: no gold answer.")
    return answers


def _paragraphs(pairs: Iterable[tuple[str, str]]) -> str:
    return "\n\n".join(f"{title}\n{text.strip()}" if title else text.strip() for title, text in pairs)


# ------------------------------------------------------------------ one converter per layout
def _records(record: Mapping[str, Any], where: str) -> list[EvalExample]:
    context = _text(_field(record, "context", where, "records"), "context", where)
    if record.get("questions") is not None:
        questions = record["questions"]
        answers = _field(record, "answers", where, "records")
        if isinstance(answers, Mapping):  # columnar {"text": [...]}: one entry per question
            answers = answers.get("text")
        if not isinstance(questions, list) or not isinstance(answers, list) or len(questions) != len(answers):
            raise InvalidInputError(f"{where}: 'questions' and 'answers' must be lists of the same length.")
        pairs = list(zip(questions, answers))
    else:
        question = _field(record, "question", where, "records")
        answer = record["answers"] if record.get("answers") is not None else record.get("answer")
        if answer is None:
            raise InvalidInputError(f"{where} has no field 'answers' (or 'answer') (the records layout needs it).")
        pairs = [(question, answer)]
    base = record.get("id")
    return [
        EvalExample(context, _text(q, "question", where), _gold(a, f"{where}, question {i}"),
                    None if base is None else (str(base) if len(pairs) == 1 else f"{base}-{i}"))
        for i, (q, a) in enumerate(pairs)
    ]


def _squad(record: Mapping[str, Any], where: str) -> list[EvalExample]:
    answers = _field(record, "answers", where, "squad")
    if isinstance(answers, Mapping) and not [a for a in answers.get("text") or [] if a.strip()]:
        raise _Skip
    return _records(record, where)


def _columns(value: Any, names: Sequence[str]) -> dict[str, list[Any]] | None:
    """A sequence-of-struct column as a dict of lists, whether ``datasets`` gave a dict of lists
    (``Sequence`` features) or a list of dicts (``List`` features)."""
    if isinstance(value, Mapping):
        return {n: value.get(n) for n in names}
    if isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
        return {n: [v.get(n) for v in value] for n in names}
    return None


def _hotpotqa(record: Mapping[str, Any], where: str) -> list[EvalExample]:
    context = _field(record, "context", where, "hotpotqa")
    if isinstance(context, list) and all(isinstance(p, list) and len(p) == 2 for p in context):
        context = {"title": [p[0] for p in context], "sentences": [p[1] for p in context]}  # original JSON
    columns = _columns(context, ("title", "sentences"))
    if columns is None or not isinstance(columns["title"], list) or not isinstance(columns["sentences"], list) \
            or len(columns["title"]) != len(columns["sentences"]):
        raise InvalidInputError(f"{where}: 'context' must hold 'title' and 'sentences' lists of the same length.")
    document = _paragraphs((title, "".join(sentences)) for title, sentences in zip(columns["title"],
                                                                                   columns["sentences"]))
    return [EvalExample(_text(document, "context", where),
                        _text(_field(record, "question", where, "hotpotqa"), "question", where),
                        _gold(_field(record, "answer", where, "hotpotqa"), where), _id(record, "id", "_id"))]


def _msmarco(record: Mapping[str, Any], where: str) -> list[EvalExample]:
    passages = _columns(_field(record, "passages", where, "msmarco"), ("passage_text",))
    texts = None if passages is None else passages["passage_text"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError(f"{where}: 'passages' needs a 'passage_text' list.")
    answers = list(_field(record, "answers", where, "msmarco")) + list(record.get("wellFormedAnswers") or [])
    answers = [a for a in answers if a != NO_ANSWER]
    if not answers:
        raise _Skip
    return [EvalExample(_text(_paragraphs(("", t) for t in texts), "context", where),
                        _text(_field(record, "query", where, "msmarco"), "query", where),
                        _gold(answers, where), _id(record, "query_id"))]


def _musique(record: Mapping[str, Any], where: str) -> list[EvalExample]:
    if record.get("answerable") is False:
        raise _Skip
    paragraphs = _field(record, "paragraphs", where, "musique")
    if not isinstance(paragraphs, list) or not all(isinstance(p, Mapping) for p in paragraphs):
        raise InvalidInputError(f"{where}: 'paragraphs' must be a list of {{'title', 'paragraph_text'}} objects.")
    document = _paragraphs((p.get("title") or "", p.get("paragraph_text") or "") for p in paragraphs)
    answers = [_field(record, "answer", where, "musique"), *(record.get("answer_aliases") or [])]
    return [EvalExample(_text(document, "context", where),
                        _text(_field(record, "question", where, "musique"), "question", where),
                        _gold(answers, where), _id(record, "id"))]


def _id(record: Mapping[str, Any], *names: str) -> str | None:
    return next((str(record[n]) for n in names if record.get(n) is not None), None)


LAYOUTS: dict[str, Callable[[Mapping[str, Any], str], list[EvalExample]]] = {
    "records": _records,
    "squad": _squad,
    "hotpotqa": _hotpotqa,
    "msmarco": _msmarco,
    "musique": _musique,
}


def detect_layout(record: Mapping[str, Any]) -> str:
    """The layout of a record, from the fields it has (see the module docstring)."""
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"A record must be a JSON object, not {type(record).__name__}.")
    if "passages" in record and "query" in record:
        return "msmarco"
    if "paragraphs" in record and "question" in record:
        return "musique"
    if isinstance(record.get("context"), (Mapping, list)):
        return "hotpotqa"
    answers = record.get("answers")
    if isinstance(answers, Mapping) and "answer_start" in answers and "question" in record:
        return "squad"
    return "records"


def examples_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    layout: str = "auto",
    limit: int | None = None,
    source: str = "data",
    location: Callable[[int], str] | None = None,
) -> EvalData:
    """Convert raw records of one layout (``"auto"``: detected from the first) to examples.

    Args:
        records: The records, in order.
        layout: One of ``LAYOUTS`` or ``"auto"``.
        limit: Stop after this many examples.
        source: Name of the source, for messages.
        location: Names record ``i`` in error messages (default ``"record i of SOURCE"``).
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise InvalidInputError(f"Unknown data layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}.")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be at least 1, not {limit}.")
    where = location or (lambda i: f"record {i + 1} of {source}")
    examples: list[EvalExample] = []
    skipped = 0
    for index, record in enumerate(records):
        if limit is not None and len(examples) >= limit:
            break
        if layout == "auto":
            layout = detect_layout(record)
        try:
            examples += LAYOUTS[layout](record, where(index))
        except _Skip:
            skipped += 1
    if not examples:
        raise InvalidInputError(f"{source} holds no examples" + (f" ({skipped} records without a gold answer)."
                                                                 if skipped else "."))
    if skipped:
        logger.warning("%s: skipped %d records without a gold answer.", source, skipped)
    return EvalData(examples[:limit], "records" if layout == "auto" else layout, source, skipped)


# ------------------------------------------------------------------ sources
def _json_lines(path: Path) -> Iterator[Mapping[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidInputError(f"{path} line {number} is not valid JSON: {error.msg}.") from None


def _squad_file_records(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The official SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas"}]}]}) as Hub rows."""
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers") or []
                yield {"id": qa.get("id"), "context": paragraph.get("context"), "question": qa.get("question"),
                       "answers": {"text": [a.get("text", "") for a in answers],
                                   "answer_start": [a.get("answer_start", -1) for a in answers]}}


def _json_file(path: Path, layout: str, limit: int | None) -> EvalData:
    if path.suffix == ".jsonl":
        return examples_from_records(_json_lines(path), layout=layout, limit=limit, source=str(path),
                                     location=lambda i: f"record {i + 1} of {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} is not valid JSON (line {error.lineno}): {error.msg}.") from None
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        first = document["data"][0] if document["data"] else {}
        records = _squad_file_records(document) if "paragraphs" in first else iter(document["data"])
        if "paragraphs" in first and layout == "auto":
            layout = "squad"
    elif isinstance(document, list):
        records = iter(document)
    else:
        raise InvalidInputError(f"{path} must hold a list of records (or SQuAD's {{'data': [...]}}).")
    return examples_from_records(records, layout=layout, limit=limit, source=str(path))


def _hub_dataset(source: str, config: str | None, split: str) -> Any:
    import datasets

    path = Path(source)
    try:
        if path.is_file():
            builder = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(path.suffix)
            if builder is None:
                raise InvalidInputError(f"{path}: unsupported file type (use .jsonl, .json, .parquet, .csv, .arrow).")
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(source, config, split=split)
    except InvalidInputError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        kind = "directory" if path.is_dir() else "dataset"
        message = " ".join(str(error).split()) or type(error).__name__
        raise InvalidInputError(f"Cannot load the {kind} {source!r} (config {config}, split {split!r}): "
                                f"{message}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InvalidInputError(f"{source} has no split {split!r}; it has {', '.join(loaded)}.")
        loaded = loaded[split]
    return loaded


def load_examples(
    source: str | Path | Sequence[Any] | Any,
    *,
    split: str = "test",
    config: str | None = None,
    layout: str = "auto",
    limit: int | None = None,
) -> EvalData:
    """Read evaluation examples from ``source`` (see the module docstring).

    Args:
        source: A path, a Hub dataset id, a ``datasets.Dataset`` / ``DatasetDict``, or a list of
            ``EvalExample`` / record dicts.
        split: Split of a Hub dataset or ``DatasetDict`` (ignored for single files).
        config: Hub dataset configuration (``"distractor"`` for HotpotQA, ``"v1.1"`` for MS MARCO).
        layout: ``"auto"`` or one of ``LAYOUTS``.
        limit: Keep the first ``limit`` examples (questions).

    Raises:
        InvalidInputError: unreadable source, unknown layout, a record missing a field, an empty
            context or question, no gold answer.
    """
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)) and source and all(
        isinstance(e, EvalExample) for e in source
    ):
        return examples_from_records([asdict(e) for e in source], layout="records", limit=limit, source="examples")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix in (".jsonl", ".json") and not path.is_file():
            raise InvalidInputError(f"No such data file: {path}.")
        if path.suffix in (".jsonl", ".json"):
            return _json_file(path, layout, limit)
        name = str(source)
        rows = _hub_dataset(name, config, split)
    else:
        import datasets

        name = type(source).__name__
        rows = source
        if isinstance(source, datasets.DatasetDict):
            if split not in source:
                raise InvalidInputError(f"The DatasetDict has no split {split!r}; it has {', '.join(source)}.")
            rows = source[split]
    return examples_from_records(rows, layout=layout, limit=limit, source=name)
