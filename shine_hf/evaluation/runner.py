"""`run_eval`: SHINE against its baselines on QA data, with scores and costs (``shine eval``).

Conditions, for each example (document, question, gold answers):

- ``shine``: the question alone, no system prompt, with the LoRA generated from the document. Each
  distinct document is internalized once (``batch_size`` documents per ``internalize`` call) and its
  adapter answers all of its questions (``generate_text``'s ``adapter_index`` mapping). With
  ``chunk_tokens``, a document longer than that is read in chunks (``batch_size`` chunks per pass):
  its chunk adapters composed into one (``compose`` "concat" / "mean", as
  ``internalize(chunk_tokens=...)``), or kept as a ``RoutedAdapter`` ("route") that answers each
  question from its ``top_k`` best-matching chunks.
- ``in_context``: the document in the prompt (``context_template``) with the baseline system prompt.
- ``question_only``: the question with the baseline system prompt, no document.
- ``sft``: a PEFT LoRA of the same rank and targets trained on the document (``shine_hf.evaluation.sft``),
  then the question-only prompt.

Answers are greedy; scores are SQuAD v1.1 F1 / EM (``shine_hf.evaluation.metrics``). Costs per batch
(``shine_hf.evaluation.costs``): the per-document step (internalize / fine-tune) and answering are
timed separately, the peak memory increase is taken over the whole batch, and tokens are counted
(see ``shine_hf.evaluation.results.summarize`` for every figure). Results go to a JSON file that is
rewritten after every batch and resumed when the same run is started again.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..modeling.adapter import ShineAdapter
from ..modeling.chunking import check_chunking, split_text
from ..modeling.errors import ContextTooLongError, InvalidInputError
from ..modeling.prompting import IN_CONTEXT_TEMPLATE, in_context_question, question_prompt
from ..routing import ROUTE_METHODS, RoutedAdapter
from .costs import MemoryMeter, timed
from .generation import GeneratedAnswers, generate_batch
from .loaders import EvalData, load_examples
from .metrics import exact_match, f1_score
from .results import ResultsFile, check_writable
from .sft import DocumentFineTuner, SftConfig

__all__ = ["COMPOSE_MODES", "CONDITIONS", "ProgressCallback", "run_eval"]

CONDITIONS = ("shine", "in_context", "question_only", "sft")

COMPOSE_MODES = (*ROUTE_METHODS, "route")
"""How the ``shine`` condition reads a document longer than ``chunk_tokens``: its chunk adapters
composed into one ("concat": their sum, "mean": their average), or kept apart with the chunk texts
("route": each question answered from its ``top_k`` best-matching chunks, composed by concat)."""

ROUTED_TOP_K_METHOD = "concat"
"""How ``compose="route"`` composes a question's ``top_k`` chunk adapters."""

ProgressCallback = Callable[[str, int, int], None]
"""Called with (condition, examples answered so far, examples in all) at the start of each
condition and after each batch."""


@dataclass
class _Batch:
    """A unit of work that is saved (and skipped on resume) as a whole."""

    index: int
    documents: list[int]
    examples: list[int]


