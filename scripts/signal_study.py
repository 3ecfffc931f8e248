#!/usr/bin/env python3
"""The signal check on the round-0 student of every shared task: what the gate decides before round 1, and
what it costs. Compared afterwards (scripts/signal_study_report.py) with what round 1 gave without the gate in
the committed round studies (issues 28 and 29), test read only for that comparison.

The check is the product's (methods/label_signal.py, default configuration: selfguide.labeler auto, 300
signal instances, level 0.05) with the seed a round 1 uses (run seed 0 + 1). Its rule was committed before
this script ran. Per-task results are cached in WORK (default runs/signal-study/<model>): the script resumes.

Usage: python3 scripts/signal_study.py [--model NAME] [--tasks T.json ...] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from selfguide_lite.builtin_students import DEFAULT_STUDENT
from selfguide_lite.config import Config
from selfguide_lite.engine import open_sampler
from selfguide_lite.methods.label_signal import check_signal
from selfguide_lite.models import sampling_gguf
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.runtime import cpu_flags, cpu_name, named_features
from selfguide_lite.store import read_json, write_json
from selfguide_lite.studies import command_line
from selfguide_lite.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "natural-instructions"
TASKS = ["task1385_anli_r1_entailment", "task1386_anli_r2_entailment", "task190_snli_classification",
         "task199_mnli_classification", "task200_mnli_entailment_classification", "task738_perspectrum_classification",
         "task937_defeasible_nli_social_classification", "task036_qasc_topic_word_to_generate_related_fact",
         "task039_qasc_find_overlapping_words", "task1195_disflqa_disfluent_to_fluent_conversion",
         "task121_zest_text_modification"]
ROUND = 1  # the check before round 1 samples with run seed 0 + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_STUDENT)
    ap.add_argument("--tasks", type=Path, nargs="+", default=[SHARED / f"{t}.json" for t in TASKS])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.work or REPO / "runs" / "signal-study" / Path(str(args.model)).stem.replace(":", "-")
    work.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    per_task = {}
    with open_sampler(sampling_gguf(args.model), cfg.engine) as sampler:
        fmt = PromptFormat.from_info(sampler.info)
        for path in args.tasks:
            cache = work / f"{path.stem}.json"
            if not cache.is_file():
                start = time.perf_counter()
                report = check_signal(load_task(path), sampler, cfg, fmt, seed=cfg.seed + ROUND)
                report["wall_seconds"] = round(time.perf_counter() - start, 1)
                write_json(cache, report)
            per_task[path.stem] = read_json(cache)
            r = per_task[path.stem]
            print(f"{path.stem}: {r['line']} ({r['wall_seconds']} s)", flush=True)
    if args.json:
        write_json(args.json, {"command": command_line(), "student": args.model,
                               "machine": f"{cpu_name()}, {' '.join(named_features(cpu_flags()))}",
                               "per_task": per_task})
    return 0


if __name__ == "__main__":
    sys.exit(main())
