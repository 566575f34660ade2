"""RoutedAdapter: chunk adapters kept with their texts, each question answered from its best chunks."""

from __future__ import annotations

import json

import pytest
import torch

from shine_hf import CheckpointError, InvalidInputError, ShineAdapter
from shine_hf.modeling.chunking import split_text
from shine_hf.routing import ROUTER_CONFIG_NAME, RoutedAdapter, is_router_directory
from shine_hf.testing.models import tiny_shine

CHUNKS = [
    "Alice Moreau signed the contract in Lyon.",
    "Tarsk is the capital of Veloria.",
    "The harbour of Qorvik freezes every winter.",
    "Brinmar exports copper and tin.",
]


@pytest.fixture(scope="module")
def model():
    return tiny_shine("qwen2")  # qwen2 carries bias deltas


@pytest.fixture(scope="module")
def chunk_adapters(model):
    return model.internalize(CHUNKS)


def _delta(adapter: ShineAdapter, row: int = 0) -> dict[tuple[int, str], torch.Tensor]:
    return {(layer, name): w.A[row].double() @ w.B[row].double()
            for layer, modules in adapter.lora.items() for name, w in modules.items()}


def _same_deltas(first: ShineAdapter, second: ShineAdapter, row: int = 0) -> bool:
    # float32 factors multiplied in float64: zero rank columns add exact zeros, so only the order of
    # the float64 sums may differ (relative error ~1e-16 per term)
    a, b = _delta(first, row), _delta(second)
    return all(torch.allclose(a[key], b[key], rtol=1e-12, atol=1e-12) for key in a)


def test_a_question_goes_to_the_chunk_that_shares_its_rare_words(chunk_adapters):
    router = RoutedAdapter(chunk_adapters, CHUNKS)
    assert router.route("What is the capital of Veloria?") == [1]
    assert router.route("Who signed the contract?") == [0]
    assert router.route("What does Brinmar export?") == [3]
    scores = router.scores("Does the harbour of Qorvik freeze?")
    assert max(range(4), key=scores.__getitem__) == 2


def test_top_k_routes_in_document_order_and_no_match_routes_everywhere(chunk_adapters):
    router = RoutedAdapter(chunk_adapters, CHUNKS, top_k=2)
    assert router.route("Is Brinmar near Tarsk?") == [1, 3]
    assert router.route("zzz qqq") == [0, 1, 2, 3]  # shares no word with any chunk


def test_routed_adapter_is_the_chunk_adapter_or_the_composition_of_the_chunks(chunk_adapters):
    one = RoutedAdapter(chunk_adapters, CHUNKS).adapter_for("What is the capital of Veloria?")
    for layer, modules in one.lora.items():
        for name, w in modules.items():
            assert torch.equal(w.A, chunk_adapters.lora[layer][name].A[1:2])
            assert torch.equal(w.B, chunk_adapters.lora[layer][name].B[1:2])
    for method in ("concat", "mean"):
        two = RoutedAdapter(chunk_adapters, CHUNKS, top_k=2, method=method).adapter_for("Is Brinmar near Tarsk?")
        expected = ShineAdapter.compose([chunk_adapters[1], chunk_adapters[3]], method=method)
        assert two.rank == 2 * chunk_adapters.rank
        assert _same_deltas(two, expected)


def test_generate_text_answers_each_question_from_its_routed_adapter(model, chunk_adapters):
    router = RoutedAdapter(chunk_adapters, CHUNKS, top_k=2)
    questions = ["What is the capital of Veloria?", "Who signed the contract?", "zzz"]
    routed = model.generate_text(questions, adapter=router, max_new_tokens=5)
    explicit = model.generate_text(questions, adapter=ShineAdapter.stack([router.adapter_for(q) for q in questions]),
                                   max_new_tokens=5)
    assert routed == explicit
    assert model.generate_text(questions[1], adapter=router, max_new_tokens=5) == \
        model.generate_text(questions[1], adapter=router.adapter_for(questions[1]), max_new_tokens=5)


