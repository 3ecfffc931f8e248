"""Shared fixtures: tiny real models built on the fly (no downloads) and one finished tiny run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import CONFIG, CORPUS, loop_cmd


def _tiny(tmp_path_factory, arch: str, seed: int) -> Path:
    """A random-init tiny HF checkpoint of `arch` with a sentencepiece tokenizer (no download)."""
    from selfguide_lite.toy_models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp(f"tiny-{arch}")
    build_tiny_model(out, CORPUS, arch=arch, vocab_size=320, seed=seed)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "llama", 1)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "qwen2", 2)


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    """Llama 3.2's RoPE (base 500000, llama3 scaling: the GGUF carries rope_freqs)."""
    return _tiny(tmp_path_factory, "llama3", 3)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """Per-head Q/K norms."""
    return _tiny(tmp_path_factory, "qwen3", 4)


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    """Sliding and global layers (a window shorter than the test prompts), four norms per block, tied
    embeddings, SentencePiece vocabulary."""
    return _tiny(tmp_path_factory, "gemma3", 5)


@pytest.fixture(scope="session")
def student(tmp_path_factory) -> Path:
    from selfguide_lite.toy_models.headline import build_headline_student

    return build_headline_student(tmp_path_factory.mktemp("student") / "hf", seconds=20, log=lambda m: None)


@pytest.fixture(scope="session")
def reference(student, tmp_path_factory) -> Path:
    """One uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    (root / "c.yaml").write_text(CONFIG)
    res = subprocess.run(loop_cmd(student, root / "run", root / "c.yaml"), cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "run"
