"""Nothing lost: a loop killed with SIGKILL mid-synthesis, mid-training and mid-export, then restarted,
ends exactly where an uninterrupted run with the same seed ends; the same seed gives byte-identical
synthesis files and another seed does not."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import CONFIG, loop_cmd


def run_until(cmd: list[str], cwd: Path, condition: Callable[[], bool], timeout: float = 600) -> bool:
    """Start cmd; SIGKILL it the moment `condition()` holds. True if killed, False if it finished first."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        pytest.fail(f"{cmd} did not finish in {timeout}s")
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return False


def journal_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()[1:]]


@pytest.mark.slow
def test_sigkill_mid_synthesis_training_and_export_then_resume(student, reference, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    cmd = loop_cmd(student, run, cfg)
    synth, r1 = run / "round-1" / "synth", run / "round-1"

    def mid_synthesis() -> bool:  # at least one wave journaled, stage not finished
        j = synth / "journal.jsonl"
        return j.is_file() and len(j.read_text().splitlines()) > 12 and not (synth / "train.jsonl").exists()

    def mid_training() -> bool:  # an epoch checkpoint completely saved (its state file comes last), no adapter yet
        return any((r1 / "adapter.checkpoints").glob("checkpoint-*/trainer_state.json")) and not (r1 / "adapter").exists()

    def mid_export() -> bool:  # merged weights written, GGUF conversion under way
        return (r1 / "merged" / "model.safetensors").is_file() and not (r1 / "model-q8_0.gguf").exists()

    killed = {}
    for name, condition in [("synthesis", mid_synthesis), ("training", mid_training), ("export", mid_export)]:
        killed[name] = run_until(cmd, tmp_path, condition)
        manifest = json.loads((run / "manifest.json").read_text())
        stage = {"synthesis": "synth", "training": "train", "export": "export"}[name]
        assert manifest["stages"][f"round-1/{stage}"]["status"] == "running", (name, manifest["stages"])
    assert all(killed.values()), killed
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]

    # Same data, byte for byte, as the run that was never interrupted.
    for name in ("train.jsonl", "dropped.jsonl", "stats.json"):
        assert (synth / name).read_bytes() == (reference / "round-1" / "synth" / name).read_bytes(), name
    keys = journal_keys(synth / "journal.jsonl")
    assert len(keys) == len(set(keys)), "a request was answered twice"
    assert set(keys) == set(journal_keys(reference / "round-1" / "synth" / "journal.jsonl")), "a request went missing"
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert manifest["stages"]["round-1/synth"]["replayed_requests"] > 0
    assert manifest["stages"]["round-1/train"]["resumed"] is True
    assert not list(run.rglob("*.tmp")) and not (r1 / "adapter.checkpoints").exists()
    from selfguide_lite.engine.llama import load_llama

    llama = load_llama(r1 / "model-q8_0.gguf", n_ctx=256, n_threads=2)
    assert llama.n_vocab() > 0
    llama.close()
    assert json.loads((r1 / "eval.json").read_text())["tasks"][0]["validation"]["n"] == 8


@pytest.mark.slow
def test_same_seed_same_synthesis_other_seed_differs(student, reference, tmp_path):
    from selfguide_lite.toy_models.headline import headline_task_path

    gguf = reference / "round-0" / "model-q8_0.gguf"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)

    def synth(out: str, seed: int) -> Path:
        res = subprocess.run([sys.executable, "-m", "selfguide_lite", "synth", "--task", str(headline_task_path()), "--model",
                              str(gguf), "--out", str(tmp_path / out), "--config", str(cfg), "--seed", str(seed)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        return tmp_path / out

    a, b, c = synth("a", 1), synth("b", 1), synth("c", 2)
    for name in ("train.jsonl", "dropped.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        # The loop's round 1 samples with seed = run seed + 1 = 1 from the same student.
        assert (a / name).read_bytes() == (reference / "round-1" / "synth" / name).read_bytes(), name
    assert (a / "train.jsonl").read_bytes() + (a / "dropped.jsonl").read_bytes() != \
        (c / "train.jsonl").read_bytes() + (c / "dropped.jsonl").read_bytes()


@pytest.mark.slow
def test_fresh_starts_a_new_directory_and_a_diverged_round_keeps_the_previous_student(student, reference, tmp_path):
    """--fresh leaves the finished run alone and starts NAME-2; a learning rate that blows the loss up
    stops training, records the round as diverged and keeps the round-0 student."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("learning_rate: 1.0e-3", "learning_rate: 50.0"))
    before = sorted(p.relative_to(reference) for p in reference.rglob("*"))
    res = subprocess.run([*loop_cmd(student, reference, cfg), "--fresh"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    fresh = reference.with_name(reference.name + "-2")
    assert f"--fresh: starting over in {fresh}" in res.stdout
    assert sorted(p.relative_to(reference) for p in reference.rglob("*")) == before
    manifest = json.loads((fresh / "manifest.json").read_text())
    assert manifest["rounds"]["1"]["status"] == "diverged" and "training diverged" in manifest["rounds"]["1"]["error"]
    assert manifest["final"]["round"] == 0 and manifest["final"]["gguf"].endswith("round-0/model-q8_0.gguf")
    assert not (fresh / "round-1" / "adapter").exists()


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["all", "resume", "promoted"])
def test_export_keep_bounds_disk_and_a_killed_run_still_resumes(student, tmp_path, keep):
    """Under every export.keep setting a run killed in round 2's training (round 1 already pruned)
    resumes to the end; what is gone is exactly what the setting promises, and recorded."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("export: {quant: q8_0}", f"export: {{quant: q8_0, keep: {keep}}}"))
    run = tmp_path / "run"
    cmd = loop_cmd(student, run, cfg)
    cmd[cmd.index("--rounds") + 1] = "2"
    r2 = run / "round-2"

    def mid_round_2_training() -> bool:
        return any((r2 / "adapter.checkpoints").glob("checkpoint-*/trainer_state.json")) and not (r2 / "adapter").exists()

    assert run_until(cmd, tmp_path, mid_round_2_training)
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values()), manifest["stages"]
    final = manifest["final"]["round"]
    students = {final, manifest["final"]["last_promoted_round"]}
    pruned = manifest.get("pruned", {})
    for k in (1, 2):
        rk = run / f"round-{k}"
        merged_kept = keep == "all" or k in students
        gguf_kept = keep != "promoted" or manifest["rounds"][str(k)]["promoted"]
        assert (rk / "merged").is_dir() == merged_kept, (k, keep, final)
        assert (rk / "model-q8_0.gguf").is_file() == gguf_kept, (k, keep)
        assert (f"round-{k}/merged" in pruned) != merged_kept and (f"round-{k}/model-q8_0.gguf" in pruned) != gguf_kept
        assert (rk / "eval.json").is_file() and (rk / "adapter").is_dir()
    assert (run / manifest["final"]["gguf"]).is_file() if not Path(manifest["final"]["gguf"]).is_absolute() \
        else Path(manifest["final"]["gguf"]).is_file()
    # a second resume finds everything finished, pruned outputs included
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(s.get("skipped") for s in json.loads((run / "manifest.json").read_text())["stages"].values())
    assert "Disk per round" in (run / "report.html").read_text()
