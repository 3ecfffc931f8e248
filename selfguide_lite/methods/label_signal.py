"""The signal check: before a round trains, do the student's own labels agree with the truth above chance?

A classification round teaches exactly what the student's labels say; where they agree with the gold
labels at chance it teaches one constant answer (measured on both built-in students, docs/effect-study.md),
and self-training cannot lift a labeller that is not already better than chance (Frei et al., AISTATS
2022). So the current student labels validation inputs, whose gold labels are known, with every labeller
(the score labellers share one scoring pass), and each labelling is read as balanced accuracy.

The rule (committed before the runs that judge it; validation only):
- instances: `Task.split("signal")`, the promotion validation first, then instances that are neither
  validation nor test, up to `selfguide.signal_size` (300);
- statistic: balanced accuracy (an input left unlabelled counts as wrong), against chance = 100 / the gold
  labels present;
- test: one-sided permutation test (the gold labels shuffled 2,000 times, fixed seed), corrected for choosing
  among the labellers by comparing each labeller with the permutations' best labeller (max-T);
- a labeller passes when p <= `selfguide.signal_level` (0.05), its balanced accuracy is at least
  chance + READS_MARGIN (the margin at which a student "reads") and it uses two or more labels.
`auto` takes the passing labeller with the highest balanced accuracy; none passing: the round is not
trained. A labeller named in the configuration is checked alone and labels the round whatever the check says.

Generation is checked but never refused: the vote's answers on a few validation inputs against the gold
answers (ROUGE-L), beside the greedy answer and the input copied as the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Config
from ..diagnostics import input_copy_score, label_quality
from ..engine.sampler import Sampler
from ..evaluate import predict
from ..metrics import READS_MARGIN, normalize, read_labelling, verdict
from ..prompts import PromptFormat
from ..tasks import Instance, Task
from .labellers import AUTO, LABELLERS, LabelJob, annotate, gold_examples, labeller_for

PERMUTATIONS = 2000
MIN_LABELS = 2
RULE = f"balanced accuracy, one-sided permutation test (max-T over labellers, {PERMUTATIONS}), >= chance + {READS_MARGIN:g}"


@dataclass(frozen=True)
class Permutation:
    balanced_accuracy: np.ndarray  # [labellers], percent
    chance: float  # percent
    p_value: np.ndarray  # [labellers], corrected for choosing among them (max-T)


def as_classes(gold: list[str], said: list[list[str | None]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Gold and predicted labels as integers over the gold labels present (normalised); a prediction that
    is none of them (or no label) is -1, always wrong."""
    classes = sorted({normalize(g) for g in gold})
    index = {c: i for i, c in enumerate(classes)}
    g = np.array([index[normalize(x)] for x in gold], dtype=np.int64)
    s = np.array([[index.get(normalize(x), -1) if x is not None else -1 for x in row] for row in said],
                 dtype=np.int64).reshape(len(said), len(gold))
    return g, s, len(classes)


def _balanced_accuracy(gold_onehot: np.ndarray, said_onehot: np.ndarray, per_class: np.ndarray) -> np.ndarray:
    """[..., n, C] gold and [L, n, C] predictions -> [..., L] balanced accuracy (0-1)."""
    hits = np.einsum("...nc,lnc->...lc", gold_onehot, said_onehot)
    return (hits / per_class).mean(axis=-1)