def _check_conditions(conditions: Sequence[str] | str) -> list[str]:
    if isinstance(conditions, str):
        conditions = [c.strip() for c in conditions.split(",") if c.strip()]
    conditions = list(dict.fromkeys(conditions))
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise InvalidInputError(f"Unknown condition(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                                f"choose from {', '.join(CONDITIONS)}.")
    return conditions


def _check_chunking(chunk_tokens: int | None, overlap_tokens: int, compose: str, top_k: int,
                    ) -> dict[str, Any] | None:
    """The chunking settings (None: documents are read whole), or InvalidInputError naming the problem.
    The limit of the backbone is checked once the model is loaded (``_Evaluation.check_lengths``)."""
    if compose not in COMPOSE_MODES:
        raise InvalidInputError(f"Unknown compose {compose!r}: choose from {', '.join(COMPOSE_MODES)}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}.")
    if chunk_tokens is None:
        defaults = (("overlap_tokens", overlap_tokens, 0), ("compose", compose, "concat"), ("top_k", top_k, 1))
        given = [name for name, value, default in defaults if value != default]
        if given:
            raise InvalidInputError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to documents "
                                    f"read in chunks: pass chunk_tokens / --chunk-tokens as well.")
        return None
    check_chunking(chunk_tokens, overlap_tokens, None)
    if top_k != 1 and compose != "route":
        raise InvalidInputError(f"top_k={top_k} applies to routed chunks: pass compose='route' / --compose route, "
                                f"or leave top_k at 1.")
    return {"chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens, "compose": compose, "top_k": top_k}


def _batches(condition: str, document_of: list[int], num_documents: int, batch_size: int) -> list[_Batch]:
    """Fixed batches over the whole data (the same on a resume, so answers are the same)."""
    if condition in ("shine", "sft"):
        per_batch = batch_size if condition == "shine" else 1
        groups = [list(range(s, min(s + per_batch, num_documents))) for s in range(0, num_documents, per_batch)]
        by_document: dict[int, list[int]] = {}
        for example, document in enumerate(document_of):
            by_document.setdefault(document, []).append(example)
        return [_Batch(i, group, sorted(e for d in group for e in by_document[d])) for i, group in enumerate(groups)]
    starts = range(0, len(document_of), batch_size)
    return [
        _Batch(i, sorted(set(document_of[s:s + batch_size])), list(range(s, min(s + batch_size, len(document_of)))))
        for i, s in enumerate(starts)
    ]


class _Evaluation:
    """One run's model, data and settings; answers one batch of one condition at a time."""

    def __init__(self, model: Any, data: EvalData, documents: list[str], document_of: list[int], *,
                 batch_size: int, max_new_tokens: int, system_prompt: str, context_template: str,
                 chunking: dict[str, Any] | None):
        self.model, self.data, self.documents, self.document_of = model, data, documents, document_of
        self.tokenizer = model.tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.system_prompt, self.context_template = system_prompt, context_template
        self.chunking = chunking
        self.device = model.get_input_embeddings().weight.device
        # as internalize reads them; verbose=False: documents too long to read whole are expected (chunked)
        self.document_ids = [self.tokenizer(d, verbose=False)["input_ids"] for d in documents]
        self.tuner: DocumentFineTuner | None = None

    def prompt(self, condition: str, example: int) -> str:
        ex = self.data.examples[example]
        if condition == "shine":
            return question_prompt(self.tokenizer, ex.question)
        if condition == "in_context":
            user_turn = in_context_question(ex.context, ex.question, self.context_template)
            return question_prompt(self.tokenizer, user_turn, self.system_prompt)
        return question_prompt(self.tokenizer, ex.question, self.system_prompt)

    def check_lengths(self, conditions: Sequence[str]) -> None:
        """Refuse, before any generation, documents or prompts the backbone cannot hold."""
        positions = getattr(self.model.backbone.config, "max_position_embeddings", None)
        if positions is None:
            return
        if "shine" in conditions:
            limit = self.model.max_context_tokens
            if self.chunking is not None:  # longer documents are read in chunks of at most chunk_tokens
                check_chunking(self.chunking["chunk_tokens"], self.chunking["overlap_tokens"], limit)
            for index, ids in enumerate(self.document_ids):
                if self.chunking is None and len(ids) > limit:
                    raise ContextTooLongError(
                        f"Document {index + 1} has {len(ids)} tokens; with {self.model.config.num_memory_tokens} "
                        f"memory tokens the backbone holds at most {limit} (pass chunk_tokens / --chunk-tokens "
                        f"to read it in chunks, drop the shine condition, or shorten it).")
        for condition in (c for c in conditions if c != "shine"):
            for example in range(len(self.data.examples)):
                length = len(self.tokenizer(self.prompt(condition, example), add_special_tokens=False)["input_ids"])
                if length + self.max_new_tokens > positions:
                    raise ContextTooLongError(
                        f"Example {example + 1}: its {condition} prompt has {length} tokens; with "
                        f"{self.max_new_tokens} new tokens it exceeds the backbone's {positions} positions.")

    def chunks(self, document: int) -> list[str] | None:
        """The chunk texts of a document the shine condition reads in chunks; None: it is read whole."""
        if self.chunking is None or len(self.document_ids[document]) <= self.chunking["chunk_tokens"]:
            return None
        return split_text(self.documents[document], self.tokenizer, self.chunking["chunk_tokens"],
                          self.chunking["overlap_tokens"])

    def internalize(self, documents: list[int], chunks: dict[int, list[str]]) -> dict[int, Any]:
        """Each document's adapter: those read whole in one ``internalize`` call (as token ids), then
        each one in ``chunks`` composed from its chunks, or its ``RoutedAdapter`` (compose "route")."""
        adapters: dict[int, Any] = {}
        whole = [d for d in documents if d not in chunks]
        if whole:
            read = self.model.internalize([self.document_ids[d] for d in whole])
            adapters.update({d: read[i] for i, d in enumerate(whole)})
        for document, texts in chunks.items():
            options = {"chunk_tokens": self.chunking["chunk_tokens"], "overlap_tokens": self.chunking["overlap_tokens"],
                       "chunk_batch_size": self.batch_size, "show_progress": False}
            if self.chunking["compose"] == "route":  # a document with fewer chunks than top_k: all of them
                adapters[document] = RoutedAdapter.from_document(
                    self.model, self.documents[document], top_k=min(self.chunking["top_k"], len(texts)),
                    method=ROUTED_TOP_K_METHOD, **options)
            else:
                adapters[document] = self.model.internalize(self.documents[document], compose=self.chunking["compose"],
                                                            **options)
        return adapters

    def answer(self, condition: str, examples: list[int], adapter_for: Callable[[list[int]], Any] | None = None,
               ) -> list[GeneratedAnswers]:
        chunks = [examples[s:s + self.batch_size] for s in range(0, len(examples), self.batch_size)]
        return [generate_batch(self.model, self.tokenizer, [self.prompt(condition, e) for e in chunk],
                               max_new_tokens=self.max_new_tokens,
                               adapter=None if adapter_for is None else adapter_for(chunk))
                for chunk in chunks]

    def run(self, condition: str, batch: _Batch) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """Answer one batch; returns its cost record and its predictions by example index."""
        prepare_seconds, document_tokens, extra = 0.0, 0, {}
        adapter_for = None
        if condition == "shine":
            chunks = {d: texts for d in batch.documents if (texts := self.chunks(d)) is not None}
            with timed(self.device) as prepare:
                adapters = self.internalize(batch.documents, chunks)

            def adapter_for(examples: list[int]) -> ShineAdapter:
                return ShineAdapter.stack([self.answering_adapter(adapters[self.document_of[e]], e) for e in examples])

            prepare_seconds = prepare.seconds
            # every read context: a whole document, or each chunk (tokenized as internalize reads it)
            read_tokens = [[len(self.tokenizer(text)["input_ids"]) for text in chunks[d]] if d in chunks
                           else [len(self.document_ids[d])] for d in batch.documents]
            document_tokens = sum(n + self.model.config.num_memory_tokens for lengths in read_tokens for n in lengths)
            if self.chunking is not None:
                extra = {"chunks": [len(lengths) for lengths in read_tokens]}
        elif condition == "sft":
            with timed(self.device) as prepare:
                run = self.tuner.fine_tune(self.document_ids[batch.documents[0]])
            prepare_seconds, document_tokens, extra = prepare.seconds, run.tokens, {"losses": [run.losses]}
        with timed(self.device) as answering:
            answers = self.answer(condition, batch.examples, adapter_for)
        texts = [t for a in answers for t in a.texts]
        prompt_tokens = [n for a in answers for n in a.prompt_tokens]
        generated_tokens = [n for a in answers for n in a.generated_tokens]
        predictions = {}
        for i, example in enumerate(batch.examples):
            gold = self.data.examples[example].answers
            predictions[example] = {"prediction": texts[i], "f1": f1_score(texts[i], gold),
                                    "em": exact_match(texts[i], gold), "prompt_tokens": prompt_tokens[i],
                                    "generated_tokens": generated_tokens[i]}
        record = {"index": batch.index, "documents": batch.documents, "examples": batch.examples,
                  "prepare_seconds": prepare_seconds, "answer_seconds": answering.seconds,
                  "peak_memory_bytes": 0, "document_tokens": document_tokens, **extra}
        return record, predictions

    def answering_adapter(self, adapter: ShineAdapter | RoutedAdapter, example: int) -> ShineAdapter:
        """The adapter that answers an example: its document's, or the one its question routes to."""
        if isinstance(adapter, RoutedAdapter):
            return adapter.adapter_for(self.data.examples[example].question)
        return adapter

    @contextlib.contextmanager
    def fine_tuning(self, sft: SftConfig, seed: int):
        targets = self.model.targets
        with DocumentFineTuner(self.model.backbone, rank=self.model.config.lora_rank,
                               target_modules=[t.name for t in targets], config=sft, seed=seed,
                               fan_in_fan_out=any(t.fan_in_fan_out for t in targets)) as tuner:
            self.tuner = tuner
            try:
                yield
            finally:
                self.tuner = None


def _load_model(model: Any, backbone: Any, dtype: Any, device: str | None) -> Any:
    if not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "internalize"):
            raise InvalidInputError(f"run_eval needs a ShineForCausalLM or a checkpoint path, not "
                                    f"{type(model).__name__}.")
        return model
    from ..modeling import ShineForCausalLM

    return ShineForCausalLM.from_pretrained(model, backbone=backbone, dtype=dtype,
                                            device_map=None if device is None else {"": device})


