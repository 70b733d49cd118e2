"""Golden tests of probabilistic knowledge transfer (Passalis & Tefas 2018; METHODS.md 1.2)."""

import math

import pytest
import torch
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import build_method

from .helpers import feature_terms, method_from_yaml, pooled_pair, setup_method, setup_shapes


def _pkt(f_s, f_t, **args):
    method = build_method({"name": "pkt", "beta": 1.0, "ce_weight": 0.0, **args})
    return feature_terms(method, {"pool": f_s}, {"pool": f_t}, with_index=True)["pkt"]


def _reference_pkt(f_s, f_t):
    """Mean over i, j of p_{j|i} log(p_{j|i} / q_{j|i}), cosine kernels (cos + 1) / 2."""

    def probabilities(rows):
        norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
        kernel = [
            [
                (sum(a * b for a, b in zip(r, q, strict=True)) / (nr * nq) + 1) / 2
                for q, nq in zip(rows, norms, strict=True)
            ]
            for r, nr in zip(rows, norms, strict=True)
        ]
        return [[v / sum(row) for v in row] for row in kernel]

    p, q = probabilities(f_t), probabilities(f_s)
    n = len(p)
    return sum(p[i][j] * math.log(p[i][j] / q[i][j]) for i in range(n) for j in range(n)) / n**2


def test_identical_features_give_zero():
    f = torch.rand(6, 5)
    assert _pkt(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_closed_form_orthogonal_teacher_against_collapsed_student():
    # teacher kernel [[1, .5], [.5, 1]] -> rows (2/3, 1/3); student kernel all ones -> (1/2, 1/2)
    f_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_s = torch.tensor([[3.0, 1.0], [3.0, 1.0]])
    expected = (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)) / 2
    assert _pkt(f_s, f_t).item() == pytest.approx(expected, rel=1e-5)


def test_closed_form_without_self_similarity():
    # paper's reading: k != j; teacher off-diagonal kernel all .5 -> p uniform over the others
    f_t = torch.eye(3)
    f_s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    expected = 2 * (0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))) / 9
    assert _pkt(f_s, f_t, include_self=False).item() == pytest.approx(expected, rel=1e-5)
    assert _pkt(f_s, f_t).item() != pytest.approx(expected, rel=1e-2)


def test_value_matches_independent_computation():
    g = torch.Generator().manual_seed(3)
    f_s, f_t = torch.randn(5, 4, generator=g), torch.randn(5, 7, generator=g)
    expected = _reference_pkt(f_s.tolist(), f_t.tolist())
    assert _pkt(f_s, f_t).item() == pytest.approx(expected, rel=1e-4)
    assert _pkt(f_s, f_t).item() == pytest.approx(0.0158777, rel=1e-5)


def test_invariant_to_the_norm_of_every_sample():
    g = torch.Generator().manual_seed(4)
    f_s, f_t = torch.rand(6, 4, 2, 2, generator=g), torch.rand(6, 9, generator=g)
    scale_s, scale_t = torch.rand(6, 1, 1, 1, generator=g) + 0.1, torch.rand(6, 1, generator=g)
    base = _pkt(f_s, f_t).item()
    assert _pkt(f_s * scale_s, f_t * (scale_t + 0.1)).item() == pytest.approx(base, rel=1e-4)


def test_handles_different_widths_zero_rows_and_batch_of_one():
    value = _pkt(torch.rand(4, 8, 2, 2), torch.rand(4, 64))
    assert torch.isfinite(value) and value.item() > 0
    f = torch.rand(4, 3)
    f[1] = 0.0
    assert torch.isfinite(_pkt(f, torch.rand(4, 5)))
    assert _pkt(torch.rand(1, 3), torch.rand(1, 5)).item() == pytest.approx(0.0, abs=1e-7)


def test_unpairable_features_raise_user_error():
    method = build_method({"name": "pkt", "student_features": [], "teacher_features": ["pool"]})
    with pytest.raises(UserError, match="method 'pkt'"):
        setup_shapes(method, {}, {"pool": (2, 4)}, num_classes=10, num_train=100)
    with pytest.raises(UserError, match="method 'pkt'.*'pool' \\(3, 4\\).*'pool' \\(5, 4\\)"):
        _pkt(torch.rand(3, 4), torch.rand(5, 4))


def _net(width):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    pair = pooled_pair(_net, (6, 10), (3, 6, 6))
    method = build_method({"name": "pkt"})
    setup_method(method, {"pool": (2, 6)}, {"pool": (2, 10)}, num_classes=5, num_train=16)
    pair.check_one_step(method, lr=1e-4, expected={"ce", "pkt"})


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("pkt")
    assert method.student_features == method.teacher_features == ("pool",)
    assert (method.beta, method.ce_weight, method.include_self) == (30000.0, 1.0, True)
