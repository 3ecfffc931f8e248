#!/usr/bin/env python3
"""One whole Self-Guide round at the default settings on the built-in student, timed per stage, and the
same training epoch through the plain trl SFTTrainer path beside the shared-prefix one, in one run.

For each task (default: the shipped classification task738 and the generation task1195 from
../shared/data) the product's own loop runs round 0 and one round with every default setting (400
candidates, 10-sample vote, 3 epochs of LoRA, q4_k_m export, 100 validation + 100 test instances); only
`--context-sampling` may vary, so both input-writing modes can be timed and scored side by side. Runs
live under --work and are reused (the loop's stage cache), so an interrupted benchmark resumes.

Then, on the round's own training rows, one epoch with `train.shared_prefix: off` (the plain SFTTrainer
computation) and one with `auto`, same seed and settings, and the largest relative LoRA-gradient
difference of one micro-batch between the two (float32).

Printed per task: seconds per stage (write inputs, annotate, train, export, evaluate), inputs/s,
samples/s, training rows/s and tokens/s, the baseline's rows/s, the speedup, validation/test scores.
`--json FILE` writes the figures (per task, and the first task's at the top level: stage_seconds,
train_rows_per_s, train_rows_per_s_baseline, train_speedup, max_grad_rel_diff, inputs_per_s,
round_seconds).

`--models A B` runs every task with each student in turn, in one invocation, so two students' stage
times are read side by side on the same machine and load (the first model is the reference).

Usage: python3 scripts/bench_round.py [--tasks T.json ...] [--models NAME ...] [--context-sampling request wave]
       [--work runs/bench-round] [--no-baseline] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from bench_train import gradient_check, train_losses  # noqa: E402

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.builtin_students import DEFAULT_STUDENT  # noqa: E402
from selfguide_lite.config import load_config  # noqa: E402
from selfguide_lite.demo import real_demo_task_path  # noqa: E402
from selfguide_lite.loop import run_loop  # noqa: E402
from selfguide_lite.models import resolve_student  # noqa: E402
from selfguide_lite.store import read_json, read_jsonl, write_json  # noqa: E402
from selfguide_lite.studies import command_line  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "natural-instructions"
DEFAULT_TASKS = [real_demo_task_path(), SHARED / "task1195_disflqa_disfluent_to_fluent_conversion.json"]


def run_round(task: Path, mode: str, work: Path, model: str = DEFAULT_STUDENT, precision: str = "auto") -> dict:
    """Round 0 + one default round through the product's loop; figures read back from the manifest."""
    run_dir = work / (f"{task.stem}-{mode}" if model == DEFAULT_STUDENT else f"{task.stem}-{mode}-{Path(model).stem}")
    if precision != "auto":  # a forced training precision is its own run (the loop's cache keys it anyway)
        run_dir = run_dir.with_name(f"{run_dir.name}-{precision}")
    # The round trains with the vote (the labeller of every round measured before the signal check, and the
    # one a classification round of these students gets only when named: `auto` refuses them); the default
    # `auto` check, every labeller on up to 300 validation instances, is timed apart on the round-0 student.
    cfg = load_config(None, {"model": model, "task": str(task), "run_dir": str(run_dir),
                             "loop": {"rounds": 1}, "train": {"precision": precision},
                             "selfguide": {"labeler": "vote", "without": ["wave_context"] if mode == "request" else []}})
    t0 = time.perf_counter()
    run_loop(cfg, log=lambda m: None)
    wall = time.perf_counter() - t0
    signal = auto_signal_check(cfg, model, run_dir / "signal-auto.json")
    manifest = read_json(run_dir / "manifest.json")
    stages = manifest["stages"]
    record = manifest["rounds"]["1"]
    if "round-1/train" not in stages:  # not trained (no_signal / no_data): nothing to time past the check
        raise SystemExit(f"{task.stem} with {model}: round 1 was not trained ({record['status']}: "
                         f"{record.get('error') or (record.get('signal') or {}).get('line')}); a round that trains "
                         "is what this benchmark times")
    synth = read_json(run_dir / "round-1" / "synth" / "stats.json")
    train = stages["round-1/train"]
    seconds = {
        "write_inputs": stages["round-1/synth"]["sampling_seconds"]["write_inputs"],
        "annotate": stages["round-1/synth"]["sampling_seconds"]["annotate"],
        "synthesis_total": stages["round-1/synth"]["seconds"],
        "train": train["seconds"],
        "export": stages["round-1/export"]["seconds"],
        "evaluate": stages["round-1/eval"]["seconds"],
    }
    rounds = manifest["rounds"]
    rows = int(train.get("rows", 0))
    epochs = cfg.train.epochs
    return {
        "task": task.stem, "model": model, "context_sampling": mode, "run_dir": str(run_dir),
        "signal_check": signal,
        "wall_seconds_this_invocation": round(wall, 1),
        "stage_seconds": seconds,
        "round_seconds": round(seconds["synthesis_total"] + seconds["train"] + seconds["export"] + seconds["evaluate"], 1),
        "round0_eval_seconds": stages["round-0/eval"]["seconds"],
        "inputs_per_s": synth["candidates"] / seconds["write_inputs"],
        "samples_per_s": synth["samples"] / seconds["annotate"] if seconds["annotate"] else None,
        "train_rows": rows,
        "train_rows_per_s_in_round": rows * epochs / train["seconds"] if train["seconds"] else None,
        "funnel": {"candidates": synth["candidates"], "inputs_accepted": synth["inputs_accepted"],
                   "input_dropped": synth["input_dropped"], "annotated": synth["annotated"], "train": synth["train"]},
        "scores": {k: {"validation": rounds[k]["metrics"]["validation"], "test": rounds[k]["metrics"]["test"],
                       "promoted": rounds[k].get("promoted")} for k in ("0", "1") if rounds.get(k, {}).get("metrics")},
        "train_loss": train.get("train_loss"),
    }


