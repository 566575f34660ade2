"""Small tokenizers built locally, for tests, demos and examples that must run offline.

The real backbones' tokenizers live on the Hub; nothing here downloads. `build_chat_tokenizer`
trains a byte-level BPE on a short built-in corpus (deterministic, well under a second) and gives
it the special tokens and chat template of a Qwen3-style ChatML model, including Qwen3's
`enable_thinking` switch, so prompt-building code is exercised exactly as with the real one.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["DEFAULT_CORPUS", "QWEN3_CHAT_TEMPLATE", "build_chat_tokenizer"]

# The generation-prompt part of Qwen3's template: with enable_thinking=False it appends an empty
# think block, which SHINE prompts strip (see modeling/prompting.py).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

DEFAULT_CORPUS = (
    "The contract was signed by Alice Moreau in Lyon on 3 March 1998.",
    "Who signed the contract? Where was it signed? When was it signed?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Hypernetworks read a document once and write a low-rank adapter for a frozen model.",
    "Question: what is the capital of the made-up country Veloria? Answer: Tarsk.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and dates like 12 May 2031 appear in reports.",
    "You are a concise assistant. Output only the final answer, in a few words.",
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def build_chat_tokenizer(
    vocab_size: int = 512,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    chat_template: str = QWEN3_CHAT_TEMPLATE,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE tokenizer with ChatML special tokens and a chat template.

    Args:
        vocab_size: Target vocabulary size, special tokens and the 256 byte symbols included.
        corpus: Texts to learn merges from. Any text still encodes (byte-level fallback).
        chat_template: Jinja chat template; defaults to a Qwen3-style ChatML template.
        padding_side: Initial padding side.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
        padding_side=padding_side,
    )
