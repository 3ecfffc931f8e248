"""Where writing inputs spends its time: one Self-Guide synthesis per context setting, timed per call.

On the built-in student and the shipped demo task, writes `--num-inputs` inputs in waves of 32 (one
annotation sample each, so the input stage dominates) with one draw of shown inputs per request (`selfguide.without: [wave_context]`) and
`wave`, side by side in one run, and prints for every sampler call the requests, prompt and
completion tokens and seconds.

Usage: python3 scripts/bench_inputs.py [--num-inputs 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.builtin_students import DEFAULT_STUDENT, builtin_gguf  # noqa: E402
from selfguide_lite.config import EngineConfig, SelfGuideConfig  # noqa: E402
from selfguide_lite.demo import real_demo_task_path  # noqa: E402
from selfguide_lite.engine import open_sampler  # noqa: E402
from selfguide_lite.methods.selfguide import synthesize  # noqa: E402
from selfguide_lite.prompts import PromptFormat  # noqa: E402
from selfguide_lite.studies import command_line  # noqa: E402
from selfguide_lite.tasks import load_task  # noqa: E402


class TimedSampler:
    """Passes requests through and records one row per `generate` call."""

    def __init__(self, inner) -> None:
        self.inner, self.info, self.calls = inner, inner.info, []

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, requests):
        t0 = time.perf_counter()
        out = self.inner.generate(requests)
        self.calls.append({
            "requests": len(requests), "seconds": round(time.perf_counter() - t0, 2),
            "prompt_tokens": round(statistics.mean(self.inner.count_tokens(r.prompt) for r in requests)),
            "completion_tokens": round(statistics.mean(c.n_tokens for o in out for c in o), 1),
            "writes_inputs": "Write one new input" in requests[0].prompt,
        })
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-inputs", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    command = command_line()
    print(f"command: {command}\nmachine: {os.cpu_count()} cores")
    task = load_task(real_demo_task_path())
    result = {"command": command}
    with open_sampler(builtin_gguf(DEFAULT_STUDENT), EngineConfig()) as sampler:
        for mode in ("request", "wave"):
            timed = TimedSampler(sampler)
            cfg = SelfGuideConfig(labeler="vote", num_inputs=args.num_inputs, wave_size=32, num_samples=1,
                                  without=["wave_context"] if mode == "request" else [])
            synthesize(task, timed, cfg, PromptFormat.from_info(sampler.info), seed=1)
            writing = sum(c["seconds"] for c in timed.calls if c["writes_inputs"])
            result[mode] = {"input_seconds": writing, "inputs_per_s": args.num_inputs / writing, "calls": timed.calls}
            print(f"context_sampling {mode}: writing {args.num_inputs} inputs took {writing:.1f}s "
                  f"({args.num_inputs / writing:.2f} inputs/s)")
            for c in timed.calls:
                print(f"  {c['requests']:3d} requests, prompt {c['prompt_tokens']} tokens, completion "
                      f"{c['completion_tokens']} tokens: {c['seconds']}s{'' if c['writes_inputs'] else ' (labelling)'}")
    result["speedup"] = result["wave"]["inputs_per_s"] / result["request"]["inputs_per_s"]
    print(f"wave / request: {result['speedup']:.2f}x inputs/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
