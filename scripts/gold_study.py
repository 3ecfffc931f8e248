"""Issue 44's study: what a few gold labels add, self-training against training on them alone.

Variants per task, student, K (gold examples per label) and seed, each through the product's own loop (so
every run resumes from its stage cache) and each with three candidate students chosen on validation, as
docs/results/gold/RULE.md (committed before any run) sets out:

- S, self-only: the loop as shipped, 2 rounds (the signal check may end it). Independent of K.
- A, supervised only: `selfguide: {num_inputs: 0, gold_per_label: K}`, 2 rounds, `loop.train_from: previous`
  (round 1: the default epochs on the gold rows; round 2: as many again).
- B, gold-started self-training: one round from A's round-1 student (its merged weights; A keeps them) with
  gold rows added; the signal check decides whether that student's labels are worth training on.
- C, gold-fitted labeller: one round, `selfguide: {gold_per_label: K, labeler: gold-fitted}`.

Candidates: S: rounds 0-2; A: round 0, A1, A2; B and C: round 0, A1, their round. The final student is the
best on validation (a tie: the earlier). Each final student is then asked for the signal pool (validation
followed by more validation-side instances, up to 300): its predictions are written so the report can run
the paired permutation test the rule names; test is only reported.

    python3 scripts/gold_study.py [--tasks T.json ...] [--models NAME ...] [--k 16 64] [--seed 0]
                                  [--variants S A B C] [--work runs/gold-study] [--json FILE]

Run one invocation at a time (two llama.cpp jobs on 2 cores slow each other far more than twice).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from selfguide_lite import progress
from selfguide_lite.builtin_students import DEFAULT_STUDENT
from selfguide_lite.config import Config, load_config
from selfguide_lite.engine import open_sampler
from selfguide_lite.errors import UserError
from selfguide_lite.evaluate import predict
from selfguide_lite.loop import run_loop
from selfguide_lite.methods import method_for
from selfguide_lite.metrics import read_labelling
from selfguide_lite.runs import read_rounds
from selfguide_lite.store import file_hash, read_json, write_json
from selfguide_lite.studies import code_commit, command_line, machine_line, short_task, write_result
from selfguide_lite.tasks import Task, load_task

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "natural-instructions"
TASKS = ["task190_snli_classification", "task199_mnli_classification", "task200_mnli_entailment_classification",
         "task738_perspectrum_classification", "task937_defeasible_nli_social_classification",
         "task1385_anli_r1_entailment", "task1386_anli_r2_entailment"]


def variant_config(variant: str, task: Path, model: str, k: int, seed: int, run_dir: Path) -> Config:
    overrides: dict[str, Any] = {"task": str(task), "model": model, "seed": seed, "run_dir": str(run_dir)}
    if variant == "S":
        overrides["loop"] = {"rounds": 2}
    elif variant == "A":
        overrides["selfguide"] = {"num_inputs": 0, "gold_per_label": k}
        overrides["loop"] = {"rounds": 2, "train_from": "previous"}
        overrides["export"] = {"keep": "all"}  # B starts from A's round-1 merged weights
    elif variant == "B":
        overrides["selfguide"] = {"gold_per_label": k}
        overrides["loop"] = {"rounds": 1}
    elif variant == "C":
        overrides["selfguide"] = {"gold_per_label": k, "labeler": "gold-fitted"}
        overrides["loop"] = {"rounds": 1}
    return load_config(None, overrides)


def rounds_of(run_dir: Path) -> list[dict[str, Any]]:
    """Each evaluated round of a finished loop run: its GGUF, validation and test primary scores, the test
    split's verdict against the trivial answers (only reported) and the round's seconds (its cost)."""
    out = []
    for k, rec in read_rounds(run_dir).items():
        if rec.status == "done" and rec.metrics is not None and rec.gguf:
            gguf = Path(rec.gguf) if Path(rec.gguf).is_absolute() else run_dir / rec.gguf
            test = rec.metrics.test
            out.append({"round": k, "gguf": str(gguf), "validation": rec.metrics.validation.primary,
                        "test": test.primary if test else None,
                        "test_balanced_accuracy": test.skill["balanced_accuracy"] if test and test.skill else None,
                        "test_verdict": test.verdict if test else None, "seconds": rec.seconds})
    return out


def round_seconds(run_dir: Path, k: int) -> float | None:
    """What round k cost: the seconds of its stages (signal check, writing and labelling, training, export,
    evaluation) as the run's manifest recorded them when they ran (a resumed stage keeps its first timing)."""
    stages = read_json(run_dir / "manifest.json").get("stages", {})
    timed = [s["seconds"] for name, s in stages.items() if name.startswith(f"round-{k}/") and s.get("seconds")]
    return round(sum(timed), 1) if timed else None


