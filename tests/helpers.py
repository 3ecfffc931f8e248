"""Helpers shared by the tests: the shared data's location, a tiny corpus, a scripted sampler, the
tiny run's configuration and command line. Fixtures live in conftest.py."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from selfguide_lite.engine.sampler import Completion, ModelInfo, Request, Sampler

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


CORPUS = [
    f"Input: {w} number {i} is here\nOutput: {lab}"
    for i, (w, lab) in enumerate(
        [("the team wins the final", "sports"), ("heavy rain hits Leeds", "weather"), ("a bakery opens", "food")] * 60
    )
]


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared data not present: {path}")
    return path


class ScriptedSampler(Sampler):
    """A fake student for unit tests of prompt/filter/vote logic: `respond(prompt, sample_index, request)`."""

    def __init__(self, respond: Callable[[str, int, Request], str], chat_template: str | None = None) -> None:
        self.respond = respond
        self.info = ModelInfo(chat_template, "<s>", "</s>")
        self.requests: list[Request] = []

    def count_tokens(self, text: str) -> int:
        return max(1, len(re.findall(r"\w+|[^\w\s]", text)))

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        self.requests.extend(requests)
        return [
            [Completion(self.respond(r.prompt, i, r), 1, "stop") for i in range(r.params.n)] for r in requests
        ]


# Tiny counts for runs that check the loop's mechanics (resume, servers, export): the vote is named, so a
# round trains whatever the signal check finds (the check still runs, on 24 instances), on any number of
# rows and labels. The checks' own decisions are tested with planted labellers (tests/test_label_signal.py).
CONFIG = (
    "selfguide: {num_inputs: 36, wave_size: 12, num_samples: 4, length_filter: false, balance: false, labeler: vote, "
    "signal_size: 24}\n"
    "train: {quantization: none, epochs: 3, batch_size: 2, learning_rate: 1.0e-3}\n"
    "eval: {validation_size: 8, test_size: 4}\nengine: {n_ctx: 2048}\nexport: {quant: q8_0}\n"
    "loop: {min_train_rows: 1, min_train_labels: 1}\n"
)


def loop_cmd(student: Path, run_dir: Path, cfg: Path, seed: int = 0) -> list[str]:
    from selfguide_lite.toy_models.headline import headline_task_path

    return [sys.executable, "-m", "selfguide_lite", "loop", "--task", str(headline_task_path()), "--model", str(student),
            "--rounds", "1", "--run-dir", str(run_dir), "--config", str(cfg), "--seed", str(seed)]


def small_gguf(path: Path, arch: str = "mamba") -> Path:
    """A small valid GGUF (one tensor, no vocabulary) of any architecture: for refusals and listings."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
