"""The issue-28 round study's verdict: the default-labeller rule applied to the per-task results of
`scripts/labeller_round_study.sh`, and the tables docs/effect-study.md quotes.

The rule (committed in docs/effect-study.md before the study ran) reads **validation** only:
  gain_skill(v) = mean over the tasks of (final student's balanced accuracy - chance), validation;
  the calibrated labeller C becomes the default when gain_skill(C) >= gain_skill(full) + 2 and, on at
  least 4 of the 7 tasks, C's final student is not more than 2 points below the vote's final student
  on the official metric (validation). It applies only to complete rounds 0-2 of every variant on all
  7 tasks; anything less is reported as interim and decides nothing.
Test scores and the issue's goals are reported beside it, never used.

Usage: python3 scripts/labeller_study_report.py [docs/results/labeller-study] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from selfguide_lite.metrics import READS_MARGIN  # "reads": balanced accuracy >= chance + this, > 1 label
from selfguide_lite.studies import fmt

REFERENCE = "full"  # the vote, today's default
CANDIDATE = "content_free_calibrated"  # what scripts/label_quality_study.py's rule picked
ABLATION = "argmax"  # label-constrained, uncalibrated
VARIANTS = (REFERENCE, CANDIDATE, ABLATION)
TASKS_EXPECTED = 7
ROUNDS_EXPECTED = 2
MIN_SKILL_MARGIN = 2.0
MAX_METRIC_LOSS = 2.0
MIN_TASKS_NOT_WORSE = 4
# a round the loop ran to its end: trained and kept (done), nothing left to train on (no_data), trained
# and refused by the export gate (export_rejected: its student is not used), or not trained because the
# signal check found the labels at chance (no_signal: the loop ends there)
ROUND_ENDED = ("done", "no_data", "export_rejected", "no_signal")


def final_row(run: dict[str, Any]) -> dict[str, Any]:
    """The student the loop kept, with the columns the rule and the report read."""
    rounds = run["rounds"]
    final = rounds[str(run["final_round"])]
    r0 = rounds["0"]

    def skill(entry: dict[str, Any], split: str) -> dict[str, Any]:
        return (entry.get("skill") or {}).get(split) or {}

    val, test = skill(final, "validation"), skill(final, "test")
    # labelling cost per 100 inputs offered to the labeller, over rounds 1-2 (rounds write different numbers)
    labelled = [((r.get("sampling_seconds") or {}).get("annotate"), (r.get("funnel") or {}).get("after_input_filters"))
                for k, r in rounds.items() if k != "0"]
    labelled = [(s, n) for s, n in labelled if s is not None and n]
    return {
        "task": run["task"].split("_")[0], "final_round": run["final_round"],
        "rounds_done": sorted(int(k) for k, r in rounds.items() if r.get("status") in ROUND_ENDED),
        "round0_validation": r0.get("validation"), "round0_test": r0.get("test"),
        "validation": final.get("validation"), "test": final.get("test"),
        "val_balanced_accuracy": val.get("balanced_accuracy"), "val_chance": val.get("chance"),
        "val_labels": val.get("labels_predicted"),
        "test_balanced_accuracy": test.get("balanced_accuracy"), "test_chance": test.get("chance"),
        "test_labels": test.get("labels_predicted"), "test_best_constant": test.get("best_constant"),
        "test_macro_f1": test.get("macro_f1"),
        "train_rows": [rounds[k].get("train_rows") for k in sorted(rounds, key=int) if k != "0"],
        # the labeller's labels per round (before balancing): a one-label round can only teach a constant
        "labels_assigned": [(rounds[k].get("inputs") or {}).get("labels_written") or {}
                            for k in sorted(rounds, key=int) if k != "0"],
        "labelling_seconds_per_100_inputs": (round(100 * sum(s for s, _ in labelled) / sum(n for _, n in labelled), 1)
                                             if labelled else None),
    }


def load(results_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{variant: {task: final row}} from every per-task result file."""
    table: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in VARIANTS}
    for path in sorted(results_dir.glob("*.json")):
        doc = json.loads(path.read_text())
        if "variants" not in doc:
            continue
        for variant, block in doc["variants"].items():
            for run in block["runs"]:
                if variant in table:
                    row = final_row(run)
                    table[variant][row["task"]] = {**row, "code": doc.get("code"), "command": doc.get("command")}
    return table


