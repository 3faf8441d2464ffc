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


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
