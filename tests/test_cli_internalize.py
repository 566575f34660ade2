"""`shine internalize` on the shipped toy models: one PEFT adapter per document that answers its
questions, long documents chunked, everything composed into one, and one-line user errors."""

from __future__ import annotations

import json

import pytest
import torch

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from cli_checks import one_line_error
from facts_documents import facts_model, held_out, long_document, write_documents
from typer.testing import CliRunner

from shine_hf import ShineAdapter
from shine_hf.assets import FACTS_SHINE
from shine_hf.cli import app
from shine_hf.modeling.chunking import split_text

runner = CliRunner()
MODEL = ["--model", str(FACTS_SHINE)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _same(a: ShineAdapter, b: ShineAdapter) -> bool:
    return all(torch.equal(a.lora[layer][name].A, b.lora[layer][name].A)
               and torch.equal(a.lora[layer][name].B, b.lora[layer][name].B)
               for layer in a.lora for name in a.lora[layer])


def test_one_adapter_per_document_answers_its_questions(tmp_path):
    records = held_out(3)
    documents = write_documents(tmp_path / "docs", records)
    out = tmp_path / "adapters"
    result = runner.invoke(app, ["internalize", *map(str, documents), *MODEL, "--out", str(out), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["doc0", "doc1", "doc2"]
    model = facts_model()
    for index, record in enumerate(records):
        assert f"{documents[index]} → {out / f'doc{index}'} (" in result.stdout
        directory = out / f"doc{index}"
        files = {path.name for path in directory.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
        config = json.loads((directory / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == model.config.lora_rank
        adapter = ShineAdapter.from_pretrained(directory)
        answers = model.generate_text(record["questions"], adapter=adapter, max_new_tokens=8)
        assert answers == list(record["answers"])


def test_documents_the_backbone_cannot_read_whole_are_chunked(tmp_path):
    model = facts_model()
    text = long_document(held_out(20))
    (tmp_path / "long.txt").write_text(text)
    (tmp_path / "short.txt").write_text(held_out(1)[0]["context"])
    limit = model.max_context_tokens
    assert len(model.tokenizer(text, verbose=False)["input_ids"]) > limit
    chunks = len(split_text(text, model.tokenizer, limit, 0))
    result = runner.invoke(app, ["internalize", str(tmp_path / "long.txt"), str(tmp_path / "short.txt"), *MODEL,
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"in {chunks} chunks composed by concat, rank {chunks * model.config.lora_rank})" in result.stdout
    assert "short.txt → " in result.stdout and "short (34 tokens, rank 8)" in result.stdout
    saved = ShineAdapter.from_pretrained(tmp_path / "out" / "long")
    assert _same(saved, model.internalize(text, chunk_tokens=limit, compose="concat"))


def test_chunk_size_overlap_and_mean_composition(tmp_path):
    model = facts_model()
    text = long_document(held_out(4))
    (tmp_path / "four.txt").write_text(text)
    result = runner.invoke(app, ["internalize", str(tmp_path / "four.txt"), *MODEL, "--out", str(tmp_path / "out"),
                                 "--chunk-tokens", "40", "--overlap-tokens", "8", "--compose", "mean"])
    assert result.exit_code == 0, result.output
    chunks = len(split_text(text, model.tokenizer, 40, 8))
    assert chunks > 3 and f"in {chunks} chunks composed by mean" in result.stdout
    expected = model.internalize(text, chunk_tokens=40, overlap_tokens=8, compose="mean")
    assert _same(ShineAdapter.from_pretrained(tmp_path / "out" / "four"), expected)


def test_compose_all_writes_one_adapter(tmp_path):
    records = held_out(2)
    documents = write_documents(tmp_path / "docs", records)
    result = runner.invoke(app, ["internalize", *map(str, documents), *MODEL, "--out", str(tmp_path / "out"),
                                 "--compose-all", "both"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["both"]
    assert "2 documents → " in result.stdout and "concat, rank 16)" in result.stdout
    model = facts_model()
    separate = model.internalize([record["context"] for record in records])  # the command's batch, as one call
    expected = ShineAdapter.compose([separate[0], separate[1]], "concat")
    assert _same(ShineAdapter.from_pretrained(tmp_path / "out" / "both"), expected)


def test_an_existing_adapter_is_replaced(tmp_path):
    documents = write_documents(tmp_path / "docs", held_out(2))
    out = tmp_path / "out"
    (out / "doc0").mkdir(parents=True)
    (out / "doc0" / "notes.txt").write_text("mine")
    # doc1's adapter saved as doc0, then doc0's run replaces it
    assert runner.invoke(app, ["internalize", str(documents[1]), *MODEL, "--out", str(out),
                               "--compose-all", "doc0"]).exit_code == 0
    assert not _same(ShineAdapter.from_pretrained(out / "doc0"), facts_model().internalize(held_out(1)[0]["context"]))
    result = runner.invoke(app, ["internalize", str(documents[0]), *MODEL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    adapter = ShineAdapter.from_pretrained(out / "doc0")
    assert _same(adapter, facts_model().internalize(held_out(1)[0]["context"]))
    assert (out / "doc0" / "notes.txt").read_text() == "mine"  # not an adapter file: left alone


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["{tmp}/missing.txt"], "No such document: {tmp}/missing.txt"),
        (["{tmp}/folder"], "{tmp}/folder is a directory"),
        (["{tmp}/latin1.txt"], "{tmp}/latin1.txt is not UTF-8 text"),
        (["{tmp}/empty.txt"], "{tmp}/empty.txt is empty"),
        (["{tmp}/a/same.txt", "{tmp}/b/same.txt"], "would both be saved as the adapter 'same'"),
        (["{tmp}/good.txt", "{tmp}/good.txt"], "{tmp}/good.txt is given twice"),
        (["{tmp}/good.txt", "--out", "{tmp}/a/same.txt"], "--out {tmp}/a/same.txt is a file"),
        (["{tmp}/good.txt", "--out", "{tmp}"], "{tmp}/good is a file, where the adapter directory would go"),
        (["{tmp}/good.txt", "--compose-all", "../up"], "--compose-all '../up' is not a plain name"),
        (["{tmp}/good.txt", "--chunk-tokens", "8", "--overlap-tokens", "8"], "must be smaller than --chunk-tokens"),
        (["{tmp}/good.txt", "--chunk-tokens", "0"], "--chunk-tokens"),
        (["{tmp}/good.txt", "--batch-size", "0"], "--batch-size"),
        (["{tmp}/good.txt", "--compose", "max"], "--compose"),
        (["{tmp}/good.txt", "--dtype", "float8"], "Unknown dtype 'float8'"),
        (["{tmp}/good.txt", "--device", "nowhere"], "Cannot use the device 'nowhere'"),
        (["{tmp}/good.txt", "--model", "{tmp}/no-checkpoint"], "No such checkpoint directory"),
        (["{tmp}/good.txt", "--chunk-tokens", "5000"], "beyond what the backbone can read"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(tmp_path, arguments, fragment):
    (tmp_path / "folder").mkdir()
    (tmp_path / "latin1.txt").write_bytes("Café in Zürich.".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "same.txt").write_text("Mivebu lives in Hulvor.")
    (tmp_path / "good.txt").write_text("Mivebu lives in Hulvor.")
    (tmp_path / "good").write_text("a file where the adapter would go")
    out = tmp_path / "out"
    given = [argument.format(tmp=tmp_path) for argument in arguments]
    options = {"--model": str(FACTS_SHINE), "--out": str(out)}
    for flag in [argument for argument in given if argument in options]:
        options.pop(flag)
    options_list = [x for pair in options.items() for x in pair]
    one_line_error(runner.invoke(app, ["internalize", *given, *options_list]), fragment.format(tmp=tmp_path))
    assert not out.exists()


def test_documents_are_required():
    one_line_error(runner.invoke(app, ["internalize", *MODEL, "--out", "x"]), "Missing argument 'DOCUMENT'")
