"""scripts/gold_study_report.py: docs/results/gold/RULE.md applied to synthetic study cells."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gold_study_report.py"
spec = importlib.util.spec_from_file_location("gold_study_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

GOLD = ["x", "y"] * 150
TASKS = [f"task{i}_t" for i in range(7)]


def _answers(accuracy: float) -> list[str]:
    """The first accuracy x 300 instances right (as many of each label), the rest wrong: a more accurate
    student is right wherever a less accurate one is, so differences are exact."""
    right = round(accuracy * len(GOLD))
    return [g if i < right else ("y" if g == "x" else "x") for i, g in enumerate(GOLD)]


def _variant(accuracy: float) -> dict:
    said = _answers(accuracy)
    ba = 100.0 * sum(s == g for s, g in zip(said, GOLD, strict=True)) / len(GOLD)
    return {"final": "F", "candidates": [{"name": "F", "validation": ba, "test_verdict": "reads", "seconds": 60.0}],
            "signal_pool": {"gold": GOLD, "said": said, "balanced_accuracy": ba, "chance": 50.0, "labels_used": 2}}


def _cells(b_accuracy: dict[str, float], seed: int = 0, a_accuracy: float = 0.6) -> dict:
    """A at `a_accuracy` everywhere, B as given per task (else as A), C as A."""
    cells = {}
    for task in TASKS:
        v = {"S": _variant(0.5), "A": _variant(a_accuracy), "B": _variant(b_accuracy.get(task, a_accuracy)),
             "C": _variant(a_accuracy)}
        cells[("m", 16, seed, task)] = {"task": task, "model": "m", "k": 16, "seed": seed, "variants": v}
    return cells


def test_a_clear_gain_on_four_tasks_pays_and_an_equal_variant_does_not():
    cells = _cells({t: 0.8 for t in TASKS[:4]})
    d = report.decide(cells, "m")
    assert d["B"]["pays"] and len(d["B"]["counted"]) == 4 and not d["B"]["undecided"]
    assert not d["C"]["pays"] and d["C"]["counted"] == []  # C answers exactly as A: +0, p = 1
    assert report.decide(cells, "a student not run")["B"]["undecided"]  # no verdict from missing cells


def test_exactly_three_passing_needs_seed_one_and_counts_only_tasks_passing_twice():
    cells = _cells({t: 0.8 for t in TASKS[:3]})
    d = report.decide(cells, "m")
    assert d["B"]["confirm_with_seed_1"] == sorted(TASKS[:3]) and d["B"]["undecided"] and not d["B"]["pays"]
    seed1 = _cells({t: 0.8 for t in TASKS[:2]}, seed=1)  # the third task does not repeat
    d = report.decide({**cells, **{k: v for k, v in seed1.items() if k[3] in TASKS[:3]}}, "m")
    assert d["B"]["counted"] == sorted(TASKS[:2]) and not d["B"]["pays"] and not d["B"]["undecided"]
    seed1 = _cells({t: 0.8 for t in TASKS[:3]}, seed=1)
    d = report.decide({**cells, **{k: v for k, v in seed1.items() if k[3] in TASKS[:3]}}, "m")
    assert d["B"]["pays"]


def test_a_significant_loss_on_one_task_vetoes_the_gains():
    cells = _cells({**{t: 0.8 for t in TASKS[:5]}, TASKS[6]: 0.4})
    d = report.decide(cells, "m")
    assert len(d["B"]["counted"]) == 5 and d["B"]["harmed"] == [TASKS[6]] and not d["B"]["pays"]


def test_a_small_gain_is_not_counted_even_when_significant():
    cells = _cells({t: 0.63 for t in TASKS})  # about +3 points: below the +5 the rule asks
    d = report.decide(cells, "m")
    assert d["B"]["passing"] == [] and not d["B"]["pays"]


def test_a_partial_study_is_undecided_until_the_missing_tasks_could_no_longer_change_it():
    cells = _cells({TASKS[0]: 0.8})
    five = {k: v for k, v in cells.items() if k[3] in TASKS[:5]}
    assert report.decide(five, "m")["B"]["undecided"]  # 1 passing + 2 missing could still make 3
    four = {k: v for k, v in cells.items() if k[3] in TASKS[1:5]}
    d = report.decide(four, "m")["B"]
    assert d["undecided"]  # 0 passing + 3 missing could still make 3
    four_and_one = {**four, **{k: v for k, v in cells.items() if k[3] == TASKS[5]}}
    d = report.decide(four_and_one, "m")["B"]
    assert not d["undecided"] and not d["pays"]  # 0 passing + 2 missing cannot
    gains = _cells({t: 0.8 for t in TASKS[:3]})
    assert report.decide({k: v for k, v in gains.items() if k[3] in TASKS[:5]}, "m")["B"]["undecided"]


def test_side_facts_cost_trained_and_refused_rounds_apart():
    cells = _cells({})
    for i, cell in enumerate(cells.values()):
        cell["variants"]["B"]["rounds"] = [{"round": 1, "status": "done" if i < 2 else "no_signal",
                                            "seconds": 300.0 if i < 2 else 40.0 + i}]
    facts = report.side_facts(cells, "m", 16)
    assert facts["round_seconds"]["B trained"] == 300.0
    assert facts["round_seconds"]["B refused"] == sum(40.0 + i for i in range(2, 7)) / 5
    assert facts["round_seconds"]["C trained"] is None  # no rounds recorded: no cost claimed
