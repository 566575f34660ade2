"""A small, in-memory Hugging Face Hub for tests.

The server speaks the subset of the Hub HTTP API that the *real* ``huggingface_hub``
client (2.x) uses to create repositories, upload files (regular and LFS), manage
branches/tags and download files into the normal HF cache.  Nothing in
``huggingface_hub`` is mocked: the client, and ``transformers`` / ``peft`` on top of
it (``from_pretrained``, ``push_to_hub``), talk HTTP to ``127.0.0.1``.

Supported API (models and datasets):

* ``GET  /api/whoami-v2`` - always the fixed user :data:`HUB_USER` (any token works).
* ``POST /api/repos/create`` / ``DELETE /api/repos/delete`` - a new repo starts with
  an "initial commit" holding the default ``.gitattributes`` (like the real Hub).
* ``GET  /api/{models,datasets}/{repo}[/revision/{rev}]`` - repo info with ``sha``
  and ``siblings`` (``?blobs=true`` adds sizes, blob ids and LFS metadata).
* ``GET  /api/.../tree/{rev}[/{path}]`` (``?recursive=true``), ``POST .../paths-info/{rev}``,
  ``GET .../refs``, ``GET .../commits/{rev}``.
* ``POST/DELETE .../branch/{branch}``, ``POST .../tag/{rev}``, ``DELETE .../tag/{tag}``.
* ``POST .../preupload/{rev}`` - a file is uploaded through LFS when it matches a
  ``filter=lfs`` pattern of the repo's ``.gitattributes`` (``*.safetensors``, ``*.bin``,
  ...), contains a NUL byte in its first 512 bytes, or is at least 10 MiB.
* ``POST /{repo}.git/info/lfs/objects/batch`` - LFS batch API, "basic" transfer only
  (upload action served by this server, plus a verify action; objects already stored
  get no actions, so the client skips the upload).
* ``POST .../commit/{branch}`` - NDJSON commit with ``header``, ``file`` (base64),
  ``lfsFile``, ``deletedFile`` and ``deletedFolder`` lines; ``parentCommit`` is checked.
* ``HEAD/GET /{repo}/resolve/{rev}/{path}`` - no redirects; ``X-Repo-Commit``, ``ETag``
  (git blob sha1, or sha256 for LFS files), ``X-Linked-Etag``/``X-Linked-Size`` for LFS
  files, ``Content-Length`` and single ``Range`` requests.
* Errors carry ``X-Error-Code``/``X-Error-Message`` like the Hub, so the client raises
  ``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``RemoteEntryNotFoundError``...
  Revisions may be branches, tags, ``refs/heads/*``, ``refs/tags/*`` or full 40-hex shas.

Not supported (answered with a plain 4xx, never silently): pull requests / ``create_pr``,
Xet transfers, multipart LFS, spaces, ``.gitignore``-based ``shouldIgnore``,
``lastCommit``/security data in tree listings.  ``/api/validate-yaml`` accepts every
README.

Using it with pytest
--------------------
``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_DISABLE_XET``, ... once,
when ``huggingface_hub.constants`` is first imported (``transformers`` and ``peft``
import it).  :func:`configure_hub_env` must therefore run *before* that import:
call it from ``pytest_configure`` in ``tests/conftest.py``, and do not import
``huggingface_hub``/``transformers``/``peft`` at conftest module level::

    # tests/conftest.py (pytest puts tests/ itself on sys.path)
    from hub_server import configure_hub_env, hub, hub_server  # noqa: F401 (fixtures)

    def pytest_configure(config: pytest.Config) -> None:
        configure_hub_env(config)

It starts one server for the session and points the whole test process at it
(``HF_ENDPOINT``, a temporary ``HF_HOME``, a dummy ``HF_TOKEN``, telemetry and Xet
disabled, offline flags cleared).  Tests then use the fixtures:

* ``hub_server`` (session): the running :class:`HubServer`.
* ``hub`` (function): a :class:`HubContext` with a fresh, empty HF cache for the test
  (``HF_HOME``/``HF_HUB_CACHE`` and ``huggingface_hub.constants`` are patched), e.g.::

      def test_roundtrip(hub, tmp_path):
          repo_id = hub.unique_repo_id("tiny")
          create_repo(repo_id)
          upload_folder(repo_id=repo_id, folder_path=tmp_path)
          AutoConfig.from_pretrained(repo_id)

Repositories live for the whole session, so use :meth:`HubContext.unique_repo_id`
(or :meth:`HubServer.reset`).  An internal server error fails the test that caused it.

Standalone: ``python tests/hub_server.py --port 8765`` serves until Ctrl-C; point a
shell at it with ``HF_ENDPOINT=http://127.0.0.1:8765 HF_TOKEN=x HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import binascii
import collections
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

logger = logging.getLogger(__name__)

#: Name returned by ``whoami``; repos created without a namespace land here.
HUB_USER = "tester"
#: Token placed in ``HF_TOKEN`` by :func:`configure_hub_env` (any token is accepted).
HUB_TOKEN = "hf_shine_test_token"
#: The only interface the server ever binds.
HOST = "127.0.0.1"

_REPO_TYPES = {"models": "model", "datasets": "dataset"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/"}
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

#: Patterns of the ``.gitattributes`` the Hub puts in every new repo.
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
    "*.zst", "*tfevents*",
)  # fmt: skip
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS).encode()


# --------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------


class HubError(Exception):
    """An error answered to the client the way the Hub does (status + ``X-Error-Code``)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # additional fields of the JSON error body


