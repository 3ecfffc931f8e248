"""scripts/student_study_report.py on hand-made effect-study files: what a final student is, when it
"reads", which reference file wins, and the generation trivial answer."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import student_study_report as report  # noqa: E402


def _skill(ba: float, chance: float, labels: int, constant: float) -> dict:
    return {"balanced_accuracy": ba, "chance": chance, "macro_f1": 0.0, "labels_predicted": labels,
            "best_constant": constant}


def _run(task: str, final_round: int, final_val: float, final_ba_val: float, labels: int, gain: float) -> dict:
    r0 = {"status": "done", "validation": 10.0, "test": 12.0,
          "skill": {"validation": _skill(40.0, 50.0, 1, 50.0), "test": _skill(40.0, 50.0, 1, 55.0)}}
    rounds = {"0": r0}
    for k in (1, 2):
        rounds[str(k)] = {"status": "done", "validation": final_val if k == final_round else 5.0, "test": 12.0 + gain,
                          "train_rows": 10 * k,
                          "skill": {"validation": _skill(final_ba_val, 50.0, labels, 50.0),
                                    "test": _skill(final_ba_val, 50.0, labels, 55.0)}}
    return {"task": task, "type": "classification", "metric": "exact_match", "rounds": rounds,
            "final_round": final_round, "gain": gain, "seed": 0}


def _write(path: Path, variant: str, *runs: dict) -> None:
    path.write_text(json.dumps({"variants": {variant: {"runs": list(runs)}}}))


def test_reads_needs_skill_and_more_than_one_label(tmp_path):
    _write(tmp_path / "a.json", "full", _run("task1_x", 1, 60.0, 50.0, 1, 43.0),  # a constant: at chance
           _run("task2_y", 2, 60.0, 58.0, 2, 5.0))  # reads on validation
    _write(tmp_path / "b.json", "content_free_calibrated", _run("task1_x", 2, 61.0, 70.0, 1, 1.0))  # one label
    runs = report.load_runs([tmp_path])
    assert runs[("task1", "full")]["final"] == (55.0, 60.0)
    assert runs[("task1", "full")]["trivial_test"] == 55.0  # round 0's best constant on test
    m = report.means(runs, {})
    assert m["vote, classification"]["reads_validation"] == ["task2"]
    assert m["vote, classification"]["gain_skill_validation"] == 4.0  # (0 + 8) / 2
    assert m["content-free calibrated, classification"]["reads_validation"] == []


def test_later_reference_file_wins(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    _write(old, "full", _run("task1_x", 1, 30.0, 50.0, 1, 1.0))
    _write(new, "full", _run("task1_x", 2, 40.0, 50.0, 1, 2.0))
    assert report.load_runs([old, new])[("task1", "full")]["final_round"] == 2
    assert report.load_runs([new, old])[("task1", "full")]["final_round"] == 1


def test_generation_trivial_answer_and_cli(tmp_path):
    gen = {"task": "task9_gen", "type": "generation", "metric": "rougeL", "final_round": 0, "gain": 0.0, "seed": 0,
           "rounds": {"0": {"status": "done", "validation": 3.0, "test": 4.0,
                            "skill": {"test": {"exact_match": 1.0, "rougeL": 41.5}}}}}
    _write(tmp_path / "g.json", "full", gen)
    assert report.load_runs([tmp_path])[("task9", "full")]["trivial_test"] is None  # no input-as-answer field
    gen["rounds"]["0"]["skill"]["test"]["input_as_answer_rougeL"] = 41.5
    _write(tmp_path / "g.json", "full", gen)
    assert report.load_runs([tmp_path])[("task9", "full")]["trivial_test"] == 41.5
    out = subprocess.run([sys.executable, str(REPO / "scripts/student_study_report.py"), str(tmp_path),
                          "--reference", str(tmp_path / "none")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "| task9, vote | 4.0 (3.0) | 0 |" in out.stdout
    bad = subprocess.run([sys.executable, str(REPO / "scripts/student_study_report.py"), str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
