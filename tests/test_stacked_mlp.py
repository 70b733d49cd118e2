"""engine/stacked_mlp.py: several MLPs as one stacked model give each member's own outputs and
gradients; anything but Linear layers and ReLU is left to vmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from hpmkd.engine.stacked_mlp import stacked_forward
from hpmkd.models import build_model


def _mlps(count: int, **params: object) -> list[nn.Module]:
    torch.manual_seed(0)
    kwargs = {"hidden": [8, 6], "dropout": 0.0, "batch_norm": False} | params
    return [build_model("mlp", num_classes=5, input_shape=(2, 3), **kwargs) for _ in range(count)]


def test_each_member_gets_its_own_outputs_and_gradients() -> None:
    students = _mlps(3)
    params, _ = stack_module_state(students)
    forward = stacked_forward(students[0])
    assert forward is not None
    x = torch.randn(3, 4, 2, 3)  # each member's own batch of 4 samples of shape (2, 3)
    out = forward(params, x)
    assert out.shape == (3, 4, 5)
    out.square().sum().backward()
    shared = forward(params, x[0], shared=True)
    for k, student in enumerate(students):
        torch.testing.assert_close(out[k], student(x[k]))
        torch.testing.assert_close(shared[k], student(x[0]))
        student(x[k]).square().sum().backward()
        for name, p in student.named_parameters():
            torch.testing.assert_close(params[name].grad[k], p.grad)


@pytest.mark.parametrize(
    "student",
    [
        _mlps(1, batch_norm=True)[0],
        _mlps(1, dropout=0.5)[0],
        nn.Sequential(nn.Flatten(), nn.Linear(6, 5)),
    ],
    ids=["batch_norm", "dropout", "not_an_mlp"],
)
def test_other_students_are_left_to_vmap(student: nn.Module) -> None:
    assert stacked_forward(student) is None
