"""The command line: one-line user errors with exit 2, `score`, and one real round of `loop`."""

import json
import subprocess
import sys

import pytest

from selfguide_lite.cli import main
from tests.helpers import shared_file


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "selfguide_lite", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "--task", "/no/task.json", "--model", "/no/model.gguf"],
        ["synth", "--task", "/no/task.json", "--model", "x.gguf", "--out", "o"],
        ["loop", "--task", "/no/task.json", "--model", "/no/model"],
        ["export", "--model", "/no/model", "--adapter", "/no/adapter", "--out", "x.gguf", "--quant", "q3"],
        ["train", "--data", "/no/data.jsonl", "--model", "m", "--out", "o"],
        ["loop", "--rounds", "-1", "--task", "t", "--model", "m"],
        ["eval", "--task"],
    ],
)
def test_user_errors_are_one_line_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_bad_model_file_is_a_user_error(tmp_path, capsys):
    task = shared_file("natural-instructions", "task190_snli_classification.json")
    bogus = tmp_path / "m.gguf"
    bogus.write_bytes(b"not a gguf")
    assert main(["eval", "--task", str(task), "--model", str(bogus)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bogus}: not a GGUF file")


def test_score_prints_one_json_object_and_rejects_unknown_ids(tmp_path):
    task = shared_file("natural-instructions", "task190_snli_classification.json")
    data = json.loads(task.read_text())
    inst = data["Instances"][:4]
    preds = tmp_path / "p.jsonl"
    rows = [{"id": i["id"], "prediction": i["output"][0] if n % 2 == 0 else "zzz"} for n, i in enumerate(inst)]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("score", "--task", str(task), "--predictions", str(preds))
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    # the first instances of an NI file are its validation split
    assert obj == {"task": "task190_snli_classification", "split": "validation", "n": 4, "exact_match": 50.0, "rougeL": 50.0,
                   # gold C N C N, predicted C zzz C zzz: recall 1 on C and 0 on N; F1 1 and 0; one label used;
                   # either constant label gets 2 of 4
                   "skill": {"balanced_accuracy": 50.0, "chance": 50.0, "macro_f1": 50.0, "labels_predicted": 1,
                             "best_constant": 50.0, "label_answers": 50.0},
                   # every label answer is C: a constant answer, whatever the exact match
                   "verdict": "constant answer (format only)"}
    preds.write_text(json.dumps({"id": "nope", "prediction": "E"}) + "\n")
    bad = run_cli("score", "--task", str(task), "--predictions", str(preds))
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "nope" in bad.stderr


@pytest.mark.slow
def test_loop_one_round_end_to_end(tmp_path):
    """Build the demo student briefly, then run round 0 + one round with small counts, for real."""
    from selfguide_lite.toy_models.headline import build_headline_student

    model = build_headline_student(tmp_path / "student", seconds=40, log=lambda m: None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "selfguide: {num_inputs: 24, wave_size: 12, num_samples: 4}\n"
        "train: {quantization: none, epochs: 1, batch_size: 4, learning_rate: 1.0e-3}\n"
        "eval: {validation_size: 12, test_size: 6}\nengine: {n_ctx: 2048}\n"
        # Keep every candidate: this test checks the plumbing, not the tiny model's quality.
        "selfguide:\n  num_inputs: 24\n  wave_size: 12\n  num_samples: 4\n  length_filter: false\n  balance: false\n"
    )
    run_dir = tmp_path / "run"
    from selfguide_lite.toy_models.headline import headline_task_path

    out = run_cli("loop", "--task", str(headline_task_path()), "--model", str(model), "--rounds", "1",
                  "--run-dir", str(run_dir), "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["rounds"]) == {"0", "1"}
    for stage in ["round-0/export", "round-0/eval", "round-1/signal", "round-1/synth", "round-1/train", "round-1/export",
                  "round-1/eval"]:
        assert manifest["stages"][stage]["status"] == "done", stage
        assert len(manifest["stages"][stage]["inputs"]) >= 2
    train_rows = (run_dir / "round-1" / "synth" / "train.jsonl").read_text().splitlines()
    assert len(train_rows) == manifest["rounds"]["1"]["train_size"] > 0
    for r in (0, 1):
        ev = json.loads((run_dir / f"round-{r}" / "eval.json").read_text())
        assert ev["validation"]["n"] == 12 and ev["test"]["n"] == 6
        assert {"exact_match", "rougeL", "primary"} <= set(ev["validation"]) and ev["tasks"][0]["validation"]["n"] == 12
    gguf = run_dir / "round-1" / "model-q8_0.gguf"  # export.quant auto: q8_0 below 1B parameters
    from selfguide_lite.engine.llama import load_llama

    llama = load_llama(gguf, n_ctx=256, n_threads=2)
    assert llama.n_vocab() > 0
    llama.close()
    assert (run_dir / "report.html").read_text().count("<tr>") >= 3
    # export.keep resume: round 1's merged weights stay only if it is the final or the current student
    students = {manifest["final"]["round"], manifest["final"]["last_promoted_round"]}
    assert (run_dir / "round-1" / "merged" / "model.safetensors").is_file() == (1 in students)
    assert ("round-1/merged" in manifest.get("pruned", {})) == (1 not in students)
    # Re-running with the same inputs skips every finished stage.
    again = run_cli("loop", "--task", str(headline_task_path()), "--model", str(model), "--rounds", "1",
                    "--run-dir", str(run_dir), "--config", str(cfg), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("up to date, skipped") == 7


@pytest.fixture(scope="module")
def demo_student_gguf(tmp_path_factory):
    """A briefly pretrained demo student, exported to GGUF once for the tests below."""
    from selfguide_lite.export import gguf_from_hf
    from selfguide_lite.toy_models.headline import build_headline_student

    root = tmp_path_factory.mktemp("student")
    model = build_headline_student(root / "hf", seconds=20, log=lambda m: None)
    return model, gguf_from_hf(model, root / "student-q8_0.gguf", "q8_0")


@pytest.mark.slow
def test_instruct_command_writes_every_output(demo_student_gguf, tmp_path):
    from selfguide_lite.demo import seed_pool_path

    _, gguf = demo_student_gguf
    out = tmp_path / "si"
    res = run_cli("instruct", "--seed-tasks", str(seed_pool_path()), "--model", str(gguf), "--out", str(out),
                  "--num-instructions", "5")
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    for name in ("instances.jsonl", "train.jsonl", "dropped.jsonl"):
        assert (out / name).is_file()
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert all(d["stage"] and d["reason"] for d in dropped)
    assert stats["requests"] > 0


@pytest.mark.slow
def test_self_instruct_loop_survives_a_round_without_data(demo_student_gguf, tmp_path):
    """The tiny student writes no usable instructions: the round is recorded as no_data, not a crash."""
    from selfguide_lite.demo import seed_pool_path
    from selfguide_lite.toy_models.headline import headline_task_path

    model, _ = demo_student_gguf
    cfg = tmp_path / "c.yaml"
    cfg.write_text("selfinstruct: {num_instructions: 4, wave_size: 4, max_tokens: 64}\neval: {validation_size: 6, test_size: 0}\n"
                   "export: {quant: q8_0}\nengine: {n_ctx: 2048}\n")
    res = run_cli("loop", "--method", "self-instruct", "--seed-tasks", str(seed_pool_path()), "--eval-tasks",
                  str(headline_task_path()), "--model", str(model), "--rounds", "1", "--run-dir", str(tmp_path / "run"),
                  "--config", str(cfg))
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["method"] == "self-instruct"
    r1 = manifest["rounds"]["1"]
    assert r1["status"] in ("done", "no_data")
    if r1["status"] == "no_data":  # no rows, or fewer than loop.min_train_rows (16 by default): not trained
        assert r1["train_size"] < 16 and manifest["final"]["round"] == 0
    assert "round 1" in res.stdout
