"""`kdcache train` over a real cache: modes, replay, resume, distributed shares, refusals."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from build_helpers import (
    REPO,
    run_cli,
    run_torchrun,
    three_class_setup,
    tiny_build,
    tiny_train,
)

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data, weights = three_class_setup(root, per_class=8)  # 24 images -> 24 slots/epoch
    out = root / "cache"
    run_cli(*tiny_build(data, weights, out, "--epochs", "2", "--batch-size", "8", "--unit-size", "10240"))
    return root, data, weights, out


def train_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return tiny_train(cache, out, *extra)


def _source(cache_dir: Path, with_topk: bool, rank: int = 0, world: int = 1):
    from kdcache.student.cache_source import CacheBatchSource
    from kdcache.teacher_cache.store import open_cache
    from kdcache.views.replay import open_replay

    reader = open_cache(cache_dir)
    engine = open_replay(reader.manifest)
    return CacheBatchSource(
        reader,
        engine,
        np.asarray(reader.manifest.dataset["to_teacher"]),
        8,
        rank,
        world,
        workers=0,
        with_topk=with_topk,
    )


def test_cached_and_online_see_identical_batches_and_agreeing_targets(cache):
    from kdcache.student.loss import KDLoss
    from kdcache.student.targets import TeacherTarget

    _, _, weights, out = cache
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=NUM_CLASSES)
    teacher.load_state_dict(torch.load(weights))
    teacher.eval()
    cfg = timm.data.resolve_data_config({}, model=teacher)
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    student = timm.create_model("test_resnet", pretrained=False, num_classes=NUM_CLASSES)
    loss = KDLoss(NUM_CLASSES, 0.8, 0.2, 1.0, 0.1)
    cached, online = _source(out, True), _source(out, False)
    n = 0
    for a, b in zip(cached.epoch_batches(0), online.epoch_batches(0), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.y_a, b.y_a) and torch.equal(a.lam, b.lam)
        assert b.topk_logprob is None and a.topk_logprob is not None
        with torch.no_grad():
            x = (b.images.permute(0, 3, 1, 2).float() - mean) / std
            t_online = TeacherTarget.from_logits(teacher(x))
            t_cached = TeacherTarget.from_topk(a.topk_logprob, a.topk_class, NUM_CLASSES)
            # k = C: the cached distribution is the teacher's up to fp16 rounding of log-probs
            # (|d log p| <= 2^-11 |log p|, so |dp| <= p |log p| 2^-11 <= 1.8e-4).
            assert torch.max(torch.abs(t_online.log_probs_at(1.0).exp() - t_cached.log_probs_at(1.0).exp())) < 2e-4
            logits = student((b.images.permute(0, 3, 1, 2).float() - 128) / 64)
            la = loss(logits, a.y_a, a.y_b, a.lam, t_cached)
            lb = loss(logits, b.y_a, b.y_b, b.lam, t_online)
            # KL differs by sum p (dlog p) terms: bounded by the same 2^-11 |log p| relative error.
            assert abs(float(la.total) - float(lb.total)) < 1e-3 * max(1.0, float(lb.total))
        n += 1
    assert n == cached.steps_per_epoch == 3


def test_ranks_of_a_two_process_run_see_disjoint_views_covering_the_epoch(cache):
    out = cache[3]
    for epoch in (1, 3):  # 3: the second pass through the 2-epoch cache, in a fresh pair order
        one = list(_source(out, True).epoch_batches(epoch))
        halves = [list(_source(out, True, r, 2).epoch_batches(epoch)) for r in (0, 1)]
        for whole, r0, r1 in zip(one, *halves, strict=True):  # the same global batch at every step
            assert not set(r0.slots.tolist()) & set(r1.slots.tolist())
            assert sorted(r0.slots.tolist() + r1.slots.tolist()) == sorted(whole.slots.tolist())
            # rank r holds the step's pairs j = r (mod 2)
            assert r0.slots.tolist() == whole.slots.view(-1, 4)[:, :2].reshape(-1).tolist()
            assert torch.equal(r1.images, whole.images.view(-1, 4, *whole.images.shape[1:])[:, 2:].flatten(0, 1))


def test_a_second_pass_replays_the_same_views_in_a_fresh_pair_order(cache):
    out = cache[3]
    first, again = (list(_source(out, True).epoch_batches(e)) for e in (0, 2))  # both cached epoch 0

    def rows(batches):
        return {
            s: (b.images[i].numpy().tobytes(), b.topk_logprob[i].numpy().tobytes(), float(b.lam[i]))
            for b in batches
            for i, s in enumerate(b.slots.tolist())
        }

    a, b = rows(first), rows(again)
    common = a.keys() & b.keys()
    assert len(common) >= len(a) - 8  # the dropped last partial batch may hold other pairs
    assert all(a[s] == b[s] for s in common)  # bit-exact views, same soft labels and lambda
    order_a = [s for x in first for s in x.slots.tolist()]
    order_b = [s for x in again for s in x.slots.tolist()]
    assert order_a == sorted(order_a) and order_b != order_a  # cycle 0: plan order; cycle 1: shuffled
    for x in again:
        x.validate_pairs()
        assert (x.slots[0::2] % 2 == 0).all() and (x.slots[1::2] == x.slots[0::2] + 1).all()


def test_two_process_gloo_training_completes(cache, tmp_path):
    out = cache[3]
    run = tmp_path / "ddp"
    proc = run_torchrun(train_args(out, run, "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "final.pt").is_file() and (run / "metrics.jsonl").is_file()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


def test_killed_run_resumes_to_the_same_weights(cache, tmp_path):
    out = cache[3]
    full = tmp_path / "full"
    run_cli(*train_args(out, full))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kdcache", *train_args(out, killed, "--checkpoint-every", "1")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no mid-run checkpoint appeared before the run ended"
    assert not (killed / "final.pt").exists()
    run_cli(*train_args(out, killed, "--resume"))
    a, b = _weights(full / "final.pt"), _weights(killed / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_more_student_epochs_than_cached_are_refused_unless_allowed(cache, tmp_path):
    _, data, weights, out = cache  # 2 cached epochs
    refused = run_cli(*tiny_train(out, tmp_path / "a", "--epochs", "3", reuse=False), check=False)
    assert refused.returncode == 1
    err = " ".join(refused.stderr.split())
    assert "3 epochs but the cache holds 2 complete epoch(s)" in err and "--allow-epoch-reuse" in err
    assert "% of the 24 samples" in err and "distinct views each" in err
    # The command extends this very cache: the manifest's teacher, data, recipe, seed, topk, size, repeats.
    for part in ("kdcache build --teacher test_resnet", f"--teacher-weights {weights}", f"--data {data}"):
        assert part in err
    for part in ("--seed 0", "--topk 3", "--image-size 32", "--repeats 3", f"--out {out}", "--epochs 3"):
        assert part in err
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    allowed = run_cli(*tiny_train(out, tmp_path / "b", "--epochs", "3", "--replay-check", "0"))
    assert "each pass in a fresh pair order" in allowed.stdout and "2 cached epoch(s) show" in allowed.stdout


def test_refusals_are_clear(cache, tmp_path):
    _, data, _, out = cache
    odd = run_cli(*train_args(out, tmp_path / "a"), "--batch-size", "6", "--epochs", "1", check=False)
    assert odd.returncode == 0  # 6 is even: fine for one process
    bad = run_cli(*train_args(out, tmp_path / "b"), "--batch-size", "5", check=False)
    assert bad.returncode != 0 and "even" in bad.stderr and "Traceback" not in bad.stderr
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "ant" / "img000.jpg").unlink()
    fp = run_cli(*train_args(out, tmp_path / "c"), "--data", str(other), check=False)
    assert fp.returncode != 0 and "fingerprint" in fp.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text("augment:\n  image_size: 64\n")
    aug = run_cli(*train_args(out, tmp_path / "d"), "--config", str(recipe), check=False)
    assert aug.returncode != 0 and "image_size" in aug.stderr and "replay" in aug.stderr


def test_a_config_file_with_only_a_train_section_is_accepted(cache, tmp_path):
    out = cache[3]
    recipe = tmp_path / "t.yaml"
    recipe.write_text(
        "train:\n  model: test_resnet\n  global_batch: 8\n  epochs: 1\n  cosine_epochs: 1\n"
        "  warmup_epochs: 0\n  cooldown_epochs: 0\n"
    )
    proc = run_cli(
        "train",
        "--cache",
        str(out),
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(recipe),
        "--workers",
        "0",
        "--replay-check",
        "0",
        "--no-progress",
    )
    assert (tmp_path / "run" / "final.pt").is_file(), proc.stderr