def own_round(run_dir: Path, k: int) -> dict[str, Any] | None:
    """How a variant's round k went: its status, training rows and the signal check before it (the best
    labeller's balanced accuracy, chance and p), for the diagnosis beside the scores."""
    rec = read_rounds(run_dir).get(k)
    if rec is None:
        return None
    out: dict[str, Any] = {"round": k, "status": rec.status, "train_rows": rec.train_size,
                           "seconds": round_seconds(run_dir, k)}
    if rec.signal and rec.signal.get("labellers"):
        best = rec.signal.get("best") or max(rec.signal["labellers"],
                                             key=lambda n: rec.signal["labellers"][n]["balanced_accuracy"])
        lab = rec.signal["labellers"][best]
        out["check"] = {"labeller": best, "balanced_accuracy": lab["balanced_accuracy"], "chance": rec.signal["chance"],
                        "p": lab["p_value"], "passes": lab["passes"]}
    return out


def final_student(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The best on validation; a tie keeps the earlier candidate."""
    best = candidates[0]
    for c in candidates[1:]:
        if c["validation"] > best["validation"]:
            best = c
    return best


def signal_predictions(cfg: Config, task: Task, gguf: str, cache: Path) -> dict[str, Any]:
    """The student's answers on the signal pool, cached by the GGUF's content and the pool's settings."""
    instances = task.split("signal", cfg.eval.validation_size, cfg.eval.test_size, cfg.selfguide.signal_size)
    path = cache / f"{file_hash(Path(gguf))[:16]}-{task.name}-{len(instances)}.json"
    if path.is_file():
        return read_json(path)
    method = method_for(cfg)
    prompt_fn, stops = method.eval_prompt()
    with open_sampler(gguf, cfg.engine) as sampler:
        rows = predict(task, sampler, instances, cfg.eval, prompt_fn=prompt_fn,
                       fmt=method.prompt_format(sampler.info), extra_stops=stops)
    said = [r["prediction"] for r in rows]
    gold = [i.outputs[0] for i in instances]
    record = {"gguf": gguf, "n": len(instances), "gold": gold, "said": said,
              **read_labelling(task.labels, gold, said)}
    write_json(path, record)
    return record


def study_cell(task: Path, model: str, k: int, seed: int, variants: list[str], work: Path) -> dict[str, Any]:
    """Every variant of one (task, student, K, seed), run or resumed; the final students and their answers."""
    base = work / task.stem / Path(model).stem
    dirs = {"S": base / f"s{seed}" / "S", **{v: base / f"K{k}-s{seed}" / v for v in "ABC"}}
    runs: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for v in ("A", *[x for x in variants if x != "A"]) if {"B", "C"} & set(variants) else variants:
        student = model
        if v == "B":
            student = str(dirs["A"] / "round-1" / "merged")
        cfg = variant_config(v, task, student, k, seed, dirs[v])
        start = time.perf_counter()
        run_loop(cfg, log=lambda m: None)
        seconds[v] = round(time.perf_counter() - start, 1)
        runs[v] = rounds_of(dirs[v])
    out: dict[str, Any] = {"task": task.stem, "model": model, "k": k, "seed": seed, "variants": {}}
    task_data = load_task(task)  # read once for every variant's signal-pool answers
    for v in variants:
        rounds = runs[v]
        if v == "S" or v == "A":
            candidates = [{"name": f"{v}{r['round']}" if r["round"] else "round 0", **r} for r in rounds]
        else:
            a1 = next((r for r in runs["A"] if r["round"] == 1), None)
            own = next((r for r in rounds if r["round"] == 1), None)
            candidates = [{"name": "round 0", **runs["A"][0]}, *([{"name": "A1", **a1}] if a1 else []),
                          *([{"name": f"{v}1", **own}] if own else [])]
        final = final_student(candidates)
        cfg = variant_config("S", task, model, k, seed, dirs[v])
        out["variants"][v] = {"candidates": [{k_: c[k_] for k_ in ("name", "validation", "test", "test_balanced_accuracy", "test_verdict",
                                                                  "seconds")} for c in candidates],
                              "final": final["name"], "seconds_this_invocation": seconds.get(v),
                              "rounds": [r for k_ in (1, 2) if (r := own_round(dirs[v], k_))],
                              "signal_pool": signal_predictions(cfg, task_data, final["gguf"],
                                                                work / "signal-predictions")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, nargs="+", default=[SHARED / f"{t}.json" for t in TASKS])
    ap.add_argument("--models", nargs="+", default=[DEFAULT_STUDENT])
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["S", "A", "B", "C"], choices=["S", "A", "B", "C"])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "gold-study")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    print(f"command: {command_line()}\nmachine: {machine_line()}", flush=True)
    try:
        run_study(args)
    except UserError as exc:  # a missing task file or model: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_study(args: argparse.Namespace) -> None:
    """Every cell of tasks x models x K, the result file rewritten after each."""
    cells = []
    for task in args.tasks:
        for model in args.models:
            for k in args.k:
                cell = study_cell(task.resolve(), model, k, args.seed, args.variants, args.work.resolve())
                cells.append(cell)
                line = ", ".join(f"{v} {c['final']} {c['signal_pool']['balanced_accuracy']:.1f}"
                                 for v, c in cell["variants"].items())
                print(f"{short_task(task.stem)} {model} K={k}: balanced accuracy on the signal pool: {line}", flush=True)
                if args.json:  # after every cell, so an interrupted study keeps what it finished
                    write_result(args.json, {"command": command_line(), "machine": machine_line(),
                                             "code": code_commit(REPO), "cells": cells})


if __name__ == "__main__":
    raise SystemExit(main())
