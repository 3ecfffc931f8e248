"""The rounds: the only place that knows the order of stages (docs/contract.md, "Rounds").

    run_loop -> start_run -> round_zero -> run_round(k) for k = 1..N -> the report
    run_round: stage_signal -> stage_synth -> training_data -> stage_train -> stage_export -> stage_eval -> promote?

Round 0 evaluates the student as given (a GGUF student is sampled from its own file; a checkpoint is
converted and quantized first). Round k synthesises with the current student's GGUF, trains a LoRA (from
the base or the previous student's merged weights), merges, converts and quantizes, evaluates on validation
and test, and is promoted only on its validation score. Every stage goes through `RunContext.stage`, which
derives the stage's cache key from its declared inputs in one place, so a re-run skips finished stages whose
inputs are unchanged and an interrupted run resumes at the stage that was cut off. What differs between
methods is asked of the `Method`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .config import Config
from .errors import UserError
from .evaluate import evaluate_student, score_line
from .export import export, gguf_from_hf
from .gate import ExportRejected, gate_line
from .methods import Method, method_for
from .methods.label_signal import RULE as SIGNAL_RULE
from .methods.stages import run_signal_check, run_synthesis
from .models import ResolvedStudent, fidelity_line, resolve_student
from .prompts import ANSWER_END_RULE
from .report import write_report
from .runs import RoundRecord, RoundScores, clean_partial, in_run, resolve_run_dir
from .store import (
    Manifest,
    atomic_write_text,
    file_hash,
    read_json,
    read_jsonl,
    value_hash,
    write_jsonl,
)
from .tasks import SPLITS, Task
from .train import TrainingDiverged, train_adapter

Log = Callable[[str], None]


@dataclass
class Student:
    round: int
    gguf: Path
    hf_dir: str  # the 16-bit weights this student was exported from
    score: float  # its validation score (the primary metric)


# --- the rules -----------------------------------------------------------------------------------

def should_promote(validation_score: float, best_validation_score: float, tolerance: float) -> bool:
    """A round more than `tolerance` validation points below the best so far is kept but not promoted.
    Only validation scores come in here: the test set never chooses the student."""
    return validation_score >= best_validation_score - tolerance


def promoted_on_validation(scores: dict[str, Any], best_validation: float, tolerance: float) -> bool:
    """The loop's promotion decision from a round's eval summary: its validation score, never its test score."""
    return should_promote(scores["validation"]["primary"], best_validation, tolerance)


def training_data(cfg: Config, run_dir: Path, k: int, latest: Path) -> Path:
    """This round's set, or (data: accumulate) every round's set so far, deduplicated."""
    if cfg.loop.data == "latest":
        return latest
    seen, rows = set(), []
    for j in range(1, k + 1):
        path = run_dir / f"round-{j}" / "synth" / "train.jsonl"
        for row in read_jsonl(path) if path.is_file() else []:
            key = (row["prompt"], row["completion"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    out = run_dir / f"round-{k}" / "train_accumulated.jsonl"
    write_jsonl(out, rows)
    return out


# --- one run -------------------------------------------------------------------------------------

@dataclass
class RunContext:
    """Everything the stages of one run share."""

    cfg: Config
    method: Method
    tasks: list[Task]
    source: ResolvedStudent
    run_dir: Path
    manifest: Manifest
    log: Log

    @property
    def gguf_name(self) -> str:
        return f"model-{self.cfg.export.quant}.gguf"

    @property
    def local_cfg(self) -> Config:
        """--endpoint: the servers were started on the base model, so only the base student is sampled
        there; a student the loop exported itself is sampled locally (docs/scaling-out.md)."""
        return self.cfg.model_copy(update={"engine": self.cfg.engine.model_copy(update={"endpoints": []})})

    def stage(self, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any]) -> dict[str, Any]:
        """Run one stage through the manifest's cache. Its key is derived here from its declared inputs:
        a Path is hashed by content (file or directory), a string is taken as is, anything else is
        hashed as a value."""
        key = {k: self.manifest.input_hash(v) if isinstance(v, Path) else v if isinstance(v, str) else value_hash(v)
               for k, v in inputs.items()}
        return self.manifest.run_stage(name, key, outputs, fn, self.log)

    @property
    def tasks_key(self) -> str:
        return value_hash([file_hash(p) for p in self.method.input_files()] + [self.cfg.task_type, self.cfg.labels])

    @property
    def engine_key(self) -> str:
        return value_hash(self.cfg.engine.model_dump(exclude={"endpoints", "timeout_s", "retries"}))

    def save_round(self, k: int, record: RoundRecord) -> None:
        self.manifest.data["rounds"][str(k)] = record.to_dict()
        self.manifest.save()


def start_run(cfg: Config, log: Log, command: str | None) -> RunContext:
    """Check the inputs, resolve (import once) the student, open the run directory and its manifest."""
    if cfg.model is None:
        raise UserError("no --model given")
    method = method_for(cfg)
    method.check_inputs()
    tasks = method.eval_tasks()
    for task in tasks:  # refused before any file is written: every check the task files allow comes first
        if not task.split("validation", cfg.eval.validation_size, cfg.eval.test_size):
            raise UserError(f"task {task.name} has no evaluation instances to validate on: give it an 'eval:' list "
                            "(or 'validation:'), whose answers decide promotion and the final student")
        if task.train_instances and not cfg.selfguide.gold_per_label:  # docs/usage.md, "Gold examples"
            log(f"{task.name}: its {len(task.train_instances)} train: examples are checked but not trained on")
    run_dir = resolve_run_dir(cfg.run_dir, method.default_run_name(), log=log)
    manifest = Manifest(run_dir / "manifest.json")  # refuses a run directory it cannot resume, before any write
    source = resolve_student(cfg.model, log)  # a GGUF student is imported here, once (cached)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    manifest.data.update(method=method.name, model=cfg.model, task=cfg.task, seed_tasks=cfg.seed_tasks)
    if command:
        manifest.data.setdefault("commands", []).append(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {command}")
    if source.imported and manifest.data.get("import", {}).get("sha256") != source.imported["sha256"]:
        record = {k: v for k, v in source.imported.items() if k != "cached"}
        manifest.data["import"] = record  # recorded with the run; printed once (a fresh import printed it)
        if source.imported["cached"]:
            log(fidelity_line(Path(record["source"]).name, record["fidelity"]))
    if cfg.export.quant == "auto":
        from .export import parameter_count, resolve_quant

        quant = resolve_quant("auto", source.hf_dir)
        cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"quant": quant})})
        log(f"export.quant auto: {quant} ({parameter_count(source.hf_dir) / 1e6:.0f}M parameters)")
    log(f"run directory: {run_dir}")
    return RunContext(cfg, method, tasks, source, run_dir, manifest, log)


def stage_eval(ctx: RunContext, k: int, gguf: Path, cfg: Config | None = None) -> dict[str, Any]:
    out = ctx.run_dir / f"round-{k}" / "eval.json"
    # "cap": the answer cap's rule (demonstrations + validation since 2026-12-04, was all references);
    # "stops": where answers end (prompts.ANSWER_END_RULE; before 2026-12-04 a chat student had none)
    rec = ctx.stage(f"round-{k}/eval", {"gguf": gguf, "tasks": ctx.tasks_key, "eval": ctx.cfg.eval.model_dump(),
                                        "cap": "demos+validation", "stops": ANSWER_END_RULE},
                    [out], partial(evaluate_student, cfg or ctx.local_cfg, ctx.method, ctx.tasks, gguf, out))
    return {**read_json(out), "seconds": rec.get("seconds")}


def round_zero(ctx: RunContext) -> Student:
    """The student as given: its own GGUF when it came as one (no second quantization), else converted."""
    base = ctx.source.hf_dir
    if ctx.source.gguf is not None:
        base_gguf = ctx.source.gguf
    else:
        base_gguf = ctx.run_dir / "round-0" / ctx.gguf_name
        ctx.stage("round-0/export", {"model": Path(base), "quant": ctx.cfg.export.quant}, [base_gguf],
                  partial(_base_export, base, base_gguf, ctx.cfg))
    scores = stage_eval(ctx, 0, base_gguf, ctx.cfg)
    ctx.log(f"round 0 (base): {score_line(scores)}")
    ctx.save_round(0, RoundRecord("done", True, RoundScores.from_eval(scores), in_run(base_gguf, ctx.run_dir),
                                  seconds=scores["seconds"]))
    return Student(0, base_gguf, base, scores["validation"]["primary"])


def stage_signal(ctx: RunContext, k: int, student: Student) -> dict[str, Any] | None:
    """Before round k trains: do the student's own labels agree with the truth (validation)? None: the
    method has no such check."""
    if not ctx.method.checks_signal:
        return None
    out = ctx.run_dir / f"round-{k}" / "signal.json"
    stage_cfg = ctx.local_cfg  # in-process llama.cpp even with --endpoint: the score labellers need log-probabilities
    ctx.log(f"round {k}: signal check with the round-{student.round} student")
    ctx.stage(f"round-{k}/signal",
              {"student": student.gguf, "tasks": ctx.tasks_key, "rule": SIGNAL_RULE, "seed": str(ctx.cfg.seed + k),
               "cfg": [ctx.cfg.selfguide.key_dump(), ctx.cfg.eval.model_dump(), ctx.engine_key]},
              [out], partial(run_signal_check, stage_cfg, ctx.method, student.gguf, out, ctx.cfg.seed + k))
    report = read_json(out)
    ctx.log(f"round {k}: signal check: {report['line']}")
    return report


def stage_synth(ctx: RunContext, k: int, student: Student, method: Method) -> Path:
    synth_dir = ctx.run_dir / f"round-{k}" / "synth"
    seed = ctx.cfg.seed + k
    stage_cfg = ctx.cfg if student.round == 0 else ctx.local_cfg
    where = f"on {len(ctx.cfg.engine.endpoints)} server(s)" if stage_cfg.engine.endpoints else "locally"
    ctx.log(f"round {k}: synthesising with the round-{student.round} student ({where})")
    ctx.stage(f"round-{k}/synth",
              {"student": student.gguf, "tasks": ctx.tasks_key, "cfg": [method.settings(), ctx.engine_key],
               "seed": str(seed), "stops": ANSWER_END_RULE},
              [synth_dir / "train.jsonl", synth_dir / "stats.json"],
              partial(run_synthesis, stage_cfg, method, student.gguf, synth_dir, seed))
    return synth_dir


def too_little(rows: list[dict[str, Any]], stats: dict[str, Any], min_rows: int, min_labels: int) -> str | None:
    """Why a round's training rows are too few to train on (None: enough): fewer than `min_rows`, or a
    classification round whose rows carry fewer than `min_labels` labels (one label can only teach a
    constant answer)."""
    if len(rows) < min_rows:
        return f"{len(rows)} training row(s), fewer than loop.min_train_rows {min_rows}"
    labels = sorted({r["completion"] for r in rows})
    if stats.get("type") == "classification" and len(labels) < min_labels:
        which = f"the one label {labels[0]!r}" if len(labels) == 1 else f"{len(labels)} labels"
        return f"the training rows carry {which}, fewer than loop.min_train_labels {min_labels}"
    return None


def stage_train(ctx: RunContext, k: int, data: Path, train_base: str) -> Path:
    adapter = ctx.run_dir / f"round-{k}" / "adapter"
    chat = ctx.method.uses_chat_template()
    ctx.stage(f"round-{k}/train", {"data": data, "base": Path(train_base), "cfg": [ctx.cfg.train.model_dump(), chat]},
              [adapter], partial(train_adapter, data, train_base, adapter, ctx.cfg.train, ctx.log, chat))
    return adapter


def gate_prompts(ctx: RunContext) -> list[str]:
    """The first validation prompts (user text) of the method's tasks, for the export gate's answers."""
    prompt_fn, _ = ctx.method.eval_prompt()
    n = ctx.cfg.export.gate_prompts
    per_task = max(1, -(-n // len(ctx.tasks)))
    texts = [prompt_fn(t, inst.input) for t in ctx.tasks for inst in t.split("validation", ctx.cfg.eval.validation_size, 0)[:per_task]]
    return texts[:n]


def stage_export(ctx: RunContext, k: int, train_base: str, adapter: Path) -> tuple[Path, Path, dict[str, Any] | None]:
    """Merge, convert, quantize, check the GGUF against the merged model (the gate); then the GGUF's
    Ollama Modelfile. Returns the GGUF, the merged weights and the gate's record (None: gate off).
    A GGUF the gate rejects is renamed *.rejected.gguf and ExportRejected is raised."""
    rk = ctx.run_dir / f"round-{k}"
    gguf, merged = rk / ctx.gguf_name, rk / "merged"
    prompts = gate_prompts(ctx) if ctx.cfg.export.gate else None
    rec = ctx.stage(f"round-{k}/export",
                    {"adapter": adapter, "base": Path(train_base), "quant": ctx.cfg.export.quant,
                     "gate": [ctx.cfg.export.model_dump(), prompts]},
                    [gguf, merged, gguf.with_suffix(".Modelfile")],
                    partial(_export, train_base, adapter, gguf, merged, ctx.cfg, prompts, ctx.method.uses_chat_template()))
    return gguf, merged, rec.get("gate")


def run_round(ctx: RunContext, k: int, student: Student, best: Student) -> tuple[RoundRecord, Student | None]:
    """One round from the current student; returns its record and the new student if it was promoted."""
    signal = stage_signal(ctx, k, student)
    method = ctx.method
    if signal is not None and signal["type"] == "classification":
        if signal["chosen"] is None:
            ctx.log(f"round {k}: not trained (no signal); keeping the round-{student.round} student")
            return RoundRecord("no_signal", False, student_round=student.round, signal=signal), None
        method = method.with_labeller(signal["chosen"])
    synth_dir = stage_synth(ctx, k, student, method)
    stats = read_json(synth_dir / "stats.json")
    data = training_data(ctx.cfg, ctx.run_dir, k, synth_dir / "train.jsonl")
    rows = read_jsonl(data)
    n_rows = len(rows)
    facts = {"train_size": n_rows, "synth_stats": stats, "student_round": student.round, "signal": signal}
    if why := too_little(rows, stats, ctx.cfg.loop.min_train_rows, ctx.cfg.loop.min_train_labels):
        ctx.log(f"round {k}: not trained: {why}; keeping the round-{student.round} student")
        return RoundRecord("no_data", False, error=why, **facts), None
    ctx.log(f"round {k}: {n_rows} training rows")
    train_base = ctx.source.hf_dir if ctx.cfg.loop.train_from == "base" else student.hf_dir
    try:
        adapter = stage_train(ctx, k, data, train_base)
    except TrainingDiverged as exc:
        ctx.log(f"round {k}: {exc}; keeping the round-{student.round} student")
        return RoundRecord("diverged", False, error=str(exc), **facts), None
    try:
        gguf, merged, gate = stage_export(ctx, k, train_base, adapter)
    except ExportRejected as exc:
        ctx.log(f"round {k}: {exc}; keeping the round-{student.round} student")
        return RoundRecord("export_rejected", False, error=str(exc), gate=exc.record, **facts), None
    if gate:
        ctx.log(f"round {k}: export check passed ({gate_line(gate)})")
    scores = stage_eval(ctx, k, gguf)
    promoted = promoted_on_validation(scores, best.score, ctx.cfg.loop.promote_tolerance)
    ctx.log(f"round {k}: {score_line(scores)}  ("
            + ("promoted" if promoted else f"not promoted: validation below the best {best.score:.1f} by more than "
               f"{ctx.cfg.loop.promote_tolerance}") + ")")
    record = RoundRecord("done", promoted, RoundScores.from_eval(scores), in_run(gguf, ctx.run_dir), gate=gate, **facts)
    return record, (Student(k, gguf, str(merged), scores["validation"]["primary"]) if promoted else None)


def run_loop(cfg: Config, log: Log = print, command: str | None = None) -> dict[str, Any]:
    """Round 0 then rounds 1..N. Returns a summary with the run directory and the final GGUF.

    `command` (the command line that started this invocation) is recorded in the manifest; every
    resume appends its own, so the report shows how the run came about."""
    ctx = start_run(cfg, log, command)
    student = best = round_zero(ctx)
    for k in range(1, cfg.loop.rounds + 1):
        record, promoted = run_round(ctx, k, student, best)
        ctx.save_round(k, record)
        if record.status == "no_signal":
            break  # the next round would check the same student
        if promoted is not None:
            student = promoted
            if student.score > best.score:
                best = student
        prune_rounds(ctx, k, {student.round, best.round})
    # The final student is the best on validation (a tie keeps the earlier one: no evidence of a gain).
    # The loop goes on from the last promoted one, which may sit within promote_tolerance below it.
    best_scores = RoundRecord.from_dict(ctx.manifest.data["rounds"][str(best.round)]).metrics
    ctx.manifest.data["final"] = {"round": best.round, "gguf": str(best.gguf), "validation_score": best.score,
                                  "last_promoted_round": student.round,
                                  "best_round": best.round, "best_validation_score": best.score,
                                  "verdict": {split: s.verdict for split in SPLITS
                                              if best_scores and (s := best_scores.get(split)) is not None}}
    ctx.manifest.save()
    report = write_report(ctx.run_dir)
    return {"run_dir": str(ctx.run_dir), "final_gguf": str(best.gguf), "final_round": best.round,
            "last_promoted_round": student.round,
            "report": str(report), "rounds": ctx.manifest.data["rounds"]}


def prune_rounds(ctx: RunContext, k: int, students: set[int]) -> int:
    """`export.keep` (contract §4): after round k, delete what neither a resume nor a later round needs.

    resume: the 16-bit merged weights of rounds 1..k except those of `students` (the current student's,
    the next base with train_from: previous; the best one's, the final 16-bit weights); promoted: also
    the GGUFs of rounds that were not promoted. A pruned output's hash stays in the manifest, so the
    stages that produced or read it are still recognised as finished. Returns the bytes freed."""
    keep = ctx.cfg.export.keep
    if keep == "all":
        return 0
    freed = 0
    for j in range(1, k + 1):
        rj = ctx.run_dir / f"round-{j}"
        if j not in students:
            freed += ctx.manifest.prune(rj / "merged", j)
        if keep == "promoted" and not ctx.manifest.data["rounds"].get(str(j), {}).get("promoted"):
            for gguf in [rj / ctx.gguf_name, *rj.glob("*.rejected.gguf")]:
                freed += ctx.manifest.prune(gguf, j)
    if freed:
        ctx.log(f"round {k}: export.keep {keep}: freed {freed / 2**20:.0f} MiB")
    return freed


def _base_export(base: str, out: Path, cfg: Config) -> dict[str, Any]:
    from .compat import converter_runtime_check
    from .usage import write_modelfile

    converter_runtime_check()
    gguf = gguf_from_hf(base, out, cfg.export.quant)
    write_modelfile(gguf)
    return {"gguf": str(gguf)}


def _export(base: str, adapter: Path, gguf: Path, merged: Path, cfg: Config, gate_prompts: list[str] | None,
            use_chat_template: bool) -> dict[str, Any]:
    from .compat import converter_runtime_check
    from .gate import check_export
    from .usage import write_modelfile

    converter_runtime_check()  # a converter the runtime cannot load fails here, in seconds, once per install
    keep_f16 = cfg.export.keep_f16_gguf or gate_prompts is not None
    out = export(base, adapter, gguf, cfg.export.quant, merged, keep_f16)
    f16 = out if cfg.export.quant in ("f16", "f32") else out.with_name(out.stem + ".f16.gguf")
    record: dict[str, Any] = {"gguf": str(out)}
    try:
        if gate_prompts is not None:
            record["gate"] = check_export(merged, f16, out, gate_prompts, cfg.export, use_chat_template)
    except ExportRejected:
        out.replace(out.with_name(out.stem + ".rejected.gguf"))  # never sampled from, kept for inspection
        raise
    finally:
        if not cfg.export.keep_f16_gguf and f16 != out:
            f16.unlink(missing_ok=True)
    write_modelfile(out)
    return record
