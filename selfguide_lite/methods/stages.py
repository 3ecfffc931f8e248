"""A method's stages with files, in or outside a loop (the synth / instruct commands use them too): one
round's synthesis, journaled so a killed run resumes without decoding a request twice, and the signal check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..engine import open_sampler, sampler_record
from ..engine.journal import JournaledSampler
from ..store import file_hash, value_hash, write_json, write_jsonl
from .base import Method

JOURNAL = "journal.jsonl"  # every request's completions, keyed by request id; replayed on resume, kept as the record


def run_synthesis(cfg: Config, method: Method, student_gguf: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """One round's synthesis with the given student: train.jsonl, dropped.jsonl, stats.json (and the
    method's own files) under out_dir. Completions are journaled, so a killed run resumes without
    decoding a request twice."""
    identity = value_hash([file_hash(student_gguf), method.name, method.settings(),
                           [file_hash(f) for f in method.input_files()], seed])
    with JournaledSampler(open_sampler(student_gguf, cfg.engine), out_dir / JOURNAL, identity) as sampler:
        result = method.synthesize(sampler, seed)
        write_jsonl(out_dir / "dropped.jsonl", result.dropped)
        write_json(out_dir / "stats.json", result.stats)
        for name, records in method.extra_outputs(result).items():
            write_jsonl(out_dir / name, records)
        write_jsonl(out_dir / "train.jsonl", method.training_rows(result))  # written last: marks the stage done
    return {**result.stats, "sampling_seconds": result.seconds, "replayed_requests": sampler.replayed,
            **sampler_record(cfg.engine, sampler)}


def run_signal_check(cfg: Config, method: Method, student_gguf: Path, out_path: Path, seed: int) -> dict[str, Any]:
    """The method's signal check with the given student (methods/label_signal.py), written to out_path."""
    with open_sampler(student_gguf, cfg.engine) as sampler:
        report = method.check_signal(sampler, seed)
    write_json(out_path, report)
    return {"signal": report["signal"], "chosen": report.get("chosen")}
