"""`shine push` against the local test hub: a saved adapter, a saved checkpoint (its backbone never
read), the options, and one-line user errors."""

from __future__ import annotations

import json
import socket

import pytest
import torch

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from cli_checks import one_line_error
from facts_documents import facts_model, held_out
from huggingface_hub import HfApi, ModelCard
from peft import PeftConfig
from typer.testing import CliRunner

from shine_hf import ShineAdapter, ShineForCausalLM
from shine_hf.assets import FACTS_BACKBONE, FACTS_SHINE
from shine_hf.cli import app
from shine_hf.testing.models import tiny_shine

runner = CliRunner()


@pytest.fixture()
def saved_adapter(tmp_path):
    """A held-out document's adapter as `shine internalize` writes it: its base model is a local path."""
    directory = tmp_path / "adapters" / "doc0"
    facts_model().internalize(held_out(1)[0]["context"]).save_pretrained(directory)
    return directory


def _same_adapter(a: ShineAdapter, b: ShineAdapter) -> bool:
    return all(torch.equal(a.lora[layer][name].A, b.lora[layer][name].A)
               and torch.equal(a.lora[layer][name].B, b.lora[layer][name].B)
               for layer in a.lora for name in a.lora[layer])


def test_an_adapter_is_pushed_in_one_commit(saved_adapter, hub):
    repo_id = hub.unique_repo_id("facts-adapter")
    result = runner.invoke(app, ["push", str(saved_adapter), repo_id, "--backbone", "org/facts-llama",
                                 "--commit-message", "doc0 adapter", "--private"])  # (the test hub ignores it)
    assert result.exit_code == 0, result.output
    assert f"Pushed the adapter {saved_adapter} → " in result.stdout
    api = HfApi()
    assert [commit.title for commit in api.list_repo_commits(repo_id)].count("doc0 adapter") == 1
    assert PeftConfig.from_pretrained(repo_id).base_model_name_or_path == "org/facts-llama"
    assert ModelCard.load(repo_id).data.base_model == "org/facts-llama"
    assert _same_adapter(ShineAdapter.from_pretrained(repo_id), ShineAdapter.from_pretrained(saved_adapter))
    # the local files are left as they were
    assert json.loads((saved_adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        FACTS_BACKBONE)


def test_a_local_backbone_needs_its_hub_id_before_anything_is_created(saved_adapter, hub):
    repo_id = hub.unique_repo_id("refused")
    one_line_error(runner.invoke(app, ["push", str(saved_adapter), repo_id]),
                    f"The backbone is the local path '{FACTS_BACKBONE}', which means nothing on the Hub: give its "
                    f"Hub id with --backbone")
    one_line_error(runner.invoke(app, ["push", str(FACTS_SHINE), repo_id]), "'../facts-llama'")
    one_line_error(runner.invoke(app, ["push", str(FACTS_SHINE), repo_id, "--backbone", str(FACTS_BACKBONE)]),
                    "give its Hub id with --backbone")
    assert not HfApi().repo_exists(repo_id)


def test_a_checkpoint_is_pushed_to_a_branch_and_loads_back(hub):
    repo_id = hub.unique_repo_id("facts-shine")
    result = runner.invoke(app, ["push", str(FACTS_SHINE), repo_id, "--backbone", "org/facts-llama",
                                 "--revision", "v1"])
    assert result.exit_code == 0, result.output
    assert f"Pushed the checkpoint {FACTS_SHINE} → " in result.stdout
    api = HfApi()
    files = set(api.list_repo_files(repo_id, revision="v1"))
    assert {"config.json", "model.safetensors", "modeling_shine.py", "README.md", "tokenizer.json"} <= files
    assert "config.json" not in api.list_repo_files(repo_id)  # main holds only the initial commit
    pushed = ShineForCausalLM.from_pretrained(repo_id, revision="v1", backbone=FACTS_BACKBONE)
    assert pushed.config.backbone_name_or_path == str(FACTS_BACKBONE)  # a passed-in local backbone wins in memory
    config = json.loads(open(api.hf_hub_download(repo_id, "config.json", revision="v1")).read())
    assert config["backbone_name_or_path"] == "org/facts-llama"
    local = facts_model().hypernetwork.state_dict()
    assert all(torch.equal(tensor, local[name]) for name, tensor in pushed.hypernetwork.state_dict().items())


def test_pushing_a_checkpoint_never_reads_its_backbone(tmp_path, hub):
    """The backbone named in the config does not exist anywhere: only its config (inside ours) is needed."""
    model = tiny_shine("qwen3")
    model.config.backbone_name_or_path = hub.unique_repo_id("never-pushed-backbone")
    model.save_pretrained(tmp_path / "shine")
    repo_id = hub.unique_repo_id("shine-tiny")
    result = runner.invoke(app, ["push", str(tmp_path / "shine"), repo_id])
    assert result.exit_code == 0, result.output
    pushed = ShineForCausalLM.from_pretrained(repo_id, backbone=model.backbone)
    original = model.hypernetwork.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in pushed.hypernetwork.state_dict().items())
    assert not HfApi().repo_exists(model.config.backbone_name_or_path)


@pytest.mark.parametrize(
    ("source", "repo", "fragment"),
    [
        ("{tmp}/nowhere", "tester/x", "{tmp}/nowhere is not a directory"),
        ("{tmp}/empty", "tester/x", "holds neither adapter_config.json (an adapter) nor config.json"),
        ("{tmp}/both", "tester/x", "holds both adapter_config.json and config.json"),
        ("{adapter}", "not/a/valid/repo", "Could not push"),
    ],
)
def test_user_errors_are_one_line(tmp_path, saved_adapter, hub, source, repo, fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "adapter_config.json").write_text("{}")
    (tmp_path / "both" / "config.json").write_text("{}")
    arguments = [source.format(tmp=tmp_path, adapter=saved_adapter), repo, "--backbone", "org/facts-llama"]
    one_line_error(runner.invoke(app, ["push", *arguments]), fragment.format(tmp=tmp_path))


def test_an_unreachable_hub_is_one_line(saved_adapter, hub, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    repo_id = hub.unique_repo_id("unreachable")
    line = one_line_error(runner.invoke(app, ["push", str(saved_adapter), repo_id, "--backbone", "org/facts-llama"]),
                           f"Could not push {saved_adapter} to {repo_id}: ")
    assert "Connection refused" in line or "connect" in line.lower()
