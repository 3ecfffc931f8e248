"""Benchmark: the vote's samples with and without twin sharing in the batched engine, in one run.

Twins are samples of one request whose tokens so far are equal: the engine decodes one of them and the
others draw their next token from its logits row with their own seeded chains (`_Seq.twins` in
`selfguide_lite/engine/batched.py`). The vote samples 10 answers per input at temperature 0.2, so most
samples share most of their tokens. This labels a task's held-out inputs (stand-ins for written inputs:
same task, same lengths) the way a round does, side by side: sharing off at 16 slots (the engine before
it), sharing on at 16 and 64 slots, interleaved and repeated, and reports seconds, tokens decoded and how
many samples equal the first configuration's (sharing changes no sample; another slot count can change a
near-tied draw through the batch's floating-point sums).

    python3 scripts/bench_twins.py [--task T.json] [--inputs 48] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from selfguide_lite.config import Config
from selfguide_lite.engine.batched import BatchedSampler
from selfguide_lite.methods.labellers import vote_requests
from selfguide_lite.models import resolve_student
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.studies import machine_line
from selfguide_lite.tasks import load_task

DEFAULT_TASK = "../shared/data/natural-instructions/task1195_disflqa_disfluent_to_fluent_conversion.json"
CONFIGS = [(False, 16), (True, 16), (True, 64), (True, 64), (True, 16), (False, 16)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default=DEFAULT_TASK)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--inputs", type=int, default=48, help="held-out inputs labelled (after the first 400)")
    ap.add_argument("--json")
    args = ap.parse_args()
    task = load_task(args.task)
    cfg = Config().selfguide
    gguf = resolve_student(args.model).gguf
    inputs = [i.input for i in task.instances[400:400 + args.inputs]]
    rows, first = [], None
    for share, n_parallel in CONFIGS:
        with BatchedSampler(gguf, n_ctx=4096, n_parallel=n_parallel) as engine:
            engine.share_twins = share
            fmt = PromptFormat(engine.info.chat_template, None, None)
            requests = vote_requests(task, engine, cfg, fmt, inputs, seed=0)
            start = time.perf_counter()
            outputs = engine.generate(requests)
            seconds = time.perf_counter() - start
            stats = engine.last_stats
        texts = [c.text for r in outputs for c in r]
        first = first or texts
        row = {"share_twins": share, "n_parallel": n_parallel, "seconds": round(seconds, 1),
               "tokens_sampled": sum(c.n_tokens for r in outputs for c in r),
               "tokens_not_decoded": stats["twin_tokens"], "decode_calls": stats["decode_calls"],
               "samples": len(texts), "samples_equal_to_first_config": sum(a == b for a, b in zip(first, texts, strict=True))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_line(),
              "python": platform.python_version(),
              "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
              "task": task.name, "model": args.model, "inputs": len(inputs), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
