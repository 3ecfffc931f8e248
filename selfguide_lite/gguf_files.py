"""GGUF files on disk, without llama.cpp: a path that must be one, split models' shards, and a fast reader
of the header (metadata values and tensor names) for checks made on every resolution of a name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError


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
