"""scripts/effect_study.py end to end on one task with tiny counts and the tiny student."""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import CONFIG

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "effect_study.py"


def test_effect_study_runs_scores_diagnoses_and_resumes(student, tmp_path):
    from selfguide_lite.demo import demo_task_path

    (tmp_path / "c.yaml").write_text(CONFIG)
    cmd = [sys.executable, str(SCRIPT), "--tasks", str(demo_task_path()), "--model", str(student), "--rounds", "1",
           "--config", str(tmp_path / "c.yaml"), "--work", str(tmp_path / "study"), "--json", str(tmp_path / "s.json")]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads((tmp_path / "s.json").read_text())
    run = out["variants"]["full"]["runs"][0]
    rounds = run["rounds"]
    assert set(rounds) == {"0", "1"}
    assert run["round0_test"] == rounds["0"]["test"] and 0 <= run["round0_test"] <= 100
    assert run["final_test"] == rounds[str(run["final_round"])]["test"]
    assert run["gain"] == run["final_test"] - run["round0_test"]
    assert 0 <= rounds["0"]["format"] <= 100
    funnel = rounds["1"]["funnel"]
    assert funnel["candidates"] == 36 and funnel["candidates"] >= funnel["after_input_filters"] >= funnel["after_vote"] \
        >= funnel["after_balance"] == rounds["1"]["train_rows"]
    q = run["label_quality"]
    assert q["n"] == 8 and 0 <= q["coverage"] <= 100  # the tiny config's 8 validation instances
    assert rounds["1"]["inputs"]["target_agreement"] is not None  # the demo task is classification
    agg = out["variants"]["full"]["all"]
    assert agg["tasks"] == 1 and agg["gain"] == run["gain"]
    assert "mean over all (1 tasks)" in first.stdout
    # resumable: a second invocation reuses the finished run and its cached diagnostics
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "s.json").read_text())["variants"]["full"]["runs"][0]
    assert again["label_quality"] == q and again["final_test"] == run["final_test"]
    manifest = json.loads((tmp_path / "study" / "full" / demo_task_path().stem / "seed-0" / "manifest.json").read_text())
    assert all(rec.get("skipped") for name, rec in manifest["stages"].items())
