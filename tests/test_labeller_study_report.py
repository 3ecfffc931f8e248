"""scripts/labeller_study_report.py: the committed default-labeller rule on synthetic study results."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "labeller_study_report.py"
spec = importlib.util.spec_from_file_location("labeller_study_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _run(task: str, val: float, val_ba: float, test_ba: float, labels: int, rounds=(0, 1, 2)) -> dict:
    skill = {"validation": {"balanced_accuracy": val_ba, "chance": 50.0, "labels_predicted": labels},
             "test": {"balanced_accuracy": test_ba, "chance": 50.0, "labels_predicted": labels, "best_constant": 55.0}}
    rs = {str(k): {"status": "done", "validation": val if k else 0.0, "test": val if k else 0.0,
                   "skill": skill, "train_rows": 30 if k else None,
                   "sampling_seconds": {"annotate": 10.0} if k else None,
                   "funnel": {"after_input_filters": 20} if k else None} for k in rounds}
    return {"task": f"{task}_x", "final_round": max(rounds), "rounds": rs}


def _write(folder: Path, per_variant: dict[str, list[dict]]) -> None:
    for i, task in enumerate({r["task"] for runs in per_variant.values() for r in runs}):
        doc = {"code": "abc", "command": "c", "variants": {
            v: {"runs": [r for r in runs if r["task"] == task]} for v, runs in per_variant.items()}}
        (folder / f"{i}.json").write_text(json.dumps(doc))


def test_rule_picks_calibration_only_with_skill_margin_and_no_metric_loss(tmp_path):
    tasks = [f"task{i}" for i in range(7)]
    _write(tmp_path, {"full": [_run(t, 50, 50, 50, 1) for t in tasks],
                      "content_free_calibrated": [_run(t, 49, 53, 56, 2) for t in tasks],
                      "argmax": [_run(t, 50, 50, 50, 1) for t in tasks]})
    v = report.verdict(report.load(tmp_path))
    assert v["complete"] and v["decision"] == "content_free_calibrated"
    assert v["gain_skill_validation"]["content_free_calibrated"] == 3.0
    assert len(v["goals_on_test"]["content_free_calibrated"]["tasks_reading_on_test"]) == 7
    assert "decision: content_free_calibrated" in report.markdown(report.load(tmp_path), v)
    assert report.load(tmp_path)["full"]["task0"]["labelling_seconds_per_100_inputs"] == 50.0  # 2 x 10 s / 2 x 20 inputs


def test_rule_keeps_the_vote_when_calibration_loses_the_official_metric(tmp_path):
    tasks = [f"task{i}" for i in range(7)]
    _write(tmp_path, {"full": [_run(t, 50, 50, 50, 1) for t in tasks],
                      "content_free_calibrated": [_run(t, 40 if i < 4 else 50, 55, 55, 2) for i, t in enumerate(tasks)],
                      "argmax": [_run(t, 50, 50, 50, 1) for t in tasks]})
    v = report.verdict(report.load(tmp_path))
    assert v["complete"] and len(v["candidate_not_worse_tasks"]) == 3 and v["decision"] == "full"


def test_partial_study_decides_nothing(tmp_path):
    tasks = [f"task{i}" for i in range(7)]
    _write(tmp_path, {"full": [_run(t, 50, 50, 50, 1) for t in tasks],
                      "content_free_calibrated": [_run(t, 50, 60, 60, 2, rounds=(0, 1)) for t in tasks],
                      "argmax": [_run(t, 50, 50, 50, 1) for t in tasks]})
    v = report.verdict(report.load(tmp_path))
    assert v["complete"] is False and v["decision"] is None and v["rule_passes_on_what_is_here"] is True


def test_a_round_that_ended_without_data_or_with_a_refused_export_counts_as_run(tmp_path):
    """A round whose synthesis left nothing to train on, or whose export the gate refused, was run to its
    end: the study is complete; a diverged round was not."""
    tasks = [f"task{i}" for i in range(7)]
    short = _run("task0", 50, 50, 50, 1)
    short["final_round"] = 1
    # a diverged round (training failed) leaves the study incomplete
    for status, complete in (("no_data", True), ("export_rejected", True), ("diverged", False)):
        short["rounds"]["2"]["status"] = status
        _write(tmp_path, {"full": [short] + [_run(t, 50, 50, 50, 1) for t in tasks[1:]],
                          "content_free_calibrated": [_run(t, 50, 50, 50, 1) for t in tasks],
                          "argmax": [_run(t, 50, 50, 50, 1) for t in tasks]})
        v = report.verdict(report.load(tmp_path))
        assert v["complete"] is complete, status
        if complete:
            assert v["decision"] == "full"
