"""Write examples/*.ipynb from the cell sources below (the one place they are edited).

    python scripts/build_notebooks.py           # (re)write the notebooks
    python scripts/build_notebooks.py --check   # exit 1 if a committed notebook differs from its source

The notebooks are written without outputs or execution counts, with stable cell ids, so that a
rebuild of unchanged sources changes nothing. Each has an "Open in Colab" badge pointing at its own
file in the repository named by pyproject.toml ([project.urls] Repository), an install cell (a no-op
in the tests' tiny mode) and one cell tagged "parameters" (papermill's convention) whose defaults are
real Hub models; tests/test_notebooks.py replaces it with `shine_hf.testing.examples.tiny_parameters`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def repository_url() -> str:
    """The repository's URL, as pyproject.toml states it."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["urls"]["Repository"].rstrip("/")


def colab_url(stem: str) -> str:
    """The Colab address of examples/<stem>.ipynb on the main branch."""
    path = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/main/examples/{stem}.ipynb"


def colab_badge(stem: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(stem)})"


def install_source(extras: str) -> str:
    requirement = f"shine-hf[{extras}]" if extras else "shine-hf"
    return (f"# Installs shine-hf from GitHub (Colab or a fresh environment); skipped in the offline tiny mode.\n"
            f"if not TINY:\n"
            f'    %pip install --quiet "{requirement} @ git+{repository_url()}"')


SHINE_INTRO = """\
**SHINE** (Scalable In-Context Hypernetwork, arXiv 2602.06358) is a hypernetwork that reads a document
once and writes a LoRA adapter for a frozen LLM in a single forward pass. The LLM then answers questions
about the document from its weights, without the document in its prompt."""

PARAMETERS_NOTE = """\
## Parameters

The one cell to edit. Its defaults are real models from the Hugging Face Hub. The project's tests
run every notebook offline on a CPU by replacing this cell with the toy models shipped inside the
package (`shine_hf.testing.examples.tiny_parameters`); `TINY = True` then also skips the install."""

INSTALL_NOTE = """\
## Install

On Colab this installs shine-hf and its dependencies (transformers 5, PEFT, ...). If Colab asks to
restart the session afterwards, restart and run the notebook from the top."""

LOAD_CONVERTED = """\
if CONVERT_FROM is not None and not Path(SHINE_MODEL).is_dir():
    # First run only: the paper's release is in the reference code's format; write it as a
    # shine-hf checkpoint (05_released_checkpoints.ipynb explains the conversion).
    convert_reference_checkpoint(CONVERT_FROM, BACKBONE, SHINE_MODEL)"""

TINY_PARAMETER = 'TINY = False  # True: the offline toy models (the tests set it; skips the install)'

CONVERTED_MODEL_PARAMETERS = '''\
SHINE_MODEL = "shine-qwen3-8b-ift_mqa"  # a shine-hf checkpoint: a local directory or a Hub repo id
CONVERT_FROM = "Yewei-Liu/SHINE-ift_mqa"  # converted into SHINE_MODEL when that directory is missing (or None)
BACKBONE = "Qwen/Qwen3-8B"  # the backbone the released hypernetwork was trained for
DTYPE = "bfloat16"  # the backbone's dtype'''

QWEN3_8B_HARDWARE = """\
**Hardware.** The defaults load the paper's hypernetwork for Qwen/Qwen3-8B with the backbone in bfloat16:
about 16 GB of backbone weights plus 3.5 to 5 GB of hypernetwork (0.9 to 1.2 billion float32
parameters). These are sums over the models' shapes, not measurements: use a GPU with 40 GB (e.g.
Colab's A100 runtime); 24 GB (L4) is at the limit. On a free Colab T4 (16 GB), see
`05_released_checkpoints.ipynb`, which loads the backbone in 4 bits."""


def twin_constant(script: str, name: str) -> object:
    """The value of the module-level constant `name` in examples/<script> (read, not imported): the
    plain-script twins and their notebooks share their default documents and questions this way."""
    tree = ast.parse((EXAMPLES / script).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"examples/{script} defines no {name}")


def assignment(name: str, value: object, width: int = 100) -> str:
    """`name = value` as source: a long string split into implicitly joined pieces of about `width`
    characters, a list of strings one item per line."""
    if isinstance(value, list):
        return "\n".join([f"{name} = [", *(f"    {json.dumps(v, ensure_ascii=False)}," for v in value), "]"])
    if not isinstance(value, str) or len(value) <= width:
        return f"{name} = {json.dumps(value, ensure_ascii=False)}"
    pieces, current = [], ""
    for word in value.split(" "):
        if current and len(current) + len(word) > width:
            pieces.append(current)
            current = ""
        current += word + " "
    pieces.append(current[:-1])
    return "\n".join([f"{name} = (", *(f"    {json.dumps(p, ensure_ascii=False)}" for p in pieces), ")"])


