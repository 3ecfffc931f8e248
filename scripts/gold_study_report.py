"""Issue 44's decision: docs/results/gold/RULE.md (committed before the runs) applied to gold_study.py's results.

For each student and K, per task: the final students' balanced accuracy on the signal pool (validation
followed by more validation-side instances, up to 300) for S (self-only), A (supervised only on the gold
rows), B (gold-started self-training) and C (a gold-fitted labeller); X - A for X in {B, C} with the
one-sided paired permutation test (10,000 swaps) in both directions. A variant pays when, for one student
at K = 16, X - A >= +5 with p < 0.05 on at least 3 of the 7 tasks and X is more than 5 below A with
p < 0.05 on none; seed 1 confirms the tasks the rule calls borderline (they count only if they pass on
both seeds). Test (the final students' verdict against the trivial answers) and each variant's cost per
round are reported beside it, never deciding it.

    python3 scripts/gold_study_report.py docs/results/gold [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from selfguide_lite.methods.label_signal import paired_permutation_test
from selfguide_lite.metrics import READS
from selfguide_lite.store import read_json
from selfguide_lite.studies import command_line, fmt, mean, result_files, short_task, write_result

DECIDING_K = 16
GAIN = 5.0  # points of balanced accuracy over A
LEVEL = 0.05
MIN_TASKS = 3
TASK_COUNT = 7  # the shared classification tasks
PERMUTATIONS = 10_000
BORDER_POINTS = 2.0  # a difference within this of GAIN is borderline
BORDER_P = (0.01, 0.10)  # so is a p-value in this range
VARIANTS = ("S", "A", "B", "C")
STUDENTS = ("smollm2-135m-instruct", "gemma3-270m")  # the rule asks both; one missing leaves it undecided
RESUMED_SECONDS = 5.0
CHALLENGERS = ("B", "C")


def latest_cells(paths: list[Path]) -> dict[tuple[str, int, int, str], dict[str, Any]]:
    """(model, K, seed, task) -> the cell, later files overriding earlier ones (a resumed study's file
    repeats its finished cells). Each variant's `run_seconds` is the longest `seconds_this_invocation` any
    file holds for it: the invocation that ran it (a resume takes about a second; None where no file
    saw more than RESUMED_SECONDS, i.e. the run was done by an invocation whose file was not kept)."""
    cells: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    longest: dict[tuple[tuple[str, int, int, str], str], float] = {}
    for path in paths:
        for cell in read_json(path).get("cells", []):
            key = (cell["model"], cell["k"], cell["seed"], cell["task"])
            cells[key] = cell
            for v, data in cell["variants"].items():
                longest[key, v] = max(longest.get((key, v), 0.0), data.get("seconds_this_invocation") or 0.0)
    for key, cell in cells.items():
        for v, data in cell["variants"].items():
            data["run_seconds"] = longest[key, v] if longest[key, v] > RESUMED_SECONDS else None
    return cells


def task_number(key: tuple[str, int, int, str]) -> tuple[str, int, int, int]:
    """Sort key: model, K, seed, then the task's number (task190 before task1385)."""
    model, k, seed, task = key
    return model, k, seed, int(short_task(task).removeprefix("task") or 0)


def compare(cell: dict[str, Any], x: str) -> dict[str, Any] | None:
    """X against A on the signal pool: the difference and both one-sided p-values."""
    v = cell["variants"]
    if x not in v or "A" not in v:
        return None
    px, pa = v[x]["signal_pool"], v["A"]["signal_pool"]
    assert px["gold"] == pa["gold"], "the two students answered different pools"
    diff, p_up = paired_permutation_test(px["gold"], px["said"], pa["said"], PERMUTATIONS)
    _, p_down = paired_permutation_test(px["gold"], pa["said"], px["said"], PERMUTATIONS)
    passes = diff >= GAIN and p_up < LEVEL
    return {"diff": round(diff, 2), "p_better": p_up, "p_worse": p_down, "passes": passes,
            "harms": -diff > GAIN and p_down < LEVEL,
            "borderline": passes and (abs(diff - GAIN) <= BORDER_POINTS or BORDER_P[0] <= p_up <= BORDER_P[1])}


