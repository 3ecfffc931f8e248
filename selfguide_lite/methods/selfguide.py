"""Self-Guide synthesis for one round (contract §2): the student writes inputs, labels them, we filter.

Pure logic over a `Sampler`: no files, no llama.cpp. Requests go out in waves so a batched
backend decodes many at once while the "inputs already accepted" context still grows during the
round. Every candidate ends as a training record or a drop with its stage and reason.
At the end, `SelfGuide` is the `Method` the loop runs: inputs, prompts, funnel and class balance.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict

from .. import progress
from ..calibration import (
    CONTENT_FREE_INPUTS,
    calibrated_labels,
    label_prior,
    label_probabilities,
    score_labels,
)
from ..config import SelfGuideConfig
from ..engine.sampler import Request, Sampler, SamplingParams
from ..errors import UserError
from ..filters import (
    AnswerChecks,
    AnswerRunOn,
    DuplicateFilter,
    FieldFilter,
    InputFilters,
    LengthWindow,
    NoiseFilter,
    strip_input_echo,
)
from ..metrics import normalize
from ..prompts import FIELD_STOPS, INPUT_STOPS, PromptFormat, input_generation_prompt, task_prompt
from ..tasks import Task
from .base import ClassBalance, Method, PromptFn, SynthResult, funnel_counts, register, stage_seed

INPUT_STAGES = ("empty", "length", "noise", "fields", "duplicate")
VOTE_STAGES = ("no_valid_samples", "no_consensus", "low_margin", "repeated_answer")


class SelfGuideStats(TypedDict):
    """`stats.json` of a Self-Guide round: the funnel from candidates to training rows."""

    method: str  # "self-guide"
    task: str
    type: str  # classification | generation
    labels: list[str]
    candidates: int
    input_dropped: dict[str, int]  # per INPUT_STAGES, in order
    inputs_accepted: int
    annotation_dropped: dict[str, int]  # per VOTE_STAGES
    samples_rejected: dict[str, int]  # annotation samples that did not count, by reason
    annotated: int
    mean_agreement: float | None  # mean share of the winning answer
    balance_dropped: int
    train: int
    train_per_label: dict[str, int]
    missing_labels: list[str]  # labels the vote never produced
    samples: int  # annotation samples drawn (accepted inputs x num_samples)
    input_echoes: int  # candidates that began with "Input:" (removed under strip_input_echo, else dropped as noise)
    sampled_tokens: dict[str, int]  # tokens decoded: write_inputs, annotate (-1 where a server did not say)


@dataclass(frozen=True)
class Vote:
    answer: str | None  # None: the input is dropped
    share: float
    reason: str
    counts: dict[str, int]
    rejected: dict[str, int]
    tokens: int = 0  # tokens decoded for its samples (set by annotate)
    margin: float | None = None  # calibrated labellers: the label's lead over the runner-up (log-score)


def max_tokens_for(sampler: Sampler, texts: Sequence[str], factor: float, floor: int = 8) -> int:
    longest = max((sampler.count_tokens(t) for t in texts), default=floor)
    return max(floor, math.ceil(factor * longest))


def self_consistency_vote(
    samples: Sequence[str],
    *,
    labels: Sequence[str] | None,
    noise: NoiseFilter,
    length: LengthWindow | None,
    threshold: float,
    checks: AnswerChecks | None = None,
    input_text: str = "",
) -> Vote:
    """contract §2.3: drop bad samples, then the most frequent normalised answer wins if its share of the
    surviving samples is at least `threshold` (ties: the shortest). Classification samples count
    only when they normalise to a label, and the winner is the label string itself. `checks`
    (generation) strips an answer lead-in and rejects copies of a demonstration's answer that
    `input_text` does not contain and answers that run on past the demonstrations' line count."""
    label_of = {normalize(lab): lab for lab in labels} if labels else None
    rejected: Counter[str] = Counter()
    survivors: list[tuple[str, str]] = []  # (normalised key, answer text)
    for raw in samples:
        text = checks.clean(raw) if checks is not None else raw.strip()
        if not text:
            rejected["empty"] += 1
            continue
        if noise.check(text):
            rejected["noise"] += 1
            continue
        if label_of is not None:
            key = normalize(text)
            if key not in label_of:
                rejected["off-label"] += 1
                continue
            survivors.append((key, label_of[key]))
            continue
        if length is not None and length.check(text):
            rejected["length"] += 1
            continue
        if checks is not None and (why := checks.check(text, input_text)):
            rejected[why[0]] += 1
            continue
        survivors.append((normalize(text), text))
    if not survivors:
        return Vote(None, 0.0, "no valid samples", {}, dict(rejected))
    counts = Counter(key for key, _ in survivors)
    best_key = min(counts, key=lambda k: (-counts[k], len(k), k))
    share = counts[best_key] / len(survivors)
    shown = {k: v for k, v in counts.most_common()}
    if share < threshold:
        return Vote(None, share, f"no consensus (top share {share:.2f} < {threshold})", shown, dict(rejected))
    answers = [text for key, text in survivors if key == best_key]
    answer = min(answers, key=lambda a: (len(a), a))
    return Vote(answer, share, "", shown, dict(rejected))


