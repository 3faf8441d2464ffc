"""kdcache in PyTorch Lightning: a LightningDataModule over a cache and a LightningModule with the KD loss.

    python examples/lightning_module.py CACHE --student resnet50 --accelerator gpu --devices 8

The data module gives each process its share of every global batch (rank and world size come from
torch.distributed once Lightning has set it up); the module's training_step is the plain loop's body.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

import kdcache


class CacheDataModule(L.LightningDataModule):
    def __init__(self, cache: kdcache.Cache, global_batch: int, workers: int = 2):
        super().__init__()
        self.cache, self.global_batch, self.workers = cache, global_batch, workers

    def train_dataloader(self) -> kdcache.CacheLoader:
        # Lightning reloads it every epoch (reload_dataloaders_every_n_epochs=1): each epoch has its own views.
        epoch = self.trainer.current_epoch if self.trainer else 0
        return self.cache.loader(epoch, self.global_batch, workers=self.workers)


class KDStudent(L.LightningModule):
    def __init__(self, cache: kdcache.Cache, recipe, steps_per_epoch: int):
        super().__init__()
        t = recipe.train
        self.recipe, self.steps_per_epoch, self.clip = recipe, steps_per_epoch, t.clip_grad
        self.model = kdcache.create_student(recipe, cache.num_classes)
        self.normalize = kdcache.normalizer(self.model)
        self.loss_fn = kdcache.KDLoss.from_config(t, cache.num_classes)

    def training_step(self, batch: kdcache.Batch, batch_idx: int) -> torch.Tensor:
        parts = self.loss_fn(self.model(self.normalize(batch.images)), batch.y_a, batch.y_b, batch.lam, batch.target)
        self.log_dict({"loss": parts.total, "kd": parts.kd, "ce": parts.ce}, prog_bar=True)
        return parts.total

    def configure_optimizers(self):
        optimizer = kdcache.create_optimizer(self.model, self.recipe)
        scheduler = kdcache.create_scheduler(optimizer, self.recipe, self.steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(self.global_step)  # timm's schedulers step per update, not per epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", help="cache path, URL or registry key")
    ap.add_argument("--student", help="timm model name [the recipe's]")
    ap.add_argument("--config", help="preset or recipe YAML for the training part [the cache's]")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="global batch over all processes [the recipe's]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--out", default="lightning_logs", help="Lightning's log and checkpoint folder")
    args = ap.parse_args()

    cache = kdcache.open_cache(args.cache)
    recipe = cache.recipe(args.config, student=args.student, epochs=args.epochs, global_batch=args.batch_size)
    data = CacheDataModule(cache, recipe.train.global_batch, args.workers)
    steps = cache.views_per_epoch // recipe.train.global_batch
    trainer = L.Trainer(
        max_epochs=recipe.train.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        gradient_clip_val=recipe.train.clip_grad,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,  # the loader already gives each process its own share
        default_root_dir=args.out,
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    trainer.fit(KDStudent(cache, recipe, steps), datamodule=data)
    print(f"trained {trainer.global_step} updates; last loss {float(trainer.callback_metrics['loss']):.6g}")


if __name__ == "__main__":
    main()
