"""`shine_hf.demo` without a browser: the page's handlers, its content, the adapter zip, `shine demo` errors.

The browser drives the same page in tests/test_demo_browser.py.
"""

from __future__ import annotations

import socket
import sys
import time
import zipfile

import gradio as gr
import pytest
import torch
from typer.testing import CliRunner

from shine_hf import CheckpointError, ShineAdapter
from shine_hf.assets import FACTS_CONTEXT_TEMPLATE, FACTS_DATA, FACTS_SHINE
from shine_hf.cli import app
from shine_hf.demo import (
    DemoCallbacks,
    ServerStartError,
    build_demo,
    load_demo_model,
    serve,
    write_adapter_zip,
)
from shine_hf.demo.app import MODEL_QUEUE
from shine_hf.demo.callbacks import format_seconds, format_size
from shine_hf.modeling.prompting import IN_CONTEXT_TEMPLATE
from shine_hf.testing.facts import synthetic_facts

runner = CliRunner()


@pytest.fixture(scope="module")
def toy():
    """The shipped toy model and its page content, as `shine demo` loads them by default."""
    return load_demo_model()


@pytest.fixture(scope="module")
def held_out():
    """The held-out synthetic-facts record the default page offers."""
    return synthetic_facts(**FACTS_DATA)["test"][0]


@pytest.fixture()
def callbacks(toy):
    model, content = toy
    return DemoCallbacks(model, context_template=content.context_template)


@pytest.fixture(scope="module")
def internalized(toy, held_out):
    model, content = toy
    state, _, _ = DemoCallbacks(model, context_template=content.context_template).internalize(held_out["context"])
    return state


def _assert_same_tensors(adapter: ShineAdapter, expected: ShineAdapter) -> None:
    tensors = adapter.peft_state_dict()
    assert tensors.keys() == expected.peft_state_dict().keys()
    for key, tensor in expected.peft_state_dict().items():
        assert torch.equal(tensors[key], tensor), key


def test_default_page_offers_a_held_out_document_and_says_the_model_is_a_toy(toy, held_out):
    _, content = toy
    train_entities = {e for entities in synthetic_facts(**FACTS_DATA)["train"]["entities"] for e in entities}
    assert content.example_document == held_out["context"]
    assert not set(held_out["entities"]) & train_entities
    assert content.example_questions == tuple(held_out["questions"])
    assert content.context_template == FACTS_CONTEXT_TEMPLATE
    assert "toy" in content.notice and "synthetic-facts" in content.notice


def test_every_suggested_question_is_answered_right_with_and_without_the_document(toy, held_out, internalized):
    model, content = toy
    callbacks = DemoCallbacks(model, context_template=content.context_template)
    for question, answer in zip(content.example_questions, held_out["answers"], strict=True):
        shine, shine_timing, cleared, cleared_timing = callbacks.answer_with_adapter(question, internalized)
        in_context, context_timing = callbacks.answer_in_context(question, internalized)
        assert (shine, in_context) == (answer, answer), question
        assert (cleared, cleared_timing) == ("", "")
        assert "through the LoRA" in shine_timing and "document in the prompt" in context_timing


def test_shine_answer_is_the_adapter_answer_and_in_context_answer_reads_the_document(toy, held_out, internalized):
    model, content = toy
    callbacks = DemoCallbacks(model, context_template=content.context_template, max_new_tokens=8)
    question = held_out["questions"][1]
    shine, *_ = callbacks.answer_with_adapter(question, internalized)
    in_context, _ = callbacks.answer_in_context(question, internalized)
    assert shine == model.generate_text(question, adapter=internalized.adapter, max_new_tokens=8)
    assert in_context == model.generate_text(question, context=held_out["context"], max_new_tokens=8,
                                             system_prompt=model.config.system_prompt,
                                             context_template=FACTS_CONTEXT_TEMPLATE)


def test_internalize_returns_the_adapter_status_and_a_peft_zip(callbacks, toy, held_out, tmp_path):
    model, _ = toy
    state, status, download = callbacks.internalize(held_out["context"])
    expected = model.internalize(held_out["context"])
    assert state.document == held_out["context"]
    _assert_same_tensors(state.adapter, expected)
    assert status.startswith("✓ Internalized 28 words in **") and format_seconds(state.seconds) in status
    assert download["value"] == str(state.zip_path) and download["interactive"] is True
    assert format_size(state.zip_path.stat().st_size) in download["label"]

    with zipfile.ZipFile(state.zip_path) as archive:
        folder = state.zip_path.stem
        assert sorted(archive.namelist()) == sorted(
            f"{folder}/{name}" for name in ("README.md", "adapter_config.json", "adapter_model.safetensors")
        )
        archive.extractall(tmp_path)
    _assert_same_tensors(ShineAdapter.from_pretrained(tmp_path / folder), expected)


def test_timings_are_measured_around_the_model_calls(callbacks, toy, held_out, monkeypatch):
    model, _ = toy
    pause = 0.25

    def slow(method):
        def wrapper(*args, **kwargs):
            time.sleep(pause)
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(model, "internalize", slow(model.internalize))
    state, _, _ = callbacks.internalize(held_out["context"])
    assert state.seconds >= pause
    monkeypatch.setattr(model, "generate_text", slow(model.generate_text))
    question = held_out["questions"][0]
    for timing in (callbacks.answer_with_adapter(question, state)[1], callbacks.answer_in_context(question, state)[1]):
        value, unit = timing.split("**")[1].split()
        assert float(value) / {"ms": 1e3, "s": 1.0}[unit] >= pause, timing


