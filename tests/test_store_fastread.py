"""The direct chunk decoder accepts exactly the codec chains it implements, and decodes them like zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, GzipCodec, TransposeCodec
from zarr.storage import LocalStore

from kdcache.teacher_cache.store.zarr.codecs import codec_kwargs
from kdcache.teacher_cache.store.zarr.fastread import fast_decoder


def make(tmp_path, data: np.ndarray, chunks, **codecs):
    store = LocalStore(tmp_path)
    arr = zarr.create_array(store, name="a", shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0, **codecs)
    arr[:] = data
    return json.loads((tmp_path / "a" / "zarr.json").read_text())


@pytest.mark.parametrize("name", ["sample_id", "repeat", "params", "digest", "topk_logprob", "topk_class"])
def test_every_kdcache_chain_decodes_like_zarr(tmp_path, name):
    g = np.random.default_rng(0)
    dtype = {"sample_id": np.int32, "repeat": np.uint8, "params": np.uint16, "digest": np.uint64}.get(name)
    shape = (10, 3) if name in ("params", "topk_logprob", "topk_class") else (10,)
    if name == "topk_logprob":
        data = -g.random(shape).astype(np.float16)
    elif name == "topk_class":
        data = g.integers(0, 1000, shape).astype(np.int16)
    else:
        data = g.integers(0, 200, shape).astype(dtype)
    meta = make(
        tmp_path, data, (4, *shape[1:]), chunk_key_encoding={"name": "default"}, **codec_kwargs(name, len(shape))
    )
    decode = fast_decoder(meta)
    assert decode is not None
    chunk = tmp_path / "a" / "c" / "1"  # chunk 1 = rows 4..7; 2-D arrays add the column chunk index
    chunk = chunk / "0" if len(shape) == 2 else chunk
    np.testing.assert_array_equal(decode(chunk.read_bytes()), data[4:8])
    with pytest.raises(ValueError, match="crc32c"):
        raw = chunk.read_bytes()
        decode(raw[:5] + bytes([raw[5] ^ 1]) + raw[6:])


def test_other_chains_fall_back_to_zarr(tmp_path):
    data = np.arange(20, dtype=np.int32)
    assert fast_decoder(make(tmp_path / "gz", data, (8,), compressors=(GzipCodec(),))) is None
    assert fast_decoder({"zarr_format": 2}) is None
    assert fast_decoder({"zarr_format": 3, "node_type": "array"}) is None
    blosc = BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.bitshuffle)
    meta = make(
        tmp_path / "t",
        np.arange(40, dtype=np.uint16).reshape(20, 2),
        (8, 2),
        filters=(TransposeCodec(order=(1, 0)),),
        compressors=(blosc, Crc32cCodec()),
    )
    assert fast_decoder(meta) is not None  # any blosc configuration decodes: the frame describes itself
