"""Who labels a written input: one class per labeller, looked up by name (`selfguide.labeler`).

A labeller turns inputs into `Vote`s (an answer, or None with the reason it was dropped). Each class owns
its name, its part of the synthesis stage's cache key and the drop stages it reports; adding a labeller is
one class here with `@labeller`. The vote samples answers; the others read the student's label
log-probabilities, which `LabelScores` computes once per set of inputs and shares between them (the
signal check runs every labeller on the same validation inputs).

`auto` is not a labeller: it names the choice the signal check makes (methods/label_signal.py).
The configuration holds the name as a string and this module checks it (`labeller_for`), so the
configuration imports nothing from the methods.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from ..calibration import (
    CONTENT_FREE_INPUTS,
    as_label_matrix,
    batch_prior,
    calibrated_labels,
    fitted_prior,
    label_probabilities,
    score_labels,
    score_requests,
)
from ..config import Config, SelfGuideConfig
from ..engine.sampler import Request, Sampler, SamplingParams
from ..errors import UserError
from ..filters import AnswerChecks, AnswerRunOn, LengthWindow, NoiseFilter
from ..metrics import normalize
from ..prompts import FIELD_STOPS, PromptFormat, task_prompt
from ..tasks import Instance, Task
from .base import stage_seed

AUTO = "auto"  # selfguide.labeler: the signal check chooses the labeller


@dataclass(frozen=True)
class Vote:
    answer: str | None  # None: the input is dropped
    share: float
    reason: str
    counts: dict[str, Any]
    rejected: dict[str, int]
    tokens: int = 0  # tokens decoded for its samples (set by annotate)
    margin: float | None = None  # calibrated labellers: the label's lead over the runner-up (log-score)


# --- the self-consistency vote ---------------------------------------------------------------------

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


def answer_filters(task: Task, cfg: SelfGuideConfig) -> tuple[LengthWindow | None, AnswerChecks | None]:
    """The generation vote's output length window and answer checks (None where off or classification)."""
    if task.is_classification:
        return None, None
    outputs = [d.output for d in task.demos]
    return (LengthWindow.from_examples(outputs) if cfg.output_length_filter else None,
            AnswerChecks.from_examples(outputs) if cfg.uses("answer_checks") else None)


def annotate(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, inputs: Sequence[str],
             seed: int) -> list[Vote]:
    """Label inputs the way a round does (contract §2.3): `num_samples` samples each, then the vote.

    One batch for all inputs; input n's samples are seeded by (seed, stage 2, n). Also used on
    validation inputs, whose gold answers are known, to measure how often the vote is right."""
    requests = vote_requests(task, sampler, cfg, fmt, inputs, seed)
    return read_votes(task, cfg, inputs, sampler.generate(requests) if requests else [])


def vote_requests(task: Task, sampler: Sampler, cfg: SelfGuideConfig, fmt: PromptFormat, inputs: Sequence[str],
                  seed: int) -> list[Request]:
    """The vote's sampling requests, one per input (`num_samples` samples each)."""
    classification = task.is_classification
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
    return [Request(fmt.render(task_prompt(task, text)),
                    replace(params, seed=stage_seed(seed, 2, n), run_on=AnswerRunOn.for_vote(out_length, checks, text)))
            for n, text in enumerate(inputs)]


def read_votes(task: Task, cfg: SelfGuideConfig, inputs: Sequence[str], outputs: Sequence[Sequence[Any]]) -> list[Vote]:
    """The vote over each input's samples (`Completion`s, in the order of `vote_requests`)."""
    noise = NoiseFilter(cfg.noise_patterns)
    out_length, checks = answer_filters(task, cfg)
    labels = task.labels if task.is_classification and cfg.labels_in_vote != "any" else None
    votes = []
    for text, outs in zip(inputs, outputs, strict=True):
        vote = self_consistency_vote([o.text for o in outs], labels=labels, noise=noise, length=out_length,
                                     threshold=cfg.vote_threshold, checks=checks, input_text=text)
        votes.append(replace(vote, tokens=sum(o.n_tokens for o in outs)))
    return votes


# --- label scores, shared by the labellers that read them ----------------------------------------

