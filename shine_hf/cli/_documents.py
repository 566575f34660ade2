"""Documents for `shine internalize` and `shine chat`: UTF-8 text files, read and checked before any
model is loaded, so a wrong path costs no loading time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..modeling.errors import EmptyContextError, ShineError


class DocumentError(ShineError, OSError):
    """A document file is missing, not a file, unreadable or not UTF-8 text."""


@dataclass(frozen=True)
class Document:
    """A document as read from `path`."""

    path: Path
    text: str

    @property
    def name(self) -> str:
        """The name of its adapter: the file name without its suffix."""
        return self.path.stem


def read_document(path: Path) -> Document:
    """Read `path` as UTF-8 text (a leading byte-order mark is dropped).

    Raises:
        DocumentError: no such file, a directory, unreadable, or not UTF-8.
        EmptyContextError: the file is empty or holds only whitespace.
    """
    if not path.exists():
        raise DocumentError(f"No such document: {path}.")
    if path.is_dir():
        raise DocumentError(f"{path} is a directory, not a document (pass the files in it, e.g. {path}/*.txt).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}).") from None
    except OSError as error:
        raise DocumentError(f"Cannot read {path}: {error.strerror or error}.") from None
    if not text.strip():
        raise EmptyContextError(f"{path} is empty: there is nothing to internalize.")
    return Document(path, text)


def read_documents(paths: Sequence[Path]) -> list[Document]:
    """Every document of `paths`, in order (see `read_document`)."""
    return [read_document(Path(path)) for path in paths]


def check_unique_names(documents: Sequence[Document]) -> None:
    """Raise DocumentError when two documents would write the same adapter directory."""
    seen: dict[str, Path] = {}
    for document in documents:
        other = seen.get(document.name)
        if other is None:
            seen[document.name] = document.path
        elif other.resolve() == document.path.resolve():
            raise DocumentError(f"{document.path} is given twice.")
        else:
            raise DocumentError(
                f"{other} and {document.path} would both be saved as the adapter {document.name!r}: rename one "
                f"of them, or internalize them in separate runs with different --out directories."
            )