# Shared passages, written into cell sources where their <<NAME>> marker stands (after dedenting).
SNIPPETS = {
    "<<HARDWARE>>": QWEN3_8B_HARDWARE,
    "<<CONVERTED_MODEL_PARAMETERS>>": CONVERTED_MODEL_PARAMETERS,
    "<<LOAD_CONVERTED>>": LOAD_CONVERTED,
    "<<QUICKSTART_DOCUMENT>>": assignment("DOCUMENT", twin_constant("quickstart.py", "DOCUMENT")),
    "<<QUICKSTART_QUESTION>>": assignment("QUESTION", twin_constant("quickstart.py", "QUESTION")),
    "<<RELEASED_DOCUMENT>>": assignment("DOCUMENT", twin_constant("released_checkpoint.py", "DOCUMENT")),
    "<<RELEASED_QUESTIONS>>": assignment("QUESTIONS", twin_constant("released_checkpoint.py", "QUESTIONS")),
}
Cell = tuple[str, str, tuple[str, ...]]


def _source(text: str) -> str:
    text = textwrap.dedent(text).strip()
    for marker, snippet in SNIPPETS.items():
        text = text.replace(marker, snippet)
    return text


def md(text: str) -> Cell:
    return ("markdown", _source(text), ())


def code(text: str, *tags: str) -> Cell:
    return ("code", _source(text), tags)


def header(stem: str, title: str, summary: str) -> list[Cell]:
    """The title cell (badge, what SHINE is, what the notebook does) and the parameters note."""
    return [md(f"# {title}\n\n{colab_badge(stem)}\n\n{SHINE_INTRO}\n\n{_source(summary)}"), md(PARAMETERS_NOTE)]


def parameters(text: str, extras: str) -> list[Cell]:
    """The parameters cell (TINY first) and the install cell that TINY turns off."""
    return [code(f"{TINY_PARAMETER}\n{_source(text)}", "parameters"), md(INSTALL_NOTE), code(install_source(extras))]


