"""data=torchvision: classes of torchvision.datasets fed from files the test writes in each
class's own on-disk format (Food101: split by name; MNIST: train=True/False), in memory and
streamed, and end-to-end distillation."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpmkd.data import DataSplits, load_data
from hpmkd.data.sources.torchvision_dataset import split_arguments
from hpmkd.data.stream import StreamSplits
from hpmkd.errors import UserError
from tests.conftest import TINY

FOODS = ["apple_pie", "bibimbap", "churros"]


@pytest.fixture(scope="module")
def food_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``food-101/meta/{train,test}.json`` and ``images/<class>/<id>.jpg`` (16x16, the class in
    the red level) as torchvision's Food101 reads them."""
    root = tmp_path_factory.mktemp("food")
    rng = np.random.default_rng(0)
    meta = {"train": {}, "test": {}}
    for label, food in enumerate(FOODS):
        (root / "food-101" / "images" / food).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
            pixels[..., 0] += np.uint8(100 * label)
            Image.fromarray(pixels).save(root / "food-101" / "images" / food / f"{i}.jpg")
            meta["train" if i < 15 else "test"].setdefault(food, []).append(f"{food}/{i}")
    (root / "food-101" / "meta").mkdir()
    for split, content in meta.items():
        (root / "food-101" / "meta" / f"{split}.json").write_text(json.dumps(content))
    return root


def _cfg(root: Path, name: str = "Food101", **extra) -> dict:
    return {"source": "torchvision", "name": name, "root": str(root), "download": False, **extra}


def test_split_arguments_from_the_signature_and_the_table() -> None:
    import torchvision.datasets as tv

    assert split_arguments(tv.MNIST) == {"train": {"train": True}, "test": {"train": False}}
    assert split_arguments(tv.SVHN) == {"train": {"split": "train"}, "test": {"split": "test"}}
    assert split_arguments(tv.Country211)["val"] == {"split": "valid"}
    assert split_arguments(tv.EuroSAT) == {"train": {}}


def test_food101_decoded_into_memory(food_root: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="hpmkd"):
        data = load_data(_cfg(food_root, val_fraction=0.2, stream="false"))
    assert isinstance(data, DataSplits) and data.class_names == FOODS
    assert data.input_shape == (3, 16, 16) and data.x_train.dtype == torch.uint8
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (36, 9, 15)
    assert torch.bincount(data.y_test).tolist() == [5, 5, 5]
    assert "normalisation computed on the training split" in caplog.text
    assert data.mean[0] > data.mean[2]  # the red level carries the class


def test_food101_streamed(food_root: Path) -> None:
    transforms = {"train": ["RandomHorizontalFlip"], "eval": [{"Resize": {"size": 8}}]}
    data = load_data(
        _cfg(food_root, stream="true", transforms=transforms, normalize={"mean": [0.5] * 3})
    )
    assert isinstance(data, StreamSplits) and data.input_shape == (3, 8, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 5, 15)
    image, label = data.test[14]
    assert isinstance(image, Image.Image) and label == 2
    # auto: streamed when the decoded training split (40 x 3x16x16 bytes) exceeds the limit
    auto = {"stream": "auto", "transforms": transforms, "normalize": {"mean": [0.5] * 3}}
    assert isinstance(load_data(_cfg(food_root, **auto, stream_above_mb=0.02)), StreamSplits)
    assert isinstance(load_data(_cfg(food_root, **auto, stream_above_mb=0.04)), DataSplits)
    assert data.identity["class"] == "Food101" and data.identity["sizes"] == {
        "train": 45,
        "test": 15,
    }


def test_a_class_without_splits_gets_test_and_val_carved(food_root: Path) -> None:
    folder = food_root / "food-101" / "images"  # ImageFolder: class folders, no split argument
    data = load_data(_cfg(folder, "ImageFolder", stream="false", val_fraction=0.25))
    assert data.class_names == FOODS and data.input_shape == (3, 16, 16)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (36, 12, 12)
    assert torch.bincount(data.y_test).tolist() == [4, 4, 4]


def _idx(path: Path, array: np.ndarray) -> None:
    """An idx file as MNIST's raw files: magic (type 8 = uint8, rank), sizes, bytes."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_train_flag_and_no_test_carving(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = load_data(_cfg(tmp_path, "MNIST", val_fraction=0.2, stream="false"))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (40, 10, 20)


def test_bad_input_gives_one_line(tmp_path: Path) -> None:
    cases = [
        (_cfg(tmp_path, None), "data=torchvision needs data.name=<a class of torchvision"),
        (_cfg(tmp_path, "Foodie101"), "no dataset class 'Foodie101'; e.g. CIFAR10"),
        (
            _cfg(tmp_path),
            "Food101 not found: no Food101 files (as torchvision lays them out) under",
        ),
        (_cfg(tmp_path, kwargs={"colour": 1}), "Food101("),
    ]
    for cfg, message in cases:
        with pytest.raises(UserError) as err:
            load_data(cfg)
        assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["kd", "fitnet"])
def test_distillation_end_to_end_on_food101(run_cli, food_root: Path, method: str) -> None:
    run = run_cli(
        "train", "+strategy=kd", f"method={method}", "data=torchvision", "data.name=Food101",
        f"data.root={food_root}", "data.download=false", "teacher=resnet8", "student=resnet8",
        "recipe.epochs=1", *TINY,
    )  # fmt: skip
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["method"] == method and results["data"]["name"] == "Food101"
    assert results["data"]["test"] == 15
