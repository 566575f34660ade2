"""An in-memory Hugging Face Hub for the tests.

No maintained package serves the Hub's *write* API locally (hf-local-hub needs a separately built
binary, olah is a read-only mirror), so this file does, for model repositories, with the routes the
real ``huggingface_hub`` client (and ``transformers`` / ``peft`` on top of it) calls in this
project's tests. Nothing in the client is mocked: it talks HTTP to ``127.0.0.1``.

* ``POST /api/repos/create``: a new repo starts with an "initial commit" holding the default
  ``.gitattributes``, like on the Hub; an existing one is a 409 that carries its url.
* ``GET /api/models/{repo}[/revision/{rev}]``: info with ``sha`` and ``siblings``.
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``), ``.../commits/{rev}``.
* ``POST /api/models/{repo}/branch/{branch}``: a branch from ``main`` or ``startingPoint``.
* ``POST /api/models/{repo}/preupload/{rev}``: a file goes through LFS when its name matches the
  default ``.gitattributes`` patterns (``*.safetensors``, ``*.pt``, ...), its first bytes hold a
  NUL byte, or it has 10 MiB or more.
* ``POST /{repo}.git/info/lfs/objects/batch`` and ``PUT /_lfs/{oid}``: LFS "basic" uploads; an
  object already stored gets no upload action.
* ``POST /api/models/{repo}/commit/{branch}``: NDJSON ``header``, ``file`` (base64), ``lfsFile``
  and ``deletedFile`` lines.
* ``HEAD/GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob sha1, or
  sha256 for LFS files) and ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files.
* ``POST /api/validate-yaml``: every model card is valid.

Errors carry ``X-Error-Code`` like the Hub's (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), so the client raises its typed errors. A revision is a branch or a full commit
sha. Any other route is a 404 "not supported by the test hub".

With pytest: ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``, ... once, when
``huggingface_hub.constants`` is first imported, so ``configure_hub_env`` runs from
``pytest_configure`` in ``tests/conftest.py``, before anything imports it. Tests then take the
``hub`` fixture (the session's server and a fresh, empty HF cache) and make their repos with
``hub.unique_repo_id(name)``: repos live for the whole session. An internal error of the server
fails the test that caused it.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

HUB_USER = "tester"  # the namespace of `HubContext.unique_repo_id`
HUB_TOKEN = "hf_shine_test_token"  # any token is accepted
HOST = "127.0.0.1"

_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS).encode()


class HubError(Exception):
    """An error answered the way the Hub does: a status, a message and an ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}


def _repo_not_found() -> HubError:
    return HubError(404, "Repository not found", "RepoNotFound")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class FileEntry:
    """A file of a commit. An LFS file is committed as its pointer, like on the Hub."""

    size: int
    git_oid: str  # sha1 of the git blob: the content, or the LFS pointer
    lfs_sha256: str | None = None
    pointer_size: int | None = None

    @property
    def etag(self) -> str:  # also the key of the content in the blob store
        return self.lfs_sha256 or self.git_oid


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: Mapping[str, FileEntry]


@dataclass
class Repo:
    repo_id: str
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


