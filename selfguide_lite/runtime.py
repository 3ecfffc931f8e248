"""The one door to llama.cpp: every GGUF this package decodes is opened here, with the load settings
this installation was checked to decode correctly with on this CPU.

Why a check: `pip install llama-cpp-python` compiles llama.cpp natively for the CPU that installs it,
and pip's wheel cache hands that build to later installs whatever `CMAKE_ARGS` they set. Two failures
follow, and neither can be caught in-process:

- on Intel Xeons with AMX, a native build registers llama.cpp's AMX "extra buffer type" for
  Q4_0/Q4_1/Q8_0/K-quant weights, and llama-cpp-python 0.3.36 segfaults on any multi-token batch through
  it (upstream llama.cpp issue 20824). Loading with `use_extra_bufts = False` avoids it, at the cost of
  the CPU repacking kernels (Q4_0/Q4_K weights on x86) on such machines only;
- a wheel built on one CPU and reused on another that lacks its instructions dies with SIGILL.

So before the first decode of an installation, a child process loads quantized models (the built-in
Q4_1 student and a q8_0 copy of it, the format of exported rounds) and compares a multi-token batch with
token-by-token decoding. The verdict, which load settings decode correctly, is cached per (llama.cpp
library bytes, CPU flags): a repaired reinstall of the same version is checked again. A failing check
ends in one `error:` line naming the CPU, the version and the command that repairs the install.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .engine.sampler import ModelInfo

LLAMA_CPP_VERSION = "0.3.36"  # the version this check and the struct field it sets were verified with
CHECK_VERSION = 1  # bump when the probe changes: cached verdicts are then redone
PROBE_TEXT = ("Input: The film was long, but the acting made every minute of it worth the ticket.\n"
              "Output: positive\nInput: The service was slow and the soup arrived cold.\nOutput:")
# A multi-token batch and token-by-token decoding run different kernels (a batched GEMM against
# vec_dot), so their logits differ a little: measured here at most 2.7 % of the logit range with 98.5 %
# of the top-1 tokens equal (SmolLM2-135M Q4_1 and q8_0, AMD EPYC, AVX-512). A broken kernel gives
# garbage, far outside these bounds.
MIN_TOP1_AGREEMENT = 0.9
MAX_RELATIVE_DIFF = 0.15
PROBE_TIMEOUT_S = 600
# CPU features worth naming in a message: those llama.cpp's x86 kernels are compiled for.
_NAMED_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512", "amx")

Log = Callable[[str], None]
_verdict: dict[str, Any] | None = None  # this process's verdict, once known


# --- the machine and the installation ---------------------------------------------------------

def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo does not exist)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def named_features(flags: frozenset[str]) -> list[str]:
    """The flags that matter to llama.cpp's x86 kernels, sorted: what a message names."""
    return sorted(f for f in flags if f in _NAMED_FEATURES or f.startswith(("avx512", "amx")))


def build_features(system_info: str) -> dict[str, bool]:
    """llama.cpp's `llama_print_system_info()` ("CPU : SSE3 = 1 | AVX2 = 1 | ... |") as {feature: on}:
    the instruction sets the installed build was compiled for."""
    out: dict[str, bool] = {}
    for part in system_info.replace("\n", "|").split("|"):
        name, eq, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if eq and name:
            out[name] = value.strip() == "1"
    return out


def installed_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def library_files() -> list[Path]:
    """The installed llama.cpp shared libraries (found without importing llama_cpp: importing it
    loads them, which is what may crash)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    files = {p.resolve() for p in lib.glob("*") if p.is_file() and (".so" in p.name or p.suffix in (".dylib", ".dll"))}
    return sorted(files)


def installation_key(flags: frozenset[str] | None = None) -> str:
    """Hash of the llama.cpp library bytes, this CPU's flags and the probe's version."""
    h = hashlib.sha256(f"check {CHECK_VERSION}\n".encode())
    for path in library_files():
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    h.update(" ".join(sorted(cpu_flags() if flags is None else flags)).encode())
    return h.hexdigest()


def cache_dir() -> Path:
    """Per-user cache of verdicts (XDG_CACHE_HOME, else ~/.cache): a verdict belongs to an
    installation and a CPU, not to a project directory."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "selfguide_lite"


# --- the load settings ------------------------------------------------------------------------