def verdict(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The committed rule on validation, plus the issue's goals on test (reported only)."""
    tasks = sorted(set.intersection(*(set(table[v]) for v in VARIANTS))) if all(table.values()) else []
    complete = len(tasks) == TASKS_EXPECTED and all(
        table[v][t]["rounds_done"] == list(range(ROUNDS_EXPECTED + 1)) for v in VARIANTS for t in tasks)

    def gain_skill(v: str) -> float | None:
        xs = [table[v][t]["val_balanced_accuracy"] - table[v][t]["val_chance"] for t in tasks
              if table[v][t]["val_balanced_accuracy"] is not None]
        return statistics.fmean(xs) if xs else None

    gains = {v: gain_skill(v) for v in VARIANTS}
    not_worse = [t for t in tasks if table[CANDIDATE][t]["validation"] is not None and table[REFERENCE][t]["validation"]
                 is not None and table[CANDIDATE][t]["validation"] >= table[REFERENCE][t]["validation"] - MAX_METRIC_LOSS]
    passes = (gains[CANDIDATE] is not None and gains[REFERENCE] is not None
              and gains[CANDIDATE] >= gains[REFERENCE] + MIN_SKILL_MARGIN and len(not_worse) >= MIN_TASKS_NOT_WORSE)
    goals = {}
    for v in VARIANTS:
        rows = [table[v][t] for t in tasks]
        reads = [r["task"] for r in rows if r["test_balanced_accuracy"] is not None
                 and r["test_balanced_accuracy"] >= r["test_chance"] + READS_MARGIN and (r["test_labels"] or 0) > 1]
        worse = [r["task"] for r in rows if r["test"] is not None and r["round0_test"] is not None
                 and r["test"] < r["round0_test"] - 2]
        goals[v] = {"tasks_reading_on_test": reads, "tasks_worse_than_round0_on_test": worse}
    return {"tasks": tasks, "complete": complete, "gain_skill_validation": gains,
            "candidate_not_worse_tasks": not_worse,
            "decision": (CANDIDATE if passes else REFERENCE) if complete else None,
            "rule_passes_on_what_is_here": passes, "goals_on_test": goals}


def markdown(table: dict[str, dict[str, dict[str, Any]]], v: dict[str, Any]) -> str:
    lines = ["| task, labeller | round 0 test (val) | final student: round | test (val) | best constant (test) "
             "| balanced accuracy test / val (chance) | labels used (test) | training rows per round "
             "| labels assigned per round | labelling s per 100 inputs |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = {REFERENCE: "vote", CANDIDATE: "content-free calibrated", ABLATION: "argmax (no calibration)"}
    for t in v["tasks"]:
        for var in VARIANTS:
            r = table[var][t]
            lines.append(f"| {t}, {names[var]} | {fmt(r['round0_test'])} ({fmt(r['round0_validation'])}) | "
                         f"{r['final_round']} | {fmt(r['test'])} ({fmt(r['validation'])}) | {fmt(r['test_best_constant'])} | "
                         f"{fmt(r['test_balanced_accuracy'])} / {fmt(r['val_balanced_accuracy'])} ({fmt(r['test_chance'])}) | "
                         f"{r['test_labels']} | {', '.join(str(x) for x in r['train_rows'])} | "
                         f"{'; '.join(' '.join(f'{lab} {n}' for lab, n in sorted(d.items())) or '-' for d in r['labels_assigned'])} | "
                         f"{fmt(r['labelling_seconds_per_100_inputs'])} |")
    g = v["gain_skill_validation"]
    lines += ["", "gain_skill on validation (mean balanced accuracy - chance of the final students): "
              + ", ".join(f"{names[k]} {'-' if x is None else f'{x:+.1f}'}" for k, x in g.items()),
              f"calibrated not more than 2 points below the vote (validation, official metric) on "
              f"{len(v['candidate_not_worse_tasks'])} of {len(v['tasks'])} tasks",
              f"decision: {v['decision'] or 'none (interim: the rule needs complete rounds 0-2 on all 7 tasks)'}"]
    for var, goal in v["goals_on_test"].items():
        lines.append(f"{names[var]} on test: reads (balanced accuracy >= chance + 5, > 1 label) on "
                     f"{len(goal['tasks_reading_on_test'])} tasks {goal['tasks_reading_on_test']}; more than 2 points "
                     f"below round 0 on {goal['tasks_worse_than_round0_on_test']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="?", default=Path("docs/results/labeller-study"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.results.is_dir():
        print(f"error: no results folder {args.results}", file=sys.stderr)
        return 2
    table = load(args.results)
    v = verdict(table)
    print(markdown(table, v))
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"verdict": v, "finals": table}, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
