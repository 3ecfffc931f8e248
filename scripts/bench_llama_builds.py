#!/usr/bin/env python3
"""Benchmark: what a llama.cpp build and its load setting cost, side by side in one run.

For each build (the installed one, plus any unpacked wheel given with --build NAME=DIR, e.g. a portable
AVX2-only build) and each setting of llama.cpp's extra buffer types (on: AMX / CPU repacking kernels
where the build and CPU have them; off: plain kernels, what selfguide_lite.runtime chooses on AMX
machines), it runs `scripts/bench_sampling.py --profile` in a child process (the build is picked by
PYTHONPATH) and reports the batched engine's tokens/s at 16 sequences and the bare llama_decode
ceiling. Runs are interleaved over --repeats rounds and the best of each is kept, so a noisy
neighbour hurts every configuration alike.

Build an alternative wheel without touching the installed one (pip's wheel cache ignores CMAKE_ARGS,
hence --no-cache-dir):
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \\
    pip wheel --no-cache-dir --no-deps -w /tmp/wheels-avx2 llama-cpp-python==0.3.36
  python -m zipfile -e /tmp/wheels-avx2/llama_cpp_python-0.3.36-*.whl /tmp/llama-avx2

Usage: python3 scripts/bench_llama_builds.py [--build avx2=/tmp/llama-avx2] [--model X.gguf ...]
       [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from selfguide_lite.studies import command_line

REPO = Path(__file__).resolve().parents[1]


def run_one(build_dir: Path | None, extra: str, model: Path | None, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*([str(build_dir)] if build_dir else []), str(REPO)])}
    cmd = [sys.executable, str(REPO / "scripts" / "bench_sampling.py"), "--profile", "--extra-bufts", extra,
           "--json", str(out)] + (["--model", str(model)] if model else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {res.returncode}: {tail}"}
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                    help="an unpacked llama-cpp-python wheel (a directory holding llama_cpp/) to compare")
    ap.add_argument("--model", action="append", type=Path, default=[],
                    help="GGUF files to run (default: bench_sampling's SmolLM-shaped q4_k_m model)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    builds: list[tuple[str, Path | None]] = [("installed", None)]
    for spec in args.build:
        name, _, where = spec.partition("=")
        if not (Path(where) / "llama_cpp" / "__init__.py").is_file():
            print(f"error: --build {spec}: {where} holds no llama_cpp package", file=sys.stderr)
            return 2
        builds.append((name, Path(where)))
    models = args.model or [None]
    print(f"command: {command_line()}")
    configs = [(b, d, e, m) for m in models for b, d in builds for e in ("on", "off")]
    best: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (name, where, extra, model) in enumerate(configs):
                got = run_one(where, extra, model, Path(tmp) / f"{r}-{i}.json")
                key = (name, extra, str(model or "bench q4_k_m"))
                rate = got.get("engine_tok_s", {}).get("16", 0.0)
                print(f"  round {r + 1}: {key[2]:<40} {name:<10} extra bufts {extra:<3} "
                      + (got["error"] if "error" in got else f"{rate:7.1f} tok/s (engine, 16 seq)"), flush=True)
                if "error" in got:
                    best.setdefault(key, got)
                elif rate > best.get(key, {}).get("engine_tok_s", {}).get("16", -1.0):
                    best[key] = got
    print(f"\nbest of {args.repeats}, engine at 16 sequences and bare llama_decode (d, 16):")
    rows = []
    for (name, extra, model), got in best.items():
        ref = best.get(("installed", "on", model), {}).get("engine_tok_s", {}).get("16")
        e16 = got.get("engine_tok_s", {}).get("16")
        d16 = got.get("decode_ceiling_tok_s", {}).get("16")
        build = got.get("machine", {}).get("llama_cpp_build", "")
        rows.append({"model": model, "build": name, "extra_bufts": extra, "engine_tok_s_16": e16,
                     "decode_ceiling_tok_s_16": d16, "vs_installed_on": e16 / ref if e16 and ref else None,
                     "llama_cpp_build": build, "error": got.get("error")})
        print(f"  {Path(model).name:<36} {name:<10} {extra:<4} "
              + (f"{e16:7.1f} tok/s  ceiling {d16:7.1f}  x{e16 / ref:.2f} of installed+on" if e16 and ref
                 else str(got.get("error"))))
    machine = next((g["machine"] for g in best.values() if "machine" in g), {})
    print(f"machine: {machine.get('cpu')}; features {' '.join(machine.get('cpu_features', []))}")
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "machine": machine,
                                         "repeats": args.repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
