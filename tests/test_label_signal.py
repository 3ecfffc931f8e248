"""The signal check (methods/label_signal.py) with planted labellers, and the verdicts in words (metrics)."""

from __future__ import annotations

import random
import re

import pytest

from selfguide_lite import metrics
from selfguide_lite.config import Config
from selfguide_lite.methods import label_signal, labellers
from selfguide_lite.methods.labellers import LabelJob, Labeller, Vote
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.tasks import Demo, Instance, Task

LABELS = ["yes", "no"]


def task_with(n: int) -> Task:
    rng = random.Random(7)
    instances = [Instance(f"i{j}", f"input number {j}", (rng.choice(LABELS),)) for j in range(n)]
    return Task("planted", "Answer yes or no.", [Demo("a demo", "yes")], "classification", LABELS, instances)


class Planted(Labeller):
    """Labels from the gold answer: right with probability `accuracy`, else the other label (or one constant)."""

    drop_stages = ("planted",)

    def __init__(self, name: str, gold: dict[str, str], accuracy: float = 1.0, constant: str | None = None) -> None:
        self.name, self.gold, self.accuracy, self.constant = name, gold, accuracy, constant

    def label(self, job: LabelJob) -> list[Vote]:
        rng = random.Random(self.name)
        out = []
        for text in job.inputs:
            truth = self.gold[text]
            answer = self.constant or (truth if rng.random() < self.accuracy else LABELS[1 - LABELS.index(truth)])
            out.append(Vote(answer, 1.0, "", {}, {}))
        return out

    def drop_stage(self, vote: Vote) -> str:
        return "planted"


def check(monkeypatch, planted: list[Labeller], labeler: str = "auto", n: int = 400) -> dict:
    task = task_with(n)
    monkeypatch.setattr(labellers, "LABELLERS", {p.name: p for p in planted})
    monkeypatch.setattr(label_signal, "LABELLERS", labellers.LABELLERS)
    cfg = Config.model_validate({"selfguide": {"labeler": labeler}})
    return label_signal.check_classification(task, None, cfg, PromptFormat(), seed=0)


def gold_of(n: int = 400) -> dict[str, str]:
    return {i.input: i.outputs[0] for i in task_with(n).instances}


def test_a_labeller_at_chance_is_refused_with_the_numbers_in_words(monkeypatch):
    gold = gold_of()
    report = check(monkeypatch, [Planted("coin", gold, accuracy=0.5), Planted("always-yes", gold, constant="yes")])
    assert report["n"] == 300 and report["chance"] == 50.0  # validation 100 + 200 more, never test
    assert report["signal"] is False and report["chosen"] is None
    assert report["labellers"]["always-yes"]["balanced_accuracy"] == pytest.approx(50.0)
    assert report["labellers"]["always-yes"]["labels_used"] == 1
    assert report["labellers"]["coin"]["p_value"] > 0.05
    assert "at chance on 300 validation instances" in report["line"] and "not trained" in report["line"]
    assert "--model" in report["line"]


def test_a_labeller_above_chance_is_taken_over_one_at_chance(monkeypatch):
    gold = gold_of()
    report = check(monkeypatch, [Planted("coin", gold, accuracy=0.5), Planted("reader", gold, accuracy=0.7)])
    reader = report["labellers"]["reader"]
    assert reader["passes"] and reader["p_value"] < 0.01 and reader["balanced_accuracy"] > 60
    assert report["chosen"] == "reader" and report["signal"]
    assert "reader labels this round" in report["line"]


def test_a_named_labeller_is_checked_alone_and_trains_anyway(monkeypatch):
    gold = gold_of()
    report = check(monkeypatch, [Planted("coin", gold, accuracy=0.5), Planted("reader", gold, accuracy=0.7)],
                   labeler="coin")
    assert list(report["labellers"]) == ["coin"]
    assert report["chosen"] == "coin" and report["signal"] is False
    assert "training anyway" in report["line"]


def test_choosing_among_labellers_costs_significance():
    # the max-T p-value of a labeller is at least its p-value alone: picking the best of many is not free
    rng = random.Random(3)
    gold = [rng.choice(LABELS) for _ in range(200)]
    one = [[g if rng.random() < 0.56 else rng.choice(LABELS) for g in gold]]
    many = one + [[rng.choice(LABELS) for _ in gold] for _ in range(5)]
    alone = label_signal.permutation_test(gold, one).p_value[0]
    among = label_signal.permutation_test(gold, many).p_value[0]
    assert among >= alone


