"""What internalize accepts as a context, and the clear errors for everything else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shine_hf import EmptyContextError, InvalidInputError, ShineError
from shine_hf.testing.models import tiny_shine

CONTEXTS = ["The contract was signed by Alice Moreau in Lyon.", "Tarsk is the capital of Veloria."]


@pytest.fixture(scope="module")
def model():
    return tiny_shine("qwen3")


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.allclose(a.lora[layer][name].A, b.lora[layer][name].A, atol=1e-6, rtol=0)
        and torch.allclose(a.lora[layer][name].B, b.lora[layer][name].B, atol=1e-6, rtol=0)
        for layer in a.lora for name in a.lora[layer]
    )


def test_a_batch_encoding_is_read_as_token_ids_not_as_its_keys(model):
    expected = model.internalize(CONTEXTS)
    encoding = model.tokenizer(CONTEXTS, padding=True, return_tensors="pt")
    from_encoding = model.internalize(encoding)
    assert len(from_encoding) == 2  # not the two strings "input_ids" and "attention_mask"
    assert _same(from_encoding, expected)
    assert _same(model.internalize(**encoding), expected)
    assert _same(model.internalize(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"]),
                 expected)
    assert _same(model.internalize(dict(encoding)), expected)


def test_unbatched_tokenizer_output_and_flat_ids_are_one_context(model):
    expected = model.internalize(CONTEXTS[0])
    encoding = model.tokenizer(CONTEXTS[0])  # lists, no batch axis
    assert _same(model.internalize(encoding), expected)
    assert _same(model.internalize(encoding["input_ids"]), expected)
    assert _same(model.internalize(torch.tensor(encoding["input_ids"])), expected)
    assert _same(model.internalize(np.array([encoding["input_ids"]])), expected)


def test_token_type_ids_of_a_tokenizer_output_are_ignored(model):
    encoding = dict(model.tokenizer(CONTEXTS, padding=True, return_tensors="pt"))
    encoding["token_type_ids"] = torch.zeros_like(encoding["input_ids"])
    assert _same(model.internalize(**encoding), model.internalize(CONTEXTS))
    assert _same(model.internalize(encoding), model.internalize(CONTEXTS))


@pytest.mark.parametrize(
    "bad, match",
    [
        (7, "Cannot internalize a int"),
        (None, "No context given"),
        (b"bytes", "Cannot internalize a bytes"),
        ([1, "two"], "must hold only strings, only ints"),
        (["text", ["nested"]], "must hold only strings, only ints"),
        ([[1, 2], [3.5, 4]], "must hold only strings, only ints"),
        (torch.tensor([[1.0, 2.0]]), "must be integers"),
        (torch.zeros(1, 2, 3, dtype=torch.long), "1-D or 2-D"),
        ({"ids": [1, 2]}, "must hold input_ids"),
        ({"input_ids": [1, 2], "pixel_values": [0]}, "Unexpected key"),
    ],
)
def test_wrong_types_name_what_was_expected(model, bad, match):
    with pytest.raises(InvalidInputError, match=match):
        model.internalize(bad)


def test_invalid_input_error_is_a_type_and_value_error():
    assert issubclass(InvalidInputError, ShineError)
    assert issubclass(InvalidInputError, TypeError) and issubclass(InvalidInputError, ValueError)


def test_out_of_vocabulary_and_negative_ids_are_refused(model):
    vocab = model.backbone.get_input_embeddings().num_embeddings
    with pytest.raises(InvalidInputError, match=f"outside the backbone's vocabulary of {vocab}"):
        model.internalize(torch.tensor([[1, 2, vocab]]))
    with pytest.raises(InvalidInputError, match=">= 0"):
        model.internalize([[1, -3, 2]])


def test_padding_ids_are_never_looked_up(model):
    """Padding positions may hold any id (e.g. -100 from a collator): only real tokens are checked and read."""
    ids = model.tokenizer(CONTEXTS[0])["input_ids"]
    padded = torch.tensor([[*ids, -100, -100]])
    mask = torch.tensor([[1] * len(ids) + [0, 0]])
    assert _same(model.internalize(padded, mask), model.internalize(CONTEXTS[0]))


def test_masks_of_the_wrong_shape_or_values_are_refused(model):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(InvalidInputError, match=r"attention_mask has shape \(2, 2\)"):
        model.internalize(ids, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="only 0 and 1"):
        model.internalize(ids, torch.full((2, 3), 2))
    with pytest.raises(InvalidInputError, match="not to string contexts"):
        model.internalize(CONTEXTS, torch.ones(2, 3))
    with pytest.raises(InvalidInputError, match="given twice"):
        model.internalize(model.tokenizer(CONTEXTS, padding=True, return_tensors="pt"), torch.ones(2, 3))
    with pytest.raises(InvalidInputError, match="different lengths"):
        model.internalize([[5, 6], [7]], [[1, 1], [1, 0]])


def test_empty_contexts(model):
    with pytest.raises(EmptyContextError):
        model.internalize([])
    with pytest.raises(EmptyContextError):
        model.internalize([[1, 2], []])
    with pytest.raises(EmptyContextError):
        model.internalize(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1], [0, 0]]))


def test_context_given_twice_is_refused(model):
    with pytest.raises(InvalidInputError, match="not both"):
        model.internalize(CONTEXTS[0], input_ids=torch.tensor([[1, 2]]))
