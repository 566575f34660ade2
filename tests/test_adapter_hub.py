"""ShineAdapter's base model (Hub id vs local path) and push_to_hub against the local test hub."""

from __future__ import annotations

import json
import os

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from peft import AutoPeftModelForCausalLM, PeftConfig

from shine_hf import CheckpointError, ConfigError, IncompatibleAdapterError, ShineAdapter, ShineForCausalLM
from shine_hf.testing import build_chat_tokenizer, tiny_backbone
from shine_hf.testing.models import randomize_hypernetwork, tiny_shine

CONTEXT = "The contract was signed by Alice Moreau in Lyon on 3 March 1998."


@pytest.fixture()
def local_backbone_adapter(tmp_path, monkeypatch):
    """An adapter from a SHINE model whose backbone was loaded from the relative path `./backbone`."""
    monkeypatch.chdir(tmp_path)
    tiny_backbone("qwen3").save_pretrained("backbone")
    model = ShineForCausalLM.from_backbone("backbone", tokenizer=build_chat_tokenizer(), lora_rank=4,
                                           metalora_rank=4, lora_scale=0.05)
    randomize_hypernetwork(model)
    return model.eval().internalize(CONTEXT)


def test_a_relative_backbone_path_is_saved_as_an_absolute_one(local_backbone_adapter, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    local_backbone_adapter.save_pretrained("adapter")
    config = json.loads((elsewhere / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "backbone")
    # PEFT finds the backbone from the saved adapter alone, from any working directory
    model = AutoPeftModelForCausalLM.from_pretrained(elsewhere / "adapter")
    assert model.peft_config["default"].base_model_name_or_path == str(tmp_path / "backbone")
    card = ModelCard.load(elsewhere / "adapter" / "README.md")
    assert card.data.base_model is None  # a local path is never Hub metadata


def test_push_refuses_a_local_base_model_before_creating_anything(local_backbone_adapter, hub):
    repo_id = hub.unique_repo_id("local-base")
    local_path = local_backbone_adapter.base_model_name_or_path
    with pytest.raises(ConfigError, match=r"local path.*base_model_name_or_path='org/name'"):
        local_backbone_adapter.push_to_hub(repo_id)
    with pytest.raises(ConfigError, match="local path"):
        local_backbone_adapter.push_to_hub(repo_id, base_model_name_or_path="./backbone")
    assert not HfApi().repo_exists(repo_id)
    assert local_backbone_adapter.base_model_name_or_path == local_path


def test_push_names_the_hub_id_given(local_backbone_adapter, hub):
    local_path = local_backbone_adapter.base_model_name_or_path
    repo_id = hub.unique_repo_id("hub-base")
    local_backbone_adapter.push_to_hub(repo_id, base_model_name_or_path="Qwen/Qwen3-8B")
    assert PeftConfig.from_pretrained(repo_id).base_model_name_or_path == "Qwen/Qwen3-8B"
    assert ModelCard.load(repo_id).data.base_model == "Qwen/Qwen3-8B"
    assert local_path not in open(hf_hub_download(repo_id, "README.md")).read()
    assert local_backbone_adapter.base_model_name_or_path == "Qwen/Qwen3-8B"  # as for the model's push


def test_push_is_one_commit_and_creates_a_missing_branch(hub):
    model = tiny_shine("qwen3")
    model.config.backbone_name_or_path = "org/tiny-qwen3"
    adapter = model.internalize(CONTEXT)
    repo_id = hub.unique_repo_id("adapter-branch")
    url = adapter.push_to_hub(repo_id, revision="doc-1", commit_message="adapter for doc 1")
    api = HfApi()
    commits = api.list_repo_commits(repo_id, revision="doc-1")
    assert [c.title for c in commits].count("adapter for doc 1") == 1 and commits[0].commit_id in url
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(
        api.list_repo_files(repo_id, revision="doc-1"))
    assert "adapter_config.json" not in api.list_repo_files(repo_id)  # main holds only the initial commit
    reloaded = ShineAdapter.from_pretrained(repo_id, revision="doc-1")
    ids = model.tokenizer(["Who signed the contract?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids, adapter=reloaded).logits, model(ids, adapter=adapter).logits)


def test_push_needs_a_single_adapter(hub):
    adapters = tiny_shine("qwen3").internalize([CONTEXT, "Bob signed in Paris."])
    repo_id = hub.unique_repo_id("batch")
    with pytest.raises(IncompatibleAdapterError, match="single adapter"):
        adapters.push_to_hub(repo_id)
    assert not HfApi().repo_exists(repo_id)


def test_missing_adapter_repo_is_a_checkpoint_error(hub):
    with pytest.raises(CheckpointError, match=r"adapter_config\.json"):
        ShineAdapter.from_pretrained(hub.unique_repo_id("no-such-adapter"))


def test_base_model_names_that_are_not_local_paths_stay_as_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adapter = tiny_shine("qwen3").internalize(CONTEXT)
    adapter.base_model_name_or_path = "Qwen/Qwen3-8B"
    assert adapter.base_model_name_or_path == "Qwen/Qwen3-8B"
    os.makedirs("org/model")
    adapter.base_model_name_or_path = "org/model"  # an existing directory wins, as in from_pretrained
    assert adapter.base_model_name_or_path == str(tmp_path / "org" / "model")
