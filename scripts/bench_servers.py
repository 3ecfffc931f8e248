#!/usr/bin/env python3
"""One Self-Guide synthesis (world sentiment task, 100 inputs x 10 samples) sampled by 1 and by 2 local
`selfguide_lite serve` processes (one llama.cpp thread each) through the HTTP sampler, and by the
in-process sequential and batched engines, on the same GGUF and seed: wall time, samples per server,
training rows (all four must agree). On a 2-core box the point is correctness, not speed.

Usage: python3 scripts/bench_servers.py [MODEL.gguf]   (default: runs/demo/round-0/model-q4_k_m.gguf,
written by `python -m selfguide_lite loop`)
"""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selfguide_lite import progress
from selfguide_lite.config import EngineConfig, SelfGuideConfig
from selfguide_lite.engine import open_sampler
from selfguide_lite.engine.http import HttpSampler
from selfguide_lite.methods.selfguide import synthesize
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.tasks import load_task
from selfguide_lite.toy_models.world import world_task_path

progress.set_mode("quiet")
gguf = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo/round-0/model-q4_k_m.gguf")
if not gguf.is_file():
    sys.exit(f"error: no GGUF at {gguf}: run `python -m selfguide_lite loop` first or pass one")
task = load_task(world_task_path())
cfg = SelfGuideConfig(labeler="vote", num_inputs=100, wave_size=50, num_samples=10)


def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ports = [port(), port()]
procs = [subprocess.Popen([sys.executable, "-m", "selfguide_lite", "serve", str(gguf), "--port", str(p), "--threads", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]


def timed_synthesis(sampler) -> tuple[float, int]:
    t = time.perf_counter()
    result = synthesize(task, sampler, cfg, PromptFormat.from_info(sampler.info), seed=1)
    return time.perf_counter() - t, len(result.train)


try:
    for p in ports:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{p}/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
    res = {}
    for name, eps in (("1 server", ports[:1]), ("2 servers", ports)):
        with HttpSampler([f"http://127.0.0.1:{p}" for p in eps], tokenizer_gguf=gguf) as s:
            dt, rows = timed_synthesis(s)
            res[name] = (dt, sum(s.served_by.values()), rows, dict(s.served_by))
    for backend in ("sequential", "batched"):
        with open_sampler(gguf, EngineConfig(backend=backend, n_ctx=2048)) as s:
            dt, rows = timed_synthesis(s)
            res[f"local {backend}"] = (dt, None, rows, None)
    for k, (dt, n, rows, by) in res.items():
        print(f"{k:>18}: {dt:6.1f}s  samples {n}  train rows {rows}  {by or ''}")
finally:
    for pr in procs:
        pr.terminate()
        pr.wait()
