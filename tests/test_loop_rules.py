import json

from selfguide_lite.config import Config
from selfguide_lite.loop import should_promote, training_data


def test_promotion_tolerates_one_point_by_default():
    assert should_promote(60.0, 60.5, 1.0)
    assert should_promote(59.0, 60.0, 1.0)
    assert not should_promote(58.9, 60.0, 1.0)
    assert should_promote(70.0, 60.0, 1.0)


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_data_latest_or_accumulated_without_duplicates(tmp_path):
    a, b, c = ({"prompt": p, "completion": "x"} for p in "abc")
    r1 = _write(tmp_path / "round-1" / "synth" / "train.jsonl", [a, b])
    r2 = _write(tmp_path / "round-2" / "synth" / "train.jsonl", [b, c])
    latest = Config.model_validate({"loop": {"data": "latest"}})
    assert training_data(latest, tmp_path, 2, r2) == r2
    acc = Config.model_validate({"loop": {"data": "accumulate"}})
    out = training_data(acc, tmp_path, 2, r2)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [a, b, c] and out != r1


# --- the loop's rules, with fake stages (no model, no subprocess) ---------------------------------

import pytest  # noqa: E402

from selfguide_lite import loop  # noqa: E402
from selfguide_lite.gate import ExportRejected  # noqa: E402
from selfguide_lite.models import ResolvedStudent  # noqa: E402
from selfguide_lite.runs import read_rounds  # noqa: E402
from selfguide_lite.train import TrainingDiverged  # noqa: E402


class FakeStages:
    """Scripted stages: rows per round, which rounds diverge, and (validation, test) per round."""

    def __init__(self, tmp_path, rows: dict[int, int], scores: dict[int, tuple[float, float]], diverge=(), reject=()):
        self.rows, self.scores, self.diverge, self.reject = rows, scores, set(diverge), set(reject)
        self.synth_students: dict[int, str] = {}
        self.skills: dict[int, dict] = {}  # round -> the skill columns its evaluation reports (both splits)
        self.labels: list[str] = []  # classification rows' labels, in turn (empty: a generation task)
        self.labellers: dict[int, str] = {}  # round -> selfguide.labeler its synthesis ran with
        self.checked: dict[int, str] = {}  # round -> the student its signal check asked
        self.signals: dict[int, dict] = {}  # round -> a planted signal report (default: generation, informs)
        self.trained_on: dict[int, int] = {}
        base = tmp_path / "base"
        base.mkdir()
        (base / "w").write_text("weights")
        gguf = tmp_path / "base.gguf"
        gguf.write_text("round 0")
        self.source = ResolvedStudent(str(base), gguf)

    @staticmethod
    def round_of(path) -> int:
        parts = [p for p in str(path).split("/") if p.startswith("round-")]
        return int(parts[-1].split("-")[1]) if parts else 0

    def synth(self, cfg, method, gguf, out_dir, seed):
        k = self.round_of(out_dir)
        self.synth_students[k] = gguf.read_text()
        self.labellers[k] = method.cfg.selfguide.labeler
        labels = self.labels or ["x"]
        _write(out_dir / "train.jsonl", [{"prompt": f"r{k}-{i}", "completion": labels[i % len(labels)]}
                                         for i in range(self.rows[k])])
        (out_dir / "stats.json").write_text(json.dumps({"method": "self-guide", "candidates": self.rows[k],
                                                        "train": self.rows[k],
                                                        "type": "classification" if self.labels else "generation"}))
        return {}

    def train(self, data, base, adapter, cfg, log, chat):
        k = self.round_of(adapter)
        self.trained_on[k] = len(data.read_text().splitlines())
        if k in self.diverge:
            raise TrainingDiverged("loss became nan")
        adapter.mkdir(parents=True)
        (adapter / "adapter.bin").write_text(f"adapter {k}")

    def export(self, base, adapter, gguf, merged, cfg, gate_prompts, use_chat_template):
        k = self.round_of(gguf)
        assert gate_prompts is not None and use_chat_template  # the gate is on by default
        if k in self.reject:
            raise ExportRejected(f"{gguf.name} failed the export check: the GGUF's EOS id 7 differs from the "
                                 "tokenizer's 2", {"passed": False, "problems": ["eos"]})
        gguf.write_text(f"round {k}")
        merged.mkdir()
        (merged / "w").write_text(f"merged {k}")
        gguf.with_suffix(".Modelfile").write_text("FROM x")
        return {}

    def evaluate(self, cfg, method, tasks, gguf, out):
        k = int(gguf.read_text().split()[-1])
        val, test = self.scores[k]
        split = {"n": 4, "exact_match": 0.0, "rougeL": 0.0, **({"skill": self.skills[k]} if k in self.skills else {})}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"primary_metric": "exact_match", "validation": {**split, "primary": val},
                                   "test": {**split, "primary": test}, "tasks": []}))
        return {}

    def signal(self, cfg, method, gguf, out, seed):
        k = self.round_of(out)
        self.checked[k] = gguf.read_text()
        report = self.signals.get(k, {"type": "generation", "n": 4, "signal": True, "line": "generation check"})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report))
        return {}

    def install(self, monkeypatch):
        monkeypatch.setattr(loop, "resolve_student", lambda model, log=None: self.source)
        monkeypatch.setattr(loop, "run_signal_check", self.signal)
        monkeypatch.setattr(loop, "run_synthesis", self.synth)
        monkeypatch.setattr(loop, "train_adapter", self.train)
        monkeypatch.setattr(loop, "_export", self.export)
        monkeypatch.setattr(loop, "evaluate_student", self.evaluate)


