"""Golden tests of AB, activation boundaries (Heo et al. 2019; METHODS.md 1.2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method
from hpmkd.methods.ab import boundary_loss

from .helpers import (
    check_one_step,
    method_from_yaml,
    preset_method_config,
    run_on_models,
    setup_method,
    wrn_raw_outputs,
    zoo_pair,
)

BN_EPS = 1e-5


def _setup(method, s_shapes, t_shapes):
    return setup_method(method, s_shapes, t_shapes, num_train=100)


def _reference_alternative(source: list[float], target: list[float], margin: float) -> float:
    """RepDistiller's masked form: (s+m)^2 [s > -m, t <= 0] + (s-m)^2 [s <= m, t > 0], summed."""
    total = 0.0
    for s, t in zip(source, target, strict=True):
        if t <= 0 and s > -margin:
            total += (s + margin) ** 2
        if t > 0 and s <= margin:
            total += (s - margin) ** 2
    return total


# --- 1. closed-form cases ------------------------------------------------------------------


def test_hand_computed_case():
    # teacher on at 0.5 -> (1-0.5)^2; on at -2 -> (1+2)^2; off at 0 -> (0+1)^2; t = 0 is off
    source = torch.tensor([[0.5, -2.0, 0.0, 3.0]])
    target = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    assert boundary_loss(source, target, 1.0).item() == pytest.approx(0.25 + 9 + 1 + 16)


def test_student_beyond_the_margin_on_the_right_side_gives_zero():
    torch.manual_seed(0)
    target = torch.randn(4, 6, 3, 3)
    source = torch.where(target > 0, 1.0, -1.0) * (1.0 + torch.rand_like(target))
    assert boundary_loss(source, target, 1.0).item() == 0.0
    # exactly at the margin is still zero; inside it is not
    assert boundary_loss(torch.where(target > 0, 1.0, -1.0), target, 1.0).item() == 0.0
    assert boundary_loss(0.5 * torch.where(target > 0, 1.0, -1.0), target, 1.0).item() > 0


# --- 2. invariances -------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0])
def test_invariant_to_positive_scaling_of_the_teacher(scale):
    torch.manual_seed(1)
    method = _setup(build_method({"name": "ab"}), {"s": (4, 3, 4, 4)}, {"t": (4, 5, 4, 4)})
    method.eval()
    f_s, f_t = torch.randn(4, 3, 4, 4), torch.randn(4, 5, 4, 4)
    base = method.init_forward(
        ModelOutputs(torch.zeros(4, 3), {"s": f_s}),
        ModelOutputs(torch.zeros(4, 3), {"t": f_t}),
        None,
        None,
    )["ab"]
    scaled = method.init_forward(
        ModelOutputs(torch.zeros(4, 3), {"s": f_s}),
        ModelOutputs(torch.zeros(4, 3), {"t": scale * f_t}),
        None,
        None,
    )
    assert scaled["ab"].item() == pytest.approx(base.item(), rel=1e-6)


def test_batch_of_copies_has_the_value_of_one_sample():
    torch.manual_seed(2)
    method = _setup(build_method({"name": "ab"}), {"s": (1, 3, 2, 2)}, {"t": (1, 3, 2, 2)})
    method.eval()
    f_s, f_t = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)

    def value(n):
        s = ModelOutputs(torch.zeros(n, 2), {"s": f_s.repeat(n, 1, 1, 1)})
        t = ModelOutputs(torch.zeros(n, 2), {"t": f_t.repeat(n, 1, 1, 1)})
        return method.init_forward(s, t, None, None)["ab"].item()

    assert value(5) == pytest.approx(value(1), rel=1e-6)


# --- 3. value from an independent computation ------------------------------------------------

W1 = [[0.5, -1.0], [2.0, 0.25], [-0.5, 1.5]]  # stage 1: 2 -> 3 channels
W2 = [[1.0, -2.0, 0.5]]  # stage 2: 3 -> 1 channel
S1 = [
    [[[0.3, -1.2], [2.0, 0.1]], [[-0.7, 0.4], [1.1, -0.2]]],
    [[[1.5, 0.0], [-0.3, 0.8]], [[0.2, -1.0], [0.6, 0.9]]],
]  # (2, 2, 2, 2)
T1 = [
    [[[1.0, -1.0], [0.5, 0.0]], [[-2.0, 0.3], [1.0, -0.1]], [[0.2, 0.2], [-0.4, 3.0]]],
    [[[-1.0, 1.0], [1.0, 1.0]], [[0.5, -0.5], [-0.5, 0.5]], [[-1.0, -2.0], [2.0, 0.7]]],
]
S2 = [[0.4, -0.6, 1.0], [-1.5, 0.2, 0.3]]  # (2, 3), MLP-like
T2 = [[0.9], [-0.2]]  # (2, 1)


