"""Data sources: split rules, preprocessing, caching and one-line user errors (all offline)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from hpmkd.data import DataSplits, list_datasets, load_data
from hpmkd.data.registry import SOURCE_TABLE
from hpmkd.data.sources import image_folder
from hpmkd.data.sources._images import channel_stats
from hpmkd.data.splits import split_indices
from hpmkd.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")


def split_rows(data: DataSplits, split: str) -> set[bytes]:
    """Each sample of a split as bytes, to compare split contents."""
    x = getattr(data, f"x_{split}")
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


# --- registry ---------------------------------------------------------------------------------


def test_unknown_dataset_names_the_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        load_data({"name": "mnist9"})
    message = str(err.value)
    assert "mnist9" in message and "\n" not in message
    for name in ("digits", "cifar10", "image_folder", "csv", "adult"):
        assert name in message
    assert list_datasets() == sorted(SOURCE_TABLE)


def test_every_preset_names_a_source_and_resolves() -> None:
    paths = {"data_dir": "/d", "cache_dir": "/c", "shared_data": "/s"}
    presets = sorted((REPO / "conf" / "data").glob("*.yaml"))
    expected = set(SOURCE_TABLE) | {"letter", "penbased", "magic", "cifar10_jpeg"}
    assert {p.stem for p in presets} >= expected
    for preset in presets:
        cfg = OmegaConf.merge({"paths": paths}, {"data": OmegaConf.load(preset)})
        data = OmegaConf.to_container(cfg.data, resolve=True)
        assert (data.get("source") or data["name"]) in SOURCE_TABLE, preset.name
        if preset.stem == "letter":
            assert data["path"] == "/s/tabular/letter.csv"


# --- split rules ------------------------------------------------------------------------------


def test_split_indices_disjoint_covering_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    parts = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    rows = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert len(rows) == len(set(rows.tolist())) == len(labels)  # disjoint and covering
    assert len(parts["test"]) == 200 and len(parts["val"]) == 80
    overall = np.bincount(labels) / len(labels)
    for split in ("train", "val", "test"):
        share = np.bincount(labels[parts[split]], minlength=4) / len(parts[split])
        assert np.abs(share - overall).max() < 0.02, split
    again = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    other = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], other["test"])


def test_split_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="val_fraction"):
        split_indices(np.zeros(10), val_fraction=1.5, seed=0)
    with pytest.raises(UserError, match="stratified val split"):
        split_indices(np.array([0, 0, 0, 1]), val_fraction=0.5, seed=0)


# --- embedded sklearn sets ----------------------------------------------------------------------


def test_digits_images_splits_and_fingerprint() -> None:
    data = load_data(OmegaConf.create({"name": "digits"}))
    assert data.is_image and data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.input_shape == (1, 8, 8) and data.x_train.shape[1:] == (1, 8, 8)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (1293, 144, 360)
    assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
    assert int(data.x_train.max()) == 255 and data.augment == {}
    assert data.mean == pytest.approx(channel_stats(data.x_train)[0])
    assert 0 < data.mean[0] < 1 and 0 < data.std[0] < 1
    train, val, test = (split_rows(data, s) for s in ("train", "val", "test"))
    assert not (val & test) and len(test - train) > 300  # digits has a few duplicate images
    counts = Counter(data.y_test.tolist())
    assert max(counts.values()) - min(counts.values()) <= 2  # classes ~equal, stratified

    same = load_data({"name": "digits"})
    reseeded = load_data({"name": "digits", "split_seed": 1})
    assert data.fingerprint() == same.fingerprint()
    assert len(data.fingerprint()) == 64
    assert torch.equal(data.y_test, same.y_test) and not torch.equal(data.y_test, reseeded.y_test)
    assert data.fingerprint() != reseeded.fingerprint()
    changed = load_data({"name": "digits"})
    changed.x_test[0, 0, 0, 0] ^= 1
    assert changed.fingerprint() != data.fingerprint()
    assert data.summary() == {
        "name": "digits", "train": 1293, "val": 144, "test": 360,
        "num_classes": 10, "input_shape": [1, 8, 8],
    }  # fmt: skip


def test_val_fraction_zero_gives_empty_val_with_trailing_shape() -> None:
    images = load_data({"name": "digits", "val_fraction": 0})
    assert images.x_val.shape == (0, 1, 8, 8) and images.y_val.shape == (0,)
    assert len(images.y_train) + len(images.y_test) == 1797
    table = load_data({"name": "breast_cancer", "val_fraction": 0.0})
    assert table.x_val.shape == (0, 30) and table.x_val.dtype == torch.float32
    assert len(images.fingerprint()) == 64 and len(table.fingerprint()) == 64


def test_channel_stats_match_float_computation() -> None:
    images = torch.randint(0, 256, (20, 3, 5, 7), dtype=torch.uint8)
    mean, std = channel_stats(images)
    as_float = images.double() / 255
    assert mean == pytest.approx(as_float.mean(dim=(0, 2, 3)).tolist())
    assert std == pytest.approx(as_float.std(dim=(0, 2, 3), unbiased=False).tolist())


def test_breast_cancer_table() -> None:
    data = load_data({"name": "breast_cancer"})
    assert not data.is_image and data.mean is None and data.std is None and data.augment == {}
    assert data.input_shape == (30,) and data.x_train.dtype == torch.float32
    assert data.class_names == ["malignant", "benign"] and data.num_classes == 2
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 569
    assert data.x_train.mean(0).abs().max() < 1e-4
    assert (data.x_train.std(0, unbiased=False) - 1).abs().max() < 1e-3


# --- csv --------------------------------------------------------------------------------------


def write_table(path: Path, rows: int, seed: int, outlier: bool = False) -> Path:
    """A table with numeric, categorical and missing values and string labels."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "size": rng.normal(5, 2, rows),
            "colour": rng.choice(["red", "green", "blue"], rows),
            "weight": rng.normal(-3, 0.5, rows),
            "id": np.arange(rows),
            "label": rng.choice(["cat", "ant", "bee"], rows),
        }
    )
    frame.loc[1, "weight"] = np.nan
    if outlier:
        frame.loc[0, ["size", "colour"]] = [1e6, "purple"]
    frame.to_csv(path, index=False)
    return path