def test_user_mistakes_become_messages_on_the_page(callbacks, toy, internalized):
    model, _ = toy
    for nothing in ("", " \n "):
        with pytest.raises(gr.Error, match="Paste or upload a document first"):
            callbacks.internalize(nothing)
    too_long = model.max_context_tokens + 1
    with pytest.raises(gr.Error, match=rf"A context is {too_long} tokens long; .* at most {too_long - 1}\. Split"):
        callbacks.internalize("word " * too_long)
    with pytest.raises(gr.Error, match="Internalize a document first"):
        callbacks.answer_with_adapter("Where does Mivebu live?", None)
    with pytest.raises(gr.Error, match="Internalize a document first"):
        callbacks.answer_in_context("Where does Mivebu live?", None)
    with pytest.raises(gr.Error, match="Type a question first"):
        callbacks.answer_with_adapter("   ", internalized)


def test_uploads_are_read_as_utf8_text(callbacks, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("Mivebu lives in Hulvor. — ünïcode", encoding="utf-8")
    assert callbacks.read_upload(str(text)) == "Mivebu lives in Hulvor. — ünïcode"
    binary = tmp_path / "doc.md"
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(gr.Error, match=r"doc\.md is not UTF-8 text"):
        callbacks.read_upload(str(binary))
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(b"%PDF")
    with pytest.raises(gr.Error, match=r"doc.pdf is not a text file: upload \.txt or \.md"):
        callbacks.read_upload(str(pdf))
    with pytest.raises(gr.Error, match="No file"):
        callbacks.read_upload(None)


def test_adapter_zip_is_replaced_whole_and_never_left_half_written(internalized, tmp_path, monkeypatch):
    destination = tmp_path / "shine-adapter-x.zip"
    destination.write_bytes(b"an earlier zip")

    def crash(self, directory):
        (directory / "adapter_config.json").parent.mkdir(parents=True)
        (directory / "adapter_config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ShineAdapter, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_adapter_zip(internalized.adapter, destination)
    assert destination.read_bytes() == b"an earlier zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shine-adapter-x.zip"]
    monkeypatch.undo()
    write_adapter_zip(internalized.adapter, destination)
    assert zipfile.is_zipfile(destination)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shine-adapter-x.zip"]


def test_page_has_the_controls_and_runs_the_model_one_event_at_a_time(toy):
    model, content = toy
    demo = build_demo(model, content)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"document", "upload", "internalize", "status", "download", "question", "ask", "shine-answer",
            "shine-timing", "context-answer", "context-timing", "notice"} <= ids
    model_events = [f for f in demo.fns.values() if f.name in ("internalize", "answer_with_adapter",
                                                                 "answer_in_context")]
    assert len(model_events) == 5  # internalize; ask button and question submit each chain two answers
    assert {(f.concurrency_id, f.concurrency_limit) for f in model_events} == {(MODEL_QUEUE, 1)}


def test_a_checkpoint_by_path_gets_a_plain_page(toy):
    model, content = load_demo_model(str(FACTS_SHINE))
    assert content.model_name == str(FACTS_SHINE)
    assert content.example_document is None and content.example_questions == ()
    assert content.context_template == IN_CONTEXT_TEMPLATE
    assert str(FACTS_SHINE) in content.notice
    toy_model, _ = toy
    for name, tensor in toy_model.hypernetwork.state_dict().items():
        assert torch.equal(model.hypernetwork.state_dict()[name], tensor), name


def test_unloadable_checkpoints_are_checkpoint_errors(tmp_path, hub):
    with pytest.raises(CheckpointError, match="No such checkpoint directory"):
        load_demo_model(str(tmp_path / "missing"))
    missing = hub.unique_repo_id("no-such-shine")
    with pytest.raises(CheckpointError, match=f"Could not load the SHINE checkpoint '{missing}'"):
        load_demo_model(missing)


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path):
    result = runner.invoke(app, ["demo", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: No such checkpoint directory"), result.stderr


@pytest.fixture()
def taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_taken_port_is_one_typed_error(toy, taken_port):
    model, content = toy
    with pytest.raises(ServerStartError, match=f"could not start on 127.0.0.1:{taken_port}: Cannot find empty port"):
        serve(build_demo(model, content), port=taken_port)


def test_cli_reports_a_taken_port_in_one_line(taken_port):
    result = runner.invoke(app, ["demo", "--port", str(taken_port)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: The demo could not start on 127.0.0.1:{taken_port}")


def test_cli_without_the_demo_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "shine_hf.demo", None)  # what a missing gradio looks like to the import
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'shine-hf[demo]'" in lines[0], result.stderr


def test_cli_help_lists_the_options():
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--share", "--device", "--dtype", "--max-new-tokens"):
        assert option in result.stdout


def test_format_helpers():
    assert format_seconds(0.0123) == "12 ms" and format_seconds(2.5) == "2.50 s"
    assert format_size(100) == "1 KB" and format_size(2048) == "2 KB" and format_size(3 * 1024 * 1024) == "3.0 MB"