class LabelScores:
    """p(label | input) for one list of inputs, and for the content-free inputs, each asked of the student
    once however many labellers read them."""

    def __init__(self, task: Task, sampler: Sampler, fmt: PromptFormat, inputs: Sequence[str],
                 logprobs: np.ndarray | None = None) -> None:
        self.task, self.sampler, self.fmt, self.inputs = task, sampler, fmt, list(inputs)
        self._probs: np.ndarray | None = None if logprobs is None else label_probabilities(logprobs)
        self._content_free: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = label_probabilities(score_labels(self.task, self.sampler, self.fmt, self.inputs))
        return self._probs

    @property
    def content_free(self) -> np.ndarray:
        if self._content_free is None:
            self._content_free = label_probabilities(score_labels(self.task, self.sampler, self.fmt, CONTENT_FREE_INPUTS))
        return self._content_free


def gold_examples(task: Task, cfg: Config) -> list[Instance]:
    """The run's gold examples (`selfguide.gold_per_label` per label; none when 0), disjoint from validation,
    test and the signal check's pool at this configuration's sizes."""
    return task.gold(cfg.selfguide.gold_per_label, cfg.seed, cfg.eval.validation_size, cfg.eval.test_size,
                     cfg.selfguide.signal_size)


@dataclass
class LabelJob:
    """What a labeller needs to label one list of inputs with one student."""

    task: Task
    sampler: Sampler
    cfg: SelfGuideConfig
    fmt: PromptFormat
    inputs: list[str]
    seed: int
    scores: LabelScores | None = None  # shared by the score labellers; made on first use
    vote_outputs: list[list[Any]] | None = None  # the vote's samples, when `prepare` drew them with the scores
    gold: list[Instance] = field(default_factory=list)  # gold examples (`Task.gold`), never among `inputs`

    def label_scores(self) -> LabelScores:
        if self.scores is None:
            self.scores = LabelScores(self.task, self.sampler, self.fmt, self.inputs)
        return self.scores

    def prepare(self, names: Sequence[str]) -> None:
        """Before several labellers label the same inputs: where both the vote and a score labeller are
        among `names`, ask the student for the vote's samples and the label scores in one call, so a
        backend that can computes each prompt once (`Sampler.score_and_generate`)."""
        wanted = [LABELLERS[n] for n in names]
        if not (any(isinstance(lab, VoteLabeller) for lab in wanted) and any(isinstance(lab, ScoreLabeller) for lab in wanted)):
            return
        requests = vote_requests(self.task, self.sampler, self.cfg, self.fmt, self.inputs, self.seed)
        scored, self.vote_outputs = self.sampler.score_and_generate(score_requests(self.task, self.fmt, self.inputs),
                                                                     requests)
        self.scores = LabelScores(self.task, self.sampler, self.fmt, self.inputs,
                                  as_label_matrix(scored, len(self.task.labels)))


class Labeller(ABC):
    """One way to label classification inputs. Generation is always labelled by the vote."""

    name: ClassVar[str]
    drop_stages: ClassVar[tuple[str, ...]]  # the synthesis funnel's stages for the inputs it leaves unlabelled
    needs_scores: ClassVar[bool] = False  # reads label log-probabilities (`Sampler.scores_labels` must hold)
    needs_gold: ClassVar[bool] = False  # fitted on gold examples: a candidate only where the run has them

    @abstractmethod
    def label(self, job: LabelJob) -> list[Vote]:
        """A Vote per input, in order."""

    @abstractmethod
    def drop_stage(self, vote: Vote) -> str:
        """The funnel stage an unlabelled input is counted under (one of `drop_stages`)."""

    def cache_key(self, cfg: SelfGuideConfig) -> dict[str, Any]:
        """What this labeller adds to the synthesis cache key, beyond the settings every round has."""
        return {"labeler": self.name}

    def work(self, cfg: SelfGuideConfig, n_inputs: int) -> tuple[str, int, str]:
        """(progress label, total, unit) for the progress bar of labelling `n_inputs` inputs."""
        return "scoring labels", n_inputs, "inputs"


LABELLERS: dict[str, Labeller] = {}


def labeller(cls: type[Labeller]) -> type[Labeller]:
    LABELLERS[cls.name] = cls()
    return cls


def labeller_for(name: str) -> Labeller:
    """The labeller called `name`; an unknown name is a user error listing the known ones."""
    if name not in LABELLERS:
        raise UserError(f"selfguide.labeler must be {AUTO} or one of {', '.join(LABELLERS)}, not {name!r}")
    return LABELLERS[name]


def check_labeller_name(name: str) -> None:
    """`auto` or a registered name (called before any work, from the method's input check)."""
    if name != AUTO:
        labeller_for(name)


