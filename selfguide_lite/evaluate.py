"""Greedy predictions on held-out instances, with the same prompt format as training (SPEC 5)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import progress
from .config import EvalConfig
from .engine.base import Request, Sampler, SamplingParams
from .errors import UserError
from .metrics import score_predictions
from .prompts import PromptFormat, task_prompt
from .tasks import Task


def predict(
    task: Task,
    sampler: Sampler,
    cfg: EvalConfig | None = None,
    prompt_fn: Callable[[Task, str], str] = task_prompt,
    fmt: PromptFormat | None = None,
    extra_stops: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One greedy prediction per evaluation instance; all requests go to the sampler at once.

    `fmt` defaults to the student's own format (its chat template when it has one).
    """
    cfg = cfg or EvalConfig()
    fmt = fmt or PromptFormat.from_info(sampler.info)
    instances = task.eval_instances(cfg.limit)
    if not instances:
        raise UserError(f"task {task.name} has no evaluation instances")
    if cfg.max_tokens is not None:
        max_tokens = cfg.max_tokens
    else:
        longest = max(sampler.count_tokens(ref) for inst in instances for ref in inst.outputs)
        max_tokens = min(512, max(8, math.ceil(2 * longest)))
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        stop=fmt.answer_stops + extra_stops,
        choices=tuple(task.labels) if (task.is_classification and cfg.constrain_labels) else None,
    )
    requests = [Request(fmt.render(prompt_fn(task, inst.input)), params) for inst in instances]
    outs = sampler.generate(requests)
    return [
        {"id": inst.id, "input": inst.input, "prediction": out[0].text.strip(), "references": list(inst.outputs)}
        for inst, out in zip(instances, outs, strict=True)
    ]


def score_rows(task: Task, rows: list[dict[str, Any]], known: list | None = None) -> dict[str, Any]:
    """Metrics over the instances named in `rows`; an id not in the task is a user error."""
    by_id = {inst.id: inst for inst in (known if known is not None else task.instances)}
    unknown = [r["id"] for r in rows if r["id"] not in by_id]
    if unknown:
        raise UserError(f"prediction id {unknown[0]!r} is not an instance of task {task.name}")
    refs = {r["id"]: by_id[r["id"]].outputs for r in rows}
    preds = {r["id"]: str(r.get("prediction") or "") for r in rows}
    scores = score_predictions(refs, preds)
    return {"task": task.name, **scores}


def evaluate(task: Task, sampler: Sampler, cfg: EvalConfig | None = None,
             prompt_fn: Callable[[Task, str], str] = task_prompt, fmt: PromptFormat | None = None,
             extra_stops: tuple[str, ...] = ()) -> dict[str, Any]:
    """Predict and score; `primary` is exact match for classification, ROUGE-L for generation."""
    n = len(task.eval_instances((cfg or EvalConfig()).limit))
    with progress.bar(f"evaluating {task.name}", n, "instances", samples=True) as bar:
        rows = predict(task, sampler, cfg, prompt_fn, fmt, extra_stops)
    scores = score_rows(task, rows)
    scores["primary_metric"] = "exact_match" if task.is_classification else "rougeL"
    scores["primary"] = scores[scores["primary_metric"]]
    progress.summary(f"evaluation of {task.name}: exact match {scores['exact_match']:.1f}, ROUGE-L "
                     f"{scores['rougeL']:.1f} on {scores['n']} instances in {bar.seconds:.0f}s")
    return {**scores, "predictions": rows}
