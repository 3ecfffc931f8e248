"""The one door to llama.cpp: every GGUF this package decodes is opened here, with the load settings this
installation was checked to decode correctly with on this CPU (`runtime`, the check, decides them; its child
process runs `_probe_main` here). Also the model's vocabulary: tokenizing, special tokens, chat template.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..gguf_files import existing_gguf
from ..runtime import PROBE_TEXT, build_features, cpu_flags, ensure_runtime, extra_bufts_rule, verdict
from .sampler import ModelInfo


def model_params(extra_bufts: bool | None = None, **fields):
    """`llama_model_default_params()` with the extra-buffer setting of this installation's verdict
    (or `extra_bufts` as given) and any other fields (`vocab_only=True`, ...)."""
    setting = verdict()["extra_bufts"] if extra_bufts is None else extra_bufts
    params = _quiet_llama_cpp().llama_model_default_params()
    params.use_extra_bufts = setting
    for name, value in fields.items():
        setattr(params, name, value)
    return params


@contextmanager
def llama_defaults(extra_bufts: bool | None = None) -> Iterator[None]:
    """Make llama-cpp-python's own model loads (the high-level `Llama`, its server) use the verdict's
    setting while the block runs. `Llama.__init__` takes no argument for `use_extra_bufts` and loads the
    model before it returns, reading `llama_model_default_params()` from its bindings module: swapping
    that function for the block is the only way in without copying `Llama`."""
    setting = verdict()["extra_bufts"] if extra_bufts is None else extra_bufts
    bindings = _quiet_llama_cpp().llama_cpp
    original = bindings.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = setting
        return params

    bindings.llama_model_default_params = defaults
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


def llama_cpp_module():
    """The `llama_cpp` bindings, imported only once this installation passed its check: importing them
    loads the native library, which is where a build for another CPU dies. llama.cpp's own log is
    silenced; its error lines go into our messages (`llama_errors`)."""
    ensure_runtime()
    return _quiet_llama_cpp()


_GGML_LOG_ERROR, _GGML_LOG_CONT = 4, 5  # ggml_log_level in the llama.cpp that 0.3.36 vendors (ggml.h)
_log_state: dict[str, Any] = {"callback": None, "last": 0, "errors": []}


def _quiet_llama_cpp():
    """The bindings, with llama.cpp's own log silenced; its error lines are kept for our messages
    (`llama_errors`). We replace llama-cpp-python 0.3.36's callback because it maps an older
    ggml_log_level enum (WARN = 2, ERROR = 3): with verbose off it printed warnings (WARN is 3 now)
    into our output and dropped errors (4)."""
    import ctypes

    import llama_cpp

    if _log_state["callback"] is None:
        @llama_cpp.llama_log_callback
        def keep_errors(level: int, text: bytes, user_data) -> None:
            level = _log_state["last"] if level == _GGML_LOG_CONT else level
            _log_state["last"] = level
            if level == _GGML_LOG_ERROR:
                _log_state["errors"] = [*_log_state["errors"][-9:], text.decode("utf-8", errors="replace").strip()]

        _log_state["callback"] = keep_errors  # kept referenced while llama.cpp may call it
        llama_cpp.llama_log_set(keep_errors, ctypes.c_void_p(0))
        atexit.register(_restore_llama_log)
    return llama_cpp


def _restore_llama_log() -> None:
    """At exit, before the interpreter tears down our module (and with it the callback's trampoline),
    hand llama.cpp back llama-cpp-python's own callback: models freed during teardown still log, and a
    call into a freed trampoline is a segfault (seen: `serve` stopped with SIGSEGV)."""
    import ctypes

    import llama_cpp
    import llama_cpp._logger

    llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def llama_errors() -> str:
    """llama.cpp's error lines since the last call, joined (for a user error's message), then forgotten."""
    errors, _log_state["errors"] = _log_state["errors"], []
    return " ".join(" / ".join(e for e in errors if e).split())[:300]


def load_model(model_path: str | Path, *, vocab_only: bool = False, extra_bufts: bool | None = None):
    """A `llama_model` pointer (low-level API) that the caller frees with `llama_model_free`.
    `vocab_only`: the vocabulary and metadata without the weights (tokenizing, the chat template)."""
    path = existing_gguf(model_path)
    params = model_params(extra_bufts, vocab_only=vocab_only)  # checks the installation first
    llama_cpp = _quiet_llama_cpp()
    llama_cpp.llama_backend_init()
    llama_errors()  # forget older errors: the message names this load's
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        said = llama_errors()
        raise UserError(f"llama.cpp could not load {path} ({said or 'not a GGUF file, truncated, or an unknown architecture'})")
    return model


def load_llama(model_path: str | Path, n_ctx: int, n_threads: int | None, *, extra_bufts: bool | None = None, **kwargs):
    """Open a GGUF with llama-cpp-python's high-level `Llama`, turning a missing or unreadable file into
    a user error."""
    path = existing_gguf(model_path)
    threads = n_threads or os.cpu_count()
    try:
        with llama_defaults(extra_bufts):  # checks the installation first
            llama_errors()
            return _quiet_llama_cpp().Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                                            n_threads_batch=threads, verbose=False, **kwargs)
    except ValueError as exc:
        said = llama_errors()
        raise UserError(f"llama.cpp could not load {path}: {exc}{f' ({said})' if said else ''}") from None


# --- a model's vocabulary and metadata ----------------------------------------------------------

def load_vocab_only(model_path: str | Path):
    """A GGUF's vocabulary and metadata without its weights (fast): a `llama_model` pointer that the
    caller frees with `llama_model_free`. For tokenizing and reading the chat template."""
    return load_model(model_path, vocab_only=True)


def model_info(model) -> ModelInfo:
    """Chat template and special-token texts of a loaded llama.cpp model (a `llama_model` pointer),
    read from its GGUF metadata and vocabulary. Both backends describe the student through this."""
    llama_cpp = llama_cpp_module()

    vocab = llama_cpp.llama_model_get_vocab(model)

    def text(token: int) -> str:
        if token < 0:
            return ""
        raw = llama_cpp.llama_vocab_get_text(vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    template = llama_cpp.llama_model_chat_template(model, None)
    return ModelInfo(
        chat_template=template.decode("utf-8") if template else None,
        bos_token=text(llama_cpp.llama_vocab_bos(vocab)),
        eos_token=text(llama_cpp.llama_vocab_eos(vocab)),
    )


@contextmanager
def gguf_vocab(path: str | Path):
    """The GGUF's `llama_model` (vocabulary and metadata only), freed when the block ends."""
    llama_cpp = llama_cpp_module()

    model = load_vocab_only(path)
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