def _run(tmp_path, monkeypatch, fake: FakeStages, rounds: int, **loop_cfg):
    fake.install(monkeypatch)
    task = tmp_path / "t.yaml"
    task.write_text("instruction: Say it.\ntype: generation\nexamples:\n  - {input: a, output: b}\n"
                    "eval:\n  - {input: c, output: d}\n")
    cfg = Config.model_validate({"task": str(task), "model": "fake", "run_dir": str(tmp_path / "run"),
                                 "loop": {"rounds": rounds, "min_train_rows": 1, **loop_cfg}})
    summary = loop.run_loop(cfg, log=lambda m: None)
    return summary, read_rounds(tmp_path / "run")


def test_loop_promotes_on_validation_and_synthesises_with_the_promoted_student(tmp_path, monkeypatch):
    # round 1: worse on validation, better on test -> not promoted; round 2: the reverse -> promoted
    fake = FakeStages(tmp_path, rows={1: 3, 2: 3, 3: 3}, scores={0: (50, 50), 1: (40, 90), 2: (60, 10), 3: (59.5, 0)})
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=3)
    assert [rounds[k].promoted for k in (0, 1, 2, 3)] == [True, False, True, True]  # 59.5 is within 1 of 60
    assert fake.synth_students == {1: "round 0", 2: "round 0", 3: "round 2"}
    assert rounds[3].student_round == 2
    # the loop went on from round 3 (within tolerance), but the final student is the best on validation
    assert summary["final_round"] == 2 and summary["last_promoted_round"] == 3
    assert rounds[1].metrics.test.primary == 90 and rounds[1].status == "done"


def test_a_tie_on_validation_keeps_the_earlier_round_as_the_final_student(tmp_path, monkeypatch):
    # round 1 ties round 0 on validation (promoted: within tolerance) but is no evidence of a gain
    fake = FakeStages(tmp_path, rows={1: 3, 2: 3}, scores={0: (50, 10), 1: (50, 90), 2: (50, 90)})
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=2)
    assert rounds[1].promoted and rounds[2].promoted
    assert summary["final_round"] == 0 and summary["last_promoted_round"] == 2


def test_no_data_and_diverged_rounds_keep_the_student(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 0, 2: 4, 3: 2}, scores={0: (50, 50), 3: (70, 70)}, diverge={2})
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=3)
    assert rounds[1].status == "no_data" and rounds[1].train_size == 0 and not rounds[1].promoted
    assert rounds[2].status == "diverged" and "nan" in rounds[2].error and not rounds[2].promoted
    assert 1 not in fake.trained_on and not (tmp_path / "run" / "round-2" / "model-q8_0.gguf").exists()
    assert fake.synth_students == {1: "round 0", 2: "round 0", 3: "round 0"}
    assert summary["final_round"] == 3 and rounds[3].promoted


def test_a_rejected_export_keeps_the_student_and_records_why(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 3, 2: 3}, scores={0: (50, 50), 2: (60, 60)}, reject={1})
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=2)
    assert rounds[1].status == "export_rejected" and not rounds[1].promoted and "EOS id 7" in rounds[1].error
    assert rounds[1].gate == {"passed": False, "problems": ["eos"]}
    assert fake.synth_students == {1: "round 0", 2: "round 0"}  # round 2 still samples the round-0 student
    assert summary["final_round"] == 2


def test_accumulated_data_grows_over_rounds(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 2, 2: 3}, scores={0: (50, 50), 1: (50, 50), 2: (50, 50)})
    _run(tmp_path, monkeypatch, fake, rounds=2, data="accumulate")
    assert fake.trained_on == {1: 2, 2: 5}


def test_rerun_skips_every_finished_stage(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 2}, scores={0: (50, 50), 1: (55, 55)})
    _run(tmp_path, monkeypatch, fake, rounds=1)
    fake.install(monkeypatch)
    monkeypatch.setattr(loop, "run_synthesis", lambda *a: pytest.fail("synthesis ran again"))
    monkeypatch.setattr(loop, "train_adapter", lambda *a: pytest.fail("training ran again"))
    task = tmp_path / "t.yaml"
    monkeypatch.setattr(loop, "run_signal_check", lambda *a: pytest.fail("the signal check ran again"))
    cfg = Config.model_validate({"task": str(task), "model": "fake", "run_dir": str(tmp_path / "run"),
                                 "loop": {"rounds": 1, "min_train_rows": 1}})
    summary = loop.run_loop(cfg, log=lambda m: None)
    assert summary["final_round"] == 1


