"""forward(context_input_ids=...): loss through the generated LoRA, gradients only in the hypernetwork."""

from __future__ import annotations

import torch

from shine_hf import ShineAdapter
from shine_hf.testing.models import tiny_shine


def test_gradients_reach_hypernetwork_and_never_the_backbone():
    model = tiny_shine("qwen3", randomize=False)  # reference init: meta-LoRA B = 0, memory tokens 0
    model.train()
    tok = model.tokenizer
    context = tok(["Alice signed in Lyon.", "Bob signed in Paris on a Monday."], padding=True, return_tensors="pt")
    conversation = tok(["Who signed? Alice", "Who signed? Bob"], padding=True, return_tensors="pt")
    labels = conversation["input_ids"].masked_fill(conversation["attention_mask"] == 0, -100)
    output = model(
        input_ids=conversation["input_ids"],
        attention_mask=conversation["attention_mask"],
        labels=labels,
        context_input_ids=context["input_ids"],
        context_attention_mask=context["attention_mask"],
    )
    assert torch.isfinite(output.loss)
    output.loss.backward()

    hyper = model.hypernetwork
    assert hyper.memory_tokens.grad is not None and hyper.memory_tokens.grad.abs().sum() > 0
    meta_grads = [p.grad for p in hyper.meta_lora.parameters()]
    assert all(g is not None for g in meta_grads) and sum(g.abs().sum() for g in meta_grads) > 0
    m2p_grads = [p.grad for p in hyper.m2p.parameters()]
    assert all(g is not None for g in m2p_grads)
    assert all(p.grad.abs().sum() > 0 for p in hyper.m2p.transformer_layers.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())


def test_training_loss_differs_from_plain_backbone_and_adapter_path_agrees():
    model = tiny_shine("llama")
    tok = model.tokenizer
    context = tok(["Alice signed in Lyon."], return_tensors="pt")
    conversation = tok(["Who signed? Alice"], return_tensors="pt")
    labels = conversation["input_ids"].clone()
    with torch.no_grad():
        through_context = model(**conversation, labels=labels, context_input_ids=context["input_ids"]).loss
        through_adapter = model(**conversation, labels=labels, adapter=model.internalize(context["input_ids"])).loss
        plain = model(**conversation, labels=labels).loss
    assert torch.allclose(through_context, through_adapter, atol=1e-6)
    assert not torch.allclose(through_context, plain, atol=1e-4)


def _grads(model):
    tok = model.tokenizer
    context = tok(["Alice signed in Lyon.", "Bob signed."], padding=True, return_tensors="pt")
    conversation = tok(["Who signed? Alice", "Who? Bob"], padding=True, return_tensors="pt")
    labels = conversation["input_ids"].masked_fill(conversation["attention_mask"] == 0, -100)
    model.zero_grad()
    loss = model(**conversation, labels=labels, context_input_ids=context["input_ids"],
                 context_attention_mask=context["attention_mask"]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.hypernetwork.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_shine("qwen3")
    model.train()
    loss, grads = _grads(model)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    loss_ckpt, grads_ckpt = _grads(model)
    model.gradient_checkpointing_disable()
    assert torch.allclose(loss, loss_ckpt, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-6, rtol=1e-5), name


def test_chunks_composed_in_the_graph_equal_the_composed_adapters_and_get_gradients():
    model = tiny_shine("qwen2")  # bias deltas too
    model.train()
    tok = model.tokenizer
    chunks = ["Alice signed in Lyon.", "The date was a Monday.", "Bob signed in Paris.", "It rained.", "Late."]
    groups = [[0, 1], [2, 3, 4]]
    sample_index = torch.tensor([0, 0, 1, 1, 1])  # chunks 0-1 -> row 0, chunks 2-4 -> row 1
    context = tok(chunks, padding=True, return_tensors="pt")
    conversation = tok(["Who signed? Alice", "Who? Bob"], padding=True, return_tensors="pt")
    labels = conversation["input_ids"].masked_fill(conversation["attention_mask"] == 0, -100)
    chunk_inputs = dict(context_input_ids=context["input_ids"], context_attention_mask=context["attention_mask"],
                        context_sample_index=sample_index)
    for method in ("concat", "mean"):
        model.zero_grad()
        output = model(**conversation, labels=labels, context_compose=method, **chunk_inputs)
        output.loss.backward()
        assert model.hypernetwork.memory_tokens.grad.abs().sum() > 0
        with torch.no_grad():
            per_chunk = model.internalize(chunks)
            for row, rows in enumerate(groups):
                adapter = ShineAdapter.compose([per_chunk[i] for i in rows], method=method)
                single = model(conversation["input_ids"][row:row + 1],
                               attention_mask=conversation["attention_mask"][row:row + 1], adapter=adapter).logits
                real = conversation["attention_mask"][row].bool()
                assert torch.allclose(output.logits[row][real], single[0][real], atol=1e-5), (method, row)
