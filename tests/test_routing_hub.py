"""Routers on the Hub, against the local test hub: RoutedAdapter.push_to_hub / from_pretrained(repo_id),
the router's card, `is_router`, `shine push` of a router and `shine chat -a org/router`."""

from __future__ import annotations

import json

import pytest
import torch

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from cli_checks import one_line_error
from facts_documents import facts_model, held_out, long_document
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from peft import PeftConfig
from typer.testing import CliRunner

from shine_hf import CheckpointError, ConfigError, RoutedAdapter, ShineAdapter
from shine_hf.assets import FACTS_BACKBONE, FACTS_SHINE
from shine_hf.cli import app
from shine_hf.routing import ROUTER_CONFIG_NAME, is_router
from shine_hf.testing.models import tiny_shine

runner = CliRunner()
CHUNKS = [
    "Alice Moreau signed the contract in Lyon.",
    "Tarsk is the capital of Veloria.",
    "The harbour of Qorvik freezes every winter.",
]


@pytest.fixture(scope="module")
def router():
    """A tiny router of three chunks whose adapters name the Hub id `org/tiny-qwen2` (qwen2: bias deltas)."""
    model = tiny_shine("qwen2")
    model.config.backbone_name_or_path = "org/tiny-qwen2"
    return RoutedAdapter(model.internalize(CHUNKS), CHUNKS, top_k=2, method="mean")


@pytest.fixture()
def local_base_router(router, tmp_path):
    """The same chunk adapters naming a backbone directory of this machine."""
    (tmp_path / "backbone").mkdir()
    adapters = router.adapters[:]
    adapters.base_model_name_or_path = str(tmp_path / "backbone")
    return RoutedAdapter(adapters, CHUNKS)


@pytest.fixture(scope="module")
def facts_router_directory(tmp_path_factory):
    """Four held-out documents in one text, saved as a router of 40-token chunks (one document each) of
    the shipped toy model: its adapters name the local backbone directory."""
    directory = tmp_path_factory.mktemp("routers") / "four"
    routed = RoutedAdapter.from_document(facts_model(), long_document(held_out(4)), chunk_tokens=40)
    assert len(routed) == 4
    routed.save_pretrained(directory)
    return directory


def _same_tensors(first: ShineAdapter, second: ShineAdapter) -> bool:
    return all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for layer, modules in first.lora.items() for name, w in modules.items()
        for a, b in zip(w, second.lora[layer][name], strict=True)
    )


def test_push_and_from_pretrained_round_trip_in_one_commit_on_a_new_branch(router, hub):
    repo_id = hub.unique_repo_id("router")
    url = router.push_to_hub(repo_id, revision="doc-1", commit_message="router for doc 1")
    api = HfApi()
    commits = api.list_repo_commits(repo_id, revision="doc-1")
    assert [c.title for c in commits] == ["router for doc 1", "initial commit"] and commits[0].commit_id in url
    files = set(api.list_repo_files(repo_id, revision="doc-1"))
    chunk_files = {f"chunk-{i:05d}/{name}" for i in range(3)
                   for name in ("adapter_config.json", "adapter_model.safetensors", "README.md")}
    assert files == {".gitattributes", ROUTER_CONFIG_NAME, "README.md", *chunk_files}
    assert ROUTER_CONFIG_NAME not in api.list_repo_files(repo_id)  # main holds only the initial commit
    loaded = RoutedAdapter.from_pretrained(repo_id, revision="doc-1")
    assert (loaded.chunks, loaded.top_k, loaded.method) == (CHUNKS, 2, "mean")
    for row in range(len(CHUNKS)):
        assert _same_tensors(loaded.adapters[row], router.adapters[row])
    assert RoutedAdapter.from_pretrained(repo_id, revision="doc-1", top_k=1, method="concat").top_k == 1


def test_push_refuses_a_local_base_model_before_creating_anything(local_base_router, hub):
    repo_id = hub.unique_repo_id("local-base-router")
    local_path = local_base_router.base_model_name_or_path
    with pytest.raises(ConfigError, match=r"router's base model is the local path.*base_model_name_or_path='org/name'"):
        local_base_router.push_to_hub(repo_id)
    with pytest.raises(ConfigError, match="local path"):
        local_base_router.push_to_hub(repo_id, base_model_name_or_path="./backbone")
    assert not HfApi().repo_exists(repo_id)
    assert local_base_router.base_model_name_or_path == local_path


def test_every_pushed_chunk_and_the_card_name_the_hub_id_given(local_base_router, hub):
    local_path = local_base_router.base_model_name_or_path
    repo_id = hub.unique_repo_id("hub-base-router")
    local_base_router.push_to_hub(repo_id, base_model_name_or_path="Qwen/Qwen3-8B")
    for index in range(len(CHUNKS)):
        config = PeftConfig.from_pretrained(repo_id, subfolder=f"chunk-{index:05d}")
        assert config.base_model_name_or_path == "Qwen/Qwen3-8B"
    card = ModelCard.load(repo_id)
    assert (card.data.base_model, card.data.library_name) == ("Qwen/Qwen3-8B", "peft")
    assert f'RoutedAdapter.from_pretrained("{repo_id}")' in card.text and f"-a {repo_id}" in card.text
    assert local_path not in open(hf_hub_download(repo_id, "README.md")).read()
    assert local_base_router.base_model_name_or_path == "Qwen/Qwen3-8B"  # as for ShineAdapter.push_to_hub


