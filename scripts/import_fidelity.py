#!/usr/bin/env python3
"""Import fidelity of GGUF students: each model imported afresh into a temporary cache, its record printed
(token ids against llama.cpp on the probes, top-1 agreement and largest logit gap of the 16-bit
checkpoint against llama.cpp on the source file, seconds).

Usage: python3 scripts/import_fidelity.py [--models smollm2-135m-instruct gemma3-270m FILE.gguf ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from selfguide_lite.errors import UserError
from selfguide_lite.models import fidelity_line, import_gguf, sampling_gguf
from selfguide_lite.store import write_json
from selfguide_lite.studies import command_line, machine_line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    machine = machine_line()
    out = {"command": command_line(), "machine": machine, "models": {}}
    print(f"command: {out['command']}\nmachine: {machine}", flush=True)
    for name in args.models:
        try:
            path = sampling_gguf(name)
            with tempfile.TemporaryDirectory() as cache:
                _, record = import_gguf(path, cache=Path(cache))
        except UserError as exc:
            print(f"{name}: error: {exc}", flush=True)
            out["models"][name] = {"error": str(exc)}
            continue
        out["models"][name] = {k: record[k] for k in ("architecture", "quantization", "parameters", "seconds", "fidelity")}
        print(f"{name} ({record['architecture']}, {record['parameters'] / 1e6:.0f}M, imported in {record['seconds']} s): "
              + fidelity_line(path.name, record["fidelity"]), flush=True)
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
