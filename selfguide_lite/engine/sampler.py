"""The sampler interface every synthesis and evaluation stage talks to.

Stages hand a whole list of requests to `Sampler.generate` at once, so a backend is free to decode
them one by one (`LlamaCppSampler`) or many per forward pass (the batched engine). Synthesis code
never imports llama.cpp; unit tests drive it with a scripted sampler.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import UserError
from ..prompts import ModelInfo  # what a sampler describes its student with (`Sampler.info`)


class RunOn(Protocol):
    """A caller's rule for when a completion can no longer be a usable answer: its filters reject it
    whether it stops now or at max_tokens. The batched engine asks after every token, passing the text
    later tokens cannot take back, and stops the sample at once (finish_reason "abandoned"), an exact
    saving. Engines that cannot stop mid-way (sequential, HTTP) ignore it. A frozen dataclass, so that
    the journal can key requests by it (filters.AnswerRunOn is the one in use)."""

    def exceeded(self, text: str) -> bool: ...


@dataclass(frozen=True)
class SamplingParams:
    """How to draw completions for one request. temperature 0 means greedy.

    `seed` makes a request reproducible on its own: sample i of a request is drawn with seed
    `seed + i`, whatever else is decoded beside it. `choices`, when set, constrains the completion
    to exactly one of these strings (leading whitespace allowed), e.g. a classification label set.
    """

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 1.0
    min_p: float = 0.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int = 0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    choices: tuple[str, ...] | None = None
    ignore_eos: bool = False
    run_on: RunOn | None = None


@dataclass(frozen=True)
class Request:
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (stop string or end-of-generation token), "length", or "abandoned" (RunOn)


@dataclass(frozen=True)
class ScoreRequest:
    """Whole continuations of one prompt to score (e.g. each label of a task, rendered as a training
    target ends: lead, label, end-of-answer token). Each is tokenized together with the prompt."""

    prompt: str
    continuations: tuple[str, ...]


class Sampler(ABC):
    """A student that can complete prompts. Backends: llama.cpp sequential (`sequential.py`) and batched
    (`batched.py`), OpenAI-compatible servers (`http.py`); tests use a scripted one.

    Every backend owes its callers these duties (checked for each backend by
    `tests/test_engine_batched.py::test_every_backend_keeps_the_sampler_contract`):
    - `generate` returns exactly `request.params.n` completions per request, in request order;
    - sample i of a request is drawn with seed `params.seed + i`, so a request's samples do not depend
      on what else is decoded beside it (a request alone or in a batch gives the same text);
    - a completion is cut at the earliest stop string in `params.stop` (the stop text excluded) and
      then reports `finish_reason == "stop"`; running out of `max_tokens` reports "length";
    - `params.choices`, when set, yields exactly one of those strings (leading whitespace allowed);
    - `progress.sample_done(1)` is called once per finished sample, so progress bars move during one
      long `generate` call;
    - `info` describes the student's prompt format; `count_tokens` counts in its own tokenizer.
    """

    info: ModelInfo
    scores_labels: bool = False  # whether `score` works (in-process llama.cpp: yes; a completions server: no)

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Return `request.params.n` completions for each request, in request order."""

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Per request, the summed log-probability (natural log) of each continuation's tokens after the
        point where the prompt + continuation token sequences part (see `score_split`): comparable across
        the continuations of one request. Only in-process llama.cpp backends can; others say so."""
        raise UserError(f"{type(self).__name__} cannot score labels (it returns no log-probabilities): "
                        "sample from a local GGUF instead (in-process llama.cpp)")

    def score_and_generate(self, scores: Sequence[ScoreRequest],
                           requests: Sequence[Request]) -> tuple[list[list[float]], list[list[Completion]]]:
        """`score(scores)` and `generate(requests)` in one call. A backend may share the work the two have
        in common (the batched engine computes each prompt once when request j's prompt is score j's);
        this default runs them one after the other."""
        return self.score(scores), self.generate(requests)

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` for this student (used to size max_tokens); backends override."""
        return max(1, len(text) // 4)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model; the default holds nothing."""

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; True when one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def settled_text(text: str, stop: Sequence[str]) -> str:
    """`text` without a tail that could still grow into a stop string: what later tokens cannot take back."""
    for n in range(min(len(text), max((len(s) for s in stop), default=1) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stop):
            return text[:-n]
    return text


def choices_grammar(choices: Sequence[str]) -> str:
    """A GBNF grammar whose language is optional leading whitespace then exactly one choice."""

    def lit(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "root ::= [ \\t\\n]? (" + " | ".join(lit(c) for c in choices) + ")\n"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def common_prefix_all(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = len(first)
    for s in seqs[1:]:
        n = common_prefix(first[:n], s)
        if n == 0:
            break
    return n


def score_split(prompt: Sequence[int], sequences: Sequence[Sequence[int]]) -> int:
    """Where scoring starts: the longest token prefix the prompt and every prompt + continuation share.
    Tokenizing them together may merge the prompt's last characters with a continuation's first, so the
    split can fall before the prompt's end; every continuation is then scored from the same point."""
    n = common_prefix_all([prompt, *sequences])
    if n == 0:
        raise UserError("cannot score continuations of an empty prompt when the model adds no BOS token")
    return n


def logsumexp(logits: np.ndarray) -> float:
    """log sum exp of one row of logits, in float64: row[token] - logsumexp(row) is log p(token)."""
    row = logits.astype(np.float64, copy=False)
    m = float(row.max())
    return m + math.log(float(np.exp(row - m).sum()))
