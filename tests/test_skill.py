"""The scoreboard beside the official metric: skill a constant answer or a copied input cannot fake."""

from __future__ import annotations

import pytest

from selfguide_lite.metrics import classification_skill, input_as_answer, score_predictions


def test_a_constant_answer_scores_exactly_chance_and_the_best_constant_is_its_exact_match():
    labels = ["yes", "no", "maybe"]
    refs = [["yes"]] * 6 + [["no"]] * 3 + [["maybe"]]
    for constant in labels:
        skill = classification_skill(labels, refs, [constant] * len(refs))
        assert skill["balanced_accuracy"] == pytest.approx(100 / 3) == pytest.approx(skill["chance"])
        assert skill["labels_predicted"] == 1
    best = classification_skill(labels, refs, ["yes"] * 10)
    assert best["best_constant"] == pytest.approx(60.0)
    assert best["best_constant"] == score_predictions({str(i): r for i, r in enumerate(refs)},
                                                      {str(i): "yes" for i in range(10)})["exact_match"]
    assert best["macro_f1"] == pytest.approx(100 * (2 * 6 / (6 + 10)) / 3)


def test_reading_the_input_shows_as_skill_above_chance():
    labels = ["yes", "no"]
    refs = [["Yes"], ["no"], ["yes"], ["No."], ["no"], ["no"]]
    perfect = classification_skill(labels, refs, ["yes", "no", "yes", "no", "no", "no"])
    assert perfect["balanced_accuracy"] == 100.0 and perfect["macro_f1"] == 100.0 and perfect["labels_predicted"] == 2
    half = classification_skill(labels, refs, ["yes", "yes", "no", "no", "no", "no"])  # yes: 1/2, no: 3/4
    assert half["balanced_accuracy"] == pytest.approx(100 * (0.5 + 0.75) / 2) and half["chance"] == 50.0
    off = classification_skill(labels, refs, ["maybe"] * 6)  # not a label: no recall, counted as no label
    assert off["balanced_accuracy"] == 0.0 and off["labels_predicted"] == 0


def test_input_as_answer_is_the_official_metric_of_copying_the_input():
    got = input_as_answer(["the cat sat", "a dog"], [["the cat sat"], ["the red bird"]])
    assert got["exact_match"] == 50.0 and got["rougeL"] == pytest.approx(50.0)


def test_score_rows_and_evaluate_report_skill(tmp_path):
    from selfguide_lite.evaluate import score_rows
    from selfguide_lite.tasks import Demo, Instance, Task

    task = Task(name="t", instruction="Say yes or no.", type="classification", labels=["yes", "no"],
                demos=[Demo("a", "yes")], instances=[Instance("i1", "x", ["yes"]), Instance("i2", "y", ["no"])])
    got = score_rows(task, [{"id": "i1", "prediction": "yes"}, {"id": "i2", "prediction": "yes"}])
    assert got["exact_match"] == 50.0 and got["skill"]["balanced_accuracy"] == 50.0
    assert got["skill"]["best_constant"] == 50.0
