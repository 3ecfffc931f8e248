#!/usr/bin/env python3
"""A default round of each kind (classification task738, generation task1195), old code against new, on one
machine, one after the other: per stage seconds, tokens decoded, round-0 evaluation, scores.

The old code runs from a git worktree of --old (its own scripts/bench_round.py, PYTHONPATH on that tree),
the new code from this checkout; each side's runs live under WORK/old and WORK/new and are reused (the
loop's stage cache), so an interrupted comparison resumes. Tokens are read from each run's synthesis
journal (requests with one sample: writing inputs; with several: the annotation vote), so the old code
needs no counters of its own.

Usage: python3 scripts/bench_round_compare.py --old REV [--tasks T.json ...] [--models NAME ...]
       [--work runs/bench-compare] [--json FILE]
(`--models smollm2-135m-instruct gemma3-270m`: every task with each student, both sides.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from selfguide_lite.builtin_students import DEFAULT_STUDENT
from selfguide_lite.store import read_json, write_json
from selfguide_lite.studies import command_line, machine_line

REPO = Path(__file__).resolve().parents[1]


def journal_tokens(run_dir: Path) -> dict[str, int]:
    tokens = {"write_inputs": 0, "annotate": 0}
    path = run_dir / "round-1" / "synth" / "journal.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if "completions" not in row:  # the journal's first line names the student
            continue
        comps = row["completions"]
        tokens["annotate" if len(comps) > 1 else "write_inputs"] += sum(int(c[1]) for c in comps)
    return tokens


def run_side(name: str, tree: Path, tasks: list[Path], models: list[str], work: Path) -> dict:
    out = work / f"{name}.json"
    if not out.is_file():
        cmd = [sys.executable, str(tree / "scripts" / "bench_round.py"), "--no-baseline", "--work", str(work / name),
               "--json", str(out), "--tasks", *map(str, tasks), "--models", *models]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        print(f"[{name}] {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=tree, env=env, check=True)
    result = read_json(out)
    for r in result["tasks"]:
        r["tokens"] = journal_tokens(Path(r["run_dir"]) if Path(r["run_dir"]).is_absolute() else tree / r["run_dir"])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="git revision of the old code")
    ap.add_argument("--tasks", type=Path, nargs="+",
                    default=[REPO / "selfguide_lite" / "data" / "task738_perspectrum_classification.json",
                             REPO.parent / "shared" / "data" / "natural-instructions" /
                             "task1195_disflqa_disfluent_to_fluent_conversion.json"])
    ap.add_argument("--models", nargs="+", default=[DEFAULT_STUDENT], help="students, each run on every task")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-compare")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tasks = [t.resolve() for t in args.tasks]
    old_tree = work / "old-tree"
    if not old_tree.is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.old], check=True)
    old_rev = subprocess.run(["git", "-C", str(old_tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    new_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    sides = {"old": run_side("old", old_tree, tasks, args.models, work),
             "new": run_side("new", REPO, tasks, args.models, work)}
    machine = machine_line()
    print(f"machine: {machine}; old {old_rev}, new {new_rev}"
          " (new: uncommitted changes, if any, included)")
    rows = []
    for old, new in zip(sides["old"]["tasks"], sides["new"]["tasks"], strict=True):
        label = f"{Path(str(new.get('task', ''))).stem or new.get('task')} ({new.get('model', args.models[0])})"
        print(f"{label}:")
        for stage in ("write_inputs", "annotate", "train", "export", "evaluate"):
            print(f"  {stage:14} {old['stage_seconds'][stage]:7.0f} s -> {new['stage_seconds'][stage]:7.0f} s")
        print(f"  {'round':14} {old['round_seconds']:7.0f} s -> {new['round_seconds']:7.0f} s "
              f"({old['round_seconds'] / 60:.1f} -> {new['round_seconds'] / 60:.1f} min)")
        print(f"  {'round-0 eval':14} {old['round0_eval_seconds']:7.0f} s -> {new['round0_eval_seconds']:7.0f} s")
        for kind in ("write_inputs", "annotate"):
            print(f"  tokens {kind:7} {old['tokens'][kind]:7d} -> {new['tokens'][kind]:7d}")
        for k in ("0", "1"):
            o, n = old["scores"].get(k), new["scores"].get(k)
            if o and n:
                print(f"  round {k} validation {o['validation']['primary']:.1f} -> {n['validation']['primary']:.1f}; "
                      f"test {o['test']['primary']:.1f} -> {n['test']['primary']:.1f} (reported only)")
        rows.append({"task": label, "old": old, "new": new})
    if args.json:
        write_json(args.json, {"command": command_line(), "old": old_rev, "new": new_rev,
                               "machine": machine,
                               "tasks": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