# --------------------------------------------------------------------------------------- 01
QUICKSTART = [
    *header("01_quickstart", "SHINE quickstart: a document in, a LoRA adapter out", """
        In this notebook: load a SHINE hypernetwork, internalize a document, ask a question three ways
        (with the generated adapter, with the document in the prompt, with the question alone), save the
        adapter as a standard PEFT adapter, load it back with plain `peft`, merge it into the backbone and
        push it to the Hub.

        <<HARDWARE>>
        """),
    *parameters('''
        <<CONVERTED_MODEL_PARAMETERS>>
        DEVICE_MAP = "auto"  # where the backbone goes (None: the CPU)
        <<QUICKSTART_DOCUMENT>>
        <<QUICKSTART_QUESTION>>
        CONTEXT_TEMPLATE = None  # the in-context prompt; None: the paper's "Reference: ..." template
        MAX_NEW_TOKENS = 32
        ADAPTER_DIR = "my-first-shine-adapter"  # where the adapter is saved
        PUSH_TO = "my-first-shine-adapter"  # the Hub repo it is pushed to (under your account)
        ''', ""),
    md("""
        ## 1. Load the hypernetwork

        A shine-hf checkpoint holds only the hypernetwork (memory tokens, meta-LoRA and the M2P transformer)
        and names its backbone; `from_pretrained` loads both. The backbone stays an unmodified, frozen
        transformers model (`model.backbone`).
        """),
    code("""
        import time
        from pathlib import Path

        import torch

        from shine_hf import ShineForCausalLM
        from shine_hf.convert import convert_reference_checkpoint
        from shine_hf.modeling.prompting import IN_CONTEXT_TEMPLATE

        <<LOAD_CONVERTED>>
        model = ShineForCausalLM.from_pretrained(SHINE_MODEL, dtype=DTYPE, device_map=DEVICE_MAP)
        print(f"backbone {model.config.backbone_name_or_path}: "
              f"{sum(p.numel() for p in model.backbone.parameters()):,} parameters (frozen)")
        print(f"hypernetwork: {sum(p.numel() for p in model.hypernetwork.parameters()):,} parameters, "
              f"{model.config.num_memory_tokens} memory tokens")
        """),
    md("""
        ## 2. Internalize the document

        `internalize` reads the document once, together with the memory tokens, and turns what the memory
        tokens hold into LoRA weights for every adapted projection of every layer: one forward pass, no
        gradient step. It returns a `ShineAdapter`.
        """),
    code("""
        start = time.perf_counter()
        adapter = model.internalize(DOCUMENT)
        print(f"{time.perf_counter() - start:.2f} s -> {adapter}")
        """),
    md("""
        ## 3. Ask, three ways

        - **SHINE**: the question alone in the prompt (no system prompt), with the generated adapter applied;
        - **document in the prompt** (in-context): what SHINE tries to match without the document's tokens;
        - **question alone**: what the backbone knows without the document.

        The two baselines use the checkpoint's system prompt, as `shine eval` does.
        """),
    code("""
        template = CONTEXT_TEMPLATE or IN_CONTEXT_TEMPLATE
        system = model.config.system_prompt
        shine_answer = model.generate_text(QUESTION, adapter=adapter, max_new_tokens=MAX_NEW_TOKENS)
        in_context_answer = model.generate_text(QUESTION, context=DOCUMENT, context_template=template,
                                                system_prompt=system, max_new_tokens=MAX_NEW_TOKENS)
        question_only_answer = model.generate_text(QUESTION, system_prompt=system, max_new_tokens=MAX_NEW_TOKENS)
        print(f"Q: {QUESTION}")
        print(f"  SHINE (question + adapter): {shine_answer}")
        print(f"  document in the prompt:     {in_context_answer}")
        print(f"  question alone:             {question_only_answer}")
        """),
    md("""
        ## 4. Save the adapter

        The adapter is written in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`) with a
        model card; it names the backbone as its base model.
        """),
    code("""
        adapter.save_pretrained(ADAPTER_DIR)
        adapter_files = sorted(path.name for path in Path(ADAPTER_DIR).iterdir())
        print(adapter_files)
        """),
    md("""
        ## 5. Load it back with plain PEFT

        Nothing SHINE-specific is needed to use the saved adapter: `peft.PeftModel.from_pretrained` loads it
        onto the backbone (here the one already in memory; PEFT wraps its projections in place). Its logits
        match the live adapter's up to rounding (in float32, a few millionths; bfloat16 is much coarser).
        """),
    code("""
        from peft import PeftModel

        input_ids = model.tokenizer(QUESTION, return_tensors="pt")["input_ids"].to(model.backbone.device)
        with torch.no_grad():
            shine_logits = model(input_ids, adapter=adapter).logits  # before PEFT wraps the backbone
            peft_model = PeftModel.from_pretrained(model.backbone, ADAPTER_DIR).eval()
            peft_logits = peft_model(input_ids=input_ids).logits
        max_logit_difference = (shine_logits.float() - peft_logits.float()).abs().max().item()
        print(f"largest |logit difference|, live adapter vs PeftModel: {max_logit_difference:.2e}")
        """),
    md("""
        ## 6. Merge it

        To serve the document's knowledge with no adapter code at all, add ΔW = A·B into the backbone's
        weights: PEFT's `merge_and_unload` returns the plain transformers model. Asked the question alone,
        the merged backbone answers like SHINE did. (`adapter.merge_into(backbone)` does the same without
        PEFT, and `adapter.unmerge_from(backbone)` undoes it.) From here on `model.backbone` holds this
        document in its weights: reload the model before internalizing another one.
        """),
    code("""
        merged_backbone = peft_model.merge_and_unload()
        assert merged_backbone is model.backbone  # merged in place
        merged_answer = model.generate_text(QUESTION, max_new_tokens=MAX_NEW_TOKENS)  # no adapter passed
        print(f"merged backbone, question alone: {merged_answer}")
        """),
    md("""
        ## 7. Push it to the Hub

        Needs a Hugging Face token with write access: the `HF_TOKEN` environment variable, a Colab secret
        named `HF_TOKEN`, or `hf auth login`. Without one, this step is skipped.
        """),
    code("""
        from huggingface_hub import get_token

        if get_token() is None:
            print("No Hugging Face token found: skipping the push (set HF_TOKEN or run `hf auth login`).")
        else:
            commit = adapter.push_to_hub(PUSH_TO)
            print(f"pushed: {commit.commit_url}")
        """),
    md("""
        ## Next

        - `02_train_your_own.ipynb`: train a hypernetwork for another backbone;
        - `03_evaluate.ipynb`: score SHINE against its baselines on a QA dataset, with costs;
        - `04_long_documents.ipynb`: documents longer than one reading pass, and composing adapters;
        - `05_released_checkpoints.ipynb`: the paper's hypernetwork on a free Colab T4, in 4 bits.
        """),
]

