"""The precision study's table (issue 43): per task, the round-1 student trained in float32 and in
bfloat16 from the same synthesized rows, validation (decides) and test (reported), training seconds and
loss, and the committed rule's verdict (docs/results/precision/RULE.md: within 3.6 points on validation).

Usage: python3 scripts/precision_study_report.py [--work runs/precision]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TOLERANCE = 3.6  # the rule committed before the runs


def row(run: Path) -> dict | None:
    manifest = run / "manifest.json"
    if not manifest.is_file():
        return None
    rounds = json.loads(manifest.read_text())["rounds"]
    r1 = rounds.get("1", {})
    info = run / "round-1" / "adapter" / "train_info.json"
    train = json.loads(info.read_text()) if info.is_file() else {}
    metric = r1.get("metrics", {}).get("primary_metric")
    if not metric:
        return None
    return {"validation": r1["metrics"]["validation"][metric], "test": r1["metrics"]["test"][metric],
            "round0_validation": rounds["0"]["metrics"]["validation"][metric], "rows": r1.get("train_size"),
            "train_s": train.get("seconds"), "loss": train.get("train_loss"), "precision": train.get("precision")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/precision"))
    args = ap.parse_args()
    print("| task | rows | validation f32 / bf16 (round 0) | test f32 / bf16 | train s f32 / bf16 | loss f32 / bf16 | rule |")
    print("|---|---|---|---|---|---|---|")
    for task_dir in sorted((args.work / "float32").glob("*")):
        f32, b16 = row(task_dir / "seed-0"), row(args.work / "bfloat16" / task_dir.name / "seed-0")
        if not f32 or not b16:
            print(f"| {task_dir.name} | unfinished |")
            continue
        delta = b16["validation"] - f32["validation"]
        verdict = "keeps quality" if abs(delta) <= TOLERANCE else f"differs by {delta:+.1f}"
        print(f"| {task_dir.name.split('_')[0]} | {f32['rows']} | {f32['validation']:.1f} / {b16['validation']:.1f} "
              f"({f32['round0_validation']:.1f}) | {f32['test']:.1f} / {b16['test']:.1f} | {f32['train_s']} / "
              f"{b16['train_s']} ({f32['train_s'] / b16['train_s']:.2f}x) | {f32['loss']} / {b16['loss']} | {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
