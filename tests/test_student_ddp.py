"""DDP (gloo, 2 CPU processes) trains the same model as one process on the same global batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdcache.recipe import Recipe
from kdcache.student.checkpoint import load_checkpoint
from kdcache.student.trainer import RunOptions, Trainer
from kdcache.testing.synthetic_batches import SyntheticBatchSource

SIZE, C, G, SLOTS = 16, 10, 8, 16


def _recipe() -> Recipe:
    # GroupNorm, no batch statistics: DDP over 2 x 4 views must equal 1 x 8 views up to rounding.
    train = dict(model="test_efficientnet_gn", global_batch=G, epochs=2, cosine_epochs=2, warmup_epochs=1)
    return Recipe().replace_augment(image_size=SIZE).replace_train(cooldown_epochs=0, average_top=2, **train)


def _val(rank: int, world: int):
    b = SyntheticBatchSource(8, 8, SIZE, C, seed=99).batch(0, 0)
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    return [(b.images[share], b.y_a[share])]


def _run(rank: int, world: int, out: Path) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        src = SyntheticBatchSource(SLOTS, G, SIZE, C, seed=1, rank=rank, world_size=world, topk=5)
        tr = Trainer(
            _recipe(), C, RunOptions(out / "run", progress=False, tensorboard=False), val_batches=_val(rank, world)
        )
        res = tr.fit(src)
        assert res.completed and res.final is not None and res.final.count == 8
        torch.save(tr.model.state_dict(), out / f"rank{rank}.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    mp.spawn(_run, args=(2, tmp_path / "ddp"), nprocs=2, join=True)
    _run(0, 1, tmp_path / "one")
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the replicas identical
    one = torch.load(tmp_path / "one" / "rank0.pt")
    for k in one:
        torch.testing.assert_close(r0[k], one[k], rtol=1e-4, atol=1e-5)
    cfg = load_checkpoint(tmp_path / "ddp" / "run" / "checkpoints" / "last.pt")["config"]["run"]
    assert cfg["world_size"] == 2 and cfg["per_process_batch"] == 4
