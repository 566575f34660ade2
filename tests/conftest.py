"""Shared fixtures. Every test runs offline on tiny random backbones."""

from __future__ import annotations

import os

import pytest

# pytest puts tests/ itself on sys.path (rootdir-less test modules, prepend import mode)
from hub_server import configure_hub_env, hub, hub_server  # noqa: F401 (fixtures)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from shine_hf.testing import build_chat_tokenizer

    return build_chat_tokenizer()


def pytest_configure(config: pytest.Config) -> None:
    """Start the test hub and point huggingface_hub at it before anything imports it."""
    configure_hub_env(config)