def _reference_value(margin=1.0, decay=0.5, scale=0.003) -> float:
    """Connectors = fixed 1x1 weights, BN in eval with fresh statistics (divides by
    sqrt(1 + eps)); stage weights decay^(n-1-i); / batch; * scale. Plain Python."""
    inv = 1.0 / math.sqrt(1.0 + BN_EPS)
    src1, tgt1 = [], []
    for n in range(2):
        for o in range(3):
            for h in range(2):
                for w in range(2):
                    src1.append(inv * sum(W1[o][c] * S1[n][c][h][w] for c in range(2)))
                    tgt1.append(T1[n][o][h][w])
    src2 = [inv * sum(W2[0][c] * S2[n][c] for c in range(3)) for n in range(2)]
    tgt2 = [T2[n][0] for n in range(2)]
    l1 = _reference_alternative(src1, tgt1, margin)
    l2 = _reference_alternative(src2, tgt2, margin)
    return (decay * l1 + l2) / 2 * scale


def test_value_matches_independent_computation():
    method = _setup(
        build_method({"name": "ab"}),
        {"s1": (2, 2, 2, 2), "s2": (2, 3)},
        {"t1": (2, 3, 2, 2), "t2": (2, 1)},
    )
    with torch.no_grad():
        method.connectors[0][0].weight.copy_(torch.tensor(W1)[:, :, None, None])
        method.connectors[1][0].weight.copy_(torch.tensor(W2))
    method.eval()
    s = ModelOutputs(torch.zeros(2, 3), {"s1": torch.tensor(S1), "s2": torch.tensor(S2)})
    t = ModelOutputs(torch.zeros(2, 3), {"t1": torch.tensor(T1), "t2": torch.tensor(T2)})
    got = method.init_forward(s, t, torch.tensor([0, 1]), torch.arange(2))["ab"].item()
    assert got == pytest.approx(_reference_value(), rel=1e-5)
    assert got == pytest.approx(0.026480986, rel=1e-5)  # pinned


def test_deepest_stage_weighs_one_and_shallower_halve():
    torch.manual_seed(3)
    shapes_s = {f"s{i}": (2, 2, 3, 3) for i in range(3)}
    shapes_t = {f"t{i}": (2, 2, 3, 3) for i in range(3)}
    method = _setup(build_method({"name": "ab", "loss_scale": 1.0}), shapes_s, shapes_t)
    method.eval()
    f_s = [torch.randn(2, 2, 3, 3) for _ in range(3)]
    f_t = [torch.randn(2, 2, 3, 3) for _ in range(3)]
    per_stage = [
        boundary_loss(method.connectors[i](f_s[i]), f_t[i], 1.0).item() / 2 for i in range(3)
    ]
    s = ModelOutputs(torch.zeros(2, 2), {f"s{i}": f_s[i] for i in range(3)})
    t = ModelOutputs(torch.zeros(2, 2), {f"t{i}": f_t[i] for i in range(3)})
    got = method.init_forward(s, t, None, None)["ab"].item()
    expected = 0.25 * per_stage[0] + 0.5 * per_stage[1] + per_stage[2]
    assert got == pytest.approx(expected, rel=1e-5)


# --- 4. one training step -------------------------------------------------------------------


