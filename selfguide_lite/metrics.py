"""The official Natural Instructions V2 metrics (contract §5).

normalize = lowercase, delete every `string.punctuation` character, collapse whitespace.
Exact match and ROUGE-L (rouge_score with the Porter stemmer, on the raw strings) are each the
max over references, x100, averaged over instances; a missing prediction counts as "".
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from functools import lru_cache

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
