"""Models the user already has on disk: `ollama:NAME[:TAG]` and `lmstudio:PUBLISHER/NAME[/FILE]` names,
resolved to the GGUF file inside Ollama's or LM Studio's store, and the listing behind `models`.

Ollama keeps a content-addressed store: `manifests/<registry>/<namespace>/<model>/<tag>` is a JSON
manifest whose layers name blobs by digest; the layer with media type `application/vnd.ollama.image.model`
is the GGUF, stored as `blobs/sha256-<hex>`. Other layers change what Ollama runs around it (an adapter,
a TEMPLATE, a SYSTEM prompt, a vision projector): each is refused or said (`ollama_student`). A bare name is `registry.ollama.ai/library/<name>`, a
`user/name` lives under namespace `user`, and `host/ns/name` under registry `host`. The store is
`OLLAMA_MODELS` if set, else `~/.ollama/models`, else the Linux service's `/usr/share/ollama/.ollama/models`.

LM Studio keeps Hugging Face's layout: `<models>/<publisher>/<model>/<file>.gguf`, where the models
folder is the one its settings name (`downloadsFolder`), else `~/.lmstudio/models` (the home may be moved
by `~/.lmstudio-home-pointer`), else the pre-0.3 `~/.cache/lm-studio/models`. A folder may hold several
quantizations (some in subfolders), a model split into shards, and a vision projector (`mmproj*`), which
is never a student.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .gguf_files import first_shard, gguf_header

OLLAMA_PREFIX, LMSTUDIO_PREFIX = "ollama:", "lmstudio:"
OLLAMA_LAYER = "application/vnd.ollama.image."  # + model, template, system, params, projector, adapter, ...
OLLAMA_MODEL_LAYER = OLLAMA_LAYER + "model"
OLLAMA_REGISTRY, OLLAMA_NAMESPACE = "registry.ollama.ai", "library"


def is_local_name(model: str | Path) -> bool:
    return str(model).startswith((OLLAMA_PREFIX, LMSTUDIO_PREFIX))


def resolve_local_name(model: str) -> Path:
    """The GGUF file an `ollama:` or `lmstudio:` name stands for (one error line when it cannot be found)."""
    if model.startswith(OLLAMA_PREFIX):
        return resolve_ollama(model[len(OLLAMA_PREFIX):])
    return resolve_lmstudio(model[len(LMSTUDIO_PREFIX):])


# --- Ollama ---------------------------------------------------------------------------------------

def ollama_stores() -> list[Path]:
    """Where Ollama may keep its models, in the order Ollama itself looks."""
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def _ollama_parts(name: str) -> tuple[str, str, str, str]:
    """`[host/][namespace/]model[:tag]` -> (registry, namespace, model, tag)."""
    path, tag = name.rsplit(":", 1) if ":" in name.rsplit("/", 1)[-1] else (name, "")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 3:
        raise UserError(f"ollama:{name}: expected ollama:NAME[:TAG], ollama:USER/NAME[:TAG] or ollama:HOST/USER/NAME[:TAG]")
    registry = parts[0] if len(parts) == 3 else OLLAMA_REGISTRY
    namespace = parts[-2] if len(parts) >= 2 else OLLAMA_NAMESPACE
    return registry, namespace, parts[-1], tag or "latest"


def _ollama_display(registry: str, namespace: str, model: str, tag: str) -> str:
    """The name as `ollama list` shows it."""
    prefix = "" if registry == OLLAMA_REGISTRY else f"{registry}/"
    prefix += "" if registry == OLLAMA_REGISTRY and namespace == OLLAMA_NAMESPACE else f"{namespace}/"
    return f"{prefix}{model}:{tag}"


def resolve_ollama(name: str) -> Path:
    registry, namespace, model, tag = _ollama_parts(name)
    unreadable = []
    for store in ollama_stores():
        problem = store_problem(store, "manifests")
        if problem:
            unreadable.append(problem)
            continue
        manifest = store / "manifests" / registry / namespace / model / tag
        if manifest.is_file():
            return ollama_student(f"{OLLAMA_PREFIX}{name}", read_manifest(store, manifest))
    if unreadable:
        raise UserError(f"ollama:{name}: {'; '.join(unreadable)}: run as a user that can read it (the Linux "
                        "service's store belongs to the user ollama), or set OLLAMA_MODELS to a copy you can read")
    known = sorted(m.name for m in list_ollama())
    where = ", ".join(str(s) for s in ollama_stores())
    raise UserError(f"ollama:{name} not found in {where}; " + (f"Ollama models here: {', '.join(known)}" if known
                                                              else "no Ollama models found (ollama pull NAME first)"))


def store_problem(store: Path, *inner: str) -> str:
    """'' when `store` is absent or can be listed (with its `inner` folder); else why it cannot be read.

    A store that exists but cannot be listed (permissions: the Linux service's Ollama store is the user
    ollama's) must be said as such, not as "not found"; `Path.is_file` would even raise inside it."""
    try:
        if not os.path.lexists(store):
            return ""
        os.scandir(store).close()
        if inner and os.path.isdir(store.joinpath(*inner)):
            os.scandir(store.joinpath(*inner)).close()
    except OSError as exc:
        return f"cannot read {store} ({exc.strerror or exc.__class__.__name__})"
    return ""


@dataclass(frozen=True)
class OllamaManifest:
    """What one manifest puts together: the GGUF blob and the layers Ollama applies around it."""

    path: Path  # the manifest
    blob: Path  # the model layer's GGUF
    template: str | None = None  # the TEMPLATE layer's text (Go template), when there is one
    system: bool = False  # a SYSTEM prompt layer
    projector: bool = False  # a separate vision projector layer (LLaVA-style)
    adapters: int = 0  # LoRA adapter layers (Modelfile ADAPTER)


def read_manifest(store: Path, manifest: Path) -> OllamaManifest:
    """The manifest's layers, checked rather than trusted: any other shape is a user error naming it (a
    list where objects belong must not end as an internal error)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest}: not a readable Ollama manifest ({exc.__class__.__name__})") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise UserError(f"{manifest}: not a readable Ollama manifest ('layers' is not a list of objects); "
                        "ollama pull the model again")

    def blobs(kind: str) -> list[Path]:
        found = []
        for layer in layers:
            if layer.get("mediaType") != OLLAMA_LAYER + kind:
                continue
            digest = layer.get("digest")
            if not isinstance(digest, str) or not digest.strip():
                raise UserError(f"{manifest}: its {kind} layer has no digest; ollama pull the model again")
            found.append(store / "blobs" / digest.replace(":", "-", 1))
        return found

    models = blobs("model")
    if not models:
        raise UserError(f"{manifest}: the manifest has no model layer ({OLLAMA_MODEL_LAYER})")
    if not models[0].is_file():
        raise UserError(f"{manifest}: its model blob {models[0]} is missing (ollama pull it again)")
    template = None
    for path in blobs("template")[-1:]:  # the last TEMPLATE wins, as in Ollama
        try:
            template = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{manifest}: its template blob {path} cannot be read ({exc.__class__.__name__}); "
                            "ollama pull the model again") from None
    return OllamaManifest(manifest, models[0], template, bool(blobs("system")), bool(blobs("projector")),
                          len(blobs("adapter")))


def ollama_student(name: str, entry: OllamaManifest) -> Path:
    """The GGUF that `name` stands for, refused when Ollama would run a different model from it: an
    adapter applied on top, or a TEMPLATE whose chat format the GGUF's own template does not write
    (prompts are rendered with the GGUF's template, so the student would learn another format)."""
    if entry.adapters:
        raise UserError(f"{name} applies a LoRA adapter (Modelfile ADAPTER) on top of its base weights; selfguide "
                        "would sample and train the base alone, a different model. Merge the adapter into a GGUF "
                        "(llama.cpp's llama-export-lora) and give that file, or name the base model")
    differs = template_difference(entry.template, entry.blob) if entry.template is not None else ""
    if differs:
        raise UserError(f"{name} has its own TEMPLATE ({differs}); selfguide renders prompts with the chat template "
                        "inside the GGUF, so it would sample and train another format than Ollama runs. Name a "
                        "model without a custom TEMPLATE, or give a GGUF whose tokenizer.chat_template is the one "
                        "you want")
    return entry.blob


_MARKER = re.compile(r"<[^<>\s]{1,40}>|\[/?[A-Za-z_]{2,20}\]")


def template_difference(ollama_template: str, gguf: Path) -> str:
    """Why an Ollama TEMPLATE is not the chat format of the GGUF's own template, in words ('' when it is).

    Go and Jinja templates cannot be compared as text, so the turn markers are: the vocabulary's control
    tokens (`<|im_start|>`, `<start_of_turn>`, `[INST]`) that each template writes. A library model's
    TEMPLATE writes the markers of the chat template it came with; a custom one writes others, or none."""
    try:
        header = gguf_header(gguf, ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.chat_template"))
    except UserError:
        return ""  # the GGUF itself is refused where it is opened, in its own words
    tokens = header.values.get("tokenizer.ggml.tokens") or []
    types = header.values.get("tokenizer.ggml.token_type") or []
    control = {str(t) for t, kind in zip(tokens, types, strict=False) if int(kind) in (3, 4)}  # CONTROL, USER_DEFINED

    def markers(text: str) -> set[str]:
        return {m for m in _MARKER.findall(text) if m in control}

    theirs = markers(re.sub(r"\{\{.*?\}\}", " ", ollama_template, flags=re.S))  # literal text only
    own_template = header.values.get("tokenizer.chat_template")
    ours = markers(str(own_template)) if own_template else set()
    if not own_template:
        return (f"it writes {', '.join(sorted(theirs))} while the GGUF has no chat template, so prompts would be "
                "plain text") if theirs else ""
    if ours and not theirs:
        return f"it writes none of the turn markers of the GGUF's own template ({', '.join(sorted(ours))})"
    extra = sorted(theirs - ours)
    return f"it writes {', '.join(extra)}, which the GGUF's own template never writes" if extra else ""


@dataclass(frozen=True)
class LocalModel:
    name: str  # what --model takes
    path: Path | None  # the GGUF; None when it cannot be a student (`problem` says why)
    problem: str = ""
    notes: tuple[str, ...] = ()  # what is not used (a vision projector, a SYSTEM prompt), in words


def list_ollama() -> list[LocalModel]:
    found = []
    for store in ollama_stores():
        root = store / "manifests"
        if store_problem(store, "manifests") or not root.is_dir():
            continue
        for manifest in sorted(root.glob("*/*/*/*")):
            if not manifest.is_file():
                continue
            registry, namespace, model, tag = manifest.relative_to(root).parts
            name = OLLAMA_PREFIX + _ollama_display(registry, namespace, model, tag)
            try:
                entry = read_manifest(store, manifest)
                notes = (("its vision projector is not used (text only)",) * entry.projector
                         + ("its SYSTEM prompt is not used",) * entry.system)
                found.append(LocalModel(name, ollama_student(name, entry), notes=notes))
            except UserError as exc:
                found.append(LocalModel(name, None, str(exc)))
    return found


# --- LM Studio ------------------------------------------------------------------------------------

def lmstudio_stores() -> list[Path]:
    """LM Studio's models folder candidates: the one its settings name, the current default (under a
    home the pointer file may move), the pre-0.3 default."""
    home = Path.home() / ".lmstudio"
    pointer = Path.home() / ".lmstudio-home-pointer"
    try:  # LM Studio's own files are read as hints: one it cannot have meant is passed over
        moved = pointer.read_text(encoding="utf-8", errors="replace").strip() if pointer.is_file() else ""
    except OSError:
        moved = ""
    home = Path(moved).expanduser() if moved else home
    stores = []
    try:
        settings = json.loads((home / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = None
    folder = settings.get("downloadsFolder") if isinstance(settings, dict) else None
    if isinstance(folder, str) and folder.strip():
        stores.append(Path(folder).expanduser())
    stores += [home / "models", Path.home() / ".cache" / "lm-studio" / "models"]
    return list(dict.fromkeys(stores))


def _is_projector(path: Path) -> bool:
    return path.name.lower().startswith("mmproj")


def resolve_lmstudio(name: str) -> Path:
    """`PUBLISHER/NAME` (its only student), or `PUBLISHER/NAME/FILE` where FILE may lie in a subfolder
    (`PUBLISHER/NAME/Q4_K_M/file.gguf`) or be a subfolder holding one student."""
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2 or ".." in parts:
        raise UserError(f"lmstudio:{name}: expected lmstudio:PUBLISHER/NAME or lmstudio:PUBLISHER/NAME/FILE")
    unreadable = []
    for store in lmstudio_stores():
        problem = store_problem(store)
        if problem:
            unreadable.append(problem)
            continue
        folder = store / parts[0] / parts[1]
        if not folder.is_dir():
            continue
        target = folder.joinpath(*parts[2:])
        if target.is_file() and _is_projector(target):
            raise UserError(f"lmstudio:{name} is a vision projector, not a language model")
        if target.is_file():
            return first_shard(target)
        files = _lmstudio_ggufs(target) if target.is_dir() else []
        if len(files) == 1:
            return files[0]
        there = _lmstudio_ggufs(folder)
        if not there:
            raise UserError(f"lmstudio:{name}: {folder} holds no GGUF model")
        if target != folder and not files:
            raise UserError(f"lmstudio:{name}: no file {'/'.join(parts[2:])} in {folder} (there: "
                            f"{', '.join(str(p.relative_to(folder)) for p in there)})")
        raise UserError(f"lmstudio:{name} has {len(files)} models; name one: "
                        + ", ".join(_lmstudio_name(folder, p) for p in files))
    if unreadable:
        raise UserError(f"lmstudio:{name}: {'; '.join(unreadable)}: run as a user that can read it")
    known = sorted(m.name for m in list_lmstudio())
    raise UserError(f"lmstudio:{name} not found in {', '.join(str(s) for s in lmstudio_stores())}; "
                    + (f"LM Studio models here: {', '.join(known)}" if known else "no LM Studio models found"))


def _lmstudio_ggufs(folder: Path) -> list[Path]:
    """The students under a model folder, subfolders included (some repositories keep one folder per
    quantization): every GGUF except vision projectors, a split model once, as its first shard."""
    files = sorted(p for p in folder.rglob("*.gguf") if p.is_file() and not _is_projector(p))
    return [p for p in files if first_shard(p) == p]


def _lmstudio_name(folder: Path, path: Path) -> str:
    return f"{LMSTUDIO_PREFIX}{folder.parent.name}/{folder.name}/{path.relative_to(folder).as_posix()}"


def list_lmstudio() -> list[LocalModel]:
    found = []
    for store in lmstudio_stores():
        if store_problem(store) or not store.is_dir():
            continue
        for folder in sorted(store.glob("*/*")):
            if folder.is_dir():
                found += [LocalModel(_lmstudio_name(folder, p), p) for p in _lmstudio_ggufs(folder)]
    return found


def unreadable_stores(stores: list[Path]) -> list[str]:
    """The stores that exist but cannot be read, each with why (for `models`)."""
    return [problem for problem in map(store_problem, stores) if problem]