def test_the_permutation_test_reads_perfect_constant_and_unlabelled_answers():
    gold = ["a", "b", "c"] * 20
    perfect = label_signal.permutation_test(gold, [gold], permutations=500)
    assert perfect.balanced_accuracy[0] == pytest.approx(100.0) and perfect.chance == pytest.approx(100 / 3)
    assert perfect.p_value[0] == pytest.approx(1 / 501)
    constant = label_signal.permutation_test(gold, [["a"] * 60], permutations=500)
    assert constant.balanced_accuracy[0] == pytest.approx(100 / 3) and constant.p_value[0] == 1.0
    nothing = label_signal.permutation_test(gold, [[None] * 60], permutations=500)
    assert nothing.balanced_accuracy[0] == 0.0


def test_the_paired_test_reads_the_balanced_accuracy_difference_and_its_direction():
    rng = random.Random(5)
    gold = ["a"] * 150 + ["b"] * 50  # unbalanced, so balanced accuracy differs from accuracy
    good = [g if rng.random() < 0.8 else ("b" if g == "a" else "a") for g in gold]
    constant = ["a"] * 200
    diff, p = label_signal.paired_permutation_test(gold, good, constant, permutations=2000)
    expected = (metrics.read_labelling(LABELS, gold, good)["balanced_accuracy"]
                - metrics.read_labelling(LABELS, gold, constant)["balanced_accuracy"])
    assert diff == pytest.approx(expected, abs=0.01) and p < 0.01
    back, p_back = label_signal.paired_permutation_test(gold, constant, good, permutations=2000)
    assert back == pytest.approx(-diff) and p_back > 0.99  # one-sided: worse is never significant
    same, p_same = label_signal.paired_permutation_test(gold, good, list(good), permutations=2000)
    assert same == 0.0 and p_same == 1.0
    unlabelled, _ = label_signal.paired_permutation_test(gold, [None] * 200, constant, permutations=10)
    assert unlabelled == pytest.approx(-50.0)  # no label counts as wrong


def test_the_signal_pool_is_validation_then_instances_after_test():
    task = task_with(250)
    validation = task.split("validation", 100, 100)
    test = {i.id for i in task.split("test", 100, 100)}
    pool = task.split("signal", 100, 100, 300)
    assert pool[:100] == validation and len(pool) == 150  # 250 - 100 test
    assert not test & {i.id for i in pool}
    assert task.split("signal", 100, 100, 120) == pool[:120]


@pytest.mark.parametrize("skill, expected", [
    ({"balanced_accuracy": 62.0, "chance": 50.0, "labels_predicted": 2, "label_answers": 100.0}, metrics.READS),
    ({"balanced_accuracy": 50.0, "chance": 50.0, "labels_predicted": 1, "label_answers": 100.0}, metrics.CONSTANT),
    ({"balanced_accuracy": 40.0, "chance": 50.0, "labels_predicted": 2, "label_answers": 100.0}, metrics.BELOW_CHANCE),
    ({"balanced_accuracy": 52.0, "chance": 50.0, "labels_predicted": 2, "label_answers": 100.0}, metrics.AT_CHANCE),
    ({"balanced_accuracy": 10.0, "chance": 50.0, "labels_predicted": 2, "label_answers": 30.0}, metrics.NOT_IN_FORMAT),
    ({"balanced_accuracy": 0.0, "chance": 50.0, "labels_predicted": 0}, metrics.NOT_IN_FORMAT),  # before label_answers
])
def test_each_classification_verdict(skill, expected):
    assert metrics.verdict(skill) == expected


def test_generation_verdicts_read_against_the_input_copy():
    skill = {"input_as_answer_rougeL": 40.0, "input_as_answer_exact_match": 0.0}
    assert metrics.verdict(skill, 45.0) == metrics.ABOVE_COPY
    assert metrics.verdict(skill, 35.0) == metrics.BELOW_COPY
    assert metrics.verdict(None) is None


def test_a_constant_student_gets_a_plain_sentence():
    assert "answer format, not the task" in metrics.verdict_sentence(metrics.CONSTANT)
    assert metrics.verdict_sentence(metrics.READS) is None


def test_classification_skill_counts_answers_in_the_label_format():
    skill = metrics.classification_skill(LABELS, [["yes"], ["no"], ["yes"], ["no"]], ["yes", "maybe", "Yes.", "no"])
    assert skill["label_answers"] == 75.0 and metrics.verdict(skill) == metrics.READS