# --------------------------------------------------------------------------------------- 02
TRAIN = [
    *header("02_train_your_own", "Train your own SHINE hypernetwork", """
        In this notebook: build a new (untrained) hypernetwork around a backbone, train it on question
        answering with `shine_hf.train.train` (a `transformers.Trainer` underneath), watch the loss, and
        score the result against the document in the prompt and the question alone.

        **What to expect.** The paper pretrains its hypernetworks on text, then instruction-tunes them on QA,
        on 8 GPUs. This notebook runs the instruction-tuning stage alone, from scratch, for a few hundred
        steps: enough to see the loss fall, not to reach the paper's scores. `docs/training.md` has the full
        recipe (pretraining, multi-GPU, every hyper-parameter). The defaults (Qwen/Qwen3-0.6B on SQuAD, in
        float32) are a starting point that was not run where this notebook was written (no GPU, no Hub
        access); in the tests' tiny mode it trains a hypernetwork for the shipped 1.3M-parameter toy
        backbone for 8 steps on a CPU.
        """),
    *parameters('''
        BACKBONE = "Qwen/Qwen3-0.6B"  # any supported decoder: Qwen3, Qwen2, Llama, Mistral, Gemma, Phi-3, GPT-2
        BACKBONE_DTYPE = "float32"  # "bfloat16" on GPUs that support it (A100, L4) is faster
        TRAIN_DATA = "rajpurkar/squad"  # a Hub QA dataset (SQuAD, HotpotQA, MS MARCO, MuSiQue) or a JSONL file
        TRAIN_SPLIT = "train"
        TRAIN_EXAMPLES = 4000  # questions to train on
        EVAL_DATA = "rajpurkar/squad"
        EVAL_SPLIT = "validation"
        EVAL_EXAMPLES = 200
        LORA_RANK = 8  # rank r of the generated LoRA
        METALORA_RANK = 128  # rank R of the meta-LoRA used while reading
        M2P_LAYERS = 4  # layers of the memory-to-parameter transformer (even)
        LORA_SCALE = 0.001  # scale s of the generated LoRA
        LEARNING_RATE = 1e-4  # a starting point, not tuned
        MAX_STEPS = 500  # optimizer steps
        BATCH_SIZE = 4
        GRADIENT_ACCUMULATION = 4  # effective batch: BATCH_SIZE x GRADIENT_ACCUMULATION
        WARMUP_STEPS = 50
        LOGGING_STEPS = 10
        OUTPUT_DIR = "shine-qwen3-0.6b-squad"  # the trained checkpoint goes here
        CONTEXT_TEMPLATE = None  # the in-context prompt; None: the paper's "Reference: ..." template
        MAX_NEW_TOKENS = 32
        ''', "train,eval"),
    md("""
        ## 1. Training data

        `train` takes QA records (a context with a question and its answer, or lists of questions and
        answers) from JSON/JSONL files or a `datasets.Dataset`. `load_examples` reads the common QA layouts
        (SQuAD, HotpotQA, MS MARCO, MuSiQue, our JSONL) as (context, question, answers) examples; we keep the
        first gold answer of each.
        """),
    code("""
        from datasets import Dataset

        from shine_hf.evaluation import load_examples

        train_examples = load_examples(TRAIN_DATA, split=TRAIN_SPLIT, limit=TRAIN_EXAMPLES).examples
        records = Dataset.from_list([{"context": e.context, "question": e.question, "answer": e.answers[0]}
                                     for e in train_examples])
        print(f"{len(records)} questions about {len(set(records['context']))} documents")
        print(records[0])
        """),
    md("""
        ## 2. Train

        Only the hypernetwork learns (memory tokens, meta-LoRA, M2P); the backbone stays frozen. The loss is
        the backbone's next-token loss on the answer, computed *through the LoRA generated from the
        context*, so the gradient reaches the hypernetwork through the generated weights. The arguments are
        three dataclasses, as in transformers' example scripts; `ShineTrainingArguments` is a
        `transformers.TrainingArguments`, so every Trainer option works.
        """),
    code("""
        from shine_hf.train import ShineDataArguments, ShineModelArguments, ShineTrainingArguments, train

        result = train(
            ShineModelArguments(backbone=BACKBONE, backbone_dtype=BACKBONE_DTYPE, lora_rank=LORA_RANK,
                                metalora_rank=METALORA_RANK, m2p_num_layers=M2P_LAYERS, lora_scale=LORA_SCALE),
            ShineDataArguments(data=records, stage="ift"),
            ShineTrainingArguments(output_dir=OUTPUT_DIR, learning_rate=LEARNING_RATE, max_steps=MAX_STEPS,
                                   per_device_train_batch_size=BATCH_SIZE,
                                   gradient_accumulation_steps=GRADIENT_ACCUMULATION, warmup_steps=WARMUP_STEPS,
                                   logging_steps=LOGGING_STEPS, save_strategy="no", report_to="none", seed=0),
        )
        model = result.model
        print(f"trained {sum(p.numel() for p in model.hypernetwork.parameters()):,} hypernetwork parameters; "
              f"checkpoint in {result.output_dir}")
        """),
    md("""
        ## 3. Watch the loss

        Every logged loss is in the Trainer's `log_history`.
        """),
    code("""
        import matplotlib.pyplot as plt

        logged = [(entry["step"], entry["loss"]) for entry in result.trainer.state.log_history if "loss" in entry]
        steps, losses = zip(*logged)
        plt.figure(figsize=(6, 3))
        plt.plot(steps, losses, marker="o")
        plt.xlabel("optimizer step")
        plt.ylabel("training loss")
        plt.title("Training loss")
        plt.show()
        print(f"loss {losses[0]:.3f} at step {steps[0]} -> {losses[-1]:.3f} at step {steps[-1]}")
        """),
    md("""
        ## 4. Score it

        `run_eval` (the `shine eval` command; `03_evaluate.ipynb` shows all of it) answers held-out
        questions three ways: SHINE (the question alone, with the LoRA generated from its document), the
        document in the prompt, and the question alone. Scores are SQuAD F1 and exact match.
        """),
    code("""
        from rich.console import Console

        from shine_hf.evaluation import run_eval
        from shine_hf.evaluation.report import summary_table
        from shine_hf.modeling.prompting import IN_CONTEXT_TEMPLATE

        results = run_eval(model, EVAL_DATA, split=EVAL_SPLIT, limit=EVAL_EXAMPLES,
                           conditions=["shine", "in_context", "question_only"], max_new_tokens=MAX_NEW_TOKENS,
                           context_template=CONTEXT_TEMPLATE or IN_CONTEXT_TEMPLATE)
        Console().print(summary_table(results["summary"], title="held-out questions"))
        """),
    md("""
        ## Next

        The checkpoint in `OUTPUT_DIR` is a normal shine-hf checkpoint:
        `ShineForCausalLM.from_pretrained(OUTPUT_DIR)` loads it (with the backbone it names), and
        `model.push_to_hub("you/name")` shares it. For a hypernetwork that generalises, pretrain first
        (`stage="pretrain"` on plain text), then instruction-tune from that checkpoint
        (`ShineModelArguments(from_checkpoint=...)`), as `docs/training.md` describes.
        """),
]