def test_stack_pads_adapters_of_different_ranks(chunk_adapters):
    composed = ShineAdapter.compose([chunk_adapters[0], chunk_adapters[1]])
    stacked = ShineAdapter.stack([chunk_adapters[2], composed])
    assert len(stacked) == 2 and stacked.rank == composed.rank
    assert _same_deltas(stacked, chunk_adapters[2], row=0)
    assert _same_deltas(stacked, composed, row=1)


def test_from_document_keeps_the_chunks_internalize_cuts(model):
    document = " ".join(CHUNKS * 3)
    router = RoutedAdapter.from_document(model, document, chunk_tokens=12, show_progress=False)
    chunks = split_text(document, model.tokenizer, 12, 0)
    assert router.chunks == chunks and len(router) == len(chunks) > 1
    expected = model.internalize(document, chunk_tokens=12, compose=None, show_progress=False)
    assert all(torch.equal(router.adapters.lora[layer][name].A, w.A)
               for layer, modules in expected.lora.items() for name, w in modules.items())


def test_save_and_load_round_trip_and_a_smaller_router_leaves_no_stale_chunk(chunk_adapters, tmp_path):
    target = tmp_path / "router"
    RoutedAdapter(chunk_adapters, CHUNKS, top_k=2, method="mean").save_pretrained(target)
    assert is_router_directory(target)
    loaded = RoutedAdapter.from_pretrained(target)
    assert (loaded.chunks, loaded.top_k, loaded.method) == (CHUNKS, 2, "mean")
    for row in range(len(CHUNKS)):
        assert _same_deltas(loaded.adapters, chunk_adapters[row], row=row)
    (target / "notes.txt").write_text("mine")  # a user's file beside the router is kept
    RoutedAdapter(chunk_adapters[:2], CHUNKS[:2]).save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "chunk-00000", "chunk-00001", "notes.txt",
                                                        ROUTER_CONFIG_NAME]
    assert RoutedAdapter.from_pretrained(target, top_k=2).top_k == 2


def test_a_broken_router_directory_is_a_checkpoint_error(chunk_adapters, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        RoutedAdapter.from_pretrained(tmp_path)
    RoutedAdapter(chunk_adapters, CHUNKS).save_pretrained(tmp_path / "r")
    config = tmp_path / "r" / ROUTER_CONFIG_NAME
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "chunks": [*CHUNKS, "one more"]}))
    with pytest.raises(CheckpointError, match="chunk-00004 is missing"):
        RoutedAdapter.from_pretrained(tmp_path / "r")
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid router file"):
        RoutedAdapter.from_pretrained(tmp_path / "r")


@pytest.mark.parametrize("kwargs, match", [
    ({"chunks": CHUNKS[:3]}, "3 chunk texts for 4 chunk adapters"),
    ({"top_k": 0}, "top_k must be an integer from 1"),
    ({"top_k": 5}, "top_k must be an integer from 1"),
    ({"method": "weighted"}, "Unknown method 'weighted'"),
])
def test_bad_router_arguments_are_clear_errors(chunk_adapters, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        RoutedAdapter(chunk_adapters, **{"chunks": CHUNKS, **kwargs})


def test_a_router_is_refused_where_one_adapter_per_row_is_needed(model, chunk_adapters):
    router = RoutedAdapter(chunk_adapters, CHUNKS)
    with pytest.raises(InvalidInputError, match="adapter_index does not apply"):
        model.generate_text(["a", "b"], adapter=router, adapter_index=[0, 1])
    ids = model.tokenizer(["Who signed?"], return_tensors="pt")["input_ids"]
    with pytest.raises(InvalidInputError, match="routed adapter picks one adapter per question"):
        model(ids, adapter=router)
    with pytest.raises(InvalidInputError, match="one text document"):
        RoutedAdapter.from_document(model, ["a", "b"], chunk_tokens=8)
