"""Tests for shine_hf.data: label masks token by token, truncation counts, the RECON/COMP mix,
QA loading and its errors, packing and the collator."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from shine_hf import ShineError
from shine_hf import data as D
from shine_hf.modeling.prompting import question_prompt, render_chat
from shine_hf.testing.facts import synthetic_facts
from shine_hf.testing.tokenizers import QWEN3_CHAT_TEMPLATE, build_chat_tokenizer

IM_END = "<|im_end|>\n"

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Like the real Qwen3 template: the last assistant message gets an empty think block.
QWEN3_THINK_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n'"
    " + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}" + QWEN3_CHAT_TEMPLATE[QWEN3_CHAT_TEMPLATE.index("{%- if add_generation_prompt") :]
)


@pytest.fixture(scope="module")
def tok():
    return build_chat_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    tokenizer = build_chat_tokenizer(chat_template=LLAMA3_TEMPLATE)
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "extra_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        },
        replace_extra_special_tokens=False,
    )
    return tokenizer


@pytest.fixture(scope="module")
def shine_tok():
    tokenizer = build_chat_tokenizer()
    D.add_shine_special_tokens(tokenizer)
    return tokenizer


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def supervised_spans(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of every maximal run of labels != -100."""
    spans, start = [], None
    for i, label in enumerate([*labels, D.IGNORE_INDEX]):
        if label != D.IGNORE_INDEX and start is None:
            start = i
        elif label == D.IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def check_conversation(tokenizer, questions, answers, input_ids, labels, end_of_turn) -> None:
    """Token-by-token: each answer span decodes to answer + end_of_turn, and the tokens before it
    are exactly the tokenized inference prompt (history + next user turn, generation prompt)."""
    assert len(input_ids) == len(labels)
    spans = supervised_spans(labels)
    assert len(spans) == len(questions)
    history: list[dict[str, str]] = []
    for (start, end), question, answer in zip(spans, questions, answers, strict=True):
        assert labels[start:end] == input_ids[start:end]
        assert tokenizer.decode(input_ids[start:end]) == answer + end_of_turn
        prompt = render_chat(tokenizer, [*history, {"role": "user", "content": question}], True)
        assert input_ids[:start] == encode(tokenizer, prompt)
        if not history:
            assert input_ids[:start] == encode(tokenizer, question_prompt(tokenizer, question))
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    assert spans[-1][1] == len(input_ids)


# ------------------------------------------------------------------------------ chat format


def test_chat_format_is_derived_from_each_template(tok, llama_tok):
    assert D.chat_format(tok) == D.ChatFormat(answer_prefix="", end_of_turn=IM_END)
    assert D.chat_format(llama_tok) == D.ChatFormat(answer_prefix="", end_of_turn="<|eot_id|>")
    think = build_chat_tokenizer(chat_template=QWEN3_THINK_TEMPLATE)
    assert D.chat_format(think) == D.ChatFormat(answer_prefix="", end_of_turn=IM_END)


def test_chat_format_without_template_uses_plain_layout():
    plain = build_chat_tokenizer()
    plain.chat_template = None
    fmt = D.chat_format(plain)
    assert fmt == D.ChatFormat(answer_prefix=" ", end_of_turn="\n")
    conv = D.tokenize_conversation(plain, ["Who?", "Where?"], ["Alice", "Lyon"])
    spans = supervised_spans(conv.labels)
    assert [plain.decode(conv.input_ids[a:b]) for a, b in spans] == [" Alice\n", " Lyon\n"]
    assert plain.decode(conv.input_ids) == "user: Who?\nassistant: Alice\nuser: Where?\nassistant: Lyon\n"


# ------------------------------------------------------------------------------ conversations


@pytest.mark.parametrize("template", ["qwen3", "qwen3_think", "llama3"])
def test_labels_token_by_token(template, tok, llama_tok):
    tokenizer = {
        "qwen3": tok,
        "qwen3_think": build_chat_tokenizer(chat_template=QWEN3_THINK_TEMPLATE),
        "llama3": llama_tok,
    }[template]
    end_of_turn = "<|eot_id|>" if template == "llama3" else IM_END
    questions = ["Who signed the contract?", "Where was it signed?", "When?"]
    answers = ["Alice Moreau", "In Lyon.", "3 March 1998"]
    for n in (1, 3):
        conv = D.tokenize_conversation(tokenizer, questions[:n], answers[:n])
        check_conversation(tokenizer, questions[:n], answers[:n], conv.input_ids, conv.labels, end_of_turn)
        assert (conv.turns_kept, conv.turns_dropped, conv.answer_cut) == (n, 0, False)
    if template == "qwen3":  # the whole ChatML conversation is the template's own rendering
        messages = []
        for q, a in zip(questions, answers, strict=True):
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        assert tokenizer.decode(conv.input_ids) == render_chat(tokenizer, messages, False)
    if template == "llama3":
        assert conv.input_ids.count(tokenizer.bos_token_id) == 1


