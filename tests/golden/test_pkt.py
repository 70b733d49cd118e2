"""Golden tests of probabilistic knowledge transfer (Passalis & Tefas 2018; METHODS.md 1.2)."""

import inspect
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import METHODS, MethodSetup, ModelOutputs, build_method

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "pkt.yaml"


def _pkt(f_s, f_t, **args):
    method = build_method({"name": "pkt", "beta": 1.0, "ce_weight": 0.0, **args})
    n = len(f_s)
    s = ModelOutputs(torch.zeros(n, 3), {"pool": f_s})
    t = ModelOutputs(torch.zeros(n, 3), {"pool": f_t})
    return method(s, t, torch.zeros(n, dtype=torch.long), torch.arange(n))["pkt"]


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
        method.setup(MethodSetup({}, {"pool": torch.Size([2, 4])}, 10, 100))
    with pytest.raises(UserError, match="method 'pkt'.*'pool' \\(3, 4\\).*'pool' \\(5, 4\\)"):
        _pkt(torch.rand(3, 4), torch.rand(5, 4))


def _net(width):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    torch.manual_seed(0)
    student_body, student_head = _net(6), nn.Linear(6, 5)
    teacher_body = _net(10).requires_grad_(False)
    teacher_head = nn.Linear(10, 5).requires_grad_(False)
    student_params = [*student_body.parameters(), *student_head.parameters()]
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 5, (16,))
    method = build_method({"name": "pkt"})
    method.student_features = method.teacher_features = ("pool",)
    method.setup(MethodSetup({"pool": torch.Size([2, 6])}, {"pool": torch.Size([2, 10])}, 5, 16))
    params, lr = list(student_params), 1e-4

    def loss():
        with torch.no_grad():
            f_t = teacher_body(x)
            t_out = ModelOutputs(teacher_head(f_t), {"pool": f_t})
        f_s = student_body(x)
        terms = method(ModelOutputs(student_head(f_s), {"pool": f_s}), t_out, y, torch.arange(16))
        assert set(terms) == {"ce", "pkt"}
        return sum(terms.values())

    before = loss()
    before.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student_params)
    assert all(p.grad is None for p in [*teacher_body.parameters(), *teacher_head.parameters()])
    with torch.no_grad():  # one plain SGD step
        for p in params:
            p -= lr * p.grad
    assert loss().item() < before.item()


def test_yaml_holds_exactly_the_constructor_arguments():
    cfg = OmegaConf.load(CONF)
    params = set(inspect.signature(METHODS["pkt"].__init__).parameters) - {"self"}
    assert set(cfg) - {"name"} == params
    method = build_method(OmegaConf.to_container(cfg))
    assert method.student_features == method.teacher_features == ("pool",)
    assert (method.beta, method.ce_weight, method.include_self) == (30000.0, 1.0, True)
