"""Training on transformers.Trainer: only the hypernetwork learns, checkpoints are shine-hf
checkpoints, resuming continues the same run, activation checkpointing changes nothing, the
arguments are declared once (dataclasses read by train(), the command line and the docs), and the
`python -m shine_hf.cli train` command trains end to end and reports user errors in one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from transformers.trainer_pt_utils import LengthGroupedSampler

from shine_hf import ShineForCausalLM
from shine_hf.cli import app
from shine_hf.data import COMP_TOKEN, RECON_TOKEN, build_qa_dataset
from shine_hf.testing import build_chat_tokenizer, tiny_backbone
from shine_hf.testing.models import randomize_hypernetwork, tiny_shine
from shine_hf.train import (
    STAGE_LEARNING_RATES,
    ShineDataArguments,
    ShineModelArguments,
    ShineTrainer,
    ShineTrainingArguments,
    TrainingError,
    parse_train_arguments,
    train,
)

# A larger init than the default 0.02 gives the random backbone logits with some spread, so the
# generated LoRA can move the loss a long way (with 0.02 every distribution is near uniform).
BACKBONE = {"initializer_range": 0.3}
HYPER = {"lora_rank": 4, "metalora_rank": 4, "lora_scale": 0.05}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models run as fast on one thread, and two threads on a busy 2-core machine thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(hypernetwork_seed: int = 0) -> ShineForCausalLM:
    """The tiny Qwen3 SHINE model; the backbone is always the same, the hypernetwork init varies."""
    return randomize_hypernetwork(tiny_shine("qwen3", seed=0, backbone_overrides=BACKBONE), seed=hypernetwork_seed)


def _records(n: int) -> list[dict[str, str]]:
    cities = ["Lyon", "Paris", "Tarsk", "Velmar", "Brindun", "Qorsk", "Dusvor", "Kelmar"]
    return [
        {"context": f"Person {i} signed the contract in {cities[i % 8]} on day {i}.",
         "question": f"Where did person {i} sign?", "answer": cities[i % 8]}
        for i in range(n)
    ]


def _dataset(tokenizer, n: int = 4) -> Dataset:
    return build_qa_dataset(Dataset.from_list(_records(n)), tokenizer)[0]


def _args(output_dir: Path, **overrides) -> ShineTrainingArguments:
    values = dict(learning_rate=1e-2, warmup_steps=0, gradient_accumulation_steps=1,
                  per_device_train_batch_size=4, max_steps=1, logging_steps=1, save_steps=1000,
                  disable_tqdm=True, dataloader_pin_memory=False)
    values.update(overrides)
    return ShineTrainingArguments(output_dir=str(output_dir), **values)


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def test_only_the_hypernetwork_learns_and_the_loss_drops(tmp_path):
    model = _model()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    hyper_before = {k: v.clone() for k, v in model.hypernetwork.state_dict().items()}
    args = _args(tmp_path, max_steps=30, remove_unused_columns=True)
    trainer = ShineTrainer(model, args, train_dataset=_dataset(model.tokenizer))
    assert trainer.args.remove_unused_columns is False
    trainer.train()

    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.hypernetwork.parameters()}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    backbone_after = model.backbone.state_dict()
    assert backbone_after.keys() == backbone_before.keys()
    for name, tensor in backbone_before.items():
        assert torch.equal(tensor, backbone_after[name]), name
    changed = [k for k, v in model.hypernetwork.state_dict().items() if not torch.equal(v, hyper_before[k])]
    assert len(changed) == len(hyper_before)

    losses = list(_losses(trainer).values())
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses


def test_checkpoints_are_shine_checkpoints_and_resume_continues_the_same_run(tmp_path):
    tokenizer = build_chat_tokenizer()
    dataset = _dataset(tokenizer, n=6)
    settings = dict(max_steps=6, save_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                    learning_rate=5e-3, warmup_steps=2)

    full = ShineTrainer(_model(), _args(tmp_path / "full", **settings), train_dataset=dataset)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    for name in ("model.safetensors", "config.json", "modeling_shine.py", "tokenizer.json", "optimizer.pt",
                 "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    assert all(k.startswith("hypernetwork.") for k in _safetensors(checkpoint / "model.safetensors"))

    # checkpoint-6 is the final state of the run, loadable as a normal SHINE checkpoint
    loaded = ShineForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-6",
                                              backbone=tiny_backbone("qwen3", **BACKBONE))
    for name, tensor in full.model.hypernetwork.state_dict().items():
        assert torch.equal(loaded.hypernetwork.state_dict()[name], tensor), name
    assert loaded.tokenizer is not None

    # A different hypernetwork init proves that resuming loads the checkpoint's weights.
    resumed = ShineTrainer(_model(hypernetwork_seed=1), _args(tmp_path / "resumed", **settings), train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    full_losses, resumed_losses = _losses(full), _losses(resumed)
    assert resumed.state.global_step == 6
    assert sorted(resumed_losses) == [1, 2, 3, 4, 5, 6]  # 1-3 restored from trainer_state.json
    for step, loss in resumed_losses.items():
        assert math.isclose(loss, full_losses[step], rel_tol=1e-5, abs_tol=1e-6), (step, loss, full_losses[step])
    for name, tensor in full.model.hypernetwork.state_dict().items():
        torch.testing.assert_close(resumed.model.hypernetwork.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_resume_rejects_a_checkpoint_of_another_shape(tmp_path):
    model = tiny_shine("qwen3", lora_rank=2, metalora_rank=2)
    model.save_pretrained(tmp_path / "other")
    trainer = ShineTrainer(_model(), _args(tmp_path / "run"), train_dataset=_dataset(build_chat_tokenizer()))
    with pytest.raises(ValueError, match="shape"):
        trainer._load_from_checkpoint(str(tmp_path / "other"))


def test_gradient_checkpointing_gives_the_same_first_step(tmp_path, monkeypatch):
    calls = []
    original = ShineForCausalLM.activation_checkpointing_enable

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ShineForCausalLM, "activation_checkpointing_enable", spy)
    dataset = _dataset(build_chat_tokenizer())
    logs = {}
    for checkpointing in (False, True):
        model = _model()
        trainer = ShineTrainer(model, _args(tmp_path / str(checkpointing), activation_checkpointing=checkpointing),
                               train_dataset=dataset)
        trainer.train()
        assert model.is_gradient_checkpointing is checkpointing
        logs[checkpointing] = next(h for h in trainer.state.log_history if "loss" in h)
    assert len(calls) == 1  # the Trainer went through our override (it replays the LoRA)
    assert math.isclose(logs[True]["loss"], logs[False]["loss"], rel_tol=1e-6)
    assert math.isclose(logs[True]["grad_norm"], logs[False]["grad_norm"], rel_tol=1e-5)


def test_group_by_length_and_periodic_eval_loss(tmp_path):
    tokenizer = build_chat_tokenizer()
    dataset = _dataset(tokenizer, n=8)
    args = _args(tmp_path, group_by_length=True, eval_strategy="steps", eval_steps=1, max_steps=2,
                 per_device_train_batch_size=2)
    assert args.train_sampling_strategy == "group_by_length"
    trainer = ShineTrainer(_model(), args, train_dataset=dataset, eval_dataset=_dataset(tokenizer, n=2))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert list(sampler.lengths) == dataset["length"]
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [1, 2]
    assert all(math.isfinite(h["eval_loss"]) for h in evals)


def test_half_precision_backbone_with_float32_hypernetwork(tmp_path):
    model = _model()
    model.backbone.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    args = _args(tmp_path, bf16=True, use_cpu=True, max_steps=2)
    trainer = ShineTrainer(model, args, train_dataset=_dataset(model.tokenizer))
    trainer.train()
    assert all(math.isfinite(loss) for loss in _losses(trainer).values())
    assert {p.dtype for p in model.hypernetwork.parameters()} == {torch.float32}
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())


def test_composition_aware_training_composes_each_samples_chunks_and_the_loss_drops(tmp_path):
    backbone = tiny_backbone("qwen3", seed=0, **BACKBONE)
    result = train(backbone=backbone, tokenizer=build_chat_tokenizer(), data=Dataset.from_list(_records(24)),
                   compose_chunks=3, compose_method="mean", output_dir=str(tmp_path), **HYPER, learning_rate=1e-2,
                   warmup_steps=0, max_steps=30, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                   logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False)
    trainer = result.trainer
    chunks = [len(sample) for sample in trainer.train_dataset["context_input_ids"]]
    assert sum(chunks) == 24 and max(chunks) > 1 and set(chunks) <= {1, 2, 3}
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["context_compose"] == "mean"
    assert batch["context_input_ids"].shape[0] == len(batch["context_sample_index"]) > batch["input_ids"].shape[0]
    losses = list(_losses(trainer).values())
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses


def _save_backbone(directory: Path) -> Path:
    """A tiny backbone whose embedding has exactly one row per token of the tiny tokenizer."""
    tokenizer = build_chat_tokenizer()
    tiny_backbone("qwen3", vocab_size=len(tokenizer), **BACKBONE).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_pretrain_then_instruction_tune_from_the_command_line(tmp_path):
    backbone_dir = _save_backbone(tmp_path / "backbone")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Report {i}: the shipment left Lyon on day {i} and reached Tarsk." for i in range(6)))

    result = train(backbone=str(backbone_dir), data=corpus, stage="pretrain", output_dir=str(tmp_path / "pretrain"),
                   max_steps=3, gradient_accumulation_steps=1, per_device_train_batch_size=2, **HYPER,
                   disable_tqdm=True, dataloader_pin_memory=False)
    tokenizer, backbone = result.model.tokenizer, result.model.backbone
    # <RECON>/<COMP> were added; the embedding grew by their two rows, set to the mean of the others.
    assert {RECON_TOKEN, COMP_TOKEN} <= set(tokenizer.get_added_vocab())
    weight = backbone.get_input_embeddings().weight
    old = len(build_chat_tokenizer())
    assert weight.shape[0] == len(tokenizer) == old + 2
    mean = weight[:old].mean(dim=0)
    torch.testing.assert_close(weight[old:], torch.stack([mean, mean]))
    assert not any(p.requires_grad for p in backbone.parameters())
    # warmup: 2000 reference steps, capped at 10% of the 3 steps = 0: full learning rate at once
    assert result.trainer.args.learning_rate == 5e-5 and result.trainer.args.warmup_steps == 2000
    assert result.trainer.lr_scheduler.lr_lambdas[0](0) == 1.0
    pretrained = ShineForCausalLM.from_pretrained(tmp_path / "pretrain")
    assert RECON_TOKEN in pretrained.tokenizer.get_added_vocab()
    assert pretrained.config.backbone_name_or_path == str(backbone_dir)

    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in _records(4)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "shine_hf.cli", "train", "--data", str(qa), "--stage", "ift",
               "--output-dir", str(tmp_path / "ift"), "--from", str(tmp_path / "pretrain"), "--max-steps", "2",
               "--shuffle-qa", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--logging-steps", "1"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Trained 2 steps" in run.stdout
    tuned = ShineForCausalLM.from_pretrained(tmp_path / "ift", backbone=str(backbone_dir))
    assert tuned.config.lora_rank == HYPER["lora_rank"]
    differs = [not torch.equal(t, pretrained.hypernetwork.state_dict()[k])
               for k, t in tuned.hypernetwork.state_dict().items()]
    assert any(differs)


def test_backbone_tokenizer_comes_from_the_backbone_revision(tmp_path, hub):
    """A backbone named on the Hub at an old revision brings the tokenizer of that revision."""
    from huggingface_hub import HfApi

    repo_id = hub.unique_repo_id("tiny-backbone")
    _save_backbone(tmp_path / "backbone")
    api = HfApi()
    api.create_repo(repo_id)
    first = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "backbone").oid
    grown = build_chat_tokenizer()
    grown.add_tokens(["<later-token>"])
    grown.save_pretrained(tmp_path / "grown")
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "grown")

    result = train(backbone=repo_id, data=Dataset.from_list(_records(2)), backbone_revision=first,
                   output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                   gradient_accumulation_steps=1, **HYPER, disable_tqdm=True, dataloader_pin_memory=False)
    assert "<later-token>" not in result.model.tokenizer.get_added_vocab()
    assert len(result.model.tokenizer) == len(build_chat_tokenizer())


# ------------------------------------------------------------------------------ arguments


def test_reference_defaults_live_in_the_training_arguments(tmp_path):
    args = ShineTrainingArguments(output_dir=str(tmp_path))
    assert args.optim == "adamw_torch" and args.lr_scheduler_type == "linear"
    assert (args.weight_decay, args.warmup_steps, args.max_grad_norm, args.gradient_accumulation_steps) == (
        0.01, 2000, 1.0, 4)
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 1
    assert args.learning_rate is None and STAGE_LEARNING_RATES == {"pretrain": 5e-5, "ift": 1e-5}
    assert args.remove_unused_columns is False and args.prediction_loss_only is True
    assert args.ddp_find_unused_parameters is False and args.report_to == []
    # the warmup is capped at 10% of a short run, and not capped without max_warmup_fraction
    assert args.get_warmup_steps(100) == 10 and args.get_warmup_steps(100_000) == 2000
    uncapped = ShineTrainingArguments(output_dir=str(tmp_path), max_warmup_fraction=None)
    assert uncapped.get_warmup_steps(100) == 2000
    assert ShineTrainingArguments(output_dir=str(tmp_path), group_by_length=True).train_sampling_strategy == (
        "group_by_length")
    assert ShineTrainingArguments(output_dir=str(tmp_path), report_to="tensorboard, wandb").report_to == [
        "tensorboard", "wandb"]
    with pytest.raises(TrainingError, match="learning_rate is None"):
        ShineTrainer(_model(), args)


def test_keyword_fields_build_the_same_dataclasses(tmp_path):
    fields = dict(backbone="some/backbone", lora_rank=4, data=["qa.jsonl"], stage="pretrain", max_context_tokens=64,
                  output_dir=str(tmp_path), learning_rate=1e-3, max_steps=7, seed=3)
    model_args, data_args, training_args = parse_train_arguments(fields)
    assert model_args == ShineModelArguments(backbone="some/backbone", lora_rank=4)
    assert model_args.hypernetwork_config() == {"lora_rank": 4}
    assert data_args == ShineDataArguments(data=["qa.jsonl"], stage="pretrain", max_context_tokens=64)
    assert (training_args.learning_rate, training_args.max_steps, training_args.seed) == (1e-3, 7, 3)
    with pytest.raises(TypeError, match="hypernetwork_config"):
        parse_train_arguments({**fields, "hypernetwork_config": {}})
    with pytest.raises(TypeError, match="not both"):
        train(model_args, data_args, training_args, max_steps=1)


def _command_options() -> dict[str, object]:
    from shine_hf.cli import load_command

    command = load_command("train")  # the lazy registry builds the command on demand
    return {name: param for param in command.params for name in param.opts}


def test_command_line_options_come_from_the_dataclasses(tmp_path):
    options = _command_options()
    for name in ("--data", "--output-dir", "-o", "--backbone", "--stage", "--from", "--resume", "--eval-data",
                 "--eval-fraction", "--learning-rate", "--lr", "--epochs", "--max-steps", "--batch-size",
                 "--gradient-accumulation-steps", "--warmup-steps", "--weight-decay", "--max-grad-norm",
                 "--max-context-tokens", "--max-conversation-tokens", "--split-qa", "--shuffle-qa", "--pack-contexts",
                 "--text-column", "--gradient-checkpointing", "--bf16", "--fp16", "--backbone-dtype",
                 "--group-by-length", "--logging-steps", "--eval-steps", "--save-steps", "--save-total-limit",
                 "--report-to", "--seed", "--lora-rank", "--metalora-rank", "--m2p-layers", "--lora-scale",
                 "--compose-chunks", "--compose-method"):
        assert name in options, name
    training = ShineTrainingArguments(output_dir=str(tmp_path))
    for option, field in (("--batch-size", "per_device_train_batch_size"), ("--warmup-steps", "warmup_steps"),
                          ("--gradient-accumulation-steps", "gradient_accumulation_steps"),
                          ("--logging-steps", "logging_steps"), ("--weight-decay", "weight_decay"),
                          ("--max-warmup-fraction", "max_warmup_fraction"), ("--epochs", "num_train_epochs")):
        assert options[option].default == getattr(training, field), option
    assert options["--max-context-tokens"].default == ShineDataArguments(data=[]).max_context_tokens
    assert options["--data"].required and options["--output-dir"].required
    assert "1e-05 ift" in options["--lr"].help


def test_docs_option_table_is_generated_from_the_dataclasses():
    from shine_hf.cli.train import options_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    assert options_markdown() in docs, "regenerate the table: python -c 'from shine_hf.cli.train import " \
                                       "options_markdown; print(options_markdown())'"


# ------------------------------------------------------------------------------ user errors


QA_LINE = json.dumps({"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"})

# Data files (name -> content, extra options, the problem the one-line error must name).
DATA_ERRORS = {
    "missing.jsonl": (None, [], "Data file not found"),
    "malformed.jsonl": (QA_LINE + '\n{"context": "b", "question": ', [], "malformed.jsonl is not valid JSON or JSONL"),
    "empty.jsonl": ("", [], "Empty data file"),
    "blank.jsonl": ("\n\n", [], "holds no JSON records"),
    "columns.jsonl": ('{"text": "x", "title": "y"}\n', [], "QA records need 'context'"),
    "no_answer.jsonl": (QA_LINE + '\n{"context": "b", "question": "q"}\n', [], "QA record 1: a question has no answer"),
    "no_text.jsonl": (QA_LINE, ["--stage", "pretrain"], "no 'text' column"),
}
# Options given with good data (extra options -> the problem the one-line error must name).
OPTION_ERRORS = {
    ("--batch-size", "0"): "per_device_train_batch_size must be at least 1, got 0",
    ("--gradient-accumulation-steps", "0"): "gradient_accumulation_steps must be at least 1",
    ("--max-steps", "0"): "max_steps must be positive",
    ("--epochs", "0"): "num_train_epochs must be positive",
    ("--lr", "-1"): "learning_rate must be positive",
    ("--warmup-steps", "-5"): "warmup_steps must be at least 0",
    ("--logging-steps", "0"): "logging_steps must be positive",
    ("--save-steps", "0"): "save_steps must be positive",
    ("--eval-steps", "0"): "eval_steps must be positive",
    ("--save-total-limit", "0"): "save_total_limit must be at least 1",
    ("--max-context-tokens", "0"): "max_context_tokens must be at least 1",
    ("--max-conversation-tokens", "-1"): "max_conversation_tokens must be at least 1",
    ("--eval-fraction", "1"): "eval_fraction must be in [0, 1)",
    ("--lora-rank", "0"): "lora_rank must be an integer >= 1",
    ("--m2p-layers", "3"): "positive even number",
    ("--backbone-dtype", "bf17"): "Unknown backbone dtype 'bf17'",
    ("--eval-data", "MALFORMED"): "eval.jsonl is not valid JSON",
    ("--compose-chunks", "0"): "compose_chunks must be an integer >= 1",
    ("--compose-chunks", "2", "--split-qa"): "cannot be combined with split_qa",
    ("--compose-chunks", "2", "--stage", "pretrain"): "compose_chunks > 1 groups QA records: it needs stage 'ift'",
    ("--compose-method", "sum"): "compose_method must be one of concat, mean, not 'sum'",
}


def _one_line_error(tmp_path: Path, data: Path, options: list[str]) -> str:
    """Run `shine train` with a backbone path that does not exist (so nothing may load a model
    before the error), check it ends in one `Error: ...` line and exit code 1, return that line."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["train", "--backbone", str(tmp_path / "no-such-backbone"), "--output-dir",
                                      str(tmp_path / "out"), "--data", str(data), *options])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # no traceback: an exit, not an escaped exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.mark.parametrize("name", list(DATA_ERRORS))