def test_a_saved_router_has_its_own_card_and_replaces_a_stale_one(router, local_base_router, tmp_path):
    target = tmp_path / "saved"
    router.adapters[0].save_pretrained(target)  # a plain adapter and its card were there before
    (target / "notes.txt").write_text("mine")
    router.save_pretrained(target)
    card = ModelCard.load(target / "README.md")
    assert card.data.base_model == "org/tiny-qwen2" and card.data.library_name == "peft"
    assert "routing" in card.data.tags
    assert "SHINE router for org/tiny-qwen2" in card.text and "3 chunks" in card.text
    assert "`chunk-NNNNN/` folder is a standard PEFT adapter" in card.text and "shine chat" in card.text
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "chunk-00000", "chunk-00001", "chunk-00002",
                                                        "notes.txt", ROUTER_CONFIG_NAME]
    local_base_router.save_pretrained(tmp_path / "local")
    assert ModelCard.load(tmp_path / "local" / "README.md").data.base_model is None  # a path is never metadata


def test_a_missing_repo_or_revision_is_a_one_line_checkpoint_error(router, hub):
    missing = hub.unique_repo_id("no-such-router")
    with pytest.raises(CheckpointError, match=f"Can't read the router {missing}: it is not a local directory") as error:
        RoutedAdapter.from_pretrained(missing)
    assert "\n" not in str(error.value)
    repo_id = hub.unique_repo_id("router-revisions")
    router.push_to_hub(repo_id)
    with pytest.raises(CheckpointError, match=f"{repo_id} at revision v9") as error:
        RoutedAdapter.from_pretrained(repo_id, revision="v9")
    assert "\n" not in str(error.value)
    with pytest.raises(TypeError, match="subfolder"):
        RoutedAdapter.from_pretrained(repo_id, subfolder="x")


def test_is_router_asks_the_hub_and_offline_the_cache(router, hub, monkeypatch, tmp_path):
    repo_id = hub.unique_repo_id("router-check")
    router.push_to_hub(repo_id)
    adapter_repo = hub.unique_repo_id("plain-adapter")
    router.adapters[0].push_to_hub(adapter_repo)
    assert is_router(repo_id) and not is_router(adapter_repo)
    assert not is_router(hub.unique_repo_id("missing")) and not is_router(repo_id, revision="v9")
    router.save_pretrained(tmp_path / "here")
    assert is_router(tmp_path / "here") and not is_router(tmp_path / "nowhere")
    RoutedAdapter.from_pretrained(repo_id)  # now in the HF cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert is_router(repo_id) and not is_router(adapter_repo)
    assert RoutedAdapter.from_pretrained(repo_id).chunks == CHUNKS


def test_shine_push_of_a_router(facts_router_directory, hub):
    repo_id = hub.unique_repo_id("facts-router")
    one_line_error(runner.invoke(app, ["push", str(facts_router_directory), repo_id]),
                   f"The backbone is the local path '{FACTS_BACKBONE}', which means nothing on the Hub")
    assert not HfApi().repo_exists(repo_id)
    result = runner.invoke(app, ["push", str(facts_router_directory), repo_id, "--backbone", "org/facts-llama",
                                 "--revision", "v1"])
    assert result.exit_code == 0, result.output
    assert f"Pushed the router {facts_router_directory} → " in result.stdout
    assert [c.title for c in HfApi().list_repo_commits(repo_id, revision="v1")].count("Upload SHINE router") == 1
    pushed, saved = RoutedAdapter.from_pretrained(repo_id, revision="v1"), RoutedAdapter.from_pretrained(
        facts_router_directory)
    assert pushed.chunks == saved.chunks and pushed.base_model_name_or_path == "org/facts-llama"
    assert _same_tensors(pushed.adapters, saved.adapters)
    # the local files are left as they were
    config = json.loads((facts_router_directory / "chunk-00000" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(FACTS_BACKBONE)


def test_shine_chat_routes_through_a_router_on_the_hub(facts_router_directory, hub):
    repo_id = hub.unique_repo_id("facts-router-chat")
    router = RoutedAdapter.from_pretrained(facts_router_directory)
    router.push_to_hub(repo_id, base_model_name_or_path="org/facts-llama")
    questions = [record["questions"][index % len(record["questions"])] for index, record in enumerate(held_out(4))]
    result = runner.invoke(app, ["chat", "--model", str(FACTS_SHINE), "-a", repo_id, "--max-new-tokens", "12"],
                           input="".join(f"{q}\n" for q in questions))
    assert result.exit_code == 0, result.output
    expected = [facts_model().generate_text(q, adapter=router, max_new_tokens=12) for q in questions]
    assert result.stdout.splitlines() == expected
    answers = [record["answers"][index % len(record["answers"])] for index, record in enumerate(held_out(4))]
    assert expected == answers  # each question routed to its document's chunk
    # checked before the model is loaded: a router from the Hub answers alone
    one_line_error(runner.invoke(app, ["chat", "--model", str(FACTS_SHINE), "-a", repo_id, "-a", repo_id],
                                 input="q\n"), f"{repo_id} is a router")
