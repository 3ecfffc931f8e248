"""Sampling backends behind one interface (`Sampler`); `open_sampler` picks one from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import EngineConfig
from .sampler import Completion, ModelInfo, Request, Sampler, SamplingParams

__all__ = ["Completion", "ModelInfo", "Request", "Sampler", "SamplingParams", "open_sampler", "sampler_record"]


def open_sampler(model_path: str | Path, cfg: EngineConfig | None = None) -> Sampler:
    """The configured backend on a GGUF file: the batched engine by default, `backend: sequential` for
    llama-cpp-python's one-sequence-at-a-time `create_completion` (the reference the batched engine is
    tested against), or, with `endpoints`, OpenAI-compatible servers that serve the same model."""
    cfg = cfg or EngineConfig()
    from ..gguf_files import existing_gguf

    path = existing_gguf(model_path)
    if cfg.endpoints:  # remote servers sample; the local GGUF only tokenizes and names the prompt format
        from .http import HttpSampler

        return HttpSampler(cfg.endpoints, tokenizer_gguf=path, timeout_s=cfg.timeout_s, retries=cfg.retries)
    if cfg.backend == "sequential":
        from .sequential import LlamaCppSampler

        return LlamaCppSampler(model_path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
    from .batched import BatchedSampler

    return BatchedSampler(model_path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, n_parallel=cfg.n_parallel)


def sampler_record(cfg: EngineConfig, sampler: Any) -> dict[str, Any]:
    """Which model answered, for the manifest: local llama.cpp, or which servers and how many samples each."""
    inner = getattr(sampler, "inner", sampler)
    if cfg.endpoints:
        return {"sampler": "endpoints", "endpoints": list(cfg.endpoints),
                "served_by": dict(getattr(inner, "served_by", {}))}
    return {"sampler": f"local llama.cpp ({cfg.backend})"}
