#!/usr/bin/env python3
"""How much does the effect study's result move with the seed? Reads effect-study JSON files (written
by scripts/effect_study.py --json, one or several seeds each, possibly from different sessions) and
prints, per task and variant, every seed's round scores (validation, test in brackets), final round
and test gain, then the spread of the gain across seeds. Nothing is run; only finished results are read.

Usage: python3 scripts/seed_spread.py docs/results/effect-study-round2-seed0.json runs/.../result-r2-s1.json
       [--variant full]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from selfguide_lite.studies import fmt


def collect(files: list[Path], variant: str) -> dict[str, dict[int, dict]]:
    """task -> seed -> run record; a later file's run of the same task and seed replaces an earlier one."""
    by_task: dict[str, dict[int, dict]] = {}
    for f in files:
        runs = json.loads(f.read_text()).get("variants", {}).get(variant, {}).get("runs", [])
        for run in runs:
            if run.get("gain") is not None:
                by_task.setdefault(run["task"], {})[run["seed"]] = run
    return by_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--variant", default="full")
    args = ap.parse_args(argv)
    for f in args.files:
        if not f.is_file():
            print(f"error: no such file: {f}", file=sys.stderr)
            return 2
    try:
        by_task = collect(args.files, args.variant)
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        print(f"error: not an effect-study result file ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    gains: dict[int, list[float]] = {}
    for task, seeds in sorted(by_task.items()):
        print(task)
        for seed, run in sorted(seeds.items()):
            rounds = "  ".join(f"r{k} {fmt(r.get('validation'))} ({fmt(r.get('test'))})"
                               for k, r in sorted(run["rounds"].items(), key=lambda kv: int(kv[0])))
            print(f"  seed {seed}: {rounds}  final r{run['final_round']}  gain {run['gain']:+.1f}")
            gains.setdefault(seed, []).append(run["gain"])
        if len(seeds) > 1:
            g = [r["gain"] for r in seeds.values()]
            print(f"  spread of the gain over {len(g)} seeds: {max(g) - min(g):.1f} (mean {statistics.mean(g):+.1f})")
    for seed, g in sorted(gains.items()):
        print(f"seed {seed}: {len(g)} tasks, mean gain {statistics.mean(g):+.1f}, worst {min(g):+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
