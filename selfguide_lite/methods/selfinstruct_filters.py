"""Self-Instruct's filters (contract §3.2, 3.5): on each written instruction, then on each instance.

The instruction filters are an ordered list of (stage, filter) (`INSTRUCTION_FILTERS`): the stage names in
`stats.json` come from it, so a new instruction filter is one entry there. ROUGE-L against the pool runs after
them (in `selfinstruct.py`, on a whole wave at once).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..filters import FilterChain, TextFilter

# The original Self-Instruct blacklist: tasks a text-only model cannot do or verify.
INSTRUCTION_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)


def word_count_check(text: str, min_words: int = 4, max_words: int = 150) -> str | None:
    """Very short items are usually list debris, very long ones run-on generations."""
    n = len(text.split())
    if n < min_words:
        return f"too few words ({n} < {min_words})"
    if n > max_words:
        return f"too many words ({n} > {max_words})"
    return None


@dataclass(frozen=True)
class WordCount:
    min_words: int = 4
    max_words: int = 150

    def check(self, text: str) -> str | None:
        return word_count_check(text, self.min_words, self.max_words)


@dataclass
class BlacklistFilter:
    """Whole words or phrases only, any case, any whitespace inside a phrase.

    "maps" drops an instruction, "mapping" does not: substring matching would reject many harmless tasks.
    """

    words: Sequence[str] = INSTRUCTION_BLACKLIST
    _rx: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        phrases = (r"\s+".join(map(re.escape, w.split())) for w in self.words)
        alternatives = sorted(phrases, key=len, reverse=True)
        self._rx = re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)

    def check(self, text: str) -> str | None:
        if m := self._rx.search(text):
            return f"blacklisted: {m.group(0).lower()!r}"
        return None


def program_check(text: str) -> str | None:
    """Programs can't be checked by reading the output, so Self-Instruct refuses to ask for them."""
    if text.lstrip().lower().startswith("write a program"):
        return "starts with 'Write a program'"
    return None


def start_check(text: str) -> str | None:
    """A leading punctuation mark or non-ASCII character is almost always list or encoding debris."""
    stripped = text.lstrip()
    if not stripped:
        return "empty"
    first = stripped[0]
    if not first.isascii():
        return f"starts with non-ASCII {first!r}"
    if first in string.punctuation:
        return f"starts with punctuation {first!r}"
    return None


@dataclass(frozen=True)
class CheckFunction:
    """A plain `text -> reason | None` function as a filter."""

    fn: object

    def check(self, text: str) -> str | None:
        return self.fn(text)  # type: ignore[operator]


# Self-Instruct's cheap instruction filters in order, each under its stage name.
INSTRUCTION_FILTERS: tuple[tuple[str, TextFilter], ...] = (
    ("length", WordCount()),
    ("blacklist", BlacklistFilter()),
    ("program", CheckFunction(program_check)),
    ("start", CheckFunction(start_check)),
)
# Every stage an instruction can be dropped at, in order: cut off at max_tokens, the filters, ROUGE-L, over target.
INSTRUCTION_STAGES = ("truncated", *(stage for stage, _ in INSTRUCTION_FILTERS), "rouge", "surplus")


def instruction_filters() -> FilterChain:
    return FilterChain(list(INSTRUCTION_FILTERS))


def instance_check(input_text: str, output_text: str) -> tuple[str, str] | None:
    """Per-instance checks (contract §3.5): returns (stage, reason) for the first that drops."""
    inp, out = input_text.strip(), output_text.strip()
    if not out:
        return ("empty_output", "empty output")
    if inp == out:
        return ("same_as_input", "output equals input")
    if inp.endswith(":") or out.endswith(":"):
        return ("cut_off", f"{'input' if inp.endswith(':') else 'output'} ends with ':'")
    return None


def conflicting_inputs(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Non-empty inputs given more than one different output: the model contradicts itself, so contract §3.5
    distrusts every instance of that instruction. Inputs left empty may have many valid outputs."""
    outputs: dict[str, set[str]] = {}
    for inp, out in pairs:
        if inp.strip():
            outputs.setdefault(inp.strip(), set()).add(out.strip())
    return [inp for inp, outs in outputs.items() if len(outs) > 1]