def test_the_permutation_tests_balanced_accuracy_is_the_metrics_one():
    rng = random.Random(5)
    gold = [rng.choice(["a", "b", "c"]) for _ in range(90)]
    said = [rng.choice(["a", "b", "c", None, "zzz"]) for _ in gold]
    reading = metrics.read_labelling(["a", "b", "c"], gold, said)
    test = label_signal.permutation_test(gold, [said], permutations=50)
    assert test.balanced_accuracy[0] == pytest.approx(reading["balanced_accuracy"], abs=0.01)
    assert test.chance == pytest.approx(reading["chance"], abs=0.01)
    assert reading["coverage"] == pytest.approx(100.0 * sum(s is not None for s in said) / 90, abs=0.1)


def test_diagnostics_read_the_vote_as_the_check_does():
    from selfguide_lite.diagnostics import label_quality

    q = label_quality([["a"], ["b"], ["a"], ["b"]], ["a", None, "a", "b"], ["a", "a", "a", "a"], True, ["a", "b"])
    assert q["vote_reading"] == {"balanced_accuracy": 75.0, "chance": 50.0, "labels_used": 2, "coverage": 75.0}


def test_without_label_scores_only_the_labellers_that_sample_are_checked(monkeypatch):
    # a completions server returns no log-probabilities: the score labellers are named as not checked
    gold = gold_of()
    report = check(monkeypatch, [Planted("reader", gold, accuracy=0.7), labellers.LABELLERS["argmax"]])
    assert list(report["labellers"]) == ["reader"] and report["not_checked"] == ["argmax"]
    assert report["chosen"] == "reader"


def test_an_unknown_labeller_is_one_error_line_before_anything_is_written(tmp_path, capsys):
    from selfguide_lite.cli import main
    from selfguide_lite.demo import real_demo_task_path

    cfg = tmp_path / "c.yaml"
    cfg.write_text("selfguide:\n  labeler: votes\n")
    code = main(["loop", "--task", str(real_demo_task_path()), "--model", str(tmp_path / "none.gguf"),
                 "--config", str(cfg), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == ("error: selfguide.labeler must be auto or one of vote, argmax, batch-calibrated, "
                      "content-free-calibrated, gold-fitted, not 'votes'")
    assert not (tmp_path / "run").exists()


class BiasedScorer:
    """Label scores that read the input a little (truth +0.5 log-odds) under a strong prior for 'yes' (+2):
    argmax says 'yes' for everything; dividing out the prior fitted on gold rows reads."""

    scores_labels = True

    def __init__(self, truth: dict[str, str]) -> None:
        self.truth = truth

    def score(self, requests):
        out = []
        for r in requests:
            found = re.findall(r"input number \d+\b", r.prompt)
            text = found[-1] if found else None
            lean = 0.0 if text is None else (0.5 if self.truth[text] == "yes" else -0.5)
            out.append([2.0 + lean, 0.0])  # log-scores of 'yes', 'no' (LABELS order)
        return out


def test_a_labeller_fitted_on_gold_examples_reads_where_argmax_is_a_constant():
    task = task_with(700)
    truth = {i.input: i.outputs[0] for i in task.instances}
    sampler = BiasedScorer(truth)
    with_gold = Config.model_validate({"selfguide": {"gold_per_label": 16}})
    job = LabelJob(task, sampler, with_gold.selfguide, PromptFormat(), [i.input for i in task.instances[:300]], 0,
                   gold=labellers.gold_examples(task, with_gold))
    assert len(job.gold) == 32 and not {g.input for g in job.gold} & set(job.inputs)
    fitted = [v.answer for v in labellers.LABELLERS["gold-fitted"].label(job)]
    argmax = [v.answer for v in labellers.LABELLERS["argmax"].label(job)]
    assert set(argmax) == {"yes"}
    assert fitted == [truth[t] for t in job.inputs]


def test_the_gold_fitted_labeller_is_a_candidate_only_where_the_run_has_gold_examples(monkeypatch):
    task = task_with(700)
    sampler = BiasedScorer({i.input: i.outputs[0] for i in task.instances})
    names = {}
    for k in (0, 16):
        cfg = Config.model_validate({"selfguide": {"gold_per_label": k}})
        monkeypatch.setattr(labellers.VoteLabeller, "label", lambda self, job: [Vote(None, 0.0, "", {}, {})] * len(job.inputs))
        monkeypatch.setattr(labellers.LabelJob, "prepare", lambda self, names: None)
        report = label_signal.check_classification(task, sampler, cfg, PromptFormat(), seed=0)
        names[k] = list(report["labellers"])
        assert "not_checked" not in report
    assert "gold-fitted" not in names[0] and names[16] == [*names[0], "gold-fitted"]
