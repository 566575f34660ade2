"""The test hub (tests/hub_server.py) driven by the real huggingface_hub / transformers / peft clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from hub_server import HUB_USER, HubContext, start_hub_server
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    create_branch,
    create_commit,
    create_repo,
    create_tag,
    hf_hub_download,
    hf_hub_url,
    list_repo_files,
    model_info,
    snapshot_download,
    upload_file,
    upload_folder,
)
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from safetensors.numpy import save as save_safetensors

HUB_SERVER_SCRIPT = Path(__file__).with_name("hub_server.py")
WEIGHTS = save_safetensors({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
CONFIG_V1 = {"model_type": "bert", "hidden_size": 8, "note": "v1"}
CONFIG_V2 = {"model_type": "bert", "hidden_size": 8, "note": "v2"}


def _write_model_folder(folder: Path) -> Path:
    """config.json + README.md (regular files), model.safetensors (LFS) and a nested file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG_V1))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / "extra").mkdir(exist_ok=True)
    (folder / "extra" / "notes.txt").write_text("old notes")
    return folder


def _upload_model(hub: HubContext, tmp_path: Path, name: str = "tiny") -> tuple[str, str]:
    """Create a repo, upload the model folder in one commit; return ``(repo_id, commit_sha)``."""
    repo_id = create_repo(hub.unique_repo_id(name).split("/")[1]).repo_id
    info = upload_folder(repo_id=repo_id, folder_path=_write_model_folder(tmp_path / name))
    return repo_id, info.oid


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def test_hub_fixture_points_the_client_at_a_fresh_cache(hub: HubContext) -> None:
    assert constants.ENDPOINT == hub.url and hub.url.startswith("http://127.0.0.1:")
    assert constants.HF_HUB_CACHE == str(hub.cache_dir) == os.environ["HF_HUB_CACHE"]
    assert constants.HF_HUB_DISABLE_XET
    assert not hub.cache_dir.exists() or not any(hub.cache_dir.iterdir())
    assert HfApi().whoami()["name"] == HUB_USER == hub.user


