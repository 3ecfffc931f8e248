"""Progress for long stages: live bars with rate and ETA on a terminal, plain lines in logs, or nothing.

Stages open a bar (`with progress.bar("annotating", total, "samples") as bar`) and advance it. A bar
opened with `samples=True` is also advanced by the sampling engines, one tick per finished sample
(`progress.sample_done()`), so a long `generate` call moves the bar as it goes without the engine
knowing which stage it serves. Three modes, chosen once per process:

- `rich`: rich's live bars (description, bar, done/total, rate, elapsed, ETA, extra fields such as the
  training loss), used when stderr is a terminal;
- `plain`: a line per bar at most every 5 s (with 10 % more done) or 30 s, for logs and CI
  (automatic when stderr is not a terminal);
- `quiet`: bars and per-step lines off; stage summaries and errors still print.

Everything here goes to stderr, so a command's result on stdout (`synth`, `eval` print JSON) stays clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

Mode = Literal["auto", "rich", "plain", "quiet"]
_state: dict[str, Any] = {"mode": None, "stack": [], "live": None}


def set_mode(mode: Mode = "auto") -> None:
    _state["mode"] = ("rich" if sys.stderr.isatty() else "plain") if mode == "auto" else mode


def mode() -> str:
    if _state["mode"] is None:
        set_mode("auto")
    return _state["mode"]


def quiet() -> bool:
    return mode() == "quiet"


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Bar:
    """One stage's counter; rendered by rich, by plain lines, or not at all."""

    def __init__(self, description: str, total: int | None, unit: str, samples: bool = False) -> None:
        self.description, self.total, self.unit, self.samples = description, total, unit, samples
        self.done = 0
        self.fields: dict[str, str] = {}
        self.started = time.monotonic()
        self._last_line = self.started
        self._last_frac = 0.0
        self._rich_id = None

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        live = _state["live"]
        if live is not None and self._rich_id is not None:
            live.update(self._rich_id, advance=n, info=self._info())
        elif mode() == "plain":
            self._maybe_line()

    def set_total(self, total: int) -> None:
        self.total = total
        if _state["live"] is not None and self._rich_id is not None:
            _state["live"].update(self._rich_id, total=total)

    def _info(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.fields.items())

    def _maybe_line(self) -> None:
        now = time.monotonic()
        frac = self.done / self.total if self.total else 0.0
        # A line every 5 s at most, and only with 10 % more done (or every 30 s regardless): a log
        # gets a heartbeat with rate and ETA, not a line per sample. Short stages print only their summary.
        if now - self._last_line < 5 or (frac - self._last_frac < 0.1 and now - self._last_line < 30):
            return
        self._last_line, self._last_frac = now, frac
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        eta = f", eta {_fmt_seconds((self.total - self.done) / rate)}" if self.total and rate > 0 and self.done < self.total else ""
        extra = f"  {self._info()}" if self.fields else ""
        print(f"  {self.description}: {self.done}{of} {self.unit} ({rate:.1f}/s{eta}){extra}", file=sys.stderr, flush=True)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def bar(description: str, total: int | None = None, unit: str = "", samples: bool = False) -> Iterator[Bar]:
    """Open a bar for the block; `samples=True`: the engines' finished samples advance it."""
    b = Bar(description, total, unit, samples)
    _state["stack"].append(b)
    started_live = False
    if mode() == "rich":
        if _state["live"] is None:
            _state["live"] = _new_live()
            _state["live"].start()
            started_live = True
        b._rich_id = _state["live"].add_task(description, total=total, info="", unit=unit)
    try:
        yield b
    finally:
        _state["stack"].remove(b)
        if _state["live"] is not None and b._rich_id is not None:
            _state["live"].remove_task(b._rich_id)
        if started_live:
            _state["live"].stop()
            _state["live"] = None


def summary(line: str) -> None:
    """A stage's one-line result; printed in every mode, quiet included."""
    print(f"  {line}", file=sys.stderr, flush=True)


def sample_done(n: int = 1) -> None:
    """Called by the sampling engines per finished sample: advances the innermost `samples=True` bar."""
    for b in reversed(_state["stack"]):
        if b.samples:
            b.advance(n)
            return


def _new_live():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f}/s" if task.speed else "", style="progress.data.speed")

    from rich.console import Console

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
        Rate(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        transient=True, console=Console(stderr=True),
    )


def quiet_libraries() -> None:
    """Training should print our one-line progress, not progress bars and deprecation notices."""
    import logging
    import warnings

    import datasets
    import transformers

    # bitsandbytes logs a missing optional CPU kernel package at import, though 16-bit LoRA never uses it
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    for module in ("transformers", "trl", "peft", "torch", "bitsandbytes"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
