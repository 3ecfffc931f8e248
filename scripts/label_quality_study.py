#!/usr/bin/env python3
"""How good are the student's own labels? Every classification labeller on the validation instances of the
shared classification tasks, whose gold labels are known, with the round-0 student (the built-in one, or
--model: any name or GGUF the loop accepts).

Labellers (selfguide.labeler) and baselines:
- vote:          the self-consistency vote of a default round (10 label-constrained samples, threshold 0.3);
- greedy:        the unconstrained greedy answer (round 0's evaluation answer), counted where it is a label;
- argmax:        the label-constrained, uncalibrated best guess from the label log-probabilities;
- batch:         batch calibration, the prior estimated over the validation inputs themselves (in a round it
                 is estimated over the round's written inputs);
- content-free:  contextual calibration, the prior from content-free inputs ("N/A", "", "[MASK]").
Each is read as balanced accuracy over all validation instances (an input left without a label counts as
wrong), beside chance (100 / gold labels present), the labels it uses and its coverage; calibrated
labellers also at label margins 0.25, 0.5 and 1 (balanced accuracy over the instances they keep).
Test instances are not looked at.

The rule, committed with this script before it was run (validation only):
  1. The calibrated labeller carried into the round study is the one of batch / content-free with the
     higher mean balanced accuracy at margin 0 over the tasks (ties: batch).
  2. Its label_margin is the margin (0, 0.25, 0.5, 1) with the highest mean balanced accuracy on the
     instances it keeps, among margins keeping at least half of the instances on average (ties: smaller).
  3. Label quality is "above chance" on a task when balanced accuracy (all instances) >= chance + 5.
  The default labeller is not decided here: that needs final students (the round study).

Usage: python3 scripts/label_quality_study.py [--tasks T.json ...] [--model NAME] [--work DIR] [--json FILE]
Per-task results are cached in WORK (default runs/label-quality/<model>; the script resumes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from selfguide_lite.builtin_students import DEFAULT_STUDENT
from selfguide_lite.config import Config, EngineConfig
from selfguide_lite.engine import open_sampler
from selfguide_lite.evaluate import predict, split_instances
from selfguide_lite.methods.label_signal import label_all
from selfguide_lite.methods.labellers import LABELLERS, LabelJob, LabelScores
from selfguide_lite.metrics import READS_MARGIN, normalize, read_labelling
from selfguide_lite.models import sampling_gguf
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.runtime import cpu_flags, cpu_name, named_features
from selfguide_lite.store import read_json, write_json
from selfguide_lite.studies import command_line
from selfguide_lite.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "natural-instructions"
TASKS = ["task1385_anli_r1_entailment", "task1386_anli_r2_entailment", "task190_snli_classification",
         "task199_mnli_classification", "task200_mnli_entailment_classification", "task738_perspectrum_classification",
         "task937_defeasible_nli_social_classification"]
MARGINS = (0.0, 0.25, 0.5, 1.0)
# the result keys of the committed label-quality files -> the labeller
SCORE_LABELLERS = {"argmax": "argmax", "batch": "batch-calibrated", "content-free": "content-free-calibrated"}


def read_labels(labels: list[str], gold: list[list[str]], said: list[str | None]) -> dict:
    """Balanced accuracy over every instance (no label = wrong) and over the labelled ones, coverage: the
    product's one reading of self-labels (methods/label_signal.read_labelling)."""
    firsts = [g[0] for g in gold]
    everything = read_labelling(labels, firsts, said)
    kept = [i for i, s in enumerate(said) if s is not None]
    on_kept = read_labelling(labels, [firsts[i] for i in kept], [said[i] for i in kept]) if kept else None
    return {"balanced_accuracy": everything["balanced_accuracy"], "chance": everything["chance"],
            "labels_used": everything["labels_used"], "coverage": everything["coverage"] / 100.0,
            "balanced_accuracy_kept": on_kept["balanced_accuracy"] if on_kept else None}


