"""Train a timm student from a kdcache cache in a plain PyTorch loop: the teacher call is the cache.

    python examples/plain_loop.py CACHE --student resnet50 --device cuda

Everything but the loop itself comes from kdcache, so the run is `kdcache train`'s: the same views and
targets (cache.loader), student init, LAMB, cosine schedule and loss (without EMA, checkpoints, logs).
"""

from __future__ import annotations

import argparse

import torch

import kdcache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", help="cache path, URL or registry key")
    ap.add_argument("--student", help="timm model name [the recipe's]")
    ap.add_argument("--config", help="preset or recipe YAML for the training part [the cache's]")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="global batch [the recipe's]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    cache = kdcache.open_cache(args.cache)
    recipe = cache.recipe(args.config, student=args.student, epochs=args.epochs, global_batch=args.batch_size)
    t = recipe.train
    model = kdcache.create_student(recipe, cache.num_classes).to(args.device)
    optimizer = kdcache.create_optimizer(model, recipe)
    loss_fn = kdcache.KDLoss.from_config(t, cache.num_classes)
    scheduler, update = None, 0
    for epoch in range(t.epochs):
        loader = cache.loader(epoch, t.global_batch, workers=args.workers, device=args.device, normalize_for=model)
        scheduler = scheduler or kdcache.create_scheduler(optimizer, recipe, len(loader))
        model.train()
        for batch in loader:
            scheduler.step_update(update)
            parts = loss_fn(model(batch.images), batch.y_a, batch.y_b, batch.lam, batch.target)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
            optimizer.step()
            update += 1
            print(f"epoch {epoch} update {update} loss {parts.total.item():.9g}", flush=True)


if __name__ == "__main__":
    main()
