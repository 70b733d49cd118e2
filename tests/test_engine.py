"""Teacher hygiene and the training step of DistillModule, without the CLI."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from hpmkd.data.augment import BatchTransform
from hpmkd.data.loader import SplitsDataModule, TensorSplit
from hpmkd.data.splits import DataSplits
from hpmkd.engine.fit import fit, quiet_lightning
from hpmkd.engine.module import DistillModule
from hpmkd.methods import build_method
from hpmkd.models import build_model


def _data(n: int = 96) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataSplits(
        name="toy",
        x_train=x[:64],
        y_train=y[:64],
        x_val=x[64:80],
        y_val=y[64:80],
        x_test=x[80:],
        y_test=y[80:],
        num_classes=3,
        class_names=["a", "b", "c"],
        input_shape=(6,),
        is_image=False,
    )


def _module(teacher: torch.nn.Module | None, method: str = "kd") -> DistillModule:
    torch.manual_seed(0)
    return DistillModule(
        student=build_model("mlp", num_classes=3, input_shape=(6,), hidden=[8]),
        method=build_method({"name": method}),
        transform=BatchTransform(is_image=False),
        num_classes=3,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        teacher=teacher,
    )


def _teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(
        "mlp", num_classes=3, input_shape=(6,), hidden=[16], batch_norm=True, dropout=0.5
    )


def test_teacher_is_frozen_and_outside_optimiser_and_checkpoint():
    teacher = _teacher()
    module = _module(teacher)
    module.train()
    assert not teacher.training  # module.train() does not reach the teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    optimiser = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert optimised == {id(p) for p in module.student.parameters()}
    assert not any(k.startswith("teacher") for k in module.state_dict())


def test_training_step_changes_student_only_and_teacher_outputs_are_deterministic():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = _module(teacher)
    optimiser = module.configure_optimizers()["optimizer"]
    data = _data()
    batch = TensorSplit(data.x_train, data.y_train).__getitems__(list(range(32)))
    out1 = module.teacher(batch[0], batch[2]).logits
    loss = module.training_step(batch, 0)
    loss.backward()
    optimiser.step()
    for k, v in teacher.state_dict().items():  # BN running stats included
        assert torch.equal(v, before[k]), k
    assert torch.equal(module.teacher(batch[0], batch[2]).logits, out1)  # eval mode: dropout off


def test_teacher_outputs_follow_the_shuffled_batch(monkeypatch):
    """The teacher sees the same (shuffled) samples as the student, in the same order."""
    teacher = _teacher()
    module = _module(teacher)
    seen = {}
    original = module.method.forward

    def spy(student, teacher_out, labels, index):
        seen["teacher"], seen["index"] = teacher_out.logits, index
        return original(student, teacher_out, labels, index)

    monkeypatch.setattr(module.method, "forward", spy)
    data = _data()
    idx = [5, 3, 40, 0, 17]
    batch = TensorSplit(data.x_train, data.y_train).__getitems__(idx)
    module.training_step(batch, 0)
    with torch.no_grad():
        expected = teacher.eval()(data.x_train[idx])
    assert torch.equal(seen["index"], torch.tensor(idx))
    assert torch.allclose(seen["teacher"], expected)


def test_method_without_teacher_rejects_missing_teacher():
    with pytest.raises(ValueError, match="needs a teacher"):
        _module(None, method="kd")


def test_fit_reports_validation_and_test_accuracies(tmp_path: Path):
    quiet_lightning()
    data = _data()
    module = _module(None, method="ce")
    result = fit(
        module,
        SplitsDataModule(data, batch_size=16, eval_batch_size=64),
        out_dir=tmp_path,
        epochs=3,
        trainer_kwargs={
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    )
    assert result.epochs == 3 and len(result.val_history) == 3
    assert result.acc_best == max(result.val_history) and result.best_epoch is not None
    assert 0 <= result.test_acc_last <= 100 and result.test_acc_best is not None
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(k.startswith(("student.", "method.")) for k in ckpt["state_dict"])