class _TinyNet(nn.Module):
    """Two conv stages; records stage pre-activations like the zoo's ``stageK_pre``."""

    def __init__(self, widths, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        self.fc = nn.Linear(widths[1], classes)

    def forward(self, x):
        p1 = self.conv1(x)
        p2 = self.conv2(F.relu(p1))
        logits = self.fc(F.relu(p2).mean((2, 3)))
        return ModelOutputs(logits, {"stage1_pre": p1, "stage2_pre": p2})


def _outputs(model, x, prefix):
    out = model(x)
    return ModelOutputs(out.logits, {f"{prefix}{k}": v for k, v in out.features.items()})


def test_one_step_init_stage_and_main_stage():
    torch.manual_seed(4)
    student = _TinyNet((4, 6))
    teacher = _TinyNet((8, 16)).requires_grad_(False).eval()
    method = build_method({"name": "ab", "init_epochs": 2})
    assert method.init_epochs == 2
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    s_shapes = {f"s_{k}": v.shape for k, v in student(x).features.items()}
    t_shapes = {f"t_{k}": v.shape for k, v in teacher(x).features.items()}
    _setup(method, s_shapes, t_shapes)
    params = method.init_parameters(student)
    assert len(params) == len(list(student.parameters())) + len(
        list(method.connectors.parameters())
    )

    def loss():
        with torch.no_grad():
            t_out = _outputs(teacher, x, "t_")
        terms = method.init_forward(_outputs(student, x, "s_"), t_out, y, torch.arange(16))
        assert set(terms) == {"ab"}
        return sum(terms.values())

    learn = [*student.conv1.parameters(), *student.conv2.parameters()]
    learn += method.connectors.parameters()
    check_one_step(loss, learn, teacher.parameters(), lr=0.05, step=params)

    # main stage, CRD-benchmark default: CE only (RepDistiller sets the AB term to 0)
    terms = method(_outputs(student, x, "s_"), _outputs(teacher, x, "t_"), y, torch.arange(16))
    assert set(terms) == {"ce"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student(x).logits, y).item())

    # with main_stage_distill the main stage adds beta * AB
    keep = _setup(
        build_method({"name": "ab", "main_stage_distill": True, "beta": 2.0}), s_shapes, t_shapes
    )
    keep.load_state_dict(method.state_dict())
    keep.eval()
    method.eval()
    s_out, t_out = _outputs(student, x, "s_"), _outputs(teacher, x, "t_")
    terms = keep(s_out, t_out, y, torch.arange(16))
    assert set(terms) == {"ce", "ab"}
    assert terms["ab"].item() == pytest.approx(
        2.0 * method.init_forward(s_out, t_out, y, None)["ab"].item(), rel=1e-6
    )


# --- 5. mismatched features -----------------------------------------------------------------


def test_handled_mismatches_channels_sizes_and_stage_counts():
    torch.manual_seed(5)
    # student: 3 stages, teacher: 2 -> pairs (s2, t1), (s3, t2); spatial 8x8 vs 4x4
    s_shapes = {"s1": (4, 2, 8, 8), "s2": (4, 3, 8, 8), "s3": (4, 5, 4, 4)}
    t_shapes = {"t1": (4, 7, 4, 4), "t2": (4, 9, 2, 2)}
    method = _setup(build_method({"name": "ab"}), s_shapes, t_shapes)
    assert method.pairs == [("s2", "t1"), ("s3", "t2")]
    s = ModelOutputs(torch.zeros(4, 3), {k: torch.randn(v) for k, v in s_shapes.items()})
    t = ModelOutputs(torch.zeros(4, 3), {k: torch.randn(v) for k, v in t_shapes.items()})
    value = method.init_forward(s, t, None, None)["ab"]
    assert torch.isfinite(value) and value.item() > 0
    # MLP pairs (2-D) and a 2-D student against a teacher map
    method = _setup(
        build_method({"name": "ab"}),
        {"h1": (4, 6), "h2": (4, 3)},
        {"t1": (4, 5, 2, 2), "t2": (4, 8)},
    )
    s = ModelOutputs(torch.zeros(4, 3), {"h1": torch.randn(4, 6), "h2": torch.randn(4, 3)})
    t = ModelOutputs(torch.zeros(4, 3), {"t1": torch.randn(4, 5, 2, 2), "t2": torch.randn(4, 8)})
    assert torch.isfinite(method.init_forward(s, t, None, None)["ab"])


def test_unsupported_feature_rank_is_a_user_error():
    method = build_method({"name": "ab"})
    with pytest.raises(UserError, match=r"'ab'.*'tokens' \(4, 16, 32\)"):
        _setup(method, {"tokens": (4, 16, 32)}, {"t": (4, 8, 4, 4)})


def test_bad_parameter_is_a_user_error():
    with pytest.raises(UserError, match="bad parameters for method 'ab'"):
        build_method({"name": "ab", "nope": 1})


