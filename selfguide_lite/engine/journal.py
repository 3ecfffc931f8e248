"""A sampler wrapper that journals completions, so an interrupted synthesis resumes where it stopped.

Synthesis is deterministic given what the sampler returns (every request carries its own seed),
so replaying journaled completions walks the exact same path: finished requests are not decoded
again and nothing is duplicated. Large calls are cut into chunks and each chunk is appended to the
journal as soon as it is decoded, so at most one chunk of work is lost to a crash. The journal's
first line names the identity it belongs to (student + stage inputs); a journal written for
anything else is discarded rather than replayed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .. import progress
from .sampler import Completion, Request, Sampler, ScoreRequest

CHUNK = 64  # requests decoded (and journaled) together


def request_key(req: Request) -> str:
    params = asdict(req.params)
    if req.params.run_on is None:
        del params["run_on"]  # added later: journals written before it keep their keys
    else:
        params["run_on"] = {"rule": type(req.params.run_on).__name__, **params["run_on"]}
    blob = json.dumps({"prompt": req.prompt, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class JournaledSampler(Sampler):
    def __init__(self, inner: Sampler, path: str | Path, identity: str) -> None:
        self.inner = inner
        self.info = inner.info
        self.scores_labels = inner.scores_labels
        self.path = Path(path)
        self.replayed = 0
        self._done: dict[str, list[Completion]] = {}
        if self.path.is_file():
            self._load(identity)
        if not self._done:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"identity": identity}) + "\n")

    def _load(self, identity: str) -> None:
        text = self.path.read_text(encoding="utf-8")
        if not text.endswith("\n"):  # the crash cut the last line: drop it so appends start clean
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text, encoding="utf-8")
        lines = text.split("\n")  # not splitlines(): records may hold raw U+2028 and friends
        try:
            if not lines or json.loads(lines[0]).get("identity") != identity:
                return
        except json.JSONDecodeError:
            return
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self._done[row["key"]] = [Completion(*c) for c in row["completions"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Not journaled: scoring is deterministic and costs one pass per label, little to redo after a crash."""
        return self.inner.score(requests)

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        keys = [request_key(r) for r in requests]
        todo = [i for i, k in enumerate(keys) if k not in self._done]
        self.replayed += len(requests) - len(todo)
        pending = set(todo)
        progress.sample_done(sum(r.params.n for i, r in enumerate(requests) if i not in pending))  # replayed
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            outs = self.inner.generate([requests[i] for i in chunk])
            with open(self.path, "a", encoding="utf-8") as fh:
                for i, comps in zip(chunk, outs, strict=True):
                    self._done[keys[i]] = comps
                    fh.write(json.dumps({"key": keys[i], "completions": [list(asdict(c).values()) for c in comps]}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return [self._done[k] for k in keys]

    def discard(self) -> None:
        """The stage finished and its outputs are written: the journal has served its purpose."""
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.inner.close()