class HubState:
    """Repos, commits, branches and a content-addressed blob store, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git sha1 (regular files) or sha256 (LFS objects)
        self._counter = itertools.count()

    def create_repo(self, repo_id: str) -> bool:
        """Create `repo_id` with its initial commit; False if it exists."""
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = self.repos[repo_id] = Repo(repo_id)
            self._new_commit(repo, "main", {".gitattributes": self._add_blob(DEFAULT_GITATTRIBUTES)}, "initial commit")
            return True

    def repo(self, repo_id: str) -> Repo:
        with self.lock:
            if repo_id not in self.repos:
                raise _repo_not_found()
            return self.repos[repo_id]

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """The commit of a branch or a full commit sha."""
        with self.lock:
            oid = repo.branches.get(revision) or (revision if revision in repo.commits else None)
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[oid]

    def history(self, repo: Repo, revision: str) -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        with self.lock:
            commits = [self.resolve(repo, revision)]
            while commits[-1].parent:
                commits.append(repo.commits[commits[-1].parent])
            return commits

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self.resolve(repo, starting_point or "main").oid

    def commit(self, repo: Repo, branch: str, lines: list[dict[str, Any]]) -> Commit:
        """Apply an NDJSON commit payload (header first) to `branch`."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            files = dict(repo.commits[repo.branches[branch]].files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    files[path] = self._add_blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    if value["oid"] not in self.blobs:
                        raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
                    size = len(self.blobs[value["oid"]])
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {size}\n"
                    files[path] = FileEntry(size, git_blob_oid(pointer.encode()), value["oid"], len(pointer))
                elif key == "deletedFile" and path in files:
                    del files[path]
                elif key == "deletedFile":
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    raise HubError(400, f"Commit operation {key!r} is not supported by the test hub")
            return self._new_commit(repo, branch, files, lines[0]["value"].get("summary") or "")

    def _add_blob(self, content: bytes) -> FileEntry:
        entry = FileEntry(len(content), git_blob_oid(content))
        self.blobs[entry.git_oid] = content
        return entry

    def _new_commit(self, repo: Repo, branch: str, files: dict[str, FileEntry], title: str) -> Commit:
        parent = repo.branches.get(branch)
        oid = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{next(self._counter)}\n{sorted(files.items())}".encode())
        commit = Commit(oid.hexdigest(), parent, title, _now(), MappingProxyType(dict(sorted(files.items()))))
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


def _upload_mode(path: str, size: int, sample: bytes) -> str:
    if size >= _LFS_SIZE_THRESHOLD or b"\0" in sample[:512]:
        return "lfs"
    name = path.rsplit("/", 1)[-1]
    return "lfs" if size and any(fnmatch.fnmatchcase(name, p) for p in DEFAULT_LFS_PATTERNS) else "regular"


