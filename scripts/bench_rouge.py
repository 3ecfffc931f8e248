#!/usr/bin/env python3
"""Benchmark: the fast ROUGE-L filter against rouge_score, side by side, in one run.

1. Agreement: every pair of a dense block of seed instructions and perturbed variants (word drops,
   swaps, duplications, insertions, case, punctuation; plus pairs built to sit exactly on 0.7) is
   decided by `RougePool.exceeds` and scored by `RougePool.scores`; a sample of at least 200,000
   pairs, most of them near the threshold, is compared with RougeScorer(["rougeL"]).score on the raw
   strings. Every decision and every score must be identical.
2. Throughput: pairs/s of the fast path vs rouge_score (raw strings, and pre-tokenised `_score_lcs`).
3. Stream: synthetic instructions (perturbed and recombined seeds, many near duplicates) filtered
   in waves against a growing pool, as the bootstrap does; 20,000 timed, 52,000 projected from the
   measured per-wave cost (and measured too, unless --no-52k).

Usage: python3 scripts/bench_rouge.py [--seed-tasks PATH] [--pairs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from rouge_score import rouge_scorer  # noqa: E402

from selfguide_lite.rouge import RougePool, rouge_tokens  # noqa: E402

THRESHOLD = 0.7
PUNCT = [",", ".", "!", "?", ";", ":", "...", "(", ")", '"', "-"]


def machine() -> str:
    from selfguide_lite.runtime import cpu_name

    cpu = cpu_name()
    return (
        f"{platform.node()} | {cpu} | {os.cpu_count()} logical cores | {platform.system()} {platform.release()} | "
        f"Python {platform.python_version()} | rouge-score {version('rouge-score')}, "
        f"rapidfuzz {version('rapidfuzz')}, numpy {np.__version__}"
    )


def perturb(text: str, rng: random.Random, vocab: list[str], strength: float) -> str:
    """Token-level edits (drop, swap, duplicate, insert, replace) plus cosmetic ones (case, punctuation)."""
    words = text.split()
    n_ops = rng.randint(0, max(1, int(strength * len(words))))
    for _ in range(n_ops):
        if not words:
            words = [rng.choice(vocab)]
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.22 and len(words) > 1:
            del words[i]
        elif op < 0.40:
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        elif op < 0.55:
            words.insert(i, words[i])
        elif op < 0.72:
            words.insert(i, rng.choice(vocab))
        elif op < 0.85:
            words[i] = rng.choice(vocab)
        elif op < 0.93:
            words[i] = rng.choice([str.upper, str.lower, str.title, str.swapcase])(words[i])
        else:
            words[i] = words[i] + rng.choice(PUNCT) if rng.random() < 0.5 else rng.choice(PUNCT) + words[i]
    return " ".join(words)


def boundary_variant(seed: str, rng: random.Random, vocab: list[str]) -> str | None:
    """A text whose ROUGE-L with `seed` is 0.7 up to float rounding: 2·LCS = 0.7·(|a|+|b|)."""
    tokens = rouge_tokens(seed)
    lt = len(tokens)
    options = []
    for lp in range(1, 2 * lt + 1):
        for lcs in range(0, min(lp, lt) + 1):
            if 20 * lcs == 7 * (lp + lt):
                options.append((lp, lcs))
    fresh = [w for w in vocab if w.lower() not in set(tokens)]
    if not options or not fresh:
        return None
    lp, lcs = rng.choice(options)
    keep = sorted(rng.sample(range(lt), lcs))
    out = [tokens[i] for i in keep]
    for _ in range(lp - lcs):  # words absent from the seed: the LCS stays exactly `lcs`
        out.insert(rng.randrange(len(out) + 1), rng.choice(fresh))
    return " ".join(out)


def build_corpus(seeds: list[str], rng: random.Random, variants: int) -> tuple[list[str], list[int]]:
    """Seeds and their families of variants; returns texts and each text's family (seed index)."""
    vocab = sorted({w.strip('.,!?;:"()').lower() for s in seeds for w in s.split()} - {""})
    texts, family = [], []
    for f, s in enumerate(seeds):
        texts.append(s)
        family.append(f)
        for k in range(variants):
            if k % 6 == 5 and (b := boundary_variant(s, rng, vocab)) is not None:
                texts.append(b)
            else:
                texts.append(perturb(s, rng, vocab, strength=rng.choice([0.15, 0.3, 0.45, 0.6])))
            family.append(f)
    return texts, family


