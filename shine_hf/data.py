"""Training data for SHINE hypernetworks: pretraining mix, QA instruction data, collator.

Every training sample pairs a *context* (the document the hypernetwork reads) with a
*conversation* (what the backbone sees, with the generated LoRA, while the loss is computed):

- ``context_input_ids``: the document, tokenized with a plain tokenizer call (no chat template).
- ``input_ids`` / ``labels``: the conversation in the backbone's chat template with NO system
  prompt. Each user turn is followed by the assistant answer; ``labels`` are -100 everywhere
  except the answer tokens and the end-of-turn text after each answer (Qwen3: ``<|im_end|>\\n``).
  The tokens in front of every answer are exactly the generation prompt that inference uses
  (``question_prompt`` for the first turn, the rendered history + next user turn afterwards).
- ``length``: context + conversation tokens, for ``group_by_length`` style samplers.

Sources: any text corpus for the pretraining mix (reconstruction samples ``<RECON>`` and
completion samples ``<COMP>``, see docs/training.md) and QA records (``context`` with
``question``/``answer`` or ``questions``/``answers``, SQuAD ``answers: {"text": [...]}`` too) for
instruction fine-tuning. ``ShineDataCollator`` pads a list of samples into the batch dict the
model's training forward takes.

Composition-aware samples (``group_records`` / ``tokenize_records(compose_chunks=K)``): a sample
groups 1..K records as the *chunks* of one document; ``context_input_ids`` then holds one id list
per chunk, the conversation asks the questions of every chunk (shuffled), and the collator adds
``context_sample_index`` and ``context_compose``, so the model composes the chunks' LoRAs inside the
graph (docs/long_documents.md). Data that cannot be used (a missing or malformed file, missing
columns, a question without an answer) raises ``DataError`` naming the problem. A toy QA set
about invented people lives in ``shine_hf.testing.facts``.

Long samples are truncated to ``max_context_tokens`` / ``max_conversation_tokens``; every
truncation is counted in a ``DataStats`` object that the ``build_*`` functions return and log.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, concatenate_datasets
from datasets.exceptions import DatasetGenerationError

from .modeling import ShineError, pad_token_ids
from .modeling.prompting import EMPTY_THINK_BLOCK, question_prompt, render_chat

__all__ = [
    "COMPOSED_FEATURES",
    "COMP_TOKEN",
    "IGNORE_INDEX",
    "MAX_CONTEXT_TOKENS",
    "MAX_CONVERSATION_TOKENS",
    "QA_FEATURES",
    "RECON_TOKEN",
    "SHINE_SPECIAL_TOKENS",
    "TOKENIZED_FEATURES",
    "TRAINING_COMPOSE_METHODS",
    "ChatFormat",
    "DataError",
    "DataNotFoundError",
    "DataStats",
    "ShineDataCollator",
    "TokenizedConversation",
    "add_shine_special_tokens",
    "build_pretraining_dataset",
    "build_qa_dataset",
    "chat_format",
    "check_compose_chunks",
    "check_compose_method",
    "completion_context",
    "group_records",
    "load_qa_dataset",
    "load_text_dataset",
    "pack_records",
    "pretraining_records",
    "shuffle_qa_pairs",
    "split_qa_records",
    "tokenize_context",
    "tokenize_conversation",
    "tokenize_records",
]

logger = logging.getLogger(__name__)

RECON_TOKEN = "<RECON>"
COMP_TOKEN = "<COMP>"
SHINE_SPECIAL_TOKENS = (RECON_TOKEN, COMP_TOKEN)
IGNORE_INDEX = -100
MAX_CONTEXT_TOKENS = 1024
"""Default context budget in tokens (the reference's); longer contexts are cut, and counted."""
MAX_CONVERSATION_TOKENS = 1024
"""Default conversation budget in tokens; later turns are dropped to fit, and counted."""

TOKENIZED_FEATURES = Features(
    {
        "context_input_ids": List(Value("int32")),
        "input_ids": List(Value("int32")),
        "labels": List(Value("int32")),
        "length": Value("int32"),
    }
)
COMPOSED_FEATURES = Features(
    {
        "context_input_ids": List(List(Value("int32"))),
        "input_ids": List(Value("int32")),
        "labels": List(Value("int32")),
        "length": Value("int32"),
    }
)
"""Composition-aware samples: ``context_input_ids`` holds one id list per chunk."""
TRAINING_COMPOSE_METHODS = ("concat", "mean")
"""How a composition-aware sample's chunk LoRAs become its adapter in training (``ShineAdapter.compose``)."""
QA_FEATURES = Features(
    {
        "context": Value("string"),
        "questions": List(Value("string")),
        "answers": List(Value("string")),
    }
)


class DataError(ShineError, ValueError):
    """Data that cannot be used: malformed JSON, no records, missing columns, a question without an answer."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or directory does not exist, or a directory holds no data file."""


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
    system_prompt: str | None = None,
) -> TokenizedConversation:
    """Tokenize question/answer turns as the backbone sees them, with assistant-only labels.

    Turn i contributes the text that the generation prompt for question i adds to the rendered
    history of turns < i (for i = 0 exactly ``question_prompt(tokenizer, q, system_prompt)``), then
    ``answer_prefix + answer + end_of_turn``. Prompts and answers are tokenized separately
    (``add_special_tokens=False``), so the prompt tokens are the ones inference feeds the model.
    Questions and answers are stripped of surrounding whitespace. SHINE samples have no system
    prompt; ``system_prompt`` serves backbones trained on the baselines' prompts.

    Truncation to ``max_tokens`` happens at turn boundaries: later turns are dropped. Only when the
    first turn alone does not fit is its answer cut short (possibly to nothing).
    """
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answers.")
    fmt = fmt or chat_format(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    history: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rendered = ""
    for turn, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        question, answer = question.strip(), answer.strip()
        if turn:
            prompt = render_chat(tokenizer, [*history, {"role": "user", "content": question}], True)
        else:
            prompt = question_prompt(tokenizer, question, system_prompt)
        if not prompt.startswith(rendered):
            raise ValueError("The chat template renders earlier turns differently in later prompts.")
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
        records: Records tokenized (after optional QA splitting, context packing or grouping into
            composition-aware samples).
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
    if "contexts" in record:  # a composition-aware sample: one id list per chunk
        chunks = [tokenize_context(tokenizer, text, max_context_tokens) for text in record["contexts"]]
        context_ids: list[Any] = [ids for ids, _ in chunks]
        context_tokens = sum(len(ids) for ids in context_ids)
        context_truncated = any(cut for _, cut in chunks)
    else:
        context_ids, context_truncated = tokenize_context(tokenizer, record["context"], max_context_tokens)
        context_tokens = len(context_ids)
    conv = tokenize_conversation(
        tokenizer, record["questions"], record["answers"], max_conversation_tokens, fmt
    )
    return {
        "context_input_ids": context_ids,
        "input_ids": conv.input_ids,
        "labels": conv.labels,
        "length": context_tokens + len(conv.input_ids),
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
    max_context_tokens: int | None = MAX_CONTEXT_TOKENS,
    max_conversation_tokens: int | None = MAX_CONVERSATION_TOKENS,
    split_qa: bool = False,
    shuffle_qa: bool = False,
    seed: int = 0,
    pack_contexts: bool = False,
    pack_separator: str = "\n\n",
    compose_chunks: int = 1,
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
        compose_chunks: Above 1, composition-aware samples (``group_records``, seeded by ``seed``):
            each groups 1..``compose_chunks`` records as its chunks, and ``context_input_ids`` holds
            one id list per chunk (each cut to ``max_context_tokens``). Not with ``split_qa`` or
            ``pack_contexts``.

    Returns:
        The samples (columns ``context_input_ids``, ``input_ids``, ``labels``, ``length``;
        records with no supervised token left are dropped) and their ``DataStats``, also logged
        (as a warning when anything was truncated or dropped).
    """
    check_compose_chunks(compose_chunks, split_qa=split_qa, pack_contexts=pack_contexts)
    if compose_chunks > 1:
        records = group_records(records, compose_chunks, seed)
    if shuffle_qa and compose_chunks == 1:
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
    features = (COMPOSED_FEATURES if compose_chunks > 1 else TOKENIZED_FEATURES).copy()
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


def check_compose_chunks(compose_chunks: int, *, split_qa: bool = False, pack_contexts: bool = False) -> None:
    """Raise ``DataError`` for a chunk count below 1 or a combination composition cannot serve."""
    if isinstance(compose_chunks, bool) or not isinstance(compose_chunks, int) or compose_chunks < 1:
        raise DataError(f"compose_chunks must be an integer >= 1 (1: off), got {compose_chunks!r}.")
    if compose_chunks > 1 and (split_qa or pack_contexts):
        option = "split_qa" if split_qa else "pack_contexts"
        raise DataError(f"compose_chunks > 1 groups whole records as the chunks of a sample; it cannot be combined "
                        f"with {option}.")


def check_compose_method(compose_method: str) -> None:
    """Raise ``DataError`` for a rule that composition-aware training cannot use."""
    if compose_method not in TRAINING_COMPOSE_METHODS:
        raise DataError(f"compose_method must be one of {', '.join(TRAINING_COMPOSE_METHODS)}, "
                        f"not {compose_method!r}.")


def group_records(records: Dataset, max_chunks: int, seed: int = 0) -> Dataset:
    """Composition-aware samples: each groups 1..``max_chunks`` QA records as the chunks of one document.

    The records are taken in a random order (``random.Random(seed)``), in groups whose sizes are
    drawn uniformly from 1..``max_chunks``; every record lands in exactly one sample. A record that
    would ask a question the group already asks (the same question, possibly with another answer)
    waits for a later group, so no sample asks one question twice. A sample's conversation asks the
    questions of all its chunks in a random order, so any turn may be about any chunk.

    Returns:
        A dataset with ``contexts`` (the chunk texts), ``questions``, ``answers`` and
        ``question_chunk`` (the index in ``contexts`` of the chunk each question is about).
    """
    check_compose_chunks(max_chunks)
    contexts, all_questions, all_answers = records["context"], records["questions"], records["answers"]
    rng = random.Random(seed)
    queue = list(range(len(records)))
    rng.shuffle(queue)
    queue.reverse()  # popped from the end: the shuffled order
    lookahead = 8 * max_chunks  # records examined per group at most, so a run of clashes stays cheap
    samples: dict[str, list[Any]] = {"contexts": [], "questions": [], "answers": [], "question_chunk": []}
    while queue:
        size = rng.randint(1, max_chunks)
        group: list[int] = []
        asked: set[str] = set()
        waiting: list[int] = []
        while queue and len(group) < size and len(waiting) < lookahead:
            index = queue.pop()
            questions = set(all_questions[index])
            if questions & asked:
                waiting.append(index)
                continue
            group.append(index)
            asked |= questions
        queue.extend(reversed(waiting))
        pairs = [(q, a, chunk) for chunk, index in enumerate(group)
                 for q, a in zip(all_questions[index], all_answers[index], strict=True)]
        rng.shuffle(pairs)
        samples["contexts"].append([contexts[index] for index in group])
        samples["questions"].append([q for q, _, _ in pairs])
        samples["answers"].append([a for _, a, _ in pairs])
        samples["question_chunk"].append([chunk for _, _, chunk in pairs])
    features = Features({"contexts": List(Value("string")), "questions": List(Value("string")),
                         "answers": List(Value("string")), "question_chunk": List(Value("int32"))})
    return Dataset.from_dict(samples, features=features)


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
    max_context_tokens: int | None = MAX_CONTEXT_TOKENS,
    max_conversation_tokens: int | None = MAX_CONVERSATION_TOKENS,
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

    Per text (the SHINE pretraining mix, docs/training.md): with probability ``recon_prob`` a reconstruction record
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
    max_context_tokens: int | None = MAX_CONTEXT_TOKENS,
    max_conversation_tokens: int | None = MAX_CONVERSATION_TOKENS,
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
    max_context_tokens: int | None = MAX_CONTEXT_TOKENS,
    max_conversation_tokens: int | None = MAX_CONVERSATION_TOKENS,
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
    if not items:
        raise DataNotFoundError("No data files given.")
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix in _JSON_SUFFIXES + _TEXT_SUFFIXES)
            if not found:
                raise DataNotFoundError(f"No .txt/.json/.jsonl files in {item}.")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise DataNotFoundError(f"Data file not found: {item}.")
    empty = [str(p) for p in paths if p.stat().st_size == 0]
    if empty:
        raise DataError(f"Empty data file: {', '.join(empty)}.")
    return paths


@contextlib.contextmanager
def _datasets_json_errors_silenced() -> Iterator[None]:
    """Drop the datasets JSON loader's own error log lines: the `DataError` raised instead names the
    file and the problem, on one line."""
    json_logger = logging.getLogger("datasets.packaged_modules.json.json")

    def below_error(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    json_logger.addFilter(below_error)
    try:
        yield
    finally:
        json_logger.removeFilter(below_error)


def _read_files(paths: list[Path], kind: Literal["json", "text"], cache_dir: str | None) -> Dataset:
    """One dataset from JSON/JSONL or text files, read one by one so an error can name its file."""
    parts = []
    for path in paths:
        try:
            with _datasets_json_errors_silenced():
                if kind == "json":
                    parts.append(Dataset.from_json(str(path), cache_dir=cache_dir))
                else:
                    parts.append(Dataset.from_text(str(path), cache_dir=cache_dir))
        except DatasetGenerationError as error:
            cause = " ".join(str(error.__cause__ or error).split())
            what = "valid JSON or JSONL" if kind == "json" else "readable text"
            raise DataError(f"{path} is not {what}: {cause}") from error
        except (StopIteration, ValueError) as error:  # e.g. a JSONL file of blank lines
            raise DataError(f"{path} holds no {kind.upper()} records.") from error
    if len(parts) == 1:
        return parts[0]
    try:
        return concatenate_datasets(parts)
    except ValueError as error:
        raise DataError(f"The data files {', '.join(map(str, paths))} have different columns or types.") from error


def _origin(source: Any) -> str:
    """How an error names the data: its path(s), or "The dataset"."""
    if isinstance(source, Dataset):
        return "The dataset"
    if isinstance(source, (str, Path)):
        return str(source)
    return ", ".join(map(str, source))


def _text_column(dataset: Dataset, text_column: str, origin: str) -> Dataset:
    if text_column not in dataset.column_names:
        raise DataError(f"{origin} has no {text_column!r} column (its columns: {', '.join(dataset.column_names)}); "
                        "name the text column with text_column / --text-column.")
    feature = dataset.features[text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(f"The {text_column!r} column of {origin} holds {feature}, not text.")
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
    mixed. Raises ``DataError`` (``DataNotFoundError`` for missing paths) for data it cannot use.
    """
    origin = _origin(path_or_dataset)
    if isinstance(path_or_dataset, Dataset):
        dataset = _text_column(path_or_dataset, text_column, origin)
    else:
        paths = _expand_paths(path_or_dataset)
        kinds = {p.suffix in _JSON_SUFFIXES for p in paths}
        if len(kinds) > 1:
            raise DataError("Pass either JSON/JSONL files or text files, not both.")
        if kinds == {True}:
            dataset = _text_column(_read_files(paths, "json", cache_dir), text_column, origin)
        elif document_per == "file":
            dataset = Dataset.from_dict({"text": [p.read_text(encoding="utf-8") for p in paths]})
        elif document_per == "line":
            dataset = _read_files(paths, "text", cache_dir)
        else:
            raise ValueError(f"document_per must be 'line' or 'file', not {document_per!r}.")
    return dataset.filter(lambda t: bool(t and t.strip()), input_columns="text", num_proc=None)


def _first_answer(answer: Any, index: int) -> str:
    """The first reference of an answer given as a string, a list, or a SQuAD dict."""
    if isinstance(answer, Mapping):
        answer = answer.get("text")
    if isinstance(answer, (list, tuple)):
        if not answer:
            raise DataError(f"QA record {index}: an answer has no reference text.")
        return _first_answer(answer[0], index)
    if answer is None:
        raise DataError(f"QA record {index}: a question has no answer.")
    return str(answer)


def _normalize_qa_record(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    if not isinstance(record.get("context"), str):
        raise DataError(f"QA record {index} has no context text.")
    if record.get("questions") is not None:
        questions = list(record["questions"])
        answers = record.get("answers")
        if isinstance(answers, Mapping):  # columnar SQuAD-style {"text": [...]} per question
            answers = answers.get("text")
        if answers is None:
            raise DataError(f"QA record {index} has questions but no answers.")
        answers = [_first_answer(a, index) for a in answers]
    elif record.get("question") is not None:
        questions = [record["question"]]
        answer = record["answer"] if record.get("answer") is not None else record.get("answers")
        answers = [_first_answer(answer, index)]
    else:
        raise DataError(f"QA record {index} has no question: it needs 'question' or 'questions'.")
    if len(questions) != len(answers):
        raise DataError(f"QA record {index} has {len(questions)} questions and {len(answers)} answers.")
    return {"context": record["context"], "questions": questions, "answers": answers}


def _check_qa_columns(dataset: Dataset, origin: str) -> None:
    columns = set(dataset.column_names)
    if "context" not in columns or not columns & {"question", "questions"} or not columns & {"answer", "answers"}:
        raise DataError(f"{origin} has the columns {', '.join(sorted(columns)) or '(none)'}; QA records need "
                        "'context', 'question' or 'questions', and 'answer' or 'answers'.")


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
    dropped. Raises ``DataError`` (``DataNotFoundError`` for missing paths) for data it cannot use:
    malformed JSON, missing columns, a question without an answer, ...
    """
    origin = _origin(path_or_dataset)
    if isinstance(path_or_dataset, Dataset):
        dataset = path_or_dataset
    else:
        paths = _expand_paths(path_or_dataset)
        not_json = [str(p) for p in paths if p.suffix not in _JSON_SUFFIXES]
        if not_json:
            raise DataError(f"QA records are read from JSON or JSONL files, not {', '.join(not_json)}.")
        dataset = _read_files(paths, "json", cache_dir)
    _check_qa_columns(dataset, origin)
    return dataset.map(
        _normalize_qa_record,
        with_indices=True,
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

    The batch holds ``context_input_ids``, ``context_attention_mask``, ``input_ids``,
    ``attention_mask`` and ``labels`` (LongTensors); other sample keys (e.g. ``length``) are
    ignored. Ids are padded with the tokenizer's pad id (its EOS id if it has none), labels with
    ``IGNORE_INDEX``, by the model's own ``pad_token_ids``. ``pad_to_multiple_of`` rounds both
    sequence lengths up.

    Composition-aware samples (``context_input_ids`` a list of chunks, ``tokenize_records(
    compose_chunks=K)``) put all C chunks of the batch in ``context_input_ids`` (C, N), in sample
    order, and add ``context_sample_index`` (C,), the batch row of each chunk, and
    ``context_compose`` (``compose_method``), so the forward composes each sample's chunk LoRAs. A
    plain sample in such a batch is one chunk.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None, compose_method: str = "concat") -> None:
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token.")
        check_compose_method(compose_method)
        self.pad_token_id = int(pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.compose_method = compose_method

    def _pad(self, sequences: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_token_ids(sequences, pad_id=value)
        multiple = self.pad_to_multiple_of
        if multiple and ids.shape[1] % multiple:
            extra = multiple - ids.shape[1] % multiple
            ids = torch.nn.functional.pad(ids, (0, extra), value=value)
            mask = torch.nn.functional.pad(mask, (0, extra), value=0)
        return ids, mask

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate ``features`` (each with ``context_input_ids``, ``input_ids``, ``labels``)."""
        contexts = [f["context_input_ids"] for f in features]
        composed = any(_is_chunked(context) for context in contexts)
        if composed:
            chunks = [list(context) if _is_chunked(context) else [context] for context in contexts]
            contexts = [chunk for sample_chunks in chunks for chunk in sample_chunks]
            sample_index = torch.tensor([row for row, sample_chunks in enumerate(chunks) for _ in sample_chunks])
        context_ids, context_mask = self._pad(contexts, self.pad_token_id)
        input_ids, attention_mask = self._pad([f["input_ids"] for f in features], self.pad_token_id)
        labels, _ = self._pad([f["labels"] for f in features], IGNORE_INDEX)
        batch: dict[str, Any] = {
            "context_input_ids": context_ids,
            "context_attention_mask": context_mask,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }
        if composed:
            batch.update(context_sample_index=sample_index, context_compose=self.compose_method)
        return batch


def _is_chunked(context: Any) -> bool:
    """Whether a sample's ``context_input_ids`` is a list of chunks (id lists) rather than one id list."""
    if isinstance(context, (torch.Tensor, np.ndarray)):
        return context.ndim == 2
    return len(context) > 0 and not isinstance(context[0], (int, np.integer)) and hasattr(context[0], "__len__")
