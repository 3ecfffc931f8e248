"""Shared fixtures: tiny real models built on the fly (no downloads) and one finished tiny run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import CONFIG, CORPUS, loop_cmd


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random-init tiny Llama HF checkpoint with a sentencepiece tokenizer."""
    from selfguide_lite.toy_models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(out, CORPUS, arch="llama", vocab_size=320, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    """A tiny Llama with Llama 3.2's RoPE (base 500000, llama3 scaling: the GGUF carries rope_freqs)."""
    from selfguide_lite.toy_models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-llama3")
    build_tiny_model(out, CORPUS, arch="llama3", vocab_size=320, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A tiny Qwen3 (per-head Q/K norms)."""
    from selfguide_lite.toy_models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-qwen3")
    build_tiny_model(out, CORPUS, arch="qwen3", vocab_size=320, seed=4)
    return out


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    """A tiny Gemma 3 (sliding and global layers, a window shorter than the test prompts, four norms
    per block, tied embeddings, SentencePiece vocabulary)."""
    from selfguide_lite.toy_models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-gemma3")
    build_tiny_model(out, CORPUS, arch="gemma3", vocab_size=320, seed=5)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from selfguide_lite.toy_models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_model(out, CORPUS, arch="qwen2", vocab_size=320, seed=2)
    return out


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