def sample_pairs(family: list[int], n_pairs: int, rng: random.Random) -> np.ndarray:
    """80% within a family (near the threshold), 20% across families; (row=prediction, col=target)."""
    by_family: dict[int, list[int]] = {}
    for i, f in enumerate(family):
        by_family.setdefault(f, []).append(i)
    fams = list(by_family)
    pairs = set()
    while len(pairs) < n_pairs:
        if rng.random() < 0.8:
            members = by_family[rng.choice(fams)]
            pairs.add((rng.choice(members), rng.choice(members)))
        else:
            pairs.add((rng.randrange(len(family)), rng.randrange(len(family))))
    return np.array(sorted(pairs), dtype=np.int64)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def stream_instructions(seeds: list[str], n: int, rng: random.Random) -> list[str]:
    """Perturbed seeds, recombinations of two seeds' halves, reworded earlier items, exact repeats."""
    vocab = sorted({w.strip('.,!?;:"()').lower() for s in seeds for w in s.split()} - {""})
    out: list[str] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25 or not out:
            out.append(perturb(rng.choice(seeds), rng, vocab, strength=rng.choice([0.2, 0.4, 0.8])))
        elif r < 0.65:
            a, b = rng.choice(seeds).split(), rng.choice(seeds).split()
            mixed = a[: rng.randint(1, max(1, len(a) - 1))] + b[rng.randint(0, max(0, len(b) - 1)) :]
            mixed += rng.sample(vocab, rng.randint(0, 6))
            if rng.random() < 0.3:
                rng.shuffle(mixed)
            out.append(perturb(" ".join(mixed), rng, vocab, strength=0.5))
        elif r < 0.95:
            out.append(perturb(rng.choice(out), rng, vocab, strength=rng.choice([0.1, 0.3, 0.6])))
        else:
            out.append(rng.choice(out))
    return out


def run_stream(seeds: list[str], stream: list[str], wave: int, marks: tuple[int, ...]):
    """Filter `stream` in waves against a pool that starts as the seeds; times at each mark."""
    pool = RougePool(seeds, threshold=THRESHOLD)
    per_wave: list[tuple[int, float]] = []  # (pool size before the wave, seconds)
    at_mark: dict[int, float] = {}
    kept = 0
    t0 = time.perf_counter()
    for start in range(0, len(stream), wave):
        size_before = len(pool)
        t = time.perf_counter()
        decisions = pool.filter_batch(stream[start : start + wave])
        per_wave.append((size_before, time.perf_counter() - t))
        kept += sum(d is None for d in decisions)
        done = start + wave
        for m in marks:
            if m not in at_mark and done >= m:
                at_mark[m] = time.perf_counter() - t0
    return pool, kept, per_wave, at_mark


