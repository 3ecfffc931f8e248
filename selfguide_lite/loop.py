"""The rounds (SPEC 4, 7): the only place that knows the order of stages.

round 0: convert + quantize the base, evaluate it.
round k: synthesise with the current student's GGUF -> train a LoRA (from the base or the previous
student's merged weights) -> merge, convert, quantize -> evaluate -> promote or not.

Every stage goes through `Manifest.run_stage`, so a re-run skips finished stages whose inputs are
unchanged and an interrupted run resumes at the stage that was cut off. A round whose synthesis
leaves no training data is recorded as such and the loop goes on with the same student.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .config import Config
from .engine import open_sampler
from .engine.journal import JournaledSampler
from .errors import UserError
from .evaluate import evaluate
from .export import export, gguf_from_hf
from .models import fidelity_line, resolve_student
from .prompts import PromptFormat
from .report import write_report
from .selfguide import synthesize
from .store import (
    Manifest,
    atomic_write_text,
    file_hash,
    output_dir,
    read_json,
    read_jsonl,
    value_hash,
    write_json,
    write_jsonl,
)
from .tasks import SPLITS, Task, load_seed_pool, load_task
from .train import TrainingDiverged, train_adapter

Log = Callable[[str], None]
JOURNAL = "journal.jsonl"  # every request's completions, keyed by request id; replayed on resume, kept as the record


@dataclass
class Student:
    round: int
    gguf: Path
    hf_dir: str  # the 16-bit weights this student was exported from
    score: float


def _gguf_name(cfg: Config) -> str:
    return f"model-{cfg.export.quant}.gguf"


def sampler_record(cfg: Config, sampler: Any) -> dict[str, Any]:
    """Which model answered, for the manifest: local llama.cpp, or which servers and how many samples each."""
    inner = getattr(sampler, "inner", sampler)
    if cfg.engine.endpoints:
        return {"sampler": "endpoints", "endpoints": list(cfg.engine.endpoints),
                "served_by": dict(getattr(inner, "served_by", {}))}
    return {"sampler": f"local llama.cpp ({cfg.engine.backend})"}


def run_synthesis(cfg: Config, task: Task, student_gguf: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """One Self-Guide synthesis with the given student: writes train/dropped/stats under out_dir."""
    identity = value_hash([file_hash(student_gguf), cfg.selfguide.model_dump(), task.name, seed])
    with JournaledSampler(open_sampler(student_gguf, cfg.engine), out_dir / JOURNAL, identity) as sampler:
        result = synthesize(task, sampler, cfg.selfguide, PromptFormat.from_info(sampler.info), seed=seed)
        write_jsonl(out_dir / "dropped.jsonl", result.dropped)
        write_json(out_dir / "stats.json", result.stats)
        write_jsonl(out_dir / "train.jsonl", result.train)  # written last: its presence marks the stage done
    return {**result.stats, "replayed_requests": sampler.replayed, **sampler_record(cfg, sampler)}


def run_self_instruct(cfg: Config, seeds_path: str, student_gguf: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """One Self-Instruct bootstrap: instructions + instances, as prompt/completion training rows."""
    from .selfinstruct import bootstrap, selfinstruct_training_rows

    seeds = load_seed_pool(seeds_path, cfg.selfinstruct.bad_seed_lines, warn=print)
    identity = value_hash([file_hash(student_gguf), cfg.selfinstruct.model_dump(), file_hash(seeds_path), seed])
    with JournaledSampler(open_sampler(student_gguf, cfg.engine), out_dir / JOURNAL, identity) as sampler:
        result = bootstrap(seeds, sampler, cfg.selfinstruct, PromptFormat.from_info(sampler.info), seed=seed)
        write_jsonl(out_dir / "dropped.jsonl", result.dropped)
        write_json(out_dir / "stats.json", result.stats)
        write_jsonl(out_dir / "instances.jsonl", result.train)
        write_jsonl(out_dir / "train.jsonl", selfinstruct_training_rows(result.train))
    return {**result.stats, "replayed_requests": sampler.replayed, **sampler_record(cfg, sampler)}


def evaluate_student(cfg: Config, tasks: list[Task], gguf: Path, out_path: Path) -> dict[str, Any]:
    """Evaluate on one task (Self-Guide) or several zero-shot (Self-Instruct), validation and test
    apart; writes eval.json. Validation scores decide promotion; test scores are only reported."""
    kwargs: dict[str, Any] = {}
    if cfg.loop.method == "self-instruct":
        from .selfinstruct import zero_shot_prompt

        kwargs = {"prompt_fn": zero_shot_prompt, "extra_stops": ("\n###",)}
    per_task = []
    with open_sampler(gguf, cfg.engine) as sampler:
        if not _use_chat_template(cfg):
            kwargs["fmt"] = PromptFormat(None, sampler.info.bos_token, sampler.info.eos_token)
        for task in tasks:
            per_task.append(evaluate(task, sampler, cfg.eval, **kwargs))
        answered = sampler_record(cfg, sampler)
    summary: dict[str, Any] = {
        "model": str(gguf),
        "primary_metric": per_task[0]["primary_metric"] if len(per_task) == 1 else "rougeL",
    }
    for split in SPLITS:
        scored = [r[split] for r in per_task if r.get(split)]
        summary[split] = None if not scored else {
            "n": sum(r["n"] for r in scored),
            "exact_match": sum(r["exact_match"] for r in scored) / len(scored),
            "rougeL": sum(r["rougeL"] for r in scored) / len(scored),
        }
        if summary[split]:
            summary[split]["primary"] = summary[split][summary["primary_metric"]]
    if summary["validation"] is None:
        raise UserError(f"no validation instances to evaluate on ({', '.join(t.name for t in tasks)})")
    summary.update(answered)
    summary["tasks"] = per_task
    write_json(out_path, summary)
    return {k: v for k, v in summary.items() if k != "tasks"}


def score_line(scores: dict[str, Any]) -> str:
    """'validation EM 52.0 / R-L 60.1, test EM 50.0 / R-L 58.3' for logs and summaries."""
    parts = []
    for split in SPLITS:
        m = scores.get(split)
        parts.append(f"{split} exact match {m['exact_match']:.1f}, ROUGE-L {m['rougeL']:.1f}" if m else f"{split} -")
    return "; ".join(parts)


def should_promote(validation_score: float, best_validation_score: float, tolerance: float) -> bool:
    """A round more than `tolerance` validation points below the best so far is kept but not promoted.
    Only validation scores come in here: the test set never chooses the student."""
    return validation_score >= best_validation_score - tolerance


def promoted_on_validation(scores: dict[str, Any], best_validation: float, tolerance: float) -> bool:
    """The loop's promotion decision from a round's eval summary: its validation score, never its test score."""
    return should_promote(scores["validation"]["primary"], best_validation, tolerance)


def _use_chat_template(cfg: Config) -> bool:
    """Self-Instruct may train and evaluate with the fixed template even when the model has a chat one."""
    return cfg.loop.method == "self-guide" or cfg.selfinstruct.template == "auto"


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


def run_loop(cfg: Config, log: Log = print, command: str | None = None) -> dict[str, Any]:
    """Round 0 then rounds 1..N. Returns a summary with the run directory and the final GGUF.

    `command` (the command line that started this invocation) is recorded in the manifest; every
    resume appends its own, so the report shows how the run came about."""
    method = cfg.loop.method
    if cfg.model is None:
        raise UserError("no --model given")
    if method == "self-guide" and not cfg.task:
        raise UserError("self-guide needs --task")
    if method == "self-instruct" and not cfg.seeds:
        raise UserError("self-instruct needs --seeds")
    if method == "self-guide":
        tasks = [load_task(cfg.task, cfg.task_type, cfg.labels)]
        task_files = [cfg.task]
    else:
        task_files = cfg.eval_tasks or ([cfg.task] if cfg.task else [])
        if not task_files:
            raise UserError("self-instruct needs --eval-tasks (Natural Instructions task files to evaluate on)")
        tasks = [load_task(p) for p in task_files]
        load_seed_pool(cfg.seeds, cfg.selfinstruct.bad_seed_lines, warn=log)  # fail early on a bad seed file

    run_dir = resolve_run_dir(cfg, log=log)
    manifest = Manifest(run_dir / "manifest.json")  # refuses a run directory it cannot resume, before any write
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    manifest.data.update(method=method, model=cfg.model, task=cfg.task, seeds=cfg.seeds)
    if command:
        manifest.data.setdefault("commands", []).append(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {command}")
    source = resolve_student(cfg.model, log)  # a GGUF student is imported here, once (cached)
    base = source.hf_dir
    if source.imported and manifest.data.get("import", {}).get("sha256") != source.imported["sha256"]:
        record = {k: v for k, v in source.imported.items() if k != "cached"}
        manifest.data["import"] = record  # recorded with the run; printed once (a fresh import printed it)
        if source.imported["cached"]:
            log(fidelity_line(Path(record["source"]).name, record["fidelity"]))
    base_hash = file_hash(base)
    tasks_hash = value_hash([file_hash(p) for p in task_files] + [cfg.task_type, cfg.labels])
    eval_hash = value_hash(cfg.eval.model_dump())
    gguf_name = _gguf_name(cfg)
    # --endpoint: the servers were started on the base model, so only the base student is sampled
    # there; a student the loop exported itself is sampled locally (restart the servers with its GGUF
    # and run `synth`/`eval` with --endpoint to use them; see docs/scaling-out.md).
    local_cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"endpoints": []})})
    engine_hash = value_hash(cfg.engine.model_dump(exclude={"endpoints", "timeout_s", "retries"}))

    log(f"run directory: {run_dir}")
    # Round 0: the base as it is. A student given as a GGUF is sampled from that very file (no second
    # quantization); a checkpoint is converted and quantized first.
    r0 = run_dir / "round-0"
    if source.gguf is not None:
        base_gguf = source.gguf
    else:
        base_gguf = r0 / gguf_name
        manifest.run_stage("round-0/export", {"model": base_hash, "quant": cfg.export.quant}, [base_gguf],
                           partial(_base_export_stage, base, base_gguf, cfg), log)
    rec = manifest.run_stage("round-0/eval", {"gguf": file_hash(base_gguf), "tasks": tasks_hash, "eval": eval_hash},
                             [r0 / "eval.json"], partial(evaluate_student, cfg, tasks, base_gguf, r0 / "eval.json"), log)
    score0 = read_json(r0 / "eval.json")
    log(f"round 0 (base): {score_line(score0)}")
    manifest.data["rounds"]["0"] = {"status": "done", "gguf": _in_run(base_gguf, run_dir),
                                    "metrics": _metrics(score0), "promoted": True, "seconds": rec.get("seconds")}
    manifest.save()
    student = best = Student(0, base_gguf, base, score0["validation"]["primary"])

    for k in range(1, cfg.loop.rounds + 1):
        rk = run_dir / f"round-{k}"
        synth_dir = rk / "synth"
        seed = cfg.seed + k
        stage_cfg = cfg if student.round == 0 else local_cfg
        where = f"on {len(cfg.engine.endpoints)} server(s)" if stage_cfg.engine.endpoints else "locally"
        log(f"round {k}: synthesising with the round-{student.round} student ({where})")
        if method == "self-guide":
            synth_fn = partial(run_synthesis, stage_cfg, tasks[0], student.gguf, synth_dir, seed)
            synth_cfg = cfg.selfguide.model_dump()
        else:
            synth_fn = partial(run_self_instruct, stage_cfg, cfg.seeds, student.gguf, synth_dir, seed)
            synth_cfg = cfg.selfinstruct.model_dump()
        manifest.run_stage(
            f"round-{k}/synth",
            {"student": file_hash(student.gguf), "tasks": tasks_hash, "seeds": file_hash(cfg.seeds) if cfg.seeds else "",
             "cfg": value_hash([synth_cfg, engine_hash]), "seed": str(seed)},
            [synth_dir / "train.jsonl", synth_dir / "stats.json"], synth_fn, log)
        stats = read_json(synth_dir / "stats.json")
        data = training_data(cfg, run_dir, k, synth_dir / "train.jsonl")
        n_rows = len(read_jsonl(data))
        round_rec: dict[str, Any] = {"train_size": n_rows, "synth_stats": stats, "student_round": student.round}
        if n_rows == 0:
            log(f"round {k}: no training data survived the filters; keeping the round-{student.round} student")
            manifest.data["rounds"][str(k)] = {**round_rec, "status": "no_data", "promoted": False}
            manifest.save()
            continue
        log(f"round {k}: {n_rows} training rows")

        train_base = base if cfg.loop.train_from == "base" else student.hf_dir
        adapter = rk / "adapter"
        try:
            manifest.run_stage(
                f"round-{k}/train",
                {"data": file_hash(data), "base": file_hash(train_base),
                 "cfg": value_hash([cfg.train.model_dump(), _use_chat_template(cfg)])},
                [adapter], partial(train_adapter, data, train_base, adapter, cfg.train, log, _use_chat_template(cfg)), log)
        except TrainingDiverged as exc:
            log(f"round {k}: {exc}; keeping the round-{student.round} student")
            manifest.data["rounds"][str(k)] = {**round_rec, "status": "diverged", "error": str(exc), "promoted": False}
            manifest.save()
            continue
        gguf, merged = rk / gguf_name, rk / "merged"
        manifest.run_stage(
            f"round-{k}/export",
            {"adapter": file_hash(adapter), "base": file_hash(train_base), "quant": cfg.export.quant},
            [gguf, merged],
            partial(_export_stage, train_base, adapter, gguf, merged, cfg),
            log)
        manifest.run_stage(
            f"round-{k}/eval", {"gguf": file_hash(gguf), "tasks": tasks_hash, "eval": eval_hash},
            [rk / "eval.json"], partial(evaluate_student, local_cfg, tasks, gguf, rk / "eval.json"), log)
        scores = read_json(rk / "eval.json")
        promoted = promoted_on_validation(scores, best.score, cfg.loop.promote_tolerance)
        log(f"round {k}: {score_line(scores)}  ("
            + ("promoted" if promoted else f"not promoted: validation below the best {best.score:.1f} by more than "
               f"{cfg.loop.promote_tolerance}") + ")")
        manifest.data["rounds"][str(k)] = {**round_rec, "status": "done", "gguf": _in_run(gguf, run_dir),
                                           "metrics": _metrics(scores), "promoted": promoted}
        if promoted:
            student = Student(k, gguf, str(merged), scores["validation"]["primary"])
            if student.score > best.score:
                best = student
        manifest.save()

    manifest.data["final"] = {"round": student.round, "gguf": str(student.gguf),
                              "best_round": best.round, "best_validation_score": best.score}
    manifest.save()
    report = write_report(run_dir)
    return {"run_dir": str(run_dir), "final_gguf": str(student.gguf), "final_round": student.round,
            "report": str(report), "rounds": manifest.data["rounds"]}


def resolve_run_dir(cfg: Config, fresh: bool = False, resume: bool = False, log: Log = print) -> Path:
    """The one rule for where a run lives: `run_dir`, else runs/<task name> (Self-Guide) or
    runs/self-instruct; `fresh` moves an existing run aside to NAME-2, NAME-3...; `resume` insists on
    a run to resume. A path that is (or lies under) a file is a user error, not a crash."""
    chosen = output_dir(Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg), "run directory")
    if fresh and chosen.exists() and any(chosen.iterdir()):
        chosen = next_free_run_dir(chosen)
        log(f"--fresh: starting over in {chosen}")
    if resume and not (chosen / "manifest.json").is_file():
        raise UserError(f"--resume: no run to resume in {chosen} (no manifest.json)")
    return chosen


def default_run_dir(cfg: Config) -> Path:
    """runs/<task file name> for Self-Guide, runs/self-instruct otherwise."""
    if cfg.loop.method == "self-guide" and cfg.task:
        return Path("runs") / Path(cfg.task).stem
    return Path("runs") / "self-instruct"


def next_free_run_dir(path: Path) -> Path:
    """`--fresh`: NAME-2, NAME-3, ... beside an existing run, never touching it."""
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def _base_export_stage(base: str, out: Path, cfg: Config) -> dict[str, Any]:
    return {"gguf": str(gguf_from_hf(base, out, cfg.export.quant))}


def _export_stage(base: str, adapter: Path, gguf: Path, merged: Path, cfg: Config) -> dict[str, Any]:
    return {"gguf": str(export(base, adapter, gguf, cfg.export.quant, merged, cfg.export.keep_f16_gguf))}


def _in_run(path: Path, run_dir: Path) -> str:
    """A path relative to the run directory when inside it (the run can move), else absolute."""
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path.resolve())


def _metrics(scores: dict[str, Any]) -> dict[str, Any]:
    """A round's scores in the manifest: the primary metric's name, then validation and test apart."""
    return {"primary_metric": scores["primary_metric"], **{split: scores[split] for split in SPLITS}}


def clean_partial(run_dir: Path) -> None:
    """Remove temporary artifacts a killed process may have left (never finished outputs)."""
    for tmp in run_dir.rglob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