def extra_bufts_rule(flags: frozenset[str], build: dict[str, bool]) -> tuple[bool, str]:
    """Whether to load with llama.cpp's extra buffer types (AMX and CPU repacking kernels), decided
    from the CPU's flags and the build's features, before any check runs. The check then verifies it.

    Off only where AMX kernels can run: a build compiled with AMX (native on an AMX CPU) on a CPU that
    has AMX. On x86 the only extra buffer types are AMX and repacking, and repacking never takes Q4_1
    or Q8_0 weights there (it takes Q4_0, Q4_K, Q2_K, IQ4_NL, MXFP4), so the crash on the built-in Q4_1
    student can only come from AMX."""
    if build.get("AMX_INT8") and "amx_int8" in flags:
        return False, ("off: this build's AMX kernels run on this CPU, and in llama-cpp-python "
                       f"{LLAMA_CPP_VERSION} they crash on multi-token batches (llama.cpp issue 20824)")
    return True, "on: no AMX kernels in this build or on this CPU"


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


# --- GGUF files: the one place that checks, opens (vocabulary only), describes and tokenizes them ---

def existing_gguf(path: str | Path) -> Path:
    """A GGUF path a command was given, or the one error line saying why it is not one."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; sampling needs a GGUF file (see `export`, or let `loop` convert it)")
    if not path.is_file():
        raise UserError(f"GGUF model not found: {path}")
    missing = [part.name for part in gguf_parts(path) if not part.is_file()]
    if missing:
        raise UserError(f"{path} is one shard of a split model whose other shards are missing: {', '.join(missing)}")
    return path


SPLIT_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)  # llama.cpp's (gguf-split's) naming


def first_shard(path: Path) -> Path:
    """A split model is opened from its first shard (llama.cpp's rule); naming a later one means the same model."""
    match = SPLIT_SHARD.search(path.name)
    if not match or int(match.group(1)) == 1:
        return path
    return path.with_name(path.name[:match.start()] + f"-00001-of-{match.group(2)}.gguf")


def gguf_parts(path: Path) -> list[Path]:
    """Every file of a GGUF model: the file itself, or all shards of a split model named from its first."""
    match = SPLIT_SHARD.search(path.name)
    if not match:
        return [path]
    stem, count = path.name[:match.start()], int(match.group(2))
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF's header says without its weights: the metadata values asked for, every tensor's name."""

    values: dict[str, Any]
    tensor_names: tuple[str, ...]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_header(path: str | Path, keys: tuple[str, ...] = ()) -> GGUFHeader:
    """Read a GGUF's header: the values of `keys` (arrays as lists) and the tensor names.

    gguf-py's reader builds an object per array element, seconds for a 262k-entry vocabulary (7.7 s for
    Gemma 3 270M here); this walks the header once and decodes only the keys asked for (tenths of a
    second), for checks made on every resolution of a name."""
    import mmap
    import struct

    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            raise UserError(f"{path}: not a GGUF file (empty)") from None
    try:
        if buf[:4] != b"GGUF":
            raise UserError(f"{path}: not a GGUF file (no GGUF magic)")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def string() -> str:
            nonlocal pos
            (length,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + length
            return bytes(buf[pos - length:pos]).decode("utf-8", errors="replace")

        def value(kind: int, keep: bool) -> Any:
            nonlocal pos
            if kind == _STRING:
                return string()
            if kind in _SCALARS:
                fmt = _SCALARS[kind]
                pos += struct.calcsize(fmt)
                return struct.unpack_from(fmt, buf, pos - struct.calcsize(fmt))[0]
            if kind != _ARRAY:
                raise UserError(f"{path}: not a readable GGUF file (value type {kind})")
            sub, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if sub in _SCALARS:  # fixed size: one slice
                size = struct.calcsize(_SCALARS[sub])
                pos += size * count
                return list(struct.unpack_from(f"<{count}{_SCALARS[sub][1]}", buf, pos - size * count)) if keep else None
            items = [value(sub, keep) for _ in range(count)]
            return items if keep else None

        values = {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            got = value(kind, key in keys)
            if key in keys:
                values[key] = got
        names = []
        for _ in range(n_tensors):
            names.append(string())
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            pos += 4 + 8 * n_dims + 4 + 8
        return GGUFHeader(values, tuple(names))
    except (struct.error, OverflowError, MemoryError):
        raise UserError(f"{path}: not a readable GGUF file (its header is truncated or malformed)") from None
    finally:
        buf.close()


def load_vocab_only(model_path: str | Path):
    """A GGUF's vocabulary and metadata without its weights (fast): a `llama_model` pointer that the
    caller frees with `llama_model_free`. For tokenizing and reading the chat template."""
    return load_model(model_path, vocab_only=True)


def model_info(model) -> ModelInfo:
    """Chat template and special-token texts of a loaded llama.cpp model (a `llama_model` pointer),
    read from its GGUF metadata and vocabulary. Both backends describe the student through this."""
    from .engine.sampler import ModelInfo

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


# --- the check --------------------------------------------------------------------------------

def pin_extra_bufts(setting: bool) -> None:
    """Benchmarks only: use this setting in this process without checking (to compare both)."""
    global _verdict
    _verdict = {"extra_bufts": setting, "pinned": True}


def verdict() -> dict[str, Any]:
    """This installation's verdict (checking it first if needed)."""
    return _verdict if _verdict is not None else ensure_runtime()


