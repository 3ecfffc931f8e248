"""Filters: each small, each returning why it dropped something (or None to keep it).

A method strings its filters together as an ordered list of (stage, filter) (`FilterChain`): Self-Guide's
input filters in `methods/selfguide.py`, Self-Instruct's in `methods/selfinstruct_filters.py`. The noise patterns are configurable; the defaults catch chat filler and prompt-format markers
leaking into generated text.
"""

from __future__ import annotations

import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import regex

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


# A field marker: a word (optionally with a number, "Sentence 1") followed by a colon, at the start of
# the text or after whitespace: "claim:", "Premise:", "Sentence1:", "Choices:".
_FIELD = re.compile(r"(?:^|(?<=\s))([A-Za-z]+(?: ?\d+)?):")


def field_markers(text: str) -> list[str]:
    """The field markers of a text, in order, as written ("Sentence 1:", "perspective:")."""
    return [m.group(0) for m in _FIELD.finditer(text)]


@dataclass(frozen=True)
class FieldFilter:
    """Inputs must have the fields every example input has: the markers present (case-insensitively)
    in all examples, none missing and none repeated more often than in any example. A chat student
    asked for an input often answers as an assistant ("Sure, please provide the claim...") or writes
    half an input ("The claim: ..." without the perspective); neither is an input of the task."""

    fields: tuple[str, ...]  # lower-cased markers, in the first example's order
    most: dict[str, int]  # the largest count of each in one example

    @classmethod
    def from_examples(cls, texts: Sequence[str]) -> FieldFilter:
        counts = [Counter(m.lower() for m in field_markers(t)) for t in texts]
        if not counts:
            return cls((), {})
        common = set.intersection(*(set(c) for c in counts))
        order = [m.lower() for m in field_markers(texts[0])]
        fields = tuple(dict.fromkeys(m for m in order if m in common))
        return cls(fields, {f: max(c[f] for c in counts) for f in fields})

    def check(self, text: str) -> str | None:
        found = Counter(m.lower() for m in field_markers(text))
        for f in self.fields:
            if not found[f]:
                return f"missing field {f!r}"
            if found[f] > self.most[f]:
                return f"field {f!r} repeated ({found[f]} times)"
        return None

    def lead(self, texts: Sequence[str]) -> str:
        """The field marker that more than half of the example inputs start with, as the first of them
        writes it ("Premise:"), or "". A majority, not all: Natural Instructions examples carry typos
        (task200 opens three inputs with "Statement:" and one with "Statment:"), and without a lead a chat
        student asked for an input answered with a label instead (311 of 400 candidates were "1" or "3")."""
        starts: list[str] = []
        for text in texts:
            markers = field_markers(text.lstrip())
            starts.append(markers[0] if markers and text.lstrip().startswith(markers[0]) else "")
        counts = Counter(m.lower() for m in starts if m)
        if not counts:
            return ""
        top, n = counts.most_common(1)[0]
        return next(m for m in starts if m.lower() == top) if 2 * n > len(texts) else ""


# "The answer is:", "Output:", "Final answer -": a chat student's lead-in before the answer itself.
_PREAMBLE = re.compile(r"^\s*(?:the\s+)?(?:(?:final|correct)\s+)?(?:answer|output|response|result)(?:\s+is)?\s*[:\-]\s*",
                       re.IGNORECASE)


# The most whitespace-separated words a lead-in removed by AnswerChecks.clean can span: "the correct answer
# is :" has five (the colon may stand alone). Once a sixth word has begun, no later text can change which
# lead-in the pattern removes (tests/test_filters.py checks this against _PREAMBLE).
PREAMBLE_MAX_WORDS = 5
# The same pattern for the `regex` package, whose partial matching says whether a text could still grow
# into a lead-in (the standard `re` cannot say).
_PREAMBLE_PARTIAL = regex.compile(_PREAMBLE.pattern, regex.IGNORECASE)
_LAST_WORD = re.compile(r"\S*\Z")


def _norm(text: str) -> str:
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


@dataclass(frozen=True)
class AnswerChecks:
    """Generation answers that cannot be this input's answer, judged against the demonstrations.

    - a lead-in ("The answer is:") is removed before anything else looks at the answer;
    - an answer containing a demonstration's answer that the input does not contain is a copy of
      the example, not an answer (a small student does this often, and training on it teaches copying);
    - an answer with more lines than any demonstration's answer ran on past its end."""

    demo_answers: tuple[str, ...]  # normalised, non-empty
    max_lines: int

    @classmethod
    def from_examples(cls, outputs: Sequence[str]) -> AnswerChecks:
        answers = tuple(dict.fromkeys(n for o in outputs if (n := _norm(o))))
        lines = max((len([ln for ln in o.strip().splitlines() if ln.strip()]) for o in outputs), default=1)
        return cls(answers, max(1, lines))

    @staticmethod
    def clean(text: str) -> str:
        return _PREAMBLE.sub("", text.strip(), count=1).strip()

    def check(self, answer: str, input_text: str) -> tuple[str, str] | None:
        """(reason key, detail) when the answer is rejected."""
        if len([ln for ln in answer.splitlines() if ln.strip()]) > self.max_lines:
            return ("extra lines", f"more than {self.max_lines} line(s)")
        said, given = _norm(answer), _norm(input_text)
        for demo in self.demo_answers:
            if demo in said and demo not in given:
                return ("demo copy", f"repeats the example answer {demo!r}")
        return None