def auto_signal_check(cfg, model: str, cache: Path) -> dict:
    """The default signal check (selfguide.labeler auto) on the round-0 student, timed with the student's
    loading as the loop's stage does; cached beside the run."""
    if cache.is_file():
        return read_json(cache)
    from selfguide_lite.engine import open_sampler
    from selfguide_lite.methods import method_for
    from selfguide_lite.models import sampling_gguf

    auto = cfg.model_copy(update={"selfguide": cfg.selfguide.model_copy(update={"labeler": "auto"})})
    start = time.perf_counter()
    with open_sampler(sampling_gguf(model), auto.engine) as sampler:
        report = method_for(auto).check_signal(sampler, auto.seed + 1)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(cache, report)
    return report


def training_comparison(run_dir: Path, work: Path, max_rows: int, model: str = DEFAULT_STUDENT) -> dict:
    """The round's rows (the first `max_rows`: the plain path is slow), one epoch, plain vs shared
    prefix, default training settings otherwise."""
    from selfguide_lite.config import TrainConfig
    from selfguide_lite.train import resolve_quantization

    rows = read_jsonl(run_dir / "round-1" / "synth" / "train.jsonl")[:max_rows]
    source = resolve_student(model, lambda m: None).hf_dir
    base = resolve_quantization(TrainConfig(epochs=1))
    grad = gradient_check(rows, source, base.model_copy(update={"shared_prefix": "auto"}), work / "grad")
    out = {"rows": len(rows), "epochs": 1, "batch_size": base.batch_size, "quantization": base.quantization, **grad}
    for mode in ("off", "auto"):
        losses, seconds, trainer = train_losses(rows, source, base.model_copy(update={"shared_prefix": mode}), work / mode)
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        out[mode] = {"seconds": seconds, "rows_per_s": len(rows) / seconds, "tokens_per_s": tokens / seconds,
                     "losses": losses}
    n = min(len(out["off"]["losses"]), len(out["auto"]["losses"]))
    out["max_step_loss_diff"] = max((abs(a - b) for a, b in zip(out["off"]["losses"][:n], out["auto"]["losses"][:n],
                                                                 strict=True)), default=0.0)
    out["train_rows_per_s"] = out["auto"]["rows_per_s"]
    out["train_tokens_per_s"] = out["auto"]["tokens_per_s"]
    out["train_rows_per_s_baseline"] = out["off"]["rows_per_s"]
    out["train_speedup"] = out["auto"]["rows_per_s"] / out["off"]["rows_per_s"]
    return out


