"""Golden tests of relational KD (Park et al. 2019; METHODS.md 1.2)."""

import math

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.methods import build_method

from .helpers import feature_terms, method_from_yaml, pooled_mlp_pair, setup_shapes


def _rkd(f_s, f_t, **args):
    method = build_method({"name": "rkd", "ce_weight": 0.0, **args})
    terms = feature_terms(method, {"pool": f_s}, {"pool": f_t}, with_index=True)
    return {k: v.item() for k, v in terms.items() if k != "ce"}


def _huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _reference_rkd(f_s, f_t):
    """(distance loss, angle loss) before the 25 / 50 weights, in plain floats."""
    n = len(f_s)

    def sub(a, b):
        return [x - y for x, y in zip(a, b, strict=True)]

    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    def distances(rows):
        d = [[norm(sub(a, b)) for b in rows] for a in rows]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        return [[v / mean for v in row] for row in d]

    def angles(rows):
        out = {}
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    u, v = sub(rows[b], rows[a]), sub(rows[c], rows[a])
                    nu, nv = norm(u), norm(v)
                    dot = sum(x * y for x, y in zip(u, v, strict=True))
                    out[a, b, c] = dot / (nu * nv) if nu > 0 and nv > 0 else 0.0
        return out

    d_s, d_t = distances(f_s), distances(f_t)
    distance = sum(_huber(d_s[i][j] - d_t[i][j]) for i in range(n) for j in range(n)) / n**2
    a_s, a_t = angles(f_s), angles(f_t)
    angle = sum(_huber(a_s[k] - a_t[k]) for k in a_s) / n**3
    return distance, angle


def test_identical_features_give_zero():
    f = torch.randn(6, 5)
    terms = _rkd(f, f.clone())
    assert terms["rkd_distance"] == pytest.approx(0.0, abs=1e-6)
    assert terms["rkd_angle"] == pytest.approx(0.0, abs=1e-6)


def test_closed_form_line_against_equilateral_triangle():
    # teacher: collinear points 0, 1, 2; student: unit equilateral triangle
    f_t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    f_s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    terms = _rkd(f_s, f_t)
    assert terms["rkd_distance"] == pytest.approx(25 * (1 / 24), rel=1e-5)
    assert terms["rkd_angle"] == pytest.approx(50 * (2.5 / 27), rel=1e-5)


def test_value_matches_independent_computation():
    g = torch.Generator().manual_seed(5)
    f_s, f_t = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
    distance, angle = _reference_rkd(f_s.tolist(), f_t.tolist())
    terms = _rkd(f_s, f_t, beta=2.0)
    assert terms["rkd_distance"] == pytest.approx(2 * 25 * distance, rel=1e-4)
    assert terms["rkd_angle"] == pytest.approx(2 * 50 * angle, rel=1e-4)
    assert (terms["rkd_distance"], terms["rkd_angle"]) == pytest.approx(
        (5.9388447, 14.9183054), 1e-5
    )


def test_invariant_to_scale_translation_and_rotation_of_each_embedding():
    g = torch.Generator().manual_seed(6)
    f_s, f_t = torch.randn(6, 4, generator=g), torch.randn(6, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    base = _rkd(f_s, f_t)
    moved = _rkd(5.0 * f_s @ q + torch.randn(4, generator=g), 0.2 * f_t - 3.0)
    for term in base:
        assert moved[term] == pytest.approx(base[term], rel=1e-4)


def test_weights_switch_terms_and_degenerate_batches_stay_finite():
    f_s, f_t = torch.randn(4, 3), torch.randn(4, 6, 2, 2)
    assert set(_rkd(f_s, f_t, distance_weight=0.0)) == {"rkd_angle"}
    assert set(_rkd(f_s, f_t, angle_weight=0.0)) == {"rkd_distance"}
    one = _rkd(torch.randn(1, 3), torch.randn(1, 5))
    same = _rkd(torch.ones(3, 3), torch.randn(3, 5))
    for terms in (one, same):
        assert all(math.isfinite(v) for v in terms.values())
    assert one == pytest.approx({"rkd_distance": 0.0, "rkd_angle": 0.0}, abs=1e-7)


def test_unpairable_features_raise_user_error():
    method = build_method({"name": "rkd", "student_features": [], "teacher_features": []})
    with pytest.raises(UserError, match="method 'rkd'"):
        setup_shapes(method, {}, {}, num_classes=10, num_train=100)
    with pytest.raises(UserError, match="method 'rkd'.*'pool' \\(2, 4\\).*'pool' \\(3, 4\\)"):
        _rkd(torch.randn(2, 4), torch.randn(3, 4))


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    pair = pooled_mlp_pair()
    method = build_method({"name": "rkd"})
    setup_shapes(method, {"pool": (2, 6)}, {"pool": (2, 12)}, num_classes=5, num_train=16)
    pair.check_one_step(method, lr=0.01, expected={"ce", "rkd_distance", "rkd_angle"})


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("rkd")
    assert method.student_features == method.teacher_features == ("pool",)
    assert (method.beta, method.distance_weight, method.angle_weight) == (1.0, 25.0, 50.0)
