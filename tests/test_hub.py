"""Hub round trips through the real huggingface_hub client against the local test hub."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from peft import PeftModel

from shine_hf import ShineAdapter, ShineForCausalLM
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import randomize_hypernetwork, tiny_shine

CONTEXT = "The contract was signed by Alice Moreau in Lyon on 3 March 1998."


@pytest.fixture()
def pushed(hub):
    """A tiny backbone and a SHINE model that references it by repo id, both pushed to the test hub."""
    backbone_repo = hub.unique_repo_id("tiny-qwen3")
    tiny_backbone("qwen3").push_to_hub(backbone_repo)
    model = tiny_shine("qwen3")
    model.config.backbone_name_or_path = backbone_repo
    repo_id = hub.unique_repo_id("shine-tiny")
    model.push_to_hub(repo_id, commit_message="first")
    return model, repo_id


def _same_adapter(a, b) -> bool:
    return all(
        torch.equal(a.lora[layer][name].A, b.lora[layer][name].A)
        and torch.equal(a.lora[layer][name].B, b.lora[layer][name].B)
        for layer in a.lora for name in a.lora[layer]
    )


def test_push_then_from_pretrained_by_repo_id(pushed):
    model, repo_id = pushed
    loaded = ShineForCausalLM.from_pretrained(repo_id)
    original, restored = model.hypernetwork.state_dict(), loaded.hypernetwork.state_dict()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert _same_adapter(model.internalize(CONTEXT), loaded.internalize(CONTEXT))


def test_push_is_one_commit_with_a_valid_model_card(pushed):
    _, repo_id = pushed
    api = HfApi()
    files = set(api.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "modeling_shine.py", "README.md"} <= files
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "transformers"
    assert card.data.base_model == ShineForCausalLM.from_pretrained(repo_id).config.backbone_name_or_path
    assert {"shine", "lora", "hypernetwork"} <= set(card.data.tags)
    assert f'from_pretrained("{repo_id}")' in card.text
    commits = api.list_repo_commits(repo_id)
    assert sum(c.title == "first" for c in commits) == 1


def test_revisions_select_what_was_pushed(pushed):
    model, repo_id = pushed
    first_sha = HfApi().model_info(repo_id).sha
    before = model.internalize(CONTEXT)
    randomize_hypernetwork(model, seed=123)
    model.push_to_hub(repo_id, commit_message="second")
    assert _same_adapter(ShineForCausalLM.from_pretrained(repo_id).internalize(CONTEXT), model.internalize(CONTEXT))
    old = ShineForCausalLM.from_pretrained(repo_id, revision=first_sha)
    assert _same_adapter(old.internalize(CONTEXT), before)


def test_offline_loading_from_the_cache(pushed, hub):
    model, repo_id = pushed
    ShineForCausalLM.from_pretrained(repo_id)  # populate the cache
    expected = model.internalize(CONTEXT).lora[0]["self_attn.q_proj"].A
    out = hub.home / "offline_A.pt"
    script = textwrap.dedent(f"""
        import torch
        from shine_hf import ShineForCausalLM
        model = ShineForCausalLM.from_pretrained({repo_id!r})
        torch.save(model.internalize({CONTEXT!r}).lora[0]["self_attn.q_proj"].A, {str(out)!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # unreachable on purpose
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(out, weights_only=True), expected)


def test_missing_repo_and_revision_raise_hub_errors(pushed, hub):
    _, repo_id = pushed
    # transformers re-raises the hub's typed errors as OSError with a message naming the problem
    missing = hub.unique_repo_id("does-not-exist")
    with pytest.raises(OSError, match=missing) as error:
        ShineForCausalLM.from_pretrained(missing)
    assert isinstance(error.value.__cause__ or error.value, RepositoryNotFoundError)
    with pytest.raises(OSError, match="no-such-branch") as error:
        ShineForCausalLM.from_pretrained(repo_id, revision="no-such-branch")
    assert isinstance(error.value.__cause__ or error.value, RevisionNotFoundError)


def test_adapter_push_and_peft_load_by_repo_id(pushed, hub):
    model, _ = pushed
    adapter = model.internalize(CONTEXT)
    adapter_repo = hub.unique_repo_id("doc-lora")
    adapter.push_to_hub(adapter_repo)
    ids = model.tokenizer(["Who signed the contract?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        live = model(ids, adapter=adapter).logits
        peft_model = PeftModel.from_pretrained(tiny_backbone("qwen3"), adapter_repo).eval()
        via_peft = peft_model(input_ids=ids).logits
        reloaded = model(ids, adapter=ShineAdapter.from_pretrained(adapter_repo)).logits
    assert torch.allclose(via_peft, live, atol=1e-5)
    assert torch.equal(reloaded, live)
    card = ModelCard.load(adapter_repo)
    assert card.data.library_name == "peft" and "hypernetwork" in card.data.tags
