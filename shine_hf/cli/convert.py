"""`shine convert`: a released SHINE checkpoint (reference pickle format) to the shine-hf format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ._common import config_value, console, fail_cleanly, print_success
from ._options import backbone_option, revision_option


def convert(
    src: Annotated[str, typer.Argument(
        metavar="SRC",
        help="Directory or Hub repo id of a reference SHINE checkpoint (mem_tokens.pt, metanetwork.pth, "
             "metalora.pth).")],
    out_dir: Annotated[Path, typer.Argument(
        metavar="OUT_DIR", file_okay=False, help="Where to write the shine-hf checkpoint (a directory).")],
    backbone: Annotated[str, backbone_option(
        "Hub id or local path of the backbone the checkpoint was trained for (only its config is read), "
        "e.g. Qwen/Qwen3-8B.")],
    m2p_num_heads: Annotated[int | None, typer.Option(
        callback=config_value("m2p_num_heads"), metavar="N",
        help="M2P attention heads (not stored in the files; default: 32 for hidden size 4096, else the "
             "backbone's head count).")] = None,
    lora_scale: Annotated[float, typer.Option(
        callback=config_value("lora_scale"), metavar="S",
        help="Scale s of the generated LoRA (not stored in the files; reference: 0.001).")] = 0.001,
    revision: Annotated[str | None, revision_option("Hub revision (branch, tag or commit) of SRC.")] = None,
    backbone_revision: Annotated[str | None, typer.Option(metavar="REV", help="Hub revision of the backbone.")] = None,
) -> None:
    r"""Convert a released SHINE checkpoint (e.g. Yewei-Liu/SHINE-ift_mqa) to the shine-hf format.

    The reference pickles are read with torch.load(weights_only=True) only; the output is a
    safetensors checkpoint for ShineForCausalLM.from_pretrained. Only the backbone's config is read.

    Examples:
      shine convert Yewei-Liu/SHINE-ift_mqa ./shine-qwen3-8b-ift \
          --backbone Qwen/Qwen3-8B
    """
    from ..convert import convert_reference_checkpoint

    with fail_cleanly(), console.status(Text(f"Converting {src}")) as status:
        out = convert_reference_checkpoint(
            src,
            backbone,
            out_dir,
            m2p_num_heads=m2p_num_heads,
            lora_scale=lora_scale,
            revision=revision,
            backbone_revision=backbone_revision,
            progress=lambda message: status.update(Text(message)),
        )
    print_success(f"Converted {src} → {out}")
