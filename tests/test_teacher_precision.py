"""The teacher's precision: how the build runs it, what the manifest records, what the key makes of it."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from kdcache.models.precision import TeacherForward, parse_precision, precision_name
from kdcache.registry.key import cache_key
from kdcache.teacher_cache.store.errors import ManifestError
from kdcache.teacher_cache.store.layers import layer_id
from kdcache.teacher_cache.store.manifest import TEACHER_PRECISIONS, Manifest
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.testing.synthetic_cache import synthetic_manifest


def with_precision(m: Manifest, precision: str | None) -> Manifest:
    teacher = {k: v for k, v in m.teacher.items() if k != "precision"}
    if precision is not None:
        teacher["precision"] = precision
    return dataclasses.replace(m, teacher=teacher)


def test_auto_is_fp16_with_fp32_head_on_cuda_and_fp32_on_cpu():
    model = timm.create_model("test_resnet", num_classes=3)
    assert BuildConfig("t", "d", device="cuda").precision(model) == "fp16-autocast+fp32-head"
    assert BuildConfig("t", "d", device="cuda", amp="bf16").precision(model) == "bf16-autocast+fp32-head"
    assert BuildConfig("t", "d", device="cuda", amp="off").precision(model) == "fp32"
    assert BuildConfig("t", "d").precision(model) == "fp32"


def test_names_round_trip_and_the_manifest_knows_them_all():
    for dtype in (None, torch.float16, torch.bfloat16):
        for head in (False, True) if dtype is not None else (False,):
            name = precision_name(dtype, head)
            assert name in TEACHER_PRECISIONS
            assert parse_precision(name) == (dtype, head)


def test_head_runs_in_fp32_on_autocast_features():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    seen = {}
    model.get_classifier().register_forward_hook(lambda m, i, o: seen.update(inp=i[0].dtype, out=o.dtype))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        out = TeacherForward(model, torch.bfloat16, True, "cpu")(x)
        assert seen == {"inp": torch.float32, "out": torch.float32}
        whole = TeacherForward(model, torch.bfloat16, False, "cpu")(x)
        assert seen["out"] == torch.bfloat16  # without the split the head is under autocast too
    assert out.dtype == whole.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1)


def test_precision_names_its_own_layer_and_old_caches_still_read():
    """The registry key covers the views alone (docs/registry.md); the precision makes other labels, so a
    teacher at another precision is another layer of the same views."""
    old = with_precision(synthetic_manifest(), None)
    fp32 = with_precision(old, "fp32")
    fp16 = with_precision(old, "fp16-autocast+fp32-head")
    assert len({cache_key(old), cache_key(fp32), cache_key(fp16)}) == 1
    assert len({layer_id(m.teacher) for m in (old, fp32, fp16)}) == 3
    assert Manifest.from_json(old.to_json()).teacher.get("precision") is None  # still reads


def test_manifest_refuses_an_unknown_precision():
    m = synthetic_manifest()
    with pytest.raises(ManifestError, match=r"teacher\.precision"):
        with_precision(m, "int8")
