"""torchvision.transforms.v2 pipelines written in YAML, run in the DataLoader workers.

``data.transforms.train`` and ``data.transforms.eval`` are lists whose items are either a
``_target_`` node (any callable with its keyword arguments) or the short form naming a class of
``torchvision.transforms.v2``: ``RandomHorizontalFlip`` or ``{RandomResizedCrop: {size: 224}}``.
Every pipeline takes a PIL image or a uint8 CHW tensor and returns a uint8 CHW tensor: images
travel to the device as bytes and are normalised there (``BatchTransform.normalise``), so
``Normalize``/``ToDtype``/``ToTensor`` are refused here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from hpmkd.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the standard ImageNet evaluation transform
IMAGENET_EVAL = [{"Resize": {"size": 256}}, {"CenterCrop": {"size": 224}}]
IMAGENET_TRAIN = [{"RandomResizedCrop": {"size": 224}}, "RandomHorizontalFlip"]

_NORMALISING = frozenset({"Normalize", "ToDtype", "ToTensor", "ConvertImageDtype", "ToPILImage"})
# batch transforms: they mix labels into soft targets, which the training step does not take
_BATCH = frozenset({"MixUp", "CutMix"})
# transforms whose output is a function of the input alone (no random draw)
DETERMINISTIC = frozenset(
    {"Resize", "CenterCrop", "Grayscale", "RGB", "Pad", "Identity", "PILToTensor", "ToImage"}
)
_FORM = (
    "a transform is a name of torchvision.transforms.v2 (RandomHorizontalFlip), "
    "{Name: {arg: value}} or {_target_: module.Class, arg: value}"
)


def _v2() -> Any:
    return importlib.import_module("torchvision.transforms.v2")


def _transform_names() -> list[str]:
    v2 = _v2()
    return sorted(
        n
        for n in dir(v2)
        if isinstance(getattr(v2, n), type)
        and issubclass(getattr(v2, n), v2.Transform)
        and n not in _NORMALISING | _BATCH
    )


def _resolve_target(target: str, where: str) -> Any:
    module, _, attr = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{where}: cannot import _target_ '{target}'") from None


def _parse(item: Any, where: str) -> tuple[str, Any, dict]:
    """``(name, class, kwargs)`` of one list item."""
    if isinstance(item, str):
        name, kwargs, cls = item, {}, None
    elif isinstance(item, Mapping) and "_target_" in item:
        kwargs = {k: v for k, v in item.items() if k != "_target_"}
        cls = _resolve_target(item["_target_"], where)
        name = getattr(cls, "__name__", str(item["_target_"]))
    elif isinstance(item, Mapping) and len(item) == 1:
        name, kwargs = next(iter(item.items()))
        kwargs, cls = dict(kwargs or {}), None
    else:
        raise UserError(f"{where}: cannot read {item!r}; {_FORM}")
    if name in _NORMALISING:
        raise UserError(
            f"{where}: {name} is not allowed: images stay uint8 until the device normalises them "
            "with data.normalize"
        )
    if name in _BATCH:
        raise UserError(
            f"{where}: {name} mixes whole batches into soft labels; batch transforms are not "
            "supported on the streaming path yet"
        )
    if cls is None:
        valid = _transform_names()
        if name not in valid:
            raise UserError(
                f"{where}: unknown transform '{name}'; valid: {', '.join(valid)} (or a _target_)"
            )
        cls = getattr(_v2(), name)
    return name, cls, kwargs


def build_transforms(items: Sequence[Any] | None, where: str) -> list:
    """The transforms of one YAML list (UserError naming ``where`` for a bad item)."""
    out = []
    for item in items or []:
        name, cls, kwargs = _parse(item, where)
        try:
            out.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: {name}({kwargs}) failed: {err}") from None
    return out


def is_random(items: Sequence[Any] | None) -> bool:
    """Whether a YAML pipeline may give a different image on each call."""
    return any(_parse(item, "transforms")[0] not in DETERMINISTIC for item in items or [])


class ImagePipeline:
    """PIL image or uint8 CHW tensor -> uint8 CHW tensor through ``transforms`` (picklable, so it
    runs in worker processes). PIL images that are neither grey nor RGB become RGB."""

    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        x = as_uint8_tensor(image)
        for transform in self.transforms:
            x = transform(x)
        if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 3:
            raise UserError(
                "data.transforms must return a uint8 CxHxW image, got "
                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
            )
        return x.as_subclass(Tensor)


def as_uint8_tensor(image: Image.Image | Tensor) -> Tensor:
    """A PIL image or uint8 CHW/HW tensor as a uint8 CHW tensor (a torchvision Image)."""
    from torchvision import tv_tensors

    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = array.view(image.height, image.width, -1).permute(2, 0, 1)
    else:
        x = image if image.ndim == 3 else image.unsqueeze(0)
    return tv_tensors.Image(x)


def pipelines(transforms: Mapping[str, Any], where: str = "data.transforms") -> dict:
    """``{"train": ImagePipeline, "eval": ImagePipeline}`` from a ``data.transforms`` node."""
    unknown = set(transforms) - {"train", "eval"}
    if unknown:
        raise UserError(f"{where} has unknown keys {sorted(unknown)}; valid: train, eval")
    return {
        split: ImagePipeline(build_transforms(transforms.get(split), f"{where}.{split}"))
        for split in ("train", "eval")
    }