# --- config ---------------------------------------------------------------------------------


def test_yaml_keys_are_exactly_the_constructor_arguments():
    method = method_from_yaml("ab")
    assert method.init_epochs == 30 and method.margin == 1.0
    assert method.main_stage_distill is False and method.beta == 0.0
    assert method.student_features == ("stages_pre",)


# --- CRD presets: the benchmark's features, connector and stage weights --------------------


def _benchmark_ab(sources: list, targets: list) -> torch.Tensor:
    """The benchmark's AB loss on identity-connected pairs, written out: per pair i of n,
    2^(i-n+1) * sum(where(t > 0, relu(1 - s), relu(1 + s))^2) / batch * 3 / 1000."""
    n, total = len(sources), torch.tensor(0.0)
    for i, (s, t) in enumerate(zip(sources, targets, strict=True)):
        hinge = torch.where(t > 0, (1 - s).clamp_min(0), (1 + s).clamp_min(0))
        total = total + 2.0 ** (i - n + 1) * hinge.pow(2).sum() / s.shape[0] * 3 / 1000
    return total


def _vgg_pre(model: nn.Module, x: torch.Tensor) -> list:
    """VGG group outputs before their last ReLU, groups 1-5, by running the modules by hand."""
    outs = []
    for group in range(1, 6):
        units = list(model.get_submodule(f"stage{group}"))
        for unit in units[:-1]:
            x = unit(x)
        pre = units[-1].bn(units[-1].conv(x))
        outs.append(pre)
        x = torch.relu(pre)
        if group < 5:
            x = model.get_submodule(f"maxpool{group}")(x)
    return outs


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def test_crd_preset_on_vgg_uses_groups_two_to_five_identity_connectors_and_n_four():
    teacher, student = zoo_pair("vgg13", "vgg8")
    x, y = _batch(6)
    method = build_method(preset_method_config("crd_cifar100/vgg13_vgg8", "ab"))
    terms = run_on_models(method, student, teacher, x, y, init_stage=True)
    assert method.pairs == [(f"stage{k}_pre", f"stage{k}_pre") for k in (2, 3, 4, 5)]
    assert all(isinstance(c, nn.Identity) for c in method.connectors)
    assert sum(p.numel() for p in method.parameters()) == 0
    with torch.no_grad():
        expected = _benchmark_ab(_vgg_pre(student, x)[1:], _vgg_pre(teacher, x)[1:])
    torch.testing.assert_close(terms["ab"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_crd_preset_on_wrn_uses_the_bn_outputs_before_the_relu():
    teacher, student = zoo_pair("wrn_40_2", "wrn_16_2")
    x, y = _batch(7)
    method = build_method(preset_method_config("crd_cifar100/wrn40_2_wrn16_2", "ab"))
    terms = run_on_models(method, student, teacher, x, y, init_stage=True)
    assert method.pairs == [(f"stage{k}_bn", f"stage{k}_bn") for k in (1, 2, 3)]

    def preact(model: nn.Module) -> list:
        _, f1, f2, f3 = wrn_raw_outputs(model, x)
        return [model.layer2[0].bn1(f1), model.layer3[0].bn1(f2), model.bn(f3)]

    with torch.no_grad():
        expected = _benchmark_ab(preact(student), preact(teacher))
    torch.testing.assert_close(terms["ab"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_identity_connector_only_where_the_shapes_agree():
    method = build_method({"name": "ab", "connector": "identity_if_same"})
    setup_method(
        method, {"s1": (2, 4, 4, 4), "s2": (2, 8, 2, 2)}, {"t1": (2, 4, 4, 4), "t2": (2, 6, 2, 2)}
    )
    assert isinstance(method.connectors[0], nn.Identity)
    assert isinstance(method.connectors[1], nn.Sequential)  # 8 -> 6 channels: 1x1 conv + BN
    default = build_method({"name": "ab"})
    setup_method(default, {"s1": (2, 4, 4, 4)}, {"t1": (2, 4, 4, 4)})
    assert isinstance(default.connectors[0], nn.Sequential)  # conv_bn: hpmkd's, always


def test_bad_connector_is_a_user_error():
    with pytest.raises(UserError, match="method 'ab': connector must be one of"):
        build_method({"name": "ab", "connector": "linear"})