# --------------------------------------------------------------------------------------- 03
EVALUATE = [
    *header("03_evaluate", "Evaluate SHINE against its baselines", """
        In this notebook: the Python twin of the `shine eval` command. On a QA dataset it compares four
        conditions: SHINE (the question alone plus the LoRA generated from the document), the document in
        the prompt, the question alone, and a LoRA fine-tuned on the document (SFT), with scores and costs
        (seconds, memory and tokens per question), a table and a chart. The command line equivalent:

        ```bash
        shine eval --model shine-qwen3-8b-ift_mqa --data rajpurkar/squad --split validation --limit 200 \\
            --device cuda --dtype bfloat16 --output results.json
        ```

        `docs/evaluation.md` explains every number.

        <<HARDWARE>>
        """),
    *parameters('''
        <<CONVERTED_MODEL_PARAMETERS>>
        DEVICE = "cuda"
        DATA = "rajpurkar/squad"  # a Hub QA dataset (SQuAD, HotpotQA, MS MARCO, MuSiQue layouts) or a JSONL file
        SPLIT = "validation"
        DATA_CONFIG = None  # e.g. "distractor" for hotpotqa/hotpot_qa
        LIMIT = 200  # the first N questions (None: all)
        BATCH_SIZE = 8  # questions per generation batch; documents per internalize call
        SFT_STEPS = 30  # fine-tuning steps per document for the SFT baseline
        CONTEXT_TEMPLATE = None  # the in-context prompt; None: the paper's "Reference: ..." template
        MAX_NEW_TOKENS = 32
        OUTPUT = "results.json"  # resumed if it already holds this run
        ''', "eval"),
    md("""
        ## 1. The model

        `run_eval` loads the checkpoint itself (it also takes a loaded `ShineForCausalLM`).
        """),
    code("""
        from pathlib import Path

        from shine_hf.convert import convert_reference_checkpoint

        <<LOAD_CONVERTED>>
        """),
    md("""
        ## 2. Run the evaluation

        Each distinct document is internalized once and its adapter answers all of its questions; the
        baselines answer in batches; the SFT baseline fine-tunes a LoRA of the same rank on each document.
        The results file is rewritten after every batch: run the cell again after an interruption and it
        resumes where it stopped.
        """),
    code("""
        from tqdm.auto import tqdm

        from shine_hf.evaluation import SftConfig, run_eval
        from shine_hf.modeling.prompting import IN_CONTEXT_TEMPLATE

        bars = {}


        def progress(condition, done, total):
            bar = bars.setdefault(condition, tqdm(total=total, desc=condition))
            bar.update(done - bar.n)


        chart = Path(OUTPUT).with_suffix(".png")
        results = run_eval(SHINE_MODEL, DATA, split=SPLIT, data_config=DATA_CONFIG, limit=LIMIT,
                           conditions=["shine", "in_context", "question_only", "sft"], batch_size=BATCH_SIZE,
                           max_new_tokens=MAX_NEW_TOKENS, context_template=CONTEXT_TEMPLATE or IN_CONTEXT_TEMPLATE,
                           sft=SftConfig(steps=SFT_STEPS), output=OUTPUT, chart=chart, dtype=DTYPE, device=DEVICE,
                           progress=progress)
        for bar in bars.values():
            bar.close()
        """),
    md("""
        ## 3. The table

        F1 and exact match, then costs: the per-document step (SHINE: internalize; SFT: fine-tuning) in
        milliseconds per document, answering per question, the total per question, tokens per question and
        the peak memory above the loaded model.
        """),
    code("""
        from rich.console import Console

        from shine_hf.evaluation.report import summary_table

        data = results["data"]
        Console().print(summary_table(results["summary"], title=f"{data['source']}: {data['examples']} questions "
                                                                 f"about {data['documents']} documents"))
        """),
    md("""
        ## 4. The chart

        Left: answer quality. Right: milliseconds per question on a log scale, answering alone inside the
        total that includes the per-document step.
        """),
    code("""
        from IPython.display import Image

        Image(filename=str(chart))
        """),
    md("""
        ## 5. Individual answers

        The results file keeps every prediction with its scores.
        """),
    code("""
        import pandas as pd

        rows = [{"question": example["question"], "gold": example["answers"][0],
                 **{condition: prediction["prediction"] for condition, prediction in example["predictions"].items()}}
                for example in results["examples"][:8]]
        pd.DataFrame(rows)
        """),
]

