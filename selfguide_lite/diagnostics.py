"""Why a round helped or did not: answer format, self-label quality, input quality.

Pure functions over predictions, votes and synthesis records (no sampling here), so each can be
checked on hand-made cases. The effect study (scripts/effect_study.py) feeds them real runs.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from .metrics import exact_match, normalize, read_labelling, rouge_l

# A generation answer that goes on with another field or turn is not one answer: the model kept
# writing the prompt's pattern ("Input: ...", "Output: ...") or opened a chat turn.
_CONTINUATION = re.compile(r"(^|\n)\s*(input|output|answer|question|sentence|fact|user|assistant|system)\s*\d*\s*:"
                           r"|<\|im_(start|end)\|>|</s>", re.IGNORECASE)


def is_label(prediction: str, labels: Sequence[str]) -> bool:
    """Classification format: the prediction is exactly one of the labels (after normalisation)."""
    return normalize(prediction) in {normalize(lab) for lab in labels}


def is_single_answer(prediction: str, references: Sequence[str]) -> bool:
    """Generation format: a non-empty answer with no continuation (another field or turn) and no more
    lines than the longest reference has."""
    text = prediction.strip()
    if not text or _CONTINUATION.search(text):
        return False
    lines = len([ln for ln in text.splitlines() if ln.strip()])
    allowed = max((len([ln for ln in ref.strip().splitlines() if ln.strip()]) for ref in references), default=1)
    return lines <= max(1, allowed)


def format_share(predictions: Sequence[str], references: Sequence[Sequence[str]], labels: Sequence[str] | None) -> float:
    """Percent of predictions in the task's answer format: a label (classification, `labels` given)
    or a single answer (generation)."""
    if not predictions:
        return 0.0
    ok = sum(is_label(p, labels) if labels else is_single_answer(p, refs)
             for p, refs in zip(predictions, references, strict=True))
    return 100.0 * ok / len(predictions)


def copy_share(predictions: Sequence[str], demo_outputs: Sequence[str]) -> float:
    """Percent of predictions that contain a demonstration's answer verbatim (normalised): the student
    answering with an example instead of the input. Empty demo answers are ignored."""
    outs = [normalize(o) for o in demo_outputs if normalize(o)]
    if not predictions or not outs:
        return 0.0
    return 100.0 * sum(any(o in normalize(p) for o in outs) for p in predictions) / len(predictions)


def input_copy_share(predictions: Sequence[str], inputs: Sequence[str]) -> float:
    """Percent of predictions that are the input itself (normalised). On a rewriting task that
    changes a few words, answering with the input is a strong trivial strategy, and a round can gain
    by moving towards it; this share and `input_copy_score` tell that apart from learning the task."""
    if not predictions:
        return 0.0
    same = sum(normalize(p) == normalize(x) for p, x in zip(predictions, inputs, strict=True))
    return 100.0 * same / len(predictions)


def input_copy_score(inputs: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """ROUGE-L (0-100) of the trivial answer "repeat the input": the bar a generation gain should be
    read against."""
    if not inputs:
        return 0.0
    return 100.0 * sum(rouge_l(x, refs) for x, refs in zip(inputs, references, strict=True)) / len(inputs)


def _score(answer: str, references: Sequence[str], classification: bool) -> float:
    return 100.0 * (exact_match(answer, references) if classification else rouge_l(answer, references))


def label_quality(references: Sequence[Sequence[str]], votes: Sequence[str | None], greedy: Sequence[str],
                  classification: bool, labels: Sequence[str] = ()) -> dict[str, Any]:
    """How good the self-labels are, on inputs whose gold answers are known (validation).

    `votes[i]` is the vote's answer (None: the vote dropped the input), `greedy[i]` the student's
    greedy answer. Scores are exact match (classification) or ROUGE-L (generation), in percent:
    - vote_score: over every input, a dropped input scoring 0;
    - coverage: percent of inputs the vote kept;
    - vote_score_kept / greedy_score_kept: both on the kept inputs only: what training could teach
      compared with what the student already answers on the same inputs.
    Self-training can only teach what the vote gets right more often than greedy decoding, or a
    format the greedy answer lacks. With the task's `labels` (classification) also `vote_reading`: the
    vote's labels read as the signal check reads them (metrics.read_labelling: balanced accuracy, chance).
    """
    n = len(references)
    if not (n == len(votes) == len(greedy)):
        raise ValueError("references, votes and greedy answers must have the same length")
    if n == 0:
        return {"n": 0, "coverage": 0.0, "vote_score": 0.0, "greedy_score": 0.0,
                "vote_score_kept": None, "greedy_score_kept": None}
    vote_scores = [_score(v, r, classification) if v is not None else 0.0 for v, r in zip(votes, references, strict=True)]
    greedy_scores = [_score(g, r, classification) for g, r in zip(greedy, references, strict=True)]
    kept = [i for i, v in enumerate(votes) if v is not None]
    reading = {"vote_reading": read_labelling(labels, [r[0] if r else "" for r in references], list(votes))} \
        if classification and labels else {}
    return {
        "n": n,
        "coverage": 100.0 * len(kept) / n,
        "vote_score": statistics.fmean(vote_scores),
        "greedy_score": statistics.fmean(greedy_scores),
        "vote_score_kept": statistics.fmean(vote_scores[i] for i in kept) if kept else None,
        "greedy_score_kept": statistics.fmean(greedy_scores[i] for i in kept) if kept else None,
        **reading,
    }


def input_quality(annotated: Sequence[dict[str, Any]], stats: dict[str, Any], real_inputs: Sequence[str]) -> dict[str, Any]:
    """What the student's own inputs look like, from one round's records.

    `annotated`: records that got a label from the vote (training rows before balancing, with
    `input`, `output` and, for classification, `target_label`: the label the input was written for);
    `stats`: the round's stats.json (candidates, input_dropped); `real_inputs`: the task's own inputs.
    - target_agreement: percent of labelled inputs whose vote label equals the label asked for
      (classification; None otherwise): low means the student cannot write an input for a label;
    - duplicate_share: percent of candidates dropped as duplicates;
    - length_ratio: median length (words) of the kept inputs over the real inputs' median."""
    targeted = [r for r in annotated if r.get("target_label") is not None]
    target_agreement = (100.0 * sum(normalize(r["output"]) == normalize(r["target_label"]) for r in targeted) / len(targeted)
                        if targeted else None)
    candidates = stats.get("candidates") or 0
    duplicates = (stats.get("input_dropped") or {}).get("duplicate", 0)
    own = [len(r["input"].split()) for r in annotated]
    real = [len(t.split()) for t in real_inputs]
    length_ratio = (statistics.median(own) / statistics.median(real)) if own and real and statistics.median(real) else None
    return {
        "target_agreement": target_agreement,
        "duplicate_share": 100.0 * duplicates / candidates if candidates else 0.0,
        "length_ratio": length_ratio,
        "labels_written": dict(sorted({str(r["output"]): sum(1 for x in annotated if x["output"] == r["output"])
                                       for r in annotated}.items())) if targeted else None,
    }
