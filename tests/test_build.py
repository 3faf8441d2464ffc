"""`kdcache build`: deterministic, resumable, distributed, and faithful to the teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from build_helpers import (
    cache_info,
    kill_once_writing,
    run_cli,
    run_torchrun,
    three_class_setup,
    tiny_build,
    write_dataset,
    write_teacher,
)

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    data, weights = three_class_setup(root, per_class=9)  # 27 images -> 26 slots/epoch
    return root, data, weights


def build_args(data: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return tiny_build(data, weights, out, *extra)


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted single-process build (2 epochs) that other tests compare against."""
    root, data, weights = setup
    out = root / "ref"
    run_cli(*build_args(data, weights, out, "--epochs", "2"))
    return out, cache_info(out)


def test_build_is_reproducible_and_rerun_is_a_no_op(setup, reference, tmp_path):
    _, data, weights = setup
    ref_out, ref = reference
    assert ref["views"] == 2 * 26 and ref["epochs_complete"] == [0, 1]
    out = tmp_path / "again"
    run_cli(*build_args(data, weights, out, "--epochs", "2"))
    assert cache_info(out)["content_digest"] == ref["content_digest"]
    # Same command on a finished cache: nothing to do, content unchanged.
    proc = run_cli(*build_args(data, weights, ref_out, "--epochs", "2"))
    assert cache_info(ref_out)["content_digest"] == ref["content_digest"]
    assert "already complete" in proc.stderr


def test_extending_epochs_keeps_the_shared_epochs(setup, reference, tmp_path):
    _, data, weights = setup
    out = tmp_path / "grow"
    run_cli(*build_args(data, weights, out, "--epochs", "1"))
    one = cache_info(out)
    assert one["epochs_complete"] == [0]
    run_cli(*build_args(data, weights, out, "--epochs", "2"))
    assert cache_info(out)["content_digest"] == reference[1]["content_digest"]


def test_changed_arguments_are_refused_with_the_differences(setup, reference):
    _, data, weights = setup
    ref_out, ref = reference
    proc = run_cli(*build_args(data, weights, ref_out, "--epochs", "2", "--seed", "5", "--topk", "2"), check=False)
    assert proc.returncode != 0
    assert "seed" in proc.stderr and "topk" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert cache_info(ref_out)["content_digest"] == ref["content_digest"]


def test_zarr_and_wds_hold_the_same_content(setup, reference, tmp_path):
    _, data, weights = setup
    out = tmp_path / "wds"
    run_cli(*build_args(data, weights, out, "--epochs", "2", "--format", "wds"))
    info = cache_info(out)
    assert info["backend"] == "wds"
    assert info["content_digest"] == reference[1]["content_digest"]


