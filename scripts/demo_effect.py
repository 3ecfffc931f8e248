#!/usr/bin/env python3
"""Does Self-Guide help in the procedural world? Round 0 vs 1 vs 2 exact match on the world's target
task (sentiment), over several seeds, for the full pipeline and three ablations, in one run.

Every run uses the same cached world student (`models/world-student`, built on first use) and the
demo's loop settings; only the loop seed and the ablated switches differ:
- full:              contract §2 as configured (10-sample vote, label-exact decoding and filter, balance, input filters)
- no_vote:           one greedy annotation per input (num_samples 1, temperature 0)
- no_label_filter:   unconstrained annotation, any answer may win the vote, no class balancing
- no_input_filters:  every non-empty generated input is kept (no length, noise or duplicate filter)

Usage: python3 scripts/demo_effect.py [--seeds 0 1 2] [--rounds 2] [--json FILE] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.config import deep_merge, load_config  # noqa: E402
from selfguide_lite.demo import WORLD_PRESET  # noqa: E402
from selfguide_lite.loop import run_loop  # noqa: E402
from selfguide_lite.runs import rounds_of  # noqa: E402
from selfguide_lite.studies import command_line  # noqa: E402
from selfguide_lite.toy_models.world import build_world_student, world_task_path  # noqa: E402

ABLATIONS = {
    "full": {},
    "no_vote": {"selfguide": {"num_samples": 1, "annotate_temperature": 0.0}},
    "no_label_filter": {"selfguide": {"labels_in_vote": "any", "balance": False}},
    "no_input_filters": {"selfguide": {"input_filters": False}},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    ap.add_argument("--work", type=Path, default=Path("runs/demo-effect"))
    ap.add_argument("--student", type=Path, default=Path("models/world-student"))
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 round, full pipeline only (a smoke run)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.variants = args.seeds[:1], 1, ["full"]
    progress.set_mode("quiet")
    t0 = time.monotonic()
    print(f"command: {command_line()}")
    student = build_world_student(args.student, log=print)
    em: dict[str, dict[str, list[float]]] = {}
    for variant in args.variants:
        em[variant] = {str(k): [] for k in range(args.rounds + 1)}
        for seed in args.seeds:
            run_dir = args.work / f"{variant}-seed{seed}"
            cfg = load_config(None, {"task": str(world_task_path()), "model": str(student), "run_dir": str(run_dir),
                                     "seed": seed, "loop": {"rounds": args.rounds}},
                              deep_merge(WORLD_PRESET, ABLATIONS[variant]))
            started = time.monotonic()
            summary = run_loop(cfg, log=lambda m: None)
            rounds = rounds_of(summary)
            for k in range(args.rounds + 1):
                test = rounds[k].metrics.test if k in rounds and rounds[k].metrics else None
                em[variant][str(k)].append(test.exact_match if test else float("nan"))
            print(f"{variant:>17} seed {seed}: " + "  ".join(
                f"round {k} {em[variant][str(k)][-1]:5.1f}" for k in range(args.rounds + 1))
                + f"  ({time.monotonic() - started:.0f}s)", flush=True)

    def gains(variant: str, k: int = 1) -> list[float]:
        return [b - a for a, b in zip(em[variant]["0"], em[variant][str(k)], strict=True)]

    print(f"\nexact match on the held-out target task (world_sentiment, its 50 test instances), mean ± spread over "
          f"seeds {args.seeds}")
    header = "".join(f"{f'round {k}':>16}" for k in range(args.rounds + 1))
    print(f"{'variant':>17}{header}{'round 1 - round 0':>20}")
    for variant in args.variants:
        cells = "".join(f"{statistics.mean(v):>9.1f} ± {statistics.pstdev(v):4.1f}" for v in em[variant].values())
        g = gains(variant)
        print(f"{variant:>17}{cells}{statistics.mean(g):>+13.1f} ± {statistics.pstdev(g):4.1f}")
    result = {"command": command_line(), "seeds": args.seeds, "rounds": args.rounds,
              "em": em.get("full", {}), "em_by_variant": em, "seconds": round(time.monotonic() - t0)}
    if "full" in em:
        g = gains("full")
        result["gain_round1_mean"] = statistics.mean(g)
        result["gain_round1_std"] = statistics.pstdev(g)
        print(f"\nfull pipeline, round 1 - round 0: {result['gain_round1_mean']:+.1f} ± {result['gain_round1_std']:.1f} "
              f"points (target: +10)")
    result["ablations"] = {v: statistics.mean(gains(v)) for v in args.variants if v != "full"}
    for v, g in result["ablations"].items():
        print(f"{v:>17}: mean round-1 gain {g:+.1f}" + (f"  (full pipeline {'beats' if result['gain_round1_mean'] > g else 'does not beat'} it)"
                                                       if "full" in em else ""))
    print(f"total {time.monotonic() - t0:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
