"""internalize(): batching, padding, input forms, errors; generation with per-row adapters."""

from __future__ import annotations

import pytest
import torch

from shine_hf import ContextTooLongError, EmptyContextError, IncompatibleAdapterError, ShineAdapter
from shine_hf.testing.models import tiny_shine

CONTEXTS = [
    "The contract was signed by Alice Moreau in Lyon on 3 March 1998.",
    "Tarsk is the capital of Veloria.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and dates like 12 May 2031 appear in reports every year.",
]


def _assert_adapters_close(a: ShineAdapter, b: ShineAdapter, atol: float = 1e-5) -> None:
    assert len(a) == len(b) and a.num_layers == b.num_layers
    for layer in a.lora:
        for name, wa in a.lora[layer].items():
            wb = b.lora[layer][name]
            assert torch.allclose(wa.A, wb.A, atol=atol, rtol=0), (layer, name, "A")
            assert torch.allclose(wa.B, wb.B, atol=atol, rtol=0), (layer, name, "B")
            assert (wa.C is None) == (wb.C is None)
            if wa.C is not None:
                assert torch.allclose(wa.C, wb.C, atol=atol, rtol=0), (layer, name, "C")


@pytest.fixture(scope="module", params=["qwen3", "gpt2"])
def model(request):
    return tiny_shine(request.param)


