"""Run directory: atomic writes, JSON Lines, content hashes, and the stage cache behind resume.

Every file a stage produces is written to a temporary name in the same folder and renamed into
place, so a crash never leaves a half-written artifact under its final name. A stage whose recorded
inputs' hashes match and whose outputs all exist is skipped on re-run (contract §7).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

BIG_FILE = 64 * 1024 * 1024  # above this, hash size + head + tail instead of every byte
RUN_FORMAT = 2  # layout version of a run directory; bump when an old run cannot be resumed as is
DISK_MARGIN = 64 * 1024 * 1024  # kept free beyond an estimate, for logs, manifests and rounding
# Written into an imported checkpoint (models.import_gguf): how it was made (timings included), not what
# it is, so a directory's content hash leaves it out. Otherwise importing the same GGUF again, e.g. from
# another working directory, re-keys every stage trained on it.
IMPORT_RECORD = "selfguide_import.json"


def ensure_free_space(where: str | Path, needed: int, what: str) -> None:
    """Refuse a large write up front instead of dying half-way through it with ENOSPC."""
    where = Path(where)
    probe = where if where.exists() else next((p for p in where.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN:
        raise UserError(f"not enough disk space for {what} in {probe}: needs about {_gib(needed + DISK_MARGIN)}, "
                        f"{_gib(free)} free")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give a finished artifact the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_cache_record(path: str | Path) -> dict[str, Any] | None:
    """A cached check's JSON record, or None when it is missing, unreadable or not a JSON object
    (a cache is only a shortcut: the check runs again)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_text(path: str | Path, what: str = "file") -> str:
    """A user-named file's text, or a one-line error saying why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{what} is a directory, not a file: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None


def output_dir(path: str | Path, what: str = "output directory") -> Path:
    """A directory we are about to write into: refused up front (one error line) when it, or a folder
    above it, is an existing file."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{what} {path}: {blocker} is a file, not a directory")
    return path


def output_file(path: str | Path, what: str = "output file") -> Path:
    """A file we are about to write: refused up front when it is a directory or a folder above it is a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    output_dir(path.parent, f"{what} {path}: folder")
    return path


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line. Splits at "\n" only: `str.splitlines` would also
    split inside a record at U+2028, U+2029, U+0085 or form feeds, which JSON strings may hold raw."""
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, line


def read_jsonl(path: str | Path, what: str = "JSON Lines file", required: dict[str, type] | None = None) -> list[dict[str, Any]]:
    """Every record of a JSON Lines file; a bad line, or a record lacking a `required` field of its
    type, is one error naming the file and line."""
    rows = []
    for n, line in jsonl_lines(read_text(path, what)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for key, kind in (required or {}).items():
            if not isinstance(row.get(key), kind):
                raise UserError(f"{path}:{n}: needs a {kind.__name__} field {key!r}")
        rows.append(row)
    return rows


@contextmanager
def atomic_dir(path: str | Path):
    """Build a directory under a temporary name; it appears at `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        publish_mode(tmp, directory=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


RECIPE = "recipe.json"  # what a locally built model was made from; written last


def build_once(out: str | Path, recipe: dict[str, Any], build: Callable[[Path], dict[str, Any]],
               log: Callable[[str], None], what: str) -> Path:
    """Build a model directory once per recipe: reuse `out` when its recorded recipe matches, else run
    `build(tmp)` (which returns stats) in a temporary directory that replaces `out` only when done."""
    out = Path(out)
    marker = out / RECIPE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == recipe:
        log(f"{what} already built at {out}")
        return out
    with atomic_dir(out) as tmp:
        stats = build(tmp)
        (tmp / "build_stats.json").write_text(json.dumps(stats), encoding="utf-8")
        (tmp / RECIPE).write_text(json.dumps(recipe), encoding="utf-8")
    return out


def disk_bytes(path: str | Path) -> int:
    """Bytes a file or directory takes (apparent size of its files)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, in sorted order; an import
    record is left out, see IMPORT_RECORD)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != IMPORT_RECORD) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            if size <= BIG_FILE:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:  # multi-GB weights: size + first and last 4 MiB is a fingerprint, not a proof
                h.update(fh.read(4 << 20))
                fh.seek(-(4 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def value_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """manifest.json: per round and stage, status, inputs' hashes, outputs, timings, metrics."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"format": RUN_FORMAT, "stages": {}, "rounds": {}}
        if path.is_file():
            try:
                data = read_json(path)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError(f"{path} is not valid JSON: start over with --fresh (or another --run-dir)") from None
            found = data.get("format", RUN_FORMAT) if isinstance(data, dict) else None
            if found != RUN_FORMAT or not isinstance(data.get("stages"), dict):
                raise UserError(f"{path.parent} was written by an incompatible selfguide_lite (run format {found}, "
                                f"this version reads {RUN_FORMAT}): start over with --fresh (or another --run-dir)")
            self.data = data

    def save(self) -> None:
        write_json(self.path, self.data)

    # --- bounded disk: outputs deleted on purpose still count as present, by their recorded hash ------
    def _rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.path.parent.resolve()))

    def pruned_hash(self, path: Path) -> str | None:
        try:
            rec = self.data.get("pruned", {}).get(self._rel(path))
        except ValueError:  # outside the run directory: never pruned
            return None
        return rec["hash"] if rec else None

    def input_hash(self, path: Path) -> str:
        """A stage input's content hash: from the file, or from the record of a pruned one."""
        if not Path(path).exists() and (h := self.pruned_hash(path)) is not None:
            return h
        return file_hash(path)

    def prune(self, path: Path, round_k: int) -> int:
        """Delete a finished output the run no longer needs, recording its hash first (so a kill between
        the two leaves a recorded file, never an unrecorded gap). Returns the bytes freed."""
        path = Path(path)
        if not path.exists():
            return 0
        size = disk_bytes(path)
        self.data.setdefault("pruned", {})[self._rel(path)] = {"hash": file_hash(path), "bytes": size, "round": round_k}
        self.save()
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return size

    def run_stage(
        self,
        key: str,
        inputs: dict[str, str],
        outputs: list[Path],
        fn: Callable[[], dict[str, Any] | None],
        log: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """Run `fn` unless a finished record with the same inputs exists and its outputs are there."""
        rec = self.data["stages"].get(key)
        present = all(p.exists() or self.pruned_hash(p) is not None for p in outputs)
        if rec and rec.get("status") == "done" and rec.get("inputs") == inputs and present:
            log(f"[{key}] up to date, skipped")
            rec["skipped"] = True
            return rec
        self.data["stages"][key] = {"status": "running", "inputs": inputs, "started": time.time()}
        self.save()
        t0 = time.monotonic()
        try:
            info = fn() or {}
        except BaseException as exc:
            self.data["stages"][key].update(status="failed", error=f"{exc.__class__.__name__}: {exc}"[:500])
            self.save()
            raise
        rec = {
            "status": "done",
            "inputs": inputs,
            "outputs": [str(p.relative_to(self.path.parent)) for p in outputs],
            "seconds": round(time.monotonic() - t0, 2),
            **info,
        }
        self.data["stages"][key] = rec
        self.save()
        log(f"[{key}] done in {rec['seconds']:.0f}s")
        return rec
