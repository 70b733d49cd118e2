"""Bad input: one line on stderr, exit code 2, before any training, no results.json."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY

SMOKE = ["recipe=smoke", "trainer.enable_progress_bar=false"]


def _assert_user_error(run, *fragments: str) -> None:
    assert run.code == 2, (run.out, run.err)
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpmkd: error: "), run.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in run.err
    assert run.results() == []
    assert list(run.outputs.rglob("*.ckpt")) == [] and list(run.outputs.rglob("*.pt")) == []


# --- one row per bad input: overrides ({tmp} is the test's folder), what the line must name, and
# what the machine or the file system must look like first ------------------------------------


def _cpus(count: int) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "cpu_count", lambda: count)

    return setup


def _no_gpu(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _table(**columns: object) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """``{tmp}/t.csv``: 60 rows of two numeric features and a 3-class label, then ``columns``
    (name -> {row: value}) written over them."""

    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        rng = np.random.default_rng(0)
        frame = pd.DataFrame(
            {"a": rng.normal(size=60), "b": rng.normal(size=60), "y": np.arange(60) % 3}
        )
        frame = frame.astype(object)
        for name, cells in columns.items():
            for row, value in cells.items():  # type: ignore[attr-defined]
                frame.loc[row, name] = value
        frame.to_csv(tmp / "t.csv", index=False)

    return setup


def _file(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp / "file").write_text("not a directory")


def _env(name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _file(tmp, monkeypatch)
        monkeypatch.setenv(name, str(tmp / "file" / "below"))

    return setup


CSV = "data=csv data.path={tmp}/t.csv"
CASES = [
    # devices and precision the machine cannot give
    ("trainer.devices=4 trainer.accelerator=cpu", ["trainer.devices=4", "2 CPUs"], _cpus(2)),
    ("trainer.devices=2 trainer.accelerator=cpu", ["trainer=ddp_cpu"], _cpus(2)),
    ("trainer=ddp_cpu trainer.devices=8", ["trainer.devices=8", "4 CPUs"], _cpus(4)),
    ("trainer=gpu", ["trainer.accelerator=gpu", "needs a CUDA GPU"], _no_gpu),
    ("trainer.precision=16 trainer.accelerator=cpu", ["trainer.precision=16", "bf16-mixed"], None),
    ("trainer.precision=8 trainer.accelerator=cpu", ["unknown trainer.precision 8"], None),
    # seeds and split fractions
    ("seed=abc", ["seed must be a whole number, got 'abc'"], None),
    ("seed=1.5", ["seed must be a whole number, got 1.5"], None),
    ("data.test_fraction=0", ["data.test_fraction", "no test split"], None),
    ("data.val_fraction=1", ["data.val_fraction must be in [0, 1)"], None),
    ("data.test_fraction=abc", ["data.test_fraction must be a float, got 'abc'"], None),
    # tables that are not what they seem
    (CSV, ["infinite values", "column(s) b"], _table(b={3: "inf"})),
    (CSV, ["target column 'y'", "single class"], _table(y={r: 1 for r in range(60)})),
    (CSV, ["column 'a'", "'?'", "data.na_values=[?]"], _table(a={2: "?", 7: "?"})),
    (CSV, ["missing values", "a (2 missing)", "data.impute=median"], _table(a={2: None, 5: None})),
    (CSV + " data.na_values=[?]", ["a (1 missing)", "data.impute=median"], _table(a={4: "?"})),
    # where a run writes
    ("", ["run directory", "/file/below"], _env("HPMKD_OUTPUTS")),
    ("", ["HPMKD_CACHE", "/file/below", "is not a directory"], _env("HPMKD_CACHE")),
    ("store.root={tmp}/file", ["store.root", "/file' is not a directory"], _file),
    # teachers and students
    ("+strategy=multi_teacher teachers=[]", ["teachers=[] names no teacher"], None),
    ("student.target_ratio=0", ["student.target_ratio must be a positive number"], None),
    ("student.target_ratio=-2", ["student.target_ratio must be a positive number"], None),
    ("student.target_ratio=1000", ["parameters, fewer than", "10 x 64 = 640"], None),
    # keys that do not exist
    ("+recipe.epoch=3", ["unknown key 'recipe.epoch'", "epochs"], None),
    ("+student.tpyo=3", ["unknown key 'student.tpyo'", "arch"], None),
    ("+trainer.foo=1", ["unknown key 'trainer.foo'", "devices", "lightning.Trainer"], None),
    ("+strategy=kd +method.tempreature=3", ["'method.tempreature'", "temperature"], None),
    ("+data.seperator=x", ["unknown key 'data.seperator'", "test_fraction"], None),
    ("+topping=1", ["unknown key 'topping'", "the top level", "recipe"], None),
    ("recipe.epoch=3", ["Could not override 'recipe.epoch': no such key"], None),
    # the CIFAR-10 JPEG copy unpacked into paths.data_dir itself, as the config used to say
    ("data=cifar10_jpeg student=resnet8", ["pass data.root=", "holds train/ and test/"], None),
]


def _cifar_jpeg_beside(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    data = tmp / "data"
    for split in ("train", "test"):
        (data / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(data / split / "cat" / "0000.jpg")
    monkeypatch.setenv("HPMKD_DATA", str(data))


CASES[-1] = (*CASES[-1][:2], _cifar_jpeg_beside)


@pytest.mark.parametrize(
    ("overrides", "fragments", "setup"), CASES, ids=[f"{i:02d}:{c[0]}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_one_line_before_training(
    run_cli, hpmkd_env, monkeypatch, overrides, fragments, setup
):
    if setup is not None:
        setup(hpmkd_env, monkeypatch)
    args = overrides.format(tmp=hpmkd_env).split()
    run = run_cli("train", *args, *SMOKE)
    _assert_user_error(run, *fragments)


def test_keys_added_where_nodes_accept_them_still_run(run_cli):
    """Model keyword arguments, Trainer arguments, a method's arguments (``++`` too) and a
    top-level variable read by an interpolation are not unknown keys."""
    run = run_cli(
        "train", "+strategy=kd", "++student.params.dropout=0.1", "+trainer.limit_val_batches=1",
        "++method.temperature=3",
        "+lookup={mlp_small: 7}", "seed='${oc.select:lookup.${student.arch},0}'",
        "recipe.epochs=1", *TINY,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.results()[0]["seed"] == 7


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data=cifar11", ["unknown data 'cifar11'", "digits", "cifar100"]),
        ("student=resnet1000", ["unknown student 'resnet1000'", "resnet56"]),
        ("teacher=nope", ["unknown teacher 'nope'"]),
        ("+strategy=magic", ["unknown strategy 'magic'", "kd", "plain"]),
        ("trainer=tpu", ["unknown trainer 'tpu'", "cpu", "gpu"]),
        ("logger=mlflow", ["unknown logger 'mlflow'", "wandb"]),
        ("recipe.epochs=0", ["recipe.epochs must be a positive number, got 0"]),
        ("recipe.epochs=-3", ["recipe.epochs"]),
        ("recipe.batch_size=0", ["recipe.batch_size"]),
        ("student.params.widths=[3]", ["Could not override 'student.params.widths'"]),
        ("+student.params.widths=[3]", ["model 'mlp_small' has no parameter 'widths'"]),
        ("student=resnet20 data=breast_cancer", ["needs image input", "(30,)"]),
    ],
)
def test_bad_names_and_values(run_cli, override, fragments):
    run = run_cli("train", *override.split(), *TINY)
    _assert_user_error(run, *fragments)


def test_non_positive_temperature(run_cli):
    run = run_cli("train", "+strategy=kd", "method.temperature=0", *TINY)
    _assert_user_error(run, "method.temperature must be a positive number")


def test_missing_teacher_checkpoint_names_the_path(run_cli, tmp_path):
    path = tmp_path / "nowhere" / "teacher.pt"
    run = run_cli("train", "+strategy=kd", f"teacher.checkpoint={path}", *TINY)
    _assert_user_error(run, str(path))


def test_corrupt_teacher_checkpoint_names_the_path(run_cli, tmp_path):
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"definitely not a checkpoint")
    run = run_cli("train", "+strategy=kd", f"teacher.checkpoint={path}", *TINY)
    _assert_user_error(run, str(path))


def test_checkpoint_of_another_architecture_names_the_first_bad_key(run_cli, tmp_path):
    from hpmkd.models import build_model

    path = tmp_path / "teacher.pt"
    other = build_model("mlp", num_classes=10, input_shape=(64,), hidden=[16])
    torch.save(other.state_dict(), path)
    run = run_cli("train", "+strategy=kd", f"teacher.checkpoint={path}", *TINY)
    _assert_user_error(run, str(path), "mismatching key")


def test_teacher_trained_on_other_classes_is_rejected(run_cli, tmp_path):
    from hpmkd.models import build_model

    path = tmp_path / "teacher.pt"
    teacher = build_model("mlp_large", num_classes=2, input_shape=(1, 8, 8))
    torch.save(teacher.state_dict(), path)
    run = run_cli("train", "+strategy=kd", f"teacher.checkpoint={path}", *TINY)
    _assert_user_error(run, str(path), "(2, 256)", "(10, 256)")


def test_unreachable_download_is_one_line(run_cli, tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz: no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    run = run_cli(
        "train", "data=cifar10", f"data.root={tmp_path / 'cifar'}", "student=resnet8", *TINY
    )
    _assert_user_error(run, str(tmp_path / "cifar"))


def test_unknown_command(run_cli):
    run = run_cli("trian")
    _assert_user_error(run, "unknown command 'trian'", "train")


# --- resume: a damaged checkpoint or another configuration, refused before anything trains --------


def _unfinished_run(run_cli, hpmkd_env: Path) -> tuple[list[str], Path]:
    """A finished tiny run made unfinished again: results.json removed."""
    args = [*TINY, "recipe.epochs=1"]
    assert run_cli("train", *args).code == 0
    (results,) = (hpmkd_env / "outputs").rglob("results.json")
    results.unlink()
    return args, results.parent / "checkpoints" / "last.ckpt"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    """Corrupt the largest record's data in place (the zip's CRC no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset  # the local header: name and extra lengths at bytes 26 and 28
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little")
    start += int.from_bytes(data[local + 28 : local + 30], "little")
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.write_bytes(b""), "it is empty"),
        (_truncate, "it is truncated"),
        (_flip_a_byte, "corrupt"),
        (lambda p: p.write_text("notes, not a checkpoint\n"), "not a PyTorch checkpoint"),
    ],
    ids=["empty", "truncated", "corrupt", "text"],
)
def test_a_damaged_checkpoint_is_one_line_before_training(hpmkd_env, run_cli, damage, expected):
    args, checkpoint = _unfinished_run(run_cli, hpmkd_env)
    damage(checkpoint)
    before = checkpoint.read_bytes()

    out = run_cli("train", *args, "resume=true")

    assert out.code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpmkd: error: resume: cannot read checkpoint")
    assert expected in lines[0] and str(checkpoint) in lines[0]
    assert "weights_only" not in out.err
    assert checkpoint.read_bytes() == before  # nothing trained over it
    assert not list((hpmkd_env / "outputs").rglob("results.json"))


def test_resume_from_a_text_file_is_one_line(hpmkd_env, run_cli):
    notes = hpmkd_env / "notes.txt"
    notes.write_text("not a checkpoint\n")

    out = run_cli("train", *TINY, f"resume={notes}")

    assert out.code == 2
    assert out.err.strip() == (
        f"hpmkd: error: resume: cannot read checkpoint {notes}: it is not a PyTorch checkpoint "
        "(not a zip archive); delete it to train that unit from its start, or pass another "
        "resume=<run dir or checkpoint>"
    )


def test_resume_of_a_run_with_another_configuration_names_the_difference(hpmkd_env, run_cli):
    args, checkpoint = _unfinished_run(run_cli, hpmkd_env)

    out = run_cli("train", *args, "seed=5", f"resume={checkpoint.parent.parent}")

    assert out.code == 2
    assert "ran another configuration (seed: 0 there, 5 here)" in out.err
