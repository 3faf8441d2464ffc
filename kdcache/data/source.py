"""What the view engine needs from a dataset."""

from __future__ import annotations

from typing import Protocol

from PIL import Image


class DataSourceError(ValueError):
    """The dataset is missing, empty or unreadable; the message says which file and what to do."""


class ImageSource(Protocol):
    """A finite, ordered collection of labelled images with stable integer ids 0..N-1."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def fingerprint(self) -> str: ...

    def __len__(self) -> int: ...

    def label(self, sample_id: int) -> int: ...

    def name(self, sample_id: int) -> str: ...

    def open(self, sample_id: int) -> Image.Image:
        """The image with its header read (size known); pixels may still be lazy."""
        ...
