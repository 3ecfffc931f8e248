"""The official Natural Instructions V2 metrics (contract §5).

normalize = lowercase, delete every `string.punctuation` character, collapse whitespace.
Exact match and ROUGE-L (rouge_score with the Porter stemmer, on the raw strings) are each the
max over references, x100, averaged over instances; a missing prediction counts as "".
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from rouge_score import rouge_scorer

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    pred = normalize(prediction)
    return float(any(pred == normalize(ref) for ref in references))


@lru_cache(maxsize=1)
def _stemming_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    scorer = _stemming_scorer()
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references), default=0.0)


def score_predictions(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Both metrics over every instance in `references`; ids without a prediction score as ""."""
    n = len(references)
    if n == 0:
        return {"n": 0, "exact_match": 0.0, "rougeL": 0.0}
    em = rl = 0.0
    for inst_id, refs in references.items():
        pred = predictions.get(inst_id, "")
        em += exact_match(pred, refs)
        rl += rouge_l(pred, refs)
    return {"n": n, "exact_match": 100.0 * em / n, "rougeL": 100.0 * rl / n}


# --- skill beside the official metric ------------------------------------------------------------
# A classification exact match can be won by answering one label to every input, and a generation
# ROUGE-L by copying the input; these read a score against those trivial answers (issue: "teach the task,
# not a constant answer").


def classification_skill(labels: Sequence[str], references: Sequence[Sequence[str]],
                         predictions: Sequence[str]) -> dict[str, float | int]:
    """Skill columns for one split of a classification task, all x100 like the official metrics.

    An instance's gold label is its first reference, normalised. balanced_accuracy is the mean recall
    over the gold labels present in the split (so a constant answer scores exactly `chance`, 100 / their
    number); macro_f1 averages F1 over the same labels; labels_predicted counts distinct task labels
    the predictions use; label_answers the percent of predictions that are a task label (the answer
    format); best_constant is the exact match the best single label would score here."""
    gold = [normalize(refs[0]) if refs else "" for refs in references]
    said = [normalize(p) for p in predictions]
    present = sorted(set(gold))
    if not present:
        return {"balanced_accuracy": 0.0, "chance": 0.0, "macro_f1": 0.0, "labels_predicted": 0, "best_constant": 0.0,
                "label_answers": 0.0}
    recalls, f1s = [], []
    for label in present:
        hits = sum(1 for g, p in zip(gold, said, strict=True) if g == p == label)
        n_gold = gold.count(label)
        n_said = said.count(label)
        recalls.append(hits / n_gold)
        f1s.append(2 * hits / (n_gold + n_said))
    known = {normalize(lab) for lab in labels}
    constants = known | set(present)
    best_constant = max(sum(1 for refs in references if any(normalize(r) == c for r in refs)) for c in constants)
    return {
        "balanced_accuracy": 100.0 * sum(recalls) / len(present),
        "chance": 100.0 / len(present),
        "macro_f1": 100.0 * sum(f1s) / len(present),
        "labels_predicted": len({p for p in said if p in known}),
        "best_constant": 100.0 * best_constant / len(references),
        "label_answers": 100.0 * sum(1 for p in said if p in known) / len(said),
    }


def read_labelling(labels: Sequence[str], gold: Sequence[str], said: Sequence[str | None]) -> dict[str, float | int]:
    """Self-labels against the gold labels (one gold label each): balanced accuracy with an unlabelled
    input (None) counted as wrong, chance, task labels used, coverage (percent labelled). The one reading
    of self-labels: the signal check, the diagnostics and the label-quality study use it."""
    skill = classification_skill(labels, [[g] for g in gold], [s if s is not None else "" for s in said])
    return {"balanced_accuracy": round(skill["balanced_accuracy"], 2), "chance": round(skill["chance"], 2),
            "labels_used": skill["labels_predicted"],
            "coverage": round(100.0 * sum(s is not None for s in said) / max(1, len(said)), 1)}


def input_as_answer(inputs: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Generation's trivial answer: each input copied as its own answer, scored by the official metrics."""
    ids = [str(i) for i in range(len(inputs))]
    scores = score_predictions(dict(zip(ids, references, strict=True)), dict(zip(ids, inputs, strict=True)))
    return {"exact_match": scores["exact_match"], "rougeL": scores["rougeL"]}


# --- what a student is, in words ------------------------------------------------------------------
# One definition for the CLI summary, the report, `eval` and the study scripts.

READS_MARGIN = 5.0  # "reads": balanced accuracy at least chance + this, with two or more labels predicted
READS = "reads"
CONSTANT = "constant answer (format only)"
BELOW_CHANCE = "below chance"
AT_CHANCE = "at chance"
NOT_IN_FORMAT = "not in the answer format"
ABOVE_COPY = "above the input copy"
BELOW_COPY = "below the input copy"


def verdict(skill: Mapping[str, Any] | None, rouge_l: float | None = None) -> str | None:
    """What a student's answers on one split are, against the trivial answers (None: no skill columns).

    Classification, in this order: fewer than half of the answers are a task label: not in the answer
    format; at most one label used: a constant answer (format only, whatever its exact match); balanced
    accuracy at least chance + READS_MARGIN: reads; at most chance - READS_MARGIN: below chance; else at
    chance. Generation: the split's ROUGE-L (`rouge_l`) against the input copied as the answer."""
    if not skill:
        return None
    if "balanced_accuracy" in skill:
        in_format = skill.get("label_answers")
        if (in_format is not None and in_format < 50.0) or skill["labels_predicted"] == 0:
            return NOT_IN_FORMAT
        if skill["labels_predicted"] <= 1:
            return CONSTANT
        if skill["balanced_accuracy"] >= skill["chance"] + READS_MARGIN:
            return READS
        if skill["balanced_accuracy"] <= skill["chance"] - READS_MARGIN:
            return BELOW_CHANCE
        return AT_CHANCE
    if rouge_l is None or "input_as_answer_rougeL" not in skill:
        return None
    return ABOVE_COPY if rouge_l > skill["input_as_answer_rougeL"] else BELOW_COPY


def verdict_sentence(name: str | None) -> str | None:
    """A plain sentence for a final student whose verdict says it did not learn the task (None otherwise)."""
    return {
        CONSTANT: "It answers one label to every input: it learned the answer format, not the task.",
        NOT_IN_FORMAT: "Most of its answers are not one of the task's labels.",
        BELOW_CHANCE: "Its labels agree with the truth less often than chance.",
        AT_CHANCE: "Its labels agree with the truth no more often than chance: it does not read the input yet.",
        BELOW_COPY: "Copying the input as the answer scores higher than its answers.",
    }.get(name or "")


def skill_line(skill: dict[str, Any] | None) -> str:
    """The skill columns in words, for logs and the CLI summary ('' when there are none)."""
    if not skill:
        return ""
    if "balanced_accuracy" in skill:
        return (f"balanced accuracy {skill['balanced_accuracy']:.1f} (chance {skill['chance']:.1f}), macro-F1 "
                f"{skill['macro_f1']:.1f}, {skill['labels_predicted']} label(s) predicted, best constant "
                f"{skill['best_constant']:.1f}")
    return f"input as answer: ROUGE-L {skill['input_as_answer_rougeL']:.1f}"