def test_create_repo_exists_private_and_delete(hub: HubContext) -> None:
    name = hub.unique_repo_id("repo").split("/")[1]
    url = create_repo(name)  # no namespace: lands in the whoami user's namespace
    assert url.repo_id == f"{HUB_USER}/{name}" and url == f"{hub.url}/{HUB_USER}/{name}"
    assert create_repo(name, exist_ok=True).repo_id == url.repo_id
    with pytest.raises(HfHubHTTPError) as conflict:
        create_repo(name)
    assert conflict.value.response.status_code == 409

    api = HfApi()
    assert api.repo_exists(url.repo_id) and not api.repo_exists(f"{HUB_USER}/missing")
    assert list_repo_files(url.repo_id) == [".gitattributes"]  # the Hub's "initial commit"

    private_id = create_repo(hub.unique_repo_id("private"), private=True).repo_id
    assert model_info(private_id).private is True
    with pytest.raises(RepositoryNotFoundError):  # private repos need a token
        model_info(private_id, token=False)

    api.delete_repo(url.repo_id)
    assert not api.repo_exists(url.repo_id)
    api.delete_repo(url.repo_id, missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(url.repo_id)


def test_upload_folder_is_one_commit_with_lfs_for_safetensors(hub: HubContext, tmp_path: Path) -> None:
    first_request = len(hub.server.requests)
    repo_id, sha = _upload_model(hub, tmp_path)

    commits = HfApi().list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["Upload folder using huggingface_hub", "initial commit"]
    assert commits[0].commit_id == sha and len(sha) == 40

    info = model_info(repo_id, files_metadata=True)
    assert info.sha == sha
    siblings = {s.rfilename: s for s in info.siblings}
    expected = [".gitattributes", "README.md", "config.json", "extra/notes.txt", "model.safetensors"]
    assert sorted(siblings) == expected == list_repo_files(repo_id)
    weights = siblings["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights.size == weights.lfs.size == len(WEIGHTS)
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(json.dumps(CONFIG_V1))
    assert model_info(repo_id).siblings[0].size is None  # sizes only with files_metadata=True

    api = HfApi()
    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(repo_id)}
    assert top["extra"] == "RepoFolder" and top["model.safetensors"] == "RepoFile" and "extra/notes.txt" not in top
    assert [e.path for e in api.list_repo_tree(repo_id, path_in_repo="extra")] == ["extra/notes.txt"]
    paths = api.get_paths_info(repo_id, ["config.json", "extra", "missing.txt"])
    assert [(p.path, type(p).__name__) for p in paths] == [("config.json", "RepoFile"), ("extra", "RepoFolder")]
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", sha)] and refs.tags == []

    # Binary weights went through the LFS batch API + basic PUT; everything else inline in the commit.
    calls = [(r.method, r.path.split("?")[0]) for r in list(hub.server.requests)[first_request:]]
    assert ("POST", f"/{repo_id}.git/info/lfs/objects/batch") in calls
    assert sum(method == "PUT" for method, _ in calls) == 1
    assert calls.count(("POST", f"/api/models/{repo_id}/commit/main")) == 1
    assert not any("xet" in path.lower() for _, path in calls)

    # The same weights in another repo: the LFS batch answers "already stored", nothing is PUT again.
    before_copy = len(hub.server.requests)
    copy_id, _ = _upload_model(hub, tmp_path, name="copy")
    assert not [r for r in list(hub.server.requests)[before_copy:] if r.method == "PUT"]
    assert Path(hf_hub_download(copy_id, "model.safetensors")).read_bytes() == WEIGHTS


def test_downloads_by_branch_tag_and_sha_keep_old_revisions(hub: HubContext, tmp_path: Path) -> None:
    repo_id, sha1 = _upload_model(hub, tmp_path)
    create_tag(repo_id, tag="v1")
    second = create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("config.json", json.dumps(CONFIG_V2).encode()),
            CommitOperationDelete("extra/notes.txt"),
        ],
        commit_message="second",
    )
    sha2 = second.oid
    assert sha2 != sha1 and model_info(repo_id).sha == sha2 and model_info(repo_id, revision="v1").sha == sha1

    assert _read_json(hf_hub_download(repo_id, "config.json")) == CONFIG_V2
    for old in ("v1", sha1, "refs/tags/v1"):
        assert _read_json(hf_hub_download(repo_id, "config.json", revision=old)) == CONFIG_V1
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "extra/notes.txt")
    assert Path(hf_hub_download(repo_id, "extra/notes.txt", revision="v1")).read_text() == "old notes"

    # Normal cache layout: refs/<name> -> sha, snapshots/<sha>/<path> -> blobs/<etag>.
    storage = hub.cache_dir / f"models--{repo_id.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == sha2 and (storage / "refs" / "v1").read_text() == sha1
    weights_path = Path(hf_hub_download(repo_id, "model.safetensors"))
    assert weights_path == storage / "snapshots" / sha2 / "model.safetensors"
    assert weights_path.resolve() == storage / "blobs" / hashlib.sha256(WEIGHTS).hexdigest()
    assert weights_path.read_bytes() == WEIGHTS

    old_snapshot = Path(snapshot_download(repo_id, revision="v1"))
    assert old_snapshot == storage / "snapshots" / sha1 == Path(snapshot_download(repo_id, revision=sha1))
    assert (old_snapshot / "extra" / "notes.txt").read_text() == "old notes"
    new_snapshot = Path(snapshot_download(repo_id))
    assert new_snapshot == storage / "snapshots" / sha2 and not (new_snapshot / "extra").exists()
    assert _read_json(str(new_snapshot / "config.json")) == CONFIG_V2

    # Commits to another branch leave main alone.
    create_branch(repo_id, branch="dev", revision="v1")
    upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo_id, revision="dev")
    assert Path(hf_hub_download(repo_id, "dev.txt", revision="dev")).read_text() == "dev only"
    assert _read_json(hf_hub_download(repo_id, "config.json", revision="dev")) == CONFIG_V1
    assert "dev.txt" not in list_repo_files(repo_id)

    assert _read_json(hf_hub_download(repo_id, "config.json", revision="refs/heads/dev")) == CONFIG_V1
    api = HfApi()
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches}["main"] == sha2
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", sha1)]

    # Deleting a folder, a branch and a tag.
    create_commit(repo_id, operations=[CommitOperationDelete("extra/")], commit_message="rm folder", revision="dev")
    assert "extra/notes.txt" not in list_repo_files(repo_id, revision="dev")
    api.delete_branch(repo_id, branch="dev")
    api.delete_tag(repo_id, tag="v1")
    for gone in ("dev", "v1"):
        with pytest.raises(RevisionNotFoundError):
            model_info(repo_id, revision=gone)
    assert Path(hf_hub_download(repo_id, "extra/notes.txt", revision=sha1)).read_text() == "old notes"

    # Range requests on /resolve.
    url = hf_hub_url(repo_id, "model.safetensors")
    response = get_session().get(url, headers={"Range": "bytes=2-5"})
    assert response.status_code == 206 and response.content == WEIGHTS[2:6]
    assert get_session().get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416