def test_two_process_torchrun_gives_the_same_digest(setup, reference, tmp_path):
    _, data, weights = setup
    out = tmp_path / "ddp"
    proc = run_torchrun(build_args(data, weights, out, "--epochs", "2"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert cache_info(out)["content_digest"] == reference[1]["content_digest"]


@pytest.mark.parametrize("trial", [0, 1])
def test_sigkill_mid_build_then_resume_gives_the_same_digest(setup, reference, tmp_path, trial):
    _, data, weights = setup
    out = tmp_path / f"killed{trial}"
    # Kill once units are being written, at a trial-dependent point in the stream.
    args = build_args(data, weights, out, "--epochs", "2", "--unit-size", "2")
    was_running = kill_once_writing(args, out, 4 + 6 * trial)
    assert was_running, "the build finished before it could be killed; make it longer"
    info = run_cli("info", str(out), "--json", check=False)
    assert info.returncode != 0 or '"epochs_complete": [0, 1]' not in info.stdout
    run_cli(*build_args(data, weights, out, "--epochs", "2", "--unit-size", "2"))
    # unit size is part of the layout, so compare with a clean build at the same unit size
    clean = tmp_path / f"clean{trial}"
    run_cli(*build_args(data, weights, clean, "--epochs", "2", "--unit-size", "2"))
    assert cache_info(out)["content_digest"] == cache_info(clean)["content_digest"]


def test_cached_topk_matches_an_independent_teacher_forward(setup, reference):
    from kdcache.data import ImageFolderSource
    from kdcache.recipe import Recipe
    from kdcache.teacher_cache.store import open_cache
    from kdcache.views import ViewEngine

    _, data, weights = setup
    reader = open_cache(reference[0])
    m = reader.manifest
    engine = ViewEngine(ImageFolderSource(data), Recipe.from_dict(m.recipe).augment, m.seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=NUM_CLASSES)
    model.load_state_dict(torch.load(weights))
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    for epoch in (0, 1):
        block = reader.load_epoch(epoch)
        for pair in (0, 5, 12):
            r = engine.render_pair(epoch, pair, block.params[2 * pair : 2 * pair + 2])
            assert list(r.digests) == list(block.digest[2 * pair : 2 * pair + 2])
            x = (torch.from_numpy(r.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
            with torch.no_grad():
                p = torch.softmax(model(x), -1).numpy()
            for k in range(2):
                slot = 2 * pair + k
                cls = block.topk_class[slot].astype(np.int64)
                stored = np.exp(block.topk_logprob[slot].astype(np.float64))
                assert np.max(np.abs(p[k, cls] - stored)) <= 1e-3
                assert list(cls) == list(np.argsort(-p[k], kind="stable")[:3])


def test_verify_passes_on_a_good_cache(reference, setup):
    _, _, weights = setup
    proc = run_cli("verify", str(reference[0]), "--views", "16", "--teacher-weights", str(weights))
    assert "OK" in proc.stdout


def test_bad_teacher_inputs_fail_cleanly(setup, tmp_path):
    _, data, weights = setup
    proc = run_cli(*build_args(data, weights, tmp_path / "x"), check=False)  # baseline works
    assert proc.returncode == 0
    unknown = run_cli(
        "build", "--teacher", "no_such_model_xyz", "--data", str(data), "--out", str(tmp_path / "u"), check=False
    )
    assert unknown.returncode != 0 and "unknown teacher" in unknown.stderr and "Traceback" not in unknown.stderr
    wrong = run_cli(*build_args(data, weights, tmp_path / "w"), "--teacher", "test_vit", check=False)
    assert wrong.returncode != 0 and "do not fit" in wrong.stderr
    bigger = write_teacher(tmp_path / "t5.pth", 5)
    mismatch = run_cli(*build_args(data, bigger, tmp_path / "m"), check=False)
    assert mismatch.returncode != 0 and "3 classes" in mismatch.stderr and "5" in mismatch.stderr


def _tampered_copy(src: Path, dst: Path, epoch: int, slot: int, field: str) -> None:
    """Rewrite a cache through the store API with one value of one view altered."""
    from kdcache.teacher_cache.store import UnitData, create_or_open_writer, open_cache

    reader = open_cache(src)
    m = reader.manifest
    writer = create_or_open_writer(dst, m.replace(epochs_complete=()))
    for e, u in sorted(reader.completed_units()):
        data = reader.read_unit(e, u)
        arrays = {k: v.copy() for k, v in data.arrays().items()}
        row = slot - u * m.unit_size
        if e == epoch and 0 <= row < data.num_views:
            if field == "digest":
                arrays["digest"][row] ^= np.uint64(1)
            else:
                # every stored class loses half its probability (order kept, so the store accepts it)
                lp = arrays["topk_logprob"][row].astype(np.float32) - 0.7
                arrays["topk_logprob"][row] = lp.astype(np.float16)
        writer.write_unit(e, u, UnitData.from_arrays(arrays))
    writer.finalize()


@pytest.mark.parametrize("field", ["digest", "topk_logprob"])
def test_verify_fails_naming_the_altered_view(setup, reference, tmp_path, field):
    from kdcache.teacher_cache.store import open_cache
    from kdcache.views.replay import sample_pairs

    _, _, weights = setup
    m = open_cache(reference[0]).manifest
    # Alter a view that verify will sample (its choice is seeded), then check it is named.
    epoch, pair = sample_pairs(m.seed, m.num_slots, [0, 1], 8)[1]
    slot = 2 * pair + 1
    bad = tmp_path / "bad"
    _tampered_copy(reference[0], bad, epoch, slot, field)
    proc = run_cli("verify", str(bad), "--views", "8", "--teacher-weights", str(weights), check=False)
    assert proc.returncode == 1
    assert f"epoch {epoch} slot {slot}" in proc.stderr
    assert ("digest" if field == "digest" else "probabilities") in proc.stderr
    assert "FAILED: 1 mismatch" in proc.stderr


@pytest.mark.slow
def test_beit_base_alias_builds_and_verifies_at_random_init(tmp_path):
    """The published teacher's code path (alias, ImageNet class mapping, 0.5/0.5 preprocessing) on a
    handful of views; random init because this machine cannot download weights."""
    from kdcache.teacher_cache.store import open_cache

    data = write_dataset(tmp_path / "data", ["n01440764", "n01443537", "n01484850"], per_class=2)
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224.in22k_ft_in22k_in1k", pretrained=False)
    weights = tmp_path / "beit.pth"
    torch.save(model.state_dict(), weights)
    del model
    run_cli(
        "build",
        "--teacher",
        "beit_base",
        "--teacher-weights",
        str(weights),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "c"),
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--workers",
        "0",
        "--no-progress",
    )
    m = open_cache(tmp_path / "c").manifest
    assert m.teacher["id"] == "beit_base_patch16_224.in22k_ft_in22k_in1k"
    assert m.teacher["mean"] == [0.5, 0.5, 0.5] and m.teacher["std"] == [0.5, 0.5, 0.5]
    assert m.num_classes == 1000 and m.class_names[0] == "n01440764"
    assert m.dataset["to_teacher"] == [0, 1, 2]
    proc = run_cli("verify", str(tmp_path / "c"), "--views", "6", "--teacher-weights", str(weights))
    assert "OK" in proc.stdout