def test_first_turn_prompt_is_the_inference_prompt(tok):
    conv = D.tokenize_conversation(tok, ["What is the capital of Veloria?"], ["Tarsk"])
    prompt_ids = encode(tok, question_prompt(tok, "What is the capital of Veloria?"))
    assert conv.input_ids[: len(prompt_ids)] == prompt_ids
    assert conv.labels[: len(prompt_ids)] == [D.IGNORE_INDEX] * len(prompt_ids)
    assert tok.decode(conv.input_ids[len(prompt_ids) :]) == "Tarsk" + IM_END
    assert conv.labels[len(prompt_ids) :] == conv.input_ids[len(prompt_ids) :]


def test_conversation_truncates_at_turn_boundaries(tok):
    questions, answers = ["Who?", "Where?", "When?"], ["Alice", "Lyon", "1998"]
    full = D.tokenize_conversation(tok, questions, answers)
    turn_ends = [end for _, end in supervised_spans(full.labels)]

    conv = D.tokenize_conversation(tok, questions, answers, max_tokens=turn_ends[1])
    assert (conv.turns_kept, conv.turns_dropped, conv.answer_cut) == (2, 1, False)
    check_conversation(tok, questions[:2], answers[:2], conv.input_ids, conv.labels, IM_END)

    conv = D.tokenize_conversation(tok, questions, answers, max_tokens=turn_ends[1] - 1)
    assert (conv.turns_kept, conv.turns_dropped, conv.answer_cut) == (1, 2, False)
    check_conversation(tok, questions[:1], answers[:1], conv.input_ids, conv.labels, IM_END)


def test_first_answer_is_cut_only_when_it_cannot_fit(tok):
    answer = "The quick brown fox jumps over the lazy dog near the river bank."
    prompt_len = len(encode(tok, question_prompt(tok, "Q")))
    conv = D.tokenize_conversation(tok, ["Q", "Q2"], [answer, "x"], max_tokens=prompt_len + 3)
    assert (conv.turns_kept, conv.turns_dropped, conv.answer_cut) == (1, 1, True)
    assert len(conv.input_ids) == prompt_len + 3 and conv.num_supervised == 3
    assert answer.startswith(tok.decode(conv.input_ids[prompt_len:]))

    conv = D.tokenize_conversation(tok, ["Q"], [answer], max_tokens=prompt_len - 1)
    assert conv.num_supervised == 0 and len(conv.input_ids) == prompt_len - 1


def test_system_prompt_turns_are_the_baseline_prompts(tok):
    """With a system prompt, turn 0 is question_prompt(tok, q, system) and later turns continue the
    rendered history, which still holds the system turn; labels stay on answers and end of turn."""
    system = "Answer in a few words."
    questions, answers = ["Where is Paris?", "Where is Rome?"], ["France", "Italy"]
    conv = D.tokenize_conversation(tok, questions, answers, system_prompt=system)
    spans = supervised_spans(conv.labels)
    assert conv.input_ids[: spans[0][0]] == encode(tok, question_prompt(tok, questions[0], system))
    history = [{"role": "system", "content": system}, {"role": "user", "content": questions[0]},
               {"role": "assistant", "content": answers[0]}, {"role": "user", "content": questions[1]}]
    assert conv.input_ids[: spans[1][0]] == encode(tok, render_chat(tok, history, True))
    assert [tok.decode(conv.input_ids[a:b]) for a, b in spans] == [a + IM_END for a in answers]


def test_context_is_a_plain_tokenizer_call(tok):
    ids, truncated = D.tokenize_context(tok, "The contract was signed.")
    assert ids == tok("The contract was signed.")["input_ids"] and not truncated
    ids, truncated = D.tokenize_context(tok, "The contract was signed.", max_tokens=3)
    assert ids == tok("The contract was signed.")["input_ids"][:3] and truncated


