"""ImageNet and Tiny-ImageNet folders, streamed: files listed once, decoded in loader workers.

``data=imagenet``: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the official
validation set, used as the test split; torchvision's and most tools' layout).
``data=tiny_imagenet`` reads the archive's own layout: ``root/train/<wnid>/images/*.JPEG`` and
``root/val/images/*.JPEG`` labelled by ``root/val/val_annotations.txt`` (a val folder already
sorted into ``val/<wnid>/`` works too). The validation split is carved from train
(``data.val_fraction``, ``data.split_seed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hpmkd.data.registry import register_source
from hpmkd.data.stream import StreamSplits, stream_choice
from hpmkd.errors import UserError

from ._common import required
from ._files import FileList, image_files
from ._streamed import stream_splits

_IMAGENET = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
_TINY = (
    "<root>/train/<wnid>/images/*.JPEG, <root>/val/images/*.JPEG and "
    "<root>/val/val_annotations.txt (the tiny-imagenet-200 archive as extracted)"
)


def _root(cfg: Mapping, layout: str) -> Path:
    root = Path(required(cfg, "root", f"a folder laid out as {layout}")).expanduser()
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise UserError(f"data.root '{root}' does not hold train/ and val/; expected {layout}")
    if stream_choice(cfg) == "false":
        raise UserError(
            f"data '{cfg.get('name')}' always streams (images of many sizes, random resized "
            "crops); data.stream=false is for data=image_folder"
        )
    return root


def _classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_folders(root: Path, split: str, classes: list[str], sub: str = "") -> FileList:
    files = FileList(root)
    for label, name in enumerate(classes):
        folder = root / split / name / sub
        if folder.is_dir():
            files.add(image_files(folder), label)
    return files


@register_source("imagenet")
def load_imagenet(cfg: Mapping) -> StreamSplits:
    """ImageNet-layout folder; classes are the sorted folder names of train/."""
    root = _root(cfg, _IMAGENET)
    classes = _classes(root / "train")
    val_classes = _classes(root / "val")
    if val_classes != classes:
        missing = sorted(set(classes) ^ set(val_classes))[:5]
        raise UserError(
            f"{root}/train and {root}/val hold different class folders (e.g. {missing}); "
            f"expected {_IMAGENET}"
        )
    train, test = _class_folders(root, "train", classes), _class_folders(root, "val", classes)
    return _splits(cfg, root, "imagenet", train, test, classes)


@register_source("tiny_imagenet")
def load_tiny_imagenet(cfg: Mapping) -> StreamSplits:
    """Tiny-ImageNet as extracted from its archive (or with val/ sorted into class folders)."""
    root = _root(cfg, _TINY)
    classes = _classes(root / "train")
    train = _class_folders(root, "train", classes, sub="images")
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        test = _annotated(root, annotations, classes)
    else:
        test = _class_folders(root, "val", classes, sub="images")
        if not test.paths:
            test = _class_folders(root, "val", classes)
    return _splits(cfg, root, "tiny_imagenet", train, test, classes)


def _annotated(root: Path, annotations: Path, classes: list[str]) -> FileList:
    """val/images/<file> labelled by the first two tab-separated columns of the annotations."""
    index = {name: label for label, name in enumerate(classes)}
    labels: dict[str, int] = {}
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(
                f"{annotations}:{number}: expected '<file>\\t<wnid of train/>', got {line!r}"
            )
        labels[fields[0]] = index[fields[1]]
    files = FileList(root)
    by_label: dict[int, list] = {}
    for entry in image_files(root / "val" / "images"):
        if entry.name not in labels:
            raise UserError(f"{entry.path} has no line in {annotations}")
        by_label.setdefault(labels[entry.name], []).append(entry)
    for label in sorted(by_label):
        files.add(by_label[label], label)
    return files


def _splits(
    cfg: Mapping, root: Path, layout: str, train: FileList, test: FileList, classes: list[str]
) -> StreamSplits:
    identity = {"layout": layout, "train": train.digest(), "test": test.digest()}
    return stream_splits(
        cfg,
        name=root.name,
        train=train.dataset(),
        test=test.dataset(),
        class_names=classes,
        identity=identity,
    )
