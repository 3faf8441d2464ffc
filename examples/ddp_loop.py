"""The plain loop under DDP: each process trains on its share of every global batch.

    torchrun --nproc-per-node 8 examples/ddp_loop.py CACHE --student resnet50 --device cuda

cache.loader takes rank and world size from torch.distributed; a sample's repeats go to different
ranks of one step, as timm's RepeatAugSampler does, and the union over ranks is the same views at any
world size.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import kdcache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", help="cache path, URL or registry key")
    ap.add_argument("--student", help="timm model name [the recipe's]")
    ap.add_argument("--config", help="preset or recipe YAML for the training part [the cache's]")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="global batch over all processes [the recipe's]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu"
    cache = kdcache.open_cache(args.cache)
    recipe = cache.recipe(args.config, student=args.student, epochs=args.epochs, global_batch=args.batch_size)
    t = recipe.train
    model = kdcache.create_student(recipe, cache.num_classes).to(device)
    ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index] if cuda else None)
    optimizer = kdcache.create_optimizer(model, recipe)
    loss_fn = kdcache.KDLoss.from_config(t, cache.num_classes)
    scheduler, update = None, 0
    for epoch in range(t.epochs):
        loader = cache.loader(epoch, t.global_batch, workers=args.workers, device=device, normalize_for=model)
        scheduler = scheduler or kdcache.create_scheduler(optimizer, recipe, len(loader))
        ddp.train()
        for batch in loader:
            scheduler.step_update(update)
            parts = loss_fn(ddp(batch.images), batch.y_a, batch.y_b, batch.lam, batch.target)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
            optimizer.step()
            update += 1
            slots = ",".join(map(str, batch.slots.tolist()))
            line = f"rank {dist.get_rank()} epoch {epoch} update {update} loss {parts.total.item():.9g} slots {slots}"
            sys.stdout.write(line + "\n")  # one write: the ranks share the terminal, and print() writes twice
            sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
