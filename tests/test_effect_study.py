"""scripts/effect_study.py end to end on one task with tiny counts and the tiny student."""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import CONFIG

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "effect_study.py"


def test_effect_study_runs_scores_diagnoses_and_resumes(student, tmp_path):
    from selfguide_lite.toy_models.headline import headline_task_path

    (tmp_path / "c.yaml").write_text(CONFIG)
    cmd = [sys.executable, str(SCRIPT), "--tasks", str(headline_task_path()), "--model", str(student), "--rounds", "1",
           "--config", str(tmp_path / "c.yaml"), "--work", str(tmp_path / "study"), "--json", str(tmp_path / "s.json")]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["complete"] is True  # the file is rewritten after each run; the last write marks it finished
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
    assert set(rounds["1"]["sampling_seconds"]) == {"write_inputs", "annotate"}  # the labelling cost per round
    drops = rounds["1"]["input_drops"]
    assert sum(v for k, v in drops.items() if k != "input_echoes") == funnel["candidates"] - funnel["after_input_filters"]
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
    manifest = json.loads((tmp_path / "study" / "full" / headline_task_path().stem / "seed-0" / "manifest.json").read_text())
    assert all(rec.get("skipped") for name, rec in manifest["stages"].items())


def _study_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("effect_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(task, seed, variant, rounds):
    return {"task": task, "seed": seed, "variant": variant,
            "rounds": {k: {"validation": v, "test": t, "train_rows": n} for k, (v, t, n) in rounds.items()}}


def test_variants_are_compared_to_full_at_the_last_round_both_scored():
    study = _study_module()
    reference = {("a", 0): _run("a", 0, "full", {0: (10.0, 12.0, None), 1: (40.0, 44.0, 60), 2: (42.0, 41.0, 60)}),
                 ("b", 0): _run("b", 0, "full", {0: (5.0, 5.0, None), 1: (5.0, 6.0, 30)})}
    runs = [_run("a", 0, "no_vote", {0: (10.0, 12.0, None), 1: (30.0, 50.0, 64)}),   # only round 1 ran
            _run("b", 0, "no_vote", {0: (5.0, 5.0, None), 1: (9.0, 2.0, 12)}),
            _run("c", 0, "no_vote", {0: (1.0, 1.0, None), 1: (2.0, 2.0, 3)})]          # no reference run
    cmp = study.compare_to_reference(runs, reference)
    a, b, c = cmp["rows"]
    assert a["round"] == 1 and a["delta_validation"] == -10.0 and a["delta_test"] == 6.0
    assert (a["train_rows"], a["reference_train_rows"]) == (64, 60)
    assert b["delta_validation"] == 4.0 and b["delta_test"] == -4.0
    assert c["round"] is None and c["delta_validation"] is None
    assert cmp["mean_delta_validation"] == -3.0 and cmp["mean_delta_test"] == 1.0
    assert cmp["worst_delta_validation"] == -10.0


def test_seed_spread_joins_seeds_from_several_files_and_rejects_a_foreign_file(tmp_path):
    script = SCRIPT.parent / "seed_spread.py"

    def study(seed, gain):
        run = {"task": "t", "seed": seed, "gain": gain, "final_round": 1,
               "rounds": {"0": {"validation": 10.0, "test": 20.0}, "1": {"validation": 12.0, "test": 20.0 + gain}}}
        return {"variants": {"full": {"runs": [run]}}}

    files = []
    for seed, gain in ((0, 5.0), (1, -1.5)):
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps(study(seed, gain)))
    out = subprocess.run([sys.executable, str(script), *map(str, files)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "spread of the gain over 2 seeds: 6.5 (mean +1.8)" in out.stdout
    assert "seed 1: 1 tasks, mean gain -1.5" in out.stdout
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_split_skill_uses_the_evaluators_columns():
    """Recomputed skill columns carry the same names the evaluator stores (one definition of them)."""
    from selfguide_lite.tasks import Task

    study = _study_module()
    rows = [{"input": "a b c", "prediction": "x", "references": ["a b c"]},
            {"input": "d e", "prediction": "d e", "references": ["f g"]}]
    gen = study.split_skill(Task("t", "Rewrite.", [], "generation"), rows)
    assert gen["input_as_answer_rougeL"] == 50.0 and gen["input_as_answer_exact_match"] == 50.0
    cls = study.split_skill(Task("c", "Pick.", [], "classification", labels=["yes", "no"]),
                            [{"input": "i", "prediction": "yes", "references": ["yes"]},
                             {"input": "j", "prediction": "yes", "references": ["no"]}])
    assert cls["balanced_accuracy"] == 50.0 and cls["labels_predicted"] == 1
