"""Run outputs for humans and tools: TensorBoard scalars and metrics.jsonl (main process only)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdcache.storage.atomic import write_atomic

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


class RunLog:
    """Writes nothing unless ``enabled`` (rank 0). ``purge_step`` (on resume) drops TensorBoard
    events at or after that step from the earlier, interrupted run."""

    def __init__(self, out_dir: str | Path, enabled: bool, tensorboard: bool = True, purge_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only where used

            self.writer = SummaryWriter(str(self.out_dir / TB_DIR), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def teachers(self, teachers: list[Mapping[str, Any]], step: int) -> None:
        """The teachers whose soft labels the run trains on, as a TensorBoard text summary (a table)."""
        if self.writer is None:
            return
        rows = ["| teacher | weight | layer | model | weights sha256 |", "|---|---|---|---|---|"]
        for t in teachers:
            sha = str(t.get("weights_sha256") or "")[:12]
            rows.append(f"| {t['name']} | {t['weight']:.4g} | {t['layer']} | {t.get('model')} | {sha} |")
        self.writer.add_text("teachers", "\n".join(rows), step)

    def record(self, entry: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (flushed, so a crash loses at most this line)."""
        if not self.enabled:
            return
        with open(self.out_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(entry, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after_epoch(self, epoch: int) -> None:
        """On resume from ``epoch`` completed epochs: drop later lines (they will be written again)."""
        path = self.out_dir / METRICS_FILE
        if not self.enabled or not path.is_file():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("epoch", epoch + 1) <= epoch]  # "final" lines go too
        write_atomic(path, "".join(ln + "\n" for ln in kept).encode())

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def epoch_line(entry: Mapping[str, Any], epochs: int) -> str:
    """One line per finished epoch, from its metrics.jsonl entry: what a run without a bar still shows.

    ``epoch 3/10: loss 0.8123 (KD 0.7012, CE 1.2566), lr 0.0183, 412 img/s, data wait 38%, val top-1 97.33%
    (EMA 97.67%)``. KD and CE are the unweighted parts (loss = kd_weight x KD + ce_weight x CE).
    """
    t = entry.get("train") or {}
    parts = ", ".join(f"{k.upper()} {t[k]:.4f}" for k in ("kd", "ce") if k in t)
    line = f"epoch {entry['epoch']}/{epochs}: loss {t.get('loss', math.nan):.4f}" + (f" ({parts})" if parts else "")
    line += f", lr {entry.get('lr', math.nan):.3g}, {entry.get('img_per_s', math.nan):.0f} img/s"
    line += f", data wait {entry.get('data_time_share', math.nan):.0%}"
    if "val" in entry:
        line += f", val top-1 {entry['val']['top1']:.2f}%"
        if "val_ema" in entry:
            line += f" (EMA {entry['val_ema']['top1']:.2f}%)"
    return line


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