# ------------------------------------------------------------------------------ records → samples


def test_truncation_and_drops_are_counted_and_logged(tok, caplog):
    long_text = "The quick brown fox jumps over the lazy dog. " * 20
    records = Dataset.from_dict(
        {
            "context": ["Short doc.", long_text, "Doc three.", "Doc four."],
            "questions": [["Who?"], ["Who?"], ["Who?", "Where?", "When?"], [long_text]],
            "answers": [["Alice"], ["Bob"], ["Alice", "Lyon", "1998"], ["x"]],
        }
    )
    two_turns = len(D.tokenize_conversation(tok, ["Who?", "Where?"], ["Alice", "Lyon"]).input_ids)
    with caplog.at_level(logging.INFO, logger="shine_hf.data"):
        samples, stats = D.tokenize_records(records, tok, max_context_tokens=16, max_conversation_tokens=two_turns)
    assert stats == D.DataStats(
        records=4,
        samples=3,
        context_truncated=1,
        conversation_truncated=2,
        turns_dropped=1,
        answers_cut=1,
        dropped_no_supervision=1,
    )
    assert stats.lossy
    assert any("context_truncated=1" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert samples.column_names == ["context_input_ids", "input_ids", "labels", "length"]
    expected = [len(tok("Short doc.")["input_ids"]), 16, len(tok("Doc three.")["input_ids"])]
    assert [len(s) for s in samples["context_input_ids"]] == expected
    assert len(supervised_spans(samples[2]["labels"])) == 2
    assert samples["length"] == [len(s["context_input_ids"]) + len(s["input_ids"]) for s in samples]


def test_clean_data_logs_info_and_counts_nothing(tok, caplog):
    records = Dataset.from_dict({"context": ["Doc."], "questions": [["Who?"]], "answers": [["Alice"]]})
    with caplog.at_level(logging.INFO, logger="shine_hf.data"):
        _, stats = D.tokenize_records(records, tok)
    assert stats == D.DataStats(records=1, samples=1) and not stats.lossy
    assert [r.levelno for r in caplog.records if "SHINE data" in r.getMessage()] == [logging.INFO]


def test_no_records_gives_an_empty_dataset(tok):
    empty = Dataset.from_dict({"context": [], "questions": [], "answers": []}, D.QA_FEATURES)
    samples, stats = D.tokenize_records(empty, tok)
    assert len(samples) == 0 and stats == D.DataStats()
    assert samples.column_names == ["context_input_ids", "input_ids", "labels", "length"]


def test_split_qa_gives_single_turn_samples(tok):
    records = Dataset.from_dict(
        {
            "context": ["Doc one.", "Doc two."],
            "questions": [["A?", "B?", "C?"], ["D?", "E?"]],
            "answers": [["a", "b", "c"], ["d", "e"]],
        }
    )
    split = D.split_qa_records(records)
    assert split["questions"] == [["A?"], ["B?"], ["C?"], ["D?"], ["E?"]]
    assert split["context"] == ["Doc one."] * 3 + ["Doc two."] * 2
    samples, stats = D.build_qa_dataset(records, tok, split_qa=True)
    assert stats.samples == 5
    for sample, q, a in zip(samples, "ABCDE", "abcde", strict=True):
        check_conversation(tok, [q + "?"], [a], sample["input_ids"], sample["labels"], IM_END)


def test_shuffle_qa_pairs_keeps_pairs_together_and_is_seeded(tok):
    questions = [f"Q{i}?" for i in range(6)]
    records = Dataset.from_dict({
        "context": [f"Doc {r}." for r in range(20)],
        "questions": [questions] * 20,
        "answers": [[q.lower().rstrip("?") for q in questions]] * 20,
    })
    shuffled = D.shuffle_qa_pairs(records, seed=1)
    assert shuffled["context"] == records["context"]
    for qs, ans in zip(shuffled["questions"], shuffled["answers"], strict=True):
        assert sorted(qs) == questions and ans == [q.lower().rstrip("?") for q in qs]
    first_questions = {qs[0] for qs in shuffled["questions"]}
    assert len(first_questions) > 2  # every question gets to be asked first
    assert D.shuffle_qa_pairs(records, seed=1)["questions"] == shuffled["questions"]
    assert D.shuffle_qa_pairs(records, seed=2)["questions"] != shuffled["questions"]
    # build_qa_dataset(shuffle_qa=True) trains on exactly that order
    samples, _ = D.build_qa_dataset(records.select(range(3)), tok, shuffle_qa=True, seed=1)
    for sample, qs, ans in zip(samples, shuffled["questions"][:3], shuffled["answers"][:3], strict=True):
        check_conversation(tok, qs, ans, sample["input_ids"], sample["labels"], IM_END)


def test_pack_contexts(tok):
    facts = synthetic_facts(40, seed=3, entities_per_document=(1, 1), questions_per_entity=1)
    records = facts["train"].select_columns(["context", "questions", "answers"])
    budget = 3 * max(len(tok(c)["input_ids"]) for c in records["context"])
    packed = D.pack_records(records, tok, max_context_tokens=budget, max_conversation_tokens=1024)
    assert len(packed) < len(records) and sum(packed["num_documents"]) == len(records)
    # Order and content are kept: contexts joined by a blank line, conversations concatenated.
    position = 0
    for pack in packed:
        n = pack["num_documents"]
        assert pack["context"] == "\n\n".join(records["context"][position : position + n])
        for column in ("questions", "answers"):
            turns = [t for doc in records[column][position : position + n] for t in doc]
            assert pack[column] == turns
        assert len(tok(pack["context"])["input_ids"]) <= budget
        position += n
    assert max(packed["num_documents"]) >= 3

    samples, stats = D.tokenize_records(
        records, tok, max_context_tokens=budget, max_conversation_tokens=1024, pack_contexts=True
    )
    assert stats.records == len(packed) and not stats.lossy
    for sample, pack in zip(samples, packed, strict=True):
        assert tok.decode(sample["context_input_ids"]) == pack["context"]
        check_conversation(tok, pack["questions"], pack["answers"], sample["input_ids"], sample["labels"], IM_END)


def test_pack_respects_conversation_budget(tok):
    records = Dataset.from_dict(
        {
            "context": ["a.", "b.", "c.", "d."],
            "questions": [["Who?"]] * 4,
            "answers": [["Alice"]] * 4,
        }
    )
    one = len(D.tokenize_conversation(tok, ["Who?"], ["Alice"]).input_ids)
    packed = D.pack_records(records, tok, max_context_tokens=100, max_conversation_tokens=2 * one)
    assert packed["num_documents"] == [2, 2]


# ------------------------------------------------------------------------------ pretraining mix


def test_special_tokens_are_added_once():
    tokenizer = build_chat_tokenizer()
    size = len(tokenizer)
    assert D.add_shine_special_tokens(tokenizer) == 2
    assert len(tokenizer) == size + 2
    assert D.add_shine_special_tokens(tokenizer) == 0
    assert len(tokenizer) == size + 2
    for token in D.SHINE_SPECIAL_TOKENS:
        assert token in tokenizer.all_special_tokens
        assert encode(tokenizer, f"x {token}\ny")[-3:-2] == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.decode(encode(tokenizer, "<RECON>"), skip_special_tokens=True) == ""


def test_special_tokens_with_transformers_4_signature():
    class V4Tokenizer:
        all_special_tokens = ("<|im_end|>", "<RECON>")

        def add_special_tokens(self, special_tokens_dict, replace_additional_special_tokens=True):
            self.call = (special_tokens_dict, replace_additional_special_tokens)
            return 1

    tokenizer = V4Tokenizer()
    assert D.add_shine_special_tokens(tokenizer) == 1
    assert tokenizer.call == ({"additional_special_tokens": ["<COMP>"]}, False)


def make_texts(n: int) -> Dataset:
    texts = [" ".join(f"w{i}x{j}" for j in range(20 + i % 31)) for i in range(n)]
    return Dataset.from_dict({"body": texts, "other": list(range(n))})


@pytest.mark.parametrize("recon_prob", [0.5, 0.2])
def test_recon_comp_mix_ratio(recon_prob):
    n = 2000
    records = D.pretraining_records(make_texts(n), recon_prob=recon_prob, seed=7, text_column="body")
    share = records["kind"].count("recon") / n
    assert abs(share - recon_prob) < 4 * (recon_prob * (1 - recon_prob) / n) ** 0.5
    assert records.column_names == ["context", "questions", "answers", "kind"]


def test_pretraining_records_are_deterministic():
    texts = make_texts(200)
    a = D.pretraining_records(texts, seed=1, text_column="body")
    b = D.pretraining_records(texts, seed=1, text_column="body")
    c = D.pretraining_records(texts, seed=2, text_column="body")
    assert a.to_list() == b.to_list()
    assert a["kind"] != c["kind"]
    # Row i only depends on (seed, i): a subset gives the same draws.
    assert D.pretraining_records(texts.select(range(50)), seed=1, text_column="body").to_list() == a.to_list()[:50]


def test_recon_and_completion_samples():
    texts = make_texts(600)
    records = D.pretraining_records(texts, seed=0, text_column="body")
    fractions = []
    for text, record in zip(texts["body"], records, strict=True):
        assert record["answers"] == [text]
        if record["kind"] == "recon":
            assert record["questions"] == [D.RECON_TOKEN] and record["context"] == text
            continue
        assert record["questions"] == [D.COMP_TOKEN]
        assert text.startswith(record["context"])
        n_words, n_context = len(text.split()), len(record["context"].split())
        assert record["context"] == " ".join(text.split()[:n_context])
        assert 0.7 - 0.5 / n_words <= n_context / n_words <= 0.9 + 0.5 / n_words
        fractions.append(n_context / n_words)
    assert min(fractions) < 0.74 and max(fractions) > 0.86  # the whole range is drawn


def test_completion_context_keeps_spacing():
    text = "one two\nthree  four five six seven eight nine ten"
    assert D.completion_context(text, 0.3) == "one two\nthree"
    assert D.completion_context(text, 0.0) == "one"
    assert D.completion_context("   ", 0.8) == ""


def test_build_pretraining_dataset(shine_tok, tmp_path):
    with pytest.raises(ValueError, match="add_shine_special_tokens"):
        D.build_pretraining_dataset(make_texts(4), build_chat_tokenizer(), text_column="body")
    texts = make_texts(40)
    samples, stats = D.build_pretraining_dataset(
        texts,
        shine_tok,
        text_column="body",
        seed=0,
        max_context_tokens=4096,
        max_conversation_tokens=4096,
    )
    records = D.pretraining_records(texts, seed=0, text_column="body")
    assert stats == D.DataStats(records=40, samples=40)
    for sample, record in zip(samples, records, strict=True):
        check_conversation(
            shine_tok,
            record["questions"],
            record["answers"],
            sample["input_ids"],
            sample["labels"],
            IM_END,
        )
        marker = shine_tok.convert_tokens_to_ids(D.RECON_TOKEN if record["kind"] == "recon" else D.COMP_TOKEN)
        assert marker in sample["input_ids"]
        assert sample["context_input_ids"] == shine_tok(record["context"])["input_ids"]
    # Default limits: long texts are truncated and counted.
    _, stats = D.build_pretraining_dataset(
        texts, shine_tok, text_column="body", max_context_tokens=64, max_conversation_tokens=64
    )
    assert stats.samples == 40 and stats.context_truncated > 0 and stats.answers_cut > 0


# ------------------------------------------------------------------------------ loading


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_text_dataset_sources(tmp_path):
    cache = str(tmp_path / "cache")
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "first doc", "id": 1}, {"text": " ", "id": 2}])
    assert D.load_text_dataset(jsonl, cache_dir=cache)["text"] == ["first doc"]
    other = write_jsonl(tmp_path / "b.jsonl", [{"body": "x y"}])
    assert D.load_text_dataset(other, text_column="body", cache_dir=cache).to_list() == [{"text": "x y"}]

    txt_dir = tmp_path / "txt"
    txt_dir.mkdir()
    (txt_dir / "1.txt").write_text("line one\n\nline two\n", encoding="utf-8")
    (txt_dir / "2.txt").write_text("line three\n", encoding="utf-8")
    lines = D.load_text_dataset(txt_dir, cache_dir=cache)
    assert lines["text"] == ["line one", "line two", "line three"]
    files = D.load_text_dataset(sorted(txt_dir.iterdir()), document_per="file")
    assert files["text"] == ["line one\n\nline two\n", "line three\n"]

    dataset = D.load_text_dataset(make_texts(3), text_column="body")
    assert dataset.column_names == ["text"] and len(dataset) == 3
    with pytest.raises(ValueError, match="not both"):
        D.load_text_dataset([jsonl, txt_dir / "1.txt"])
    with pytest.raises(FileNotFoundError):
        D.load_text_dataset(tmp_path / "missing.txt")