# --- the signal check and the least a round trains on ----------------------------------------------

def _classification_signal(chosen, line="planted"):
    return {"type": "classification", "n": 300, "signal": chosen is not None, "chosen": chosen, "line": line,
            "labellers": {}}


def test_a_round_without_signal_is_not_trained_and_ends_the_loop(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 40, 2: 40}, scores={0: (50, 50)})
    fake.signals = {1: _classification_signal(None, "its labels agree with the truth at chance")}
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=2)
    assert rounds[1].status == "no_signal" and not rounds[1].promoted
    assert rounds[1].signal["line"] == "its labels agree with the truth at chance"
    assert 2 not in rounds and fake.synth_students == {} and fake.trained_on == {}
    assert summary["final_round"] == 0


def test_the_labeller_the_check_chose_labels_the_round(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 40, 2: 40}, scores={0: (50, 50), 1: (60, 60), 2: (61, 61)})
    fake.labels = ["yes", "no"]
    fake.signals = {1: _classification_signal("content-free-calibrated"), 2: _classification_signal("vote")}
    _, rounds = _run(tmp_path, monkeypatch, fake, rounds=2)
    assert fake.labellers == {1: "content-free-calibrated", 2: "vote"}
    assert fake.checked == {1: "round 0", 2: "round 1"}  # each check asks the student that would synthesise
    assert rounds[1].signal["chosen"] == "content-free-calibrated" and rounds[2].status == "done"


def test_too_few_rows_or_one_label_is_no_data(tmp_path, monkeypatch):
    fake = FakeStages(tmp_path, rows={1: 15, 2: 40}, scores={0: (50, 50)})
    fake.labels = ["yes"]
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=2, min_train_rows=16)
    assert rounds[1].status == "no_data" and "fewer than loop.min_train_rows 16" in rounds[1].error
    assert rounds[2].status == "no_data" and "the one label 'yes', fewer than loop.min_train_labels 2" in rounds[2].error
    assert fake.trained_on == {} and summary["final_round"] == 0


CONSTANT_SKILL = {"balanced_accuracy": 50.0, "chance": 50.0, "macro_f1": 33.3, "labels_predicted": 1,
                  "best_constant": 53.0, "label_answers": 100.0}
NO_FORMAT_SKILL = {**CONSTANT_SKILL, "balanced_accuracy": 0.0, "labels_predicted": 0, "label_answers": 0.0}


def test_the_summary_and_report_say_in_words_what_the_final_student_is(tmp_path, monkeypatch):
    from selfguide_lite.runs import summary_lines

    fake = FakeStages(tmp_path, rows={1: 40}, scores={0: (0, 0), 1: (50, 53)})
    fake.labels, fake.skills = ["support", "undermine"], {0: NO_FORMAT_SKILL, 1: CONSTANT_SKILL}
    fake.signals = {1: _classification_signal("vote", "above chance: vote labels this round")}
    summary, rounds = _run(tmp_path, monkeypatch, fake, rounds=1)
    lines = summary_lines(summary)
    text = "\n".join(lines)
    assert "round 0: validation 0.0, test 0.0  [validation: not in the answer format; test: not in the answer format]" in text
    assert "signal check: above chance: vote labels this round" in text
    final = next(line for line in lines if line.startswith("final student"))
    assert final.endswith("[validation: constant answer (format only); test: constant answer (format only)]")
    assert "it learned the answer format, not the task" in text
    assert any(line.startswith("use it in Ollama (validation: constant answer") for line in lines)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["final"]["verdict"] == {"validation": "constant answer (format only)",
                                            "test": "constant answer (format only)"}
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Signal check before each round" in page and "it learned the answer format, not the task" in page


def test_a_task_train_list_is_announced_not_silently_dropped(tmp_path, monkeypatch):
    """Gold examples (`train:`) are read and checked, but no round trains on them yet: the run says so."""
    fake = FakeStages(tmp_path, rows={1: 3}, scores={0: (50, 50), 1: (60, 60)})
    fake.install(monkeypatch)
    task = tmp_path / "t.yaml"
    task.write_text("instruction: Say it.\ntype: generation\nexamples:\n  - {input: a, output: b}\n"
                    "eval:\n  - {input: c, output: d}\ntrain:\n  - {input: e, output: f}\n")
    cfg = Config.model_validate({"task": str(task), "model": "fake", "run_dir": str(tmp_path / "run"),
                                 "loop": {"rounds": 1, "min_train_rows": 1}})
    said: list[str] = []
    loop.run_loop(cfg, log=said.append)
    assert any("its 1 train: examples are checked" in line and "not trained on" in line for line in said), said
