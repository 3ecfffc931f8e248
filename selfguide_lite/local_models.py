"""Models the user already has on disk: `ollama:NAME[:TAG]` and `lmstudio:PUBLISHER/NAME[/FILE]` names,
resolved to the GGUF file inside Ollama's or LM Studio's store, and the listing behind `models`.

Ollama keeps a content-addressed store: `manifests/<registry>/<namespace>/<model>/<tag>` is a JSON
manifest whose layers name blobs by digest; the layer with media type `application/vnd.ollama.image.model`
is the GGUF, stored as `blobs/sha256-<hex>`. A bare name is `registry.ollama.ai/library/<name>`, a
`user/name` lives under namespace `user`, and `host/ns/name` under registry `host`. The store is
`OLLAMA_MODELS` if set, else `~/.ollama/models`, else the Linux service's `/usr/share/ollama/.ollama/models`.

LM Studio keeps Hugging Face's layout: `<models>/<publisher>/<model>/<file>.gguf`, where the models
folder is the one its settings name (`downloadsFolder`), else `~/.lmstudio/models` (the home may be moved
by `~/.lmstudio-home-pointer`), else the pre-0.3 `~/.cache/lm-studio/models`. A folder may hold several
quantizations and a vision projector (`mmproj*`), which is never a student.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

OLLAMA_PREFIX, LMSTUDIO_PREFIX = "ollama:", "lmstudio:"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
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
    for store in ollama_stores():
        manifest = store / "manifests" / registry / namespace / model / tag
        if manifest.is_file():
            return _ollama_blob(store, manifest)
    known = sorted(m.name for m in list_ollama())
    where = ", ".join(str(s) for s in ollama_stores())
    raise UserError(f"ollama:{name} not found in {where}; " + (f"Ollama models here: {', '.join(known)}" if known
                                                              else "no Ollama models found (ollama pull NAME first)"))


def _ollama_blob(store: Path, manifest: Path) -> Path:
    """The GGUF blob a manifest names; a manifest of any other shape is a user error naming it (its
    JSON is checked, not trusted: a list where objects belong must not end as an internal error)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest}: not a readable Ollama manifest ({exc.__class__.__name__})") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise UserError(f"{manifest}: not a readable Ollama manifest ('layers' is not a list of objects); "
                        "ollama pull the model again")
    digests = [layer.get("digest") for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_LAYER]
    if not digests:
        raise UserError(f"{manifest}: the manifest has no model layer ({OLLAMA_MODEL_LAYER})")
    digest = digests[0]
    if not isinstance(digest, str) or not digest.strip():
        raise UserError(f"{manifest}: its model layer has no digest; ollama pull the model again")
    blob = store / "blobs" / digest.replace(":", "-", 1)
    if not blob.is_file():
        raise UserError(f"{manifest}: its model blob {blob} is missing (ollama pull it again)")
    return blob


@dataclass(frozen=True)
class LocalModel:
    name: str  # what --model takes
    path: Path | None  # the GGUF; None when it cannot be read (`problem` says why)
    problem: str = ""


def list_ollama() -> list[LocalModel]:
    found = []
    for store in ollama_stores():
        root = store / "manifests"
        for manifest in sorted(root.glob("*/*/*/*")) if root.is_dir() else []:
            if not manifest.is_file():
                continue
            registry, namespace, model, tag = manifest.relative_to(root).parts
            name = OLLAMA_PREFIX + _ollama_display(registry, namespace, model, tag)
            try:
                found.append(LocalModel(name, _ollama_blob(store, manifest)))
            except UserError as exc:
                found.append(LocalModel(name, None, str(exc)))
    return found


# --- LM Studio ------------------------------------------------------------------------------------

def lmstudio_stores() -> list[Path]:
    """LM Studio's models folder candidates: the one its settings name, the current default (under a
    home the pointer file may move), the pre-0.3 default."""
    home = Path.home() / ".lmstudio"
    pointer = Path.home() / ".lmstudio-home-pointer"
    if pointer.is_file():
        moved = pointer.read_text(encoding="utf-8", errors="replace").strip()
        home = Path(moved).expanduser() if moved else home
    stores = []
    settings = home / "settings.json"
    if settings.is_file():
        try:
            folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
        except ValueError:
            folder = None
        if folder:
            stores.append(Path(folder).expanduser())
    stores += [home / "models", Path.home() / ".cache" / "lm-studio" / "models"]
    return list(dict.fromkeys(stores))


def _is_projector(path: Path) -> bool:
    return path.name.lower().startswith("mmproj")


def resolve_lmstudio(name: str) -> Path:
    parts = [p for p in name.split("/") if p]
    if len(parts) not in (2, 3):
        raise UserError(f"lmstudio:{name}: expected lmstudio:PUBLISHER/NAME or lmstudio:PUBLISHER/NAME/FILE")
    for store in lmstudio_stores():
        folder = store / parts[0] / parts[1]
        if not folder.is_dir():
            continue
        if len(parts) == 3:
            path = folder / parts[2]
            if path.is_file() and _is_projector(path):
                raise UserError(f"lmstudio:{name} is a vision projector, not a language model")
            if path.is_file():
                return path
            raise UserError(f"lmstudio:{name}: no file {parts[2]} in {folder} (there: "
                            f"{', '.join(p.name for p in _lmstudio_ggufs(folder)) or 'no GGUF'})")
        files = _lmstudio_ggufs(folder)
        if len(files) == 1:
            return files[0]
        if not files:
            raise UserError(f"lmstudio:{name}: {folder} holds no GGUF model")
        raise UserError(f"lmstudio:{name} has {len(files)} files; name one: "
                        + ", ".join(f"lmstudio:{parts[0]}/{parts[1]}/{p.name}" for p in files))
    known = sorted(m.name for m in list_lmstudio())
    raise UserError(f"lmstudio:{name} not found in {', '.join(str(s) for s in lmstudio_stores())}; "
                    + (f"LM Studio models here: {', '.join(known)}" if known else "no LM Studio models found"))


def _lmstudio_ggufs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.gguf") if p.is_file() and not _is_projector(p))


def list_lmstudio() -> list[LocalModel]:
    found = []
    for store in lmstudio_stores():
        for folder in sorted(store.glob("*/*")) if store.is_dir() else []:
            if folder.is_dir():
                found += [LocalModel(f"{LMSTUDIO_PREFIX}{folder.parent.name}/{folder.name}/{p.name}", p)
                          for p in _lmstudio_ggufs(folder)]
    return found
