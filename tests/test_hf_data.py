"""data=hf: Hugging Face datasets saved locally by the test (image and tabular), in memory and
streamed, their errors, and end-to-end distillation on the image one."""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpmkd.data import DataSplits, load_data
from hpmkd.data.stream import StreamSplits
from hpmkd.errors import UserError

datasets = pytest.importorskip("datasets")
Image = pytest.importorskip("PIL.Image")

from tests.conftest import TINY  # noqa: E402

CLASSES = ["cat", "dog", "owl"]


def _images(n: int, seed: int, size: tuple[int, int] = (16, 16)) -> tuple[list, list[int]]:
    """``n`` RGB images whose red level says their class, so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    images = []
    for label in labels:
        pixels = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
        pixels[..., 0] += np.uint8(90 * label)
        images.append(Image.fromarray(pixels))
    return images, labels


def _image_set(images: list, labels: list[int]):
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=CLASSES)}
    )
    return datasets.Dataset.from_dict({"picture": images, "kind": labels}, features=features)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DatasetDict with train and test (no validation) written by save_to_disk."""
    root = tmp_path_factory.mktemp("hf_images") / "shapes"
    splits = {"train": _images(90, 0), "test": _images(30, 1)}
    datasets.DatasetDict({s: _image_set(*v) for s, v in splits.items()}).save_to_disk(str(root))
    return root


def _cfg(root: Path, **extra) -> dict:
    return {"source": "hf", "name": str(root), "val_fraction": 0.2, "split_seed": 0, **extra}


def test_image_dataset_decodes_into_memory_with_detected_columns(image_dir: Path) -> None:
    data = load_data(_cfg(image_dir, stream="false", augment={"flip": True}))
    assert isinstance(data, DataSplits) and data.is_image and data.name == "shapes"
    assert data.class_names == CLASSES and data.num_classes == 3
    assert data.x_train.dtype == torch.uint8 and data.input_shape == (3, 16, 16)
    # the official test split kept whole; validation carved from train (stratified, 20 %)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (72, 18, 30)
    assert torch.bincount(data.y_val).tolist() == [6, 6, 6]
    expected, labels = _images(30, 1)
    assert torch.equal(data.y_test, torch.tensor(labels))
    assert torch.equal(data.x_test[0], torch.from_numpy(np.array(expected[0])).permute(2, 0, 1))
    assert data.mean[0] > data.mean[1]  # computed on the training split: red carries the class
    assert data.augment == {"flip": True}
    assert load_data(_cfg(image_dir, stream="false")).fingerprint() == data.fingerprint()


def test_image_dataset_streams_over_the_arrow_table(image_dir: Path, caplog) -> None:
    transforms = {"train": ["RandomHorizontalFlip"], "eval": [{"CenterCrop": {"size": 12}}]}
    with caplog.at_level(logging.INFO, logger="hpmkd"):
        data = load_data(_cfg(image_dir, stream="true", transforms=transforms))
    assert isinstance(data, StreamSplits)
    assert "streaming from storage (data.stream=true)" in caplog.text
    assert "normalisation estimated on 72 of 72 training images" in caplog.text
    assert data.input_shape == (3, 12, 12) and data.transforms == transforms
    assert (len(data.train), len(data.val), len(data.test)) == (72, 18, 30)
    image, label = data.test[4]
    assert isinstance(image, Image.Image) and label == 1
    # a worker receives the table by its file path, not a copy of the rows
    assert len(pickle.dumps(data.train)) < 4096
    # the same split rule as in memory
    memory = load_data(_cfg(image_dir, stream="false"))
    assert [data.val[i][1] for i in range(len(data.val))] == memory.y_val.tolist()
    again = load_data(_cfg(image_dir, stream="true", transforms=transforms))
    other = load_data(_cfg(image_dir, stream="true", transforms=transforms, split_seed=1))
    assert again.fingerprint() == data.fingerprint() != other.fingerprint()


def test_image_sizes_must_agree_in_memory(tmp_path: Path) -> None:
    small, labels = _images(6, 0, (8, 8))
    large, _ = _images(6, 0, (10, 12))
    root = tmp_path / "mixed"
    _image_set(small + large, labels + labels).save_to_disk(str(root))
    with pytest.raises(UserError, match=r"2 sizes .*data\.resize=\[H,W\].*data\.stream=true"):
        load_data(_cfg(root, stream="false", val_fraction=0.0, test_fraction=0.5))
    data = load_data(_cfg(root, stream="false", resize=[8, 8], val_fraction=0, test_fraction=0.5))
    assert data.input_shape == (3, 8, 8) and len(data.y_train) + len(data.y_test) == 12
    grey = [image.convert("L") for image in small]
    _image_set(grey + small, labels + labels).save_to_disk(str(tmp_path / "grey"))
    data = load_data(_cfg(tmp_path / "grey", stream="false", val_fraction=0, test_fraction=0.5))
    assert data.input_shape == (3, 8, 8)  # grey images made RGB beside colour ones


def _table() -> datasets.Dataset:
    rng = np.random.default_rng(0)
    n = 60
    species = rng.integers(0, 2, n)
    return datasets.Dataset.from_dict(
        {
            "height": (rng.normal(size=n) + 3 * species).tolist(),
            "weight": rng.normal(50, 10, n).tolist(),
            "colour": rng.choice(["red", "blue"], n).tolist(),
            "species": ["oak" if s else "elm" for s in species],
        }
    )


