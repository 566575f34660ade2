"""`shine train`: train a SHINE hypernetwork on a frozen backbone (`shine_hf.train.train`).

The options are generated from the argument dataclasses of `shine_hf.train`
(`ShineModelArguments`, `ShineDataArguments` and the `ShineTrainingArguments` fields named in
`TRAINING_OPTIONS`): every option's type, default and help come from its field, so they are
declared once. An option is `--field-name`, plus the field's `aliases` (`--from`) or those given
here (`--batch-size`, `--lr`, `-o`, ...).

Those dataclasses subclass `transformers.TrainingArguments` (and `shine_hf.train` needs
`datasets`), so generating the options imports transformers, torch and datasets. This module
imports none of them: `build_train_command()` builds the command on demand, and `train_command`
(the built command) is created on first access.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Union

import typer
from rich.text import Text

from ._common import console, fail_cleanly

__all__ = ["TRAINING_OPTIONS", "build_train_command", "option_rows", "options_markdown"]

TRAINING_OPTIONS: dict[str, tuple[str, ...]] = {
    "output_dir": ("-o", "--out"),
    "resume_from_checkpoint": ("--resume",),
    "learning_rate": ("--lr",),
    "num_train_epochs": ("--epochs",),
    "max_steps": (),
    "per_device_train_batch_size": ("--batch-size",),
    "gradient_accumulation_steps": (),
    "warmup_steps": (),
    "max_warmup_fraction": (),
    "weight_decay": (),
    "max_grad_norm": (),
    "activation_checkpointing": ("--gradient-checkpointing",),
    "bf16": (),
    "fp16": (),
    "group_by_length": (),
    "logging_steps": (),
    "eval_steps": (),
    "save_steps": (),
    "save_total_limit": (),
    "report_to": (),
    "seed": (),
}
"""The `ShineTrainingArguments` fields that `shine train` offers, each with its extra option names.
Any other `TrainingArguments` field stays reachable from Python (`shine_hf.train.train`)."""

_PANELS = {"ShineModelArguments": "Model", "ShineDataArguments": "Data", "ShineTrainingArguments": "Training"}


@dataclasses.dataclass(frozen=True)
class _Option:
    """One command-line option, derived from one dataclass field."""

    name: str
    names: tuple[str, ...]
    annotation: Any
    default: Any
    help: str
    panel: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def _cli_type(hint: Any) -> Any:
    """The type typer parses for a field's type hint: `X | None` stays optional, a union that
    admits `str` (an enum or a list given as text) is parsed as `str`."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if str in args:
            return str | None
        if args == [bool]:
            return bool
        if len(args) == 1:
            return _cli_type(args[0]) | None
    return hint


def _options() -> Iterator[_Option]:
    from ..train import ARGUMENT_CLASSES

    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        panel = _PANELS[cls.__name__]
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        names = list(TRAINING_OPTIONS) if panel == "Training" else list(by_name)
        for name in names:
            field = by_name[name]
            extra = TRAINING_OPTIONS.get(name, ()) if panel == "Training" else field.metadata.get("aliases", ())
            annotation = _cli_type(hints[name])
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = inspect.Parameter.empty
            if annotation is bool and default is None:
                default = False
            help_text = " ".join(field.metadata.get("help", "").replace("%%", "%").split())  # argparse escapes
            yield _Option(name, (*extra, "--" + name.replace("_", "-")), annotation, default, help_text, panel)


def _run(**values: Any) -> None:
    """Train with the parsed options; `ShineError`s end as one `Error: ...` line and exit code 1."""
    import datasets

    from ..train import RichProgressCallback, parse_train_arguments, train

    datasets.disable_progress_bars()
    values = {name: (value or None) if isinstance(value, (list, tuple)) else value for name, value in values.items()}
    with fail_cleanly():
        model_args, data_args, training_args = parse_train_arguments({**values, "disable_tqdm": True})
        result = train(model_args, data_args, training_args, callbacks=[RichProgressCallback(console=console)])
    if result.trainer.is_world_process_zero():
        loss = result.metrics.get("train_loss")
        summary = f"Trained {result.trainer.state.global_step} steps"
        if loss is not None:
            summary += f" (mean loss {loss:.4f})"
        console.print(Text("✓ ", style="bold green") + Text(f"{summary} → {training_args.output_dir}"))


def build_train_command() -> Callable[..., None]:
    """The `shine train` command function, its typer options generated from the argument dataclasses."""

    def train_command(**values: Any) -> None:
        r"""Train a SHINE hypernetwork (pretraining or instruction tuning) on a frozen backbone.

        Examples:
          shine train --backbone Qwen/Qwen3-8B --dtype bfloat16 --bf16 \
              --stage pretrain --data corpus/ --out runs/pretrain
          shine train --stage ift --from runs/pretrain --data squad.jsonl \
              --out runs/ift
        """
        _run(**values)

    parameters = []
    for option in _options():
        annotation = Annotated[option.annotation, typer.Option(*option.names, help=option.help,
                                                               rich_help_panel=option.panel)]
        parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                            default=option.default))
    # Required options first: a signature lists parameters without defaults before the others.
    parameters.sort(key=lambda p: p.default is not inspect.Parameter.empty)
    train_command.__signature__ = inspect.Signature(parameters)
    train_command.__annotations__ = {p.name: p.annotation for p in parameters}
    return train_command


def option_rows() -> list[tuple[str, str, str]]:
    """(option names, default, help) of every `shine train` option, in command order."""
    rows = []
    for option in _options():
        if option.required:
            default = "required"
        elif option.annotation is bool:
            default = "on" if option.default else "off"
        else:
            default = "" if option.default is None else str(option.default)
        rows.append((", ".join(f"`{n}`" for n in option.names), default, option.help))
    return rows


def options_markdown() -> str:
    """The option table of docs/training.md, generated from the dataclasses (a test checks the docs)."""
    lines = ["| Option | Default | Meaning |", "|---|---|---|"]
    lines += [f"| {names} | {default} | {help_text} |" for names, default, help_text in option_rows()]
    return "\n".join(lines) + "\n"


@functools.cache
def _train_command() -> Callable[..., None]:
    return build_train_command()


def __getattr__(name: str) -> Any:
    if name == "train_command":  # built on first access: it imports transformers
        return _train_command()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
