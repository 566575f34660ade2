"""Checks shared by the command-line tests."""

from __future__ import annotations

from typing import Any


def one_line_error(result: Any, *fragments: str) -> str:
    """The result is a user error: exit code 1, one `Error: ...` line on stderr holding every fragment,
    no traceback. Returns that line."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
