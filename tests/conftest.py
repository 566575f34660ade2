"""Shared fixtures. Every test runs offline on tiny random backbones."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from shine_hf.testing import build_chat_tokenizer

    return build_chat_tokenizer()
