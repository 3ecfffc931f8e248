"""Training precision side by side in one run: float32 against bfloat16 (the product's CPU form:
autocast over float32 weights), same rows, same settings, same seed, one after the other.

Rows: Self-Guide training rows of the shipped demo task (instruction + demonstrations + an instance's
input -> its gold label), as scripts/bench_train.py builds them. Prints seconds per step of each, the
speedup, and the per-step loss curves and their largest difference; names the CPU and its bfloat16 flags.

Usage: python3 scripts/bench_precision.py [--model smollm2-135m-instruct] [--rows 64] [--epochs 1]
       [--batch-size 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import rows_for, train_losses  # noqa: E402

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.builtin_students import DEFAULT_STUDENT  # noqa: E402
from selfguide_lite.config import TrainConfig  # noqa: E402
from selfguide_lite.models import resolve_student  # noqa: E402
from selfguide_lite.runtime import cpu_flags, cpu_name  # noqa: E402
from selfguide_lite.studies import command_line  # noqa: E402
from selfguide_lite.train import NATIVE_BF16_FLAGS, training_precision  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_STUDENT)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-precision"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    progress.quiet_libraries()
    command = command_line()
    flags = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    auto = training_precision("auto", False)
    print(f"command: {command}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; native bfloat16 flags: {flags or 'none'}; auto -> {auto[0]}")
    source = resolve_student(args.model, print).hf_dir
    rows = rows_for(args.rows)
    base = TrainConfig(quantization="none", epochs=args.epochs, batch_size=args.batch_size)
    runs = {}
    for precision in ("float32", "bfloat16"):
        cfg = base.model_copy(update={"precision": precision})
        losses, seconds, trainer = train_losses(rows, source, cfg, args.work / precision)
        steps = max(1, trainer.state.global_step)
        runs[precision] = {"losses": losses, "seconds": round(seconds, 1), "steps": steps,
                           "s_per_step": round(seconds / steps, 2)}
        print(f"  {precision:>8}: {steps} steps in {seconds:6.1f}s = {seconds / steps:.2f} s/step, "
              f"final loss {losses[-1] if losses else float('nan'):.4f}")
    f32, b16 = runs["float32"], runs["bfloat16"]
    n = min(len(f32["losses"]), len(b16["losses"]))
    diff = max((abs(a - b) for a, b in zip(f32["losses"][:n], b16["losses"][:n], strict=True)), default=float("nan"))
    speedup = f32["seconds"] / b16["seconds"]
    print(f"bfloat16 speedup {speedup:.2f}x; per-step losses over {n} steps differ by at most {diff:.4f}")
    result = {"command": command, "cpu": cpu_name(), "native_bf16_flags": flags, "auto": auto[0], "model": args.model,
              "rows": len(rows), "epochs": args.epochs, "batch_size": args.batch_size, "runs": runs,
              "speedup": round(speedup, 2), "max_step_loss_diff": diff}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