def test_offline_reload_from_cache(hub: HubContext, tmp_path: Path) -> None:
    repo_id, sha = _upload_model(hub, tmp_path)
    online_file = hf_hub_download(repo_id, "model.safetensors")
    online_snapshot = snapshot_download(repo_id)
    requests_before = len(hub.server.requests)

    script = f"""
import json
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
assert constants.HF_HUB_OFFLINE
try:
    hf_hub_download({repo_id!r}, "never-downloaded.txt")
    missing = "downloaded?!"
except LocalEntryNotFoundError as exc:
    missing = type(exc).__name__
print(json.dumps({{
    "file": hf_hub_download({repo_id!r}, "model.safetensors"),
    "snapshot": snapshot_download({repo_id!r}),
    "by_sha": hf_hub_download({repo_id!r}, "config.json", revision={sha!r}),
    "missing": missing,
}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the hub fixture already exported this test's HF_HOME
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["file"] == online_file and out["snapshot"] == online_snapshot
    assert Path(out["file"]).read_bytes() == WEIGHTS and _read_json(out["by_sha"]) == CONFIG_V1
    assert out["missing"] == "LocalEntryNotFoundError"
    assert len(hub.server.requests) == requests_before  # offline really means no HTTP


def test_errors_are_the_clients_typed_exceptions(hub: HubContext, tmp_path: Path) -> None:
    repo_id, sha = _upload_model(hub, tmp_path)
    missing_repo = f"{HUB_USER}/does-not-exist"
    api = HfApi()

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
    with pytest.raises(RemoteEntryNotFoundError) as missing_file:
        hf_hub_download(repo_id, "missing.txt")
    assert isinstance(missing_file.value, EntryNotFoundError)
    storage = hub.cache_dir / f"models--{repo_id.replace('/', '--')}"
    assert (storage / ".no_exist" / sha / "missing.txt").exists()  # X-Repo-Commit sent with the 404
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="missing-folder"))
    assert not api.file_exists(repo_id, "missing.txt") and api.file_exists(repo_id, "config.json")
    assert not api.revision_exists(repo_id, "nope") and api.revision_exists(repo_id, sha)

    with pytest.raises(EntryNotFoundError):
        create_commit(repo_id, operations=[CommitOperationDelete("missing.txt")], commit_message="rm")
    with pytest.raises(HfHubHTTPError) as stale_parent:
        create_commit(
            repo_id, operations=[CommitOperationAdd("a.txt", b"a")], commit_message="stale", parent_commit="0" * 40
        )
    assert stale_parent.value.response.status_code == 412
    create_tag(repo_id, tag="frozen")
    for rejected in (
        lambda: upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, revision="frozen"),
        lambda: upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, create_pr=True),
        lambda: create_repo(hub.unique_repo_id("space"), repo_type="space", space_sdk="static"),
    ):
        with pytest.raises(BadRequestError):  # commits to tags, pull requests and spaces are not supported
            rejected()
    with pytest.raises(HfHubHTTPError) as unsupported:
        list(api.list_repo_likers(repo_id))
    assert unsupported.value.response.status_code == 404
    assert model_info(repo_id).sha == sha  # failed commits changed nothing


def test_dataset_repo_roundtrip(hub: HubContext) -> None:
    repo_id = create_repo(hub.unique_repo_id("data"), repo_type="dataset").repo_id
    upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id=repo_id, repo_type="dataset")
    info = HfApi().dataset_info(repo_id)
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", "data.csv"]
    path = hf_hub_download(repo_id, "data.csv", repo_type="dataset")
    assert Path(path).read_bytes() == b"a,b\n1,2\n" and f"datasets--{repo_id.replace('/', '--')}" in path
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "data.csv")  # same id as a model does not exist


def test_transformers_and_peft_load_from_the_hub(hub: HubContext, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")

    config = transformers.BertConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    bert_id = hub.unique_repo_id("bert")
    model.push_to_hub(bert_id)
    model.push_to_hub(bert_id)  # unchanged files: no new commit
    assert len(HfApi().list_repo_commits(bert_id)) == 2

    loaded_config = transformers.AutoConfig.from_pretrained(bert_id)
    assert type(loaded_config).__name__ == "BertConfig" and loaded_config.hidden_size == 8
    loaded = transformers.AutoModel.from_pretrained(bert_id)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    lora = peft.LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False)
    adapted = peft.get_peft_model(Tiny(), lora)
    adapter_id = hub.unique_repo_id("adapter")
    adapted.push_to_hub(adapter_id)
    assert "adapter_model.safetensors" in list_repo_files(adapter_id)

    assert peft.PeftConfig.from_pretrained(adapter_id).r == 2
    reloaded = peft.PeftModel.from_pretrained(Tiny(), adapter_id)
    expected_lora = {k: v for k, v in adapted.state_dict().items() if "lora_" in k}
    actual_lora = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert expected_lora.keys() == actual_lora.keys() and expected_lora
    assert all(torch.equal(expected_lora[k], actual_lora[k]) for k in expected_lora)


def test_server_limits_and_clean_shutdown() -> None:
    server = start_hub_server(max_body_bytes=1024, max_connections=1)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)  # keep-alive connection
        idle.request("GET", "/api/whoami-v2", headers={"Authorization": "Bearer t"})
        assert json.loads(idle.getresponse().read())["name"] == HUB_USER

        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        other.request("GET", "/api/whoami-v2")
        assert other.getresponse().status == 503  # over the connection cap while `idle` is open
        other.close()

        idle.request("POST", "/api/repos/create", body=b"x" * 2048, headers={"Authorization": "Bearer t"})
        response = idle.getresponse()
        assert response.status == 413 and response.getheader("Connection") == "close"
        idle.close()
    finally:
        server.stop()
        server.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_standalone_cli_serves_until_interrupted() -> None:
    proc = subprocess.Popen([sys.executable, str(HUB_SERVER_SCRIPT), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[4]
        assert url.startswith("http://127.0.0.1:")
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
        conn.request("GET", "/api/whoami-v2", headers={"Authorization": "Bearer anything"})
        assert json.loads(conn.getresponse().read())["name"] == HUB_USER
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
