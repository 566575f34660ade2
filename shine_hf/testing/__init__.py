"""Tiny, randomly initialised backbones and local tokenizers for tests, demos and examples."""

from .backbones import BACKBONE_FAMILIES, tiny_backbone, tiny_backbone_config
from .tokenizers import build_chat_tokenizer

__all__ = ["BACKBONE_FAMILIES", "build_chat_tokenizer", "tiny_backbone", "tiny_backbone_config"]
