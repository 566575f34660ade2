"""Model cards for hypernetwork checkpoints, adapters and routers, and Hub helpers.

Importing `shine_hf` registers the renderers below with the model code, so every
`save_pretrained` / `push_to_hub` writes a README.md rendered from `templates/model_card.md` with
`huggingface_hub.ModelCard` (valid YAML metadata: `library_name`, `base_model`, `tags`, ...).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .modeling.model_card import CARD_RENDERERS
from .modeling.pretrained import is_local_reference

TAGS = ["shine", "lora", "hypernetwork", "context-internalization"]
LICENSE = "apache-2.0"


def _template() -> str:
    return resources.files("shine_hf").joinpath("templates/model_card.md").read_text(encoding="utf-8")


def _backbone_url(name: str | None) -> str:
    if not name or name.startswith(("/", ".")):
        return "#"
    return f"https://huggingface.co/{name}"


def _base_model(name: str | None) -> tuple[str | None, str]:
    """(the Hub id for the card's `base_model` metadata, None for a local path; the name shown)."""
    return (name if name and not is_local_reference(name) else None), name or "<base model>"


def render_model_card(model: Any) -> str:
    """README.md of a hypernetwork checkpoint (`ShineForCausalLM`)."""
    config = model.config
    info: dict[str, Any] = dict(getattr(model, "card_info", None) or {})
    backbone = config.backbone_name_or_path or "unknown"
    card_data = ModelCardData(
        library_name="transformers",
        base_model=backbone if _backbone_url(backbone) != "#" else None,
        tags=[*TAGS, "shine-hf"],
        license=info.get("license", LICENSE),
        datasets=info.get("datasets"),
        pipeline_tag="text-generation",
    )
    repo = info.get("repo_id", "<this-repo>")
    usage = (
        "from shine_hf import ShineForCausalLM\n\n"
        f'model = ShineForCausalLM.from_pretrained("{repo}")  # loads {backbone} by reference\n'
        'adapter = model.internalize(open("report.txt").read())  # one forward pass\n'
        'print(model.generate_text("Who signed the contract?", adapter=adapter))\n'
        'adapter.save_pretrained("report-lora")  # a standard PEFT adapter\n\n'
        "# without shine-hf installed:\n"
        "# AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)"
    )
    details = {
        "LoRA rank r": config.lora_rank,
        "meta-LoRA rank R": config.metalora_rank,
        "memory tokens M": config.num_memory_tokens,
        "M2P": f"{config.m2p_num_layers} layers, {config.m2p_num_heads} heads, FFN {config.m2p_ffn_dim}",
        "scale s": config.lora_scale,
        "target modules": ", ".join(f"`{name}`" for name in config.target_modules or []),
        "hypernetwork parameters": f"{sum(p.numel() for p in model.hypernetwork.parameters()):,}",
    }
    return ModelCard.from_template(
        card_data,
        template_str=_template(),
        title=info.get("title", f"SHINE hypernetwork for {backbone}"),
        summary=info.get("summary", "A SHINE hypernetwork: it turns a document into a LoRA adapter for "
                                    f"`{backbone}` in one forward pass."),
        backbone=backbone,
        backbone_url=_backbone_url(backbone),
        backbone_revision=config.backbone_revision,
        details=details,
        training=info.get("training"),
        metrics=info.get("metrics"),
        usage=usage,
    ).content


def render_adapter_card(adapter: Any) -> str:
    """README.md of a generated adapter (`ShineAdapter`): a PEFT LoRA for the backbone.

    The `base_model` metadata and link are set only for a Hub id, never for a local path."""
    hub_id, shown = _base_model(adapter.base_model_name_or_path)
    card_data = ModelCardData(
        library_name="peft",
        base_model=hub_id,
        tags=[*TAGS, "peft"],
        license=LICENSE,
        pipeline_tag="text-generation",
    )
    repo = (getattr(adapter, "card_info", None) or {}).get("repo_id", "<this-repo>")
    usage = (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f'backbone = AutoModelForCausalLM.from_pretrained("{shown}")\n'
        f'model = PeftModel.from_pretrained(backbone, "{repo}")'
    )
    ranks = sorted(set(adapter.module_ranks.values()))
    details = {
        "LoRA rank": ranks[0] if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]} (per module: `rank_pattern`)",
        "layers": adapter.num_layers,
        "target modules": ", ".join(f"`{t.name}`" for t in adapter.targets),
        "bias deltas": "yes (`lora_bias=True`)" if adapter.has_bias_deltas else "no",
    }
    return ModelCard.from_template(
        card_data,
        template_str=_template(),
        title=f"SHINE-generated LoRA for {shown}",
        summary="A LoRA adapter written by a SHINE hypernetwork from one document, in one forward pass. "
                "It is a standard PEFT adapter: load it with `PeftModel.from_pretrained`.",
        backbone=shown,
        backbone_url=_backbone_url(hub_id),
        backbone_revision=adapter.base_model_revision,
        details=details,
        training=None,
        metrics=None,
        usage=usage,
    ).content


def render_router_card(router: Any) -> str:
    """README.md of a saved router (`shine_hf.routing.RoutedAdapter`): chunk adapters (standard PEFT
    adapters in `chunk-NNNNN/`) with the chunk texts they are routed by."""
    hub_id, shown = _base_model(router.base_model_name_or_path)
    card_data = ModelCardData(library_name="peft", base_model=hub_id, tags=[*TAGS, "peft", "routing"],
                              license=LICENSE, pipeline_tag="text-generation")
    repo = (getattr(router, "card_info", None) or {}).get("repo_id", "<this-repo>")
    chunks = "1 chunk" if len(router) == 1 else f"{len(router)} chunks"
    best = ("the adapter of the chunk whose text matches it best" if router.top_k == 1 else
            f"the adapters of the {router.top_k} chunks whose texts match it best (composed with `{router.method}`)")
    usage = (
        "from shine_hf import RoutedAdapter, ShineForCausalLM\n\n"
        f'model = ShineForCausalLM.from_pretrained("<a SHINE checkpoint for {shown}>")\n'
        f'router = RoutedAdapter.from_pretrained("{repo}")\n'
        'print(model.generate_text("Who signed the contract?", adapter=router))\n\n'
        f"# in a terminal: shine chat --model <the SHINE checkpoint> -a {repo}"
    )
    details = {
        "chunks": len(router),
        "top-k": router.top_k,
        "composition of the top-k": f"`{router.method}`",
        "routing": "BM25+ over the chunk texts (in `shine_router.json`)",
        "LoRA rank per chunk": router.adapters.rank,
    }
    return ModelCard.from_template(
        card_data,
        template_str=_template(),
        title=f"SHINE router for {shown}",
        summary=f"A long document kept as {chunks}, each with the LoRA adapter a SHINE hypernetwork wrote from "
                f"it. Every question is answered from {best}, without the document in the prompt. Each "
                '`chunk-NNNNN/` folder is a standard PEFT adapter '
                '(`PeftModel.from_pretrained(backbone, repo, subfolder="chunk-00000")`).',
        backbone=shown,
        backbone_url=_backbone_url(hub_id),
        backbone_revision=router.adapters.base_model_revision,
        details=details,
        training=None,
        metrics=None,
        usage=usage,
    ).content


def register_card_renderers() -> None:
    CARD_RENDERERS["model"] = render_model_card
    CARD_RENDERERS["adapter"] = render_adapter_card
