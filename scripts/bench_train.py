"""Shared-prefix training against the plain trl SFTTrainer path, side by side in one run.

Same rows, same settings, same seed: Self-Guide training rows of the shipped demo task (instruction +
all demonstrations + an instance's input -> its gold label), trained on the built-in student
(SmolLM2-135M-Instruct, imported to 16-bit, LoRA r16 on CPU), once with `train.shared_prefix: off`
and once with `auto`. Prints rows/s of each, the speedup, per-step losses and their largest
difference, and the largest relative gradient difference after one step (float32).

Usage: python3 scripts/bench_train.py [--rows 80] [--epochs 2] [--batch-size 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.builtin_students import DEFAULT_STUDENT  # noqa: E402
from selfguide_lite.config import TrainConfig  # noqa: E402
from selfguide_lite.demo import real_demo_task_path  # noqa: E402
from selfguide_lite.models import resolve_student  # noqa: E402
from selfguide_lite.prompts import task_prompt  # noqa: E402
from selfguide_lite.studies import command_line  # noqa: E402
from selfguide_lite.tasks import load_task  # noqa: E402


def rows_for(n: int) -> list[dict[str, str]]:
    task = load_task(real_demo_task_path())
    return [{"prompt": task_prompt(task, inst.input), "completion": inst.outputs[0]} for inst in task.instances[:n]]


def train_losses(rows, source: str, cfg: TrainConfig, work: Path) -> tuple[list[float], float, object]:
    """Per-step losses and seconds of one training run through the product's trainer builder."""
    from transformers import TrainerCallback

    from selfguide_lite.train import build_hf_trainer

    losses: list[float] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer, _ = build_hf_trainer(rows, source, cfg, work)
    trainer.args.logging_steps = 1
    trainer.args.disable_tqdm = True
    trainer.args.save_strategy = "no"
    trainer.add_callback(Record())
    t0 = time.perf_counter()
    trainer.train()
    return losses, time.perf_counter() - t0, trainer


def gradient_check(rows, source: str, cfg: TrainConfig, work: Path) -> dict[str, float]:
    """One micro-batch of the trainer's own collated data: loss and LoRA gradients, plain vs shared."""
    import torch

    from selfguide_lite.prefix_sharing import plain_loss, shared_prefix_length, shared_prefix_loss
    from selfguide_lite.train import build_hf_trainer

    trainer, _ = build_hf_trainer(rows[: cfg.batch_size], source, cfg, work)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    for name, p in model.named_parameters():  # B starts at zero; make the check see every LoRA matrix
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.train()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    p = shared_prefix_length(ids, mask, labels)

    def grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return float(loss), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    l_plain, g_plain = grads(lambda: plain_loss(model, ids, mask, labels))
    l_shared, g_shared = grads(lambda: shared_prefix_loss(model, ids, mask, labels, p))
    rel = max(float((g_plain[n] - g_shared[n]).abs().max() / g_plain[n].abs().max().clamp(min=1e-12)) for n in g_plain)
    return {"shared_prefix_tokens": p, "row_tokens": int(ids.shape[1]), "loss_plain": l_plain,
            "loss_shared": l_shared, "max_grad_rel_diff": rel}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=80)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-train"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    progress.quiet_libraries()
    command = command_line()
    print(f"command: {command}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{__import__('torch').get_num_threads()}")
    source = resolve_student(DEFAULT_STUDENT, print).hf_dir
    rows = rows_for(args.rows)
    # the product's CPU setting (no gradient checkpointing) on both sides, so the ratio is prefix sharing alone
    base = TrainConfig(quantization="none", epochs=args.epochs, batch_size=args.batch_size, gradient_checkpointing=False)
    grad = gradient_check(rows, source, base, args.work / "grad")
    print(f"gradient check on one micro-batch ({grad['shared_prefix_tokens']} of {grad['row_tokens']} tokens shared): "
          f"loss {grad['loss_plain']:.6f} vs {grad['loss_shared']:.6f}, largest relative gradient difference "
          f"{grad['max_grad_rel_diff']:.2e}")
    runs = {}
    for mode in ("off", "auto"):
        cfg = base.model_copy(update={"shared_prefix": mode})
        losses, seconds, trainer = train_losses(rows, source, cfg, args.work / mode)
        runs[mode] = {"losses": losses, "seconds": seconds, "rows_per_s": len(rows) * args.epochs / seconds,
                      "shared_batches": getattr(trainer, "shared_batches", 0)}
        print(f"  shared_prefix {mode:>4}: {len(losses)} steps in {seconds:6.1f}s = {runs[mode]['rows_per_s']:.2f} rows/s"
              f"  (micro-batches with a shared prompt: {runs[mode]['shared_batches']})")
    n = min(len(runs["off"]["losses"]), len(runs["auto"]["losses"]))
    loss_diff = max(abs(a - b) for a, b in zip(runs["off"]["losses"][:n], runs["auto"]["losses"][:n], strict=True))
    speedup = runs["auto"]["rows_per_s"] / runs["off"]["rows_per_s"]
    print(f"speedup {speedup:.2f}x; per-step losses over {n} steps differ by at most {loss_diff:.2e}")
    result = {"command": command, "rows": len(rows), "epochs": args.epochs, "batch_size": args.batch_size,
              "train_rows_per_s": runs["auto"]["rows_per_s"], "train_rows_per_s_baseline": runs["off"]["rows_per_s"],
              "train_speedup": speedup, "max_grad_rel_diff": grad["max_grad_rel_diff"], "max_step_loss_diff": loss_diff,
              "steps": n, "losses_plain": runs["off"]["losses"], "losses_shared": runs["auto"]["losses"], **grad}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