def confirm_list(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The passing tasks seed 1 must confirm: all of them when exactly MIN_TASKS pass, else the borderline
    ones when dropping them would leave fewer than MIN_TASKS."""
    passing = [t for t, r in rows.items() if r["passes"]]
    if len(passing) < MIN_TASKS:
        return []
    if len(passing) == MIN_TASKS:
        return passing
    border = [t for t in passing if rows[t]["borderline"]]
    return border if len(passing) - len(border) < MIN_TASKS else []


def decide(cells: dict[tuple[str, int, int, str], dict[str, Any]], model: str) -> dict[str, Any]:
    """The rule for one student at K = 16: per challenger, tasks passing, harmed, to confirm, and the verdict."""
    out: dict[str, Any] = {}
    for x in CHALLENGERS:
        rows = {task: c for (m, k, s, task), cell in cells.items()
                if m == model and k == DECIDING_K and s == 0 and (c := compare(cell, x)) is not None}
        to_confirm = confirm_list(rows)
        counted = []
        for task, r in rows.items():
            if not r["passes"]:
                continue
            if task in to_confirm:
                again = cells.get((model, DECIDING_K, 1, task))
                r1 = compare(again, x) if again else None
                if r1 is None or not r1["passes"]:
                    continue
            counted.append(task)
        missing = [t for t in to_confirm if (model, DECIDING_K, 1, t) not in cells]
        harmed = [t for t, r in rows.items() if r["harms"]]
        pays = len(counted) >= MIN_TASKS and not harmed
        passing = sorted(t for t, r in rows.items() if r["passes"])
        # settled before every task is in when even all the missing ones passing could not make it pay
        settled = bool(harmed) or len(passing) + TASK_COUNT - len(rows) < MIN_TASKS
        out[x] = {"tasks": len(rows), "passing": passing,
                  "counted": sorted(counted), "harmed": sorted(harmed), "confirm_with_seed_1": sorted(to_confirm),
                  "seed_1_missing": sorted(missing), "pays": pays and not missing and len(rows) == TASK_COUNT,
                  "undecided": not settled and (bool(missing) or len(rows) < TASK_COUNT)}
    return out


def table(cells: dict[tuple[str, int, int, str], dict[str, Any]], model: str, k: int, seed: int) -> list[str]:
    """One markdown table: the signal pool's balanced accuracy per variant, X - A with p, the finals, test."""
    lines = [f"### {model}, K = {k}, seed {seed}", "",
             "| task | chance | S | A | B | B - A (p) | C | C - A (p) | finals S/A/B/C | test verdicts S/A/B/C "
             "| B's round: labels checked, then | C's round: labels checked, then |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (m, kk, s, task), cell in sorted(cells.items(), key=lambda kv: task_number(kv[0])):
        if (m, kk, s) != (model, k, seed):
            continue
        v = cell["variants"]
        pool = {x: v[x]["signal_pool"] for x in VARIANTS if x in v}
        chance = next(iter(pool.values()))["chance"]
        delta = {x: "-" if (c := compare(cell, x)) is None else f"{c['diff']:+.1f} ({c['p_better']:.3f})"
                 for x in CHALLENGERS}
        finals = "/".join(v[x]["final"] if x in v else "-" for x in VARIANTS)
        verdicts = "/".join(final_of(v[x]).get("test_verdict") or "?" if x in v else "-" for x in VARIANTS)
        ba = {x: fmt(pool[x]["balanced_accuracy"]) + ("" if pool[x]["labels_used"] > 1 else "¹") if x in pool
              else "-" for x in VARIANTS}
        lines.append(f"| {short_task(task)} | {chance:.1f} | {ba['S']} | {ba['A']} | {ba['B']} | {delta['B']} | "
                     f"{ba['C']} | {delta['C']} | {finals} | {verdicts} | {round_line(v.get('B'))} | "
                     f"{round_line(v.get('C'))} |")
    lines += ["", "¹ one label used (a constant answer)."]
    return lines


def round_line(variant: dict[str, Any] | None) -> str:
    """A variant's own round in words: the signal check's best labeller against chance, then what ran."""
    rounds = (variant or {}).get("rounds")
    if not rounds:
        return "-"
    r = rounds[0]
    check = r.get("check")
    said = f"{check['labeller']} {check['balanced_accuracy']:.1f} vs {check['chance']:.1f}, p {check['p']:.3f}; " \
        if check else ""
    return said + (f"trained ({r['train_rows']} rows)" if r["status"] == "done" else r["status"])


def final_of(variant: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in variant["candidates"] if c["name"] == variant["final"])


def side_facts(cells: dict[tuple[str, int, int, str], dict[str, Any]], model: str, k: int) -> dict[str, Any]:
    """Reported, never deciding: the best variant by mean signal-pool balanced accuracy (validation side),
    how many tasks each variant's final student reads on test, and each variant's seconds per own round."""
    mine = [cell for (m, kk, s, _), cell in cells.items() if m == model and kk == k and s == 0]
    pool_mean = {x: mean(c["variants"][x]["signal_pool"]["balanced_accuracy"] for c in mine if x in c["variants"])
                 for x in VARIANTS}
    reads = {x: sum(1 for c in mine if x in c["variants"] and final_of(c["variants"][x]).get("test_verdict") == READS)
             for x in VARIANTS}
    own = {"S": ("S1", "S2"), "A": ("A1", "A2"), "B": ("B1",), "C": ("C1",)}
    trained = {x: mean(sum(cand["name"] in own[x] for cand in c["variants"][x]["candidates"])
                       for c in mine if x in c["variants"]) for x in VARIANTS}
    cost = {x: mean(c["variants"][x].get("run_seconds") for c in mine if x in c["variants"]) for x in VARIANTS}
    timed = {x: sum(1 for c in mine if x in c["variants"] and c["variants"][x].get("run_seconds")) for x in VARIANTS}
    per_round = {f"{x} {kind}": round_cost(mine, x, kind == "trained") for x in VARIANTS for kind in ("trained", "refused")}
    best = max((x for x in VARIANTS if pool_mean[x] is not None), key=lambda x: pool_mean[x], default=None)
    return {"cells": len(mine), "signal_pool_mean": pool_mean, "test_reads": reads, "run_seconds": cost,
            "runs_timed": timed, "own_rounds_trained": trained, "round_seconds": per_round,
            "best_by_validation": best}


def round_cost(cells: list[dict[str, Any]], variant: str, trained: bool) -> float | None:
    """Mean seconds of the variant's own rounds that trained (or that the signal check or the data stopped)."""
    return mean(r.get("seconds") for c in cells if variant in c["variants"]
                for r in c["variants"][variant].get("rounds") or [] if (r["status"] == "done") == trained)


def per_variant(values: dict[str, Any], spec: str = ".1f") -> str:
    return ", ".join(f"{x} {fmt(values[x], spec)}" for x in VARIANTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+", help="gold_study.py JSON files or folders of them")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cells = latest_cells(result_files(args.results))
    models = sorted({m for m, *_ in cells} | set(STUDENTS))
    lines = [f"command: `{command_line()}`", ""]
    decisions, facts = {}, {}
    for model in models:
        for k, seed in sorted({(kk, s) for m, kk, s, _ in cells if m == model}):  # none yet: only the decision
            lines += table(cells, model, k, seed) + [""]
            if seed == 0:
                f = facts[f"{model} K={k}"] = side_facts(cells, model, k)
                round_costs = ", ".join(f"{x} {v:.0f}" for x, v in f["round_seconds"].items() if v is not None) or "-"
                lines.append(f"Reported only: best variant by mean signal-pool balanced accuracy "
                             f"{f['best_by_validation']} ({per_variant(f['signal_pool_mean'])}); final students "
                             f"reading on test: {per_variant(f['test_reads'], 'd')} of {f['cells']}; "
                             f"seconds per variant's run (from round 0 to its last round, 2-core CPU named in the "
                             f"result files; runs timed: {per_variant(f['runs_timed'], 'd')}): "
                             f"{per_variant(f['run_seconds'], '.0f')}; own rounds trained on average: "
                             f"{per_variant(f['own_rounds_trained'], '.1f')}; seconds per own round (its stages, "
                             f"trained or refused by the signal check or the data): "
                             f"{round_costs}.")
                lines.append("")
        d = decisions[model] = decide(cells, model)
        for x, r in d.items():
            state = ("undecided (study incomplete)" if r["undecided"] else "pays" if r["pays"] else
                     "does not pay" if r["tasks"] == TASK_COUNT else
                     f"does not pay (settled with {r['tasks']} of {TASK_COUNT} tasks: the rest cannot change it)")
            lines.append(f"- {model}, {x} against A at K = {DECIDING_K}: {state}: {len(r['counted'])} of {r['tasks']} "
                         f"tasks count (passing seed 0: {', '.join(map(short_task, r['passing'])) or 'none'}; "
                         f"seed 1 needed: {', '.join(map(short_task, r['seed_1_missing'])) or 'none'}), "
                         f"significantly worse by more than {GAIN:g}: {', '.join(map(short_task, r['harmed'])) or 'none'}.")
        lines.append("")
    paying = {x: max((len(d[x]["counted"]) for d in decisions.values() if d[x]["pays"]), default=0) for x in CHALLENGERS}
    if any(paying.values()):
        default = max(CHALLENGERS, key=lambda x: (paying[x], x == "C"))  # a tie goes to C
        lines.append(f"Decision: {default} pays and becomes what `loop` does with gold labels.")
    elif any(r["undecided"] for d in decisions.values() for r in d.values()):
        default = None
        lines.append("Decision: none yet (the study is incomplete).")
    else:
        default = None
        lines.append("Decision: neither B nor C pays; no product switch.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.markdown.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.markdown)
    if args.json:
        write_result(args.json, {"command": command_line(), "decisions": decisions, "reported": facts,
                                 "default": default})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
