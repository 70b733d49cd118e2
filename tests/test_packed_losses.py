"""engine/packed_losses.py: the batched loss terms equal each method's own terms per member."""

from __future__ import annotations

import pytest
import torch

from hpmkd.engine.packed_losses import batched_form
from hpmkd.methods import build_method
from hpmkd.methods.base import ModelOutputs


@pytest.mark.parametrize(
    "config",
    [
        {"name": "ce"},
        {"name": "ce", "ce_weight": 0.3},
        {"name": "kd"},
        {"name": "kd", "temperature": 2.0, "ce_weight": 0.5, "kd_weight": 0.5},
    ],
)
def test_batched_terms_equal_the_methods_own(config: dict) -> None:
    torch.manual_seed(0)
    method = build_method(config)
    logits = torch.randn(3, 7, 5, requires_grad=True)
    teacher, labels = torch.randn(3, 7, 5), torch.randint(0, 5, (3, 7))
    form = batched_form(method)
    assert form is not None
    terms = form(logits, form.teacher_rows(teacher), labels)
    for k in range(3):
        theirs = method(ModelOutputs(logits[k], {}), ModelOutputs(teacher[k], {}), labels[k], None)
        assert list(terms) == list(theirs)
        for name, value in theirs.items():
            torch.testing.assert_close(terms[name][k], value)
            (grad,) = torch.autograd.grad(value, logits, retain_graph=True)
            (ours,) = torch.autograd.grad(terms[name][k], logits, retain_graph=True)
            torch.testing.assert_close(ours, grad)


def test_other_methods_have_no_batched_form() -> None:
    method = build_method({"name": "dkd"})
    assert batched_form(method) is None
