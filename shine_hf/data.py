"""Training data for SHINE hypernetworks: pretraining mix, QA instruction data, collator, toy facts.

Every training sample pairs a *context* (the document the hypernetwork reads) with a
*conversation* (what the backbone sees, with the generated LoRA, while the loss is computed):

- ``context_input_ids``: the document, tokenized with a plain tokenizer call (no chat template).
- ``input_ids`` / ``labels``: the conversation in the backbone's chat template with NO system
  prompt. Each user turn is followed by the assistant answer; ``labels`` are -100 everywhere
  except the answer tokens and the end-of-turn text after each answer (Qwen3: ``<|im_end|>\\n``).
  The tokens in front of every answer are exactly the generation prompt that inference uses
  (``question_prompt`` for the first turn, the rendered history + next user turn afterwards).
- ``length``: context + conversation tokens, for ``group_by_length`` style samplers.

Sources: any text corpus for the pretraining mix (DESIGN.md section 2: reconstruction samples
``<RECON>`` and completion samples ``<COMP>``) and QA records (``context`` with
``question``/``answer`` or ``questions``/``answers``, SQuAD ``answers: {"text": [...]}`` too) for
instruction fine-tuning. ``synthetic_facts`` makes a toy QA set about invented people whose facts
exist only in their documents. ``ShineDataCollator`` pads a list of samples into the batch dict the
model's training forward takes.

Long samples are truncated to ``max_context_tokens`` / ``max_conversation_tokens``; every
truncation is counted in a ``DataStats`` object that the ``build_*`` functions return and log.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, List, Value, concatenate_datasets

from .modeling.prompting import EMPTY_THINK_BLOCK, question_prompt, render_chat

__all__ = [
    "CITIES",
    "COMPANIES",
    "COMP_TOKEN",
    "FACT_TEMPLATES",
    "IGNORE_INDEX",
    "ONE_TOKEN_NAMES",
    "QA_FEATURES",
    "RECON_TOKEN",
    "SHINE_SPECIAL_TOKENS",
    "TOKENIZED_FEATURES",
    "ChatFormat",
    "DataStats",
    "ShineDataCollator",
    "TokenizedConversation",
    "add_shine_special_tokens",
    "build_pretraining_dataset",
    "build_qa_dataset",
    "chat_format",
    "completion_context",
    "fact_attribute",
    "load_qa_dataset",
    "load_text_dataset",
    "pack_records",
    "pretraining_records",
    "shuffle_qa_pairs",
    "split_qa_records",
    "synthetic_facts",
    "synthetic_facts_about",
    "tokenize_context",
    "tokenize_conversation",
    "tokenize_records",
]

logger = logging.getLogger(__name__)

RECON_TOKEN = "<RECON>"
COMP_TOKEN = "<COMP>"
SHINE_SPECIAL_TOKENS = (RECON_TOKEN, COMP_TOKEN)
IGNORE_INDEX = -100

TOKENIZED_FEATURES = Features(
    {
        "context_input_ids": List(Value("int32")),
        "input_ids": List(Value("int32")),
        "labels": List(Value("int32")),
        "length": Value("int32"),
    }
)
QA_FEATURES = Features(
    {
        "context": Value("string"),
        "questions": List(Value("string")),
        "answers": List(Value("string")),
    }
)


# --------------------------------------------------------------------------------------------
# Special tokens
# --------------------------------------------------------------------------------------------


def add_shine_special_tokens(tokenizer: Any) -> int:
    """Register ``<RECON>`` and ``<COMP>`` as additional special tokens of ``tokenizer``.

    Idempotent: tokens that are already special are left alone.

    Returns:
        How many tokens were new to the vocabulary. When it is not zero, resize the backbone's
        embeddings: ``model.resize_token_embeddings(len(tokenizer))``.
    """
    missing = [t for t in SHINE_SPECIAL_TOKENS if t not in tokenizer.all_special_tokens]
    if not missing:
        return 0
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    if "replace_extra_special_tokens" in params:  # transformers >= 5
        return tokenizer.add_special_tokens(
            {"extra_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return tokenizer.add_special_tokens(  # transformers 4.x
        {"additional_special_tokens": missing}, replace_additional_special_tokens=False
    )


def _require_shine_special_tokens(tokenizer: Any) -> None:
    missing = [t for t in SHINE_SPECIAL_TOKENS if t not in tokenizer.get_added_vocab()]
    if missing:
        raise ValueError(
            f"The tokenizer lacks the SHINE special tokens {missing}: call "
            "add_shine_special_tokens(tokenizer) and resize the backbone's embeddings first."
        )


# --------------------------------------------------------------------------------------------
# Chat template → conversation tokens
# --------------------------------------------------------------------------------------------

_QUESTION_SENTINEL = "SHINEQUESTIONSENTINEL"
_ANSWER_SENTINEL = "SHINEANSWERSENTINEL"


@dataclass(frozen=True)
class ChatFormat:
    """Where an assistant answer sits in a chat template, relative to the generation prompt.

    Attributes:
        answer_prefix: Text the template puts between the generation prompt and the answer
            content; usually empty (Qwen3's empty think block is dropped, as at inference).
        end_of_turn: Text after the answer content that closes the turn (Qwen3:
            ``<|im_end|>\\n``; Llama 3: ``<|eot_id|>``). Supervised together with the answer.
    """

    answer_prefix: str
    end_of_turn: str


def chat_format(tokenizer: Any) -> ChatFormat:
    """Derive the answer prefix and end-of-turn text from the tokenizer's own chat template.

    Renders a one-turn conversation with a sentinel answer and compares it with the generation
    prompt for the same question. Raises ``ValueError`` when the template does not render the
    answer or its generation prompt is not a prefix of the rendered conversation.
    """
    prompt = question_prompt(tokenizer, _QUESTION_SENTINEL)
    messages = [
        {"role": "user", "content": _QUESTION_SENTINEL},
        {"role": "assistant", "content": _ANSWER_SENTINEL},
    ]
    rendered = render_chat(tokenizer, messages, add_generation_prompt=False)
    start = rendered.find(_ANSWER_SENTINEL)
    if start < 0:
        raise ValueError("The chat template does not render the assistant message's content.")
    head, end_of_turn = rendered[:start], rendered[start + len(_ANSWER_SENTINEL) :]
    if not head.startswith(prompt):
        raise ValueError(
            "The chat template's generation prompt is not a prefix of the rendered conversation: "
            f"{prompt!r} vs {head!r}."
        )
    answer_prefix = head[len(prompt) :]
    if answer_prefix == EMPTY_THINK_BLOCK:  # inference prompts strip it (modeling/prompting.py)
        answer_prefix = ""
    if not end_of_turn:
        end_of_turn = tokenizer.eos_token or ""
        logger.warning("The chat template ends no turn; using the EOS token %r.", end_of_turn)
    return ChatFormat(answer_prefix=answer_prefix, end_of_turn=end_of_turn)


@dataclass
class TokenizedConversation:
    """A conversation's tokens and labels, with what truncation removed.

    Attributes:
        input_ids: Prompt and answer tokens of every kept turn.
        labels: ``input_ids`` on answer + end-of-turn tokens, ``IGNORE_INDEX`` elsewhere.
        turns_kept: Turns present (fully, or the first one cut short).
        turns_dropped: Later turns left out because they did not fit.
        answer_cut: Whether the first turn's answer was cut to fit.
    """

    input_ids: list[int]
    labels: list[int]
    turns_kept: int
    turns_dropped: int
    answer_cut: bool

    @property
    def num_supervised(self) -> int:
        """Number of tokens with a label."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_conversation(
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    max_tokens: int | None = None,
    fmt: ChatFormat | None = None,
) -> TokenizedConversation:
    """Tokenize question/answer turns as the backbone sees them, with assistant-only labels.

    Turn i contributes the text that the generation prompt for question i adds to the rendered
    history of turns < i (for i = 0 exactly ``question_prompt(tokenizer, q)``), then
    ``answer_prefix + answer + end_of_turn``. Prompts and answers are tokenized separately
    (``add_special_tokens=False``), so the prompt tokens are the ones inference feeds the model.
    Questions and answers are stripped of surrounding whitespace.

    Truncation to ``max_tokens`` happens at turn boundaries: later turns are dropped. Only when the
    first turn alone does not fit is its answer cut short (possibly to nothing).
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
    fmt = fmt or chat_format(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    history: list[dict[str, str]] = []
    rendered = ""
    for turn, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        question, answer = question.strip(), answer.strip()
        if history:
            prompt = render_chat(tokenizer, [*history, {"role": "user", "content": question}], True)
        else:
            prompt = question_prompt(tokenizer, question)
        if not prompt.startswith(rendered):
            raise ValueError(
                "The chat template renders earlier turns differently in later prompts."
            )
        prompt_ids = _encode(tokenizer, prompt[len(rendered) :])
        answer_text = fmt.answer_prefix + answer + fmt.end_of_turn
        answer_ids = _encode(tokenizer, answer_text)
        room = None if max_tokens is None else max_tokens - len(input_ids) - len(prompt_ids)
        if room is not None and room < len(answer_ids):
            if turn > 0:
                return TokenizedConversation(input_ids, labels, turn, len(questions) - turn, False)
            prompt_ids = prompt_ids[:max_tokens]
            answer_ids = answer_ids[: max(room, 0)]
            input_ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
            return TokenizedConversation(input_ids, labels, 1, len(questions) - 1, True)
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        rendered = prompt + answer_text
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return TokenizedConversation(input_ids, labels, len(questions), 0, False)


def tokenize_context(
    tokenizer: Any, text: str, max_tokens: int | None = None
) -> tuple[list[int], bool]:
    """Tokenize a context document with a plain tokenizer call; return (ids, was_truncated)."""
    ids = list(tokenizer(text)["input_ids"])
    if max_tokens is not None and len(ids) > max_tokens:
        return ids[:max_tokens], True
    return ids, False


# --------------------------------------------------------------------------------------------
# Records (context, questions, answers) → tokenized samples, with statistics
# --------------------------------------------------------------------------------------------


@dataclass
class DataStats:
    """What tokenization did to a set of records; truncation is never silent.

    Attributes:
        records: Records tokenized (after optional QA splitting and context packing).
        samples: Samples kept.
        context_truncated: Samples whose context was cut to ``max_context_tokens``.
        conversation_truncated: Samples whose conversation lost turns or had its answer cut.
        turns_dropped: QA turns left out in total.
        answers_cut: Samples whose (first) answer was cut short.
        dropped_no_supervision: Records dropped because no supervised token was left.
    """

    records: int = 0
    samples: int = 0
    context_truncated: int = 0
    conversation_truncated: int = 0
    turns_dropped: int = 0
    answers_cut: int = 0
    dropped_no_supervision: int = 0

    @property
    def lossy(self) -> bool:
        """Whether any record lost text: truncated, or dropped for lack of supervision."""
        return bool(
            self.context_truncated or self.conversation_truncated or self.dropped_no_supervision
        )

    def summary(self) -> str:
        """One log line with every count."""
        return "SHINE data: " + ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


_STAT_COLUMNS = ("_context_truncated", "_turns_dropped", "_answer_cut", "_num_supervised")


def _tokenize_record(
    record: Mapping[str, Any],
    tokenizer: Any,
    fmt: ChatFormat,
    max_context_tokens: int | None,
    max_conversation_tokens: int | None,
) -> dict[str, Any]:
    context_ids, context_truncated = tokenize_context(
        tokenizer, record["context"], max_context_tokens
    )
    conv = tokenize_conversation(
        tokenizer, record["questions"], record["answers"], max_conversation_tokens, fmt
    )
    return {
        "context_input_ids": context_ids,
        "input_ids": conv.input_ids,
        "labels": conv.labels,
        "length": len(context_ids) + len(conv.input_ids),
        "_context_truncated": context_truncated,
        "_turns_dropped": conv.turns_dropped,
        "_answer_cut": conv.answer_cut,
        "_num_supervised": conv.num_supervised,
    }


def _collect_stats(tokenized: Dataset) -> DataStats:
    table = tokenized.select_columns(list(_STAT_COLUMNS)).to_pandas()
    turns_dropped = table["_turns_dropped"].to_numpy()
    answer_cut = table["_answer_cut"].to_numpy(dtype=bool)
    no_supervision = table["_num_supervised"].to_numpy() == 0
    return DataStats(
        records=len(table),
        samples=int((~no_supervision).sum()),
        context_truncated=int(table["_context_truncated"].sum()),
        conversation_truncated=int(((turns_dropped > 0) | answer_cut).sum()),
        turns_dropped=int(turns_dropped.sum()),
        answers_cut=int(answer_cut.sum()),
        dropped_no_supervision=int(no_supervision.sum()),
    )


def tokenize_records(
    records: Dataset,
    tokenizer: Any,
    *,
    max_context_tokens: int | None = 1024,
    max_conversation_tokens: int | None = 1024,
    split_qa: bool = False,
    shuffle_qa: bool = False,
    seed: int = 0,
    pack_contexts: bool = False,
    pack_separator: str = "\n\n",
) -> tuple[Dataset, DataStats]:
    """Turn QA-schema records (``context``, ``questions``, ``answers``) into training samples.

    Args:
        records: Dataset with the columns of ``load_qa_dataset``; other columns are dropped.
        tokenizer: The backbone's tokenizer (with its chat template).
        max_context_tokens: Context budget; longer contexts keep their first tokens.
        max_conversation_tokens: Conversation budget; see ``tokenize_conversation``.
        split_qa: One sample per QA pair instead of one multi-turn sample per record.
        shuffle_qa: Put each record's QA pairs in a random order (``shuffle_qa_pairs``, seeded by
            ``seed``), so no question is always asked at the same turn.
        seed: Seed of ``shuffle_qa``.
        pack_contexts: Pack consecutive records into one sample (see ``pack_records``).
        pack_separator: Text between packed contexts (a blank line).

    Returns:
        The samples (columns ``context_input_ids``, ``input_ids``, ``labels``, ``length``;
        records with no supervised token left are dropped) and their ``DataStats``, also logged
        (as a warning when anything was truncated or dropped).
    """
    if shuffle_qa:
        records = shuffle_qa_pairs(records, seed)
    if split_qa:
        records = split_qa_records(records)
    if pack_contexts:
        records = pack_records(
            records,
            tokenizer,
            max_context_tokens=max_context_tokens,
            max_conversation_tokens=max_conversation_tokens,
            separator=pack_separator,
        )
    fmt = chat_format(tokenizer)
    if len(records) == 0:
        logger.warning("SHINE data: no records to tokenize.")
        return Dataset.from_dict(
            {k: [] for k in TOKENIZED_FEATURES}, TOKENIZED_FEATURES
        ), DataStats()
    features = TOKENIZED_FEATURES.copy()
    features.update(
        {
            "_context_truncated": Value("bool"),
            "_turns_dropped": Value("int32"),
            "_answer_cut": Value("bool"),
            "_num_supervised": Value("int32"),
        }
    )
    tokenized = records.map(
        _tokenize_record,
        fn_kwargs={
            "tokenizer": tokenizer,
            "fmt": fmt,
            "max_context_tokens": max_context_tokens,
            "max_conversation_tokens": max_conversation_tokens,
        },
        remove_columns=records.column_names,
        features=features,
        num_proc=None,
        desc="Tokenizing SHINE samples",
    )
    stats = _collect_stats(tokenized)
    tokenized = tokenized.filter(lambda n: n > 0, input_columns="_num_supervised", num_proc=None)
    tokenized = tokenized.remove_columns(list(_STAT_COLUMNS))
    level = logging.WARNING if stats.lossy else logging.INFO
    logger.log(level, stats.summary())
    return tokenized, stats


def shuffle_qa_pairs(records: Dataset, seed: int = 0) -> Dataset:
    """Each record's QA pairs in a random order (record i uses ``random.Random(f"{seed}/{i}")``).

    Multi-turn training samples ask a record's questions in its stored order. When that order is
    fixed (every synthetic-facts document lists birth date, city, ..., employees), the generated
    LoRA learns to answer the k-th attribute at turn k only: on the learning benchmark the
    questions of turns 4-6 scored EM 1.0 at their own turn but 0.17 asked alone."""

    def shuffle(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        questions, answers = [], []
        for index, record_questions, record_answers in zip(
            indices, batch["questions"], batch["answers"], strict=True
        ):
            order = list(range(len(record_questions)))
            random.Random(f"{seed}/{index}").shuffle(order)
            questions.append([record_questions[k] for k in order])
            answers.append([record_answers[k] for k in order])
        return {"questions": questions, "answers": answers}

    return records.map(shuffle, batched=True, with_indices=True, desc="Shuffling QA pairs")


def split_qa_records(records: Dataset) -> Dataset:
    """One record per QA pair: a record with n questions becomes n single-QA records."""

    def explode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"context": [], "questions": [], "answers": []}
        for context, questions, answers in zip(
            batch["context"], batch["questions"], batch["answers"], strict=True
        ):
            for question, answer in zip(questions, answers, strict=True):
                out["context"].append(context)
                out["questions"].append([question])
                out["answers"].append([answer])
        return out

    return records.map(
        explode,
        batched=True,
        remove_columns=records.column_names,
        features=QA_FEATURES,
        num_proc=None,
        desc="Splitting QA pairs",
    )


def pack_records(
    records: Dataset,
    tokenizer: Any,
    *,
    max_context_tokens: int | None = 1024,
    max_conversation_tokens: int | None = 1024,
    separator: str = "\n\n",
    batch_size: int = 1000,
) -> Dataset:
    """Pack consecutive short records into one record: contexts joined, conversations concatenated.

    Greedy, in order, within blocks of ``batch_size`` records: a record joins the current pack
    while the joined context (tokenized exactly) fits ``max_context_tokens`` and the sum of the
    single conversations' token counts fits ``max_conversation_tokens``. A record that does not fit
    alone forms its own pack (and is truncated later, counted). Adds a ``num_documents`` column;
    columns other than ``context``/``questions``/``answers`` are dropped.
    """
    fmt = chat_format(tokenizer)

    def fits(context: str, conversation_tokens: int) -> bool:
        if max_conversation_tokens is not None and conversation_tokens > max_conversation_tokens:
            return False
        return (
            max_context_tokens is None or len(tokenizer(context)["input_ids"]) <= max_context_tokens
        )

    def pack(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            "context": [],
            "questions": [],
            "answers": [],
            "num_documents": [],
        }
        conv_tokens = 0
        for context, questions, answers in zip(
            batch["context"], batch["questions"], batch["answers"], strict=True
        ):
            tokens = len(tokenize_conversation(tokenizer, questions, answers, fmt=fmt).input_ids)
            if out["context"]:
                joined = out["context"][-1] + separator + context
                if fits(joined, conv_tokens + tokens):
                    out["context"][-1] = joined
                    out["questions"][-1] = out["questions"][-1] + list(questions)
                    out["answers"][-1] = out["answers"][-1] + list(answers)
                    out["num_documents"][-1] += 1
                    conv_tokens += tokens
                    continue
            out["context"].append(context)
            out["questions"].append(list(questions))
            out["answers"].append(list(answers))
            out["num_documents"].append(1)
            conv_tokens = tokens
        return out

    features = QA_FEATURES.copy()
    features["num_documents"] = Value("int32")
    return records.map(
        pack,
        batched=True,
        batch_size=batch_size,
        remove_columns=records.column_names,
        features=features,
        num_proc=None,
        desc="Packing contexts",
    )


# --------------------------------------------------------------------------------------------
# Pretraining mix (reconstruction / completion)
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")


def completion_context(text: str, fraction: float) -> str:
    """The start of ``text`` up to and including word ``round(fraction * n_words)`` (at least 1).

    Words are maximal runs of non-whitespace; the original spacing of the prefix is kept.
    """
    ends = [m.end() for m in _WORD.finditer(text)]
    if not ends:
        return ""
    keep = min(len(ends), max(1, round(fraction * len(ends))))
    return text[: ends[keep - 1]]


def _pretraining_sample(
    text: str,
    index: int,
    seed: int,
    recon_prob: float,
    completion_range: tuple[float, float],
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, index])
    text = text.strip()
    if rng.random() < recon_prob:
        return {"context": text, "questions": [RECON_TOKEN], "answers": [text], "kind": "recon"}
    fraction = rng.uniform(*completion_range)
    context = completion_context(text, fraction)
    return {"context": context, "questions": [COMP_TOKEN], "answers": [text], "kind": "comp"}


def pretraining_records(
    texts: Dataset,
    *,
    recon_prob: float = 0.5,
    completion_range: tuple[float, float] = (0.7, 0.9),
    seed: int = 0,
    text_column: str = "text",
) -> Dataset:
    """Pretraining records in the QA schema, plus a ``kind`` column (``recon`` / ``comp``).

    Per text (DESIGN.md section 2): with probability ``recon_prob`` a reconstruction record
    (context = text, question ``<RECON>``, answer = text), else a completion record (context =
    the first fraction of the words, fraction uniform in ``completion_range``; question ``<COMP>``;
    answer = the whole text). Texts without words are skipped. The draw for row i depends only on
    ``(seed, i)``, so the result is deterministic and independent of batching.
    """
    texts = texts.filter(lambda t: bool(t and t.strip()), input_columns=text_column, num_proc=None)
    features = QA_FEATURES.copy()
    features["kind"] = Value("string")
    return texts.map(
        _pretraining_sample,
        input_columns=text_column,
        with_indices=True,
        fn_kwargs={"seed": seed, "recon_prob": recon_prob, "completion_range": completion_range},
        remove_columns=texts.column_names,
        features=features,
        num_proc=None,
        desc="Drawing RECON/COMP samples",
    )


def build_pretraining_dataset(
    source: str | Path | Sequence[str | Path] | Dataset,
    tokenizer: Any,
    *,
    text_column: str = "text",
    recon_prob: float = 0.5,
    completion_range: tuple[float, float] = (0.7, 0.9),
    seed: int = 0,
    max_context_tokens: int | None = 1024,
    max_conversation_tokens: int | None = 1024,
    pack_contexts: bool = False,
) -> tuple[Dataset, DataStats]:
    """Tokenized pretraining samples from any text source (see ``load_text_dataset``).

    The tokenizer must already have ``<RECON>``/``<COMP>`` (``add_shine_special_tokens``).
    Returns the samples and their ``DataStats``.
    """
    _require_shine_special_tokens(tokenizer)
    texts = load_text_dataset(source, text_column=text_column)
    records = pretraining_records(
        texts, recon_prob=recon_prob, completion_range=completion_range, seed=seed
    )
    return tokenize_records(
        records,
        tokenizer,
        max_context_tokens=max_context_tokens,
        max_conversation_tokens=max_conversation_tokens,
        pack_contexts=pack_contexts,
    )


def build_qa_dataset(
    source: str | Path | Sequence[str | Path] | Dataset,
    tokenizer: Any,
    *,
    split_qa: bool = False,
    shuffle_qa: bool = False,
    seed: int = 0,
    max_context_tokens: int | None = 1024,
    max_conversation_tokens: int | None = 1024,
    pack_contexts: bool = False,
) -> tuple[Dataset, DataStats]:
    """Tokenized instruction samples from QA records (see ``load_qa_dataset``); no system prompt.

    Options as in ``tokenize_records``. Returns the samples and their ``DataStats``.
    """
    return tokenize_records(
        load_qa_dataset(source),
        tokenizer,
        max_context_tokens=max_context_tokens,
        max_conversation_tokens=max_conversation_tokens,
        split_qa=split_qa,
        shuffle_qa=shuffle_qa,
        seed=seed,
        pack_contexts=pack_contexts,
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_JSON_SUFFIXES = (".json", ".jsonl")
_TEXT_SUFFIXES = (".txt",)


def _expand_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [source] if isinstance(source, (str, Path)) else list(source)
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix in _JSON_SUFFIXES + _TEXT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"No .txt/.json/.jsonl files in {item}.")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(item)
    return paths


def _json_dataset(paths: list[Path], cache_dir: str | None) -> Dataset:
    return Dataset.from_json([str(p) for p in paths], cache_dir=cache_dir)


def _text_column(dataset: Dataset, text_column: str) -> Dataset:
    dataset = dataset.select_columns([text_column])
    return dataset if text_column == "text" else dataset.rename_column(text_column, "text")


def load_text_dataset(
    path_or_dataset: str | Path | Sequence[str | Path] | Dataset,
    text_column: str = "text",
    *,
    document_per: Literal["line", "file"] = "line",
    cache_dir: str | None = None,
) -> Dataset:
    """A dataset with one ``text`` column, one document per row; empty documents are dropped.

    Accepts a ``datasets.Dataset`` (``text_column`` is used), JSON/JSONL files (``text_column`` of
    each record), plain ``.txt`` files, a directory of such files, or a list of paths. For
    ``.txt`` files (``text_column`` unused), ``document_per="line"`` makes every non-empty line a
    document; ``document_per="file"`` makes every file one document. JSON and text files cannot be
    mixed.
    """
    if isinstance(path_or_dataset, Dataset):
        dataset = _text_column(path_or_dataset, text_column)
    else:
        paths = _expand_paths(path_or_dataset)
        kinds = {p.suffix in _JSON_SUFFIXES for p in paths}
        if len(kinds) > 1:
            raise ValueError("Pass either JSON/JSONL files or text files, not both.")
        if kinds == {True}:
            dataset = _text_column(_json_dataset(paths, cache_dir), text_column)
        elif document_per == "file":
            dataset = Dataset.from_dict({"text": [p.read_text(encoding="utf-8") for p in paths]})
        elif document_per == "line":
            dataset = Dataset.from_text([str(p) for p in paths], cache_dir=cache_dir)
        else:
            raise ValueError(f"document_per must be 'line' or 'file', not {document_per!r}.")
    return dataset.filter(lambda t: bool(t and t.strip()), input_columns="text", num_proc=None)


def _first_answer(answer: Any) -> str:
    """The first reference of an answer given as a string, a list, or a SQuAD dict."""
    if isinstance(answer, Mapping):
        answer = answer["text"]
    if isinstance(answer, (list, tuple)):
        if not answer:
            raise ValueError("An answer has no reference text.")
        return _first_answer(answer[0])
    return str(answer)


def _normalize_qa_record(record: Mapping[str, Any]) -> dict[str, Any]:
    if record.get("questions") is not None:
        questions = list(record["questions"])
        answers = record["answers"]
        if isinstance(answers, Mapping):  # columnar SQuAD-style {"text": [...]} per question
            answers = answers["text"]
        answers = [_first_answer(a) for a in answers]
    elif record.get("question") is not None:
        questions = [record["question"]]
        answer = record["answer"] if record.get("answer") is not None else record["answers"]
        answers = [_first_answer(answer)]
    else:
        raise ValueError("A QA record needs 'question' or 'questions'.")
    if len(questions) != len(answers):
        raise ValueError(f"A QA record has {len(questions)} questions and {len(answers)} answers.")
    return {"context": record["context"], "questions": questions, "answers": answers}


def load_qa_dataset(
    path_or_dataset: str | Path | Sequence[str | Path] | Dataset,
    *,
    cache_dir: str | None = None,
) -> Dataset:
    """QA records normalized to ``context`` (str), ``questions`` and ``answers`` (lists of str).

    Accepts a ``datasets.Dataset`` or JSON/JSONL files (a directory or a list of them). A record
    has ``context`` and either ``question`` + ``answer`` / ``answers`` (SQuAD-style
    ``{"text": [...]}`` or a list of references: the first is used) or ``questions`` + ``answers``
    (one answer per question, each a string, a reference list or a SQuAD dict). Other columns are
    dropped.
    """
    if isinstance(path_or_dataset, Dataset):
        dataset = path_or_dataset
    else:
        dataset = _json_dataset(_expand_paths(path_or_dataset), cache_dir)
    return dataset.map(
        _normalize_qa_record,
        remove_columns=dataset.column_names,
        features=QA_FEATURES,
        num_proc=None,
        desc="Normalizing QA records",
    )


# --------------------------------------------------------------------------------------------
# Collator
# --------------------------------------------------------------------------------------------


class ShineDataCollator:
    """Pad samples into the batch dict of SHINE's training forward (right padding).

    The batch holds exactly ``context_input_ids``, ``context_attention_mask``, ``input_ids``,
    ``attention_mask`` and ``labels`` (LongTensors); other sample keys (e.g. ``length``) are
    ignored. Ids are padded with the tokenizer's pad id (its EOS id if it has none), labels with
    ``IGNORE_INDEX``. ``pad_to_multiple_of`` rounds both sequence lengths up.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token.")
        self.pad_token_id = int(pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, sequences: Sequence[Sequence[int]]) -> int:
        width = max(len(s) for s in sequences)
        multiple = self.pad_to_multiple_of
        if multiple:
            width = -(-width // multiple) * multiple
        return width

    def _pad(self, sequences: Sequence[Sequence[int]], value: int, width: int) -> torch.Tensor:
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        return out

    def _mask(self, sequences: Sequence[Sequence[int]], width: int) -> torch.Tensor:
        lengths = torch.tensor([len(s) for s in sequences])
        return (torch.arange(width)[None, :] < lengths[:, None]).long()

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate ``features`` (each with ``context_input_ids``, ``input_ids``, ``labels``)."""
        contexts = [f["context_input_ids"] for f in features]
        inputs = [f["input_ids"] for f in features]
        labels = [f["labels"] for f in features]
        context_width, input_width = self._width(contexts), self._width(inputs)
        return {
            "context_input_ids": self._pad(contexts, self.pad_token_id, context_width),
            "context_attention_mask": self._mask(contexts, context_width),
            "input_ids": self._pad(inputs, self.pad_token_id, input_width),
            "attention_mask": self._mask(inputs, input_width),
            "labels": self._pad(labels, IGNORE_INDEX, input_width),
        }


# --------------------------------------------------------------------------------------------
# Synthetic facts about invented people
# --------------------------------------------------------------------------------------------

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


def _one_token_names() -> tuple[str, ...]:
    words = [
        (a + b + c).capitalize()
        for a in _NAME_SYLLABLES
        for b in _NAME_SYLLABLES
        for c in _NAME_SYLLABLES
        if len({a, b, c}) == 3
    ]
    random.Random(1931).shuffle(words)
    return tuple(words[:1000])


ONE_TOKEN_NAMES = _one_token_names()
"""1000 invented one-word names (three syllables); fixed across versions and seeds."""
CITIES = tuple(a + b for a in _PLACE_ONSETS for b in _PLACE_ENDINGS)
COMPANIES = tuple(a + b for a in _COMPANY_ONSETS for b in _COMPANY_ENDINGS)

# (sentence template, its (question, answer) templates); fields of _entity_facts.
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
            picked = sorted(
                rng.sample(range(len(entity_qa)), min(questions_per_entity, len(entity_qa)))
            )
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
        raise ValueError(
            "split_fractions needs three positive fractions (train, validation, test)."
        )
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

    Each entity (an invented name) gets a birth date, a city, a profession, a height and a company
    with an employee count, written with the fixed sentence templates of ``FACT_TEMPLATES``; each
    document describes 1 or 2 entities (``entities_per_document``, inclusive) and asks up to six
    questions per entity ("When was X born?" → "12 May 1931", "Where does X live?" → "Tarsk", …),
    every answer a substring of the document. Names, cities and companies are built from syllable
    lists, so no real corpus knows these facts.

    Args:
        num_entities: Entities in all splits together (at least 3).
        seed: Everything is deterministic given the seed.
        entities_per_document: Inclusive range of entities per document.
        split_fractions: Entity shares of train / validation / test; splits have DISJOINT
            entities (every split gets at least one).
        one_token_names: Draw one-word names from ``ONE_TOKEN_NAMES`` (at most 1000 entities),
            so a word-level tokenizer gives every name (and city, company) a single token.
            Otherwise names are two invented words ("Kalon Mitavik").
        questions_per_entity: Keep this many randomly chosen QA pairs per entity (None: all six).
        shuffle_sentences: Shuffle the sentences of each document.

    Returns:
        ``DatasetDict`` with ``train``/``validation``/``test``; columns ``context``, ``questions``,
        ``answers`` (the QA schema of ``load_qa_dataset``) and ``entities`` (names described).
    """
    low, high = entities_per_document
    if not 1 <= low <= high:
        raise ValueError(f"Bad entities_per_document {entities_per_document}.")
    rng = random.Random(seed)
    if one_token_names:
        if num_entities > len(ONE_TOKEN_NAMES):
            raise ValueError(f"one_token_names allows at most {len(ONE_TOKEN_NAMES)} entities.")
        names = rng.sample(ONE_TOKEN_NAMES, num_entities)
    else:
        names = _full_names(rng, num_entities)
        rng.shuffle(names)
    splits = {}
    start = 0
    for split, size in zip(
        ("train", "validation", "test"), _split_sizes(num_entities, split_fractions), strict=True
    ):
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

    Lets evaluations report scores per question type."""
    for pattern, attribute in _QUESTION_PATTERNS:
        if pattern.fullmatch(question.strip()):
            return attribute
    return None


def _question_patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    patterns = []
    for _, qa_templates in FACT_TEMPLATES:
        for question, answer in qa_templates:
            regex = re.sub(r"\\\{\w+\\\}", ".+?", re.escape(question))
            patterns.append((re.compile(regex), re.search(r"\{(\w+)\}", answer).group(1)))
    return tuple(patterns)


_QUESTION_PATTERNS = _question_patterns()


def _check_vocabularies_disjoint(groups: Iterable[Iterable[str]]) -> None:
    seen: set[str] = set()
    for group in groups:
        group = set(group)
        if seen & group:
            raise AssertionError(f"Synthetic vocabularies overlap: {sorted(seen & group)[:5]}")
        seen |= group


_check_vocabularies_disjoint((ONE_TOKEN_NAMES, CITIES, COMPANIES))
