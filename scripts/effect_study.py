#!/usr/bin/env python3
"""Does Self-Guide make the built-in student better? Round 0 vs rounds 1..N on every Natural
Instructions task in ../shared/data, scored on **test**, with the diagnostics that say why.

For each task, seed and variant the product's own loop runs (`run_loop`, default settings unless
--config or a variant changes them) in WORK/VARIANT/TASK/seed-S; a finished run is reused (the loop's
stage cache), so the study resumes where an earlier invocation stopped and can span sessions.
Every choice inside the loop (promotion) is made on validation; test scores are only reported.

Per task it reports round-0, round-k and final-student test scores (exact match for classification,
ROUGE-L for generation), the funnel (candidates -> kept by the input filters -> labelled by the vote
-> after balancing), and diagnostics (selfguide_lite/diagnostics.py):
- format: share of round-0 and final test predictions that are exactly a label (classification) or a
  single answer without continuation (generation); generation also: share copying a demo's answer;
- self-label quality: the annotation procedure (samples + vote) run by the round-0 student on the
  validation inputs, scored against their gold answers, beside the round-0 greedy answers;
- input quality (round 1): how often the vote's label equals the label the input was written for,
  duplicate share, length against the real inputs;
- training: rows per round, final training loss, promoted or not.
Means over classification, generation and all tasks close the table. Variants (ablations):
full, no_vote, no_input_filters, no_label_filter, no_balance, no_repeat_limit, no_strip_input_echo
(drop an input written after an echoed "Input:" as the original filters do); and original (the published
method, without this project's changes for small chat students: input lead, field filter, answer checks,
balance floor, per-wave context, the repeated-answer limit, the echo strip); batch_calibrated,
content_free_calibrated and argmax (classification labellers instead of the vote, selfguide.labeler).
Each scored round also carries its skill columns (balanced accuracy, macro-F1, labels used, best constant
label; generation: input as answer) per split, computed from its stored predictions.

Usage: python3 scripts/effect_study.py [--tasks T.json ...] [--seeds 0 1] [--rounds 2]
       [--variants full no_vote ...] [--config FILE] [--model NAME] [--work runs/effect-study] [--json FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.builtin_students import DEFAULT_STUDENT  # noqa: E402
from selfguide_lite.config import Config, LoopConfig, deep_merge, load_config  # noqa: E402
from selfguide_lite.diagnostics import (  # noqa: E402
    copy_share,
    format_share,
    input_copy_score,
    input_copy_share,
    input_quality,
    label_quality,
)
from selfguide_lite.errors import UserError  # noqa: E402
from selfguide_lite.evaluate import skill_scores  # noqa: E402
from selfguide_lite.loop import run_loop  # noqa: E402
from selfguide_lite.store import file_hash, read_json, read_jsonl, value_hash, write_json  # noqa: E402
from selfguide_lite.studies import command_line, fmt, mean  # noqa: E402
from selfguide_lite.tasks import Instance, Task, load_task  # noqa: E402

SHARED_TASKS = REPO.parent / "shared" / "data" / "natural-instructions"
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_vote": {"selfguide": {"num_samples": 1, "annotate_temperature": 0.0}},
    "no_input_filters": {"selfguide": {"input_filters": False}},
    "no_label_filter": {"selfguide": {"labels_in_vote": "any"}},
    "no_balance": {"selfguide": {"balance": False}},
    # generation: keep answers the vote gives to many different inputs (the default drops those given to more than 3)
    "no_repeat_limit": {"selfguide": {"without": ["repeat_limit"]}},
    # drop an input the student wrote after an echoed "Input:" as noise (the default strips the echo and keeps it)
    "no_strip_input_echo": {"selfguide": {"without": ["strip_input_echo"]}},
    # the method as first published, before this project's changes for small chat students
    "original": {"selfguide": {"preset": "original"}},
    # classification labellers instead of the vote (selfguide.labeler): the student's label prior divided out,
    # estimated over the round's inputs or over content-free inputs; and the uncalibrated best guess
    "batch_calibrated": {"selfguide": {"labeler": "batch-calibrated"}},
    "content_free_calibrated": {"selfguide": {"labeler": "content-free-calibrated"}},
    "argmax": {"selfguide": {"labeler": "argmax"}},
}


# The settings the committed studies ran with before the signal check existed: the vote labels (a variant may
# name another labeller) and a round trains on whatever survives. Kept so finished runs are not recomputed and
# the study measures the method itself; "gated" is today's default loop (labeler auto, loop.min_train_rows).
STUDY_BASE: dict[str, Any] = {"selfguide": {"labeler": "vote"}, "loop": {"min_train_rows": 1}}
VARIANTS["gated"] = {"selfguide": {"labeler": "auto"}, "loop": {"min_train_rows": LoopConfig().min_train_rows}}
# training precision side by side (issue 43): the same rounds trained in float32 and in bfloat16
VARIANTS["float32"] = {"train": {"precision": "float32"}}
VARIANTS["bfloat16"] = {"train": {"precision": "bfloat16"}}


def study_config(task: Path, seed: int, variant: str, rounds: int, model: str, config: Path | None, run_dir: Path) -> Config:
    overrides = deep_merge(deep_merge(STUDY_BASE, VARIANTS[variant]),
                           {"model": model, "task": str(task), "run_dir": str(run_dir), "seed": seed,
                            "loop": {"rounds": rounds}})
    return load_config(config, overrides)


def primary(task: Task) -> str:
    return "exact_match" if task.is_classification else "rougeL"


def self_label_quality(cfg: Config, task: Task, run_dir: Path, round0: dict[str, Any]) -> dict[str, Any]:
    """The round-0 student's vote on the validation inputs against their gold answers, beside its greedy
    answers there. Cached in diagnostics/label_quality.json (keyed by student, settings, seed)."""
    from selfguide_lite.engine import open_sampler
    from selfguide_lite.methods import method_for
    from selfguide_lite.methods.labellers import annotate
    from selfguide_lite.prompts import PromptFormat

    gguf = Path(round0["model"])
    out = run_dir / "diagnostics" / "label_quality.json"
    key = value_hash([file_hash(gguf), method_for(cfg).settings(), cfg.seed, task.name])
    if out.is_file() and (cached := read_json(out)).get("key") == key:
        return cached["quality"]
    rows = round0["tasks"][0]["validation"]["predictions"]
    with open_sampler(gguf, cfg.engine) as sampler:
        votes = annotate(task, sampler, cfg.selfguide, PromptFormat.from_info(sampler.info),
                         [r["input"] for r in rows], cfg.seed + 1000)
    quality = label_quality([r["references"] for r in rows], [v.answer for v in votes],
                            [r["prediction"] for r in rows], task.is_classification, task.labels)
    write_json(out, {"key": key, "quality": quality})
    return quality


def same_quant_baseline(cfg: Config, run_dir: Path, work: Path) -> dict[str, Any] | None:
    """Round 0 again, with the student re-exported at the quantization the loop's own students get:
    a GGUF student (the built-in one is Q4_1) is sampled as given in round 0, so without this a later
    round's gain could be precision (q8_0) rather than self-training. None when round 0 was already
    exported by the loop. The GGUF is shared by every task, its evaluation by every variant."""
    from selfguide_lite.evaluate import evaluate_student
    from selfguide_lite.export import gguf_from_hf, resolve_quant
    from selfguide_lite.methods import method_for
    from selfguide_lite.models import resolve_student

    source = resolve_student(cfg.model, lambda m: None)
    if source.gguf is None:
        return None
    quant = resolve_quant(cfg.export.quant, source.hf_dir)
    gguf = work / "baselines" / f"{Path(source.hf_dir).name}-{quant}.gguf"
    if not gguf.is_file():
        gguf_from_hf(source.hf_dir, gguf, quant)
    # The same file on the same task and evaluation settings scores the same in every variant: one
    # evaluation per (file, task, settings, seed), shared by the variants' runs.
    key = value_hash([file_hash(gguf), Path(cfg.task).stem, cfg.eval.model_dump(), cfg.seed])[:16]
    out = work / "baselines" / f"{Path(cfg.task).stem}-{quant}-{key}-eval.json"
    if not out.is_file():
        method = method_for(cfg)
        evaluate_student(cfg, method, method.eval_tasks(), gguf, out)
    scores = read_json(out)
    return {"quant": quant, "validation": scores["validation"]["primary"],
            "test": scores["test"]["primary"] if scores.get("test") else None}


def run_summary(cfg: Config, task: Task, run_dir: Path) -> dict[str, Any]:
    """Scores, funnel and diagnostics of one finished run, read from its files."""
    manifest = read_json(run_dir / "manifest.json")
    rounds = manifest["rounds"]
    labels = list(task.labels) if task.is_classification else None
    evals = {int(k): read_json(run_dir / f"round-{k}" / "eval.json") for k, r in rounds.items()
             if (run_dir / f"round-{k}" / "eval.json").is_file() and r.get("status") == "done"}

    def test_rows(k: int) -> list[dict[str, Any]]:
        return evals[k]["tasks"][0]["test"]["predictions"]

    final_round = manifest["final"]["round"]
    per_round = {}
    for k, rec in sorted(rounds.items(), key=lambda kv: int(kv[0])):
        k = int(k)
        entry: dict[str, Any] = {"status": rec.get("status"), "promoted": rec.get("promoted")}
        if rec.get("signal"):  # the signal check before the round (runs since issue 41)
            entry["signal"] = {k: rec["signal"].get(k) for k in ("signal", "chosen", "best", "n", "chance", "line")}
        if k in evals:
            entry["validation"] = evals[k]["validation"]["primary"]
            entry["test"] = evals[k]["test"]["primary"] if evals[k].get("test") else None
            rows = test_rows(k)
            preds, refs = [r["prediction"] for r in rows], [r["references"] for r in rows]
            entry["format"] = format_share(preds, refs, labels)
            entry["skill"] = {split: split_skill(task, evals[k]["tasks"][0][split]["predictions"])
                              for split in ("validation", "test") if evals[k]["tasks"][0].get(split)}
            if labels is None:
                entry["demo_copies"] = copy_share(preds, [d.output for d in task.demos])
                entry["input_copies"] = input_copy_share(preds, [r["input"] for r in rows])
        if k > 0:
            stats = rec.get("synth_stats") or {}
            entry["funnel"] = {"candidates": stats.get("candidates"),
                               "after_input_filters": stats.get("inputs_accepted"),
                               "after_vote": stats.get("annotated"), "after_balance": stats.get("train")}
            # why inputs were dropped; input_echoes: candidates that began with "Input:" (absent in older runs)
            entry["input_drops"] = {**(stats.get("input_dropped") or {}), "input_echoes": stats.get("input_echoes")}
            entry["train_rows"] = rec.get("train_size")
            synth_stage = manifest["stages"].get(f"round-{k}/synth") or {}
            entry["sampling_seconds"] = synth_stage.get("sampling_seconds")  # {"write_inputs": s, "annotate": s}
            train_stage = manifest["stages"].get(f"round-{k}/train") or {}
            entry["train_loss"] = train_stage.get("train_loss")
            synth = run_dir / f"round-{k}" / "synth"
            if (synth / "train.jsonl").is_file():
                annotated = read_jsonl(synth / "train.jsonl") + [
                    d for d in read_jsonl(synth / "dropped.jsonl") if d.get("stage") == "balance"]
                entry["inputs"] = input_quality(annotated, stats, [i.input for i in task.instances[:200]])
        per_round[k] = entry
    summary = {"task": task.name, "type": task.type, "metric": primary(task), "run_dir": str(run_dir),
               "rounds": per_round, "final_round": final_round,
               "round0_test": per_round[0].get("test"), "final_test": per_round[final_round].get("test"),
               "final_format": per_round[final_round].get("format")}
    if labels is None and 0 in evals:  # the trivial answer "repeat the input", scored like a student
        rows = test_rows(0)
        summary["input_copy_test"] = input_copy_score([r["input"] for r in rows], [r["references"] for r in rows])
    summary["gain"] = (summary["final_test"] - summary["round0_test"]
                       if summary["final_test"] is not None and summary["round0_test"] is not None else None)
    summary["label_quality"] = self_label_quality(cfg, task, run_dir, evals[0])
    return summary


def split_skill(task: Task, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluator's skill columns (balanced accuracy, macro-F1, labels used, best constant; input as
    answer) recomputed from a split's stored predictions, so runs evaluated before they existed get them too."""
    instances = [Instance(id=str(i), input=r["input"], outputs=tuple(r["references"])) for i, r in enumerate(rows)]
    return skill_scores(task, instances, [r["prediction"] for r in rows])


