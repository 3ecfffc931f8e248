#!/usr/bin/env python3
"""The signal check's decisions beside what the rounds gave without it.

Reads the check on each shared task's round-0 student (scripts/signal_study.py's JSON) and the committed
round studies of issues 28 and 29 (every labeller that was run, rounds 0-2, seed 0). The gate decides
before round 1 from validation only; what each committed round 1 became is read on test and validation
with the product's verdict (metrics.verdict). A refused round 1 ends the loop, so round 2 is refused with it.

Per student and classification task: the check (best labeller, balanced accuracy vs chance, p), the
decision, and per committed labeller what rounds 1 and 2 gave (verdict on test / validation, training
rows). Then: rounds refused; refused rounds that read on test (misses); allowed rounds that did not read;
rounds that taught a constant and were refused; compute: the check's seconds against the committed runs'
wall time (rounds 0-2 in one invocation, so round 0's evaluation is inside it: an upper bound on what a
refusal saves). Generation tasks: the check's numbers (it informs, never refuses).

Usage: python3 scripts/signal_study_report.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from selfguide_lite.metrics import CONSTANT, READS, verdict
from selfguide_lite.studies import result_files, short_task

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
STUDENTS = {
    "smollm2-135m-instruct": {
        "signal": RESULTS / "signal-study-smollm2.json",
        # later files win where two hold the same task and labeller (the labeller study reran the vote with skill columns)
        "rounds": [RESULTS / "effect-study-round2-seed0.json", RESULTS / "effect-study-round2-seed0-task1386.json",
                   RESULTS / "labeller-study"],
    },
    "gemma3-270m": {
        "signal": RESULTS / "signal-study-gemma3-270m.json",
        "rounds": [RESULTS / "effect-study-gemma3-270m"],
    },
}
LABELLER = {"full": "vote", "content_free_calibrated": "content-free-calibrated", "argmax": "argmax",
            "batch_calibrated": "batch-calibrated"}


def committed_rounds(paths: list[Path], variants: dict[str, str] = LABELLER) -> dict[tuple[str, str], dict[str, Any]]:
    """{(task, name): run} from effect_study.py files (seed 0), for the variants named (variant -> name)."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in result_files(paths):
        doc = json.loads(path.read_text())
        for variant, block in (doc.get("variants") or {}).items():
            for run in block.get("runs", []):
                if run.get("seed", 0) == 0 and variant in variants:
                    runs[(run["task"], variants[variant])] = run
    return runs


