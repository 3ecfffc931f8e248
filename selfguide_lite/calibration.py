"""Calibrated self-labels: the student's probability of each label with its label prior divided out.

A small student's own labels can be one label for every input: its prior over the label strings
swamps what it reads in the input (measured: the vote was 94-100 % one label on 5 of 7 classification
tasks). In-context classification work corrects that without any gold label: contextual calibration
(Zhao et al., "Calibrate Before Use", ICML 2021) estimates the prior from content-free inputs, batch
calibration (Zhou et al., ICLR 2024) from the batch of inputs being labelled; the calibrated label is
the argmax of p(label | input) / prior(label). Here the batch is the round's kept inputs.

Pure arithmetic on a [inputs x labels] array of summed log-probabilities (`Sampler.score`), so it is
tested on hand-made numbers; `score_labels` is the one place that asks the student. Which prior each
labeller divides out is the labeller's own (methods/labellers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine.sampler import Sampler, ScoreRequest
from .prompts import PromptFormat, task_prompt
from .tasks import Task

# Content-free inputs for contextual calibration (Zhao et al. use "N/A", "" and "[MASK]").
CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")


def score_requests(task: Task, fmt: PromptFormat, inputs: Sequence[str]) -> list[ScoreRequest]:
    """Per input: its task prompt, and each label as the training target renders it (lead, label,
    end-of-answer token)."""
    answers = tuple(fmt.answer(label) for label in task.labels)
    return [ScoreRequest(fmt.render(task_prompt(task, text)), answers) for text in inputs]


def as_label_matrix(scored: Sequence[Sequence[float]], n_labels: int) -> np.ndarray:
    """A sampler's scores as the [inputs x labels] array of summed log-probabilities."""
    return np.asarray(scored, dtype=np.float64).reshape(len(scored), n_labels)


def score_labels(task: Task, sampler: Sampler, fmt: PromptFormat, inputs: Sequence[str]) -> np.ndarray:
    """[inputs x labels] summed log-probabilities of each label after the task prompt of each input."""
    return as_label_matrix(sampler.score(score_requests(task, fmt, inputs)), len(task.labels))


def label_probabilities(logprobs: np.ndarray) -> np.ndarray:
    """Softmax over the labels of each row: p(label | input) among the task's labels."""
    shifted = logprobs - logprobs.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=1, keepdims=True)


def fitted_prior(probs: np.ndarray, labels: Sequence[int], steps: int = 500, rate: float = 1.0) -> np.ndarray:
    """The label prior whose division makes the gold labels most likely: a per-label bias b on log p(label |
    input), fitted by gradient ascent on the class-balanced log-likelihood of the gold rows (each label's
    rows weigh as much in all as any other label's), returned as prior = softmax(-b). Convex in b, so the
    fit is the same whatever the start; a label no gold row has keeps its place only through the others."""
    logp = np.log(np.clip(probs, 1e-300, None))
    n, k = logp.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), list(labels)] = 1.0
    counts = onehot.sum(axis=0)
    weights = (onehot / np.where(counts > 0, counts, 1.0)).sum(axis=1) / max(int((counts > 0).sum()), 1)
    b = np.zeros(k)
    for _ in range(steps):
        z = logp + b
        q = np.exp(z - z.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        b += rate * (weights[:, None] * (onehot - q)).sum(axis=0)
    prior = np.exp(-(b - b.max()))
    return prior / prior.sum()


def batch_prior(probs: np.ndarray) -> np.ndarray:
    """The student's label prior as the mean label distribution over a batch of inputs."""
    return probs.mean(axis=0)


@dataclass(frozen=True)
class CalibratedLabel:
    label: int | None  # index into the task's labels; None: not confident enough
    margin: float  # calibrated log-score of the best label minus the runner-up's
    probs: tuple[float, ...]  # the uncalibrated p(label | input)


def calibrated_labels(probs: np.ndarray, prior: np.ndarray | None, margin: float) -> list[CalibratedLabel]:
    """argmax of log p(label | input) - log prior(label) per row (prior None: the plain argmax), kept when
    it beats the runner-up by at least `margin` (and by more than nothing: an input that changes nothing
    in the student's label distribution gets no label)."""
    scores = np.log(np.clip(probs, 1e-300, None))
    if prior is not None:
        scores = scores - np.log(np.clip(prior, 1e-300, None))
    out = []
    for row, p in zip(scores, probs, strict=True):
        order = np.argsort(-row, kind="stable")
        gap = float(row[order[0]] - row[order[1]]) if len(row) > 1 else float("inf")
        confident = gap > 0 and gap >= margin
        out.append(CalibratedLabel(int(order[0]) if confident else None, gap, tuple(float(x) for x in p)))
    return out