def _environment(device: torch.device) -> dict[str, Any]:
    import transformers

    from .. import __version__

    env = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
           "shine_hf": __version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "machine": platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run_eval(
    model: Any,
    data: Any,
    *,
    split: str = "test",
    data_config: str | None = None,
    layout: str = "auto",
    conditions: Sequence[str] | str = CONDITIONS,
    limit: int | None = None,
    batch_size: int = 8,
    output: str | os.PathLike | None = None,
    chart: str | os.PathLike | None = None,
    max_new_tokens: int = 32,
    system_prompt: str | None = None,
    context_template: str = IN_CONTEXT_TEMPLATE,
    sft: SftConfig | None = None,
    seed: int = 0,
    chunk_tokens: int | None = None,
    overlap_tokens: int = 0,
    compose: str = "concat",
    top_k: int = 1,
    backbone: Any = None,
    dtype: Any = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate a SHINE model against its baselines on QA data (the ``shine eval`` command).

    Every check of the input (conditions, output paths, data records, an existing results file
    with other settings) runs before the model is loaded or used.

    Args:
        model: A ``ShineForCausalLM``, or a checkpoint directory / Hub repo id to load.
        data: Anything ``load_examples`` reads (file, directory, Hub dataset id, ``Dataset``,
            list of ``EvalExample``), or an ``EvalData``.
        split, data_config, layout, limit: Passed to ``load_examples`` (``limit``: first N examples).
        conditions: Subset of ``CONDITIONS`` (a list or a comma-separated string), run in this order.
        batch_size: Questions per generation batch; documents per ``internalize`` call.
        output: The JSON results file (resumed if it holds this run); None: nothing written.
        chart: Where to write the PNG bar chart (F1, seconds per question); None: no chart.
        max_new_tokens: Generation budget per answer.
        system_prompt: The baselines' system prompt (default ``model.config.system_prompt``); SHINE
            answers never use one.
        context_template: The in-context user turn (``{context}``, ``{question}``).
        sft: The fine-tuning baseline's hyper-parameters (default ``SftConfig()``).
        seed: Seeds the SFT LoRA initialisation.
        chunk_tokens: The ``shine`` condition reads documents longer than this many tokens in chunks
            of at most this many (``internalize(chunk_tokens=...)``, ``batch_size`` chunks per pass);
            shorter ones are read whole. None (default): every document is read whole, and one
            longer than ``model.max_context_tokens`` is a ``ContextTooLongError``.
        overlap_tokens: Tokens shared by consecutive chunks.
        compose: What becomes of a chunked document's chunk adapters (``COMPOSE_MODES``): "concat"
            (one adapter, their sum), "mean" (one adapter, their average), or "route" (a
            ``RoutedAdapter``: each question answered from its ``top_k`` best-matching chunks,
            composed by concat; a document with fewer chunks: all of them).
        top_k: With compose "route": the chunks each question is answered from.
        backbone, dtype, device: Loading options when ``model`` is a path (``device``: e.g. ``"cuda"``).
        progress: Optional ``ProgressCallback``.

    Returns:
        The results (what is written to ``output``): ``summary`` per condition, per-example
        ``examples`` with predictions, per-batch ``batches`` costs, ``settings``, ``data``.

    Raises:
        InvalidInputError: unknown condition, bad numbers, bad chunking options (or a chunk size
            beyond what the backbone reads), unwritable output, bad data, an output file holding
            another run.
        ContextTooLongError: a document (without ``chunk_tokens``) or prompt longer than the backbone
            holds.
    """
    conditions = _check_conditions(conditions)
    sft = SftConfig() if sft is None else sft
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise InvalidInputError(f"{name} must be at least 1, not {value}.")
    if "sft" in conditions:
        sft.validate()
    chunking = _check_chunking(chunk_tokens, overlap_tokens, compose, top_k)
    if "shine" not in conditions:
        chunking = None  # only the shine condition reads documents with the hypernetwork
    for path, what in ((output, "output file"), (chart, "chart")):
        if path is not None:
            check_writable(Path(path), what)
    if not isinstance(data, EvalData):
        data = load_examples(data, split=split, config=data_config, layout=layout, limit=limit)
    documents = list(dict.fromkeys(e.context for e in data.examples))
    index_of = {d: i for i, d in enumerate(documents)}
    document_of = [index_of[e.context] for e in data.examples]
    settings = {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", None),
        "backbone": None if backbone is None else str(backbone), "dtype": None if dtype is None else str(dtype),
        "data": data.source, "split": split, "data_config": data_config, "layout": data.layout,
        "conditions": conditions, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "system_prompt": system_prompt, "context_template": context_template, "seed": seed,
        "sft": asdict(sft) if "sft" in conditions else None,
        "chunking": chunking,
    }
    rows = [{"id": e.id if e.id is not None else str(i), "document": document_of[i], "question": e.question,
             "answers": list(e.answers), "predictions": {}} for i, e in enumerate(data.examples)]
    data_block = {"source": data.source, "layout": data.layout, "examples": len(rows), "documents": len(documents),
                  "skipped": data.skipped, "fingerprint": data.fingerprint}
    # The environment is filled in once the model is loaded; a mismatching file is refused first.
    results = ResultsFile(output, settings, {}, data_block, rows)

    model = _load_model(model, backbone, dtype, device)
    if model.tokenizer is None:
        raise InvalidInputError("The model has no tokenizer: pass tokenizer= when loading it.")
    evaluation = _Evaluation(model, data, documents, document_of, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, context_template=context_template,
                             system_prompt=model.config.system_prompt if system_prompt is None else system_prompt,
                             chunking=chunking)
    results.content["environment"][-1].update(_environment(evaluation.device),
                                              system_prompt_used=evaluation.system_prompt)
    evaluation.check_lengths(conditions)
    meter = MemoryMeter(evaluation.device)
    was_training = model.training
    model.eval()
    try:
        for condition in conditions:
            batches = [b for b in _batches(condition, document_of, len(documents), batch_size)
                       if b.index not in results.done(condition)]
            if progress is not None:
                progress(condition, results.answered(condition), len(rows))
            needs_tuner = condition == "sft" and batches
            with evaluation.fine_tuning(sft, seed) if needs_tuner else contextlib.nullcontext():
                for batch in batches:
                    meter.start()
                    record, predictions = evaluation.run(condition, batch)
                    record["peak_memory_bytes"] = meter.peak_increase()
                    results.record(condition, record, predictions)
                    if progress is not None:
                        progress(condition, results.answered(condition), len(rows))
    finally:
        if was_training:
            model.train()
    content = results.finish(conditions)
    if chart is not None:
        from .report import chunking_label, plot_summary

        model_name = Path(str(settings["model"] or type(model).__name__)).name
        title = f"{model_name} on {Path(data.source).name}: {len(rows)} questions about {len(documents)} documents"
        if chunking is not None:
            title += f"\n{chunking_label(chunking)}"
        plot_summary(content["summary"], Path(chart), title=title)
    return content
