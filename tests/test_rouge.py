"""The fast ROUGE-L filter must decide exactly as rouge_score does, pair for pair."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score.rouge_scorer import RougeScorer

from selfguide_lite import rouge
from selfguide_lite.rouge import Nearest, RougePool, fmeasure_from_lcs, rouge_l, rouge_tokens

SCORER = RougeScorer(["rougeL"], use_stemmer=False)
SEEDS_PATH = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"
)


def ref_score(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


def ref_filter(pool: list[str], batch: list[str], threshold: float = 0.7) -> list[float | None]:
    """The slow, obviously right version: score every pair with rouge_score, grow the pool."""
    pool = list(pool)
    out: list[float | None] = []
    for text in batch:
        best = max((ref_score(p, text) for p in pool), default=0.0)
        if best > threshold:
            out.append(best)
        else:
            out.append(None)
            pool.append(text)
    return out


@pytest.fixture(scope="module")
def seed_instructions() -> list[str]:
    if not SEEDS_PATH.is_file():
        pytest.skip(f"seed pool not found at {SEEDS_PATH}")
    return [json.loads(line)["instruction"] for line in SEEDS_PATH.read_text().splitlines() if line.strip()]


# Words chosen to exercise the tokenizer: case, punctuation glued to words, digits, non-ASCII
# (dropped by rouge's tokenizer), and pure punctuation (no tokens at all).
WORDS = [
    "the",
    "The",
    "THE",
    "cat",
    "cat,",
    "Cat.",
    "dog",
    "a",
    "a-b",
    "x2",
    "42",
    "!",
    "...",
    "é",
    "naïve",
    "don't",
    "the!",
]
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join) | st.text(max_size=30)


def test_tokens_are_rouge_scores_own():
    assert rouge_tokens("Hello, World! It's 2024 — naïve") == [
        "hello",
        "world",
        "it",
        "s",
        "2024",
        "na",
        "ve",
    ]
    assert rouge_tokens("?!...") == []


@pytest.mark.parametrize(
    ("target", "prediction"),
    [
        ("the cat sat on the mat", "the cat sat on a mat"),
        ("The CAT, sat!", "the cat sat"),
        ("", "anything"),
        ("!!!", "???"),
        ("a a a b", "a b b b"),
        ("one two three four five six seven eight nine ten", "one two three four five six seven x y z"),
    ],
)
def test_pair_score_equals_rouge_score(target, prediction):
    assert rouge_l(target, prediction) == ref_score(target, prediction)


def test_fmeasure_arithmetic_matches_at_the_threshold():
    # Exactly 7 of 10 tokens shared both ways: the F-measure sits on 0.7 up to rounding, the case
    # where a different order of float operations could flip the decision.
    for lp in range(1, 40):
        for lt in range(1, 40):
            for lcs in range(0, min(lp, lt) + 1):
                target = " ".join(f"t{i}" for i in range(lt))
                shared = [f"t{i}" for i in range(lcs)]
                pred = " ".join(shared + [f"p{i}" for i in range(lp - lcs)])
                if abs(2 * lcs / (lp + lt) - 0.7) < 0.02:
                    assert fmeasure_from_lcs(lcs, lt, lp) == ref_score(target, pred)


def test_boundary_pairs_decide_like_rouge_score():
    target = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    for lcs in range(11):
        pred = " ".join([f"w{i}" for i in range(lcs)] + [f"z{i}" for i in range(10 - lcs)])
        got = RougePool([target]).is_near_duplicate(pred)
        ref = ref_score(target, pred)
        assert (got is not None) == (ref > 0.7)
        if got is not None:
            assert got.score == ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=6), st.lists(texts, min_size=1, max_size=8))
def test_property_scores_and_decisions_equal_rouge_score(pool_texts, batch):
    pool = RougePool(pool_texts)
    matrix, over = pool.scores(batch), pool.exceeds(batch)
    for i, (text, near) in enumerate(zip(batch, pool.max_scores(batch), strict=True)):
        ref = [ref_score(p, text) for p in pool_texts]
        assert near.score == max(ref)
        assert ref[near.index] == near.score
        assert list(matrix[i]) == ref
        assert list(over[i]) == [r > 0.7 for r in ref]
    ref_decisions = ref_filter(pool_texts, batch)
    got = pool.filter_batch(batch)
    assert [None if g is None else g.score for g in got] == ref_decisions


@settings(max_examples=200, deadline=None)
@given(texts, texts)
def test_property_single_pair(a, b):
    assert rouge_l(a, b) == ref_score(a, b)
    assert (RougePool([a]).is_near_duplicate(b) is not None) == (ref_score(a, b) > 0.7)


def test_within_batch_candidates_see_earlier_kept_ones():
    pool = RougePool(["completely unrelated seed instruction here"])
    batch = [
        "Write a short story about a brave mouse",
        "Write a short story about a brave little mouse",  # near the first: dropped
        "List three capitals of countries in Europe",
        "Write a short story about a brave mouse",  # exact repeat of the first: dropped
    ]
    got = pool.filter_batch(batch)
    assert got[0] is None and got[2] is None
    assert got[1] is not None and got[1].text == batch[0] and got[1].index == 1
    assert got[3] is not None and got[3].score == 1.0
    assert len(pool) == 3 and pool.texts[1:] == [batch[0], batch[2]]


def test_is_near_duplicate_and_ask_only_batches_leave_the_pool_alone():
    pool = RougePool(["Summarize the following article in two sentences"])
    assert pool.is_near_duplicate("Summarize the following article in three sentences") is not None
    assert pool.is_near_duplicate("Translate this sentence into French") is None
    assert pool.filter_batch(["a b c d e", "a b c d e"], add=False)[1] is not None
    assert len(pool) == 1
    pool.add("Translate this sentence into French")
    assert pool.is_near_duplicate("Translate this sentence into French please") is not None
    assert len(pool) == 2


def test_empty_pool_and_token_free_texts():
    pool = RougePool()
    assert pool.max_scores(["anything"]) == [Nearest(0.0, -1, None)]
    assert pool.is_near_duplicate("anything") is None
    # Texts without any rouge token score 0 with everything, even with each other.
    assert pool.filter_batch(["!!!", "???", "!!!"]) == [None, None, None]


def test_chunked_batches_match_reference(monkeypatch, seed_instructions):
    monkeypatch.setattr(rouge, "_ROW_CHUNK", 7)
    rng = random.Random(3)
    batch = []
    for _ in range(60):
        words = rng.choice(seed_instructions).split()
        for _ in range(rng.randint(0, 3)):
            if len(words) > 2:
                del words[rng.randrange(len(words))]
        batch.append(" ".join(words))
    pool_texts = seed_instructions[:40]
    got = RougePool(pool_texts).filter_batch(batch)
    assert [None if g is None else g.score for g in got] == ref_filter(pool_texts, batch)
    assert any(g is not None for g in got) and any(g is None for g in got)


def test_real_seed_pairs_equal_rouge_score(seed_instructions):
    rng = random.Random(0)
    sample = rng.sample(seed_instructions, 40)
    pool = RougePool(sample)
    matrix = pool.scores(sample)
    for i, pred in enumerate(sample):
        for j, target in enumerate(sample):
            assert matrix[i, j] == ref_score(target, pred)


def test_many_distinct_tokens_skip_surrogates():
    pool = RougePool()
    words = [f"w{i}" for i in range(0xD800 + 50)]
    encoded = pool.encode(" ".join(words))
    assert len(encoded) == len(words)
    assert not any(0xD800 <= ord(c) < 0xE000 for c in encoded)
