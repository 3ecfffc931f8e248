"""The installation check: which load settings llama.cpp decodes correctly with on this CPU, decided in
child processes before the first decode of an installation (the door that then opens models with them is
`engine/llama.py`).

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

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import UserError

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
    """One child process: `python -m selfguide_lite.engine.llama probe <auto|on|off>`. Its first stdout line
    (printed before any decode) says what the build is and which setting it uses; its last line gives
    each model's agreement between batched and token-by-token decoding."""
    cmd = [*(probe_cmd or [sys.executable, "-m", "selfguide_lite.engine.llama", "probe"]), extra_bufts]
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