def drop_repeated_answers(records: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], int]]]:
    """Generation: rows whose (normalised) answer the vote gave to more than `limit` different inputs, dropped
    from every one of them: an answer that does not depend on its input teaches the student to ignore it.
    Measured on the built-in student: its own system prompt ("You are a helpful AI assistant named
    SmolLM...") won the vote for 12 of 123 task1195 inputs, "No, no, no!" for 34 of 108 task039 inputs.
    Returns the kept rows and (dropped row, how many inputs got that answer)."""
    keys = [normalize(r["output"]) for r in records]
    counts = Counter(keys)
    kept = [r for r, key in zip(records, keys, strict=True) if counts[key] <= limit]
    dropped = [(r, counts[key]) for r, key in zip(records, keys, strict=True) if counts[key] > limit]
    return kept, dropped


def balance_classes(records: list[dict[str, Any]], seed: int, floor: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Down-sample every class present to the size of the smallest one, but never below `floor` rows
    (a class with fewer keeps all of its rows) (contract §2.4). floor 0 is the original rule."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_label[rec["output"]].append(rec)
    if not by_label:
        return [], []
    target = max(min(len(v) for v in by_label.values()), floor)
    rng = random.Random(seed)
    kept_ids: set[str] = set()
    for recs in by_label.values():
        kept_ids.update(r["id"] for r in rng.sample(recs, min(target, len(recs))))
    kept = [r for r in records if r["id"] in kept_ids]
    dropped = [r for r in records if r["id"] not in kept_ids]
    return kept, dropped


def answer_filters(task: Task, cfg: SelfGuideConfig) -> tuple[LengthWindow | None, AnswerChecks | None]:
    """The generation vote's output length window and answer checks (None where off or classification)."""
    if task.is_classification:
        return None, None
    outputs = [d.output for d in task.demos]
    return (LengthWindow.from_examples(outputs) if cfg.output_length_filter else None,
            AnswerChecks.from_examples(outputs) if cfg.uses("answer_checks") else None)


def annotate(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, inputs: Sequence[str],
             seed: int, noise: NoiseFilter | None = None) -> list[Vote]:
    """Label inputs the way a round does (contract §2.3): `num_samples` samples each, then the vote.

    One batch for all inputs; input n's samples are seeded by (seed, stage 2, n). Also used on
    validation inputs, whose gold answers are known, to measure how often the vote is right."""
    classification = task.is_classification
    noise = noise or NoiseFilter(cfg.noise_patterns)
    out_length, checks = answer_filters(task, cfg)
    params = SamplingParams(
        temperature=cfg.annotate_temperature,
        top_k=cfg.annotate_top_k,
        max_tokens=max_tokens_for(sampler, [d.output for d in task.demos] + list(task.labels), cfg.max_tokens_factor),
        stop=FIELD_STOPS,
        n=cfg.num_samples,
        choices=tuple(task.labels) if classification and cfg.labels_in_vote == "constrained" else None,
    )
    # Each input's samples stop once the vote must reject them (exact; AnswerRunOn).
    requests = [Request(fmt.render(task_prompt(task, text)),
                        replace(params, seed=stage_seed(seed, 2, n), run_on=AnswerRunOn.for_vote(out_length, checks, text)))
                for n, text in enumerate(inputs)]
    outputs = sampler.generate(requests) if requests else []
    labels = task.labels if classification and cfg.labels_in_vote != "any" else None
    votes = []
    for text, outs in zip(inputs, outputs, strict=True):
        vote = self_consistency_vote([o.text for o in outs], labels=labels, noise=noise, length=out_length,
                                     threshold=cfg.vote_threshold, checks=checks, input_text=text)
        votes.append(replace(vote, tokens=sum(o.n_tokens for o in outs)))
    return votes


def calibrated_votes(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat,
                     inputs: Sequence[str]) -> list[Vote]:
    """Classification labels from the student's label log-probabilities instead of sampled answers
    (`cfg.labeler` other than vote; calibration.py says why). A Vote per input: share is the student's own
    probability of the chosen label, counts its probability of every label."""
    probs = label_probabilities(score_labels(task, sampler, fmt, inputs))
    content_free = None
    if cfg.labeler == "content-free-calibrated":
        content_free = label_probabilities(score_labels(task, sampler, fmt, CONTENT_FREE_INPUTS))
    kind = {"batch-calibrated": "batch", "content-free-calibrated": "content_free", "argmax": "none"}[cfg.labeler]
    votes = []
    for c in calibrated_labels(probs, label_prior(kind, probs, content_free), cfg.label_margin):
        shown = {lab: round(p, 4) for lab, p in zip(task.labels, c.probs, strict=True)}
        if c.label is None:
            votes.append(Vote(None, 0.0, f"calibrated margin {c.margin:.3f} below {cfg.label_margin}", shown, {}))
        else:
            votes.append(Vote(task.labels[c.label], c.probs[c.label], "", shown, {}, margin=c.margin))
    return votes


def synthesize(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, seed: int = 0) -> SynthResult:
    """One Self-Guide round: generate inputs, filter them, annotate by vote, balance."""
    result = SynthResult()
    classification = task.is_classification
    filters, lead = input_filters(task, cfg)
    written = write_inputs(task, sampler, cfg, fmt, seed, filters, lead, result)
    labelled = label_inputs(task, sampler, cfg, fmt, seed, written.accepted, filters.noise, result)
    annotated = labelled.annotated

    # 4. Class balance.
    final = annotated
    balance_dropped: list[dict[str, Any]] = []
    if classification and cfg.balance:
        final, balance_dropped = balance_classes(annotated, seed, cfg.floor)
        for rec in balance_dropped:
            result.dropped.append({**rec, "stage": "balance", "reason": f"class {rec['output']!r} down-sampled"})
    result.train = final

    per_label = Counter(r["output"] for r in final) if classification else {}
    shares = labelled.shares
    result.stats = SelfGuideStats(**{
        "method": "self-guide",
        "task": task.name,
        "type": task.type,
        "labels": list(task.labels),
        "candidates": cfg.num_inputs,
        "input_dropped": funnel_counts(written.drops, INPUT_STAGES),
        "inputs_accepted": len(written.accepted),
        "annotation_dropped": funnel_counts(labelled.drops, VOTE_STAGES),
        "samples_rejected": dict(labelled.sample_rejects),
        "annotated": len(annotated),
        "mean_agreement": round(sum(shares) / len(shares), 4) if shares else None,
        "balance_dropped": len(balance_dropped),
        "train": len(final),
        "train_per_label": dict(per_label),
        "missing_labels": [lab for lab in task.labels if per_label.get(lab, 0) == 0] if classification else [],
        "samples": len(written.accepted) * cfg.num_samples,
        "input_echoes": written.echoes,
    })
    result.seconds = {"write_inputs": round(written.seconds, 2), "annotate": round(labelled.seconds, 2)}
    result.stats["sampled_tokens"] = {"write_inputs": written.tokens, "annotate": labelled.tokens}
    if classification and cfg.balance:
        progress.summary(f"balance: {len(final)} rows kept, {len(balance_dropped)} down-sampled ("
                         f"{', '.join(f'{k} {v}' for k, v in per_label.items()) or 'nothing left'})")
    return result


def input_filters(task: Task, cfg: SelfGuideConfig) -> tuple[InputFilters, str]:
    """The filters a written input passes (set up from the demonstrations), and the input lead: the
    field marker every demonstration input starts with, written for the student when it is on."""
    demo_inputs = [d.input for d in task.demos]
    use_length = cfg.length_filter if cfg.length_filter is not None else task.is_classification
    fields = FieldFilter.from_examples(demo_inputs)
    lead = fields.lead(demo_inputs) if cfg.uses("input_lead") else ""
    filters = InputFilters(
        noise=NoiseFilter(cfg.noise_patterns),
        duplicates=DuplicateFilter(demo_inputs),
        length=LengthWindow.from_examples(demo_inputs) if use_length else None,
        fields=fields if cfg.uses("field_filter") and fields.fields else None,
        enabled=cfg.input_filters,
    )
    return filters, lead


@dataclass
class WrittenInputs:
    accepted: list[dict[str, Any]]  # {id, input, target_label}
    drops: Counter[str]  # filter stage -> inputs it dropped
    echoes: int  # candidates that began with an echoed "Input:"
    seconds: float
    tokens: int  # tokens decoded


def write_inputs(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, seed: int,
                 filters: InputFilters, lead: str, result: SynthResult) -> WrittenInputs:
    """Steps 1-2: input generation in waves, each candidate filtered in order as it arrives (drops are
    recorded in `result.dropped`)."""
    classification = task.is_classification
    rng = random.Random(seed)
    input_params = SamplingParams(
        temperature=cfg.input_temperature_classification if classification else cfg.input_temperature_generation,
        top_k=cfg.input_top_k,
        max_tokens=max_tokens_for(sampler, [d.input for d in task.demos], cfg.max_tokens_factor),
        stop=INPUT_STOPS,
    )
    accepted: list[dict[str, Any]] = []
    input_drops: Counter[str] = Counter()
    echoes = tokens = 0
    with progress.bar("writing inputs", cfg.num_inputs, "inputs", samples=True) as bar:
        for wave_start in range(0, cfg.num_inputs, cfg.wave_size):
            indices = range(wave_start, min(cfg.num_inputs, wave_start + cfg.wave_size))
            requests, targets = [], []
            pool = [a["input"] for a in accepted]
            wave_context = rng.sample(pool, min(cfg.context_inputs, len(pool))) if cfg.uses("wave_context") else None
            for i in indices:
                target = task.labels[i % len(task.labels)] if classification else None
                context = wave_context if wave_context is not None else rng.sample(pool, min(cfg.context_inputs, len(pool)))
                prompt = fmt.render(input_generation_prompt(task, context, target), answer_start=lead)
                requests.append(Request(prompt, replace(input_params, seed=stage_seed(seed, 1, i))))
                targets.append(target)
            for i, target, outs in zip(indices, targets, sampler.generate(requests), strict=True):
                tokens += outs[0].n_tokens
                written = outs[0].text
                without_echo, echoed = strip_input_echo(written)
                echoes += echoed
                if cfg.uses("strip_input_echo"):
                    written = without_echo
                text = (lead + written).strip() if written.strip() else ""
                cand_id = f"c{i:05d}"
                if drop := filters.check(text):
                    input_drops[drop[0]] += 1
                    result.dropped.append({"id": cand_id, "stage": drop[0], "reason": drop[1], "input": text})
                    continue
                filters.accept(text)
                accepted.append({"id": cand_id, "input": text, "target_label": target})
    seconds = bar.seconds
    progress.summary(f"inputs: {len(accepted)} of {cfg.num_inputs} kept ("
                     f"{', '.join(f'{k} {v}' for k, v in input_drops.items()) or 'none dropped'}) in {seconds:.0f}s")
    return WrittenInputs(accepted, input_drops, echoes, seconds, tokens)


@dataclass
class LabelledInputs:
    annotated: list[dict[str, Any]]  # accepted inputs with the vote's answer, as training rows
    drops: Counter[str]  # vote stage -> inputs it dropped
    sample_rejects: Counter[str]  # why single samples did not count
    shares: list[float]  # the winning answer's share of the samples, per labelled input
    seconds: float
    tokens: int  # tokens decoded


def label_inputs(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, seed: int,
                 accepted: list[dict[str, Any]], noise: NoiseFilter, result: SynthResult) -> LabelledInputs:
    """Step 3: every accepted input, num_samples samples each, in one batch, then the vote; for generation,
    answers the vote gave to too many inputs are dropped (drops recorded in `result.dropped`)."""
    annotated: list[dict[str, Any]] = []
    vote_drops: Counter[str] = Counter()
    sample_rejects: Counter[str] = Counter()
    shares: list[float] = []
    texts = [a["input"] for a in accepted]
    scored = task.is_classification and cfg.labeler != "vote"
    if scored:
        with progress.bar("scoring labels", len(accepted), "inputs") as bar:
            votes = calibrated_votes(task, sampler, cfg, fmt, texts)
    else:
        with progress.bar("annotating", len(accepted) * cfg.num_samples, "samples", samples=True) as bar:
            votes = annotate(task, sampler, cfg, fmt, texts, seed, noise)
    seconds = bar.seconds
    for cand, vote in zip(accepted, votes, strict=True):
        sample_rejects.update(vote.rejected)
        if vote.answer is None:
            stage = "low_margin" if scored else "no_valid_samples" if not vote.counts else "no_consensus"
            vote_drops[stage] += 1
            result.dropped.append(
                {**cand, "stage": stage, "reason": vote.reason, "votes": vote.counts, "rejected": vote.rejected}
            )
            continue
        shares.append(vote.share)
        annotated.append(
            {
                **cand,
                "output": vote.answer,
                "agreement": round(vote.share, 4),
                "votes": vote.counts,
                **({"margin": round(vote.margin, 4)} if vote.margin is not None else {}),
                "prompt": task_prompt(task, cand["input"]),
                "completion": vote.answer,
            }
        )
    if not task.is_classification and cfg.repeat_limit:
        annotated, repeated = drop_repeated_answers(annotated, cfg.repeat_limit)
        vote_drops["repeated_answer"] += len(repeated)
        for rec, times in repeated:
            result.dropped.append({**rec, "stage": "repeated_answer",
                                   "reason": f"the vote gave this answer to {times} different inputs"})
    if scored:
        progress.summary(f"annotation: {len(annotated)} of {len(accepted)} inputs labelled ({cfg.labeler}; "
                         f"{vote_drops.get('low_margin', 0)} below the margin) in {seconds:.0f}s")
    else:
        progress.summary(f"annotation: {len(annotated)} of {len(accepted)} inputs labelled by the vote "
                         f"({vote_drops.get('no_consensus', 0)} without consensus, "
                         f"{vote_drops.get('no_valid_samples', 0)} without a valid sample) in {seconds:.0f}s")
    return LabelledInputs(annotated, vote_drops, sample_rejects, shares, seconds, sum(v.tokens for v in votes))


@register
class SelfGuide(Method):
    name = "self-guide"
    own_flags = ("--labels", "--task-type", "--num-inputs")

    def check_inputs(self) -> None:
        if not self.cfg.task:
            raise UserError("self-guide needs --task")

    def input_files(self) -> list[str]:
        return [self.cfg.task] if self.cfg.task else []

    def eval_task_files(self) -> list[str]:
        return self.input_files()

    def default_run_name(self) -> str:
        return Path(self.cfg.task).stem if self.cfg.task else "self-guide"

    def settings(self) -> dict[str, Any]:
        """The synthesis settings as the stage cache key reads them: in the shape they had before the
        preset existed (one switch per small-student change), so runs finished then are not recomputed.
        Settings added after runs had been cached enter the key only where they act (answer_repeat_limit:
        generation, > 0; strip_input_echo: on): a setting that changes nothing must not invalidate
        finished runs."""
        cfg = self.cfg.selfguide
        settings = cfg.model_dump(exclude={"preset", "without", "labels_in_vote", "labeler", "label_margin"})
        if cfg.labeler != "vote" and self.eval_tasks()[0].is_classification:
            settings.update(labeler=cfg.labeler, label_margin=cfg.label_margin)
        settings.update(
            context_sampling="wave" if cfg.uses("wave_context") else "request",
            input_lead=cfg.uses("input_lead"), field_filter=cfg.uses("field_filter"),
            answer_checks=cfg.uses("answer_checks"), strip_input_echo=cfg.uses("strip_input_echo"),
            answer_repeat_limit=cfg.repeat_limit, balance_floor=cfg.floor,
            constrain_labels=cfg.labels_in_vote == "constrained", label_filter=cfg.labels_in_vote != "any")
        if self.eval_tasks()[0].is_classification or not settings["answer_repeat_limit"]:
            del settings["answer_repeat_limit"]
        if not settings["strip_input_echo"]:
            del settings["strip_input_echo"]
        return settings

    def synthesize(self, sampler: Sampler, seed: int) -> SynthResult:
        task = self.eval_tasks()[0]
        return synthesize(task, sampler, self.cfg.selfguide, PromptFormat.from_info(sampler.info), seed=seed)

    def eval_prompt(self) -> tuple[PromptFn, tuple[str, ...]]:
        return task_prompt, ()

    @staticmethod
    def class_balance(stats: dict[str, Any], dropped: list[dict[str, Any]]) -> ClassBalance | None:
        if stats.get("type") != "classification":
            return None
        kept = dict(stats.get("train_per_label") or {})
        labelled = dict(kept)
        for d in dropped:
            if d.get("stage") == "balance":
                labelled[d["output"]] = labelled.get(d["output"], 0) + 1
        return ClassBalance(labelled, kept, list(stats.get("missing_labels") or []))

    @staticmethod
    def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int]]:
        left = stats.get("candidates", 0)
        steps = [("candidate inputs", left)]
        for stage, n in (stats.get("input_dropped") or {}).items():
            left -= n
            steps.append((f"- {stage}", left))
        for stage, n in (stats.get("annotation_dropped") or {}).items():
            left -= n
            steps.append((f"- {stage.replace('_', ' ')}", left))
        if stats.get("balance_dropped"):
            left -= stats["balance_dropped"]
            steps.append(("- balance", left))
        steps.append(("training rows", stats.get("train", left)))
        return steps
