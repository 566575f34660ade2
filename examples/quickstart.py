"""SHINE quickstart as a plain script (the twin of 01_quickstart.ipynb).

Loads a SHINE hypernetwork, internalizes a document, asks a question three ways (the generated adapter,
the document in the prompt, the question alone), saves the adapter in PEFT's format, loads it back with
plain `peft.PeftModel`, merges it into the backbone and pushes it to the Hub when a token is available.

    python examples/quickstart.py            # the paper's hypernetwork for Qwen/Qwen3-8B (a 40 GB GPU, downloads)
    python examples/quickstart.py --tiny     # the toy models shipped in the package: offline, CPU, seconds
    python examples/quickstart.py --document-file report.txt --question "Who signed the contract?"

By default the released hypernetwork `Yewei-Liu/SHINE-ift_mqa` is converted once into `--shine-model`
(see released_checkpoint.py); `--no-convert` takes `--shine-model` as a shine-hf checkpoint as it is.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub import get_token
from peft import PeftModel

from shine_hf import ShineForCausalLM
from shine_hf.convert import convert_reference_checkpoint
from shine_hf.modeling.prompting import IN_CONTEXT_TEMPLATE
from shine_hf.testing.examples import tiny_parameters

DOCUMENT = (
    "The Halvorsen Institute opened its new observatory on Mount Tiren on 9 October 2024. The main "
    "telescope, named Aster, has a 4.2-metre mirror that was cast in Jena and paid for by the Lindqvist "
    "shipping family. Its first target was the comet C/2023 A3. The observatory is run by Dr. Ines "
    "Marrow, who previously led the radio array at Kelso."
)
QUESTION = "Who runs the observatory on Mount Tiren?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="use the toy models shipped in the package (offline)")
    parser.add_argument("--shine-model", default="shine-qwen3-8b-ift_mqa",
                        help="a shine-hf checkpoint: local directory or Hub repo id")
    parser.add_argument("--convert-from", default="Yewei-Liu/SHINE-ift_mqa",
                        help="reference-format release converted into --shine-model when that directory is missing")
    parser.add_argument("--no-convert", dest="convert_from", action="store_const", const=None,
                        help="--shine-model is already a shine-hf checkpoint")
    parser.add_argument("--backbone", default="Qwen/Qwen3-8B", help="the backbone --convert-from was trained for")
    parser.add_argument("--dtype", default="bfloat16", help="the backbone's dtype")
    parser.add_argument("--device-map", default="auto", help="where the backbone goes ('none': the CPU)")
    parser.add_argument("--document", default=DOCUMENT, help="the document to internalize")
    parser.add_argument("--document-file", type=Path, help="read the document from this file instead")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--context-template", default=None,
                        help="the in-context prompt with {context} and {question} (default: the paper's)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--adapter-dir", default="my-first-shine-adapter", help="where the adapter is saved")
    parser.add_argument("--push-to", default="my-first-shine-adapter", help="the Hub repo the adapter is pushed to")
    args = parser.parse_args(argv)
    if args.document_file is not None:
        args.document = args.document_file.read_text(encoding="utf-8")
    if args.device_map == "none":
        args.device_map = None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tiny:
        with tempfile.TemporaryDirectory() as workdir:
            values = tiny_parameters("01_quickstart", workdir)
        vars(args).update({name.lower(): value for name, value in values.items()})

    # 1. Load the hypernetwork (converting the paper's release on the first run)
    if args.convert_from is not None and not Path(args.shine_model).is_dir():
        convert_reference_checkpoint(args.convert_from, args.backbone, args.shine_model)
    model = ShineForCausalLM.from_pretrained(args.shine_model, dtype=args.dtype, device_map=args.device_map)
    print(f"backbone {model.config.backbone_name_or_path}; hypernetwork "
          f"{sum(p.numel() for p in model.hypernetwork.parameters()):,} parameters")

    # 2. Internalize the document: one forward pass
    start = time.perf_counter()
    adapter = model.internalize(args.document)
    print(f"internalize: {time.perf_counter() - start:.2f} s -> {adapter}")

    # 3. Ask three ways
    template = args.context_template or IN_CONTEXT_TEMPLATE
    system = model.config.system_prompt
    tokens = args.max_new_tokens
    print(f"Q: {args.question}")
    print(f"  SHINE (question + adapter): {model.generate_text(args.question, adapter=adapter, max_new_tokens=tokens)}")
    in_context = model.generate_text(args.question, context=args.document, context_template=template,
                                     system_prompt=system, max_new_tokens=tokens)
    question_only = model.generate_text(args.question, system_prompt=system, max_new_tokens=tokens)
    print(f"  document in the prompt:     {in_context}")
    print(f"  question alone:             {question_only}")

    # 4. Save it: a standard PEFT adapter
    adapter.save_pretrained(args.adapter_dir)
    print(f"saved {sorted(path.name for path in Path(args.adapter_dir).iterdir())} to {args.adapter_dir}")

    # 5. Load it back with plain PEFT (onto the backbone in memory) and compare the logits
    input_ids = model.tokenizer(args.question, return_tensors="pt")["input_ids"].to(model.backbone.device)
    with torch.no_grad():
        shine_logits = model(input_ids, adapter=adapter).logits
        peft_model = PeftModel.from_pretrained(model.backbone, args.adapter_dir).eval()
        difference = (shine_logits.float() - peft_model(input_ids=input_ids).logits.float()).abs().max().item()
    print(f"largest |logit difference|, live adapter vs PeftModel: {difference:.2e}")

    # 6. Merge it into the backbone's weights: the question alone now gets SHINE's answer
    peft_model.merge_and_unload()
    merged = model.generate_text(args.question, max_new_tokens=tokens)
    print(f"merged backbone, question alone: {merged}")

    # 7. Push it to the Hub, with a token only
    if get_token() is None:
        print("No Hugging Face token found: skipping the push (set HF_TOKEN or run `hf auth login`).")
    else:
        print(f"pushed: {adapter.push_to_hub(args.push_to).commit_url}")


if __name__ == "__main__":
    main()