def test_load_qa_dataset_schemas(tmp_path):
    rows = [
        {"context": "c1", "question": "q1", "answer": "a1"},
        {"context": "c2", "questions": ["q2", "q3"], "answers": ["a2", "a3"]},
        {
            "context": "c3",
            "question": "q4",
            "answers": {"text": ["a4", "alt"], "answer_start": [0, 3]},
        },
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    expected = [
        {"context": "c1", "questions": ["q1"], "answers": ["a1"]},
        {"context": "c2", "questions": ["q2", "q3"], "answers": ["a2", "a3"]},
        {"context": "c3", "questions": ["q4"], "answers": ["a4"]},
    ]
    assert D.load_qa_dataset(path, cache_dir=str(tmp_path / "cache")).to_list() == expected

    squad = tmp_path / "squad.json"  # a JSON array, SQuAD-style nested answers
    squad.write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "context": "c",
                    "question": "q",
                    "answers": {"text": ["a"], "answer_start": [0]},
                }
            ]
        )
    )
    assert D.load_qa_dataset(squad, cache_dir=str(tmp_path / "cache")).to_list() == [
        {"context": "c", "questions": ["q"], "answers": ["a"]}
    ]
    multi_refs = Dataset.from_list([{"context": "c", "questions": ["q1", "q2"], "answers": [["a", "b"], ["c"]]}])
    assert D.load_qa_dataset(multi_refs)["answers"] == [["a", "c"]]
    with pytest.raises(ValueError, match="2 questions and 1 answers"):
        D.load_qa_dataset(Dataset.from_list([{"context": "c", "questions": ["q1", "q2"], "answers": ["a"]}]))