def _tree(commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
    """The entries below `path`, in the Hub's `/tree` format (folders and files)."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    below = [p for p in commit.files if p.startswith(prefix)]
    if prefix and not below:
        raise HubError(404, f"{path} does not exist", "EntryNotFound")
    entries: dict[str, dict[str, Any]] = {}
    for file_path in below:
        parts = file_path[len(prefix):].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            folder = prefix + "/".join(parts[:depth])
            entries[folder] = {"type": "directory", "path": folder, "size": 0,
                               "oid": hashlib.sha1(folder.encode()).hexdigest()}
        if recursive or len(parts) == 1:
            entry = commit.files[file_path]
            entries[file_path] = {"type": "file", "path": file_path, "size": entry.size, "oid": entry.git_oid}
            if entry.lfs_sha256:
                entries[file_path]["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size,
                                             "pointerSize": entry.pointer_size}
    return sorted(entries.values(), key=lambda entry: entry["path"])


# ------------------------------------------------------------------------------------------- HTTP
class RequestRecord(NamedTuple):
    method: str
    path: str
    status: int


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_GET

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.hub.requests.append(RequestRecord(self.command, self.path, int(code)))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are in `HubServer.requests`, internal errors in `HubServer.errors`."""

    def _dispatch(self) -> None:
        try:
            self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._route()
        except HubError as error:
            self._send_json({**error.extra, "error": error.message}, error.status, error.headers)
        except Exception as error:  # a bug in the test hub: answer 500 and fail the test (`hub` fixture)
            self.server.hub.errors.append(f"{self.command} {self.path}: {error!r}\n{traceback.format_exc()}")
            self.close_connection = True
            self._send_json({"error": f"Internal error in the test hub: {error!r}"}, 500)

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _route(self) -> None:
        url = urlsplit(self.path)
        # Split before unquoting: a revision is one quoted segment ("a%2Fb").
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        state, method = self.server.hub.state, self.command
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo()
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._send_json({"errors": [], "warnings": []})
        if method == "PUT" and parts[0] == "_lfs" and len(parts) == 2:
            return self._store_lfs(parts[1])
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(method, state.repo(f"{parts[2]}/{parts[3]}"), parts[4:], query)
        if method == "POST" and parts[2:] == ["info", "lfs", "objects", "batch"] and parts[1].endswith(".git"):
            state.repo(f"{parts[0]}/{parts[1].removesuffix('.git')}")
            return self._lfs_batch()
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(state.repo(f"{parts[0]}/{parts[1]}"), parts[3], "/".join(parts[4:]))
        raise HubError(404, f"Not supported by the shine-hf test hub: {method} {url.path}")

    def _api(self, method: str, repo: Repo, rest: list[str], query: dict[str, str]) -> None:
        state = self.server.hub.state
        action, argument = (rest[0], "/".join(rest[1:])) if rest else ("revision", "main")
        if method == "GET" and action == "revision":
            return self._send_json(self._info(repo, state.resolve(repo, argument)))
        if method == "GET" and action == "tree":
            revision, _, path = argument.partition("/")
            recursive = query.get("recursive", "").lower() == "true"
            return self._send_json(_tree(state.resolve(repo, revision), path, recursive))
        if method == "GET" and action == "commits":
            return self._send_json([{"id": c.oid, "title": c.title, "message": "", "date": c.date,
                                     "authors": [{"user": HUB_USER}]} for c in state.history(repo, argument)])
        if method == "POST" and action == "branch":
            state.create_branch(repo, argument, json.loads(self._body or b"{}").get("startingPoint"))
            return self._send_json({})
        if method == "POST" and action in ("preupload", "commit") and query.get("create_pr") not in ("1", "true"):
            if action == "preupload":
                return self._preupload(state.resolve(repo, argument))
            commit = state.commit(repo, argument, [json.loads(line) for line in self._body.splitlines() if line])
            url = f"{self.server.hub.url}/{repo.repo_id}/commit/{commit.oid}"
            return self._send_json({"success": True, "commitOid": commit.oid, "commitUrl": url})
        raise HubError(404, f"Not supported by the shine-hf test hub: {method} {self.path}")

    def _create_repo(self) -> None:
        body = json.loads(self._body)
        if body.get("type", "model") != "model":
            raise HubError(400, "The test hub only serves model repositories")
        repo_id = f"{body.get('organization') or HUB_USER}/{body['name']}"
        url = f"{self.server.hub.url}/{repo_id}"
        if not self.server.hub.state.create_repo(repo_id):  # the client reads "url" when exist_ok=True
            raise HubError(409, "You already created this model repo", url=url)
        self._send_json({"url": url, "name": repo_id})

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        return {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at, "private": False,
                "siblings": [{"rfilename": path} for path in commit.files]}

    def _preupload(self, commit: Commit) -> None:
        files = [{"path": item["path"], "shouldIgnore": False,
                  "uploadMode": _upload_mode(item["path"], item["size"], base64.b64decode(item.get("sample") or "")),
                  "oid": commit.files[item["path"]].etag if item["path"] in commit.files else None}
                 for item in json.loads(self._body)["files"]]
        self._send_json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self) -> None:
        objects = []
        for item in json.loads(self._body)["objects"]:
            if item["oid"] not in self.server.hub.state.blobs:  # stored objects get no action: no upload
                href = f"{self.server.hub.url}/_lfs/{item['oid']}"
                item = {**item, "authenticated": True, "actions": {"upload": {"href": href}}}
            objects.append(item)
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        self._send(200, body, "application/vnd.git-lfs+json")

    def _store_lfs(self, oid: str) -> None:
        if hashlib.sha256(self._body).hexdigest() != oid:
            raise HubError(400, f"The uploaded content does not have the sha256 {oid}")
        with self.server.hub.state.lock:
            self.server.hub.state.blobs[oid] = self._body
        self._send(200, b"", "text/plain")

    def _resolve(self, repo: Repo, revision: str, path: str) -> None:
        state = self.server.hub.state
        commit = state.resolve(repo, revision)
        entry = commit.files.get(path)
        if entry is None:  # the client caches the miss under this commit
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"',
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if entry.lfs_sha256:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_sha256}"', "X-Linked-Size": str(entry.size)})
        with state.lock:
            content = state.blobs[entry.etag]
        self._send(200, content, "application/octet-stream", headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        super().__init__((HOST, 0), _Handler)


class HubServer:
    """A running test hub on a free port of 127.0.0.1 (in a daemon thread)."""

    def __init__(self) -> None:
        self.state = HubState()
        self.requests: list[RequestRecord] = []  # every request answered, in order
        self.errors: list[str] = []  # tracebacks of internal errors (bugs in the test hub)
        self._httpd = _HTTPServer(self)
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# ----------------------------------------------------------------------------------------- pytest
_SESSION: HubServer | None = None
# Variables that would route the client elsewhere, force offline mode or bypass the temporary cache.
_UNSET_VARS = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_CO_STAGING", "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_MODULES_CACHE", "HF_DATASETS_CACHE",
)  # fmt: skip