def aggregate(per_task: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over classification, generation and all tasks (each task first averaged over its seeds)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in per_task:
        by_task.setdefault(r["task"], []).append(r)
    rows = []
    for name, runs in by_task.items():
        rows.append({"task": name, "type": runs[0]["type"], "seeds": len(runs),
                     "round0_test": mean([r["round0_test"] for r in runs]),
                     "final_test": mean([r["final_test"] for r in runs]),
                     "gain": mean([r["gain"] for r in runs]),
                     "gain_vs_same_quant": mean([r.get("gain_vs_same_quant") for r in runs])})
    out: dict[str, Any] = {"per_task": rows}
    for group, members in (("classification", [r for r in rows if r["type"] == "classification"]),
                           ("generation", [r for r in rows if r["type"] != "classification"]), ("all", rows)):
        out[group] = {"tasks": len(members), "round0_test": mean([r["round0_test"] for r in members]),
                      "final_test": mean([r["final_test"] for r in members]),
                      "gain": mean([r["gain"] for r in members]),
                      "gain_vs_same_quant": mean([r["gain_vs_same_quant"] for r in members]),
                      "worst_gain": min((r["gain"] for r in members if r["gain"] is not None), default=None)}
    return out


def compare_to_reference(runs: list[dict[str, Any]], reference: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Each run beside the reference run (`full`) of the same task and seed, at the last round both have
    scored: the validation difference is the evidence a setting is chosen on, the test difference is
    only reported. Runs without a reference are listed with None differences and left out of the means."""
    def scored(run: dict[str, Any]) -> set[int]:
        return {k for k, r in run["rounds"].items() if k and r.get("validation") is not None}

    rows = []
    for run in runs:
        ref = reference.get((run["task"], run["seed"]), {"rounds": {}})
        k = max(scored(run) & scored(ref), default=None)
        mine, theirs = run["rounds"].get(k, {}), ref["rounds"].get(k, {})
        delta = {key: None if mine.get(key) is None or theirs.get(key) is None else mine[key] - theirs[key]
                 for key in ("validation", "test")}
        rows.append({"task": run["task"], "seed": run["seed"], "variant": run["variant"], "round": k,
                     "validation": mine.get("validation"), "reference_validation": theirs.get("validation"),
                     "delta_validation": delta["validation"], "test": mine.get("test"),
                     "reference_test": theirs.get("test"), "delta_test": delta["test"],
                     "train_rows": mine.get("train_rows"), "reference_train_rows": theirs.get("train_rows")})
    return {"rows": rows, "mean_delta_validation": mean([r["delta_validation"] for r in rows]),
            "mean_delta_test": mean([r["delta_test"] for r in rows]),
            "worst_delta_validation": min((r["delta_validation"] for r in rows if r["delta_validation"] is not None),
                                          default=None)}


def print_comparison(variant: str, cmp: dict[str, Any]) -> None:
    print(f"\n{variant} vs full, same task, seed and round (validation decides; test reported):")
    for r in cmp["rows"]:
        print(f"  {r['task']:<52} seed {r['seed']} round {r['round']}: validation {fmt(r['validation'])} vs "
              f"{fmt(r['reference_validation'])} ({fmt(r['delta_validation'], '+.1f')}), test {fmt(r['test'])} vs "
              f"{fmt(r['reference_test'])} ({fmt(r['delta_test'], '+.1f')}), rows {r['train_rows']} vs "
              f"{r['reference_train_rows']}")
    print(f"  mean difference: validation {fmt(cmp['mean_delta_validation'], '+.1f')} (worst task "
          f"{fmt(cmp['worst_delta_validation'], '+.1f')}), test {fmt(cmp['mean_delta_test'], '+.1f')}")


def print_run(s: dict[str, Any], seed: int, variant: str) -> None:
    q = s["label_quality"]
    print(f"{s['task']} [{variant}, seed {seed}] ({s['metric']}): round-0 test {fmt(s['round0_test'])} -> final "
          f"(round {s['final_round']}) {fmt(s['final_test'])}  gain {fmt(s['gain'], '+.1f')}")
    for k, r in s["rounds"].items():
        line = f"    round {k}: validation {fmt(r.get('validation'))}, test {fmt(r.get('test'))}, format {fmt(r.get('format'))}%"
        if (skill := (r.get("skill") or {}).get("test")) and "balanced_accuracy" in skill:
            line += (f", test balanced accuracy {fmt(skill['balanced_accuracy'])} (chance {fmt(skill['chance'])}), "
                     f"{skill['labels_predicted']} label(s), best constant {fmt(skill['best_constant'])}")
        if "demo_copies" in r:
            line += f", demo copies {fmt(r['demo_copies'])}%, input copies {fmt(r.get('input_copies'))}%"
        if k:
            fn = r.get("funnel") or {}
            line += (f"; funnel {fn.get('candidates')} -> {fn.get('after_input_filters')} -> {fn.get('after_vote')} -> "
                     f"{fn.get('after_balance')} rows, loss {r.get('train_loss')}, "
                     f"{'promoted' if r.get('promoted') else 'not promoted'} ({r.get('status')})")
            if inp := r.get("inputs"):
                line += (f"; inputs: label as asked {fmt(inp['target_agreement'])}%, duplicates "
                         f"{fmt(inp['duplicate_share'])}%, length x{fmt(inp['length_ratio'], '.2f')}")
                if inp.get("labels_written"):
                    line += f", labels {inp['labels_written']}"
        print(line)
    if s.get("input_copy_test") is not None:
        print(f"    answering with the input itself scores {fmt(s['input_copy_test'])} on test")
    if b := s.get("round0_same_quant"):
        print(f"    round 0 re-exported at {b['quant']}: validation {fmt(b['validation'])}, test {fmt(b['test'])}; "
              f"final gain over it {fmt(s.get('gain_vs_same_quant'), '+.1f')}")
    print(f"    self-labels on validation: vote {fmt(q['vote_score'])} (keeps {fmt(q['coverage'])}%; on those "
          f"{fmt(q['vote_score_kept'])}) vs greedy {fmt(q['greedy_score'])} (on the kept {fmt(q['greedy_score_kept'])})",
          flush=True)


def study_output(results: dict[str, list[dict[str, Any]]], command: str, commit: str | None,
                 args: argparse.Namespace, t0: float, complete: bool) -> dict[str, Any]:
    """The JSON document: every finished run with its variant's means. `complete` is False while
    the invocation is still running (it rewrites the file after each run)."""
    return {"command": command, "code": commit, "complete": complete,
            "wall_seconds": round(time.perf_counter() - t0, 1), "seeds": args.seeds, "rounds": args.rounds,
            "variants": {v: {"runs": runs, **aggregate(runs)} for v, runs in results.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, nargs="+", help="task files (default: every task in ../shared/data)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["full"], choices=list(VARIANTS))
    ap.add_argument("--model", default=DEFAULT_STUDENT)
    ap.add_argument("--config", type=Path, help="settings file (default: the product's defaults)")
    ap.add_argument("--work", type=Path, default=Path("runs/effect-study"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    progress.quiet_libraries()
    tasks = args.tasks or sorted(SHARED_TASKS.glob("*.json"))
    command = command_line()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    print(f"command: {command}\ncode: {commit}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    t0 = time.perf_counter()
    try:
        for variant in args.variants:
            for seed in args.seeds:
                for path in tasks:
                    run_dir = args.work / variant / path.stem / f"seed-{seed}"
                    cfg = study_config(path, seed, variant, args.rounds, args.model, args.config, run_dir)
                    started = time.perf_counter()
                    run_loop(cfg, log=lambda m: None, command=command)
                    summary = run_summary(cfg, load_task(path), run_dir)
                    base = same_quant_baseline(cfg, run_dir, args.work)
                    summary["round0_same_quant"] = base
                    summary["gain_vs_same_quant"] = (summary["final_test"] - base["test"] if base and base["test"] is not None
                                                     and summary["final_test"] is not None else None)
                    summary.update(seed=seed, variant=variant, seconds_this_invocation=round(time.perf_counter() - started, 1))
                    results[variant].append(summary)
                    print_run(summary, seed, variant)
                    if args.json:  # a session can end mid-study: keep what is finished
                        write_json(args.json, study_output(results, command, commit, args, t0, complete=False))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = study_output(results, command, commit, args, t0, complete=True)
    for variant, agg in out["variants"].items():
        print(f"\n{variant}: mean test gain (final student - round 0), per task averaged over seeds {args.seeds}:")
        for r in agg["per_task"]:
            print(f"  {r['task']:<52} {r['type']:<14} {fmt(r['round0_test']):>6} -> {fmt(r['final_test']):>6}  "
                  f"{fmt(r['gain'], '+.1f'):>6}  (vs round 0 at the loop's quantization {fmt(r['gain_vs_same_quant'], '+.1f')})")
        for group in ("classification", "generation", "all"):
            g = agg[group]
            print(f"  mean over {group} ({g['tasks']} tasks): {fmt(g['round0_test'])} -> {fmt(g['final_test'])}, "
                  f"gain {fmt(g['gain'], '+.1f')} (vs same quantization {fmt(g['gain_vs_same_quant'], '+.1f')}), "
                  f"worst task {fmt(g['worst_gain'], '+.1f')}")
    others = [v for v in results if v != "full"]
    if others:
        reference = {(r["task"], r["seed"]): r for r in results.get("full", [])}
        for path in tasks:  # a reference run finished by an earlier invocation is read, not rerun
            for seed in args.seeds:
                run_dir = args.work / "full" / path.stem / f"seed-{seed}"
                if (path.stem, seed) not in reference and (run_dir / "manifest.json").is_file():
                    cfg = study_config(path, seed, "full", args.rounds, args.model, args.config, run_dir)
                    reference[(path.stem, seed)] = {**run_summary(cfg, load_task(path), run_dir), "seed": seed}
        for variant in others:
            cmp = compare_to_reference(results[variant], reference)
            out["variants"][variant]["vs_full"] = cmp
            print_comparison(variant, cmp)
    print(f"wall time of this invocation: {out['wall_seconds'] / 60:.1f} min")
    if args.json:
        print(f"wrote {write_json(args.json, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
