"""Golden tests of correlation congruence (Peng et al. 2019) as the CRD benchmark runs it."""

import math

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.methods import build_method

from .helpers import feature_terms, method_from_yaml, pooled_mlp_pair, setup_shapes


def _method(d_s, d_t, embed_dim, weights=None, **args):
    """A CC method set up for pooled features of widths d_s, d_t; ``weights`` = ((W_s, b_s),
    (W_t, b_t)) overwrites the two embeddings."""
    method = build_method({"name": "cc", "embed_dim": embed_dim, "ce_weight": 0.0, **args})
    setup_shapes(method, {"pool": (2, d_s)}, {"pool": (2, d_t)}, num_train=9)
    if weights is not None:
        with torch.no_grad():
            for embed, (w, b) in zip((method.embed_s[0], method.embed_t[0]), weights, strict=True):
                embed.weight.copy_(w)
                embed.bias.copy_(b)
    return method


def _cc(method, f_s, f_t):
    return feature_terms(method, {"pool": f_s}, {"pool": f_t}, with_index=True)["cc"]


def _identity(d):
    return ((torch.eye(d), torch.zeros(d)), (torch.eye(d), torch.zeros(d)))


def _linear(rows, w, b):
    return [
        [
            sum(wi * x for wi, x in zip(w_row, r, strict=True)) + bi
            for w_row, bi in zip(w, b, strict=True)
        ]
        for r in rows
    ]


def _reference_crd(e_s, e_t):
    delta = [
        [abs(a - b) for a, b in zip(rs, rt, strict=True)] for rs, rt in zip(e_s, e_t, strict=True)
    ]
    pairs = [
        sum(a * b for a, b in zip(delta[i], delta[i + 1], strict=True))
        for i in range(len(delta) - 1)
    ]
    return sum(pairs) / len(pairs)


def _reference_gaussian(e_s, e_t, gamma, order):
    def corr(rows):
        unit = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
        cos = [[sum(a * b for a, b in zip(u, w, strict=True)) for w in unit] for u in unit]
        return [
            [
                sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c**p
                    for p in range(order + 1)
                )
                for c in row
            ]
            for row in cos
        ]

    c_s, c_t = corr(e_s), corr(e_t)
    n = len(c_s)
    return sum((c_t[i][j] - c_s[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


@pytest.mark.parametrize("kernel", ["crd", "gaussian"])
def test_identical_embeddings_give_zero(kernel):
    f = torch.randn(5, 4)
    method = _method(4, 4, 4, _identity(4), kernel=kernel)
    assert _cc(method, f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_closed_form_crd_kernel():
    # deltas (1, 2), (3, 0), (1, 1): consecutive products 3 and 3 -> mean 3, times beta 0.02
    f_t = torch.zeros(3, 2)
    f_s = torch.tensor([[1.0, -2.0], [-3.0, 0.0], [1.0, 1.0]])
    assert _cc(_method(2, 2, 2, _identity(2)), f_s, f_t).item() == pytest.approx(0.06, rel=1e-6)


@pytest.mark.parametrize("kernel", ["crd", "gaussian"])
def test_value_matches_independent_computation(kernel):
    g = torch.Generator().manual_seed(7)
    f_s, f_t = torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)
    w_s, b_s = torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
    w_t, b_t = torch.randn(2, 5, generator=g), torch.randn(2, generator=g)
    method = _method(3, 5, 2, ((w_s, b_s), (w_t, b_t)), kernel=kernel, beta=1.0)
    e_s = _linear(f_s.tolist(), w_s.tolist(), b_s.tolist())
    e_t = _linear(f_t.tolist(), w_t.tolist(), b_t.tolist())
    if kernel == "crd":
        expected, pinned = _reference_crd(e_s, e_t), 9.7242985
    else:
        expected, pinned = _reference_gaussian(e_s, e_t, 0.4, 2), 0.0978155
    assert _cc(method, f_s, f_t).item() == pytest.approx(expected, rel=1e-5)
    assert _cc(method, f_s, f_t).item() == pytest.approx(pinned, rel=1e-5)


def test_gaussian_kernel_is_invariant_to_the_norm_of_each_embedding():
    g = torch.Generator().manual_seed(8)
    f_s, f_t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    method = _method(3, 3, 3, _identity(3), kernel="gaussian", beta=1.0)
    base = _cc(method, f_s, f_t).item()
    scale = torch.rand(5, 1, generator=g) + 0.5
    assert _cc(method, f_s * scale, 3.0 * f_t).item() == pytest.approx(base, rel=1e-4)


def test_handles_different_widths_and_maps_and_batch_of_one():
    method = build_method({"name": "cc", "student_features": ["stage2"]})
    setup_shapes(method, {"stage2": (2, 4, 3, 3)}, {"pool": (2, 10)}, num_train=9)
    assert method.embed_s[0].in_features == 36 and method.embed_t[0].in_features == 10
    assert method.extra_parameters() == (36 + 1) * 128 + (10 + 1) * 128
    s, t = {"stage2": torch.randn(4, 4, 3, 3)}, {"pool": torch.randn(4, 10)}
    terms = feature_terms(method, s, t, with_index=True)
    assert torch.isfinite(terms["cc"]) and terms["cc"].item() > 0
    for kernel in ("crd", "gaussian"):
        one = _cc(_method(3, 5, 8, kernel=kernel), torch.randn(1, 3), torch.randn(1, 5))
        assert torch.isfinite(one)


def test_bad_configurations_raise_user_error():
    with pytest.raises(UserError, match="method 'cc'.*kernel 'rbf'"):
        build_method({"name": "cc", "kernel": "rbf"})
    method = build_method({"name": "cc", "student_features": [], "teacher_features": ["pool"]})
    with pytest.raises(UserError, match="method 'cc'"):
        setup_shapes(method, {}, {"pool": (2, 4)}, num_train=9)
    with pytest.raises(UserError, match="method 'cc'.*'pool' \\(3, 4\\).*'pool' \\(2, 4\\)"):
        _cc(_method(4, 4, 8), torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(UserError, match="method 'cc'.*'pool' \\(3, 5\\).*'pool' \\(3, 4\\)"):
        _cc(_method(4, 4, 8), torch.randn(3, 5), torch.randn(3, 4))


@pytest.mark.parametrize("kernel", ["crd", "gaussian"])
def test_one_step_reduces_loss_and_gradients_reach_student_and_connectors(kernel):
    pair = pooled_mlp_pair()
    method = build_method({"name": "cc", "kernel": kernel, "beta": 1.0})
    setup_shapes(method, {"pool": (2, 6)}, {"pool": (2, 12)}, num_classes=5, num_train=16)
    connectors = list(method.parameters())
    assert len(connectors) == 4  # weight and bias of both embeddings
    pair.check_one_step(method, lr=0.01, connectors=connectors, expected={"ce", "cc"})


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("cc")
    assert method.student_features == method.teacher_features == ("pool",)
    assert (method.beta, method.ce_weight, method.embed_dim, method.kernel) == (
        0.02,
        1.0,
        128,
        "crd",
    )
    assert (method.gamma, method.order) == (0.4, 2)
