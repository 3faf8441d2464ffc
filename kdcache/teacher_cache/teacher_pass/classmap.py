"""Agreeing on class order between a dataset and its teacher."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset

from kdcache.models.teacher import TeacherError

_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ClassMap:
    """dataset label i -> teacher class ``to_teacher[i]``; the cache uses the teacher's class space."""

    to_teacher: tuple[int, ...]
    class_names: tuple[str, ...]  # in teacher order, len = teacher's num_classes
    kind: str  # "imagenet-wnid" | "identity"

    def as_array(self) -> np.ndarray:
        return np.asarray(self.to_teacher, dtype=np.int64)


def class_map(dataset_classes: list[str], teacher: torch.nn.Module) -> ClassMap:
    """Map folder names to the teacher's classes.

    When the teacher is an ImageNet classifier (timm names its classes by WordNet id) and every
    folder is a WordNet id, labels follow the teacher's order; an unknown id is an error. Otherwise
    the dataset's sorted folder order is used and the class counts must match.
    """
    num_classes = int(teacher.num_classes)  # type: ignore[arg-type]
    subset = infer_imagenet_subset(teacher)
    if subset and dataset_classes and all(_WNID.match(c) for c in dataset_classes):
        names = ImageNetInfo(subset).label_names()
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in dataset_classes if c not in index]
        if unknown:
            raise TeacherError(
                f"{len(unknown)} dataset class folder(s) are not among the teacher's {subset} classes: "
                f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}"
            )
        return ClassMap(tuple(index[c] for c in dataset_classes), tuple(names), "imagenet-wnid")
    if len(dataset_classes) != num_classes:
        raise TeacherError(
            f"the dataset has {len(dataset_classes)} classes but the teacher predicts {num_classes}; "
            "a teacher for this dataset must have one output per class folder (sorted by name), or be an "
            "ImageNet teacher with WordNet-id folders"
        )
    return ClassMap(tuple(range(num_classes)), tuple(dataset_classes), "identity")