def gguf_model_info(path: str | Path) -> ModelInfo:
    """Chat template and special tokens of a GGUF, loading only its vocabulary (fast)."""
    with gguf_vocab(path) as model:
        return model_info(model)


def gguf_tokenize_all(path: str | Path, texts: list[str], add_special: bool = True) -> list[list[int]]:
    """llama.cpp's ids for each text (with BOS when the model wants one; special-token text parsed),
    opening the file's vocabulary once."""
    llama_cpp = llama_cpp_module()

    out = []
    with gguf_vocab(path) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        for text in texts:
            raw = text.encode("utf-8")
            buf = (llama_cpp.llama_token * (len(raw) + 8))()
            n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), add_special, True)
            out.append(list(buf[:n]))
    return out


def gguf_tokenize(path: str | Path, text: str, add_special: bool = True) -> list[int]:
    """llama.cpp's ids for one text."""
    return gguf_tokenize_all(path, [text], add_special)[0]


def gguf_add_bos(path: str | Path) -> bool:
    """Whether llama.cpp puts BOS before a prompt for this model."""
    llama_cpp = llama_cpp_module()

    with gguf_vocab(path) as model:
        return bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(model)))


# --- the child process --------------------------------------------------------------------------

def _probe_main(requested: str) -> int:
    """Runs in the child: print the build and the setting, then decode each quantized model twice."""
    llama_cpp = _quiet_llama_cpp()
    flags = cpu_flags()
    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    rule_on, rule = extra_bufts_rule(flags, build_features(system_info))
    extra = rule_on if requested == "auto" else requested == "on"
    print(json.dumps({"system_info": system_info, "rule": rule, "extra_bufts": extra}), flush=True)
    from ..builtin_students import BUILTIN_STUDENTS, DEFAULT_STUDENT, builtin_gguf

    q4_1 = builtin_gguf(DEFAULT_STUDENT)
    results = []
    with tempfile.TemporaryDirectory(prefix="selfguide-runtime-") as tmp:
        q8_0 = Path(tmp) / f"{Path(BUILTIN_STUDENTS[DEFAULT_STUDENT].filename).stem}.q8_0.gguf"
        _requantize(q4_1, q8_0)
        for path in (q4_1, q8_0):
            results.append(_compare_batched_and_sequential(path, extra))
    print(json.dumps({"models": results}), flush=True)
    return 0


def _requantize(src: Path, dst: Path) -> None:
    """A q8_0 copy of the student (the type exported rounds use), made by llama.cpp."""
    import ctypes

    llama_cpp = _quiet_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"could not requantize {src.name} to q8_0")


def _compare_batched_and_sequential(path: Path, extra_bufts: bool) -> dict[str, Any]:
    import numpy as np

    t0 = time.monotonic()
    llm = load_llama(path, n_ctx=256, n_threads=None, extra_bufts=extra_bufts, logits_all=True)
    try:
        ids = llm.tokenize(PROBE_TEXT.encode(), add_bos=True)
        llm.eval(ids)  # one batch of every token: the path that crashed
        batched = np.array(llm.scores[: len(ids)], dtype=np.float64)
        llm.reset()
        for token in ids:
            llm.eval([token])
        sequential = np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
    span = float(sequential.max() - sequential.min()) or 1.0
    return {
        "file": path.name, "tokens": len(ids),
        "finite": bool(np.isfinite(batched).all() and np.isfinite(sequential).all()),
        "top1_agreement": float((batched.argmax(1) == sequential.argmax(1)).mean()),
        "relative_diff": float(np.abs(batched - sequential).max() / span),
        "seconds": round(time.monotonic() - t0, 2),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe" and sys.argv[2] in ("auto", "on", "off"):
        sys.exit(_probe_main(sys.argv[2]))
    print("usage: python -m selfguide_lite.engine.llama probe auto|on|off", file=sys.stderr)
    sys.exit(2)