def test_tabular_dataset_standardised_with_categories_one_hot(tmp_path: Path, caplog) -> None:
    root = tmp_path / "trees"
    _table().save_to_disk(str(root))
    with caplog.at_level(logging.INFO, logger="hpmkd"):
        data = load_data(_cfg(root, label_column="species", val_fraction=0.1, test_fraction=0.2))
    assert not data.is_image and data.class_names == ["elm", "oak"]
    assert "categorical (one-hot encoded) columns: colour" in caplog.text
    assert data.input_shape == (4,)  # height, weight, colour=blue, colour=red
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (43, 5, 12)
    numeric = data.x_train[:, :2]
    assert torch.allclose(numeric.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(numeric.std(0, unbiased=False), torch.ones(2), atol=1e-4)


def test_tabular_official_validation_split_is_kept(tmp_path: Path) -> None:
    table = _table().train_test_split(test_size=20, seed=0)
    dev = table["train"].train_test_split(test_size=10, seed=0)
    splits = {"train": dev["train"], "validation": dev["test"], "test": table["test"]}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "trees"))
    data = load_data(_cfg(tmp_path / "trees", label_column="species"))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (30, 10, 20)
    expected = [["elm", "oak"].index(v) for v in dev["test"]["species"]]
    assert data.y_val.tolist() == expected
    # standardised with the training split's statistics, like the test split
    height = np.asarray(dev["train"]["height"])
    first = (dev["test"][0]["height"] - height.mean()) / height.std()
    assert data.x_val[0, 0].item() == pytest.approx(first, rel=1e-5)
    del splits["test"]  # a test split carved from train (20 %), the validation split kept
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "no_test"))
    data = load_data(_cfg(tmp_path / "no_test", label_column="species"))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (24, 10, 6)
    assert data.y_val.tolist() == expected


def test_tabular_nested_columns_are_refused(tmp_path: Path) -> None:
    table = _table().add_column("tags", [[1, 2]] * 60)
    table.save_to_disk(str(tmp_path / "nested"))
    with pytest.raises(UserError, match=r"tags hold neither numbers nor text.*data\.drop=\[tags\]"):
        load_data(_cfg(tmp_path / "nested", label_column="species"))
    data = load_data(_cfg(tmp_path / "nested", label_column="species", drop=["tags"]))
    assert data.input_shape == (4,)


def test_bad_input_gives_one_line(tmp_path: Path, image_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cases = [
        ({"name": None}, r"data=hf needs data\.name=<a Hugging Face hub id"),
        ({"name": "nobody-here/no-such-set"}, "'nobody-here/no-such-set'.*save_to_disk"),
        ({"name": str(image_dir), "label_column": "nope"}, "data.label_column=nope: no such"),
        ({"name": str(image_dir), "splits": {"test": "dev"}}, "data.splits.test=dev: no such"),
    ]
    unlabelled = _image_set(*_images(6, 0)).map(lambda row: {"kind": -1})
    datasets.DatasetDict({"train": _image_set(*_images(6, 0)), "test": unlabelled}).save_to_disk(
        str(tmp_path / "hidden")
    )
    cases.append(({"name": str(tmp_path / "hidden")}, r"data\.splits\.test=validation"))
    no_label = datasets.Dataset.from_dict({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    no_label.save_to_disk(str(tmp_path / "nolabel"))
    cases.append(({"name": str(tmp_path / "nolabel")}, "no label column found"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # the extra not installed
    with pytest.raises(UserError, match=r"pip install 'hpmkd\[datasets\]'"):
        load_data({"source": "hf", "name": str(image_dir)})
    monkeypatch.setitem(sys.modules, "datasets", datasets)
    for extra, message in cases:
        with pytest.raises(UserError, match=message) as err:
            load_data({"source": "hf", "cache_dir": str(tmp_path / "cache"), **extra})
        assert "\n" not in str(err.value)
    # what the message suggests: the labelled validation split as the test split, val carved
    datasets.DatasetDict(
        {"train": _image_set(*_images(30, 0)), "validation": _image_set(*_images(9, 1)),
         "test": unlabelled}
    ).save_to_disk(str(tmp_path / "hidden_test"))  # fmt: skip
    data = load_data(_cfg(tmp_path / "hidden_test", splits={"test": "validation", "val": None}))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (24, 6, 9)


STREAMED = ("data.stream=true", "data.workers=0", "data.transforms.train=[RandomHorizontalFlip]",
            "data.transforms.eval=[]")  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path"), [("kd", ()), ("at", ()), ("at", STREAMED)], ids=["kd", "at", "at-stream"]
)
def test_distillation_end_to_end_on_a_saved_image_dataset(run_cli, image_dir, method, path):
    run = run_cli(
        "train", "+strategy=kd", f"method={method}", "data=hf", f"data.name={image_dir}",
        "teacher=resnet8", "student=resnet8", "recipe.epochs=1", *path, *TINY,
    )  # fmt: skip
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["method"] == method and results["data"]["name"] == "shapes"
    assert results["data"]["train"] == 81 and results["data"]["test"] == 30
    assert results["data"]["input_shape"] == [3, 16, 16]