QA_ROW = json.dumps({"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"})

# file name -> (content, loader, the DataError message); none of these may end in a raw datasets /
# pyarrow exception or in the datasets loader's own multi-line error log.
UNUSABLE_DATA = {
    "malformed.jsonl": (QA_ROW + '\n{"context": "b", "question": ', "qa", "malformed.jsonl is not valid JSON or JSONL"),
    "empty.jsonl": ("", "qa", "Empty data file"),
    "blank.jsonl": ("\n\n", "qa", "holds no JSON records"),
    "columns.jsonl": ('{"text": "x", "title": "y"}\n', "qa", "has the columns text, title; QA records need"),
    "no_answer.jsonl": (QA_ROW + '\n{"context": "b", "question": "q"}\n', "qa", "QA record 1: a question has no"),
    "no_answers.jsonl": ('{"context": "b", "questions": ["q"], "answer": null}\n', "qa",
                         "QA record 0 has questions but no answers"),
    "no_context.jsonl": ('{"context": null, "question": "q", "answer": "a"}\n', "qa", "QA record 0 has no context"),
    "qa.txt": ("Where is Paris? France\n", "qa", "QA records are read from JSON or JSONL files"),
    "no_text.jsonl": (QA_ROW, "text", "has no 'text' column (its columns: context, question, answer)"),
    "numbers.json": ("[1, 2, 3]", "text", "holds Value('int64'), not text"),
    "empty.txt": ("", "text", "Empty data file"),
}