# --------------------------------------------------------------------------------------- 04
LONG_DOCUMENTS = [
    *header("04_long_documents", "Long documents: chunked reading and composed adapters", """
        In this notebook: a document longer than one reading pass is read in chunks, each chunk gets its
        LoRA, and the chunk LoRAs are composed into one adapter, exactly (ranks stacked: the sum of the
        chunks' weight deltas) or averaged. The same composition combines the adapters of separate
        documents. Or the chunk adapters are kept apart and each question is routed to the chunks it is
        about. Then the ways of composing and routing are scored against the document in the prompt and the
        question alone.

        <<HARDWARE>>
        """),
    *parameters('''
        <<CONVERTED_MODEL_PARAMETERS>>
        DEVICE_MAP = "auto"  # where the backbone goes (None: the CPU)
        DATA = "dgslibisey/MuSiQue"  # multi-paragraph documents (about 20 paragraphs per question)
        SPLIT = "validation"
        DATA_CONFIG = None
        LIMIT = 40  # the first N questions (None: all)
        CHUNK_TOKENS = 512  # tokens per reading pass
        CONTEXT_TEMPLATE = None  # the in-context prompt; None: the paper's "Reference: ..." template
        MAX_NEW_TOKENS = 32
        ''', "eval"),
    md("## 1. The model and the documents"),
    code("""
        from pathlib import Path

        from shine_hf import ShineAdapter, ShineForCausalLM
        from shine_hf.convert import convert_reference_checkpoint
        from shine_hf.evaluation import load_examples, score_answers
        from shine_hf.modeling.chunking import split_text
        from shine_hf.modeling.prompting import IN_CONTEXT_TEMPLATE

        <<LOAD_CONVERTED>>
        model = ShineForCausalLM.from_pretrained(SHINE_MODEL, dtype=DTYPE, device_map=DEVICE_MAP)

        examples = load_examples(DATA, split=SPLIT, config=DATA_CONFIG, limit=LIMIT).examples
        documents = {}  # document -> its questions and gold answers
        for example in examples:
            documents.setdefault(example.context, []).append((example.question, example.answers))
        print(f"{len(examples)} questions about {len(documents)} documents; one reading pass holds "
              f"{model.max_context_tokens} tokens with the {model.config.num_memory_tokens} memory tokens")
        """),
    md("""
        ## 2. One document, in chunks

        `internalize(document, chunk_tokens=N)` cuts the document into chunks of at most N tokens (at
        sentence ends where it can: `split_text` shows where), reads them in batches and composes the chunk
        LoRAs with `compose="concat"`: the adapter's rank is the sum of the chunks' ranks, and its weight
        delta is exactly the sum of theirs.
        """),
    code("""
        document, questions = next(iter(documents.items()))
        chunks = split_text(document, model.tokenizer, CHUNK_TOKENS, 0)
        print(f"{len(model.tokenizer(document)['input_ids'])} tokens -> {len(chunks)} chunks; the first one:")
        print(chunks[0][:300])

        adapter = model.internalize(document, chunk_tokens=CHUNK_TOKENS)
        print(adapter)
        for question, gold in questions:
            answer = model.generate_text(question, adapter=adapter, max_new_tokens=MAX_NEW_TOKENS)
            print(f"Q: {question}\\n   SHINE: {answer} | gold: {gold[0]}")
        """),
    md("""
        ## 3. The chunk adapters themselves, and other compositions

        `compose=None` returns one adapter per chunk. `ShineAdapter.compose` combines any adapters of the
        same backbone: `"concat"` (the sum of the deltas, rank adds up), `"mean"` (their average) or
        `"weighted"` (one weight per adapter). For a smaller file, `adapter.to_rank(r)` gives the best rank-r
        approximation of every module's delta; it takes the SVD of each dense ΔW in float64, which is quick
        for small backbones and takes a while for an 8B one, so it is not run here.
        """),
    code("""
        pieces = model.internalize(document, chunk_tokens=CHUNK_TOKENS, compose=None)
        concat = ShineAdapter.compose(list(pieces), "concat")
        mean = ShineAdapter.compose(list(pieces), "mean")
        print(f"{len(pieces)} chunk adapters of rank {pieces.rank}; concat: rank {concat.rank}, mean: rank {mean.rank}")
        layer, name = 0, model.targets[0].name
        gap = (concat.delta_weight(layer, name) - adapter.delta_weight(layer, name)).abs().max().item()
        print(f"compose(chunks, 'concat') vs internalize(..., compose='concat'): largest |ΔW difference| {gap:.1e}")
        """),
    md("""
        ## 4. Several documents in one adapter

        The same composition combines separately internalized documents: one adapter then answers questions
        about both.
        """),
    code("""
        (first, first_questions), (second, second_questions) = list(documents.items())[:2]
        both = ShineAdapter.compose([model.internalize(first, chunk_tokens=CHUNK_TOKENS),
                                     model.internalize(second, chunk_tokens=CHUNK_TOKENS)], "concat")
        for question, gold in first_questions[:2] + second_questions[:2]:
            answer = model.generate_text(question, adapter=both, max_new_tokens=MAX_NEW_TOKENS)
            print(f"Q: {question}\\n   SHINE, both documents: {answer} | gold: {gold[0]}")
        """),
    md("""
        ## 5. Routing: each question answered from the chunks it is about

        Summing chunk adapters asks the hypernetwork to write deltas that do not interfere. A `RoutedAdapter`
        keeps the chunk adapters apart with their texts and, for each question, picks the chunk whose words
        match it best (BM25), then answers from that chunk's adapter (`top_k=2`: the two best chunks'
        adapters composed). The answer still comes from the weights: the prompt is the question alone.
        `router.save_pretrained(dir)` writes one PEFT adapter per chunk plus the chunk texts.
        """),
    code("""
        from shine_hf import RoutedAdapter

        router = RoutedAdapter.from_document(model, document, chunk_tokens=CHUNK_TOKENS)
        print(router)
        for question, gold in questions:
            picked = router.route(question)
            answer = model.generate_text(question, adapter=router, max_new_tokens=MAX_NEW_TOKENS)
            print(f"Q: {question} (chunk {picked})\\n   SHINE, routed: {answer} | gold: {gold[0]}")
        """),
    md("""
        ## 6. Scores

        Every question, answered with its document's adapter composed in each way or routed, with the document in the
        prompt, and with the question alone (SQuAD F1 and exact match). How well composed adapters answer
        depends on the hypernetwork: one trained on single passages was never asked to write adapters that
        add up, so measure it on your data rather than assume it. (The toy model the tests run this notebook
        with was trained on one-person documents only; its scores here show that limit.)
        """),
    code("""
        import pandas as pd

        template = CONTEXT_TEMPLATE or IN_CONTEXT_TEMPLATE
        system = model.config.system_prompt
        predictions = {"SHINE, chunks concat": [], "SHINE, chunks mean": [], "SHINE, chunks routed": [],
                       "document in the prompt": [], "question alone": []}
        golds = []
        for document, qa in documents.items():
            asked = [question for question, _ in qa]
            golds += [list(gold) for _, gold in qa]
            chunk_adapters = list(model.internalize(document, chunk_tokens=CHUNK_TOKENS, compose=None))
            for method in ("concat", "mean"):
                composition = ShineAdapter.compose(chunk_adapters, method)
                predictions[f"SHINE, chunks {method}"] += model.generate_text(asked, adapter=composition,
                                                                             max_new_tokens=MAX_NEW_TOKENS)
            chunks = split_text(document, model.tokenizer, CHUNK_TOKENS, 0)
            router = RoutedAdapter(chunk_adapters, chunks)
            predictions["SHINE, chunks routed"] += model.generate_text(asked, adapter=router,
                                                                       max_new_tokens=MAX_NEW_TOKENS)
            predictions["document in the prompt"] += model.generate_text(
                asked, context=document, context_template=template, system_prompt=system, max_new_tokens=MAX_NEW_TOKENS)
            predictions["question alone"] += model.generate_text(asked, system_prompt=system,
                                                                 max_new_tokens=MAX_NEW_TOKENS)
        scores = {name: score_answers(answers, golds) for name, answers in predictions.items()}
        pd.DataFrame(scores).T.rename(columns={"f1": "F1", "em": "exact match", "n": "questions"}).round(3)
        """),
]

