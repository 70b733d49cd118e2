"""Any ``root/{train,test}/<class>/<image>`` tree: decoded once and cached as a uint8 tensor, or
streamed from the files when it is large (``data.stream``, ``hpmkd.data.stream.should_stream``)."""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits, should_stream
from hpmkd.errors import UserError
from hpmkd.io import write_atomic

from ._common import default_cache_dir, one_line, option, required
from ._files import FileList
from ._images import image_splits
from ._streamed import stream_splits

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
CACHE_FOLDER = ".hpmkd_cache"
_CACHE_FORMAT = 1  # bump when the decoded layout changes, so old caches are ignored
_LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image> (jpg/png)"


def _list_images(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class folder names, and (image path, class index) pairs in sorted order."""
    if not split_dir.is_dir():
        raise UserError(f"image folder '{split_dir}' does not exist; expected {_LAYOUT}")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name[0] != ".")
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((split_dir / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UserError(
            f"no jpg/png images in the class folders of '{split_dir}'; expected {_LAYOUT}"
        )
    return classes, files


def _cache_key(split_dir: Path, files: list[tuple[Path, int]], resize: tuple | None) -> str:
    """Hash of the file list with sizes and mtimes and the decode settings."""
    digest = hashlib.sha256(f"format={_CACHE_FORMAT}|resize={resize}\n".encode())
    for path, label in files:
        stat = path.stat()
        rel = path.relative_to(split_dir).as_posix()
        digest.update(f"{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _writable(directory: Path) -> bool:
    """Whether ``directory`` exists (created if needed) and can be written to."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _decode(path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    """One image as HxW (grey) or HxWx3 (colour) uint8, resized to ``resize`` = (H, W) if given."""
    try:
        with Image.open(path) as image:
            grey = image.getbands()[0] in {"1", "L", "I", "F"}
            image = image.convert("L" if grey else "RGB")
            if resize is not None:
                image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except OSError as err:
        raise UserError(f"cannot decode image {path}: {one_line(err)}") from None


def _decode_all(files: list[tuple[Path, int]], resize: tuple[int, int] | None) -> torch.Tensor:
    """Decode every file in a thread pool into one uint8 NCHW tensor (grey promoted to RGB when
    the folder mixes both)."""
    paths = [path for path, _ in files]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, resize), paths))
    size = arrays[0].shape[:2]
    for path, array in zip(paths, arrays, strict=True):
        if array.shape[:2] != size:
            raise UserError(
                f"image {path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                f"{size[1]}x{size[0]} (WxH); all images must share one size, or set "
                "data.resize=[H,W]"
            )
    if any(array.ndim == 3 for array in arrays):
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    else:
        arrays = [a[:, :, None] for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_image_folder_split(
    split_dir: str | Path,
    *,
    resize: tuple[int, int] | None = None,
    cache_dir: str | Path | None = None,
    listed: tuple[list[str], list[tuple[Path, int]]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``split_dir/<class>/*.{jpg,png}`` into (uint8 NCHW images, int64 labels, classes).

    Classes are the sorted sub-folder names. The decoded tensor is cached in
    ``<split_dir>/../.hpmkd_cache/`` (or in ``cache_dir`` when that is not writable) under a key
    made of the file names, sizes and mtimes and ``resize``, so a changed folder is decoded again.
    ``listed`` is ``_list_images(split_dir)`` when the caller has it already.
    """
    split_dir = Path(split_dir).expanduser()
    resize = tuple(int(v) for v in resize) if resize is not None else None
    classes, files = listed if listed is not None else _list_images(split_dir)
    local = split_dir.parent / CACHE_FOLDER
    folder = local if _writable(local) else Path(cache_dir or default_cache_dir() / "image_folder")
    key = _cache_key(split_dir, files, resize)
    cache = folder.expanduser() / f"{split_dir.parent.name}-{split_dir.name}-{key}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["images"], blob["labels"], blob["classes"]

    images = _decode_all(files, resize)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    blob = {"images": images, "labels": labels, "classes": classes}
    try:
        write_atomic(cache, lambda tmp: torch.save(blob, tmp))
    except OSError as err:
        warnings.warn(f"could not cache decoded images at {cache}: {one_line(err)}", stacklevel=2)
    return images, labels, classes


@register_source("image_folder")
def load(cfg: Mapping) -> DataSplits | StreamSplits:
    """An image-folder dataset with official train and test folders; val carved from train.

    Config: ``root``, ``resize`` ([H, W] or null), ``cache_dir`` (used when root is read-only),
    ``val_fraction``, ``split_seed``, ``normalize`` (null mean/std: computed on the training
    split) and ``augment`` (default random crop with padding 4 and horizontal flip); ``stream``
    (auto: when the decoded train split exceeds ``stream_above_mb``), ``workers`` and
    ``transforms`` (null: derived from ``resize`` and ``augment``) for the streamed path.
    """
    root = Path(required(cfg, "root", f"a folder laid out as {_LAYOUT}")).expanduser()
    if not root.is_dir():
        beside = root.parent
        if (beside / "train").is_dir() and (beside / "test").is_dir():
            raise UserError(
                f"image folder root '{root}' does not exist, but {beside} holds train/ and test/: "
                f"pass data.root={beside}, or move them into {root}"
            )
        raise UserError(f"image folder root '{root}' does not exist; expected {_LAYOUT}")
    resize = option(cfg, "resize")
    if resize is not None and len(resize) != 2:
        raise UserError(f"data.resize must be [H, W] or null, got {resize}")
    listed = {split: _list_images(root / split) for split in ("train", "test")}
    classes, test_classes = listed["train"][0], listed["test"][0]
    if classes != test_classes:
        raise UserError(
            f"class folders differ: {root / 'train'} has [{', '.join(classes)}] but "
            f"{root / 'test'} has [{', '.join(test_classes)}]"
        )
    channels, size = _first_image(listed["train"][1][0][0])
    size = tuple(int(v) for v in resize) if resize is not None else size
    if should_stream(cfg, len(listed["train"][1]), (channels, *size)):
        return _streamed(cfg, root, listed, grey=channels == 1, size=size)
    options = {"resize": resize, "cache_dir": option(cfg, "cache_dir")}
    x_train, y_train, classes = load_image_folder_split(
        root / "train", listed=listed["train"], **options
    )
    x_test, y_test, _ = load_image_folder_split(root / "test", listed=listed["test"], **options)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"train images are {list(x_train.shape[1:])} (CxHxW) but test images are "
            f"{list(x_test.shape[1:])}; set data.resize=[H,W]"
        )
    return image_splits(
        cfg,
        x_train,
        y_train,
        classes,
        x_test=x_test,
        y_test=y_test,
        name=root.name,
        augment={"crop_padding": 4, "flip": True},
    )