@labeller
class VoteLabeller(Labeller):
    """The self-consistency vote over sampled answers (the published method)."""

    name = "vote"
    drop_stages = ("no_valid_samples", "no_consensus")

    def label(self, job: LabelJob) -> list[Vote]:
        if job.vote_outputs is not None:
            return read_votes(job.task, job.cfg, job.inputs, job.vote_outputs)
        return annotate(job.task, job.sampler, job.cfg, job.fmt, job.inputs, job.seed)

    def drop_stage(self, vote: Vote) -> str:
        return "no_consensus" if vote.counts else "no_valid_samples"

    def cache_key(self, cfg: SelfGuideConfig) -> dict[str, Any]:
        return {}  # its settings (num_samples, annotate_*, vote_threshold) are in every round's key already

    def work(self, cfg: SelfGuideConfig, n_inputs: int) -> tuple[str, int, str]:
        return "annotating", n_inputs * cfg.num_samples, "samples"


class ScoreLabeller(Labeller):
    """The label with the highest calibrated log-probability (calibration.py says why), kept when it
    beats the runner-up by `label_margin`. A Vote's share is the student's own probability of the chosen
    label, its counts the probability of every label."""

    drop_stages = ("low_margin",)
    needs_scores = True

    @abstractmethod
    def prior(self, scores: LabelScores) -> np.ndarray | None:
        """The label prior divided out (None: the plain argmax)."""

    def prior_for(self, job: LabelJob) -> np.ndarray | None:
        return self.prior(job.label_scores())

    def label(self, job: LabelJob) -> list[Vote]:
        scores = job.label_scores()
        labels, margin = job.task.labels, job.cfg.label_margin
        votes = []
        for c in calibrated_labels(scores.probs, self.prior_for(job), margin):
            shown = {lab: round(p, 4) for lab, p in zip(labels, c.probs, strict=True)}
            if c.label is None:
                votes.append(Vote(None, 0.0, f"calibrated margin {c.margin:.3f} below {margin}", shown, {}))
            else:
                votes.append(Vote(labels[c.label], c.probs[c.label], "", shown, {}, margin=c.margin))
        return votes

    def drop_stage(self, vote: Vote) -> str:
        return "low_margin"

    def cache_key(self, cfg: SelfGuideConfig) -> dict[str, Any]:
        return {"labeler": self.name, "label_margin": cfg.label_margin}


@labeller
class ArgmaxLabeller(ScoreLabeller):
    """The label-constrained, uncalibrated best guess."""

    name = "argmax"

    def prior(self, scores: LabelScores) -> np.ndarray | None:
        return None


@labeller
class BatchCalibrated(ScoreLabeller):
    """The student's label prior as its mean label distribution over the inputs being labelled (Zhou et
    al., ICLR 2024): in a round the round's written inputs."""

    name = "batch-calibrated"

    def prior(self, scores: LabelScores) -> np.ndarray | None:
        return batch_prior(scores.probs)


@labeller
class ContentFreeCalibrated(ScoreLabeller):
    """The prior from content-free inputs ("N/A", "", "[MASK]"; Zhao et al., ICML 2021)."""

    name = "content-free-calibrated"

    def prior(self, scores: LabelScores) -> np.ndarray | None:
        return batch_prior(scores.content_free)


@labeller
class GoldFitted(ScoreLabeller):
    """The prior fitted on gold examples: a per-label bias on the student's label scores that makes the gold
    labels most likely (`calibration.fitted_prior`). It never labels a gold example itself (gold inputs are
    kept out of every labelled list: written inputs, validation), so no row labels itself."""

    name = "gold-fitted"
    needs_gold = True

    def prior(self, scores: LabelScores) -> np.ndarray | None:
        raise NotImplementedError("the gold-fitted prior comes from the job's gold examples (prior_for)")

    def prior_for(self, job: LabelJob) -> np.ndarray | None:
        if not job.gold:
            raise UserError("selfguide.labeler gold-fitted needs gold examples: set selfguide.gold_per_label")
        label_index = {normalize(lab): i for i, lab in enumerate(job.task.labels)}
        rows = [(g.input, label_index[normalize(g.outputs[0])]) for g in job.gold]
        probs = LabelScores(job.task, job.sampler, job.fmt, [text for text, _ in rows]).probs
        return fitted_prior(probs, [i for _, i in rows])


def drop_stages() -> tuple[str, ...]:
    """Every labeller's drop stages, in registration order (the funnel's annotation stages)."""
    return tuple(dict.fromkeys(stage for lab in LABELLERS.values() for stage in lab.drop_stages))