@pytest.mark.parametrize("name", list(UNUSABLE_DATA))
def test_unusable_data_is_a_data_error_naming_the_problem(tmp_path, capfd, name):
    content, kind, message = UNUSABLE_DATA[name]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    load = D.load_qa_dataset if kind == "qa" else D.load_text_dataset
    with pytest.raises(D.DataError, match=re.escape(message)):
        load(path)
    assert "Failed to load JSON" not in capfd.readouterr().err


def test_missing_data_is_a_file_not_found_data_error(tmp_path):
    for missing in (tmp_path / "missing.jsonl", [], tmp_path):
        with pytest.raises(D.DataNotFoundError) as error:
            D.load_qa_dataset(missing)
        assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ShineError)


def test_data_files_with_different_columns_are_one_error(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"context": "c", "question": "q", "answer": "a"}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"context": "c", "question": "q", "answer": 3}])
    with pytest.raises(D.DataError, match="different columns or types"):
        D.load_qa_dataset([first, second])


# ------------------------------------------------------------------------------ collator


def test_collator_pads_right(tok):
    features = [
        {
            "context_input_ids": [5, 6, 7],
            "input_ids": [1, 2, 3, 4, 5],
            "labels": [-100, -100, 3, 4, 5],
            "length": 8,
        },
        {"context_input_ids": [8], "input_ids": [9, 10], "labels": [-100, 10], "length": 3},
    ]
    batch = D.ShineDataCollator(tok)(features)
    assert set(batch) == {
        "context_input_ids",
        "context_attention_mask",
        "input_ids",
        "attention_mask",
        "labels",
    }
    assert all(t.dtype == torch.long for t in batch.values())
    pad = tok.pad_token_id
    assert batch["context_input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["context_attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [9, 10, pad, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4, 5], [-100, 10, -100, -100, -100]]

    batch = D.ShineDataCollator(tok, pad_to_multiple_of=4)(features)
    assert batch["context_input_ids"].shape == (2, 4) and batch["input_ids"].shape == (2, 8)
    assert batch["labels"][0, 5:].tolist() == [-100] * 3


