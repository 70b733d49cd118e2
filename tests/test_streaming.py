"""The streaming path: ImageNet-layout folders generated here (variable image sizes, three
classes), read by DataLoader workers through YAML transforms; every engine path on top of it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from hpmkd.data import load_data
from hpmkd.data.loader import make_datamodule, split_size
from hpmkd.data.stream import StreamSplits, should_stream
from hpmkd.data.stream_loader import auto_workers
from hpmkd.data.stream_transforms import pipelines
from hpmkd.engine.teacher_cache import stream_cache_off
from hpmkd.errors import UserError
from tests.conftest import TINY
from tests.test_resume import _journal, fit_starts, kill_when

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
CLASSES = ("n01", "n02", "n03")
SMALL = [
    "data.transforms.train=[{RandomResizedCrop: {size: 32}}, RandomHorizontalFlip]",
    "data.transforms.eval=[{Resize: {size: 36}}, {CenterCrop: {size: 32}}]",
]


def _image(rng: np.random.Generator, label: int) -> Image.Image:
    """A colour-coded image of a random size (24..60 px a side): learnable in one epoch."""
    h, w = (int(v) for v in rng.integers(24, 61, 2))
    pixels = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    pixels[..., label] += 150
    return Image.fromarray(pixels)


def make_imagenet(root: Path, train: int = 12, val: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                _image(rng, label).save(folder / f"{name}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagenet(tmp_path_factory.mktemp("imagenet"))


def _cfg(**values: object) -> dict:
    base = OmegaConf.to_container(OmegaConf.load(CONF / "imagenet.yaml"))
    base["transforms"] = {
        "train": [{"RandomResizedCrop": {"size": 32}}, "RandomHorizontalFlip"],
        "eval": [{"Resize": {"size": 36}}, {"CenterCrop": {"size": 32}}],
    }
    return base | {"val_fraction": 0.25} | values


# --- sources and loaders ---------------------------------------------------------------------


def test_imagenet_folder_streams_with_val_carved_from_train(imagenet):
    data = load_data(_cfg(root=str(imagenet), val_fraction=0.25))
    assert isinstance(data, StreamSplits)
    assert data.summary() == {"name": imagenet.name, "train": 27, "val": 9, "test": 12,
                              "num_classes": 3, "input_shape": [3, 32, 32]}  # fmt: skip
    assert data.class_names == list(CLASSES)
    image, label = data.test[0]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and label == 0
    # the per-image state is one bytes array and one int array, not Python objects per image
    assert isinstance(data.train.paths, np.ndarray) and data.train.labels.dtype == np.int32
    # the identity is the file list: a changed seed or transform is other data, the same is not
    again = load_data(_cfg(root=str(imagenet), val_fraction=0.25))
    assert again.fingerprint() == data.fingerprint()
    other = load_data(_cfg(root=str(imagenet), val_fraction=0.25, split_seed=1))
    assert other.fingerprint() != data.fingerprint()


def test_batches_are_uint8_with_their_sample_index(imagenet):
    data = load_data(_cfg(root=str(imagenet)))
    module = make_datamodule(data, 8, 16, workers=0)
    x, y, index = next(iter(module.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 32, 32)
    assert y.dtype == torch.int64 and index.dtype == torch.int64
    for i in range(8):  # the index names the sample, whose label travels with it
        assert data.train[int(index[i])][1] == int(y[i])
    x, _, index = next(iter(module.test_dataloader()))
    assert torch.equal(index, torch.arange(12))  # in order, eval transform only
    eval_pipe = pipelines(data.transforms)["eval"]
    assert torch.equal(x[0], eval_pipe(data.test[0][0]))


def test_tiny_imagenet_reads_the_archive_layout(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for label, name in enumerate(CLASSES):
        (tmp_path / "train" / name / "images").mkdir(parents=True)
        for i in range(3):
            _image(rng, label).save(tmp_path / "train" / name / "images" / f"{name}_{i}.JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    for i, label in enumerate([2, 0, 1, 1]):
        _image(rng, label).save(tmp_path / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{CLASSES[label]}\t0\t0\t10\t10")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "tiny_imagenet.yaml"))
    data = load_data(cfg | {"root": str(tmp_path), "val_fraction": 0.0})
    assert len(data.train) == 9 and len(data.test) == 4 and len(data.val) == 0
    assert sorted(int(data.test[i][1]) for i in range(4)) == [0, 1, 1, 2]
    # annotations naming a class that train/ does not have: one line naming file and line
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match=r"val_annotations.txt:1: expected"):
        load_data(cfg | {"root": str(tmp_path)})


def test_image_folder_auto_switch_logs_its_choice(tmp_path, caplog):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                image = _image(rng, label).resize((16, 16))
                image.save(tmp_path / split / name / f"{i}.png")
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "image_folder.yaml"))
    cfg |= {"root": str(tmp_path), "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.25}
    with caplog.at_level(logging.INFO, logger="hpmkd"):
        small = load_data(cfg)
        big = load_data(cfg | {"stream_above_mb": 0.001})  # 12 images of 3x16x16 = 0.009 MB
    assert not isinstance(small, StreamSplits) and isinstance(big, StreamSplits)
    decisions = [r.getMessage() for r in caplog.records if "data.stream=auto" in r.getMessage()]
    assert len(decisions) == 2
    assert "decoded into memory" in decisions[0] and "within" in decisions[0]
    assert "streaming from storage" in decisions[1] and "above" in decisions[1]
    # the streamed pipelines match the in-memory augmentation (pad-4 crop, flip) and sizes
    assert big.transforms["train"] == [{"RandomCrop": {"size": [16, 16], "padding": 4}},
                                       "RandomHorizontalFlip"]  # fmt: skip
    assert big.input_shape == small.input_shape == (3, 16, 16)
    assert (len(big.train), len(big.val), len(big.test)) == (9, 3, 12)
    with pytest.raises(UserError, match="data.stream must be auto, true or false"):
        should_stream({"stream": "sometimes"}, 1, (3, 1, 1))


def test_bad_transforms_are_refused_with_their_place():
    with pytest.raises(UserError, match=r"data.transforms.train: unknown transform 'RandomCorp'"):
        pipelines({"train": [{"RandomCorp": {"size": 3}}], "eval": []})
    with pytest.raises(UserError, match=r"data.transforms.eval: Normalize is not allowed"):
        pipelines({"train": [], "eval": [{"Normalize": {"mean": [0], "std": [1]}}]})
    with pytest.raises(UserError, match=r"RandomResizedCrop\(\{'sise': 3\}\) failed"):
        pipelines({"train": [{"RandomResizedCrop": {"sise": 3}}]})
    with pytest.raises(UserError, match=r"MixUp mixes whole batches"):
        pipelines({"train": [{"MixUp": {"alpha": 0.2}}]})
    target = {"_target_": "torchvision.transforms.v2.CenterCrop", "size": 4}
    (crop,) = pipelines({"train": [target]})["train"].transforms
    assert tuple(crop.size) == (4, 4)


def test_bad_worker_count_is_refused_when_the_data_loads(imagenet):
    with pytest.raises(UserError, match="data.workers must be auto or an int >= 0, got -1"):
        load_data(_cfg(root=str(imagenet), workers=-1))


def test_worker_count_follows_the_cores_and_the_batches(monkeypatch):
    monkeypatch.setattr("hpmkd.data.stream_loader.cpu_count", lambda: 16)
    assert auto_workers(10_000, 256) == 8  # capped
    assert auto_workers(10_000, 256, processes=4) == 3  # 4 CPUs per rank, one for the loop
    assert auto_workers(20, 10) == 2  # no more workers than batches
    monkeypatch.setattr("hpmkd.data.stream_loader.cpu_count", lambda: 2)
    assert auto_workers(10_000, 256) == 2


def test_cache_is_off_for_random_streamed_pipelines_only(imagenet):
    data = load_data(_cfg(root=str(imagenet)))
    assert "draws random views" in stream_cache_off(data, augment=True)
    assert stream_cache_off(data, augment=False) is None  # trains on the eval pipeline
    fixed = load_data(_cfg(root=str(imagenet)) | {"transforms": {"train": [], "eval": []}})
    assert stream_cache_off(fixed, augment=True) is None
    assert split_size(data, "train") == len(data.train)


# --- end to end ------------------------------------------------------------------------------


def _args(root: Path, *extra: str) -> list[str]:
    return [
        "train", *TINY, "data=imagenet", f"data.root={root}", "data.val_fraction=0.25",
        "teacher=resnet8", "student=resnet8", "recipe.batch_size=8", "recipe.epochs=1",
        *SMALL, *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_kd_and_a_feature_method_on_a_streamed_folder(run_cli, imagenet):
    kd = run_cli(*_args(imagenet, "+strategy=kd"))
    assert kd.code == 0, kd.err
    (result,) = kd.results()
    assert result["data"]["train"] == 27 and result["data"]["input_shape"] == [3, 32, 32]
    assert result["teacher"]["extra"]["source"] == "trained"
    assert result["teacher"]["test_acc"] is not None and result["test_acc"] is not None
    assert "teacher_cache" not in result["details"]  # off, with its reason logged
    assert "teacher cache off: the streamed training pipeline draws random views" in kd.out
    at = run_cli(*_args(imagenet, "+strategy=kd", "method=at", "data.workers=2"))
    assert at.code == 0, at.err
    at_result = next(r for r in at.results() if r["config"]["method"]["name"] == "at")
    assert at_result["teacher"]["extra"]["source"] == "store"  # the same data: reused
    assert at_result["test_acc"] is not None
    report = run_cli("report", str(kd.outputs), "--out", str(kd.outputs / "report"))
    assert report.code == 0, report.err


def test_in_memory_strategies_are_refused_on_streamed_data(run_cli, imagenet):
    out = run_cli(*_args(imagenet, "+strategy=smskd"))
    assert out.code == 2
    assert out.err.strip().splitlines()[-1].startswith("hpmkd: error: +strategy=smskd needs")


def test_bad_transform_name_on_the_command_line_is_one_line(run_cli, imagenet):
    out = run_cli(*_args(imagenet, "data.transforms.eval=[{CentreCrop: {size: 32}}]"))
    assert out.code == 2
    (line,) = [x for x in out.err.splitlines() if x.startswith("hpmkd: error:")]
    assert "data.transforms.eval: unknown transform 'CentreCrop'" in line
    assert not list(out.outputs.rglob("*.ckpt"))


@pytest.mark.slow
def test_a_killed_streamed_run_resumes(hpmkd_env, run_cli, imagenet):
    run_dir = hpmkd_env / "outputs" / "killed"
    args = _args(imagenet, "recipe.epochs=4", "data.workers=1")[1:]
    kill_when(args, run_dir, "student", 2)
    resumed = run_cli("train", *args, "resume=true")
    assert resumed.code == 0, resumed.err
    events = _journal(run_dir)
    assert fit_starts(events, 2)["student"] >= 2  # from its checkpoint
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and len(results["val_acc_history"]) == 4


@pytest.mark.slow
def test_ddp_on_the_streaming_path(run_cli, imagenet, monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    out = run_cli(*_args(imagenet, "trainer=ddp_cpu", "data.workers=1"))
    assert out.code == 0, out.err
    (result,) = out.results()
    assert result["world_size"] == 2
    assert result["test_acc"] is not None and len(result["val_acc_history"]) == 1
