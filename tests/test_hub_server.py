"""The test hub (tests/hub_server.py) driven by the real huggingface_hub / transformers / peft clients."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from hub_server import HUB_USER, HubContext, HubServer, HubState
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    create_branch,
    create_commit,
    create_repo,
    hf_hub_download,
    list_repo_files,
    model_info,
    snapshot_download,
    upload_file,
    upload_folder,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from safetensors.numpy import save as save_safetensors

WEIGHTS = save_safetensors({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
CONFIG_V1 = {"model_type": "bert", "hidden_size": 8, "note": "v1"}
CONFIG_V2 = {"model_type": "bert", "hidden_size": 8, "note": "v2"}


def _upload_model(hub: HubContext, tmp_path: Path, name: str = "tiny") -> tuple[str, str]:
    """A new repo with config.json, README.md (regular files), model.safetensors (LFS) and a nested
    file, uploaded in one commit; returns `(repo_id, commit_sha)`."""
    folder = tmp_path / name
    (folder / "extra").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG_V1))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / "extra" / "notes.txt").write_text("old notes")
    repo_id = create_repo(hub.unique_repo_id(name)).repo_id
    return repo_id, upload_folder(repo_id=repo_id, folder_path=folder).oid


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def test_hub_fixture_points_the_client_at_a_fresh_cache(hub: HubContext) -> None:
    assert constants.ENDPOINT == hub.url and hub.url.startswith("http://127.0.0.1:")
    assert constants.HF_HUB_CACHE == str(hub.cache_dir) == os.environ["HF_HUB_CACHE"]
    assert constants.HF_HUB_DISABLE_XET
    assert not hub.cache_dir.exists() or not any(hub.cache_dir.iterdir())


def test_create_repo(hub: HubContext) -> None:
    repo_id = hub.unique_repo_id("repo")
    url = create_repo(repo_id)
    assert url.repo_id == repo_id and url == f"{hub.url}/{repo_id}"
    assert create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as conflict:
        create_repo(repo_id)
    assert conflict.value.response.status_code == 409
    assert list_repo_files(repo_id) == [".gitattributes"]  # the Hub's "initial commit"
    assert [c.title for c in HfApi().list_repo_commits(repo_id)] == ["initial commit"]
    api = HfApi()
    assert api.repo_exists(repo_id) and not api.repo_exists(f"{HUB_USER}/missing")


def test_upload_folder_is_one_commit_with_lfs_for_weights(hub: HubContext, tmp_path: Path) -> None:
    first_request = len(hub.server.requests)
    repo_id, sha = _upload_model(hub, tmp_path)
    api = HfApi()
    commits = api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["Upload folder using huggingface_hub", "initial commit"]
    assert commits[0].commit_id == sha and model_info(repo_id).sha == sha
    upload_folder(repo_id=repo_id, folder_path=tmp_path / "tiny")  # files the repo holds already: no commit
    assert len(api.list_repo_commits(repo_id)) == 2
    expected = [".gitattributes", "README.md", "config.json", "extra/notes.txt", "model.safetensors"]
    assert sorted(s.rfilename for s in model_info(repo_id).siblings) == expected == list_repo_files(repo_id)

    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(repo_id)}
    assert top["extra"] == "RepoFolder" and top["model.safetensors"] == "RepoFile" and "extra/notes.txt" not in top
    weights = next(e for e in api.list_repo_tree(repo_id) if e.path == "model.safetensors")
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest() and weights.size == len(WEIGHTS)
    assert [e.path for e in api.list_repo_tree(repo_id, path_in_repo="extra")] == ["extra/notes.txt"]

    # The weights went through the LFS batch API and one PUT; everything else inline in the commit.
    calls = [(r.method, r.path.split("?")[0]) for r in hub.server.requests[first_request:]]
    assert ("POST", f"/{repo_id}.git/info/lfs/objects/batch") in calls
    assert sum(method == "PUT" for method, _ in calls) == 1
    assert calls.count(("POST", f"/api/models/{repo_id}/commit/main")) == 1

    # The same weights in another repo: the LFS batch answers "already stored", nothing is PUT again.
    before_copy = len(hub.server.requests)
    copy_id, _ = _upload_model(hub, tmp_path, name="copy")
    assert not [r for r in hub.server.requests[before_copy:] if r.method == "PUT"]
    assert Path(hf_hub_download(copy_id, "model.safetensors")).read_bytes() == WEIGHTS


def test_downloads_by_branch_and_sha_keep_old_revisions(hub: HubContext, tmp_path: Path) -> None:
    repo_id, sha1 = _upload_model(hub, tmp_path)
    sha2 = create_commit(repo_id, commit_message="second", operations=[
        CommitOperationAdd("config.json", json.dumps(CONFIG_V2).encode()),
        CommitOperationDelete("extra/notes.txt"),
    ]).oid
    assert sha2 != sha1 and model_info(repo_id).sha == sha2 and model_info(repo_id, revision=sha1).sha == sha1
    assert _read_json(hf_hub_download(repo_id, "config.json")) == CONFIG_V2
    assert _read_json(hf_hub_download(repo_id, "config.json", revision=sha1)) == CONFIG_V1
    assert Path(hf_hub_download(repo_id, "extra/notes.txt", revision=sha1)).read_text() == "old notes"

    # The client's normal cache layout: refs/<name> -> sha, snapshots/<sha>/<path> -> blobs/<etag>.
    storage = hub.cache_dir / f"models--{repo_id.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == sha2
    weights = Path(hf_hub_download(repo_id, "model.safetensors"))
    assert weights == storage / "snapshots" / sha2 / "model.safetensors"
    assert weights.resolve() == storage / "blobs" / hashlib.sha256(WEIGHTS).hexdigest()
    old = Path(snapshot_download(repo_id, revision=sha1))
    assert old == storage / "snapshots" / sha1 and (old / "extra" / "notes.txt").read_text() == "old notes"
    assert not (Path(snapshot_download(repo_id)) / "extra").exists()

    # A branch from an old commit: commits to it leave main alone.
    create_branch(repo_id, branch="dev", revision=sha1)
    upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo_id, revision="dev")
    HfApi().delete_file("README.md", repo_id=repo_id, revision="dev")
    assert Path(hf_hub_download(repo_id, "dev.txt", revision="dev")).read_text() == "dev only"
    assert _read_json(hf_hub_download(repo_id, "config.json", revision="dev")) == CONFIG_V1
    assert "dev.txt" not in list_repo_files(repo_id) and "README.md" in list_repo_files(repo_id)
    assert "README.md" not in list_repo_files(repo_id, revision="dev")
    titles = [c.title for c in HfApi().list_repo_commits(repo_id, revision="dev")]
    assert titles == ["Delete README.md with huggingface_hub", "Upload dev.txt with huggingface_hub",
                      "Upload folder using huggingface_hub", "initial commit"]


def test_errors_are_the_clients_typed_exceptions(hub: HubContext, tmp_path: Path) -> None:
    repo_id, sha = _upload_model(hub, tmp_path)
    missing_repo = f"{HUB_USER}/does-not-exist"
    for call in (
        lambda: model_info(missing_repo),
        lambda: hf_hub_download(missing_repo, "config.json"),
        lambda: snapshot_download(missing_repo),
        lambda: upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=missing_repo),
    ):
        with pytest.raises(RepositoryNotFoundError):
            call()
    for call in (
        lambda: model_info(repo_id, revision="no-such-branch"),
        lambda: hf_hub_download(repo_id, "config.json", revision="no-such-branch"),
        lambda: hf_hub_download(repo_id, "config.json", revision="f" * 40),
        lambda: snapshot_download(repo_id, revision="no-such-branch"),
        lambda: upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, revision="no-such-branch"),
    ):
        with pytest.raises(RevisionNotFoundError):
            call()
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt")
    storage = hub.cache_dir / f"models--{repo_id.replace('/', '--')}"
    assert (storage / ".no_exist" / sha / "missing.txt").exists()  # X-Repo-Commit came with the 404
    with pytest.raises(EntryNotFoundError):
        list(HfApi().list_repo_tree(repo_id, path_in_repo="missing-folder"))
    with pytest.raises(EntryNotFoundError):
        create_commit(repo_id, operations=[CommitOperationDelete("missing.txt")], commit_message="rm")
    with pytest.raises(HfHubHTTPError) as unsupported:  # pull requests are not served
        upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, create_pr=True)
    assert unsupported.value.response.status_code == 404
    assert "Not supported by the shine-hf test hub" in unsupported.value.response.headers["X-Error-Message"]
    assert model_info(repo_id).sha == sha  # failed commits changed nothing


def test_transformers_and_peft_load_from_the_hub(hub: HubContext) -> None:
    import peft
    import torch
    import transformers

    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=8)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    bert_id = hub.unique_repo_id("bert")
    model.push_to_hub(bert_id)
    loaded = transformers.AutoModel.from_pretrained(bert_id)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name

    lora = peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False)
    adapted = peft.get_peft_model(transformers.BertModel(config), lora)
    adapter_id = hub.unique_repo_id("adapter")
    adapted.push_to_hub(adapter_id)
    reloaded = peft.PeftModel.from_pretrained(transformers.BertModel(config), adapter_id)
    expected_lora = {k: v for k, v in adapted.state_dict().items() if "lora_" in k}
    actual_lora = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert expected_lora and expected_lora.keys() == actual_lora.keys()
    assert all(torch.equal(expected_lora[k], actual_lora[k]) for k in expected_lora)


def test_an_internal_error_is_a_500_and_recorded(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, repo_id):
        raise RuntimeError("bug in the test hub")

    monkeypatch.setattr(HubState, "repo", broken)
    errors_before = len(hub_server.errors)
    response = get_session().get(f"{hub_server.url}/api/models/{HUB_USER}/anything")
    assert response.status_code == 500 and "bug in the test hub" in response.json()["error"]
    assert "bug in the test hub" in hub_server.errors.pop()  # the `hub` fixture fails a test on these
    assert len(hub_server.errors) == errors_before
