"""Small file-system helpers: directories that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success move its files into `target`.

    If the body raises, the temporary directory is removed and `target` is left as it was. A new
    `target` appears in one rename; into an existing one each file is moved with `os.replace`
    (atomic per file), so no reader ever sees a half-written file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if not target.exists():
            os.rename(staging, target)
            return
        for path in sorted(staging.rglob("*")):
            destination = target / path.relative_to(staging)
            if path.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