@dataclass(frozen=True)
class AnswerRunOn:
    """Where a generation sample may stop decoding because the vote rejects it whatever comes next: its
    answer (lead-in removed when `lead_in`) is already longer than `max_chars`, has more lines than
    `max_lines`, or contains one of `banned` (normalised demonstration answers this input does not contain).

    Exact: `exceeded` judges only what later tokens cannot take back, so a sample it stops would have been
    rejected anyway, and every vote, kept answer and training row is what full decoding gives. The batched
    engine calls it after each token (SamplingParams.run_on)."""

    max_chars: int | None = None
    max_lines: int | None = None
    lead_in: bool = False
    banned: tuple[str, ...] = ()

    @classmethod
    def for_vote(cls, length: LengthWindow | None, checks: AnswerChecks | None, input_text: str) -> AnswerRunOn | None:
        """The bound of the generation vote's filters for one input; None when no filter can reject a run-on."""
        if length is None and checks is None:
            return None
        given = _norm(input_text)
        return cls(max_chars=math.floor(length.high) if length is not None else None,
                   max_lines=checks.max_lines if checks is not None else None,
                   lead_in=checks is not None,
                   banned=tuple(d for d in checks.demo_answers if d not in given) if checks is not None else ())

    def answer_so_far(self, text: str) -> str | None:
        """The vote's answer for `text` as far as it is settled; None while a lead-in may still be forming."""
        body = text.strip()
        if not self.lead_in:
            return body
        if len(body.split()) <= PREAMBLE_MAX_WORDS and _PREAMBLE_PARTIAL.match(body, partial=True) is not None:
            return None
        return AnswerChecks.clean(body)

    def exceeded(self, text: str) -> bool:
        answer = self.answer_so_far(text)
        if not answer:
            return False
        if self.max_chars is not None and len(answer) > self.max_chars:
            return True
        if self.max_lines is not None and sum(1 for ln in answer.splitlines() if ln.strip()) > self.max_lines:
            return True
        # The last word may still grow (and str.lower of it may still change): only whole words are judged.
        if not self.banned:
            return False
        whole_words = self.answer_so_far(_LAST_WORD.sub("", text, count=1))
        return whole_words is not None and any(d in _norm(whole_words) for d in self.banned)


class DuplicateFilter:
    """Exact duplicates after whitespace and case normalisation, against demos and accepted texts."""

    def __init__(self, initial: Iterable[str] = ()) -> None:
        self._seen = {normalize_ws(t) for t in initial}

    def check(self, text: str) -> str | None:
        return "duplicate" if normalize_ws(text) in self._seen else None

    def accept(self, text: str) -> None:
        self._seen.add(normalize_ws(text))


_INPUT_ECHO = re.compile(r"^\s*input\s*:\s*", re.IGNORECASE)


def strip_input_echo(text: str) -> tuple[str, bool]:
    """The text without a leading "Input:", and whether one was there. The request for a new input
    ends with "Input:", and a chat student often starts its answer by repeating it; the input after
    it is usable, but the noise filter would drop the whole text for the marker."""
    stripped = _INPUT_ECHO.sub("", text, count=1)
    return stripped, stripped != text


class EmptyFilter:
    """Blank text: nothing to keep."""

    def check(self, text: str) -> str | None:
        return "empty input" if not text.strip() else None


class TextFilter(Protocol):
    """What a filter in a `FilterChain` is: why it drops a text, or None; `accept` (optional) sees kept texts."""

    def check(self, text: str) -> str | None: ...


@dataclass
class FilterChain:
    """Filters in order, each under its stage name: `check` returns (stage, reason) for the first that drops.
    A method builds one from its ordered list of (stage, filter); the stage names of its funnel come from
    that list, so a new filter is one entry there."""

    stages: list[tuple[str, TextFilter]]

    def check(self, text: str) -> tuple[str, str] | None:
        for stage, f in self.stages:
            if why := f.check(text):
                return (stage, why)
        return None

    def accept(self, text: str) -> None:
        """Tell the filters that remember kept texts (duplicates) that `text` was kept."""
        for _, f in self.stages:
            if (accept := getattr(f, "accept", None)) is not None:
                accept(text)