def ensure_runtime(log: Log | None = None) -> dict[str, Any]:
    """The verdict for this installation and CPU: from this process's memory, the cache, or a check in
    child processes. Raises UserError (one line, with the repair command) when nothing decodes."""
    global _verdict
    if _verdict is None:
        _verdict = check_runtime(log=log or _note)
    return _verdict


def _note(line: str) -> None:
    from . import progress

    if not progress.quiet():
        print(line, file=sys.stderr, flush=True)


def check_runtime(use_cache: bool = True, log: Log | None = None, probe_cmd: list[str] | None = None) -> dict[str, Any]:
    """Decide and verify the load settings in child processes (see the module docstring). `probe_cmd`
    replaces the probe's command, which gets `auto`, `on` or `off` appended (tests simulate crashes)."""
    log = log or (lambda m: None)
    flags = cpu_flags()
    key = installation_key(flags)
    cache = cache_dir() / f"llama-runtime-{key[:20]}.json"
    from .store import atomic_write_text, read_cache_record

    cached = read_cache_record(cache) if use_cache else None
    if cached and cached.get("key") == key and cached.get("ok"):
        return {**cached, "cached": True}
    log(f"checking that llama.cpp decodes correctly on this CPU (once per installation; cached in {cache.parent})")
    t0 = time.monotonic()
    attempts = [run_probe("auto", probe_cmd)]
    first = attempts[0]
    if not first["ok"] and first.get("extra_bufts") is True:
        attempts.append(run_probe("off", probe_cmd))  # the fallback: plain CPU kernels only
    chosen = next((a for a in attempts if a["ok"]), None)
    record = {
        "key": key, "check_version": CHECK_VERSION, "ok": chosen is not None,
        "llama_cpp_python": installed_version(), "cpu": cpu_name(), "cpu_features": named_features(flags),
        "system_info": first.get("system_info"), "rule": first.get("rule"),
        "extra_bufts": chosen["extra_bufts"] if chosen else None,
        "attempts": attempts, "seconds": round(time.monotonic() - t0, 1),
    }
    if chosen is None:
        raise UserError(failure_message(record))
    if len(attempts) > 1:
        log(f"llama.cpp failed with extra buffer types on ({first['failure']}); it decodes correctly with them off, "
            "which this installation now uses")
    atomic_write_text(cache, json.dumps(record, indent=2))
    return {**record, "cached": False}


def run_probe(extra_bufts: str, probe_cmd: list[str] | None = None) -> dict[str, Any]:
    """One child process: `python -m selfguide_lite.runtime probe <auto|on|off>`. Its first stdout line
    (printed before any decode) says what the build is and which setting it uses; its last line gives
    each model's agreement between batched and token-by-token decoding."""
    cmd = [*(probe_cmd or [sys.executable, "-m", "selfguide_lite.runtime", "probe"]), extra_bufts]
    env = {**os.environ, "PYTHONFAULTHANDLER": "0"}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env,
                             preexec_fn=_no_core_dump if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        return {"ok": False, "requested": extra_bufts, "failure": f"no answer within {PROBE_TIMEOUT_S} s"}
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    out: dict[str, Any] = {"requested": extra_bufts, **(lines[0] if lines else {})}
    if res.returncode < 0:
        sig = -res.returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        where = "while loading llama.cpp" if not lines else "on a multi-token decode"
        return {**out, "ok": False, "signal": name, "failure": f"died with {name} {where}"}
    if res.returncode != 0 or len(lines) < 2:
        tail = " ".join((res.stderr.strip().splitlines() or ["no output"])[-1].split())[:300]
        return {**out, "ok": False, "failure": f"exit code {res.returncode}: {tail}"}
    out["models"] = lines[-1]["models"]
    bad = [m for m in out["models"] if not decodes_correctly(m)]
    if bad:
        m = bad[0]
        return {**out, "ok": False, "failure": (f"wrong logits on a multi-token batch of {m['file']}: top-1 agreement "
                                                 f"{m['top1_agreement']:.2f}, largest difference {m['relative_diff']:.3f} "
                                                 "of the logit range, against token-by-token decoding")}
    return {**out, "ok": True}