def _first_image(path: Path) -> tuple[int, tuple[int, int]]:
    """Channels (1 grey, else 3) and (H, W) of one image, for the in-memory vs streaming choice
    (decoded by torchvision.io: a cached in-memory folder is never opened with PIL again)."""
    from torchvision.io import decode_image, read_file

    try:
        image = decode_image(read_file(str(path)))
    except RuntimeError as err:
        raise UserError(f"cannot decode image {path}: {one_line(err)}") from None
    return (1 if image.shape[0] <= 2 else 3), (int(image.shape[1]), int(image.shape[2]))


def _default_transforms(cfg: Mapping, size: tuple[int, ...]) -> dict:
    """The streamed pipelines that match the in-memory path: ``resize``, then for training a
    random crop with zero padding ``augment.crop_padding`` and a horizontal flip."""
    resize = option(cfg, "resize")
    base: list = [{"Resize": {"size": [int(v) for v in resize]}}] if resize is not None else []
    augment = option(cfg, "augment", {}) or {}
    train = list(base)
    if augment.get("crop_padding"):
        train.append({"RandomCrop": {"size": list(size), "padding": augment["crop_padding"]}})
    if augment.get("flip"):
        train.append("RandomHorizontalFlip")
    return {"train": train, "eval": base}


def _streamed(
    cfg: Mapping, root: Path, listed: dict, *, grey: bool, size: tuple[int, ...]
) -> StreamSplits:
    files = {}
    for split, (_, pairs) in listed.items():
        files[split] = FileList(root / split)
        for label, group in itertools.groupby(pairs, key=lambda pair: pair[1]):
            files[split].add([path for path, _ in group], label)
    transforms = option(cfg, "transforms") or _default_transforms(cfg, size)
    return stream_splits(
        cfg,
        name=root.name,
        train=files["train"].dataset(grey=grey),
        test=files["test"].dataset(grey=grey),
        class_names=listed["train"][0],
        identity={
            "layout": "image_folder",
            "train": files["train"].digest(),
            "test": files["test"].digest(),
            "grey": grey,
        },
        transforms=transforms,
    )
