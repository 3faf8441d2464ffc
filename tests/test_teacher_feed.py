"""Feeding the teacher and the student: batches rendered whole (decode once per batch), the bytes of a
build pinned, and the report of which side (views or model) is the bottleneck."""

from __future__ import annotations

from pathlib import Path

import pytest
from build_helpers import cache_info, run_cli, three_class_setup, tiny_build

# Regression pin: the content digest of `tiny_build(..., "--epochs", "2")` over three_class_setup(per_class=9)
# (27 images -> 26 slots/epoch, seed 0, unit size 6, batch size 4: units of 3 pairs cut into batches of 2 + 1
# pairs). Obtained with `kdcache info --json` from the code of main at a688dde, before the build loop rendered
# through ViewEngine.render_batch (one PairDataset-style item per pair, collate_pairs). The batch API must
# write exactly the same bytes. It depends on the seeded random init of timm's test_resnet and on Pillow's
# JPEG encoder and resize: a torch/timm/Pillow upgrade may move it; then re-pin from a build with the
# old loop, never from the new one alone.
PINNED_DIGEST = "aaba0bdc7bc92f91b723666671a109b615db45a7dd055d98554deb16db2098b6"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("feed")
    data, weights = three_class_setup(root, per_class=9)
    return root, data, weights


@pytest.mark.parametrize("workers", ["0", "2"])
def test_build_bytes_are_pinned(setup, workers):
    root, data, weights = setup
    out = root / f"pin{workers}"
    run_cli(*tiny_build(data, weights, out, "--epochs", "2", "--workers", workers))
    assert cache_info(out)["content_digest"] == PINNED_DIGEST