def configure_hub_env(config: pytest.Config) -> HubServer:
    """Start the session's test hub and point `huggingface_hub` at it through the environment.

    Sets `HF_ENDPOINT`, a temporary `HF_HOME`, a dummy `HF_TOKEN`, no telemetry, no Xet (`hf_xet` is
    installed and the client would upload through it) and clears offline flags and cache overrides.
    The environment is restored, the server stopped and the home deleted when the session ends.
    """
    global _SESSION
    if "huggingface_hub.constants" in sys.modules:
        raise RuntimeError("huggingface_hub was imported before configure_hub_env(): its endpoint and cache are "
                           "already frozen. Call it from pytest_configure and import no HF library in conftest.py.")
    server = HubServer()
    home = Path(tempfile.mkdtemp(prefix="shine-hf-test-hub-"))
    environment = {
        "HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_TOKEN": HUB_TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ETAG_TIMEOUT": "30",
        "HF_HUB_DOWNLOAD_TIMEOUT": "30",
    }
    saved = {name: os.environ.get(name) for name in (*_UNSET_VARS, *environment)}
    for name in _UNSET_VARS:
        os.environ.pop(name, None)
    os.environ.update(environment)
    _SESSION = server

    def cleanup() -> None:
        global _SESSION
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _SESSION = None

    config.add_cleanup(cleanup)
    return server


@dataclass(frozen=True)
class HubContext:
    """What the `hub` fixture gives a test: the server and this test's own HF cache."""

    server: HubServer
    home: Path  # HF_HOME of this test
    cache_dir: Path  # HF_HUB_CACHE of this test (empty at start)
    user: str = HUB_USER

    @property
    def url(self) -> str:
        return self.server.url

    def unique_repo_id(self, name: str = "repo") -> str:
        """A fresh `tester/name-xxxxxxxx` repo id (repos outlive tests on the session's server)."""
        return f"{self.user}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The session's test hub, started by `configure_hub_env`."""
    if _SESSION is None:
        pytest.fail("The test hub is not running: call configure_hub_env(config) from pytest_configure in conftest.py")
    return _SESSION


@pytest.fixture
def hub(hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[HubContext]:
    """The session's test hub with a fresh, empty HF cache (`HF_HOME`) for this test."""
    from huggingface_hub import constants

    if constants.ENDPOINT != hub_server.url or not constants.HF_HUB_DISABLE_XET:
        pytest.fail(f"huggingface_hub is not configured for the test hub (ENDPOINT={constants.ENDPOINT!r})")
    home = tmp_path_factory.mktemp("hf_home")
    for name, path in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HUGGINGFACE_HUB_CACHE": home / "hub",
                       "HF_ASSETS_CACHE": home / "assets", "HF_XET_CACHE": home / "xet"}.items():
        monkeypatch.setattr(constants, name, str(path), raising=False)
    monkeypatch.setenv("HF_HOME", str(home))  # for subprocesses
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    errors_before = len(hub_server.errors)
    yield HubContext(server=hub_server, home=home, cache_dir=home / "hub")
    if hub_server.errors[errors_before:]:
        pytest.fail("The test hub hit internal errors:\n" + "\n".join(hub_server.errors[errors_before:]), pytrace=False)
