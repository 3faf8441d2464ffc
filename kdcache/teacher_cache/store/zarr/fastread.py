"""Direct decoding of the chunk files kdcache writes, for loading whole epochs quickly.

zarr-python spends about 1 ms of Python/asyncio time per chunk; an ImageNet epoch has ~750 chunks,
so reading through zarr takes ~1 s where the decompression itself takes ~0.2 s. For the exact codec
chains kdcache writes (optional transpose, little-endian bytes, optional blosc, crc32c) this module
decodes chunk files itself. Any other chain (an array written by other tools) returns None and the
reader uses zarr. The result is checked against zarr's decoding in the conformance tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Decoder = Callable[[bytes], np.ndarray]


def fast_decoder(meta: dict[str, Any]) -> Decoder | None:
    """A chunk-file decoder for an array with metadata ``meta`` (its zarr.json), or None."""
    try:
        import google_crc32c
        from numcodecs import blosc
    except ImportError:
        return None
    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        grid = meta["chunk_grid"]
        if grid["name"] != "regular":
            return None
        chunk = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
        codecs = [(c["name"], c.get("configuration", {})) for c in meta["codecs"]]
    except (KeyError, TypeError, ValueError):
        return None
    order = tuple(range(len(chunk)))
    if codecs and codecs[0][0] == "transpose":
        order = tuple(codecs.pop(0)[1].get("order", ()))
        if sorted(order) != list(range(len(chunk))):
            return None
    if not codecs or codecs[0][0] != "bytes" or codecs[0][1].get("endian", "little") != "little":
        return None
    codecs.pop(0)
    use_blosc = bool(codecs) and codecs[0][0] == "blosc"
    if use_blosc:
        codecs.pop(0)
    use_crc = bool(codecs) and codecs[0][0] == "crc32c"
    if use_crc:
        codecs.pop(0)
    if codecs:
        return None
    stored_shape = tuple(chunk[i] for i in order)
    inverse = tuple(int(i) for i in np.argsort(order))
    nbytes = int(np.prod(chunk)) * dtype.itemsize

    def decode(raw: bytes) -> np.ndarray:
        body = raw
        if use_crc:
            body = raw[:-4]
            if len(raw) < 4 or google_crc32c.value(body) != int.from_bytes(raw[-4:], "little"):
                raise ValueError("crc32c checksum mismatch")
        if use_blosc:
            try:
                body = blosc.decompress(body)
            except Exception as e:  # numcodecs raises RuntimeError or ValueError on damaged frames
                raise ValueError(f"blosc cannot decompress it ({e})") from None
        if len(body) != nbytes:
            raise ValueError(f"decodes to {len(body)} bytes, expected {nbytes}")
        arr = np.frombuffer(body, dtype=dtype).reshape(stored_shape)
        return arr.transpose(inverse)

    return decode