def decodes_correctly(model: dict[str, Any]) -> bool:
    return bool(model.get("finite")) and model["top1_agreement"] >= MIN_TOP1_AGREEMENT and \
        model["relative_diff"] <= MAX_RELATIVE_DIFF


def _no_core_dump() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def repair_command(flags: frozenset[str], record: dict[str, Any]) -> str:
    """The command that replaces the installed llama.cpp with one that runs here. `--no-cache-dir`
    because pip's wheel cache ignores CMAKE_ARGS and would hand back the broken build."""
    pin = f"'llama-cpp-python=={record.get('llama_cpp_python') or LLAMA_CPP_VERSION}'"
    pip = f"pip install --force-reinstall --no-cache-dir --no-deps {pin}"
    if any(a.get("signal") == "SIGILL" for a in record.get("attempts", [])):
        return pip  # a build for another CPU: rebuilding natively here is the fix
    on = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c"}
    args = ["-DGGML_NATIVE=OFF"] + [f"-DGGML_{k}={'ON' if v in flags else 'OFF'}" for k, v in on.items()] + ["-DGGML_AVX512=OFF"]
    return f'CMAKE_ARGS="{" ".join(args)}" {pip}'


def failure_message(record: dict[str, Any]) -> str:
    features = record["cpu_features"]  # the CPU's flags that matter to llama.cpp, read once by the check
    tried = "; ".join(f"{_setting_text(a)}: {a['failure']}" for a in record["attempts"])
    return (f"llama.cpp (llama-cpp-python {record['llama_cpp_python']}) does not decode quantized models correctly on "
            f"this CPU ({record['cpu']}; {' '.join(features) or 'no x86 vector features found'}): {tried}. "
            f"Repair: {repair_command(frozenset(features), record)}")


def _setting_text(attempt: dict[str, Any]) -> str:
    if "extra_bufts" not in attempt:  # the child died before it could say
        return "loading llama.cpp"
    return f"extra buffer types {'on' if attempt['extra_bufts'] else 'off'}"


def runtime_lines(record: dict[str, Any]) -> list[str]:
    """What `doctor` prints about the check."""
    build = build_features(record.get("system_info") or "")
    on = [k for k, v in build.items() if v]
    return [
        f"CPU: {record['cpu']}; features: {' '.join(record['cpu_features']) or 'none named'}",
        f"llama.cpp build (llama-cpp-python {record['llama_cpp_python']}): {' '.join(on) or 'unknown'}",
        f"extra buffer types (AMX, repacking) {record['rule']}",
        "llama.cpp decodes quantized models correctly here with extra buffer types "
        f"{'on' if record['extra_bufts'] else 'off'}: "
        + ", ".join(f"{m['file']} top-1 {m['top1_agreement']:.2f}" for m in record["attempts"][-1].get("models", []))
        + (" (checked earlier)" if record.get("cached") else f" ({record['seconds']}s)"),
    ]


# --- the child process --------------------------------------------------------------------------

def _probe_main(requested: str) -> int:
    """Runs in the child: print the build and the setting, then decode each quantized model twice."""
    llama_cpp = _quiet_llama_cpp()
    flags = cpu_flags()
    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    rule_on, rule = extra_bufts_rule(flags, build_features(system_info))
    extra = rule_on if requested == "auto" else requested == "on"
    print(json.dumps({"system_info": system_info, "rule": rule, "extra_bufts": extra}), flush=True)
    from .builtin_students import BUILTIN_STUDENTS, DEFAULT_STUDENT, builtin_gguf

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
    print("usage: python -m selfguide_lite.runtime probe auto|on|off", file=sys.stderr)
    sys.exit(2)
