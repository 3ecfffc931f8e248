"""Run directories (where a run lives, what a killed one left) and the typed records of a run, written by
the loop and read by the CLI summary, the report and scripts.

A round's record lives in `manifest.json` under `rounds/<k>`; these dataclasses are the one place
that knows its fields, so every reader sees the same names.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UserError
from .metrics import skill_line, verdict, verdict_sentence
from .store import output_dir, read_json
from .tasks import SPLITS

# --- run directory -------------------------------------------------------------------------------

def resolve_run_dir(run_dir: str | None, run_name: str, fresh: bool = False, resume: bool = False,
                    log: Callable[[str], None] = print) -> Path:
    """The one rule for where a run lives: `run_dir`, else runs/<the method's run name>; `fresh` moves an
    existing run aside to NAME-2, NAME-3...; `resume` insists on a run to resume. A path that is (or lies
    under) a file is a user error, not a crash."""
    chosen = output_dir(Path(run_dir) if run_dir else Path("runs") / run_name, "run directory")
    if fresh and chosen.exists() and any(chosen.iterdir()):
        chosen = next_free_run_dir(chosen)
        log(f"--fresh: starting over in {chosen}")
    if resume and not (chosen / "manifest.json").is_file():
        raise UserError(f"--resume: no run to resume in {chosen} (no manifest.json)")
    return chosen


def next_free_run_dir(path: Path) -> Path:
    """`--fresh`: NAME-2, NAME-3, ... beside an existing run, never touching it."""
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def clean_partial(run_dir: Path) -> None:
    """Remove temporary artifacts a killed process may have left (never finished outputs)."""
    for tmp in run_dir.rglob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def in_run(path: Path, run_dir: Path) -> str:
    """A path relative to the run directory when inside it (the run can move), else absolute."""
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path.resolve())



@dataclass(frozen=True)
class SplitScores:
    """Scores on one split of the held-out instances (means over tasks for Self-Instruct)."""

    n: int
    exact_match: float
    rougeL: float
    primary: float
    skill: dict[str, Any] | None = None  # evaluate.skill_scores (absent in runs written before it)

    @property
    def verdict(self) -> str | None:
        """What the student is on this split, in words (metrics.verdict)."""
        return verdict(self.skill, self.rougeL)


@dataclass(frozen=True)
class RoundScores:
    """A round's evaluation: the primary metric's name, validation (decides) and test (only reported)."""

    primary_metric: str
    validation: SplitScores
    test: SplitScores | None

    @classmethod
    def from_eval(cls, summary: dict[str, Any]) -> RoundScores:
        """From an `eval.json` summary (or a manifest's `metrics`)."""
        def split(name: str) -> SplitScores | None:
            d = summary.get(name)
            return SplitScores(**{f.name: d[f.name] for f in fields(SplitScores) if f.name in d}) if d else None

        validation = split("validation")
        if validation is None:
            raise ValueError("an evaluation without validation scores")
        return cls(summary["primary_metric"], validation, split("test"))

    def get(self, split: str) -> SplitScores | None:
        return self.validation if split == "validation" else self.test

    def to_dict(self) -> dict[str, Any]:
        return {"primary_metric": self.primary_metric,
                **{s: ({**asdict(self.get(s)), "verdict": self.get(s).verdict} if self.get(s) else None) for s in SPLITS}}


@dataclass(frozen=True)
class RoundRecord:
    """One round: `status` is done, no_signal (the signal check found the student's labels at chance:
    not trained, the loop ends; `signal` holds what it measured), no_data (too few training rows, or one
    label only: `error` says which), diverged, or export_rejected (the exported GGUF failed the gate;
    `gate` holds the checks' numbers)."""

    status: str
    promoted: bool
    metrics: RoundScores | None = None
    gguf: str | None = None
    train_size: int | None = None
    synth_stats: dict[str, Any] | None = None
    student_round: int | None = None  # which student synthesised this round's data
    seconds: float | None = None
    error: str | None = None
    gate: dict[str, Any] | None = None
    signal: dict[str, Any] | None = None  # the signal check before the round (methods/label_signal.py)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.metrics is not None:
            out["metrics"] = self.metrics.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if values.get("metrics"):
            values["metrics"] = RoundScores.from_eval(values["metrics"])
        return cls(**values)


def read_rounds(run_dir: str | Path) -> dict[int, RoundRecord]:
    """Every recorded round of a run directory, by round number."""
    manifest = read_json(Path(run_dir) / "manifest.json")
    return rounds_of(manifest)


def rounds_of(manifest: dict[str, Any]) -> dict[int, RoundRecord]:
    return {int(k): RoundRecord.from_dict(v) for k, v in sorted(manifest.get("rounds", {}).items(), key=lambda kv: int(kv[0]))}


def ollama_model_name(run_name: str) -> str:
    """A model name Ollama accepts (lowercase letters, digits, '-', '_', '.') for a run's final student."""
    import re

    cleaned = re.sub(r"[^a-z0-9._-]+", "-", run_name.lower()).strip("-._")
    return f"selfguide-{cleaned or 'student'}"


NOT_TRAINED = ("no_signal", "no_data")  # round statuses that stop before training


def verdict_pair(scores: RoundScores) -> str:
    """'validation: reads; test: constant answer (format only)' ('' where there are no skill columns)."""
    parts = [f"{split}: {s.verdict}" for split in SPLITS if (s := scores.get(split)) is not None and s.verdict]
    return "; ".join(parts)


def summary_lines(summary: dict) -> list[str]:
    """Per round: training rows, validation and test scores of the primary metric, promotion."""
    rounds = rounds_of(summary)
    first = rounds[0].metrics if 0 in rounds else None
    name = {"exact_match": "exact match", "rougeL": "ROUGE-L"}[first.primary_metric if first else "exact_match"]
    lines = [f"{name} per round (validation decides promotion; test is only reported):"]

    def cell(k: int, split: str) -> str:
        s = rounds[k].metrics.get(split) if rounds[k].metrics else None
        if s is None:
            return "-"
        base = first.get(split) if first else None
        return f"{s.primary:.1f}" + (f" ({s.primary - base.primary:+.1f})" if base and k != 0 else "")

    for k, rec in rounds.items():
        state = "" if rec.promoted else f"  not {'trained' if rec.status in NOT_TRAINED else 'promoted'} ({rec.status})"
        rows = "" if k == 0 or rec.status == "no_signal" else f", {rec.train_size or 0} training rows"
        said = verdict_pair(rec.metrics) if rec.metrics else ""
        lines.append(f"  round {k}: validation {cell(k, 'validation')}, test {cell(k, 'test')}{rows}{state}"
                     + (f"  [{said}]" if said else ""))
        if rec.signal:
            lines.append(f"    signal check: {rec.signal['line']}")
        if rec.status == "no_data" and rec.error:
            lines.append(f"    not trained: {rec.error}")
        test = rec.metrics.test if rec.metrics else None
        if test is not None and test.skill:
            lines.append(f"    test, beside the trivial answers: {skill_line(test.skill)}")
    gguf = Path(summary["final_gguf"])
    modelfile = gguf.with_suffix(".Modelfile")
    final = rounds.get(summary["final_round"])
    said = verdict_pair(final.metrics) if final and final.metrics else ""
    lines.append(f"final student (round {summary['final_round']}, the best on validation): {gguf}"
                 + (f"  [{said}]" if said else ""))
    sentence = verdict_sentence(final.metrics.validation.verdict) if final and final.metrics else None
    if sentence:
        lines.append(f"  {sentence}")
    if modelfile.is_file():
        name = ollama_model_name(Path(summary["report"]).parent.name)
        lines.append(f"use it in Ollama ({said or 'no verdict'}): ollama create {name} -f {modelfile}  &&  "
                     f"ollama run {name}")
    lines.append(f"report: {summary['report']}")
    return lines
