"""`shine internalize` on the shipped toy models: one PEFT adapter per document that answers its
questions, long documents chunked, everything composed into one, routers (--route), and one-line
user errors."""

from __future__ import annotations

import copy
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
from shine_hf.modeling.adapter import ADAPTER_FILES
from shine_hf.modeling.chunking import split_text
from shine_hf.routing import ROUTER_CONFIG_NAME, RoutedAdapter, is_router_directory

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


def test_route_writes_a_router_per_document(tmp_path):
    """--route without --chunk-tokens: chunks as long as the backbone reads; a short document is one chunk."""
    model = facts_model()
    text = long_document(held_out(20))
    (tmp_path / "long.txt").write_text(text)
    (tmp_path / "short.txt").write_text(held_out(1)[0]["context"])
    out = tmp_path / "out"
    result = runner.invoke(app, ["internalize", str(tmp_path / "long.txt"), str(tmp_path / "short.txt"), *MODEL,
                                 "--out", str(out), "--route", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    chunks = split_text(text, model.tokenizer, model.max_context_tokens, 0)
    assert len(chunks) > 1
    assert f"long.txt → {out / 'long'} (routed: {len(chunks)} chunks, top-2, concat)" in result.stdout
    assert f"short.txt → {out / 'short'} (routed: 1 chunk, top-1, concat)" in result.stdout  # top-k: at most all
    router = RoutedAdapter.from_pretrained(out / "long")
    assert (router.chunks, router.top_k, router.method) == (chunks, 2, "concat")
    expected = model.internalize(text, chunk_tokens=model.max_context_tokens, compose=None)
    assert all(_same(router.adapters[i], expected[i]) for i in range(len(chunks)))
    short = RoutedAdapter.from_pretrained(out / "short")
    assert (short.chunks, short.top_k) == ([held_out(1)[0]["context"]], 1)
    assert _same(short.adapters[0], model.internalize(held_out(1)[0]["context"]))


def test_route_chunk_size_overlap_and_mean_and_peft_loads_every_chunk(tmp_path):
    from peft import PeftModel

    model = facts_model()
    records = held_out(4)
    text = long_document(records)
    (tmp_path / "four.txt").write_text(text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["internalize", str(tmp_path / "four.txt"), *MODEL, "--out", str(out), "--route",
                                 "--chunk-tokens", "40", "--overlap-tokens", "8", "--compose", "mean"])
    assert result.exit_code == 0, result.output
    chunks = split_text(text, model.tokenizer, 40, 8)
    assert f"(routed: {len(chunks)} chunks, top-1, mean)" in result.stdout
    directory = out / "four"
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", *(f"chunk-{i:05d}" for i in range(len(chunks))),
                                                          ROUTER_CONFIG_NAME]
    router = RoutedAdapter.from_pretrained(directory)
    assert (router.chunks, router.top_k, router.method) == (chunks, 1, "mean")
    expected = RoutedAdapter.from_document(model, text, chunk_tokens=40, overlap_tokens=8)
    ids = model.tokenizer([records[0]["questions"][0]], return_tensors="pt")["input_ids"]
    for index in range(len(chunks)):
        assert _same(router.adapters[index], expected.adapters[index])
        peft_model = PeftModel.from_pretrained(copy.deepcopy(model.backbone), directory / f"chunk-{index:05d}")
        with torch.no_grad():
            logits = peft_model.eval()(input_ids=ids).logits
            shine = model(input_ids=ids, adapter=router.adapters[index]).logits
        torch.testing.assert_close(logits, shine)


def _entries(directory):
    return sorted(path.name for path in directory.iterdir())


@pytest.mark.parametrize("notes", [False, True], ids=["adapter-only", "with-notes"])
def test_a_router_and_an_adapter_replace_each_other_without_leftovers(tmp_path, notes):
    """Plain → router → plain in one directory: each save leaves only its own files (and the user's)."""
    (document,) = write_documents(tmp_path / "docs", held_out(1))
    out = tmp_path / "out"
    mine = ["notes.txt"] if notes else []
    if notes:
        (out / "doc0").mkdir(parents=True)
        (out / "doc0" / "notes.txt").write_text("mine")
    plain = sorted([*mine, "README.md", "adapter_config.json", "adapter_model.safetensors"])
    assert set(plain) - set(mine) <= ADAPTER_FILES
    base = ["internalize", str(document), *MODEL, "--out", str(out)]
    assert runner.invoke(app, base).exit_code == 0
    assert _entries(out / "doc0") == plain
    result = runner.invoke(app, [*base, "--route", "--chunk-tokens", "16"])
    assert result.exit_code == 0, result.output
    router = RoutedAdapter.from_pretrained(out / "doc0")
    assert len(router) > 1
    assert _entries(out / "doc0") == sorted([*mine, "README.md", *(f"chunk-{i:05d}" for i in range(len(router))),
                                             ROUTER_CONFIG_NAME])
    assert runner.invoke(app, base).exit_code == 0
    assert _entries(out / "doc0") == plain and not is_router_directory(out / "doc0")
    assert _same(ShineAdapter.from_pretrained(out / "doc0"), facts_model().internalize(held_out(1)[0]["context"]))
    if notes:
        assert (out / "doc0" / "notes.txt").read_text() == "mine"
    assert _entries(out) == ["doc0"]  # no staging or parked directories left


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
        (["{tmp}/good.txt", "--route", "--compose-all", "all"], "--route keeps each document as its own router"),
        (["{tmp}/good.txt", "--top-k", "2"], "--top-k applies to routers: add --route"),
        (["{tmp}/good.txt", "--route", "--top-k", "0"], "--top-k"),
        (["{tmp}/good.txt", "--route", "--chunk-tokens", "5000"], "beyond what the backbone can read"),
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