def table(r: dict) -> str:
    s = r["stage_seconds"]
    lines = [f"{r['task']}, {r['model']} (context_sampling {r['context_sampling']}):",
             f"  stage seconds: write inputs {s['write_inputs']:.0f}, annotate {s['annotate']:.0f} "
             f"(synthesis stage {s['synthesis_total']:.0f}), train {s['train']:.0f}, export {s['export']:.0f}, "
             f"evaluate {s['evaluate']:.0f}  -> round {r['round_seconds']:.0f} s ({r['round_seconds'] / 60:.1f} min); "
             f"round-0 evaluation {r['round0_eval_seconds']:.0f} s",
             f"  signal check (auto, {r['signal_check']['n']} instances): {r['signal_check']['seconds']:.0f} s = "
             f"{r['signal_check']['seconds'] / r['round_seconds']:.0%} of the round; {r['signal_check']['line']}",
             f"  inputs/s {r['inputs_per_s']:.2f}, samples/s {r['samples_per_s'] or 0:.1f}, funnel {r['funnel']}",
             f"  training: {r['train_rows']} rows x 3 epochs, {r['train_rows_per_s_in_round'] or 0:.2f} rows/s in the "
             f"round (model load included), final loss {r['train_loss']}"]
    for k, v in r["scores"].items():
        lines.append(f"  round {k}: validation {v['validation']['primary']:.1f}, test {v['test']['primary']:.1f}"
                     + ("" if k == "0" else f", promoted {v['promoted']}"))
    if c := r.get("training_comparison"):
        lines.append(f"  one epoch on these {c['rows']} rows: shared prefix {c['train_rows_per_s']:.2f} rows/s "
                     f"({c['train_tokens_per_s']:.0f} tokens/s) vs plain SFTTrainer {c['train_rows_per_s_baseline']:.2f} "
                     f"rows/s = {c['train_speedup']:.2f}x; largest relative gradient difference "
                     f"{c['max_grad_rel_diff']:.1e}; per-step losses differ by at most {c['max_step_loss_diff']:.1e}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--models", nargs="+", default=[DEFAULT_STUDENT], help="students, each run on every task")
    ap.add_argument("--context-sampling", nargs="+", default=["wave"], choices=["request", "wave"],
                    help="input-writing modes to run (each a whole round): every task with the first, the first task with the others")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-round"))
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-vs-shared training epoch")
    ap.add_argument("--baseline-rows", type=int, default=64, help="rows of the round used for that epoch")
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="train.precision of the round (auto: what the CPU computes natively)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    progress.quiet_libraries()
    command = command_line()
    print(f"command: {command}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    results = []
    plan = [(task, args.context_sampling[0], model) for task in args.tasks for model in args.models]
    plan += [(args.tasks[0], mode, args.models[0]) for mode in args.context_sampling[1:]]  # other modes: at the end
    for task, mode, model in plan:
        r = run_round(task, mode, args.work, model, args.precision)
        if not args.no_baseline and mode == args.context_sampling[0]:
            r["training_comparison"] = training_comparison(Path(r["run_dir"]), args.work / "train" / task.stem / Path(model).stem,
                                                           args.baseline_rows, model)
        results.append(r)
        print(table(r), flush=True)
    top = results[0]
    summary = {"command": command, "tasks": results, "stage_seconds": top["stage_seconds"],
               "inputs_per_s": top["inputs_per_s"], "round_seconds": top["round_seconds"]}
    if c := top.get("training_comparison"):
        summary.update({k: c[k] for k in ("train_rows_per_s", "train_rows_per_s_baseline", "train_speedup",
                                          "max_grad_rel_diff")})
    if args.json:
        print(f"wrote {write_json(args.json, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
