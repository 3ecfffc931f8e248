"""Self-Guide synthesis for one round (contract §2): the student writes inputs, labels them, we filter.

Pure logic over a `Sampler`: no files, no llama.cpp. Requests go out in waves so a batched
backend decodes many at once while the "inputs already accepted" context still grows during the
round. Every candidate ends as a training record or a drop with its stage and reason.
At the end, `SelfGuide` is the `Method` the loop runs: inputs, prompts, funnel and class balance.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from .. import progress
from ..config import SelfGuideConfig
from ..engine.sampler import Request, Sampler, SamplingParams
from ..errors import UserError
from ..filters import (
    DuplicateFilter,
    EmptyFilter,
    FieldFilter,
    FilterChain,
    LengthWindow,
    NoiseFilter,
    TextFilter,
    strip_input_echo,
)
from ..metrics import normalize
from ..prompts import INPUT_STOPS, PromptFormat, input_generation_prompt, task_prompt
from ..tasks import Instance, Task
from .base import ClassBalance, Method, PromptFn, SynthResult, funnel_counts, register, stage_seed
from .label_signal import check_signal
from .labellers import (
    AUTO,
    LabelJob,
    check_labeller_name,
    drop_stages,
    gold_examples,
    labeller_for,
    max_tokens_for,
)


def _length_filter(task: Task, cfg: SelfGuideConfig) -> TextFilter | None:
    on = cfg.length_filter if cfg.length_filter is not None else task.is_classification
    return LengthWindow.from_examples([d.input for d in task.demos]) if on else None


def _field_filter(task: Task, cfg: SelfGuideConfig) -> TextFilter | None:
    fields = FieldFilter.from_examples([d.input for d in task.demos])
    return fields if cfg.uses("field_filter") and fields.fields else None


# A written input's filters in contract order: (stage, the filter for this task and settings, or None where
# off). The stage names of the funnel and stats.json come from this list: a new filter is one entry here.
# With `input_filters: false` (an ablation) only the first, "empty", runs.
INPUT_FILTERS: tuple[tuple[str, Callable[[Task, SelfGuideConfig], TextFilter | None]], ...] = (
    ("empty", lambda task, cfg: EmptyFilter()),
    ("length", _length_filter),
    ("noise", lambda task, cfg: NoiseFilter(cfg.noise_patterns)),
    ("fields", _field_filter),
    ("duplicate", lambda task, cfg: DuplicateFilter([d.input for d in task.demos])),
)
INPUT_STAGES = tuple(stage for stage, _ in INPUT_FILTERS)
VOTE_STAGES = (*drop_stages(), "repeated_answer")  # the labellers' drop stages, then generation's repeat filter


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
    gold_rows: NotRequired[int]  # gold examples among the training rows (selfguide.gold_per_label > 0)


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


def synthesize(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, seed: int = 0,
               gold: Sequence[Instance] = ()) -> SynthResult:
    """One Self-Guide round: generate inputs, filter them, annotate by vote, balance; gold examples (if any)
    join the training rows and are there for a labeller fitted on them."""
    result = SynthResult()
    classification = task.is_classification
    written = write_inputs(task, sampler, cfg, fmt, seed, input_filters(task, cfg), input_lead(task, cfg))
    labelled = label_inputs(task, sampler, cfg, fmt, seed, written.accepted, list(gold))
    annotated = labelled.annotated

    # 4. Class balance.
    final = annotated
    balance_dropped: list[dict[str, Any]] = []
    if classification and cfg.balance:
        final, balance_dropped = balance_classes(annotated, seed, cfg.floor)
    result.dropped = [*written.dropped, *labelled.dropped,
                      *({**rec, "stage": "balance", "reason": f"class {rec['output']!r} down-sampled"}
                        for rec in balance_dropped)]
    result.train = gold_rows(task, gold) + final

    per_label = Counter(r["output"] for r in result.train) if classification else {}
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
        "train": len(result.train),
        "train_per_label": dict(per_label),
        "missing_labels": [lab for lab in task.labels if per_label.get(lab, 0) == 0] if classification else [],
        "samples": len(written.accepted) * cfg.num_samples,
        "input_echoes": written.echoes,
    })
    if gold:
        result.stats["gold_rows"] = len(gold)
    result.seconds = {"write_inputs": round(written.seconds, 2), "annotate": round(labelled.seconds, 2)}
    result.stats["sampled_tokens"] = {"write_inputs": written.tokens, "annotate": labelled.tokens}
    if classification and cfg.balance:
        with_gold = f" + {len(gold)} gold" if gold else ""
        progress.summary(f"balance: {len(final)} rows kept, {len(balance_dropped)} down-sampled; training rows"
                         f"{with_gold}: {', '.join(f'{k} {v}' for k, v in per_label.items()) or 'none'}")
    return result


def gold_rows(task: Task, gold: Sequence[Instance]) -> list[dict[str, Any]]:
    """Gold examples as training rows, marked `source: gold`."""
    return [{"id": inst.id, "input": inst.input, "output": inst.outputs[0], "source": "gold",
             "prompt": task_prompt(task, inst.input), "completion": inst.outputs[0]} for inst in gold]


def input_filters(task: Task, cfg: SelfGuideConfig) -> FilterChain:
    """The filters a written input passes, in `INPUT_FILTERS` order, set up from the demonstrations."""
    made = ((stage, make(task, cfg)) for stage, make in INPUT_FILTERS[:None if cfg.input_filters else 1])
    return FilterChain([(stage, f) for stage, f in made if f is not None])


def input_lead(task: Task, cfg: SelfGuideConfig) -> str:
    """The field marker every demonstration input starts with, written for the student when it is on."""
    demo_inputs = [d.input for d in task.demos]
    return FieldFilter.from_examples(demo_inputs).lead(demo_inputs) if cfg.uses("input_lead") else ""


@dataclass
class WrittenInputs:
    accepted: list[dict[str, Any]]  # {id, input, target_label}
    dropped: list[dict[str, Any]]  # {id, stage, reason, input}, in candidate order
    echoes: int  # candidates that began with an echoed "Input:"
    seconds: float
    tokens: int  # tokens decoded

    @property
    def drops(self) -> Counter[str]:
        """Filter stage -> inputs it dropped."""
        return Counter(d["stage"] for d in self.dropped)


def write_inputs(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, seed: int,
                 filters: FilterChain, lead: str) -> WrittenInputs:
    """Steps 1-2: input generation in waves, each candidate filtered in order as it arrives: the inputs
    kept and the candidates dropped, each with its stage and reason."""
    classification = task.is_classification
    rng = random.Random(seed)
    input_params = SamplingParams(
        temperature=cfg.input_temperature_classification if classification else cfg.input_temperature_generation,
        top_k=cfg.input_top_k,
        max_tokens=max_tokens_for(sampler, [d.input for d in task.demos], cfg.max_tokens_factor),
        stop=INPUT_STOPS,
    )
    accepted: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
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
                    dropped.append({"id": cand_id, "stage": drop[0], "reason": drop[1], "input": text})
                    continue
                filters.accept(text)
                accepted.append({"id": cand_id, "input": text, "target_label": target})
    written = WrittenInputs(accepted, dropped, echoes, bar.seconds, tokens)
    progress.summary(f"inputs: {len(accepted)} of {cfg.num_inputs} kept ("
                     f"{', '.join(f'{k} {v}' for k, v in written.drops.items()) or 'none dropped'}) "
                     f"in {written.seconds:.0f}s")
    return written


@dataclass
class LabelledInputs:
    annotated: list[dict[str, Any]]  # accepted inputs with the vote's answer, as training rows
    dropped: list[dict[str, Any]]  # accepted inputs not labelled, or whose answer repeats: with stage and reason
    sample_rejects: Counter[str]  # why single samples did not count
    shares: list[float]  # the winning answer's share of the samples, per labelled input
    seconds: float
    tokens: int  # tokens decoded

    @property
    def drops(self) -> Counter[str]:
        """Labelling stage -> inputs it dropped."""
        return Counter(d["stage"] for d in self.dropped)


def label_inputs(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, seed: int,
                 accepted: list[dict[str, Any]], gold: list[Instance] | None = None) -> LabelledInputs:
    """Step 3: every accepted input labelled by the configured labeller (generation: the vote) in one batch;
    for generation, answers the vote gave to too many inputs are dropped. Returns the rows and the drops."""
    annotated: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    sample_rejects: Counter[str] = Counter()
    shares: list[float] = []
    texts = [a["input"] for a in accepted]
    labeller = labeller_for(round_labeller(task, cfg))
    what, total, unit = labeller.work(cfg, len(accepted))
    with progress.bar(what, total, unit, samples=unit == "samples") as bar:
        votes = labeller.label(LabelJob(task, sampler, cfg, fmt, texts, seed, gold=gold or []))
    seconds = bar.seconds
    for cand, vote in zip(accepted, votes, strict=True):
        sample_rejects.update(vote.rejected)
        if vote.answer is None:
            dropped.append({**cand, "stage": labeller.drop_stage(vote), "reason": vote.reason, "votes": vote.counts,
                            "rejected": vote.rejected})
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
        dropped += [{**rec, "stage": "repeated_answer", "reason": f"the vote gave this answer to {times} different inputs"}
                    for rec, times in repeated]
    labelled = LabelledInputs(annotated, dropped, sample_rejects, shares, seconds, sum(v.tokens for v in votes))
    said = ", ".join(f"{n} {stage.replace('_', ' ')}" for stage, n in labelled.drops.items() if n) or "none dropped"
    progress.summary(f"annotation: {len(annotated)} of {len(accepted)} inputs labelled ({labeller.name}; {said}) "
                     f"in {seconds:.0f}s")
    return labelled


def round_labeller(task: Task, cfg: SelfGuideConfig) -> str:
    """The labeller a round uses: the vote for generation; the configured one for classification, which is
    never `auto` here (the loop's signal check resolves it first, `SelfGuide.with_labeller`)."""
    if not task.is_classification:
        return "vote"
    if cfg.labeler == AUTO:
        raise UserError("selfguide.labeler auto: the signal check chooses the labeller before a round (run the "
                        "loop, or name a labeller)")
    return cfg.labeler


@register
class SelfGuide(Method):
    name = "self-guide"
    own_flags = ("--labels", "--task-type", "--num-inputs")

    def check_inputs(self) -> None:
        if not self.cfg.task:
            raise UserError("self-guide needs --task")
        check_labeller_name(self.cfg.selfguide.labeler)
        sg = self.cfg.selfguide
        if sg.labeler != AUTO and labeller_for(sg.labeler).needs_gold and not sg.gold_per_label:
            raise UserError(f"selfguide.labeler {sg.labeler} is fitted on gold examples: set selfguide.gold_per_label "
                            "(and give the task a train: list, or instances outside the evaluation splits)")

    @property
    def checks_signal(self) -> bool:  # type: ignore[override]
        """A round without written inputs (gold examples alone) has no self-labels to check."""
        return self.cfg.selfguide.num_inputs > 0


    def with_labeller(self, name: str) -> SelfGuide:
        """This method with `selfguide.labeler` set to `name` (the signal check's choice for a round)."""
        cfg = self.cfg.model_copy(update={"selfguide": self.cfg.selfguide.model_copy(update={"labeler": name})})
        return SelfGuide(cfg, self.eval_tasks())

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
        task = self.eval_tasks()[0]
        settings = cfg.model_dump(exclude={"preset", "without", "labels_in_vote", "labeler", "label_margin",
                                           "signal_size", "signal_level", "signal_generation_size", "gold_per_label"})
        if cfg.gold_per_label:  # in the key only where it acts: runs finished without gold keep their keys
            settings["gold"] = {"per_label": cfg.gold_per_label, "seed": self.cfg.seed, "signal_size": cfg.signal_size,
                                "eval": [self.cfg.eval.validation_size, self.cfg.eval.test_size]}
        if task.is_classification:
            settings.update(labeller_for(cfg.labeler).cache_key(cfg) if cfg.labeler != AUTO else {"labeler": AUTO})
        settings.update(
            context_sampling="wave" if cfg.uses("wave_context") else "request",
            input_lead=cfg.uses("input_lead"), field_filter=cfg.uses("field_filter"),
            answer_checks=cfg.uses("answer_checks"), strip_input_echo=cfg.uses("strip_input_echo"),
            answer_repeat_limit=cfg.repeat_limit, balance_floor=cfg.floor,
            constrain_labels=cfg.labels_in_vote == "constrained", label_filter=cfg.labels_in_vote != "any")
        if task.is_classification or not settings["answer_repeat_limit"]:
            del settings["answer_repeat_limit"]
        if not settings["strip_input_echo"]:
            del settings["strip_input_echo"]
        return settings

    def check_signal(self, sampler: Sampler, seed: int) -> dict[str, Any] | None:
        task = self.eval_tasks()[0]
        return check_signal(task, sampler, self.cfg, PromptFormat.from_info(sampler.info), seed)

    def synthesize(self, sampler: Sampler, seed: int) -> SynthResult:
        task = self.eval_tasks()[0]
        cfg = self.cfg.selfguide
        if cfg.num_inputs == 0:  # gold examples alone: nothing is written or labelled (the vote stands in for auto)
            cfg = cfg.model_copy(update={"labeler": "vote"})
        if task.is_classification and cfg.labeler == AUTO:  # outside the loop (`synth`): the check runs here
            report = self.check_signal(sampler, seed)
            progress.summary(f"signal check: {report['line']}")
            if report["chosen"] is None:
                raise UserError(f"{task.name}: {report['line']}")
            cfg = cfg.model_copy(update={"labeler": report["chosen"]})
        return synthesize(task, sampler, cfg, PromptFormat.from_info(sampler.info), seed=seed,
                          gold=gold_examples(task, self.cfg))

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
