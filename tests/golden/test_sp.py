"""Golden tests of similarity-preserving KD (Tung & Mori 2019; METHODS.md 1.2)."""

import itertools
import math

import pytest
import torch
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import MethodSetup, ModelOutputs, build_method

from .helpers import TinyPair, feature_terms, method_from_yaml, setup_shapes


def _sp(f_s, f_t, beta=1.0, names=("f",)):
    method = build_method(
        {
            "name": "sp",
            "student_features": list(names),
            "teacher_features": list(names),
            "beta": beta,
            "ce_weight": 0.0,
        }
    )
    return feature_terms(method, {names[0]: f_s}, {names[0]: f_t}, with_index=True)["sp"]


def _reference_sp(f_s, f_t):
    """||rownorm(Q_t Q_t^T) - rownorm(Q_s Q_s^T)||_F^2 / b^2 in plain floats."""

    def gram(rows):
        g = [[sum(a * b for a, b in zip(r, q, strict=True)) for q in rows] for r in rows]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

    g_s, g_t = gram(f_s), gram(f_t)
    b = len(f_s)
    total = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b))
    return total / b**2


def test_identical_features_give_zero():
    f = torch.randn(6, 4, 3, 3)
    assert _sp(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_closed_form_orthonormal_teacher_against_collapsed_student():
    # teacher Gram = I; student rows all equal: rows (1/sqrt2, 1/sqrt2); loss = 1 - sqrt(2)/2
    f_t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    f_s = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    assert _sp(f_s, f_t, beta=3000.0).item() == pytest.approx(3000 * (1 - math.sqrt(2) / 2), 1e-6)


def test_value_matches_independent_computation():
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(4, 2, 2, 2, generator=g), torch.randn(4, 3, 1, 2, generator=g)
    expected = _reference_sp(f_s.flatten(1).tolist(), f_t.flatten(1).tolist())
    assert _sp(f_s, f_t).item() == pytest.approx(expected, rel=1e-5)
    assert _sp(f_s, f_t).item() == pytest.approx(0.0707035, rel=1e-5)


def test_invariant_to_positive_scaling_and_rotation_of_each_side():
    g = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(5, 6, generator=g), torch.randn(5, 4, 2, 2, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    base = _sp(f_s, f_t).item()
    assert _sp(7.0 * f_s @ q, 0.1 * f_t).item() == pytest.approx(base, rel=1e-4)


def test_handles_different_channels_sizes_and_ranks_and_batch_of_one():
    value = _sp(torch.randn(4, 8, 4, 4), torch.randn(4, 32))
    assert torch.isfinite(value) and value.item() > 0
    assert _sp(torch.randn(1, 3, 2, 2), torch.randn(1, 5)).item() == pytest.approx(0.0, abs=1e-7)


def test_unpairable_features_raise_user_error():
    method = build_method({"name": "sp", "student_features": ["stage2"], "teacher_features": []})
    shapes = MethodSetup({"stage2": torch.Size([2, 4, 2, 2])}, {}, 10, 100)
    with pytest.raises(UserError, match="method 'sp'"):
        method.setup(shapes)
    with pytest.raises(UserError, match="method 'sp'.*'f' \\(3, 4\\).*'f' \\(2, 4\\)"):
        _sp(torch.randn(3, 4), torch.randn(2, 4))


class _Net(nn.Module):
    """Two conv stages, global pool, linear head; returns ModelOutputs with every feature."""

    def __init__(self, widths, stride):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=stride, padding=1)
            for a, b in itertools.pairwise([3, *widths])
        )
        self.head = nn.Linear(widths[-1], 5)

    def forward(self, x):
        features = {}
        for k, conv in enumerate(self.convs, start=1):
            x = torch.relu(conv(x))
            features[f"stage{k}"] = x
        features["pool"] = x.mean(dim=(2, 3))
        return ModelOutputs(self.head(features["pool"]), features)


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    torch.manual_seed(0)
    student = _Net([4, 6], stride=1)
    teacher = _Net([8, 8, 12], stride=2).requires_grad_(False)
    pair = TinyPair(student, teacher, torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,)))
    method = build_method(
        {
            "name": "sp",
            "student_features": ["stage1", "stage2"],
            "teacher_features": ["stage1", "stage2", "stage3"],
        }
    )
    with torch.no_grad():
        s0, t0 = student(pair.x[:2]), teacher(pair.x[:2])
    setup_shapes(method, s0.features, t0.features, num_classes=5, num_train=16)
    # deepest first: student stage2 <-> teacher stage3, student stage1 <-> teacher stage2
    assert method.feature_pairs() == [("stage1", "stage2"), ("stage2", "stage3")]
    pair.check_one_step(method, lr=1e-3, expected={"ce", "sp"})


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("sp")
    assert method.student_features == method.teacher_features == ("last_stage",)
    assert (method.beta, method.ce_weight) == (3000.0, 1.0)
