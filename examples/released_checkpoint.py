"""The paper's released SHINE hypernetwork with a 4-bit backbone, as a plain script (the twin of
05_released_checkpoints.ipynb).

Converts `Yewei-Liu/SHINE-ift_mqa` (reference-code pickles, read with `torch.load(weights_only=True)`)
into a shine-hf checkpoint, loads Qwen/Qwen3-8B quantized to 4 bits (bitsandbytes NF4, so that it fits
a 16 GB T4), internalizes a document and answers questions from it.

    python examples/released_checkpoint.py                 # CUDA, float16 arithmetic (T4); downloads
    python examples/released_checkpoint.py --compute-dtype bfloat16   # A100 / L4
    python examples/released_checkpoint.py --tiny          # the shipped toy model in the reference format:
                                                           # offline, 4 bits on the CPU, seconds

Merging the generated adapter into 4-bit weights is refused (IncompatibleAdapterError); the adapter
itself is ordinary LoRA weights (`adapter.save_pretrained`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig

from shine_hf import IncompatibleAdapterError, ShineForCausalLM
from shine_hf.convert import convert_reference_checkpoint
from shine_hf.testing.examples import tiny_parameters

DOCUMENT = (
    "Marisol Vance founded the bakery Crumb & Kiln in Porto in 2016. The bakery is known for a rye loaf "
    "fermented for 36 hours, and it employs eleven people. In 2022 it opened a second shop in Braga, "
    "managed by Vance's cousin Teodor. Every loaf is baked in a wood-fired oven built by the mason "
    "Aurelio Pinto."
)
QUESTIONS = [
    "Who founded Crumb & Kiln?",
    "In which city is the second shop?",
    "How long is the rye loaf fermented?",
    "Who built the oven?",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="use the toy model shipped in the package, written in the reference format (offline)")
    parser.add_argument("--released-hypernetwork", default="Yewei-Liu/SHINE-ift_mqa",
                        help="reference-format checkpoint: Hub repo or local directory")
    parser.add_argument("--backbone", default="Qwen/Qwen3-8B", help="the backbone it was trained for")
    parser.add_argument("--lora-scale", type=float, default=0.001,
                        help="the LoRA scale s it was trained with (not stored in the files)")
    parser.add_argument("--converted-dir", default="shine-qwen3-8b-ift_mqa",
                        help="where the shine-hf checkpoint is written")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compute-dtype", default="float16",
                        help="4-bit arithmetic dtype (float16 on a T4, which lacks native bfloat16 support)")
    parser.add_argument("--document", default=DOCUMENT)
    parser.add_argument("--document-file", type=Path, help="read the document from this file instead")
    parser.add_argument("--question", dest="questions", action="append",
                        help="a question (repeat for several; default: four about the built-in document)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.document_file is not None:
        args.document = args.document_file.read_text(encoding="utf-8")
    args.questions = args.questions or QUESTIONS
    return args


def run(args: argparse.Namespace) -> None:
    # 1. Convert the reference checkpoint (only the backbone's config is read for this)
    convert_reference_checkpoint(args.released_hypernetwork, args.backbone, args.converted_dir,
                                 lora_scale=args.lora_scale, progress=print)

    # 2. Load it with the backbone in 4 bits
    compute_dtype = getattr(torch, args.compute_dtype)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=compute_dtype)
    model = ShineForCausalLM.from_pretrained(args.converted_dir, quantization_config=quantization, dtype=compute_dtype,
                                             device_map={"": args.device})
    projection = model.backbone.get_submodule(model.layers_path)[0].get_submodule(model.targets[0].name)
    print(f"{model.targets[0].name} is a {type(projection).__name__}; backbone "
          f"{model.backbone.get_memory_footprint() / 2**20:,.0f} MiB")

    # 3. Internalize the document and answer
    start = time.perf_counter()
    adapter = model.internalize(args.document)
    print(f"internalize: {time.perf_counter() - start:.2f} s -> {adapter}")
    answers = model.generate_text(args.questions, adapter=adapter, max_new_tokens=args.max_new_tokens)
    without = model.generate_text(args.questions, system_prompt=model.config.system_prompt,
                                  max_new_tokens=args.max_new_tokens)
    for question, answer, alone in zip(args.questions, answers, without, strict=True):
        print(f"Q: {question}\n   SHINE: {answer}\n   question alone: {alone}")

    # 4. Merging into 4-bit weights is refused before anything changes
    try:
        adapter.merge_into(model.backbone)
    except IncompatibleAdapterError as error:
        print(f"merge refused, backbone unchanged: {error}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.tiny:
        run(args)
        return
    with tempfile.TemporaryDirectory() as workdir:  # holds the toy's reference-format files
        vars(args).update({name.lower(): value for name, value in tiny_parameters("05_released_checkpoints",
                                                                                    workdir).items()})
        run(args)


if __name__ == "__main__":
    main()
