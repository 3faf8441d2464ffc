"""Per-field Zarr v3 codec chains, chosen by measurement on realistic content (docs/cache-format.md).

Only codecs from the Zarr v3 core spec are used (transpose, bytes, blosc, crc32c) so any v3 reader
can open the arrays. Every chain ends with crc32c: a corrupted chunk fails loudly instead of decoding
into wrong soft labels.
"""

from __future__ import annotations

from typing import Any

from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, TransposeCodec

# zstd level 5: levels 7-9 save ~1.5 B/view (of ~48) but compress 20-50x slower (0.7 s per 10k-view unit
# on one core), which would make export and a CPU-bound writer thread slow. Decoding speed is the same.
_LEVEL = 5


def _blosc(shuffle: BloscShuffle) -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=_LEVEL, shuffle=shuffle)


def codec_kwargs(name: str, ndim: int) -> dict[str, Any]:
    """``filters``/``compressors`` arguments of zarr.create_array for field ``name``."""
    if name == "digest":  # 8 random bytes per view: compressing only costs time
        return {"filters": (), "compressors": (Crc32cCodec(),)}
    if name == "params":
        # Column-major: each record field (crop top, op word, magnitude...) becomes one contiguous run.
        transpose = TransposeCodec(order=(1, 0))
        return {"filters": (transpose,), "compressors": (_blosc(BloscShuffle.shuffle), Crc32cCodec())}
    shuffle = {
        "sample_id": BloscShuffle.noshuffle,  # repeats of a sample sit a few slots apart: zstd finds them
        "repeat": BloscShuffle.noshuffle,
        "topk_logprob": BloscShuffle.shuffle,  # sign/exponent bytes apart from the noisy mantissa bytes
        "topk_class": BloscShuffle.bitshuffle,  # class ids < 1000 leave most high bits zero
        "tail_class": BloscShuffle.bitshuffle,
        "tail_code": BloscShuffle.bitshuffle,  # 4-bit codes in bytes: the high bit planes are free
        "draw_gap": BloscShuffle.bitshuffle,  # gaps between sorted draws: mostly 0 and small numbers
    }[name]
    return {"filters": (), "compressors": (_blosc(shuffle), Crc32cCodec())}