def _encoded(gold: list[str], said: list[list[str | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gold ids, one-hot gold [n, C], one-hot predictions [L, n, C], gold count per class)."""
    g, s, n_classes = as_classes(gold, said)
    eye = np.eye(n_classes, dtype=np.float32)
    said_onehot = np.where(s[..., None] >= 0, eye[np.clip(s, 0, None)], 0.0).astype(np.float32)
    return g, eye, said_onehot, np.bincount(g, minlength=n_classes).astype(np.float32)


def permutation_test(gold: list[str], said: list[list[str | None]], permutations: int = PERMUTATIONS,
                     seed: int = 0) -> Permutation:
    """Balanced accuracy of each labelling in `said` against `gold`, and its one-sided p-value against
    chance: the share of gold shuffles under which the best labelling scores at least as high (max-T, so
    the p-value holds for the labeller chosen as the best; with one labelling it is the plain test)."""
    g, eye, said_onehot, per_class = _encoded(gold, said)
    observed = _balanced_accuracy(eye[g], said_onehot, per_class)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(g) for _ in range(permutations)])
    null_best = _balanced_accuracy(eye[shuffled], said_onehot, per_class).max(axis=1)
    exceed = (null_best[None, :] >= observed[:, None] - 1e-9).sum(axis=1)
    return Permutation(100.0 * observed, 100.0 / len(per_class), (1 + exceed) / (1 + permutations))


def paired_permutation_test(gold: list[str], said_x: list[str | None], said_y: list[str | None],
                            permutations: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Balanced accuracy of labelling x minus that of labelling y on the same instances (points), and the
    one-sided p-value that x is better: the share of random per-instance swaps of the two predictions under
    which the difference is at least as large. Balanced accuracy is a weighted sum of per-instance hits
    (weight 1 / (labels present x that label's count)), so a swap flips the sign of one instance's term."""
    g, _, said_onehot, per_class = _encoded(gold, [said_x, said_y])
    hits = said_onehot[:, np.arange(len(g)), g]  # [2, n]: 1 where the prediction is the gold label
    terms = (hits[0] - hits[1]) / (len(per_class) * per_class[g])
    observed = float(terms.sum())
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0], dtype=np.float32), size=(permutations, len(g)))
    exceed = int((signs @ terms >= observed - 1e-9).sum())
    return 100.0 * observed, (1 + exceed) / (1 + permutations)


def signal_instances(task: Task, cfg: Config) -> list[Instance]:
    return task.split("signal", cfg.eval.validation_size, cfg.eval.test_size, cfg.selfguide.signal_size)


def label_all(job: LabelJob, names: list[str]) -> tuple[dict[str, list[str | None]], dict[str, float]]:
    """Every named labeller's label per input (None: left unlabelled) and its seconds; the score labellers
    share the job's one scoring pass."""
    said, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        said[name] = [v.answer for v in labeller_for(name).label(job)]
        seconds[name] = round(time.perf_counter() - start, 2)
    return said, seconds


def check_classification(task: Task, sampler: Sampler, cfg: Config, fmt: PromptFormat, seed: int) -> dict[str, Any]:
    """Every candidate labeller (all of them under `auto`, else the named one) on the signal instances."""
    sg = cfg.selfguide
    instances = signal_instances(task, cfg)
    inputs, gold = [i.input for i in instances], [i.outputs[0] for i in instances]
    can_score = getattr(sampler, "scores_labels", False)
    examples = gold_examples(task, cfg)  # a gold-fitted labeller is a candidate only where the run has them
    names = [n for n, lab in LABELLERS.items()
             if (can_score or not lab.needs_scores) and (examples or not lab.needs_gold)] if sg.labeler == AUTO \
        else [sg.labeler]
    unavailable = [n for n, lab in LABELLERS.items() if sg.labeler == AUTO and n not in names and not lab.needs_gold]
    job = LabelJob(task, sampler, sg, fmt, inputs, seed, gold=examples)
    start = time.perf_counter()
    job.prepare(names)  # the vote's samples and the label scores from one pass over the prompts, where it can
    prepared = round(time.perf_counter() - start, 2)
    said, seconds = label_all(job, names)
    test = permutation_test(gold, [said[n] for n in names], seed=seed)
    labellers = {}
    for i, name in enumerate(names):
        read = read_labelling(task.labels, gold, said[name])
        p = float(test.p_value[i])
        passes = p <= sg.signal_level and read["balanced_accuracy"] >= test.chance + READS_MARGIN \
            and read["labels_used"] >= MIN_LABELS
        labellers[name] = {**{k: v for k, v in read.items() if k != "chance"}, "p_value": round(p, 4),
                           "seconds": seconds[name], "passes": bool(passes)}
    def rank(name: str) -> tuple[float, int]:  # the higher balanced accuracy; a tie: the earlier labeller
        return labellers[name]["balanced_accuracy"], -names.index(name)

    passing = [n for n in names if labellers[n]["passes"]]
    best = max(names, key=rank)
    chosen = max(passing, key=rank) if passing else None
    report = {"type": "classification", "n": len(instances), "chance": round(test.chance, 2), "rule": RULE,
              "seconds_shared_pass": prepared,
              # score labellers need log-probabilities, which a completions server does not return
              **({"not_checked": unavailable} if unavailable else {}),
              "level": sg.signal_level, "requested": sg.labeler, "labellers": labellers, "best": best,
              "signal": chosen is not None, "chosen": chosen if sg.labeler == AUTO else sg.labeler}
    report["line"] = signal_line(report)
    return report


