"""Filters: each small, each returning why it dropped something (or None to keep it).

Self-Guide's input filters run in SPEC 2.2's order: empty, length window, noise, duplicate.
The noise patterns are configurable; the defaults catch chat filler and prompt-format markers
leaking into generated text.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_NOISE_PATTERNS: tuple[str, ...] = (
    r"\b(?:sure|certainly|of course)[,!.]? here",
    r"\bhere(?: is|'s| are) (?:a|an|one|some) (?:new |possible |sample |example )*(?:inputs?|examples?)\b",
    r"\bas an ai\b",
    r"\bas a language model\b",
    r"\[/?(?:input|output)\]",
    r"\b(?:input|output)\s*:",
    r"<\|[a-z_]+\|>",
)


def normalize_ws(text: str) -> str:
    """Whitespace- and case-insensitive key used for exact-duplicate checks."""
    return " ".join(text.split()).lower()


@dataclass(frozen=True)
class LengthWindow:
    """Keep texts whose character length lies within mean ± 2·std of reference lengths.

    The std is floored at 25% of the mean so that two or three demos don't give an empty window.
    """

    low: float
    high: float

    @classmethod
    def from_examples(cls, texts: Sequence[str], k: float = 2.0, std_floor: float = 0.25) -> LengthWindow:
        lengths = [len(t.strip()) for t in texts] or [0]
        mean = statistics.fmean(lengths)
        std = statistics.pstdev(lengths) if len(lengths) > 1 else 0.0
        std = max(std, std_floor * mean)
        return cls(low=max(0.0, mean - k * std), high=mean + k * std)

    def check(self, text: str) -> str | None:
        n = len(text.strip())
        if n < self.low:
            return f"too short ({n} < {self.low:.0f} chars)"
        if n > self.high:
            return f"too long ({n} > {self.high:.0f} chars)"
        return None


@dataclass
class NoiseFilter:
    patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS
    _compiled: list[re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._compiled = [re.compile(p, re.IGNORECASE) for p in self.patterns]

    def check(self, text: str) -> str | None:
        for rx in self._compiled:
            if m := rx.search(text):
                return f"noise: {m.group(0)!r}"
        return None


class DuplicateFilter:
    """Exact duplicates after whitespace and case normalisation, against demos and accepted texts."""

    def __init__(self, initial: Iterable[str] = ()) -> None:
        self._seen = {normalize_ws(t) for t in initial}

    def check(self, text: str) -> str | None:
        return "duplicate" if normalize_ws(text) in self._seen else None

    def add(self, text: str) -> None:
        self._seen.add(normalize_ws(text))


@dataclass
class InputFilters:
    """Self-Guide input filters in order; `check` returns (stage, reason) for the first that drops."""

    noise: NoiseFilter
    duplicates: DuplicateFilter
    length: LengthWindow | None = None

    def check(self, text: str) -> tuple[str, str] | None:
        if not text.strip():
            return ("empty", "empty input")
        if self.length is not None and (why := self.length.check(text)):
            return ("length", why)
        if why := self.noise.check(text):
            return ("noise", why)
        if why := self.duplicates.check(text):
            return ("duplicate", why)
        return None

    def accept(self, text: str) -> None:
        self.duplicates.add(text)
