"""Checksums of what a trial writes, and the check that names what is damaged.

Every array chunk of a trial store ends in a CRC-32C of its compressed bytes (Zarr v3's `crc32c` codec, after
zarr's default zstd): a reader recomputes it, so a flipped or overwritten byte is found wherever it lies. The
metadata documents (`zarr.json`) carry no checksum; they are JSON that must parse as the schema says. Checkpoints
carry a checksum of their own (ihmodel.checkpoint). Stores written before checksums verify their metadata only.

`store_damage` reads the files directly (no zarr, no decompression: a CRC over the bytes as stored), so checking
a finished sweep costs one read of its bytes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

import google_crc32c
from zarr.codecs import Crc32cCodec, ZstdCodec

# What every chunk of a store goes through after its bytes: zarr's default compression, then the checksum.
CHUNK_COMPRESSORS = (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def chunk_intact(raw: bytes) -> bool:
    """A chunk as stored by the crc32c codec: its bytes, then their CRC-32C (4 bytes, little-endian)."""
    return len(raw) >= 4 and google_crc32c.value(raw[:-4]) == int.from_bytes(raw[-4:], "little")


def checksummed(codecs: list[dict]) -> bool:
    """Whether an array's codec list (its zarr.json `codecs`) ends in the crc32c codec."""
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def store_damage(path: str | Path, rows: dict[str, int] | None = None,
                 skip_row_dims: Collection[str] = ()) -> list[str]:
    """What is damaged in the store at `path`, one phrase each (empty: intact).

    `rows` ({"step": n, "eval_step": m}) limits the check to the chunks holding an array's first rows along those
    dims (what a checkpoint needs); arrays along `skip_row_dims` are not read (a reader checks those chunks as it
    reads them)."""
    root = Path(path)
    damage = []
    try:
        group = _load_json(root / "zarr.json")
        if group.get("zarr_format") != 3 or group.get("node_type") != "group":
            damage.append("zarr.json is not a Zarr v3 group")
    except (OSError, ValueError) as error:
        damage.append(f"zarr.json unreadable ({_reason(error)})")
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir():
            damage += _array_damage(Path(entry.path), rows or {}, skip_row_dims)
    return damage


def _array_damage(array: Path, rows: dict[str, int], skip_row_dims: Collection[str]) -> list[str]:
    name = array.name
    try:
        meta = _load_json(array / "zarr.json")
        shape = tuple(meta["shape"])
        chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        dims = tuple(meta.get("dimension_names") or ())
        codecs = meta["codecs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"array {name!r}: zarr.json unreadable ({_reason(error)})"]
    if (dims and dims[0] in skip_row_dims) or not checksummed(codecs):
        return []
    limit = list(shape)
    if dims[:1] and dims[0] in rows:
        limit[0] = min(limit[0], rows[dims[0]])
    grid = [-(-n // c) for n, c in zip(limit, chunks)]  # chunks along each dim holding the rows checked
    damage = []
    for key, file in _chunk_files(array):
        if len(key) != len(grid) or any(i >= n for i, n in zip(key, grid)):
            continue  # past the rows checked (or a leftover outside the array)
        try:
            intact = chunk_intact(file.read_bytes())
        except OSError as error:
            damage.append(f"array {name!r} chunk {_chunk_name(key)} unreadable ({_reason(error)})")
            continue
        if not intact:
            damage.append(f"array {name!r} chunk {_chunk_name(key)} fails its checksum")
    return damage


def _chunk_files(array: Path):
    """(chunk index, file) of every chunk stored under the default key encoding: `c` (0-d) or `c/i/j/...`."""
    top = array / "c"
    if top.is_file():
        yield (), top
        return
    for folder, _, files in os.walk(top):
        parts = Path(folder).relative_to(top).parts
        for file in files:
            try:
                yield tuple(int(p) for p in (*parts, file)), Path(folder) / file
            except ValueError:
                continue  # not a chunk (a temporary file of an interrupted write)


def _chunk_name(key: tuple[int, ...]) -> str:
    return "/".join(["c", *map(str, key)])


def _load_json(path: Path) -> dict:
    with open(path, "rb") as handle:
        value = json.loads(handle.read())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