# --------------------------------------------------------------------------------------- 05
RELEASED = [
    *header("05_released_checkpoints", "The paper's released hypernetwork on a free Colab T4 (4-bit backbone)", """
        In this notebook: convert the paper's released hypernetwork `Yewei-Liu/SHINE-ift_mqa` (trained for
        Qwen/Qwen3-8B) into a shine-hf checkpoint, load the backbone quantized to 4 bits with bitsandbytes so
        that it fits a free Colab T4 (16 GB), internalize a document and answer from it.

        **Costs, honestly.** Nothing below was measured on a T4: the notebook was written where no GPU and no
        Hub access were available, and its tests run it with the shipped toy models instead. By arithmetic on
        the shapes: Qwen3-8B in 4 bits is about 6 GB (its projections at half a byte per weight, the
        embeddings and output layer at 2 bytes), the hypernetwork 0.9 to 1.2 billion parameters (3.5 to
        5 GB in float32, depending on the rank of its instruction-tuning meta-LoRA), which leaves a few GB
        of the T4's memory for activations. The conversion holds the released tensors and the new
        hypernetwork in CPU memory at once, roughly twice that size, within a free Colab's 12 GB. The
        download is the backbone's 16 GB of bfloat16 safetensors (quantized while loading) plus the
        hypernetwork's files.
        """),
    *parameters('''
        RELEASED_HYPERNETWORK = "Yewei-Liu/SHINE-ift_mqa"  # reference-format checkpoint: Hub repo or local directory
        BACKBONE = "Qwen/Qwen3-8B"  # the backbone it was trained for
        LORA_SCALE = 0.001  # the reference's LoRA scale s (not stored in the released files)
        CONVERTED_DIR = "shine-qwen3-8b-ift_mqa"  # where the shine-hf checkpoint is written
        DEVICE = "cuda"
        COMPUTE_DTYPE = "float16"  # the T4 lacks native bfloat16 support; "bfloat16" on A100 / L4
        <<RELEASED_DOCUMENT>>
        <<RELEASED_QUESTIONS>>
        MAX_NEW_TOKENS = 32
        ''', "quantization"),
    md("""
        ## 1. Convert the released checkpoint

        The reference code saves a hypernetwork as pickles: `mem_tokens.pt`, `metanetwork.pth`,
        `metalora.pth` and, after instruction tuning, `ift_additional_metalora.pth`.
        `convert_reference_checkpoint` reads them with `torch.load(weights_only=True)` (a file that would
        need code execution is refused), infers the ranks and the M2P's depth and width from the tensors,
        checks every shape against the backbone's config (no backbone weights are downloaded for this) and
        writes a shine-hf checkpoint in safetensors. The LoRA scale is not stored in the files: 0.001 is the
        reference's. The command line does the same: `shine convert Yewei-Liu/SHINE-ift_mqa
        shine-qwen3-8b-ift_mqa --backbone Qwen/Qwen3-8B`.
        """),
    code("""
        from pathlib import Path

        from shine_hf.convert import convert_reference_checkpoint

        convert_reference_checkpoint(RELEASED_HYPERNETWORK, BACKBONE, CONVERTED_DIR, lora_scale=LORA_SCALE,
                                     progress=print)
        print(sorted(path.name for path in Path(CONVERTED_DIR).iterdir()))
        """),
    md("""
        ## 2. Load the backbone in 4 bits

        `from_pretrained` passes `quantization_config` and `device_map` on to the backbone's loading:
        bitsandbytes NF4 weights with float16 arithmetic on a T4 (on a CPU bitsandbytes runs too, which is
        how the tests run this notebook). The hypernetwork stays in float32 next to the backbone.
        `BitsAndBytesConfig(load_in_8bit=True)` works the same way.
        """),
    code("""
        import torch
        from transformers import BitsAndBytesConfig

        from shine_hf import ShineForCausalLM

        compute_dtype = getattr(torch, COMPUTE_DTYPE)
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=compute_dtype)
        model = ShineForCausalLM.from_pretrained(CONVERTED_DIR, quantization_config=quantization, dtype=compute_dtype,
                                                 device_map={"": DEVICE})
        projection = model.backbone.get_submodule(model.layers_path)[0].get_submodule(model.targets[0].name)
        hypernetwork_bytes = sum(p.numel() * p.element_size() for p in model.hypernetwork.parameters())
        print(f"{model.targets[0].name} is a {type(projection).__name__}; backbone "
              f"{model.backbone.get_memory_footprint() / 2**20:,.0f} MiB, "
              f"hypernetwork {hypernetwork_bytes / 2**20:,.0f} MiB")
        """),
    md("""
        ## 3. Internalize the document and answer

        With quantized projections the meta-LoRA is applied as low-rank matrix products next to the 4-bit
        weights (it cannot be folded into them), and the generated LoRA is applied the same way while
        answering. For contrast, the question alone (with the checkpoint's system prompt).
        """),
    code("""
        import time

        start = time.perf_counter()
        adapter = model.internalize(DOCUMENT)
        print(f"internalize: {time.perf_counter() - start:.2f} s -> {adapter}")
        answers = model.generate_text(QUESTIONS, adapter=adapter, max_new_tokens=MAX_NEW_TOKENS)
        without = model.generate_text(QUESTIONS, system_prompt=model.config.system_prompt,
                                      max_new_tokens=MAX_NEW_TOKENS)
        for question, answer, alone in zip(QUESTIONS, answers, without):
            print(f"Q: {question}\\n   SHINE: {answer}\\n   question alone: {alone}")
        """),
    md("""
        ## 4. What a quantized backbone cannot do: merging

        The adapter itself is ordinary floating-point LoRA weights: save it with `adapter.save_pretrained`,
        apply it to a full-precision Qwen3-8B elsewhere with PEFT, or keep answering with it here. What
        cannot work is adding it into 4-bit weights: `merge_into` refuses with a clear error before changing
        anything.
        """),
    code("""
        from shine_hf import IncompatibleAdapterError

        try:
            adapter.merge_into(model.backbone)
        except IncompatibleAdapterError as error:
            print(f"merge refused, backbone unchanged: {error}")
        """),
]

NOTEBOOKS = {
    "01_quickstart": QUICKSTART,
    "02_train_your_own": TRAIN,
    "03_evaluate": EVALUATE,
    "04_long_documents": LONG_DOCUMENTS,
    "05_released_checkpoints": RELEASED,
}


def build(stem: str) -> nbformat.NotebookNode:
    """The notebook `stem` from its cell sources: no outputs, no execution counts, stable cell ids."""
    cells = []
    for index, (kind, source, tags) in enumerate(NOTEBOOKS[stem]):
        maker = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = maker(source, id=f"cell-{index:02d}")
        if tags:
            cell.metadata["tags"] = list(tags)
        cells.append(cell)
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    })
    nbformat.validate(notebook)
    return notebook


def render(stem: str) -> str:
    return nbformat.writes(build(stem)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ from the sources")
    args = parser.parse_args(argv)
    stale = []
    for stem in NOTEBOOKS:
        path = EXAMPLES / f"{stem}.ipynb"
        text = render(stem)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date (run python scripts/build_notebooks.py): " + ", ".join(p.name for p in stale),
              file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
