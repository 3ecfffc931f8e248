"""What the study and benchmark scripts (scripts/) share, so a new study is a short script: the command
and machine every result names, the code it ran, result files found and written, and the number format of
their tables. The runs themselves go through the product's own functions (the loop, the engines)."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .runtime import cpu_flags, cpu_name, named_features
from .store import write_json


def command_line() -> str:
    """This process's command, to be printed and stored with its results."""
    return shlex.join([sys.executable, *sys.argv])


def machine_line() -> str:
    """The CPU a figure comes from: name, cores, the vector features llama.cpp and torch use."""
    return f"{cpu_name()}, {os.cpu_count()} cores, {' '.join(named_features(cpu_flags()))}"


def code_commit(repo: Path) -> str | None:
    """The checkout's short commit (None outside git), with `+` when it has uncommitted changes."""
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+" if dirty else "")


def result_files(paths: Iterable[Path]) -> list[Path]:
    """Result files named on the command line: a file as is, a folder's *.json sorted."""
    out: list[Path] = []
    for p in paths:
        out += sorted(p.glob("*.json")) if p.is_dir() else [p] if p.is_file() else []
    return out


def write_result(path: Path, data: dict[str, Any]) -> None:
    """A study's JSON, written whole (temp file, then rename), so an interrupted study leaves none half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def short_task(name: str) -> str:
    """task738_perspectrum_classification -> task738."""
    return name.split("_")[0]


def fmt(x: float | None, spec: str = ".1f") -> str:
    """A table cell: '-' where there is no number."""
    return "-" if x is None else format(x, spec)


def mean(xs: Iterable[float | None]) -> float | None:
    """The mean of the numbers present (None: none present)."""
    present = [x for x in xs if x is not None]
    return statistics.fmean(present) if present else None
