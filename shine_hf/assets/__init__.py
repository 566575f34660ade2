"""Small artefacts shipped with the package, usable offline.

- ``FACTS_BACKBONE``: a 1.3M-parameter Llama with a word-level tokenizer, trained (by
  ``scripts/make_small_backbone.py``) to answer questions about a synthetic-facts document put in
  its prompt. Load it with ``AutoModelForCausalLM.from_pretrained(FACTS_BACKBONE)`` and
  ``AutoTokenizer.from_pretrained(FACTS_BACKBONE)``.
- ``FACTS_SHINE``: a SHINE hypernetwork for that backbone, trained by ``benchmarks/learning.py``
  (present when the folder ships): ``ShineForCausalLM.from_pretrained(FACTS_SHINE,
  backbone=FACTS_BACKBONE)``.
- ``FACTS_CONTEXT_TEMPLATE``: the in-context user turn the backbone was trained with
  (``"{context}\\n\\n{question}"``); pass it as ``context_template=`` to ``generate_text`` /
  ``shine_hf.evaluation`` for its in-context baseline (it never saw the reference template).
- ``FACTS_DATA``: the ``synthetic_facts`` arguments both were trained and measured with (the test
  split's entities never appear in training).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSETS_DIR", "FACTS_BACKBONE", "FACTS_CONTEXT_TEMPLATE", "FACTS_DATA", "FACTS_SHINE"]

ASSETS_DIR = Path(__file__).resolve().parent
FACTS_BACKBONE = ASSETS_DIR / "facts-llama"
FACTS_SHINE = ASSETS_DIR / "facts-shine"
FACTS_DATA = {"num_entities": 1000, "seed": 0, "one_token_names": True, "entities_per_document": (1, 1)}
FACTS_CONTEXT_TEMPLATE = "{context}\n\n{question}"
