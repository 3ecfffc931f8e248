#!/usr/bin/env python3
"""Exact early stopping of annotation samples, measured on a whole default round's vote: on and off.

Writes a task's inputs once (default Self-Guide settings, built-in student, seed 0), then labels the same
accepted inputs twice in one run: as the product does (each sample stops once `filters.AnswerRunOn` says
the vote must reject it) and with early stopping switched off (this script replaces
`AnswerRunOn.for_vote` by "no rule"; the product has no such switch). Reports tokens and seconds of each
annotation and whether votes, vote counts and training rows are identical, and how many samples each
vote rejected (their reasons may differ: a stopped sample is rejected for the first certain reason, a
fully decoded one for the first reason the vote checks).

Usage: python3 scripts/bench_early_stop.py [--task T.json] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]

from selfguide_lite import progress  # noqa: E402
from selfguide_lite.builtin_students import DEFAULT_STUDENT, builtin_gguf  # noqa: E402
from selfguide_lite.config import EngineConfig, SelfGuideConfig  # noqa: E402
from selfguide_lite.engine import open_sampler  # noqa: E402
from selfguide_lite.filters import AnswerRunOn  # noqa: E402
from selfguide_lite.methods.selfguide import input_filters, input_lead, label_inputs, write_inputs  # noqa: E402
from selfguide_lite.prompts import PromptFormat  # noqa: E402
from selfguide_lite.store import write_json  # noqa: E402
from selfguide_lite.studies import command_line, machine_line  # noqa: E402
from selfguide_lite.tasks import load_task  # noqa: E402

DEFAULT_TASK = REPO.parent / "shared" / "data" / "natural-instructions" / "task1195_disflqa_disfluent_to_fluent_conversion.json"


class RecordingSampler:
    """Passes requests through and keeps every completion's text, to compare the two sides sample by sample."""

    def __init__(self, inner) -> None:
        self.inner, self.info, self.texts = inner, inner.info, []

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, requests):
        out = self.inner.generate(requests)
        self.texts += [[c.text for c in outs] for outs in out]
        return out


def compare_samples(stopped: list[list[str]], full: list[list[str]]) -> dict:
    """Per sample: equal, stopped early (the stopped text is a prefix of the full one), stopped inside a
    stop string, or diverged (the texts differ before any stop: in the batched engine the other
    sequences in a decode change the floating-point sums, which can reorder near-tied tokens)."""
    kinds = {"equal": 0, "stopped_early": 0, "stopped_inside_a_stop_string": 0, "diverged": 0}
    diverged = []
    for n, (a_outs, b_outs) in enumerate(zip(stopped, full, strict=True)):
        for k, (a, b) in enumerate(zip(a_outs, b_outs, strict=True)):
            # a stop string is cut from a fully decoded text; a sample stopped while a stop string was
            # half written keeps that half, so it extends the full text instead
            kind = ("equal" if a == b else "stopped_early" if b.startswith(a)
                    else "stopped_inside_a_stop_string" if a.startswith(b) else "diverged")
            kinds[kind] += 1
            if kind == "diverged" and len(diverged) < 20:
                diverged.append({"input": n, "sample": k, "early_stop": a, "full_decoding": b})
    return {"samples": kinds, "diverged_examples": diverged}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", type=Path, default=DEFAULT_TASK)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    progress.set_mode("quiet")
    command = command_line()
    machine = machine_line()
    print(f"command: {command}\nmachine: {machine}", flush=True)
    task = load_task(args.task)
    cfg = SelfGuideConfig(labeler="vote")
    result: dict = {"command": command, "machine": machine, "task": task.name}
    with open_sampler(builtin_gguf(DEFAULT_STUDENT), EngineConfig()) as sampler:
        fmt = PromptFormat.from_info(sampler.info)
        written = write_inputs(task, sampler, cfg, fmt, args.seed, input_filters(task, cfg), input_lead(task, cfg))
        print(f"{len(written.accepted)} inputs accepted; labelling them twice", flush=True)
        sides, texts = {}, {}
        for name in ("early_stop", "full_decoding"):
            patch = (mock.patch.object(AnswerRunOn, "for_vote", staticmethod(lambda *a, **k: None))
                     if name == "full_decoding" else contextlib.nullcontext())
            recording = RecordingSampler(sampler)
            with patch:
                labelled = label_inputs(task, recording, cfg, fmt, args.seed, written.accepted)
            sides[name] = labelled
            texts[name] = recording.texts
            print(f"  {name}: {labelled.tokens} tokens, {labelled.seconds:.0f} s, {len(labelled.annotated)} rows, "
                  f"{sum(labelled.sample_rejects.values())} samples rejected", flush=True)
    on, off = sides["early_stop"], sides["full_decoding"]

    def rows(labelled):
        return [(r["input"], r["output"], r["votes"]) for r in labelled.annotated]

    result.update({
        "inputs": len(written.accepted),
        "early_stop": {"tokens": on.tokens, "seconds": round(on.seconds, 1), "rows": len(on.annotated),
                       "samples_rejected": dict(on.sample_rejects)},
        "full_decoding": {"tokens": off.tokens, "seconds": round(off.seconds, 1), "rows": len(off.annotated),
                          "samples_rejected": dict(off.sample_rejects)},
        "token_cut": round(1 - on.tokens / off.tokens, 4) if off.tokens else None,
        "identical_rows_and_votes": rows(on) == rows(off),
        "identical_vote_drops": dict(on.drops) == dict(off.drops),
        "same_number_of_rejected_samples": sum(on.sample_rejects.values()) == sum(off.sample_rejects.values()),
        **compare_samples(texts["early_stop"], texts["full_decoding"]),
    })
    print(f"tokens {off.tokens} -> {on.tokens} ({100 * (result['token_cut'] or 0):.1f} % fewer); seconds "
          f"{off.seconds:.0f} -> {on.seconds:.0f}; rows and votes identical: {result['identical_rows_and_votes']}; "
          f"vote drops identical: {result['identical_vote_drops']}; rejected samples equal in number: "
          f"{result['same_number_of_rejected_samples']}; samples {result['samples']}")
    if args.json:
        write_json(args.json, result)
    return 0 if result["identical_rows_and_votes"] else 1


if __name__ == "__main__":
    sys.exit(main())
