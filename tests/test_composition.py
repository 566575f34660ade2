"""Composing adapters (concat / mean / weighted), re-factorising to a rank, and chunked internalize."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import PeftModel

from shine_hf import IncompatibleAdapterError, InvalidInputError, ShineAdapter
from shine_hf.modeling.chunking import chunk_spans, split_text
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import tiny_shine

DOCS = [
    "The contract was signed by Alice Moreau in Lyon on 3 March 1998.",
    "Tarsk is the capital of Veloria.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and dates like 12 May 2031 appear in reports every year.",
]
LONG = " ".join(f"Sentence {i} says the code of box {i} is {i * 7}." for i in range(30))


@pytest.fixture(scope="module", params=["qwen2", "gpt2"])  # qwen2 and gpt2 carry bias deltas
def model(request):
    return tiny_shine(request.param)


def _delta(adapter: ShineAdapter, layer: int, name: str) -> torch.Tensor:
    w = adapter.lora[layer][name]
    return w.A.double() @ w.B.double()  # (b, in, out)


def _bias(adapter: ShineAdapter, layer: int, name: str) -> torch.Tensor | None:
    C = adapter.lora[layer][name].C
    return None if C is None else C.double()


@pytest.mark.parametrize("method, weights", [("concat", None), ("mean", None), ("weighted", [0.5, -1.0, 2.0])])
def test_composition_is_the_exact_weighted_sum_of_deltas_and_biases(model, method, weights):
    parts = [model.internalize(doc) for doc in DOCS]
    composed = ShineAdapter.compose(parts, method=method, weights=weights)
    factors = {"concat": [1.0] * 3, "mean": [1 / 3] * 3, "weighted": weights}[method]
    assert composed.rank == 3 * parts[0].rank
    for layer in composed.lora:
        for name in composed.lora[layer]:
            expected = sum(f * _delta(p, layer, name) for f, p in zip(factors, parts))
            assert torch.allclose(_delta(composed, layer, name), expected, atol=1e-5, rtol=0)
            if _bias(parts[0], layer, name) is not None:
                expected_bias = sum(f * _bias(p, layer, name) for f, p in zip(factors, parts))
                assert torch.allclose(_bias(composed, layer, name), expected_bias, atol=1e-5, rtol=0)


def test_composed_adapter_is_a_normal_peft_adapter(model, tmp_path):
    composed = ShineAdapter.compose([model.internalize(doc) for doc in DOCS])
    composed.save_pretrained(tmp_path)
    ids = model.tokenizer(["Who signed the contract?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        live = model(ids, adapter=composed).logits
        peft_model = PeftModel.from_pretrained(tiny_backbone(model.config.backbone_config["model_type"]), tmp_path)
        exported = peft_model(ids).logits
    assert torch.allclose(live, exported, atol=1e-5, rtol=0)


def test_to_rank_is_the_svd_optimum(model):
    composed = ShineAdapter.compose([model.internalize(doc) for doc in DOCS])
    rank = 5
    reduced = composed.to_rank(rank)
    assert reduced.rank == rank
    for layer in composed.lora:
        for name in composed.lora[layer]:
            delta = _delta(composed, layer, name)[0]
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            optimum = U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank]
            # float32 storage of A and B: relative error of a few float32 epsilons of the largest value
            tolerance = 16 * torch.finfo(torch.float32).eps * float(S[0])
            assert torch.allclose(_delta(reduced, layer, name)[0], optimum, atol=tolerance, rtol=0)
            error = torch.linalg.norm(_delta(reduced, layer, name)[0] - delta)
            assert torch.isclose(error, torch.linalg.norm(S[rank:]), atol=tolerance * delta.shape[0])
            if _bias(composed, layer, name) is not None:
                assert torch.equal(reduced.lora[layer][name].C, composed.lora[layer][name].C)


def test_to_rank_beyond_the_rank_and_mismatched_compositions_are_refused(model):
    adapter = model.internalize(DOCS[0])
    with pytest.raises(IncompatibleAdapterError, match="rank-4 LoRA to rank 5"):
        adapter.to_rank(5)
    other = tiny_shine("llama").internalize(DOCS[0])
    with pytest.raises(IncompatibleAdapterError, match="different layouts"):
        ShineAdapter.compose([adapter, other])
    with pytest.raises(IncompatibleAdapterError, match="batch sizes 1 and 2"):
        ShineAdapter.compose([adapter, model.internalize(DOCS[:2])])
    with pytest.raises(ValueError, match="one weight per adapter"):
        ShineAdapter.compose([adapter, adapter], method="weighted", weights=[1.0])
    with pytest.raises(ValueError, match="Unknown composition method"):
        ShineAdapter.compose([adapter, adapter], method="max")


def test_a_document_that_fits_one_chunk_gives_the_plain_adapter(model):
    plain = model.internalize(DOCS[2])
    chunked = model.internalize(DOCS[2], chunk_tokens=model.max_context_tokens)
    for layer in plain.lora:
        for name in plain.lora[layer]:
            assert torch.equal(plain.lora[layer][name].A, chunked.lora[layer][name].A)


def test_chunked_internalize_composes_the_chunk_adapters(model):
    chunks = split_text(LONG, model.tokenizer, 48, 8)
    assert len(chunks) > 3
    per_chunk = model.internalize(chunks)
    for method in ("concat", "mean"):
        composed = model.internalize(LONG, chunk_tokens=48, overlap_tokens=8, compose=method, chunk_batch_size=2)
        expected = ShineAdapter.compose([per_chunk[i] for i in range(len(chunks))], method=method)
        for layer in expected.lora:
            for name in expected.lora[layer]:
                assert torch.allclose(_delta(composed, layer, name), _delta(expected, layer, name), atol=1e-5)
    raw = model.internalize(LONG, chunk_tokens=48, overlap_tokens=8, compose=None)
    assert len(raw) == len(chunks)


def test_several_long_documents_give_one_adapter_each(model):
    adapters = model.internalize([LONG, DOCS[0]], chunk_tokens=48)
    assert len(adapters) == 2
    alone = model.internalize(DOCS[0], chunk_tokens=48)
    # the short document's adapter is padded with zero rank columns: the same delta
    assert torch.allclose(_delta(adapters[1], 0, model.targets[0].name), _delta(alone, 0, model.targets[0].name),
                          atol=1e-6)


def test_chunks_end_at_sentence_ends_and_respect_the_budget(model):
    chunks = split_text(LONG, model.tokenizer, 48, 0)
    assert all(chunk.endswith(".") for chunk in chunks[:-1])
    assert all(len(model.tokenizer(chunk, add_special_tokens=False)["input_ids"]) <= 48 for chunk in chunks)
    assert " ".join(chunks) == LONG  # no overlap: the chunks are the document


def test_chunk_spans_cover_everything_with_the_overlap():
    spans = chunk_spans(100, 30, 10, ends_sentence=lambda i: False)
    assert spans[0] == (0, 30) and spans[-1][1] == 100
    assert all(b[0] == a[1] - 10 for a, b in itertools.pairwise(spans))


def test_bad_chunking_arguments_are_clear_errors(model):
    with pytest.raises(InvalidInputError, match="larger than overlap_tokens"):
        model.internalize(LONG, chunk_tokens=16, overlap_tokens=16)
    with pytest.raises(InvalidInputError, match="beyond what the backbone can read"):
        model.internalize(LONG, chunk_tokens=model.max_context_tokens + 1)
    with pytest.raises(InvalidInputError, match="positive integer"):
        model.internalize(LONG, chunk_tokens=0)
    with pytest.raises(ValueError, match="Unknown composition method"):
        model.internalize(LONG, chunk_tokens=32, compose="sum")
    with pytest.raises(InvalidInputError, match="one document"):
        model.internalize([LONG, LONG], chunk_tokens=32, compose=None)


def test_cutting_a_document_longer_than_the_tokenizer_maximum_does_not_warn():
    """split_text tokenizes a whole long document on purpose: no "sequence length is longer" warning."""
    from transformers import AutoTokenizer
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    from shine_hf.assets import FACTS_BACKBONE

    tokenizer = AutoTokenizer.from_pretrained(FACTS_BACKBONE)
    text = " ".join(["Mivebu lives in Hulvor."] * 200)
    assert len(tokenizer(text, verbose=False)["input_ids"]) > tokenizer.model_max_length
    with CaptureLogger(logging.get_logger("transformers.tokenization_utils_base")) as captured:
        chunks = split_text(text, tokenizer, 100, 0)
    assert len(chunks) > 1
    assert "longer than the specified maximum" not in captured.out


def test_an_adapter_read_from_disk_composes_and_stacks_with_a_generated_one(model, tmp_path):
    """PEFT files list the modules in another order than the hypernetwork writes them (qwen2: q, k, v, o,
    ... generated; alphabetical when read): still the same layout."""
    generated = model.internalize(DOCS[0])
    generated.save_pretrained(tmp_path / "saved")
    loaded = ShineAdapter.from_pretrained(tmp_path / "saved")
    composed = ShineAdapter.compose([generated, loaded], "mean")
    for name in generated.lora[0]:
        assert torch.allclose(_delta(composed, 0, name), _delta(generated, 0, name), atol=1e-6)
    assert len(ShineAdapter.stack([generated, loaded])) == 2


def test_bad_composition_arguments_are_shine_errors(model):
    adapter = model.internalize(DOCS[0])
    bad_calls = {
        "Unknown composition method": lambda: ShineAdapter.compose([adapter, adapter], method="max"),
        "one weight per adapter": lambda: ShineAdapter.compose([adapter, adapter], method="weighted", weights=[1.0]),
        "only used with method='weighted'": lambda: ShineAdapter.compose([adapter], method="mean", weights=[1.0]),
        "at least one adapter": lambda: ShineAdapter.compose([]),
        "rank must be a positive integer": lambda: adapter.to_rank(0),
        "Unknown composition method 'sum'": lambda: model.internalize(LONG, chunk_tokens=32, compose="sum"),
    }
    for message, call in bad_calls.items():
        with pytest.raises(InvalidInputError, match=message):
            call()


def test_internalizing_a_document_longer_than_the_tokenizer_maximum_in_chunks_does_not_warn():
    """internalize(chunk_tokens=...) reads a long document in chunks: no "indexing errors" warning."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    from shine_hf import ShineForCausalLM
    from shine_hf.assets import FACTS_SHINE

    model = ShineForCausalLM.from_pretrained(FACTS_SHINE)
    document = " ".join(["Mivebu lives in Hulvor."] * 200)
    assert len(model.tokenizer(document, verbose=False)["input_ids"]) > model.tokenizer.model_max_length
    with CaptureLogger(logging.get_logger("transformers.tokenization_utils_base")) as captured:
        adapter = model.internalize(document, chunk_tokens=64, show_progress=False)
    assert len(adapter) == 1
    assert "longer than the specified maximum" not in captured.out
