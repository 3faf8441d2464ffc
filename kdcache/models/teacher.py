"""Loading a timm teacher: name aliases, local weights, its own preprocessing, a weights digest."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import load_state_dict

TEACHER_ALIASES: dict[str, str] = {
    "beit_base": "beit_base_patch16_224.in22k_ft_in22k_in1k",
}


class TeacherError(ValueError):
    """The teacher cannot be created or its weights do not fit it."""


@dataclass(frozen=True)
class TeacherInfo:
    """What the manifest records about the teacher."""

    name: str  # as given by the user
    model: str  # resolved timm name
    weights: str  # "hub" or the local file's path
    weights_sha256: str  # over the state dict (key, dtype, shape, bytes), independent of file format
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]
    interpolation: str

    def to_dict(self) -> dict:
        return {
            "id": self.model,
            "name": self.name,
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
        }


def resolve_name(name: str) -> str:
    model = TEACHER_ALIASES.get(name, name)
    arch = model.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        hint = f" Similar timm models: {', '.join(close)}." if close else ""
        raise TeacherError(
            f"unknown teacher {name!r}: not a timm model name.{hint} Aliases: {', '.join(TEACHER_ALIASES)}."
        )
    return model


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def create_teacher(
    name: str, weights: str | Path | None = None, num_classes: int | None = None
) -> tuple[torch.nn.Module, TeacherInfo]:
    """A timm model in eval mode with its weights.

    weights=None uses timm's pretrained download (needs network). A local .pth/.safetensors in timm's
    key layout is checked key by key and shape by shape against the model.
    """
    model_name = resolve_name(name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if weights is None:
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as e:  # hub errors come in many types (OSError, HTTP, LocalEntryNotFound, ...)
            raise TeacherError(
                f"could not download pretrained weights for {model_name!r} ({type(e).__name__}: {e}). "
                "If this machine is offline, download the weights elsewhere and pass them with "
                "--teacher-weights FILE (.pth or .safetensors in timm's key layout)."
            ) from e
        weights_label = "hub"
    else:
        path = Path(weights)
        if not path.is_file():
            raise TeacherError(f"teacher weights file {path} does not exist")
        try:
            state = load_state_dict(str(path))
        except Exception as e:
            raise TeacherError(f"cannot read teacher weights {path}: {type(e).__name__}: {e}") from e
        if num_classes is None:
            num_classes = _head_classes(state)
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        _check_fit(model, state, path, model_name)
        model.load_state_dict(state, strict=True)
        weights_label = str(path)
    model.eval()
    cfg = resolve_data_config({}, model=model)
    info = TeacherInfo(
        name=name,
        model=model_name,
        weights=weights_label,
        weights_sha256=state_dict_sha256(model.state_dict()),
        num_classes=int(model.num_classes),
        mean=tuple(float(x) for x in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(x) for x in cfg["std"]),  # type: ignore[arg-type]
        input_size=tuple(int(x) for x in cfg["input_size"]),  # type: ignore[arg-type]
        interpolation=str(cfg["interpolation"]),
    )
    return model, info


def recorded_weights(record: Mapping[str, Any]) -> str | None:
    """The local weights file a cache's manifest records for its teacher (``teacher.weights``); None where
    the cache was built from timm's pretrained download ("hub") or records nothing."""
    weights = record.get("weights")
    return None if not weights or weights == "hub" else str(weights)


def create_recorded_teacher(
    record: Mapping[str, Any],
    name: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
) -> tuple[torch.nn.Module, TeacherInfo]:
    """The teacher a cache was built with, to run it again (``train --kd online``).

    ``weights`` (--teacher-weights) wins. Otherwise the file the manifest records is loaded and its
    sha256 checked against the recorded one; timm's pretrained download runs only for a cache built
    from it. A recorded file that is gone or changed stops here, naming the way out: the hub's weights
    would be another teacher, and on an offline machine the download spends a minute in retries first.
    """
    name = name or record.get("name") or record.get("id")
    if not name:
        raise TeacherError("the cache records no teacher name: pass --teacher NAME --teacher-weights FILE")
    if weights is not None:
        return create_teacher(name, weights, num_classes)
    path = recorded_weights(record)
    if path is None:
        return create_teacher(name, None, num_classes)
    expected = str(record.get("weights_sha256") or "")
    if not Path(path).is_file():
        raise TeacherError(
            f"the cache's teacher {name} was built with the weights file {path}, which is not there (any more, or "
            f"not from this directory); pass it with --teacher-weights FILE (weights sha256 {expected[:16]}...)"
        )
    model, info = create_teacher(name, path, num_classes)
    if expected and info.weights_sha256 != expected:
        raise TeacherError(
            f"{path} is not the teacher the cache was built with: its weights' sha256 is "
            f"{info.weights_sha256[:16]}..., the cache records {expected[:16]}...; pass the build's weights with "
            "--teacher-weights FILE"
        )
    return model, info


def _head_classes(state: dict[str, torch.Tensor]) -> int | None:
    """Number of classes of a checkpoint's classifier: the last 2-D weight whose key names a head."""
    for key in reversed(list(state)):
        t = state[key]
        if key.endswith(".weight") and t.ndim == 2 and any(h in key for h in ("head", "fc", "classifier")):
            return int(t.shape[0])
    return None


def _check_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:3])})")
        raise TeacherError(
            f"weights {path} do not fit teacher {model_name!r}: {'; '.join(parts)}. "
            "Check --teacher names the architecture these weights were trained for."
        )
