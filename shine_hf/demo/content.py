"""Which model the demo runs and what its page offers: the notice, an example document, questions.

`load_demo_model()` with no name loads the tiny models shipped in `shine_hf.assets` (offline): a
toy that only understands synthetic-facts documents, so its page says so and offers a held-out
document of that kind with the questions it was trained to answer. Any other SHINE checkpoint
(`load_demo_model("org/shine-qwen3-8b")`) gets a plain page with no example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..modeling import CheckpointError, ShineForCausalLM
from ..modeling.prompting import IN_CONTEXT_TEMPLATE


@dataclass(frozen=True)
class DemoContent:
    """What the demo page shows beside the model.

    Attributes:
        model_name: How the page names the model.
        notice: Markdown shown under the title (what the model is, what it can read).
        example_document: A document offered as an example (None: no example).
        example_questions: Questions offered as examples.
        context_template: The in-context baseline's user turn, with `{context}` and `{question}`
            (see `ShineForCausalLM.generate_text`).
    """

    model_name: str
    notice: str = ""
    example_document: str | None = None
    example_questions: tuple[str, ...] = field(default_factory=tuple)
    context_template: str = IN_CONTEXT_TEMPLATE


TOY_NOTICE = (
    "**The default model is a toy.** `facts-shine` is a SHINE hypernetwork for `facts-llama`, a "
    "1.3M-parameter Llama, both shipped with shine-hf and trained on CPU. They only understand "
    "*synthetic-facts* documents: one invented one-word name and the five fixed sentences about it "
    "(born on, lives in, works as, cm tall, founded … which has … employees), and the six questions "
    "about them. Anything else gets nonsense. Pick the example document (held out from training: the "
    "model never saw this person) or write one like it. Run `shine demo --model <checkpoint>` for a "
    "real model."
)


def toy_facts_content() -> DemoContent:
    """The page for the shipped toy models: a held-out synthetic-facts document and its questions."""
    from ..assets import FACTS_CONTEXT_TEMPLATE, FACTS_DATA
    from ..testing.facts import synthetic_facts

    record = synthetic_facts(**FACTS_DATA)["test"][0]
    return DemoContent(
        model_name="facts-shine (toy, shipped with shine-hf)",
        notice=TOY_NOTICE,
        example_document=record["context"],
        example_questions=tuple(record["questions"]),
        context_template=FACTS_CONTEXT_TEMPLATE,
    )


def load_demo_model(
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[ShineForCausalLM, DemoContent]:
    """Load the model the demo runs and the content of its page.

    Args:
        model: Hub repo id or local directory of a SHINE checkpoint; None: the shipped toy models.
        device: Passed to `from_pretrained` as `device_map` (e.g. `"cuda"`); None: CPU.
        dtype: Backbone dtype (`"bfloat16"`, `"float16"`, `"float32"`, `"auto"`); None: the default.
        **from_pretrained_kwargs: More `ShineForCausalLM.from_pretrained` options.

    Raises:
        CheckpointError: the checkpoint (or its backbone) cannot be found or read, e.g. a Hub repo id
            without network access.
    """
    from ..assets import FACTS_BACKBONE, FACTS_SHINE

    options = {"dtype": dtype, "device_map": device, **from_pretrained_kwargs}
    options = {key: value for key, value in options.items() if value is not None}
    if model is None:
        loaded = ShineForCausalLM.from_pretrained(FACTS_SHINE, backbone=FACTS_BACKBONE, **options)
        return loaded.eval(), toy_facts_content()
    try:
        loaded = ShineForCausalLM.from_pretrained(model, **options)
    except OSError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"Could not load the SHINE checkpoint {model!r}: {error}") from error
    notice = (
        f"Model: `{model}` (backbone `{loaded.config.backbone_name_or_path}`). Paste or upload a document, "
        "internalize it, then ask questions about it."
    )
    return loaded.eval(), DemoContent(model_name=model, notice=notice)