def signal_line(report: dict[str, Any]) -> str:
    """What the check measured and what it means, in one sentence a user can act on."""
    if report["type"] != "classification":
        return generation_line(report)
    n, chance = report["n"], report["chance"]
    best = report["best"]
    b = report["labellers"][best]
    measured = (f"best {best} {b['balanced_accuracy']:.1f} % balanced accuracy vs chance {chance:.1f} %, "
                f"{b['labels_used']} label(s), p = {b['p_value']:.2g}")
    if report["signal"]:
        return (f"the student's labels agree with the truth above chance on {n} validation instances ({measured}): "
                f"{report['chosen']} labels this round")
    if report["requested"] != AUTO:
        return (f"its labels agree with the truth at chance on {n} validation instances ({measured}); "
                f"training anyway because selfguide.labeler names {report['requested']}")
    return (f"its labels agree with the truth at chance on {n} validation instances ({measured}): the round is not "
            "trained, since it could only teach a constant answer. What could help: a larger student (--model, "
            "ollama: names included) or a few labelled examples trained on alone (a task's train:, "
            "selfguide.gold_per_label); selfguide.labeler: vote trains anyway")


def check_generation(task: Task, sampler: Sampler, cfg: Config, fmt: PromptFormat, seed: int) -> dict[str, Any]:
    """The vote's answers on the first validation inputs against the gold answers, beside greedy and the copy."""
    instances = task.split("validation", cfg.eval.validation_size, cfg.eval.test_size)[:cfg.selfguide.signal_generation_size]
    report: dict[str, Any] = {"type": "generation", "n": len(instances), "signal": True}
    if instances:
        start = time.perf_counter()
        votes = annotate(task, sampler, cfg.selfguide, fmt, [i.input for i in instances], seed)
        greedy = predict(task, sampler, instances, cfg.eval, fmt=fmt)
        refs = [i.outputs for i in instances]
        quality = label_quality(refs, [v.answer for v in votes], [g["prediction"] for g in greedy], False)
        report.update(vote_rougeL=round(quality["vote_score"], 2), coverage=round(quality["coverage"], 1),
                      greedy_rougeL=round(quality["greedy_score"], 2),
                      input_copy_rougeL=round(input_copy_score([i.input for i in instances], refs), 2),
                      seconds=round(time.perf_counter() - start, 2))
    report["line"] = generation_line(report)
    return report


def generation_line(report: dict[str, Any]) -> str:
    if not report["n"]:
        return "generation check: no validation inputs to check on"
    against_copy = verdict({"input_as_answer_rougeL": report["input_copy_rougeL"]}, report["vote_rougeL"])
    return (f"generation check on {report['n']} validation inputs (informs, does not refuse): the vote's answers "
            f"ROUGE-L {report['vote_rougeL']:.1f} ({report['coverage']:.0f} % of inputs answered), greedy answers "
            f"{report['greedy_rougeL']:.1f}, the input copied {report['input_copy_rougeL']:.1f}: the labels it "
            f"trains on are {against_copy}")


def check_signal(task: Task, sampler: Sampler, cfg: Config, fmt: PromptFormat, seed: int) -> dict[str, Any]:
    """The check for one task with one student (JSON-able; `line` says it in words)."""
    if task.is_classification:
        return check_classification(task, sampler, cfg, fmt, seed)
    return check_generation(task, sampler, cfg, fmt, seed)