def test_csv_one_hot_labels_and_train_only_standardisation(tmp_path: Path) -> None:
    train_csv = write_table(tmp_path / "train.csv", 300, seed=0)
    cfg = {"name": "csv", "path": str(train_csv), "target": "label", "drop": ["id"]}
    cfg["impute"] = "median"  # write_table leaves one weight missing
    plain = write_table(tmp_path / "test_plain.csv", 50, seed=1)
    spiked = write_table(tmp_path / "test_outlier.csv", 50, seed=1, outlier=True)
    data = load_data({**cfg, "test_path": str(plain)})
    with_outlier = load_data({**cfg, "test_path": str(spiked)})

    assert data.name == "train" and data.class_names == ["ant", "bee", "cat"]
    assert data.input_shape == (2 + 3,)  # size, weight, one-hot colour
    assert len(data.y_test) == 50 and len(data.y_train) + len(data.y_val) == 300
    numeric = data.x_train[:, :2]
    assert (
        numeric.mean(0).abs().max() < 1e-4
        and (numeric.std(0, unbiased=False) - 1).abs().max() < 1e-3
    )
    one_hot = data.x_train[:, 2:]
    assert set(one_hot.unique().tolist()) == {0.0, 1.0} and torch.all(one_hot.sum(1) == 1)
    assert not torch.isnan(data.x_train).any() and not torch.isnan(data.x_test).any()
    # the outlier in the test file moves neither the scaler nor the encoder
    assert torch.equal(data.x_train, with_outlier.x_train)
    assert with_outlier.x_test[0, 0] > 1000 and torch.all(with_outlier.x_test[0, 2:] == 0)


def test_csv_defaults_carve_test_split_and_use_last_column(tmp_path: Path) -> None:
    path = write_table(tmp_path / "animals.csv", 200, seed=3)
    cfg = {"name": "csv", "path": str(path), "categorical": ["colour", "id"], "impute": "median"}
    data = load_data(cfg)
    assert data.class_names == ["ant", "bee", "cat"]
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (144, 16, 40)
    assert data.input_shape == (2 + 3 + 144,)  # label kept out; id one-hot over train rows


