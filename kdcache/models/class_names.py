"""Human-readable class names: ImageNet's from timm for ImageNet teachers, the folder names otherwise.

A cache records its classes as the teacher's label names (``manifest.class_names``): WordNet ids
(``n02124075``) for an ImageNet teacher on WordNet-id folders, the folder names (or ``.cls`` numbers of
WebDataset shards) otherwise. People read "Egyptian cat", so every command that shows a class shows
``Egyptian cat (n02124075, 285)``: the readable name, then the id and index it stands for. The
readable names come from timm's own ImageNet metadata (``timm.data.ImageNetInfo``), never from a list
written here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

_WNID = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=8)
def _imagenet_info(subset: str):
    from timm.data import ImageNetInfo  # reads timm's synset and lemma files: only where needed

    return ImageNetInfo(subset)


def _imagenet_subset(num_classes: int) -> str | None:
    from timm.data import infer_imagenet_subset

    return infer_imagenet_subset({"num_classes": num_classes})


def wordnet_lemma(name: str) -> str | None:
    """The first WordNet lemma of a WordNet id (``n01440764`` -> ``tench``, of "tench, Tinca tinca"),
    None for anything else. timm keeps one lemma file for every ImageNet subset, 1k to 22k."""
    if not _WNID.match(name):
        return None
    try:
        lemmas = _imagenet_info("imagenet-1k").label_name_to_description(name)
    except KeyError:
        return None
    return lemmas.split(",")[0].strip() or None  # the first synonym: the rest is Latin or a repeat


@dataclass(frozen=True)
class ClassNames:
    """The classes of a cache (or a dataset) as people read them.

    ``ids``: the recorded names (WordNet ids, folder names); ``readable``: what to show, equal to the id
    where nothing better is known; ``source``: where the readable names come from, in words.
    """

    ids: tuple[str, ...]
    readable: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, index: int) -> str:
        return self.readable[index]

    def describe(self, index: int) -> str:
        """``Egyptian cat (n02124075, 285)``; ``cat (2)`` where the name is the id itself."""
        readable, ident = self.readable[index], self.ids[index]
        return f"{readable} ({ident}, {index})" if readable != ident else f"{ident} ({index})"

    def summary(self, limit: int = 4) -> str:
        """One line for ``kdcache info``: how many, where the names come from, the first few."""
        first = range(min(limit, len(self)))
        shown = [self.describe(i) if self.readable[i] != self.ids[i] else self.ids[i] for i in first]
        more = f", ... ({len(self) - limit} more)" if len(self) > limit else ""
        return f"{len(self)}, {self.source}: {', '.join(shown)}{more}"

    @classmethod
    def of(cls, class_names: Sequence[str], num_classes: int | None = None) -> ClassNames:
        """The readable names of a teacher's classes as a manifest records them.

        WordNet ids (an ImageNet teacher on WordNet-id folders) get their ImageNet names. An
        ImageNet-sized head (1k, 12k, 21k/22k: ``timm.data.infer_imagenet_subset``) whose classes are the
        numbers 0..C-1 (WebDataset shards' ``.cls`` labels, which follow the teacher's index) gets the names
        of that subset's classes at those indices. Any other classes keep their names (the dataset's
        class folders).
        """
        ids = tuple(str(n) for n in class_names)
        n = len(ids) if num_classes is None else int(num_classes)
        if any(_WNID.match(i) for i in ids):  # a WordNet id names one class whatever the teacher
            subset = _imagenet_subset(n) if n == len(ids) >= 1000 else None
            readable = tuple(wordnet_lemma(i) or i for i in ids)
            where = f"{subset}, timm ImageNetInfo" if subset else "timm ImageNetInfo"
            return cls(ids, readable, f"ImageNet names of the WordNet ids ({where})")
        # Every ImageNet subset has 1000 classes or more: smaller caches never import timm here.
        if n == len(ids) >= 1000 and ids == tuple(str(i) for i in range(n)):
            subset = _imagenet_subset(n)
            info = _imagenet_info(subset) if subset else None
            if info is not None and info.num_classes() == n:
                synsets = tuple(info.label_names())
                readable = tuple(wordnet_lemma(w) or w for w in synsets)
                # the id shown beside the name is the WordNet id the index stands for
                return cls(synsets, readable, f"ImageNet names by class index ({subset}, timm ImageNetInfo)")
        return cls(ids, ids, "the dataset's class folders")

    @classmethod
    def of_folders(cls, folders: Sequence[str]) -> ClassNames:
        """A dataset's own classes (no teacher yet, as in ``kdcache preview``): WordNet-id folders read as
        their ImageNet names, any other folder as itself."""
        return cls.of(folders, num_classes=-1)  # no teacher's head: numbered folders stay numbers
