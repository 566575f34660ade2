"""The fine-tuning baseline really trains (on the shipped facts backbone: its loss falls and its
answers move away from question-only), restarts from the same LoRA for every document, and gives
the backbone back unmodified."""

from __future__ import annotations

import pytest
import torch

from shine_hf import InvalidInputError, ShineForCausalLM
from shine_hf.assets import FACTS_DATA, FACTS_SHINE
from shine_hf.evaluation import SftConfig, run_eval
from shine_hf.evaluation.sft import DocumentFineTuner
from shine_hf.testing.facts import synthetic_facts


@pytest.fixture(scope="module")
def facts_model():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return ShineForCausalLM.from_pretrained(FACTS_SHINE).eval()


@pytest.fixture(scope="module")
def held_out():
    return [{"context": r["context"], "questions": r["questions"], "answers": r["answers"]}
            for r in synthetic_facts(**FACTS_DATA)["test"].select(range(2))]


def tuner(model, **config):
    return DocumentFineTuner(model.backbone, rank=model.config.lora_rank,
                             target_modules=[t.name for t in model.targets], config=SftConfig(**config))


def test_sft_loss_falls_and_its_answers_differ_from_question_only(facts_model, held_out):
    results = run_eval(facts_model, held_out, conditions="question_only,sft", max_new_tokens=8)
    for batch in results["batches"]["sft"]:
        (losses,) = batch["losses"]
        assert len(losses) == SftConfig().steps
        assert losses[-1] < 0.5 * losses[0], losses  # the defaults at least halve the document's loss
    changed = [row["predictions"]["sft"]["prediction"] != row["predictions"]["question_only"]["prediction"]
               for row in results["examples"]]
    per_document = [any(c for c, row in zip(changed, results["examples"]) if row["document"] == d) for d in (0, 1)]
    assert all(per_document), results["examples"]
    summary = results["summary"]["sft"]
    assert summary["sft_last_loss"] < summary["sft_first_loss"]
    assert summary["document_tokens_per_question"] > 0 and summary["prepare_step"] == "fine-tune"


def test_first_loss_is_the_backbones_own_and_every_document_restarts(facts_model, held_out):
    ids = facts_model.tokenizer(held_out[0]["context"])["input_ids"]
    with torch.no_grad():
        x = torch.tensor([ids])
        plain = facts_model.backbone(input_ids=x, labels=x).loss.item()
    with tuner(facts_model, steps=3, learning_rate=1e-2) as t:
        first = t.fine_tune(ids)
        t.fine_tune(facts_model.tokenizer(held_out[1]["context"])["input_ids"])
        again = t.fine_tune(ids)
    # PEFT initialises B = 0: the LoRA adds exact zeros before the first step
    assert first.losses[0] == pytest.approx(plain, rel=1e-6)
    assert again.losses == first.losses  # reset to the same initialisation, same data: same run
    assert first.tokens == 3 * len(ids)


def test_long_documents_are_trained_in_chunks(facts_model, held_out):
    ids = facts_model.tokenizer(held_out[0]["context"])["input_ids"]
    with tuner(facts_model, steps=2, max_length=16) as t:
        run = t.fine_tune(ids)
    assert run.tokens == 2 * len(ids) and len(run.losses) == 2


def test_the_backbone_is_given_back_unmodified(facts_model, held_out):
    backbone = facts_model.backbone
    modules = {name: type(module) for name, module in backbone.named_modules()}
    keys = list(backbone.state_dict())
    x = torch.tensor([facts_model.tokenizer(held_out[0]["context"])["input_ids"]])
    with torch.no_grad():
        before = backbone(input_ids=x).logits
    with tuner(facts_model, steps=2, learning_rate=1e-2) as t:
        t.fine_tune(x[0].tolist())
        with torch.no_grad():
            assert not torch.equal(backbone(input_ids=x).logits, before)  # the LoRA is live inside
    assert {name: type(module) for name, module in backbone.named_modules()} == modules
    assert list(backbone.state_dict()) == keys
    assert not any(p.requires_grad for p in backbone.parameters())
    with torch.no_grad():
        assert torch.equal(backbone(input_ids=x).logits, before)
    adapter = facts_model.internalize(held_out[0]["context"])  # SHINE still works on it
    assert facts_model.generate_text(held_out[0]["questions"][0], adapter=adapter, max_new_tokens=8) == \
        held_out[0]["answers"][0]


@pytest.mark.parametrize(("config", "message"), [(dict(steps=0), "steps"), (dict(learning_rate=0.0), "learning rate"),
                                                 (dict(max_length=1), "max_length")])
def test_bad_sft_settings_are_refused(config, message):
    with pytest.raises(InvalidInputError, match=message):
        SftConfig(**config).validate()
