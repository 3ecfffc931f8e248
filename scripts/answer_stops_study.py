#!/usr/bin/env python3
"""Where does a student's answer end? Round-0 greedy answers on every shared task, cut by each
candidate stop rule, scored on validation (decides) and test (reported only).

Greedy decoding is deterministic, so cutting one set of answers at a stop is exactly what decoding
with that stop gives: the student is decoded once per task with the least aggressive candidate's
stops (the field stops), and the other candidates are cuts of those answers.

Candidates (a stop ends the answer wherever it occurs, as the engines apply stops; answers that begin
with a line break, which the line rule would cut to nothing, are counted as `leading_break`):
- none:   no stops for a chat student (the behaviour before this study). Not decoded here: its scores
          are the effect study's round 0 (docs/results/effect-study-round2-seed*.json), a generation
          task at the full token cap takes about 10 minutes per 200 answers on 2 cores;
- fields: a new `Input:` / `Output:` field ends the answer (what the plain format always had);
- blank:  fields, and a blank line when every demonstration answer is one line;
- line:   fields, and the first line break when every demonstration answer is one line.

The rule that picks the default, committed with this script before it was run:
  among fields, blank, line, take the candidate with the highest mean round-0 validation score over
  the tasks; a more aggressive candidate (blank over fields, line over blank) replaces a less
  aggressive one only if it raises that mean by at least 0.5 points and lowers no task's validation
  score by more than 2 points. Test scores are printed beside, never used.

Usage: python3 scripts/answer_stops_study.py [--tasks T.json ...] [--work runs/answer-stops] [--json FILE]
Raw answers are cached per task in WORK (the script resumes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from selfguide_lite import progress
from selfguide_lite.builtin_students import DEFAULT_STUDENT, builtin_gguf
from selfguide_lite.config import EngineConfig, EvalConfig
from selfguide_lite.engine import open_sampler
from selfguide_lite.engine.sampler import Request, SamplingParams, truncate_at_stop
from selfguide_lite.evaluate import answer_cap, primary_metric, score_rows, split_instances
from selfguide_lite.prompts import FIELD_STOPS, PromptFormat, task_prompt
from selfguide_lite.store import read_json, write_json
from selfguide_lite.studies import command_line
from selfguide_lite.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
SHARED_TASKS = REPO.parent / "shared" / "data" / "natural-instructions"
CANDIDATES = ("fields", "blank", "line")


def one_line_answers(task) -> bool:
    return all("\n" not in d.output.strip() for d in task.demos)


def cut(text: str, stops: tuple[str, ...]) -> str:
    """`text` cut at the earliest stop, as the engines cut it."""
    return truncate_at_stop(text, stops)[0]


def candidate_stops(name: str, task) -> tuple[str, ...]:
    extra = {"fields": (), "blank": ("\n\n",), "line": ("\n",)}[name]
    return FIELD_STOPS + (extra if one_line_answers(task) else ())


def decode(task_path: Path, work: Path, sampler, fmt: PromptFormat) -> dict:
    out = work / f"{task_path.stem}.json"
    if out.is_file():
        return read_json(out)
    task = load_task(task_path)
    cfg = EvalConfig()
    parts = split_instances(task, cfg)
    cap = answer_cap(task, sampler, cfg)
    params = SamplingParams(temperature=0.0, max_tokens=cap, stop=FIELD_STOPS)
    rows = [(name, inst) for name in ("validation", "test") for inst in parts[name]]
    t0 = time.perf_counter()
    outs = sampler.generate([Request(fmt.render(task_prompt(task, inst.input)), params) for _, inst in rows])
    record = {"task": task.name, "cap": cap, "seconds": round(time.perf_counter() - t0, 1),
              "answers": [{"split": name, "id": inst.id, "text": o[0].text, "tokens": o[0].n_tokens,
                           "finish": o[0].finish_reason} for (name, inst), o in zip(rows, outs, strict=True)]}
    write_json(out, record)
    return record


def score(task, record: dict, stops: tuple[str, ...]) -> dict[str, float]:
    result = {}
    for split in ("validation", "test"):
        rows = [{"id": a["id"], "prediction": cut(a["text"], stops).strip()} for a in record["answers"]
                if a["split"] == split]
        result[split] = score_rows(task, rows)[primary_metric(task)] if rows else None
    return result


def choose(per_task: dict[str, dict[str, dict]]) -> tuple[str, list[str]]:
    """The committed rule (module docstring); returns the choice and the reasoning lines."""
    means = {c: statistics.fmean(t[c]["validation"] for t in per_task.values()) for c in CANDIDATES}
    chosen, said = "fields", []
    for nxt in CANDIDATES[1:]:
        gain = means[nxt] - means[chosen]
        worst = min(t[nxt]["validation"] - t[chosen]["validation"] for t in per_task.values())
        ok = gain >= 0.5 and worst >= -2.0
        said.append(f"{nxt} over {chosen}: mean validation {gain:+.2f}, worst task {worst:+.2f} -> "
                    f"{'taken' if ok else 'not taken'}")
        if ok:
            chosen = nxt
    return chosen, said


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, nargs="+", default=sorted(SHARED_TASKS.glob("task*.json")))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "answer-stops")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    args.work.mkdir(parents=True, exist_ok=True)
    command = command_line()
    per_task: dict[str, dict] = {}
    with open_sampler(builtin_gguf(DEFAULT_STUDENT), EngineConfig()) as sampler:
        fmt = PromptFormat.from_info(sampler.info)
        for path in args.tasks:
            record = decode(path, args.work, sampler, fmt)
            task = load_task(path)
            answers = record["answers"]
            per_task[task.name] = {
                "type": task.type, "one_line_answers": one_line_answers(task), "decode_seconds": record["seconds"],
                "answer_tokens": sum(a["tokens"] for a in answers), "cap": record["cap"],
                "at_cap": sum(a["finish"] == "length" for a in answers),
                "leading_break": sum("\n" in a["text"][:len(a["text"]) - len(a["text"].lstrip())] for a in answers),
                **{c: score(task, record, candidate_stops(c, task)) for c in CANDIDATES},
            }
            t = per_task[task.name]
            print(f"{task.name[:40]:40} {task.type[:5]} decode {t['decode_seconds']:6.1f}s "
                  + " ".join(f"{c} {t[c]['validation']:5.1f}/{t[c]['test'] if t[c]['test'] is not None else float('nan'):5.1f}"
                             for c in CANDIDATES), flush=True)
    chosen, said = choose(per_task)
    for line in said:
        print(line)
    print(f"chosen: {chosen}")
    result = {"command": command, "per_task": per_task, "chosen": chosen, "reasoning": said,
              "means": {c: {s: statistics.fmean(t[c][s] for t in per_task.values() if t[c][s] is not None)
                            for s in ("validation", "test")} for c in CANDIDATES}}
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
