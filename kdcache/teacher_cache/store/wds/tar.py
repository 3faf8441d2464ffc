"""Deterministic tar shards holding one work unit: a meta.json member plus one .npy member per field.

Members are written in a fixed order with mtime 0, uid/gid 0 and empty owner names, so identical
content gives identical bytes. Each member's CRC32 is recorded in meta.json, which lets a reader
name the shard whose bytes were damaged.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from typing import Any

import numpy as np

from kdcache.teacher_cache.store.fields import FIELDS, UnitData
from kdcache.teacher_cache.store.labels import decode_unit, label_fields

BLOCK = 512


class ShardFormatError(ValueError):
    """The shard's bytes do not form a valid unit; the caller adds the file name."""


def member_key(epoch: int, unit: int) -> str:
    # webdataset groups members by the part of the name before the first dot: one sample per unit.
    return f"e{epoch:05d}u{unit:06d}"


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def build_shard(
    epoch: int, unit: int, slots: tuple[int, int], stored: dict[str, np.ndarray], format_version: int
) -> bytes:
    """The shard of one unit; ``stored``: its stored arrays in storage order (store.labels.encode_unit)."""
    key = member_key(epoch, unit)
    payloads = {name: npy_bytes(arr) for name, arr in stored.items()}
    meta = {
        "format_version": format_version,
        "epoch": epoch,
        "unit": unit,
        "slots": list(slots),
        "crc32": {name: zlib.crc32(b) for name, b in payloads.items()},
    }
    members = [(f"{key}.meta.json", json.dumps(meta, sort_keys=True).encode())]
    members += [(f"{key}.{name}.npy", payloads[name]) for name in payloads]
    out = bytearray()
    for name, payload in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        out += info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        out += payload + bytes(-len(payload) % BLOCK)
    out += bytes(2 * BLOCK)  # end-of-archive marker (no padding to tarfile's 10 KiB record size)
    return bytes(out)


def decode_members(
    members: dict[str, bytes], epoch: int | None = None, unit: int | None = None
) -> tuple[dict[str, Any], UnitData]:
    """(meta, data) from a unit's members keyed by extension ('meta.json', 'sample_id.npy', ...)."""
    try:
        meta: dict[str, Any] = json.loads(members["meta.json"])
        crcs = meta["crc32"]
    except KeyError as e:
        raise ShardFormatError(f"member {e} missing") from None
    except ValueError as e:
        raise ShardFormatError(f"meta.json is not valid JSON ({e})") from None
    if (epoch is not None and meta.get("epoch") != epoch) or (unit is not None and meta.get("unit") != unit):
        raise ShardFormatError(f"holds epoch {meta.get('epoch')} unit {meta.get('unit')}, expected {epoch}/{unit}")
    arrays = {}
    version = meta.get("format_version", 1)
    if version not in (1, 2, 3):
        raise ShardFormatError(f"meta.json names format version {version!r}, which this kdcache does not read")
    names = FIELDS + label_fields(version)
    for name in names:
        payload = members.get(f"{name}.npy")
        if payload is None:
            raise ShardFormatError(f"member {name}.npy missing")
        if zlib.crc32(payload) != crcs.get(name):
            raise ShardFormatError(f"member {name}.npy fails its CRC32 check")
        try:
            arrays[name] = np.lib.format.read_array(io.BytesIO(payload), allow_pickle=False)
        except ValueError as e:
            raise ShardFormatError(f"member {name}.npy is not a valid .npy ({e})") from None
    try:
        return meta, decode_unit(arrays)
    except (TypeError, ValueError) as e:
        raise ShardFormatError(str(e)) from None


def read_shard(raw: bytes) -> dict[str, bytes]:
    """Members of a shard keyed by extension (the part of the name after the key)."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                f = tar.extractfile(info)
                if f is None:
                    continue
                payload = f.read()
                if len(payload) != info.size:
                    raise ShardFormatError(f"member {info.name} truncated ({len(payload)} of {info.size} bytes)")
                out[info.name.split(".", 1)[1] if "." in info.name else info.name] = payload
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardFormatError(f"not a readable tar ({e})") from None
    return out
