"""The SQuAD v1.1 scorer on tricky strings (values computed by hand below), and the `evaluate`
metric module shipped in the package, loaded offline by path, giving the same numbers."""

from __future__ import annotations

import pytest

from shine_hf.evaluation import METRIC_PATH, exact_match, f1_score, score_answers

# (prediction, gold answers, F1, EM); the comment shows the normalised tokens.
TRICKY = [
    ("The Eiffel Tower", ["Eiffel Tower"], 1.0, 1.0),  # article dropped
    ("Eiffel Tower!", ["the eiffel tower."], 1.0, 1.0),  # punctuation and case
    ("an apple a day", ["apple day"], 1.0, 1.0),  # several articles
    ("theater", ["the theater"], 1.0, 1.0),  # "the" inside a word is kept
    ("", ["Tarsk"], 0.0, 0.0),  # empty prediction
    ("the", ["a"], 1.0, 1.0),  # both empty after normalisation: SQuAD counts a match
    ("12 May 1931", ["May 1931", "12 May"], 0.8, 0.0),  # 2 common of 3 predicted, 2 gold: 2*(2/3)*1/(5/3)
    ("Alva Mor, merchant", ["Alva Mor"], 0.8, 0.0),  # p 2/3, r 1
    ("New-York", ["New York"], 0.0, 0.0),  # "newyork" vs "new york": punctuation removed, not split
    ("U.S.A.", ["USA"], 1.0, 1.0),
    ("vel vel", ["vel"], 2 / 3, 0.0),  # counts clipped: 1 common, p 1/2, r 1
    ("  Tarsk\n", ["Qorsk", "tarsk"], 1.0, 1.0),  # best of several golds
    ("1,203", ["1203"], 1.0, 1.0),
    ("The Vel river", ["river Vel", "Vel"], 1.0, 0.0),  # bag of tokens: order ignored by F1, not by EM
]


@pytest.mark.parametrize(("prediction", "gold", "f1", "em"), TRICKY)
def test_tricky_strings_score_as_computed_by_hand(prediction, gold, f1, em):
    assert f1_score(prediction, gold) == pytest.approx(f1, abs=1e-12)
    assert exact_match(prediction, gold) == em


def test_the_evaluate_module_loads_offline_and_agrees_with_the_builtin_scorer(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    # evaluate reads these environment variables at import time: set its config directly
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    metric = evaluate.load(str(METRIC_PATH))
    assert list((tmp_path / "modules").rglob("shine_qa.py"))  # the module was loaded from our folder
    predictions = [p for p, _, _, _ in TRICKY]
    references = [g for _, g, _, _ in TRICKY]
    expected = score_answers(predictions, references)
    assert expected["f1"] == pytest.approx(sum(f for _, _, f, _ in TRICKY) / len(TRICKY), abs=1e-12)
    assert expected["em"] == pytest.approx(sum(e for _, _, _, e in TRICKY) / len(TRICKY), abs=1e-12)
    assert metric.compute(predictions=predictions, references=references) == expected
    # one gold string per example is accepted too
    assert metric.compute(predictions=["the Tarsk", "x"], references=["Tarsk", "y"]) == {"f1": 0.5, "em": 0.5,
                                                                                         "n": 2}


def test_the_metric_module_is_shipped_as_package_data():
    """pyproject's package-data must carry the folder `evaluate.load` reads."""
    import tomllib
    from pathlib import Path

    assert (METRIC_PATH / "shine_qa.py").is_file() and (METRIC_PATH / "README.md").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["shine_hf"]
    relative = METRIC_PATH.relative_to(Path(__file__).parents[1] / "shine_hf")
    assert any(Path(relative, "shine_qa.py").match(p) for p in patterns), patterns
