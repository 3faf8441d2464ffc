"""The examples under examples/ run on a tiny cache, and the plain loop is `kdcache train`'s path.

The strongest check: for the same cache, recipe and student, the plain PyTorch loop's losses equal
`kdcache train`'s step losses (TensorBoard's ``step/loss``) bit for bit on the CPU, step after step:
same batches, same targets, same init, same optimiser and schedule. The DDP example runs under
torchrun with 2 processes on gloo, the Lightning example through Lightning's Trainer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml
from build_helpers import run_cli, three_class_setup, tiny_build

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ARGS = ["--student", "test_resnet", "--epochs", "2", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[Path, Path]:
    """A two-epoch cache of 26 views an epoch (6 steps of 4), and a seed recipe that logs every step."""
    root = tmp_path_factory.mktemp("examples")
    data, weights = three_class_setup(root, per_class=9)
    out = root / "cache"
    run_cli(*tiny_build(data, weights, out, "--epochs", "2"))
    recipe = yaml.safe_load((resources.files("kdcache.presets") / "seed.yaml").read_text())
    recipe["train"]["log_every"] = 1
    del recipe["augment"]  # the augmentation is the cache's
    config = root / "every_step.yaml"
    config.write_text(yaml.safe_dump(recipe))
    return out, config


def _run(*cmd: str, timeout: float = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _train_step_losses(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("step/loss"), key=lambda e: e.step)]


def test_the_plain_loop_gives_kdcache_trains_losses_exactly(cache, tmp_path):
    out, config = cache
    run = tmp_path / "run"
    # both in processes of one thread: float reductions then run in the same order
    _run(
        sys.executable,
        "-m",
        "kdcache",
        "train",
        "--cache",
        str(out),
        "--out",
        str(run),
        "--config",
        str(config),
        *ARGS,
        "--no-progress",
    )
    want = _train_step_losses(run)
    assert len(want) == 12  # 2 epochs x 6 steps

    text = _run(sys.executable, str(EXAMPLES / "plain_loop.py"), str(out), "--config", str(config), *ARGS)
    got = [float(x) for x in re.findall(r"loss (\S+)", text)]
    assert len(got) == len(want)
    # TensorBoard keeps float32: compare the loop's float32 losses with them bit for bit
    np.testing.assert_array_equal(np.float32(got), np.float32(want))
    assert len(set(np.float32(got).tolist())) > 6  # the losses move: an optimiser is stepping


def test_the_ddp_loop_splits_every_step_between_two_processes(cache):
    out, config = cache
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    text = _run(*cmd, str(EXAMPLES / "ddp_loop.py"), str(out), "--config", str(config), *ARGS)
    rows = re.findall(r"rank (\d) epoch (\d) update (\d+) loss (\S+) slots (\S+)", text)
    by_step: dict[tuple[str, str], dict[str, set[int]]] = {}
    for rank, epoch, update, loss, slots in rows:
        assert np.isfinite(float(loss))
        by_step.setdefault((epoch, update), {})[rank] = {int(s) for s in slots.split(",")}
    assert len(by_step) == 12 and all(set(r) == {"0", "1"} for r in by_step.values())
    for ranks in by_step.values():  # each rank takes one pair of the step's two: disjoint, whole pairs
        a, b = ranks["0"], ranks["1"]
        assert len(a) == len(b) == 2 and not a & b
        assert all(s ^ 1 in a for s in a) and all(s ^ 1 in b for s in b)


def test_the_lightning_example_trains_on_the_cache(cache, tmp_path):
    out, config = cache
    text = _run(
        sys.executable,
        str(EXAMPLES / "lightning_module.py"),
        str(out),
        "--config",
        str(config),
        *ARGS,
        "--out",
        str(tmp_path / "logs"),
    )
    m = re.search(r"trained (\d+) updates; last loss (\S+)", text)
    assert m and int(m[1]) == 12 and np.isfinite(float(m[2])), text[-2000:]