def test_collator_falls_back_to_eos():
    tokenizer = build_chat_tokenizer()
    tokenizer.pad_token = None
    collator = D.ShineDataCollator(tokenizer)
    assert collator.pad_token_id == tokenizer.eos_token_id


def test_end_to_end_batch(tok):
    samples, _ = D.build_qa_dataset(synthetic_facts(12, seed=0)["train"], tok)
    batch = D.ShineDataCollator(tok)([samples[i] for i in range(min(4, len(samples)))])
    for row in range(batch["input_ids"].shape[0]):
        mask = batch["attention_mask"][row].bool()
        assert (batch["labels"][row][~mask] == -100).all()
        assert batch["context_attention_mask"][row].sum() == len(samples[row]["context_input_ids"])


# ------------------------------------------------------------------------------ composition-aware samples


def _facts_records(n_entities: int = 60, seed: int = 4) -> Dataset:
    facts = synthetic_facts(n_entities, seed=seed, entities_per_document=(1, 1))["train"]
    return facts.select_columns(["context", "questions", "answers"])


def test_group_records_puts_every_record_in_one_sample_with_exactly_its_questions():
    records = _facts_records()
    grouped = D.group_records(records, 4, seed=0)
    by_context = {r["context"]: r for r in records}
    seen = [context for sample in grouped["contexts"] for context in sample]
    assert sorted(seen) == sorted(records["context"])  # each record in exactly one sample
    sizes = [len(sample) for sample in grouped["contexts"]]
    assert set(sizes) == {1, 2, 3, 4}
    for sample in grouped:
        chunk_records = [by_context[c] for c in sample["contexts"]]
        expected = sorted((q, a, chunk) for chunk, r in enumerate(chunk_records)
                          for q, a in zip(r["questions"], r["answers"], strict=True))
        assert sorted(zip(sample["questions"], sample["answers"], sample["question_chunk"])) == expected
    # the questions of a sample are interleaved across its chunks, not asked chunk by chunk
    orders = [s["question_chunk"] for s in grouped if len(s["contexts"]) > 1]
    assert any(order != sorted(order) for order in orders)


def test_group_records_is_seeded():
    records = _facts_records()
    first = D.group_records(records, 3, seed=1)
    assert D.group_records(records, 3, seed=1).to_dict() == first.to_dict()
    assert D.group_records(records, 3, seed=2)["contexts"] != first["contexts"]
    assert all(len(sample) == 1 for sample in D.group_records(records, 1)["contexts"])


def test_group_records_never_asks_a_question_twice():
    # Ten records about the same person with different facts: the same questions, other answers.
    records = Dataset.from_dict({
        "context": [f"Ana lives in city {i}." for i in range(10)] + ["Bo is 180 cm tall."],
        "questions": [["Where does Ana live?"]] * 10 + [["How tall is Bo?"]],
        "answers": [[f"city {i}"] for i in range(10)] + [["180 cm"]],
    })
    grouped = D.group_records(records, 4, seed=0)
    assert sorted(c for sample in grouped["contexts"] for c in sample) == sorted(records["context"])
    for questions in grouped["questions"]:
        assert len(questions) == len(set(questions))