def test_batch_equals_single_calls(model):
    batch = model.internalize(CONTEXTS)
    assert len(batch) == 3
    for index, context in enumerate(CONTEXTS):
        _assert_adapters_close(batch[index], model.internalize(context))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_does_not_matter(model, side):
    tokenizer = model.tokenizer
    tokenizer.padding_side = side
    try:
        encoded = tokenizer(CONTEXTS, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    from_ids = model.internalize(encoded["input_ids"], encoded["attention_mask"])
    _assert_adapters_close(from_ids, model.internalize(CONTEXTS))
    as_lists = model.internalize([tokenizer(c)["input_ids"] for c in CONTEXTS])
    _assert_adapters_close(as_lists, from_ids)


def test_internalize_runs_without_grad_unless_asked(model):
    assert not next(iter(model.internalize(CONTEXTS[0]).lora[0].values())).A.requires_grad
    assert next(iter(model.internalize(CONTEXTS[0], requires_grad=True).lora[0].values())).A.requires_grad


def test_empty_context_is_refused(model):
    with pytest.raises(EmptyContextError, match="empty"):
        model.internalize("   ")
    with pytest.raises(EmptyContextError):
        model.internalize([])
    with pytest.raises(EmptyContextError, match=r"\[1\]"):
        model.internalize(torch.tensor([[5, 6], [5, 6]]), torch.tensor([[1, 1], [0, 0]]))


def test_too_long_context_names_lengths_and_chunking(model):
    limit = model.max_context_tokens
    ids = torch.full((1, limit + 1), 7)
    with pytest.raises(ContextTooLongError, match=rf"{limit + 1} tokens.*at most {limit}.*chunk"):
        model.internalize(ids)
    assert len(model.internalize(ids[:, :limit])) == 1


def test_generation_with_three_adapters_equals_three_single_generations(model):
    adapters = model.internalize(CONTEXTS)
    questions = ["Who signed the contract?", "What is the capital?", "Which numbers appear?"]
    batched = model.generate_text(questions, adapter=adapters, max_new_tokens=6)
    singles = [model.generate_text(q, adapter=adapters[i], max_new_tokens=6) for i, q in enumerate(questions)]
    assert batched == singles
    tokens_batched = _greedy_tokens(model, questions, adapters)
    tokens_single = [_greedy_tokens(model, [q], adapters[i])[0] for i, q in enumerate(questions)]
    assert tokens_batched == tokens_single
    # the adapters really steer generation differently from the plain backbone
    plain = [_greedy_tokens(model, [q], None)[0] for q in questions]
    assert plain != tokens_single


def _greedy_tokens(model, questions, adapter):
    from shine_hf.modeling.prompting import question_prompt

    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer([question_prompt(tokenizer, q) for q in questions], padding=True, return_tensors="pt",
                          add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"
    output = model.generate(**batch, adapter=adapter, max_new_tokens=6, do_sample=False, pad_token_id=0)
    return [row[batch["input_ids"].shape[1]:].tolist() for row in output]


def test_use_adapter_applies_to_direct_backbone_calls(model):
    adapter = model.internalize(CONTEXTS[0])
    ids = model.tokenizer("Who signed?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(ids, adapter=adapter).logits
        with model.use_adapter(adapter) as backbone:
            direct = backbone(ids).logits
        after = model.backbone(ids).logits
    assert torch.allclose(direct, expected, atol=1e-6)
    assert not torch.allclose(after, expected, atol=1e-4)


def test_num_return_sequences_rows_follow_their_adapter(model):
    adapters = model.internalize(CONTEXTS[:2])
    from shine_hf.modeling.prompting import question_prompt

    prompt = question_prompt(model.tokenizer, "Who?")
    ids = model.tokenizer([prompt, prompt], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, adapter=adapters, max_new_tokens=4, do_sample=False, num_beams=2,
                         num_return_sequences=2, pad_token_id=0)
    single = model.generate(**model.tokenizer([prompt], return_tensors="pt", add_special_tokens=False),
                            adapter=adapters[1], max_new_tokens=4, do_sample=False, num_beams=2,
                            num_return_sequences=2, pad_token_id=0)
    assert out[2:].tolist() == single.tolist()


def test_adapter_stack_and_index_round_trip(model):
    adapters = model.internalize(CONTEXTS)
    restacked = ShineAdapter.stack([adapters[2], adapters[0], adapters[1]])
    _assert_adapters_close(restacked[1], adapters[0], atol=0)
    assert len(restacked) == 3
    with pytest.raises(IndexError):
        adapters[3]


def test_baseline_prompts_follow_the_reference(model):
    from shine_hf.modeling.prompting import in_context_question, question_prompt

    tok = model.tokenizer
    assert question_prompt(tok, "Who?") == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
    with_system = question_prompt(tok, "Who?", system_prompt=model.config.system_prompt)
    assert with_system.startswith("<|im_start|>system\nYou are a concise assistant.")
    user_turn = in_context_question("Doc.", "Who?")
    assert user_turn == "Reference:\nDoc.\n\nBased on the reference, answer this question:\nWho?"
    # generate_text(context=...) renders exactly that prompt
    prompt = tok([question_prompt(tok, user_turn)], return_tensors="pt", add_special_tokens=False)
    expected = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    text = model.generate_text("Who?", context="Doc.", max_new_tokens=3)
    new_tokens = expected[0, prompt["input_ids"].shape[1]:]
    assert text == tok.decode(new_tokens, skip_special_tokens=True).strip()


def test_questions_and_adapters_of_different_counts_are_refused_unless_mapped(model):
    adapters = model.internalize(CONTEXTS[:2])
    questions = ["Who signed the contract?", "Where?", "What is the capital?", "Which city?"]
    with pytest.raises(IncompatibleAdapterError, match="adapter batch of 2 does not fit an input batch of 4"):
        model.generate_text(questions, adapter=adapters, max_new_tokens=4)
    with pytest.raises(IncompatibleAdapterError, match="adapter batch of 2 does not fit an input batch of 1"):
        model.generate_text(questions[0], adapter=adapters, max_new_tokens=4)
    mapped = model.generate_text(questions, adapter=adapters, adapter_index=[0, 0, 1, 1], max_new_tokens=4)
    singles = [model.generate_text(q, adapter=adapters[i // 2], max_new_tokens=4) for i, q in enumerate(questions)]
    assert mapped == singles
    ids = model.tokenizer(questions, padding=True, return_tensors="pt")["input_ids"]
    with pytest.raises(IncompatibleAdapterError, match="adapter batch of 2"):
        model(ids, adapter=adapters)
