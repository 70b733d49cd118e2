"""Bad input: one line on stderr, exit code 2, before any training, no results.json."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY


def _assert_user_error(run, *fragments: str) -> None:
    assert run.code == 2, (run.out, run.err)
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpmkd: error: "), run.err
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in run.err
    assert run.results() == []


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