def study_task(path: Path, sampler, cfg: Config) -> dict:
    task = load_task(path)
    inst = split_instances(task, cfg.eval, ("validation",))["validation"]
    inputs, gold = [i.input for i in inst], [i.outputs for i in inst]
    fmt = PromptFormat.from_info(sampler.info)
    out = {"type": task.type, "labels": list(task.labels), "n": len(inst), "seconds": {}}
    scores = LabelScores(task, sampler, fmt, inputs)  # one scoring pass for every score labeller and margin

    said, seconds = label_all(LabelJob(task, sampler, cfg.selfguide, fmt, inputs, 0, scores=scores), ["vote"])
    out["seconds"]["vote"] = round(seconds["vote"], 1)

    greedy = predict(task, sampler, inst, cfg.eval.model_copy(update={"constrain_labels": False}), fmt=fmt)
    by_norm = {normalize(lab): lab for lab in task.labels}
    said["greedy"] = [by_norm.get(normalize(r["prediction"])) for r in greedy]

    start = time.perf_counter()
    _ = scores.probs  # the one scoring pass, timed
    out["seconds"]["score"] = round(time.perf_counter() - start, 1)
    out["priors"] = {short_name: None if (prior := LABELLERS[name].prior(scores)) is None else
                     [round(float(x), 4) for x in prior] for short_name, name in SCORE_LABELLERS.items()}
    results = {name: read_labels(task.labels, gold, got) for name, got in said.items()}
    for short_name, name in SCORE_LABELLERS.items():
        for margin in MARGINS if short_name != "argmax" else (0.0,):
            job = LabelJob(task, sampler, cfg.selfguide.model_copy(update={"label_margin": margin}), fmt, inputs, 0,
                           scores=scores)
            got, _ = label_all(job, [name])
            results[f"{short_name}@{margin}"] = read_labels(task.labels, gold, got[name])
    out["results"] = results
    return out


def decide(per_task: dict) -> dict:
    """The rule in the docstring, on validation numbers only."""
    def mean(key: str, field: str) -> float:
        vals = [r["results"][key][field] for r in per_task.values() if r["results"][key][field] is not None]
        return statistics.fmean(vals) if vals else float("nan")

    labeller = max(("batch", "content-free"), key=lambda k: (mean(f"{k}@0.0", "balanced_accuracy"), k == "batch"))
    usable = [m for m in MARGINS if mean(f"{labeller}@{m}", "coverage") >= 0.5]
    margin = max(usable, key=lambda m: (mean(f"{labeller}@{m}", "balanced_accuracy_kept"), -m))
    above = {name: sum(1 for r in per_task.values()
                       if r["results"][name]["balanced_accuracy"] >= r["results"][name]["chance"] + READS_MARGIN)
             for name in ("vote", "greedy", "argmax@0.0", "batch@0.0", "content-free@0.0", f"{labeller}@{margin}")}
    return {"labeller": labeller, "label_margin": margin, "tasks_above_chance_plus_5": above,
            "mean_balanced_accuracy": {name: round(mean(name, "balanced_accuracy"), 2) for name in above}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, nargs="+", default=[SHARED / f"{t}.json" for t in TASKS])
    ap.add_argument("--model", default=DEFAULT_STUDENT, help="the round-0 student (default: %(default)s)")
    ap.add_argument("--work", type=Path, help="per-task cache (default: runs/label-quality/<model>)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work = args.work or REPO / "runs" / "label-quality" / Path(str(args.model)).stem.replace(":", "-")
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    per_task = {}
    with open_sampler(sampling_gguf(args.model), EngineConfig()) as sampler:
        for path in args.tasks:
            cache = args.work / f"{path.stem}.json"
            if not cache.is_file():
                write_json(cache, study_task(path, sampler, cfg))
            per_task[path.stem] = read_json(cache)
    for name, r in per_task.items():
        print(f"{name} (validation {r['n']}; vote {r['seconds']['vote']} s, label scores {r['seconds']['score']} s)")
        for key, res in r["results"].items():
            kept = res["balanced_accuracy_kept"]
            print(f"  {key:18} balanced accuracy {res['balanced_accuracy']:5.1f} (chance {res['chance']:4.1f}), "
                  f"{res['labels_used']} label(s), coverage {res['coverage']:.2f}"
                  + (f", on the kept {kept:5.1f}" if kept is not None else ""))
    decision = decide(per_task)
    print("decision (validation):", decision)
    if args.json:
        write_json(args.json, {"command": command_line(),
                               "machine": f"{cpu_name()}, {' '.join(named_features(cpu_flags()))}",
                               "student": str(args.model), "per_task": per_task, "decision": decision})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