def gated_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The product's default loop (effect_study.py's `gated` variant) where it was run: each round's status,
    the labeller its check chose, rows and verdicts."""
    out = []
    for (task, _), run in committed_rounds(paths, {"gated": "gated"}).items():
        rounds = {}
        for k, r in sorted(run["rounds"].items(), key=lambda kv: int(kv[0])):
            skill = r.get("skill") or {}
            rounds[k] = {"status": r.get("status"), "rows": r.get("train_rows"),
                         "chosen": (r.get("signal") or {}).get("chosen"),
                         "test": verdict(skill.get("test")), "validation": verdict(skill.get("validation")),
                         "test_score": r.get("test"), "validation_score": r.get("validation")}
        out.append({"task": task, "final_round": run["final_round"], "rounds": rounds,
                    "run_seconds": run.get("seconds_this_invocation")})
    return out


def round_outcome(run: dict[str, Any], k: int) -> dict[str, Any] | None:
    """What round k became: its status, rows and verdict per split (None: not in the file)."""
    r = run["rounds"].get(str(k))
    if r is None:
        return None
    skill = r.get("skill") or {}
    return {"status": r.get("status"), "rows": r.get("train_rows"),
            "test": verdict(skill.get("test")), "validation": verdict(skill.get("validation"))}


def summarize(student: str) -> dict[str, Any]:
    spec = STUDENTS[student]
    signal = json.loads(spec["signal"].read_text())["per_task"]
    runs = committed_rounds(spec["rounds"])
    rows, generation = [], []
    for task, check in signal.items():
        if check["type"] != "classification":
            generation.append({"task": task, **{k: check.get(k) for k in
                                               ("n", "vote_rougeL", "coverage", "greedy_rougeL", "input_copy_rougeL")},
                               "seconds": check.get("wall_seconds")})
            continue
        best = check["labellers"][check["best"]]
        committed = {lab: run for (t, lab), run in runs.items() if t == task}
        outcomes = {lab: {"round1": round_outcome(run, 1), "round2": round_outcome(run, 2),
                          "run_seconds": run.get("seconds_this_invocation")} for lab, run in committed.items()}
        rows.append({"task": task, "n": check["n"], "chance": check["chance"], "best": check["best"],
                     "best_balanced_accuracy": best["balanced_accuracy"], "best_p": best["p_value"],
                     "labellers": {k: (v["balanced_accuracy"], v["p_value"], v["labels_used"])
                                   for k, v in check["labellers"].items()},
                     "allowed": check["signal"], "chosen": check["chosen"], "seconds": check.get("wall_seconds"),
                     "committed": outcomes})
    return {"student": student, "classification": rows, "generation": generation, "tally": tally(rows),
            "gated": gated_runs(spec["rounds"])}


def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    refused = [r for r in rows if not r["allowed"]]
    allowed = [r for r in rows if r["allowed"]]

    def read_on(outcome: dict[str, Any] | None, split: str) -> bool:
        return bool(outcome) and outcome[split] == READS

    misses = [f"{r['task']} {lab} round {k}" for r in refused for lab, o in r["committed"].items()
              for k in (1, 2) if read_on(o[f"round{k}"], "test")]
    constants_refused = [f"{r['task']} {lab} round {k}" for r in refused for lab, o in r["committed"].items()
                         for k in (1, 2) if o[f"round{k}"] and o[f"round{k}"]["test"] == CONSTANT]
    constants_allowed = [f"{r['task']} {lab} round 1" for r in allowed for lab, o in r["committed"].items()
                         if lab == r["chosen"] and o["round1"] and o["round1"]["test"] == CONSTANT]
    allowed_not_read = [f"{r['task']} {r['chosen']} round 1" for r in allowed
                        if (o := r["committed"].get(r["chosen"])) and not read_on(o["round1"], "test")]
    allowed_unknown = [f"{r['task']} {r['chosen']}" for r in allowed if r["chosen"] not in r["committed"]]
    saved = sum(o["run_seconds"] or 0 for r in refused for o in r["committed"].values())
    return {"tasks": len(rows), "round1_refused": len(refused), "round1_allowed": len(allowed),
            "misses": misses, "constant_rounds_refused": constants_refused,
            "constant_rounds_allowed": constants_allowed, "allowed_rounds_not_reading": allowed_not_read,
            "allowed_without_a_committed_run": allowed_unknown,
            "check_seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
            "committed_seconds_of_refused_runs": round(saved, 1),
            "committed_runs_refused": sum(len(r["committed"]) for r in refused)}


def cell(o: dict[str, Any] | None) -> str:
    if o is None:
        return "-"
    if o["status"] != "done":
        return f"{o['status']} ({o['rows']} rows)"
    return f"{o['test']} / {o['validation']} ({o['rows']} rows)"


def table(s: dict[str, Any]) -> str:
    lines = [f"### {s['student']}", "",
             "| task | check before round 1 (validation): best labeller, balanced accuracy vs chance, p | decision "
             "| without the gate: round 1, test / validation verdict (rows) | round 2 |",
             "|---|---|---|---|---|"]
    for r in s["classification"]:
        decision = f"train with {r['chosen']}" if r["allowed"] else "refused (no_signal)"
        r1 = "; ".join(f"{lab}: {cell(o['round1'])}" for lab, o in r["committed"].items()) or "-"
        r2 = "; ".join(f"{lab}: {cell(o['round2'])}" for lab, o in r["committed"].items()) or "-"
        lines.append(f"| {short_task(r['task'])} | {r['best']} {r['best_balanced_accuracy']:.1f} vs {r['chance']:.1f} "
                     f"(n {r['n']}, p {r['best_p']:.2g}; {r['seconds']:.0f} s) | {decision} | {r1} | {r2} |")
    t = s["tally"]
    lines += ["", f"round 1 refused on {t['round1_refused']} of {t['tasks']} tasks (the loop ends there: round 2 "
              f"with it); misses (refused rounds that read on test): {t['misses'] or 'none'}; committed rounds "
              f"that taught a constant and are refused: {len(t['constant_rounds_refused'])}; allowed rounds whose "
              f"committed run did not read on test: {t['allowed_rounds_not_reading'] or 'none'}; allowed with a "
              f"labeller never run in a round: {t['allowed_without_a_committed_run'] or 'none'}",
              f"compute: the checks took {t['check_seconds'] / 60:.1f} min on {t['tasks']} tasks; the "
              f"{t['committed_runs_refused']} committed runs of refused tasks took "
              f"{t['committed_seconds_of_refused_runs'] / 60:.0f} min (rounds 0-2)"]
    for g in s["gated"]:
        lines += ["", f"{short_task(g['task'])} through the default loop (signal check before every round, rounds 0-2; "
                  f"final round {g['final_round']}, {g['run_seconds']} s):"]
        for k, r in g["rounds"].items():
            label = f" with {r['chosen']}" if r["chosen"] else ""
            scores = (f", test {r['test_score']:.1f} (validation {r['validation_score']:.1f})"
                      if r["test_score"] is not None else "")
            lines.append(f"  round {k}: {r['status']}{label}, {r['rows'] if r['rows'] is not None else '-'} rows"
                         f"{scores}: {r['test'] or '-'} / {r['validation'] or '-'}")
    if s["generation"]:
        lines += ["", "| generation task | n | vote's answers ROUGE-L (answered %) | greedy | input copied | seconds |",
                  "|---|---|---|---|---|---|"]
        for g in s["generation"]:
            lines.append(f"| {short_task(g['task'])} | {g['n']} | {g['vote_rougeL']:.1f} ({g['coverage']:.0f}) | "
                         f"{g['greedy_rougeL']:.1f} | {g['input_copy_rougeL']:.1f} | {g['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    summaries = [summarize(s) for s, spec in STUDENTS.items() if spec["signal"].is_file()]
    for s in summaries:
        print(table(s) + "\n")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