def test_unusable_data_is_a_one_line_error_before_any_model_work(tmp_path, name):
    content, options, problem = DATA_ERRORS[name]
    data = tmp_path / name
    if content is not None:
        data.write_text(content)
    assert problem in _one_line_error(tmp_path, data, options)


@pytest.mark.parametrize(("options", "problem"), list(OPTION_ERRORS.items()))
def test_bad_options_are_one_line_errors_before_any_model_work(tmp_path, options, problem):
    data = tmp_path / "qa.jsonl"
    data.write_text(QA_LINE)
    (tmp_path / "eval.jsonl").write_text("[1,")
    options = [str(tmp_path / "eval.jsonl") if o == "MALFORMED" else o for o in options]
    assert problem in _one_line_error(tmp_path, data, options)


def test_train_needs_a_known_stage_and_a_backbone(tmp_path):
    records = Dataset.from_list(_records(2))
    with pytest.raises(TrainingError, match="stage"):
        train(data=records, stage="finetune", output_dir=str(tmp_path))
    with pytest.raises(TrainingError, match="No backbone"):
        train(data=records, output_dir=str(tmp_path))
    with pytest.raises(TrainingError, match="resume"):
        train(data=records, output_dir=str(tmp_path), resume_from_checkpoint=True)


def test_the_train_command_module_defers_its_heavy_imports():
    """Importing shine_hf/cli/train.py loads neither shine_hf.train nor transformers' TrainingArguments
    (the options are generated when the command is built), so `shine` can register it lazily."""
    code = textwrap.dedent(
        """
        import importlib.util, sys, types
        import shine_hf
        spec = importlib.util.find_spec("shine_hf.cli")  # the package without its command registration
        package = types.ModuleType("shine_hf.cli")
        package.__path__ = spec.submodule_search_locations
        sys.modules["shine_hf.cli"] = package
        import shine_hf.cli.train as command
        print("transformers.training_args" in sys.modules, "shine_hf.train" in sys.modules)
        command.build_train_command()
        print("transformers.training_args" in sys.modules, "shine_hf.train" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "True"]