def test_csv_missing_file_and_column_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(UserError, match=str(missing)):
        load_data({"name": "csv", "path": str(missing)})
    with pytest.raises(UserError, match="needs data.path"):
        load_data({"name": "csv"})
    path = write_table(tmp_path / "t.csv", 30, seed=0)
    with pytest.raises(UserError) as err:
        load_data({"name": "csv", "path": str(path), "target": "kind"})
    assert "'kind'" in str(err.value) and "size, colour, weight, id, label" in str(err.value)


@needs_shared
@pytest.mark.shared_data
def test_csv_preset_on_shared_table() -> None:
    preset = OmegaConf.load(REPO / "conf" / "data" / "penbased.yaml")
    cfg = OmegaConf.merge({"paths": {"shared_data": str(SHARED_DATA)}}, {"data": preset}).data
    data = load_data(cfg)
    assert data.name == "penbased" and data.num_classes == 10 and data.input_shape == (16,)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 10992


# --- OpenML -----------------------------------------------------------------------------------


def fake_adult(rows: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows),
            "workclass": rng.choice(["Private", "State-gov", "Self-emp"], rows),
            "hours": rng.normal(40, 10, rows),
            "class": rng.choice(["<=50K", ">50K"], rows),
        }
    )


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Make fetch_openml fail like an offline machine; returns the calls it received."""
    import sklearn.datasets

    calls: list[dict] = []

    def offline(**kwargs: object) -> None:
        calls.append(kwargs)
        raise URLError("Name or service not known")

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", offline)
    return calls


def test_openml_reads_only_the_cache(tmp_path: Path, no_network: list[dict]) -> None:
    cache = tmp_path / "openml"
    cache.mkdir()
    fake_adult().to_csv(cache / "adult.csv", index=False)
    (cache / "adult.json").write_text(json.dumps({"data_id": 1590, "target": "class"}))
    data = load_data({"name": "adult", "cache_dir": str(tmp_path)})
    assert not no_network
    assert data.class_names == ["<=50K", ">50K"] and data.input_shape == (2 + 3,)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (144, 16, 40)
    numeric = data.x_train[:, :2]
    assert (
        numeric.mean(0).abs().max() < 1e-4
        and (numeric.std(0, unbiased=False) - 1).abs().max() < 1e-3
    )


def test_openml_offline_without_cache_is_one_line(tmp_path: Path, no_network: list[dict]) -> None:
    with pytest.raises(UserError) as err:
        load_data({"name": "adult", "cache_dir": str(tmp_path)})
    message = str(err.value)
    assert message.startswith("could not download OpenML dataset 'adult' (data_id 1590): ")
    assert f"no cached copy at {tmp_path / 'openml' / 'adult.csv'}" in message
    assert "Name or service not known" in message and "\n" not in message
    assert [call["data_id"] for call in no_network] == [1590]


def test_openml_first_download_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.datasets
    from sklearn.utils import Bunch

    frame = fake_adult().rename(columns={"class": "quality"})
    monkeypatch.setattr(sklearn.datasets, "fetch_openml", lambda **kw: Bunch(frame=frame))
    first = load_data({"name": "wine_quality", "cache_dir": str(tmp_path)})
    assert (tmp_path / "openml" / "wine_quality.csv").is_file()
    meta = json.loads((tmp_path / "openml" / "wine_quality.json").read_text())
    assert meta == {"data_id": 287, "target": "quality"}
    monkeypatch.setattr(sklearn.datasets, "fetch_openml", None)  # a second download would fail
    again = load_data({"name": "wine_quality", "cache_dir": str(tmp_path)})
    assert first.fingerprint() == again.fingerprint()


# --- image folder -----------------------------------------------------------------------------


def make_tree(root: Path, classes: dict[str, tuple[str, ...]], per_class: int = 6) -> Path:
    """``root/<split>/<class>/<i>.png`` with random 8x8 RGB images; classes per split."""
    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "shapes", {"train": ("b", "a", "c"), "test": ("a", "b", "c")})


def test_image_folder_decodes_caches_and_redecodes(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {"name": "image_folder", "root": str(tree), "val_fraction": 1 / 6}
    data = load_data(cfg)
    assert data.name == "shapes" and data.class_names == ["a", "b", "c"]
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (15, 3, 8, 8)
    assert (len(data.y_val), len(data.y_test)) == (3, 18)
    assert data.augment == {"crop_padding": 4, "flip": True} and len(data.mean) == 3
    assert data.mean == pytest.approx(channel_stats(data.x_train)[0])
    first = np.array(Image.open(tree / "test" / "a" / "0000.png"))
    assert torch.equal(data.x_test[0], torch.from_numpy(first).permute(2, 0, 1))
    caches = sorted((tree / ".hpmkd_cache").glob("*.pt"))
    assert [p.name.split("-")[1] for p in caches] == ["test", "train"]

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_decoding)
        cached = load_data(cfg)
    assert cached.fingerprint() == data.fingerprint()

    changed = tree / "test" / "a" / "0000.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, (1e9, 1e9))
    redone = load_data(cfg)
    assert int(redone.x_test[0].sum()) == 0 and torch.equal(redone.x_train, data.x_train)
    assert len(list((tree / ".hpmkd_cache").glob("*test*.pt"))) == 2


def test_image_folder_uses_cache_dir_when_root_is_read_only(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_folder, "_writable", lambda directory: False)
    cfg = {"name": "image_folder", "root": str(tree), "cache_dir": str(tmp_path / "c")}
    load_data({**cfg, "val_fraction": 1 / 6})
    assert len(list((tmp_path / "c").glob("shapes-*.pt"))) == 2
    assert not (tree / ".hpmkd_cache").exists()


def test_image_folder_split_is_reusable(tree: Path, tmp_path: Path) -> None:
    images, labels, classes = image_folder.load_image_folder_split(tree / "train", resize=(4, 6))
    assert images.shape == (18, 3, 4, 6) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6 and classes == ["a", "b", "c"]

    grey = tmp_path / "grey" / "train" / "only"
    grey.mkdir(parents=True)
    Image.new("L", (5, 4), color=7).save(grey / "a.png")
    Image.new("L", (5, 4), color=9).save(grey / "b.jpg")
    images, _, _ = image_folder.load_image_folder_split(grey.parent)
    assert images.shape == (2, 1, 4, 5) and images[0].unique().tolist() == [7]
    Image.new("RGB", (5, 4), color=(1, 2, 3)).save(grey / "c.png")
    images, _, _ = image_folder.load_image_folder_split(grey.parent)
    assert images.shape == (3, 3, 4, 5) and images[0].unique().tolist() == [7]  # grey promoted


def test_image_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=str(missing)):
        load_data({"name": "image_folder", "root": str(missing)})
    with pytest.raises(UserError, match="needs data.root"):
        load_data({"name": "image_folder"})

    odd = make_tree(tmp_path / "odd", {"train": ("a", "b"), "test": ("a", "b", "c")}, per_class=2)
    with pytest.raises(UserError) as err:
        load_data({"name": "image_folder", "root": str(odd)})
    assert "[a, b]" in str(err.value) and "[a, b, c]" in str(err.value)

    mixed = make_tree(tmp_path / "mixed", {"train": ("a", "b"), "test": ("a", "b")}, per_class=2)
    big = mixed / "train" / "b" / "0001.png"
    Image.new("RGB", (10, 8)).save(big)
    with pytest.raises(UserError, match=f"{big} is 10x8"):
        load_data({"name": "image_folder", "root": str(mixed), "val_fraction": 0})
    resized = load_data(
        {"name": "image_folder", "root": str(mixed), "resize": [8, 8], "val_fraction": 0}
    )
    assert resized.x_train.shape == (4, 3, 8, 8)
    with pytest.raises(UserError, match=str(mixed / "valid")):
        image_folder.load_image_folder_split(mixed / "valid")


# --- torchvision sets -------------------------------------------------------------------------


def test_cifar10_without_download_names_the_root(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    with pytest.raises(UserError) as err:
        load_data({"name": "cifar10", "root": str(root), "download": False})
    assert str(root) in str(err.value) and "data.root" in str(err.value)
    assert "\n" not in str(err.value)


def test_cifar100_failed_download_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(self: object) -> None:
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", offline)
    with pytest.raises(UserError) as err:
        load_data({"name": "cifar100", "root": str(tmp_path), "download": True})
    message = str(err.value)
    assert message.startswith(f"could not download cifar100 into {tmp_path}: ")
    assert "Name or service not known" in message and "\n" not in message


@needs_shared
@pytest.mark.shared_data
def test_fashion_mnist_from_local_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (SHARED_DATA / "fashion-mnist").glob("*-ubyte.gz"):
        (raw / archive.name).symlink_to(archive)
    data = load_data({"name": "fashion_mnist", "root": str(tmp_path), "download": False})
    assert data.x_train.dtype == torch.uint8 and data.input_shape == (1, 28, 28)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (54000, 6000, 10000)
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top"
    assert data.mean == (0.2860,) and data.std == (0.3530,) and data.augment == {}
    assert Counter(data.y_test.tolist()) == dict.fromkeys(range(10), 1000)


# --- tables that are not what they seem (issue 13) ---------------------------------------------


def numbers_with_markers(path: Path) -> Path:
    """A table whose numeric column ``a`` holds two ``?`` markers and a text column ``c``."""
    rng = np.random.default_rng(0)
    a = [str(round(v, 3)) for v in rng.normal(size=60)]
    a[2] = a[7] = "?"
    frame = pd.DataFrame({"a": a, "c": rng.choice(["x", "y"], 60), "y": np.arange(60) % 3})
    frame.to_csv(path, index=False)
    return path


def test_csv_markers_read_as_missing_then_imputed_with_a_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = {"name": "csv", "path": str(numbers_with_markers(tmp_path / "t.csv"))}
    with pytest.raises(UserError, match=r"column 'a' is numeric except for '\?'"):
        load_data(cfg)
    with pytest.raises(UserError, match=r"a \(2 missing\).*data.impute=median"):
        load_data({**cfg, "na_values": ["?"]})
    with caplog.at_level("INFO", logger="hpmkd"):
        data = load_data({**cfg, "na_values": ["?"], "impute": "median"})
    assert data.input_shape == (1 + 2,)  # a numeric (not one-hot over its values), c one-hot
    assert not torch.isnan(data.x_train).any()
    messages = [r.getMessage() for r in caplog.records]
    assert "categorical (one-hot encoded) columns: c" in messages
    assert "imputed the training median into a (2 missing)" in messages


def test_csv_column_named_categorical_keeps_its_markers(tmp_path: Path) -> None:
    path = numbers_with_markers(tmp_path / "t.csv")
    data = load_data({"name": "csv", "path": str(path), "categorical": ["a", "c"]})
    assert data.input_shape[0] > 40  # one-hot over the distinct values, as asked


def test_openml_tables_share_the_checks(tmp_path: Path, no_network: list[dict]) -> None:
    cache = tmp_path / "openml"
    cache.mkdir()
    table = fake_adult()
    table["hours"] = table["hours"].astype(object)
    table.loc[[3, 9], "hours"] = "?"
    table.to_csv(cache / "adult.csv", index=False)
    (cache / "adult.json").write_text(json.dumps({"data_id": 1590, "target": "class"}))
    cfg = {"name": "adult", "cache_dir": str(tmp_path)}
    with pytest.raises(UserError, match="column 'hours'"):
        load_data(cfg)
    data = load_data({**cfg, "na_values": ["?"], "impute": "median"})
    assert data.input_shape == (2 + 3,)


def test_cifar10_jpeg_unpacked_as_its_config_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conf/data/cifar10_jpeg.yaml: the archive (train/ and test/ at its top) unpacked into
    <data_dir>/CIFAR-10-images loads; unpacked into data_dir itself, the error says so."""
    data_dir = tmp_path / "data"
    folder = data_dir / "CIFAR-10-images"
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (folder / split / name).mkdir(parents=True)
            for i in range(10):
                pixels = np.full((32, 32, 3), 25 * i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{i:04d}.jpg", quality=75)
    preset = OmegaConf.load(REPO / "conf" / "data" / "cifar10_jpeg.yaml")
    paths = {"data_dir": str(data_dir), "cache_dir": str(tmp_path / "cache")}
    cfg = OmegaConf.merge({"paths": paths}, {"data": preset}).data
    data = load_data(cfg)
    assert data.class_names == ["cat", "dog"] and data.x_train.shape[1:] == (3, 32, 32)
    folder.rename(tmp_path / "elsewhere")
    for split in ("train", "test"):
        (tmp_path / "elsewhere" / split).rename(data_dir / split)
    with pytest.raises(UserError, match=f"pass data.root={data_dir}"):
        load_data(cfg)
