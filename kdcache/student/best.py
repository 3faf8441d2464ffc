"""The N best EMA checkpoints of a run, by validation top-1."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcache.student.checkpoint import save_atomic


@dataclass(frozen=True)
class Entry:
    epoch: int  # 1-based count of completed epochs when this EMA was taken
    score: float  # EMA val top-1 (or the epoch when there is no validation set)
    file: str  # name within the directory

    def key(self) -> tuple[float, int]:
        # Higher score first; on a tie the later (longer-averaged) EMA wins.
        return (self.score, self.epoch)


class BestCheckpoints:
    """Keeps at most ``keep`` EMA checkpoints in ``directory``, ranked by score.

    The ranking lives in the run's ``last.pt`` (via :meth:`state_dict`), so the list and the files
    agree after a resume: :meth:`load_state_dict` deletes files the list does not name (left by a
    crash between writing a new best file and the checkpoint that records it).
    """

    def __init__(self, directory: str | Path, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.entries: list[Entry] = []

    def paths(self) -> list[Path]:
        return [self.directory / e.file for e in self.entries]

    def qualifies(self, score: float, epoch: int) -> bool:
        return len(self.entries) < self.keep or (score, epoch) > self.entries[-1].key()

    def consider(
        self, epoch: int, score: float, make_state: Callable[[], Mapping[str, Any]], write: bool = True
    ) -> list[Path]:
        """Add this epoch's EMA if it ranks in the top ``keep``; returns files that dropped out.

        Only the writing process (``write``, rank 0) touches files; every rank keeps the same list.
        Dropped files are returned, not deleted: delete them only after the checkpoint that records
        the new list is on disk.
        """
        if not self.qualifies(score, epoch):
            return []
        entry = Entry(epoch=epoch, score=float(score), file=f"ema_epoch{epoch:04d}.pt")
        if write:
            save_atomic(dict(make_state()), self.directory / entry.file)
        self.entries = sorted([*self.entries, entry], key=Entry.key, reverse=True)
        dropped, self.entries = self.entries[self.keep :], self.entries[: self.keep]
        return [self.directory / e.file for e in dropped if e.file not in {k.file for k in self.entries}]

    def state_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "entries": [[e.epoch, e.score, e.file] for e in self.entries]}

    def load_state_dict(self, state: Mapping[str, Any], prune: bool = True) -> None:
        self.entries = [Entry(int(ep), float(sc), str(f)) for ep, sc, f in state["entries"]]
        self.entries.sort(key=Entry.key, reverse=True)
        if prune and self.directory.is_dir():
            named = {e.file for e in self.entries}
            for p in self.directory.glob("ema_epoch*.pt"):
                if p.name not in named:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()


def delete_files(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
