"""shine_qa: SQuAD v1.1 F1 and exact match, best over several gold answers (the shine-hf scorer).

An `evaluate` metric module shipped inside the shine-hf package; load it by path (offline):

    import evaluate
    from shine_hf.evaluation import METRIC_PATH
    metric = evaluate.load(str(METRIC_PATH))
    metric.compute(predictions=["Tarsk"], references=[["Tarsk", "the city of Tarsk"]])
    # {'f1': 1.0, 'em': 1.0, 'n': 1}

The scoring is `shine_hf.evaluation.metrics.score_answers` itself, so this module and
`shine eval` give the same numbers.
"""

import datasets
import evaluate

from shine_hf.evaluation.metrics import score_answers

_DESCRIPTION = (
    "Token-level F1 and exact match after SQuAD v1.1 normalisation (lower-case; no punctuation; no "
    "articles a/an/the; single spaces), each the best over the gold answers, averaged over examples "
    "(scores in [0, 1]). The scorer of shine-hf's `shine eval`."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted answers (str).
    references: list of gold answers per prediction: a list of str, or one str.
Returns:
    f1: mean token F1 in [0, 1]; em: mean exact match in [0, 1]; n: number of examples.
"""
_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP",
    year = "2016",
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ShineQA(evaluate.Metric):
    """SQuAD v1.1 F1 / exact match over several gold answers."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references):
        return score_answers(predictions, references)
