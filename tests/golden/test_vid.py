"""Golden tests of variational information distillation (Ahn et al. 2019; METHODS.md 1.2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import build_method

from .helpers import feature_terms, method_from_yaml, setup_method, two_stage_conv_pair


def _vid(method, student: dict, teacher: dict) -> torch.Tensor:
    return feature_terms(method, student, teacher)["vid"]


def _layers(method, index=0):
    return [m for m in method.regressors[index].mean if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_initial_variance_and_the_nll_of_a_perfect_mean():
    s, t = torch.randn(4, 3, 2, 2), torch.zeros(4, 5, 2, 2)
    method = setup_method(build_method({"name": "vid"}), {"s": s}, {"t": t})
    variance = method.regressors[0].variance()
    assert variance.shape == (5,)
    assert torch.allclose(variance, torch.full((5,), 5.0), rtol=1e-6)
    with torch.no_grad():
        _layers(method)[-1].weight.zero_()  # predicted mean 0 = the teacher feature
    assert _vid(method, {"s": s}, {"t": t}).item() == pytest.approx(0.5 * math.log(5.0), rel=1e-6)
    t2 = torch.full((4, 5, 2, 2), 2.0)  # now off by 2 everywhere: 0.5 * (4 / 5 + log 5)
    got = _vid(method, {"s": s}, {"t": t2}).item()
    assert got == pytest.approx(0.5 * (4 / 5 + math.log(5.0)), rel=1e-6)


def test_variance_gradient_vanishes_at_the_per_channel_mean_squared_error():
    # the Gaussian NLL is minimised in sigma_c^2 at the channel's mean squared error
    torch.manual_seed(0)
    s, t = torch.randn(6, 3), torch.randn(6, 2) * torch.tensor([0.5, 3.0])
    method = setup_method(build_method({"name": "vid"}), {"s": s}, {"t": t})
    with torch.no_grad():
        _layers(method)[-1].weight.zero_()
        mse = t.pow(2).mean(0)
        reg = method.regressors[0]
        reg.alpha.copy_(torch.log(torch.expm1(mse - reg.eps)))  # softplus^-1
    _vid(method, {"s": s}, {"t": t}).backward()
    assert method.regressors[0].alpha.grad.abs().max().item() < 1e-6
    assert method.regressors[0].variance().detach() == pytest.approx(mse, rel=1e-5)


def _reference_nll(s, t, weights, alpha, eps=1e-5) -> float:
    """Plain-float VID loss of 2-D features: linear-ReLU-linear-ReLU-linear mean, Gaussian NLL."""

    def matvec(w, v):
        return [sum(a * b for a, b in zip(row, v, strict=True)) for row in w]

    var = [math.log1p(math.exp(a)) + eps for a in alpha]
    terms = []
    for s_row, t_row in zip(s, t, strict=True):
        h = [max(0.0, v) for v in matvec(weights[0], s_row)]
        h = [max(0.0, v) for v in matvec(weights[1], h)]
        mu = matvec(weights[2], h)
        terms += [
            0.5 * ((tc - m) ** 2 / vc + math.log(vc))
            for tc, m, vc in zip(t_row, mu, var, strict=True)
        ]
    return sum(terms) / len(terms)


def test_value_matches_independent_computation_for_vectors_and_pooled_maps():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)
    weights = [torch.randn(2, 4, generator=g), torch.randn(2, 2, generator=g)]
    weights.append(torch.randn(2, 2, generator=g))
    alpha = [0.3, -1.2]
    method = setup_method(build_method({"name": "vid", "beta": 2.0}), {"s": s}, {"t": t})
    assert [type(m) for m in _layers(method)] == [nn.Linear] * 3  # mid width = teacher's 2
    with torch.no_grad():
        for layer, w in zip(_layers(method), weights, strict=True):
            layer.weight.copy_(w)
        method.regressors[0].alpha.copy_(torch.tensor(alpha))
    expected = _reference_nll(s.tolist(), t.tolist(), [w.tolist() for w in weights], alpha)
    assert _vid(method, {"s": s}, {"t": t}).item() == pytest.approx(2.0 * expected, rel=1e-5)
    # the same data as a 2x2 student map whose positions average to s, and a 1x1 teacher map:
    # the student is pooled to 1x1 and 1x1 convolutions do what the linear layers did
    offsets = torch.tensor([1.0, -1.0, 2.0, -2.0]).view(1, 1, 2, 2)
    s_map, t_map = s[:, :, None, None] + offsets, t[:, :, None, None]
    maps = setup_method(build_method({"name": "vid", "beta": 2.0}), {"s": s_map}, {"t": t_map})
    assert [type(m) for m in _layers(maps)] == [nn.Conv2d] * 3
    with torch.no_grad():
        for layer, w in zip(_layers(maps), weights, strict=True):
            layer.weight.copy_(w[:, :, None, None])
        maps.regressors[0].alpha.copy_(torch.tensor(alpha))
    assert _vid(maps, {"s": s_map}, {"t": t_map}).item() == pytest.approx(2 * expected, rel=1e-5)


def test_stages_paired_from_the_deepest_with_mismatched_channels_and_sizes():
    student = {"stage1": torch.randn(2, 3, 8, 8), "stage2": torch.randn(2, 4, 2, 2)}
    teacher = {
        "stage1": torch.randn(2, 2, 8, 8),
        "stage2": torch.randn(2, 6, 4, 4),
        "stage3": torch.randn(2, 8, 4, 4),
    }
    method = setup_method(build_method({"name": "vid"}), student, teacher)
    assert method.pairs == [("stage1", "stage2"), ("stage2", "stage3")]
    shapes = [[tuple(m.weight.shape[:2]) for m in _layers(method, i)] for i in range(2)]
    assert shapes == [[(6, 3), (6, 6), (6, 6)], [(8, 4), (8, 8), (8, 8)]]
    assert torch.isfinite(_vid(method, student, teacher))
    narrow = setup_method(build_method({"name": "vid", "mid_channels": 5}), student, teacher)
    assert [tuple(m.weight.shape[:2]) for m in _layers(narrow, 1)] == [(5, 4), (5, 5), (8, 5)]


def test_bad_arguments_and_shapes_raise_user_errors():
    with pytest.raises(UserError, match=r"'vid'.*student 's' \(2, 5, 8\)"):
        setup_method(
            build_method({"name": "vid"}), {"s": torch.zeros(2, 5, 8)}, {"t": torch.zeros(2, 4)}
        )
    with pytest.raises(UserError, match="'vid' needs mid_channels"):
        build_method({"name": "vid", "mid_channels": 0})
    with pytest.raises(UserError, match="'vid' needs init_pred_var > eps"):
        build_method({"name": "vid", "init_pred_var": 0.0})


def test_large_initial_variance_does_not_overflow():
    method = setup_method(
        build_method({"name": "vid", "init_pred_var": 1000.0}),
        {"s": torch.randn(2, 3)},
        {"t": torch.randn(2, 2)},
    )
    assert torch.allclose(method.regressors[0].variance(), torch.full((2,), 1000.0))
    assert torch.allclose(F.softplus(method.regressors[0].alpha), torch.full((2,), 1000.0))


def test_one_step_reduces_loss_and_gradients_reach_student_and_connectors_only():
    pair = two_stage_conv_pair()
    method = pair.setup(build_method({"name": "vid"}))
    connectors = list(method.parameters())
    assert len(connectors) == 2 * 4  # three 1x1 convs and alpha per stage
    pair.check_one_step(method, lr=1e-2, connectors=connectors)


def test_yaml_keys_are_the_constructor_arguments():
    method = method_from_yaml("vid", to_container=False)
    assert (method.beta, method.init_pred_var, method.eps) == (1.0, 5.0, 1e-5)
    assert method.mid_channels is None and method.student_features == ("stages",)
