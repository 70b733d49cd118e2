"""Golden tests of FitNets hint learning (Romero et al. 2015; METHODS.md 1.2)."""

import math

import pytest
import torch
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import MethodSetup, build_method

from .helpers import conv_pair, feature_terms, method_from_yaml, setup_method


def _method(**kwargs):
    return build_method(
        {"name": "fitnet", "student_feature": "s", "teacher_feature": "t", **kwargs}
    )


def _make_identity(method) -> None:
    """Regressor = identity: unit weights, BatchNorm in eval mode with running var 1 - eps."""
    layer, bn = method.regressor[0], method.regressor[1]
    with torch.no_grad():
        layer.weight.zero_()
        eye = torch.eye(layer.weight.shape[0])
        layer.weight.view(eye.shape[0], eye.shape[1], -1)[:, :, 0].copy_(eye)
        bn.running_var.fill_(1 - bn.eps)
    method.eval()


def test_hint_equal_to_the_regressed_student_gives_zero():
    s = torch.randn(4, 5)
    method = setup_method(_method(), {"s": s}, {"t": s})
    _make_identity(method)
    assert feature_terms(method, {"s": s}, {"t": s.relu()})["fitnet"].item() == pytest.approx(
        0, abs=1e-6
    )
    m = torch.randn(2, 3, 4, 4)
    method = setup_method(_method(), {"s": m}, {"t": m})
    assert isinstance(method.regressor[0], nn.Conv2d) and method.regressor[0].kernel_size == (1, 1)
    _make_identity(method)
    assert feature_terms(method, {"s": m}, {"t": m.relu()})["fitnet"].item() == pytest.approx(
        0, abs=1e-6
    )


def test_value_matches_independent_computation():
    s = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]
    t = [[0.5, 1.0], [2.0, 0.0]]
    w = [[0.2, -0.1, 0.4], [-0.3, 0.5, 0.1]]
    mean, var, gamma, shift, eps = [0.1, -0.2], [2.0, 0.5], [1.5, 0.8], [0.3, -0.1], 1e-5
    method = setup_method(_method(beta=100.0), {"s": torch.tensor(s)}, {"t": torch.tensor(t)})
    linear, bn = method.regressor[0], method.regressor[1]
    assert isinstance(linear, nn.Linear) and isinstance(bn, nn.BatchNorm1d)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(w))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(shift))
    method.eval()
    sq = []
    for s_row, t_row in zip(s, t, strict=True):
        for c in range(2):
            z = sum(wi * si for wi, si in zip(w[c], s_row, strict=True))
            pred = max(0.0, gamma[c] * (z - mean[c]) / math.sqrt(var[c] + eps) + shift[c])
            sq.append((pred - t_row[c]) ** 2)
    got = feature_terms(method, {"s": torch.tensor(s)}, {"t": torch.tensor(t)})["fitnet"].item()
    assert got == pytest.approx(100.0 * sum(sq) / len(sq), rel=1e-5)


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "layer", "kernel"),
    [
        ((2, 4, 8, 8), (2, 6, 4, 4), nn.Conv2d, (3, 3)),  # twice the teacher's size: stride 2
        ((2, 4, 4, 4), (2, 6, 8, 8), nn.ConvTranspose2d, (4, 4)),  # half its size: upsample
        ((2, 4, 6, 5), (2, 6, 4, 4), nn.Conv2d, (3, 2)),  # larger: kernel 1 + s - t
        ((2, 4, 1, 1), (2, 6, 2, 2), nn.ConvTranspose2d, (4, 4)),
        ((2, 4, 4, 4), (2, 6), nn.Conv2d, (4, 4)),  # a pooled teacher vector is a 1x1 map
        ((2, 4), (2, 6, 2, 2), nn.ConvTranspose2d, (4, 4)),  # an MLP feature is a 1x1 map
        ((2, 4), (2, 6), nn.Linear, None),
    ],
)
def test_mismatched_sizes_and_channels_handled_like_the_crd_regressor(
    s_shape, t_shape, layer, kernel
):
    s, t = torch.randn(s_shape), torch.randn(t_shape)
    method = setup_method(_method(), {"s": s}, {"t": t})
    assert type(method.regressor[0]) is layer
    if kernel is not None:
        assert method.regressor[0].kernel_size == kernel
    assert torch.isfinite(feature_terms(method, {"s": s}, {"t": t})["fitnet"])


def test_unmappable_sizes_raise_user_error_naming_method_features_and_shapes():
    s, t = torch.zeros(2, 4, 3, 3), torch.zeros(2, 6, 8, 8)
    with pytest.raises(
        UserError, match=r"'fitnet'.*student 's' \(2, 4, 3, 3\).*teacher 't' \(2, 6, 8, 8\)"
    ):
        setup_method(_method(), {"s": s}, {"t": t})
    method = build_method({"name": "fitnet", "teacher_feature": "stages"})
    method.teacher_features = ("stage1", "stage2")  # 'stages' resolved to two features
    with pytest.raises(UserError, match="fitnet.*teacher_feature 'stages' names 2 features"):
        method.setup(MethodSetup({}, {}, 3, 10))
    with pytest.raises(UserError, match="fitnet.*one feature name"):
        build_method({"name": "fitnet", "student_feature": ["stage1", "stage2"]})


@pytest.mark.parametrize(
    ("names", "middle"),
    [
        (("stage1", "stage2", "stage3"), "stage2"),  # CIFAR ResNets/WRNs: CRD hint_layer 2
        (("stage1", "stage2", "stage3", "stage4", "stage5"), "stage3"),  # VGG
        (("stage1", "stage2", "stage3", "stage4"), "stage2"),  # ResNet-50
        (("hidden1", "hidden2"), "hidden1"),
    ],
)
def test_middle_stage_default_picks_the_benchmark_hint_layer(names, middle):
    method = build_method({"name": "fitnet"})
    assert method.student_features == ("stages",) and method.teacher_features == ("stages",)
    features = {n: torch.randn(2, 4, 2, 2) for n in names}
    setup_method(method, features, features)
    assert method.pairs == [(middle, middle)]


def test_one_step_reduces_loss_and_gradients_reach_student_and_regressor_only():
    torch.manual_seed(0)
    pair = conv_pair(
        [nn.Conv2d(3, 4, 3, stride=2, padding=1)],
        [nn.Conv2d(3, 6, 3, padding=1)],
        nn.Linear(4, 3),
        student_names=("s",),
        teacher_names=("t",),
    )
    method = pair.setup(_method())  # 4x4 student, 8x8 teacher: transposed
    connectors = list(method.parameters())
    assert len(connectors) == 3  # transposed-conv weight, BatchNorm weight and bias
    pair.check_one_step(method, lr=1e-3, connectors=connectors)


def test_yaml_keys_are_the_constructor_arguments():
    method = method_from_yaml("fitnet", to_container=False)
    assert method.beta == 100.0 and method.ce_weight == 1.0 and method.kd_weight == 0.0
    assert method.specs == {"student": "middle_stage", "teacher": "middle_stage"}