def test_composed_samples_hold_one_id_list_per_chunk_and_labels_on_answers_only(tok):
    records = _facts_records(24)
    grouped = D.group_records(records, 3, seed=5)
    samples, stats = D.tokenize_records(records, tok, compose_chunks=3, seed=5)
    assert stats.samples == len(grouped) and not stats.lossy
    for sample, group in zip(samples, grouped, strict=True):
        assert sample["context_input_ids"] == [D.tokenize_context(tok, c)[0] for c in group["contexts"]]
        check_conversation(tok, group["questions"], group["answers"], sample["input_ids"], sample["labels"], IM_END)
        assert sample["length"] == sum(map(len, sample["context_input_ids"])) + len(sample["input_ids"])


def test_composed_samples_are_not_split_or_packed():
    for options in ({"split_qa": True}, {"pack_contexts": True}):
        with pytest.raises(D.DataError, match="cannot be combined"):
            D.check_compose_chunks(2, **options)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(D.DataError, match="compose_chunks must be an integer >= 1"):
            D.check_compose_chunks(bad)


def test_collator_maps_every_chunk_to_its_sample(tok):
    features = [
        {"context_input_ids": [[5, 6], [7], [8, 9, 10]], "input_ids": [1, 2], "labels": [-100, 2]},
        {"context_input_ids": [11, 12], "input_ids": [3], "labels": [3]},  # a plain sample is one chunk
        {"context_input_ids": [[13]], "input_ids": [4, 5, 6], "labels": [-100, -100, 6]},
    ]
    batch = D.ShineDataCollator(tok, compose_method="mean")(features)
    pad = tok.pad_token_id
    assert batch["context_input_ids"].tolist() == [[5, 6, pad], [7, pad, pad], [8, 9, 10], [11, 12, pad],
                                                   [13, pad, pad]]
    assert batch["context_attention_mask"].sum(dim=1).tolist() == [2, 1, 3, 2, 1]
    assert batch["context_sample_index"].tolist() == [0, 0, 0, 1, 2]
    assert batch["context_sample_index"].dtype == torch.long
    assert batch["context_compose"] == "mean"
    assert batch["labels"].tolist() == [[-100, 2, -100], [3, -100, -100], [-100, -100, 6]]
    with pytest.raises(ValueError, match="compose_method must be one of concat, mean"):
        D.ShineDataCollator(tok, compose_method="weighted")


def test_collated_composed_batch_trains_the_hypernetwork_through_the_composition():
    from shine_hf.testing.models import tiny_shine

    model = tiny_shine("qwen3", randomize=False)  # reference init: meta-LoRA B = 0, memory tokens 0
    model.train()
    records = _facts_records(12)
    samples, _ = D.tokenize_records(records, model.tokenizer, compose_chunks=3, seed=0)
    features = [samples[i] for i in range(3)]
    assert any(len(f["context_input_ids"]) > 1 for f in features)
    losses = {}
    for method in D.TRAINING_COMPOSE_METHODS:
        batch = D.ShineDataCollator(model.tokenizer, compose_method=method)(features)
        model.zero_grad()
        output = model(**batch)
        output.loss.backward()
        losses[method] = output.loss.item()
        hyper = model.hypernetwork
        assert hyper.memory_tokens.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.m2p.transformer_layers.parameters())
        assert sum(p.grad.abs().sum() for p in hyper.meta_lora.parameters()) > 0
        assert all(p.grad is None for p in model.backbone.parameters())
    assert losses["concat"] != losses["mean"]  # the method reaches the forward


def test_each_sample_reads_exactly_its_own_chunks():
    from shine_hf.testing.models import tiny_shine

    model = tiny_shine("qwen3")
    collator = D.ShineDataCollator(model.tokenizer)
    samples, _ = D.tokenize_records(_facts_records(12), model.tokenizer, compose_chunks=3, seed=0)
    features = [dict(samples[i]) for i in range(3)]
    assert len(features[0]["context_input_ids"]) > 1

    def row_losses(features):
        batch = collator(features)
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")
        return losses.sum(dim=1) / (labels != D.IGNORE_INDEX).sum(dim=1)

    before = row_losses(features)
    changed = [dict(f) for f in features]
    last = changed[0]["context_input_ids"][-1]
    changed[0]["context_input_ids"] = [*changed[0]["context_input_ids"][:-1], last[::-1]]  # sample 0's last chunk
    after = row_losses(changed)
    assert not torch.isclose(after[0], before[0], rtol=0, atol=1e-5)
    assert torch.allclose(after[1:], before[1:], rtol=0, atol=1e-6)