def git_blob_oid(content: bytes) -> str:
    """The git object id (sha1) of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit. LFS files are committed as pointers, like on the Hub."""

    size: int
    git_oid: str  # sha1 of the git blob: the content, or the LFS pointer
    lfs_sha256: str | None = None
    pointer_size: int | None = None

    @property
    def blob_key(self) -> str:
        """Key of the content in the blob store."""
        return self.lfs_sha256 or self.git_oid

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.git_oid

    def lfs_json(self, sha_key: str) -> dict[str, Any] | None:
        if self.lfs_sha256 is None:
            return None
        return {sha_key: self.lfs_sha256, "size": self.size, "pointerSize": self.pointer_size}


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: Mapping[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return _URL_PREFIXES[self.repo_type] + self.repo_id


class HubState:
    """Thread-safe, in-memory repos, commits, refs and a content-addressed blob store."""

    def __init__(self, user: str = HUB_USER) -> None:
        self.user = user
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {}  # git sha1 (regular files) or sha256 (LFS objects)
        self._pending_lfs: dict[str, int] = {}  # LFS uploads announced by the batch API: oid -> size
        self._counter = itertools.count()

    # -- repos -------------------------------------------------------------------------

    def create_repo(self, repo_type: str, namespace: str | None, name: str, private: bool) -> tuple[Repo, bool]:
        """Create a repo (with its initial commit); returns ``(repo, created)``."""
        if repo_type not in _URL_PREFIXES:
            raise HubError(400, f"Repo type {repo_type!r} is not supported by the test hub")
        namespace = namespace or self.user
        for part in (namespace, name):
            if not _NAME_RE.fullmatch(part) or ".." in part or "--" in part or part.endswith(".git"):
                raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                return existing, False
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            files: dict[str, FileEntry] = {}
            self._add_regular(files, ".gitattributes", DEFAULT_GITATTRIBUTES)
            self._new_commit(repo, "main", None, files, "initial commit", "")
            self._repos[(repo_type, repo_id)] = repo
            return repo, True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")

    def get_repo(self, repo_type: str, repo_id: str, authorized: bool) -> Repo:
        """Look a repo up; private repos are only visible with a token."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and not authorized:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def reset(self) -> None:
        """Forget every repo and blob."""
        with self._lock:
            self._repos.clear()
            self._blobs.clear()
            self._pending_lfs.clear()

    # -- revisions ---------------------------------------------------------------------

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """Resolve a branch, tag, ``refs/heads/*``, ``refs/tags/*`` or commit sha."""
        with self._lock:
            oid: str | None = None
            if revision.startswith("refs/heads/"):
                oid = repo.branches.get(revision[len("refs/heads/") :])
            elif revision.startswith("refs/tags/"):
                oid = repo.tags.get(revision[len("refs/tags/") :])
            elif revision in repo.branches:
                oid = repo.branches[revision]
            elif revision in repo.tags:
                oid = repo.tags[revision]
            elif _SHA1_RE.fullmatch(revision) and revision in repo.commits:
                oid = revision
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[oid]

    def history(self, repo: Repo, revision: str) -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        with self._lock:
            commit: Commit | None = self.resolve(repo, revision)
            out = []
            while commit is not None:
                out.append(commit)
                commit = repo.commits[commit.parent] if commit.parent else None
            return out

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        _check_ref_name(branch, "branch")
        with self._lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self.resolve(repo, starting_point or "main").oid

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self._lock:
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")

    def create_tag(self, repo: Repo, tag: str, revision: str) -> None:
        _check_ref_name(tag, "tag")
        with self._lock:
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = self.resolve(repo, revision).oid

    def delete_tag(self, repo: Repo, tag: str) -> None:
        with self._lock:
            if repo.tags.pop(tag, None) is None:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")

    # -- files -------------------------------------------------------------------------

    def read(self, entry: FileEntry) -> bytes:
        with self._lock:
            return self._blobs[entry.blob_key]

    def upload_mode(self, commit: Commit, path: str, size: int, sample: bytes) -> str:
        """Return "lfs" or "regular", decided like the Hub does (gitattributes, binary, size)."""
        if size == 0:
            return "regular"
        if size >= _LFS_SIZE_THRESHOLD or b"\0" in sample:
            return "lfs"
        gitattributes = commit.files.get(".gitattributes")
        text = self.read(gitattributes).decode("utf-8", "replace") if gitattributes else ""
        return "lfs" if _matches_lfs_pattern(path, text) else "regular"

    def announce_lfs(self, oid: str, size: int) -> bool:
        """Register an LFS object the client is about to upload; False if already stored."""
        with self._lock:
            if oid in self._blobs:
                return False
            self._pending_lfs[oid] = size
            return True

    def pending_lfs_size(self, oid: str) -> int:
        with self._lock:
            if oid not in self._pending_lfs:
                raise HubError(404, f"No LFS upload was requested for {oid}")
            return self._pending_lfs[oid]

    def store_lfs(self, oid: str, content: bytes) -> None:
        with self._lock:
            expected = self.pending_lfs_size(oid)
            if len(content) != expected or hashlib.sha256(content).hexdigest() != oid:
                raise HubError(400, f"LFS object {oid} does not match the announced sha256/size")
            self._blobs[oid] = content
            del self._pending_lfs[oid]

    def has_lfs(self, oid: str, size: int | None = None) -> bool:
        with self._lock:
            blob = self._blobs.get(oid)
            return blob is not None and _SHA256_RE.fullmatch(oid) is not None and (size is None or len(blob) == size)

    # -- commits -----------------------------------------------------------------------

    def commit(self, repo: Repo, branch: str, lines: list[dict[str, Any]]) -> Commit:
        """Apply an NDJSON commit payload to ``branch`` and return the new commit."""
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0].get("value") or {}
        with self._lock:
            if branch not in repo.branches:
                if branch in repo.tags or branch in repo.commits:
                    raise HubError(400, f"Can only commit to a branch, not to {branch}")
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != head.oid:
                raise HubError(412, f"A commit has happened since {parent_commit}. Please refresh and try again.")
            files = dict(head.files)
            for line in lines[1:]:
                self._apply(files, line.get("key"), line.get("value") or {})
            return self._new_commit(
                repo, branch, head.oid, files, header.get("summary") or "", header.get("description") or ""
            )

    def _apply(self, files: dict[str, FileEntry], key: Any, value: dict[str, Any]) -> None:
        path = value.get("path")
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
            raise HubError(400, f"Invalid path in commit operation: {path!r}")
        if key in ("file", "lfsFile"):
            for other in files:  # a path cannot be both a file and a folder
                if other.startswith(path + "/") or path.startswith(other + "/"):
                    raise HubError(400, f"{path} conflicts with {other}")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, "Only base64-encoded files are supported")
            try:
                content = base64.b64decode(value.get("content", ""), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise HubError(400, f"Invalid base64 content for {path}") from exc
            self._add_regular(files, path, content)
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not self.has_lfs(oid, size):
                raise HubError(422, f"LFS object {oid} for {path} was not uploaded")
            real_size = len(self._blobs[oid])
            pointer = lfs_pointer(oid, real_size)
            files[path] = FileEntry(real_size, git_blob_oid(pointer), oid, len(pointer))
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            doomed = [p for p in files if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"Unsupported commit operation: {key!r}")

    def _add_regular(self, files: dict[str, FileEntry], path: str, content: bytes) -> None:
        oid = git_blob_oid(content)
        with self._lock:
            self._blobs[oid] = content
        files[path] = FileEntry(len(content), oid)

    def _new_commit(
        self, repo: Repo, branch: str, parent: str | None, files: dict[str, FileEntry], title: str, message: str
    ) -> Commit:
        date = _now()
        tree = "".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(files.items()))
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{date}\n{next(self._counter)}\n{title}\n{message}\n{tree}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent, title, message, date, MappingProxyType(dict(sorted(files.items()))))
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


def _check_ref_name(name: str, kind: str) -> None:
    if not name or name.startswith(("refs/", "/")) or name.endswith("/") or ".." in name or " " in name:
        raise HubError(400, f"Invalid {kind} name: {name!r}")


def _matches_lfs_pattern(path: str, gitattributes: str) -> bool:
    """Whether ``path`` is tracked by a ``filter=lfs`` line of a ``.gitattributes`` file."""
    basename = path.rsplit("/", 1)[-1]
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].startswith("#") or "filter=lfs" not in parts[1:]:
            continue
        pattern = parts[0]
        target = path if "/" in pattern else basename
        if fnmatch.fnmatchcase(target, pattern.replace("**/", "*")):
            return True
    return False


def _tree_entries(commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries of a commit's tree below ``path``, in the Hub's ``/tree`` format."""
    prefix = path.strip("/")
    if prefix in commit.files:
        raise HubError(404, f"{prefix} is a file, not a folder", "EntryNotFound")
    base = prefix + "/" if prefix else ""
    below = {p: e for p, e in commit.files.items() if p.startswith(base)}
    if prefix and not below:
        raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
    folders: dict[str, list[tuple[str, FileEntry]]] = collections.defaultdict(list)
    for file_path, entry in below.items():
        parts = file_path[len(base) :].split("/")
        for depth in range(1, len(parts)):
            folders[base + "/".join(parts[:depth])].append((file_path, entry))
    out: list[dict[str, Any]] = []
    for folder, members in folders.items():
        if recursive or "/" not in folder[len(base) :]:
            tree_oid = hashlib.sha1("".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(members)).encode()).hexdigest()
            out.append({"type": "directory", "oid": tree_oid, "size": 0, "path": folder})
    for file_path, entry in below.items():
        if recursive or "/" not in file_path[len(base) :]:
            out.append(_file_json(file_path, entry))
    return sorted(out, key=lambda item: item["path"])


def _file_json(path: str, entry: FileEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
    lfs = entry.lfs_json("oid")
    if lfs is not None:
        item["lfs"] = lfs
    return item


# --------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------


class RequestRecord(NamedTuple):
    """One request seen by the server (kept in :attr:`HubServer.requests`)."""

    method: str
    path: str
    status: int


class _HTTPServer(ThreadingHTTPServer):
    """Threading server with a connection cap, tracked handler threads and sockets."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, hub: HubServer) -> None:
        self.hub = hub
        self._conn_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__((HOST, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._conn_lock:
            accepted = len(self._connections) < self.hub.max_connections
            if accepted:
                self._connections[request] = thread
        if accepted:
            thread.start()
            return
        try:  # over the cap: answer 503 without reading the request
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float) -> None:
        """Abort open (e.g. idle keep-alive) connections and wait for their threads."""
        with self._conn_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in connections:
            if thread is not threading.current_thread():
                thread.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "shine-hf-test-hub/1.0"

    def setup(self) -> None:
        self.timeout = self.server.hub.request_timeout  # idle keep-alive / slow clients
        super().setup()

    # -- plumbing ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if isinstance(code, int) or str(code).isdigit() else 0
        self.server.hub._record(RequestRecord(self.command or "", self.path, status))
        logger.debug("%s %s -> %s", self.command, self.path, code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("hub: " + format, *args)

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        self._head_only = method == "HEAD"
        try:
            self._body = self._read_body()
            self._route(method)
        except HubError as err:
            if err.status == 413:
                self.close_connection = True
            self._send_error(err)
        except (ConnectionError, TimeoutError):  # the client went away or stalled
            self.close_connection = True
        except Exception as exc:  # a bug in the test hub: answer 500 and fail the test
            hub._record_error(f"{method} {self.path}: {exc!r}\n{traceback.format_exc()}")
            self.close_connection = True
            self._send_error(HubError(500, f"Internal error in the test hub: {exc!r}"))

    def _read_body(self) -> bytes:
        limit = self.server.hub.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = _parse_int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > limit:
                    raise HubError(413, f"Request body larger than {limit} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = _parse_int(self.headers.get("Content-Length") or "0", 10)
        if length > limit:
            raise HubError(413, f"Request body larger than {limit} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(self._body or b"{}")
        except ValueError as exc:
            raise HubError(400, "Request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise HubError(400, "Request body must be a JSON object")
        return data

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not self._head_only and body:
            self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8", headers)

    def _send_error(self, err: HubError) -> None:
        headers = dict(err.headers)
        headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode().replace("\n", " ")
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({**err.extra, "error": err.message}, err.status, headers)

    # -- routing -----------------------------------------------------------------------

    @property
    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.lower().startswith("bearer ") and bool(auth[7:].strip())

    def _require_token(self) -> None:
        if not self._authorized:
            raise HubError(401, "Invalid username or password.")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        # Split before unquoting: revisions are quoted with safe="" ("a%2Fb" is one segment).
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        while parts and parts[-1] == "" and len(parts) > 1:
            parts.pop()
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = (method, tuple(parts[:2]))

        if route == ("GET", ("api", "whoami-v2")):
            return self._whoami()
        if route == ("POST", ("api", "repos")) and parts[2:] == ["create"]:
            return self._create_repo()
        if route == ("DELETE", ("api", "repos")) and parts[2:] == ["delete"]:
            return self._delete_repo()
        if route == ("POST", ("api", "validate-yaml")):
            return self._send_json({"errors": [], "warnings": []})
        if parts[:2] == ["_lfs", "objects"] and len(parts) == 3 and method == "PUT":
            return self._lfs_put(parts[2])
        if parts == ["_lfs", "verify"] and method == "POST":
            return self._lfs_verify()
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in _REPO_TYPES:
            return self._api_repo(method, _REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:], query)

        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type = parts.pop(0)[:-1]
        if parts[2:6] == ["info", "lfs", "objects", "batch"] and len(parts) == 6 and parts[1].endswith(".git"):
            if method == "POST":
                return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"Not supported by the shine-hf test hub: {method} {url.path}")

    def _api_repo(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict[str, str]) -> None:
        state = self.server.hub.state
        repo = state.get_repo(repo_type, repo_id, self._authorized)
        action = rest[0] if rest else ""
        arg = "/".join(rest[1:])  # revisions, branch and tag names are single (quoted) segments
        if method == "GET" and (not rest or (action == "revision" and len(rest) == 2)):
            return self._send_json(self._repo_info(repo, arg or "main", _truthy(query.get("blobs"))))
        if method == "GET" and action == "tree" and len(rest) >= 2:
            commit = state.resolve(repo, rest[1])
            return self._send_json(_tree_entries(commit, "/".join(rest[2:]), _truthy(query.get("recursive"))))
        if method == "POST" and action == "paths-info" and len(rest) == 2:
            return self._paths_info(state.resolve(repo, arg))
        if method == "GET" and action == "refs" and len(rest) == 1:
            return self._send_json(self._refs(repo, _truthy(query.get("include_prs"))))
        if method == "GET" and action == "commits" and len(rest) == 2:
            return self._send_json([_commit_json(c, state.user) for c in state.history(repo, arg)])
        if method == "POST" and action in ("preupload", "commit") and len(rest) == 2:
            self._require_token()
            if _truthy(query.get("create_pr")):
                raise HubError(400, "Pull requests are not supported by the test hub")
            return self._preupload(repo, arg) if action == "preupload" else self._commit(repo, arg)
        if action in ("branch", "tag") and len(rest) == 2 and method in ("POST", "DELETE"):
            self._require_token()
            if method == "DELETE":
                (state.delete_branch if action == "branch" else state.delete_tag)(repo, arg)
            elif action == "branch":
                state.create_branch(repo, arg, self._json_body().get("startingPoint"))
            else:
                body = self._json_body()
                state.create_tag(repo, str(body.get("tag") or ""), arg)
            return self._send_json({})
        raise HubError(404, f"Not supported by the shine-hf test hub: {method} {self.path}")

    # -- endpoints ---------------------------------------------------------------------

    def _whoami(self) -> None:
        self._require_token()
        user = self.server.hub.state.user
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@example.com",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _create_repo(self) -> None:
        self._require_token()
        body = self._json_body()
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo, created = self.server.hub.state.create_repo(
            str(body.get("type") or "model"), body.get("organization"), str(body.get("name") or ""), private
        )
        url = f"{self.server.hub.url}/{repo.url_path}"
        if not created:  # the client reads "url" from this 409 when exist_ok=True
            raise HubError(409, f"You already created this {repo.repo_type} repo", extra={"url": url})
        self._send_json({"url": url, "name": repo.repo_id, "id": repo.uid})

    def _delete_repo(self) -> None:
        self._require_token()
        body = self._json_body()
        namespace = body.get("organization") or self.server.hub.state.user
        self.server.hub.state.delete_repo(str(body.get("type") or "model"), f"{namespace}/{body.get('name')}")
        self._send_json({})

    def _repo_info(self, repo: Repo, revision: str, blobs: bool) -> dict[str, Any]:
        commit = self.server.hub.state.resolve(repo, revision)
        siblings = []
        for path, entry in commit.files.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs_sha256:
                    sibling["lfs"] = entry.lfs_json("sha256")
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    def _paths_info(self, commit: Commit) -> None:
        paths = parse_qs(self._body.decode()).get("paths", [])  # form-encoded, "paths" repeated
        out = []
        for path in paths:
            path = str(path).strip("/")
            if path in commit.files:
                out.append(_file_json(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.extend(e for e in _tree_entries(commit, "", True) if e["path"] == path)
        self._send_json(out)

    def _refs(self, repo: Repo, include_prs: bool) -> dict[str, Any]:
        def refs(kind: str, names: dict[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(names.items())]

        with self.server.hub.state._lock:
            data: dict[str, Any] = {
                "branches": refs("heads", repo.branches),
                "converts": [],
                "tags": refs("tags", repo.tags),
            }
        if include_prs:
            data["pullRequests"] = []
        return data

    def _preupload(self, repo: Repo, revision: str) -> None:
        state = self.server.hub.state
        commit = state.resolve(repo, revision)
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, "'files' must be a list")
        out = []
        for item in files:
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int):
                raise HubError(400, "Each file needs a 'path' and a 'size'")
            try:
                sample = base64.b64decode(item.get("sample") or "")
            except (binascii.Error, ValueError) as exc:
                raise HubError(400, f"Invalid base64 sample for {path}") from exc
            existing = commit.files.get(path)
            out.append(
                {
                    "path": path,
                    "uploadMode": state.upload_mode(commit, path, size, sample[:512]),
                    "shouldIgnore": False,
                    "oid": existing.etag if existing else None,
                }
            )
        self._send_json({"files": out, "commitOid": commit.oid})

    def _commit(self, repo: Repo, branch: str) -> None:
        try:
            lines = [json.loads(line) for line in self._body.splitlines() if line.strip()]
        except ValueError as exc:
            raise HubError(400, "Commit payload is not valid NDJSON") from exc
        commit = self.server.hub.state.commit(repo, branch, lines)
        url = f"{self.server.hub.url}/{repo.url_path}/commit/{commit.oid}"
        self._send_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_token()
        state = self.server.hub.state
        repo = state.get_repo(repo_type, repo_id, authorized=True)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "The test hub only supports LFS uploads (downloads go through /resolve)")
        if "basic" not in (body.get("transfers") or ["basic"]):
            raise HubError(422, "The test hub only supports the 'basic' LFS transfer")
        ref = (body.get("ref") or {}).get("name")
        if ref:
            state.resolve(repo, ref.removeprefix("refs/heads/"))
        base = self.server.hub.url
        objects = []
        for obj in body.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
                error = {"code": 422, "message": "Invalid oid or size"}
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error})
            elif not state.announce_lfs(oid, size):
                objects.append({"oid": oid, "size": size})  # already stored: nothing to upload
            else:
                actions = {
                    "upload": {"href": f"{base}/_lfs/objects/{oid}", "expires_in": 3600},
                    "verify": {"href": f"{base}/_lfs/verify", "expires_in": 3600},
                }
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            "application/vnd.git-lfs+json",
        )

    def _lfs_put(self, oid: str) -> None:
        self.server.hub.state.store_lfs(oid, self._body)
        self._send(200, b"", "text/plain")

    def _lfs_verify(self) -> None:
        body = self._json_body()
        oid, size = body.get("oid"), body.get("size")
        if not isinstance(oid, str) or not self.server.hub.state.has_lfs(oid, size):
            raise HubError(404, f"LFS object {oid} not found")
        self._send_json({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        state = self.server.hub.state
        repo = state.get_repo(repo_type, repo_id, self._authorized)
        commit = state.resolve(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        content = state.read(entry)
        basename = path.rsplit("/", 1)[-1]
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(basename)}",
        }
        if entry.lfs_sha256:
            headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            start, end = _parse_range(range_header, len(content))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, "application/octet-stream", headers)


def _parse_int(value: str | bytes, base: int) -> int:
    try:
        number = int(value, base)
    except ValueError as exc:
        raise HubError(400, f"Malformed length in request: {value!r}") from exc
    if number < 0:
        raise HubError(400, f"Negative length in request: {value!r}")
    return number


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """Parse a single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range (inclusive bounds)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or match.groups() == ("", ""):
        raise HubError(416, f"Unsupported Range header: {header}", headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start > end or start >= size:
        raise HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _commit_json(commit: Commit, user: str) -> dict[str, Any]:
    return {
        "id": commit.oid,
        "title": commit.title,
        "message": commit.message,
        "date": commit.date,
        "authors": [{"user": user}],
    }


# --------------------------------------------------------------------------------------
# Server object
# --------------------------------------------------------------------------------------


class HubServer:
    """A running test hub on ``127.0.0.1`` (see :func:`start_hub_server`)."""

    def __init__(
        self,
        port: int = 0,
        *,
        user: str = HUB_USER,
        max_body_bytes: int = 512 * 1024 * 1024,
        max_connections: int = 64,
        request_timeout: float = 30.0,
        log_size: int = 10_000,
    ) -> None:
        self.state = HubState(user)
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=log_size)
        self.errors: list[str] = []  # tracebacks of internal errors (bugs in the test hub)
        self._httpd = _HTTPServer(port, self)
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"test-hub:{self.port}", daemon=True
        )
        self._stopped = False
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, abort open connections and release the port (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.close_connections(timeout)
        self._httpd.server_close()
        self._thread.join(timeout)

    def reset(self) -> None:
        """Delete every repo and blob (the server keeps running)."""
        self.state.reset()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def _record_error(self, error: str) -> None:
        logger.error("test hub internal error: %s", error)
        self.errors.append(error)


def start_hub_server(port: int = 0, **kwargs: Any) -> HubServer:
    """Start a test hub on ``127.0.0.1:port`` (0 = any free port) in a daemon thread."""
    return HubServer(port, **kwargs)


# --------------------------------------------------------------------------------------
# pytest integration
# --------------------------------------------------------------------------------------

_SESSION: HubServer | None = None

# Variables that would route the client elsewhere, force offline mode or bypass the temp cache.
_UNSET_VARS = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_CO_STAGING",
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HF_INFERENCE_ENDPOINT", "HF_MODULES_CACHE", "HF_DATASETS_CACHE",
)  # fmt: skip


def configure_hub_env(config: pytest.Config | None = None, *, port: int = 0) -> HubServer:
    """Start the session's test hub and point ``huggingface_hub`` at it via the environment.

    Must run before ``huggingface_hub.constants`` is imported (call it from
    ``pytest_configure``).  Sets ``HF_ENDPOINT``, a temporary ``HF_HOME``, a dummy
    ``HF_TOKEN``, ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HUB_DISABLE_XET=1`` (``hf_xet`` is
    installed, and the client would otherwise upload through Xet) and clears offline
    flags and cache overrides.  The previous environment is restored, the server stopped
    and the temporary home deleted at the end of the session (``config.add_cleanup``,
    or ``atexit`` without a config).  Calling it again returns the running server.
    """
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    if "huggingface_hub.constants" in sys.modules:
        raise RuntimeError(
            "huggingface_hub was imported before configure_hub_env(): its endpoint and cache settings are "
            "already frozen. Call configure_hub_env() from pytest_configure in tests/conftest.py and do not "
            "import huggingface_hub, transformers or peft at conftest import time."
        )
    server = start_hub_server(port)
    home = Path(tempfile.mkdtemp(prefix="shine-hf-test-hub-"))
    saved = {name: os.environ.get(name) for name in (*_UNSET_VARS, *_session_env(server, home))}
    for name in _UNSET_VARS:
        os.environ.pop(name, None)
    os.environ.update(_session_env(server, home))
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

    if config is not None:
        config.add_cleanup(cleanup)
    else:
        atexit.register(cleanup)
    return server


def _session_env(server: HubServer, home: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(home),
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
        "HF_HUB_ETAG_TIMEOUT": "30",
        "HF_HUB_DOWNLOAD_TIMEOUT": "30",
    }


@dataclass(frozen=True)
class HubContext:
    """What the ``hub`` fixture gives a test: the server plus its private HF cache."""

    server: HubServer
    home: Path  # HF_HOME of this test
    cache_dir: Path  # HF_HUB_CACHE of this test (empty at start)
    user: str = HUB_USER
    token: str = HUB_TOKEN

    @property
    def url(self) -> str:
        return self.server.url

    def unique_repo_id(self, name: str = "repo") -> str:
        """A fresh ``user/name-xxxxxxxx`` repo id (repos outlive tests on the session server)."""
        return f"{self.user}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The session's test hub, started by :func:`configure_hub_env`."""
    if _SESSION is None:
        pytest.fail("The test hub is not running: call configure_hub_env(config) from pytest_configure in conftest.py")
    return _SESSION


@pytest.fixture
def hub(
    hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubContext]:
    """The session's test hub with a fresh, empty HF cache (``HF_HOME``) for this test."""
    from huggingface_hub import constants

    if constants.ENDPOINT != hub_server.url or not constants.HF_HUB_DISABLE_XET:
        pytest.fail(f"huggingface_hub is not configured for the test hub (ENDPOINT={constants.ENDPOINT!r})")
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": cache,
        "HUGGINGFACE_HUB_CACHE": cache,
        "HF_ASSETS_CACHE": home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
    }
    for name, path in paths.items():
        monkeypatch.setattr(constants, name, str(path))
    monkeypatch.setenv("HF_HOME", str(home))  # for subprocesses
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    errors_before = len(hub_server.errors)
    yield HubContext(server=hub_server, home=home, cache_dir=cache)
    new_errors = hub_server.errors[errors_before:]
    if new_errors:
        pytest.fail("The test hub hit internal errors:\n" + "\n".join(new_errors), pytrace=False)


# --------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python tests/hub_server.py --port N``: serve on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description="In-memory Hugging Face Hub for tests (binds 127.0.0.1 only).")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (0 = any free port)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # stop cleanly on kill/timeout too
    server = start_hub_server(args.port)
    print(f"Test hub listening on {server.url} (user {HUB_USER!r}, any token accepted)", flush=True)
    print(f"  export HF_ENDPOINT={server.url} HF_TOKEN={HUB_TOKEN} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
