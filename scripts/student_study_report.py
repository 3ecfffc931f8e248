#!/usr/bin/env python3
"""A student's effect study as the tables docs/effect-study.md quotes, beside a reference student.

Reads the per-task results `scripts/student_effect_study.sh` writes (effect_study.py JSON files and
label_quality_study.py's label-quality.json in one folder) and the reference student's results (by
default the built-in SmolLM2's: the seed-0 effect study and the issue-28 round study; where two files
hold the same task and labeller, the later one on the command line wins). Prints:

1. the round study: per task and labeller, round 0 and the final student (the round the loop kept, best
   on validation), test with validation in brackets, the trivial answer (best constant label /
   input as answer, test), the skill columns, and the reference student's final student on the same
   task and labeller;
2. self-label quality on validation (round 0, every labeller) beside the reference student's;
3. means, and how many tasks a final student "reads" (balanced accuracy >= chance + 5 with more than
   one label predicted), on validation (which decides) and on test (reported).

Nothing here chooses a setting: it only reports what the runs measured.

Usage: python3 scripts/student_study_report.py [docs/results/effect-study-gemma3-270m]
       [--reference FILE_OR_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from labeller_study_report import final_row  # the final student's columns: one definition for both reports

from selfguide_lite.metrics import READS_MARGIN  # "reads": balanced accuracy >= chance + this, > 1 label
from selfguide_lite.studies import fmt, mean, result_files, short_task

DEFAULT_REFERENCE = [Path("docs/results/effect-study-round2-seed0.json"),
                     Path("docs/results/effect-study-round2-seed0-task1386.json"),
                     Path("docs/results/labeller-study"), Path("docs/results/label-quality.json")]
LABELLER_NAMES = {"full": "vote", "content_free_calibrated": "content-free calibrated",
                  "batch_calibrated": "batch calibrated", "argmax": "argmax (no calibration)"}
QUALITY_COLUMNS = ("vote", "greedy", "argmax@0.0", "batch@0.0", "content-free@0.0", "content-free@0.25")


def load_runs(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(task, labeller): the run's summary row} from effect_study.py files; later files win."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in result_files(paths):
        doc = json.loads(path.read_text())
        for variant, block in (doc.get("variants") or {}).items():
            for run in block.get("runs", []):
                if run.get("seed", 0) == 0:
                    runs[(short_task(run["task"]), variant)] = summarize(run, str(path))
    return runs


def load_quality(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """{task: label_quality_study.py's per-task record} from every label-quality file among paths."""
    out: dict[str, dict[str, Any]] = {}
    for path in result_files(paths):
        doc = json.loads(path.read_text())
        if "per_task" in doc and "variants" not in doc:
            out.update({short_task(t): r for t, r in doc["per_task"].items()})
    return out


def summarize(run: dict[str, Any], source: str) -> dict[str, Any]:
    """One run as the tables read it: labeller_study_report.final_row's columns as (test, validation)
    pairs, plus what a generation task and a second student add (trivial answer, prompt format)."""
    row = final_row(run)
    r0, final = run["rounds"]["0"], run["rounds"][str(run["final_round"])]
    r0_test = (r0.get("skill") or {}).get("test") or {}
    trivial = r0_test.get("best_constant")
    if trivial is None:  # generation: the input as answer (older files carry it as input_copy_test)
        trivial = r0_test.get("input_as_answer_rougeL", run.get("input_copy_test"))
    return {
        "task": short_task(run["task"]), "type": run["type"], "metric": run["metric"], "source": source,
        "rounds_done": row["rounds_done"], "final_round": row["final_round"],
        "round0": (row["round0_test"], row["round0_validation"]), "final": (row["test"], row["validation"]),
        "gain_test": run.get("gain"), "trivial_test": trivial,
        "balanced_accuracy": (row["test_balanced_accuracy"], row["val_balanced_accuracy"]),
        "chance": (row["test_chance"], row["val_chance"]),
        "labels_predicted": (row["test_labels"], row["val_labels"]),
        "train_rows": row["train_rows"],
        "format": (r0.get("format"), final.get("format")),
    }


def reads(row: dict[str, Any], split: int) -> bool | None:
    """Whether a final student shows skill beyond a constant on a split (0 test, 1 validation)."""
    ba, chance, n = row["balanced_accuracy"][split], row["chance"][split], row["labels_predicted"][split]
    if ba is None or chance is None:
        return None
    return ba >= chance + READS_MARGIN and (n or 0) > 1


def _pair(p: tuple[float | None, float | None]) -> str:
    return f"{fmt(p[0])} ({fmt(p[1])})"


def round_table(runs: dict, ref: dict) -> list[str]:
    lines = ["| task, labeller | round 0 test (val) | final: round | test (val) | gain (test) | best constant / "
             "input as answer (test) | balanced accuracy test / val (chance) | labels used test / val | "
             "training rows per round | reference final: test (val) | reference balanced accuracy val |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(runs, key=lambda k: (runs[k]["type"] != "classification", k[0], k[1] != "full", k[1]))
    for key in order:
        r, x = runs[key], ref.get(key)
        skill = (f"{fmt(r['balanced_accuracy'][0])} / {fmt(r['balanced_accuracy'][1])} ({fmt(r['chance'][1])})"
                 if r["type"] == "classification" else "-")
        used = f"{r['labels_predicted'][0]} / {r['labels_predicted'][1]}" if r["type"] == "classification" else "-"
        lines.append(
            f"| {key[0]}, {LABELLER_NAMES.get(key[1], key[1])} | {_pair(r['round0'])} | {r['final_round']} | "
            f"{_pair(r['final'])} | {fmt(r['gain_test'], '+.1f')} | {fmt(r['trivial_test'])} | {skill} | {used} | "
            f"{', '.join(str(n) for n in r['train_rows']) or '-'} | "
            f"{_pair(x['final']) + ' (round ' + str(x['final_round']) + ')' if x else '-'} | "
            f"{fmt(x['balanced_accuracy'][1]) if x else '-'} |")
    return lines


def means(runs: dict, ref: dict) -> dict[str, Any]:
    """Mean test gain per task type and labeller; validation skill of the classification final students."""
    out: dict[str, Any] = {}
    for variant in sorted({v for _, v in runs}):
        for kind in ("classification", "generation"):
            rows = [r for (t, v), r in runs.items() if v == variant and r["type"] == kind]
            if not rows:
                continue
            gains = [r["gain_test"] for r in rows if r["gain_test"] is not None]
            entry = {"tasks": len(rows), "mean_gain_test": statistics.fmean(gains) if gains else None,
                     "reference_mean_gain_test_same_tasks": mean(
                         [ref[(r["task"], variant)]["gain_test"] for r in rows if (r["task"], variant) in ref])}
            if kind == "classification":
                skills = [r["balanced_accuracy"][1] - r["chance"][1] for r in rows
                          if r["balanced_accuracy"][1] is not None and r["chance"][1] is not None]
                entry["gain_skill_validation"] = statistics.fmean(skills) if skills else None
                entry["reads_validation"] = sorted(r["task"] for r in rows if reads(r, 1))
                entry["reads_test"] = sorted(r["task"] for r in rows if reads(r, 0))
            out[f"{LABELLER_NAMES.get(variant, variant)}, {kind}"] = entry
    return out


def quality_table(quality: dict, ref_quality: dict) -> list[str]:
    if not quality:
        return []
    lines = ["| task | chance | " + " | ".join(QUALITY_COLUMNS) + " | seconds per 100: vote / label scores |",
             "|---|---|" + "---|" * len(QUALITY_COLUMNS) + "---|"]

    def cell(rec: dict | None, col: str) -> str:
        res = (rec or {}).get("results", {}).get(col)
        if not res:
            return "-"
        s = f"{res['balanced_accuracy']:.1f} ({res['labels_used']})"
        if res.get("coverage", 1.0) < 1.0:
            s += f", keeps {100 * res['coverage']:.0f} % at {fmt(res.get('balanced_accuracy_kept'))}"
        return s

    sums: dict[str, list[float]] = {c: [] for c in QUALITY_COLUMNS}
    ref_sums: dict[str, list[float]] = {c: [] for c in QUALITY_COLUMNS}
    for task in sorted(quality):
        rec, x = quality[task], ref_quality.get(task)
        chance = next(iter(rec["results"].values()))["chance"]
        cells = []
        for c in QUALITY_COLUMNS:
            cells.append(cell(rec, c) + (f"; ref {cell(x, c).split(',')[0]}" if x else ""))
            if c in rec["results"]:
                sums[c].append(rec["results"][c]["balanced_accuracy"])
            if x and c in x["results"]:
                ref_sums[c].append(x["results"][c]["balanced_accuracy"])
        sec = rec.get("seconds") or {}
        lines.append(f"| {task} | {chance:.1f} | " + " | ".join(cells) +
                     f" | {fmt(sec.get('vote'))} / {fmt(sec.get('score'))} |")
    lines.append("| mean | | " + " | ".join(
        f"{fmt(mean(sums[c]))}; ref {fmt(mean(ref_sums[c]))}" for c in QUALITY_COLUMNS) + " | |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="?", default=Path("docs/results/effect-study-gemma3-270m"))
    ap.add_argument("--reference", type=Path, nargs="+", default=DEFAULT_REFERENCE,
                    help="the reference student's result files or folders (later ones win)")
    ap.add_argument("--json", type=Path, help="also write the tables' data here")
    args = ap.parse_args()
    if not args.results.is_dir():
        print(f"error: no results folder {args.results}", file=sys.stderr)
        return 2
    runs, ref = load_runs([args.results]), load_runs(args.reference)
    quality, ref_quality = load_quality([args.results]), load_quality(args.reference)
    incomplete = sorted(f"{t}, {LABELLER_NAMES.get(v, v)}" for (t, v), r in runs.items()
                        if r["rounds_done"] != list(range(len(r["rounds_done"]))) or not r["rounds_done"])
    m = means(runs, ref)
    print("\n".join(round_table(runs, ref)))
    print()
    for name, e in m.items():
        line = (f"{name} ({e['tasks']} tasks): mean test gain {fmt(e['mean_gain_test'], '+.1f')} "
                f"(reference on the same tasks {fmt(e['reference_mean_gain_test_same_tasks'], '+.1f')})")
        if "gain_skill_validation" in e:
            line += (f"; gain_skill on validation {fmt(e['gain_skill_validation'], '+.1f')}; final students that read "
                     f"(balanced accuracy >= chance + 5, > 1 label): validation {e['reads_validation']}, "
                     f"test {e['reads_test']}")
        print(line)
    if incomplete:
        print(f"rounds with gaps: {incomplete}")
    if quality:
        print()
        print("\n".join(quality_table(quality, ref_quality)))
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": {f"{t}|{v}": r for (t, v), r in runs.items()}, "means": m}, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