def project(
    per_wave: list[tuple[int, float]], n_done: int, n_target: int, wave: int, kept_rate: float, pool0: int
) -> float:
    """Extrapolate: wave cost ~ a + b·pool size (least squares on the measured waves); the pool keeps
    growing at the measured acceptance rate."""
    x = np.array([p for p, _ in per_wave], dtype=float)
    y = np.array([s for _, s in per_wave], dtype=float)
    b, a = np.polyfit(x, y, 1)
    total = float(y.sum())
    pool = pool0 + kept_rate * n_done
    for _ in range(n_done, n_target, wave):
        total += max(a + b * pool, 0.0)
        pool += kept_rate * wave
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--seed-tasks", default=str(REPO.parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl")
    )
    ap.add_argument("--pairs", type=int, default=240_000, help="pairs checked against rouge_score (>= 200k)")
    ap.add_argument("--variants", type=int, default=36, help="perturbed variants per seed")
    ap.add_argument(
        "--timing-pairs", type=int, default=20_000, help="pairs timed with pre-tokenised rouge_score"
    )
    ap.add_argument("--stream", type=int, default=20_000)
    ap.add_argument("--target", type=int, default=52_000)
    ap.add_argument(
        "--wave", type=int, default=128, help="candidates per filter call (16 requests x 8 items)"
    )
    ap.add_argument("--no-52k", action="store_true", help="project 52k only, do not also run it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    print("command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print("machine:", machine())
    seeds = [
        json.loads(line)["instruction"] for line in Path(args.seed_tasks).read_text().splitlines() if line.strip()
    ]
    print(f"seeds: {len(seeds)} from {args.seed_tasks}")
    rng = random.Random(args.seed)

    # 1. Agreement on a dense block, checked on sampled pairs.
    texts, family = build_corpus(seeds, rng, args.variants)
    pairs = sample_pairs(family, args.pairs, rng)
    pool = RougePool(texts, threshold=THRESHOLD)
    fast_over, t_fast = timed(pool.exceeds, texts)
    dense_pairs = len(texts) ** 2
    fast_dec = fast_over[pairs[:, 0], pairs[:, 1]]
    fast_scores = np.empty(len(pairs))
    rows_needed = np.unique(pairs[:, 0])
    t0 = time.perf_counter()
    exact_scored = 0
    for start in range(0, len(rows_needed), 512):
        rows = rows_needed[start : start + 512]
        block = pool.scores([texts[i] for i in rows])
        exact_scored += block.size
        pos = {int(r): k for k, r in enumerate(rows)}
        sel = np.flatnonzero(np.isin(pairs[:, 0], rows))
        fast_scores[sel] = block[[pos[int(r)] for r in pairs[sel, 0]], pairs[sel, 1]]
    t_exact = time.perf_counter() - t0

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    ref_scores = np.empty(len(pairs))
    t0 = time.perf_counter()
    for k, (i, j) in enumerate(pairs):
        ref_scores[k] = scorer.score(texts[j], texts[i])["rougeL"].fmeasure
    t_ref_raw = time.perf_counter() - t0
    ref_dec = ref_scores > THRESHOLD

    tokens = [rouge_tokens(t) for t in texts]
    sub = pairs[rng.sample(range(len(pairs)), min(args.timing_pairs, len(pairs)))]
    t0 = time.perf_counter()
    for i, j in sub:
        rouge_scorer._score_lcs(tokens[j], tokens[i])
    t_ref_tok = time.perf_counter() - t0

    dec_mismatch = int((fast_dec != ref_dec).sum())
    score_mismatch = int((fast_scores != ref_scores).sum())
    identical = dec_mismatch == 0 and score_mismatch == 0
    near = np.abs(ref_scores - THRESHOLD)
    on_boundary = int((np.abs(ref_scores - THRESHOLD) < 1e-12).sum())
    fast_rate = dense_pairs / t_fast
    exact_rate = exact_scored / t_exact
    raw_rate = len(pairs) / t_ref_raw
    tok_rate = len(sub) / t_ref_tok

    print()
    print(
        f"== agreement: {len(pairs):,} pairs sampled from a dense {len(texts):,} x {len(texts):,} block "
        f"({len(seeds)} seeds x {args.variants} variants + the seeds)"
    )
    print(
        f"   ref F > 0.7: {int(ref_dec.sum()):,}   |F-0.7| < 0.05: {int((near < 0.05).sum()):,}   "
        f"< 0.01: {int((near < 0.01).sum()):,}   exactly at 0.7 (within 1e-12): {on_boundary:,}"
    )
    print(
        f"   decisions differing from rouge_score: {dec_mismatch}   scores differing (float ==): {score_mismatch}"
        f"   -> identical: {identical}"
    )
    print()
    print("== throughput (pairs/s)")
    rows = [
        ("rouge_score RougeScorer.score (raw strings)", raw_rate, len(pairs), t_ref_raw),
        ("rouge_score _score_lcs (pre-tokenised)", tok_rate, len(sub), t_ref_tok),
        ("RougePool.scores (exact F, all pairs)", exact_rate, exact_scored, t_exact),
        ("RougePool.exceeds (keep/drop decision)", fast_rate, dense_pairs, t_fast),
    ]
    print(f"   {'method':<46} {'pairs/s':>14} {'pairs':>12} {'seconds':>9}  vs raw   vs pre-tok")
    for name, rate, n, sec in rows:
        print(
            f"   {name:<46} {rate:>14,.0f} {n:>12,} {sec:>9.2f} {rate / raw_rate:>8,.0f}x {rate / tok_rate:>8,.0f}x"
        )
    speedup = fast_rate / raw_rate

    # 3. The stream.
    n_total = args.stream if args.no_52k else max(args.stream, args.target)
    stream = stream_instructions(seeds, n_total, random.Random(args.seed + 1))
    _, kept_20k, waves_20k, marks = run_stream(seeds, stream[: args.stream], args.wave, (args.stream,))
    t20 = marks[args.stream]
    kept_rate = kept_20k / args.stream
    projected = project(waves_20k, args.stream, args.target, args.wave, kept_rate, len(seeds))
    measured_52k = None
    if not args.no_52k:
        pool52, kept_52k, _, marks52 = run_stream(seeds, stream, args.wave, (args.target,))
        measured_52k = marks52[args.target]
    print()
    print(f"== stream: waves of {args.wave} candidates against a growing pool ({len(seeds)} seeds to start)")
    print(
        f"   {args.stream:,} candidates: {t20:.2f} s, kept {kept_20k:,} ({100 * kept_rate:.1f}%), "
        f"final pool {len(seeds) + kept_20k:,}   [limit 30 s]"
    )
    print(
        f"   projected {args.target:,} (wave cost fit a + b*pool, pool growing at {100 * kept_rate:.1f}%): "
        f"{projected:.1f} s   [target < 120 s]"
    )
    if measured_52k is not None:
        print(
            f"   measured {args.target:,}: {measured_52k:.2f} s, kept {kept_52k:,}, final pool {len(pool52):,}"
        )

    result = {
        "pairs": int(len(pairs)),
        "identical": bool(identical),
        "decision_mismatches": dec_mismatch,
        "score_mismatches": score_mismatch,
        "near_threshold_pairs_0_05": int((near < 0.05).sum()),
        "near_threshold_pairs_0_01": int((near < 0.01).sum()),
        "boundary_pairs": on_boundary,
        "rouge_score_pairs_per_s": raw_rate,
        "rouge_score_pretokenised_pairs_per_s": tok_rate,
        "fast_decision_pairs_per_s": fast_rate,
        "fast_exact_pairs_per_s": exact_rate,
        "speedup_vs_rouge_score": speedup,
        "speedup_vs_rouge_score_pretokenised": fast_rate / tok_rate,
        "stream_20k_seconds": t20,
        "stream_20k_kept": kept_20k,
        "projected_52k_seconds": projected,
        "measured_52k_seconds": measured_52k,
        "machine": machine(),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    ok = identical and speedup >= 1000 and t20 < 30 and projected < 120
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
