"""Directories that appear whole or not at all, even when a save replaces an earlier one.

`atomic_directory(target)` yields a fresh staging directory beside `target`; when the body
succeeds, the staging directory becomes `target`:

- `target` does not exist: one `rename`.
- `target` holds only files (and directories, `owns_directory(name)`) an earlier save of the same
  kind wrote (`owns(name)`): the two
  directories are swapped in one atomic step (`renameat2(RENAME_EXCHANGE)` on Linux; elsewhere two
  renames, with the old directory parked under a hidden name in between) and the old one is
  removed. A reader sees the old checkpoint or the new one, never a mixture.
- `target` also holds other things (a Trainer's output directory with `checkpoint-N/` and logs, a
  user's notes): those are kept; the earlier save's files that the new one does not write are
  removed and the new files moved in one by one, the `marker` file (`config.json`,
  `adapter_config.json`) removed first and moved in last. A save killed in between leaves a
  directory without the marker, which loading refuses as incomplete: never old weights beside a
  new config.

Staging and parked directories are named `.{target}.tmp-{pid}-*` / `.{target}.old-{pid}-*`; the
next save into the same place removes those left by processes that no longer run. New
directories get the permissions the umask allows, as `os.makedirs` (and transformers' own saves)
would give them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(second))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Remove staging/parked siblings of `target` left by saves whose process no longer runs."""
    parent = target.parent
    if not parent.is_dir():
        return
    for kind in ("tmp", "old"):
        for path in parent.glob(f".{target.name}.{kind}-*"):
            pid_text = path.name[len(f".{target.name}.{kind}-"):].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike,
    owns: Callable[[str], bool] | None = None,
    marker: str | None = None,
    owns_directory: Callable[[str], bool] | None = None,
) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces `target` (see the module docstring).

    Args:
        target: The directory to write.
        owns: Whether a top-level entry name of an existing `target` is a file this kind of save
            writes (and may therefore remove). Default: nothing is owned, so an existing
            directory's other entries are always kept.
        marker: The file whose presence says the directory is complete; removed first and moved
            in last when files are replaced one by one.
        owns_directory: The same for top-level directories (a save made of sub-directories, such as
            one adapter per chunk). Default: no directory is owned.

    If the body raises, the staging directory is removed and `target` is left as it was.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"Cannot save into {target}: it exists and is not a directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        yield staging
        if not target.exists():
            os.rename(staging, target)
            return
        owns = owns or (lambda name: False)
        owns_directory = owns_directory or (lambda name: False)

        def owned(name: str) -> bool:
            entry = target / name
            return (owns(name) and entry.is_file()) or (owns_directory(name) and entry.is_dir()
                                                         and not entry.is_symlink())

        existing = [entry.name for entry in target.iterdir()]
        if all(owned(name) for name in existing):
            _swap_whole(staging, target)
        else:
            _replace_files(staging, target, [n for n in existing if owned(n)], marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_whole(staging: Path, target: Path) -> None:
    if _exchange(staging, target):
        return  # `staging` now holds the old directory; the caller removes it
    parked = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.rmdir(parked)
    os.rename(target, parked)
    os.rename(staging, target)
    shutil.rmtree(parked, ignore_errors=True)


def _replace_files(staging: Path, target: Path, owned_existing: list[str], marker: str | None) -> None:
    new_names = {entry.name for entry in staging.iterdir()}
    if marker is not None and (target / marker).exists():
        os.remove(target / marker)
    for name in owned_existing:
        if name not in new_names and name != marker:
            if (target / name).is_dir():
                shutil.rmtree(target / name)
            else:
                os.remove(target / name)
    for name in sorted(new_names - {marker}):
        source, destination = staging / name, target / name
        if destination.is_dir() and not source.is_dir():
            raise IsADirectoryError(f"Cannot write {destination}: a directory of that name is in the way.")
        if source.is_dir():
            shutil.rmtree(destination, ignore_errors=True)
        os.replace(source, destination)
    if marker is not None and marker in new_names:
        os.replace(staging / marker, target / marker)
