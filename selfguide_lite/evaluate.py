"""Greedy predictions on held-out instances, with the same prompt format as training (contract §5), and a
student's evaluation on a method's tasks (eval.json)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from . import progress
from .config import Config, EvalConfig
from .engine import open_sampler, sampler_record
from .engine.sampler import ModelInfo, Request, Sampler, SamplingParams
from .errors import UserError
from .metrics import classification_skill, input_as_answer, score_predictions, skill_line, verdict
from .prompts import FIELD_STOPS, PromptFormat, task_prompt
from .store import write_json
from .tasks import SPLITS, Instance, Task


def split_instances(task: Task, cfg: EvalConfig, splits: tuple[str, ...] = SPLITS) -> dict[str, list[Instance]]:
    """The task's held-out instances per split, sized by the config (validation decides, test reports)."""
    return {name: task.split(name, cfg.validation_size, cfg.test_size) for name in splits}


def predict(
    task: Task,
    sampler: Sampler,
    instances: list[Instance],
    cfg: EvalConfig | None = None,
    prompt_fn: Callable[[Task, str], str] = task_prompt,
    fmt: PromptFormat | None = None,
    extra_stops: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One greedy prediction per instance; all requests go to the sampler at once.

    `fmt` defaults to the student's own format (its chat template when it has one).
    """
    cfg = cfg or EvalConfig()
    fmt = fmt or PromptFormat.from_info(sampler.info)
    if not instances:
        raise UserError(f"task {task.name} has no evaluation instances")
    params = SamplingParams(
        temperature=0.0,
        max_tokens=cfg.max_tokens if cfg.max_tokens is not None else answer_cap(task, sampler, cfg),
        stop=FIELD_STOPS + extra_stops,
        choices=tuple(task.labels) if (task.is_classification and cfg.constrain_labels) else None,
    )
    requests = [Request(fmt.render(prompt_fn(task, inst.input)), params) for inst in instances]
    outs = sampler.generate(requests)
    return [
        {"id": inst.id, "input": inst.input, "prediction": out[0].text.strip(), "references": list(inst.outputs)}
        for inst, out in zip(instances, outs, strict=True)
    ]


def answer_cap(task: Task, sampler: Sampler, cfg: EvalConfig) -> int:
    """Max new tokens of an evaluation answer: twice the longest answer among the demonstrations and the
    validation references (in the student's tokens), 8 to 512. Never read from the test references,
    which are only reported, whichever split is being predicted."""
    refs = [d.output for d in task.demos]
    refs += [ref for inst in task.split("validation", cfg.validation_size, cfg.test_size) for ref in inst.outputs]
    longest = max((sampler.count_tokens(ref) for ref in refs), default=4)
    return min(512, max(8, math.ceil(2 * longest)))


def score_rows(task: Task, rows: list[dict[str, Any]], known: list | None = None) -> dict[str, Any]:
    """Metrics over the instances named in `rows`; an id not in the task is a user error."""
    pool = known if known is not None else task.instances + (task.validation_instances or [])
    by_id = {inst.id: inst for inst in pool}
    unknown = [r["id"] for r in rows if r["id"] not in by_id]
    if unknown:
        raise UserError(f"prediction id {unknown[0]!r} is not an instance of task {task.name}")
    refs = {r["id"]: by_id[r["id"]].outputs for r in rows}
    preds = {r["id"]: str(r.get("prediction") or "") for r in rows}
    scores = score_predictions(refs, preds)
    skill = skill_scores(task, [by_id[i] for i in preds], list(preds.values()))
    return {"task": task.name, **scores, "skill": skill}


def skill_scores(task: Task, instances: list[Instance], predictions: list[str]) -> dict[str, float | int]:
    """What the official metric hides: for classification, balanced accuracy against its chance, macro-F1,
    labels used and the best constant answer's exact match; for generation, the input-as-answer scores."""
    refs = [inst.outputs for inst in instances]
    if task.is_classification:
        return classification_skill(task.labels, refs, predictions)
    copied = input_as_answer([inst.input for inst in instances], refs)
    return {f"input_as_answer_{k}": v for k, v in copied.items()}


def primary_metric(task: Task) -> str:
    return "exact_match" if task.is_classification else "rougeL"


def evaluate(task: Task, sampler: Sampler, cfg: EvalConfig | None = None,
             prompt_fn: Callable[[Task, str], str] = task_prompt, fmt: PromptFormat | None = None,
             extra_stops: tuple[str, ...] = (), splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Predict on every requested split in one batch, score each split apart.

    Returns `{"task", "primary_metric", <split>: {n, exact_match, rougeL, primary, skill, predictions}}`;
    an empty split (a task with too few instances for a test set) is `None`. `primary` is exact match
    for classification, ROUGE-L for generation."""
    cfg = cfg or EvalConfig()
    parts = split_instances(task, cfg, splits)
    instances = [inst for name in splits for inst in parts[name]]
    with progress.bar(f"evaluating {task.name}", len(instances), "instances", samples=True) as bar:
        rows = predict(task, sampler, instances, cfg, prompt_fn, fmt, extra_stops)
    metric = primary_metric(task)
    result: dict[str, Any] = {"task": task.name, "primary_metric": metric}
    start, said = 0, []
    for name in splits:
        n = len(parts[name])
        chunk, start = rows[start:start + n], start + n
        if not chunk:
            result[name] = None
            said.append(f"{name}: no instances")
            continue
        scores = score_rows(task, chunk)
        skill = scores["skill"]
        result[name] = {"n": scores["n"], "exact_match": scores["exact_match"], "rougeL": scores["rougeL"],
                        "primary": scores[metric], "skill": skill, "verdict": verdict(skill, scores["rougeL"]),
                        "predictions": chunk}
        said.append(f"{name} ({scores['n']}): exact match {scores['exact_match']:.1f}, ROUGE-L {scores['rougeL']:.1f} "
                    f"[{skill_line(skill)}]")
    progress.summary(f"evaluation of {task.name}: {'; '.join(said)} in {bar.seconds:.0f}s")
    return result


# --- a student on a method's tasks, with files (the loop's evaluation stage, the eval command, studies) ----

class EvalPrompts(Protocol):
    """What evaluation asks of a method (`methods.base.Method` is one): its prompt and stops, and how a
    student with given metadata renders prompts."""

    def eval_prompt(self) -> tuple[Callable[[Task, str], str], tuple[str, ...]]: ...

    def prompt_format(self, info: ModelInfo) -> PromptFormat: ...


def evaluate_student(cfg: Config, method: EvalPrompts, tasks: list[Task], gguf: Path, out_path: Path) -> dict[str, Any]:
    """Evaluate on the method's tasks, validation and test apart; writes eval.json. Validation scores
    decide promotion; test scores are only reported."""
    prompt_fn, extra_stops = method.eval_prompt()
    per_task = []
    with open_sampler(gguf, cfg.engine) as sampler:
        fmt = method.prompt_format(sampler.info)
        for task in tasks:
            per_task.append(evaluate(task, sampler, cfg.eval, prompt_fn=prompt_fn, fmt=fmt, extra_stops=extra_stops))
        answered = sampler_record(cfg.engine, sampler)
    summary: dict[str, Any] = {
        "model": str(gguf),
        "prompt_format": fmt.describe(),
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
            if len(scored) == 1:  # skill columns are per task (Self-Instruct's mean over tasks has none)
                summary[split]["skill"] = scored[0]["skill"]
    if summary["validation"] is None:
        raise UserError(f"no validation instances to evaluate on ({', '.join(t.name for t in tasks)})")
    summary.update(answered)
    summary["tasks"] = per_task
    write_json(out_path, summary)
    return {k: v for k, v in summary.items() if k != "tasks"}


def score_line(scores: dict[str, Any]) -> str:
    """'validation exact match 52.0, ROUGE-L 60.1; test exact match 50.0, ROUGE-L 58.3' for logs."""
    parts = []
    for split in SPLITS:
        m = scores.get(split)
        skill = f" ({skill_line(m.get('skill'))})" if m and m.get("skill") else ""
        parts.append(f"{split} exact match {m['exact_match']:.1f}, ROUGE-L {m['rougeL']:.1f}{skill}" if m else f"{split} -")
    return "; ".join(parts)
