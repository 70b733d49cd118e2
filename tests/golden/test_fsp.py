"""Golden tests of FSP (Yim et al. 2017; METHODS.md 1.2) and its initialisation stage."""

import pytest
import torch
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method

from .helpers import check_one_step, feature_outputs, method_from_yaml, setup_method


def _fsp(method, student: dict, teacher: dict) -> float:
    return method.init_forward(*feature_outputs(student, teacher), None, None)["fsp"].item()


def _reference_fsp(lower: list, upper: list) -> list:
    """G[i][j] = mean over positions of upper[i] * lower[j], one sample ([C][H][W] lists)."""
    hw = len(lower[0]) * len(lower[0][0])
    flat_l = [[v for row in ch for v in row] for ch in lower]
    flat_u = [[v for row in ch for v in row] for ch in upper]
    return [[sum(a * b for a, b in zip(u, lo, strict=True)) / hw for lo in flat_l] for u in flat_u]


def _reference_loss(student: list, teacher: list) -> float:
    """Sum over consecutive pairs of the mean squared FSP difference (lists of (N,C,H,W))."""
    total = 0.0
    for k in range(len(student) - 1):
        sq = []
        for n in range(student[0].shape[0]):
            g_s = _reference_fsp(student[k][n].tolist(), student[k + 1][n].tolist())
            g_t = _reference_fsp(teacher[k][n].tolist(), teacher[k + 1][n].tolist())
            rows = zip(g_s, g_t, strict=True)
            sq += [(a - b) ** 2 for ra, rb in rows for a, b in zip(ra, rb, strict=True)]
        total += sum(sq) / len(sq)
    return total


def test_identical_features_give_zero_and_a_hand_computed_case():
    f = {"stem": torch.randn(2, 3, 4, 4), "stage1": torch.randn(2, 5, 4, 4)}
    method = setup_method(build_method({"name": "fsp"}), f, f)
    assert _fsp(method, f, {k: v.clone() for k, v in f.items()}) == pytest.approx(0, abs=1e-7)
    # one channel, two positions: G = (a c + b d) / 2; student G = (1*3 + 2*4)/2 = 5.5,
    # teacher G = (1*1 + 0*2)/2 = 0.5, loss = (5.5 - 0.5)^2 = 25
    s = {"stem": torch.tensor([[[[1.0, 2.0]]]]), "stage1": torch.tensor([[[[3.0, 4.0]]]])}
    t = {"stem": torch.tensor([[[[1.0, 0.0]]]]), "stage1": torch.tensor([[[[1.0, 2.0]]]])}
    method = setup_method(build_method({"name": "fsp", "init_weight": 2.0}), s, t)
    assert _fsp(method, s, t) == pytest.approx(2.0 * 25.0, rel=1e-6)


def test_invariant_to_a_common_spatial_permutation_and_joint_sign_flip():
    torch.manual_seed(0)
    s = {"stem": torch.randn(2, 3, 3, 3), "stage1": torch.randn(2, 4, 3, 3)}
    t = {"stem": torch.randn(2, 3, 3, 3), "stage1": torch.randn(2, 4, 3, 3)}
    method = setup_method(build_method({"name": "fsp"}), s, t)
    base = _fsp(method, s, t)
    perm = torch.randperm(9)

    def shuffle(f):
        return f.flatten(2)[:, :, perm].view_as(f)

    shuffled_s = {k: shuffle(v) for k, v in s.items()}
    assert _fsp(method, shuffled_s, {k: shuffle(v) for k, v in t.items()}) == pytest.approx(
        base, rel=1e-5
    )
    assert _fsp(method, s, {k: -v for k, v in t.items()}) == pytest.approx(base, rel=1e-5)


def test_value_matches_independent_computation():
    g = torch.Generator().manual_seed(3)
    names = ("stem", "stage1", "stage2")
    s = [torch.randn(2, c, 3, 2, generator=g) for c in (2, 3, 4)]
    t = [torch.randn(2, c, 3, 2, generator=g) for c in (2, 3, 4)]
    student, teacher = dict(zip(names, s, strict=True)), dict(zip(names, t, strict=True))
    method = setup_method(build_method({"name": "fsp"}), student, teacher)
    assert _fsp(method, student, teacher) == pytest.approx(_reference_loss(s, t), rel=1e-5)


def test_sizes_inside_a_pair_pooled_and_features_paired_from_the_deepest():
    g = torch.Generator().manual_seed(4)
    s = [torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 2, generator=g)]
    t0 = torch.randn(2, 7, 8, 8, generator=g)
    t = [torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    student = {"stage1": s[0], "stage2": s[1]}
    teacher = {"stem": t0, "stage1": t[0], "stage2": t[1]}
    method = setup_method(build_method({"name": "fsp"}), student, teacher)
    assert method.pairs == [("stage1", "stage1"), ("stage2", "stage2")]
    s_low = s[0].reshape(2, 2, 2, 2, 2, 2).mean(dim=(3, 5))  # 4x4 -> 2x2 like its partner
    t_low = t[0].reshape(2, 2, 4, 2, 4, 2).mean(dim=(3, 5))  # 8x8 -> 4x4
    expected = _reference_loss([s_low, s[1]], [t_low, t[1]])
    assert _fsp(method, student, teacher) == pytest.approx(expected, rel=1e-5)


def test_channel_mismatch_raises_user_error_naming_method_and_shapes():
    s = {"stem": torch.zeros(2, 16, 8, 8), "stage1": torch.zeros(2, 16, 8, 8)}
    t = {"stem": torch.zeros(2, 16, 8, 8), "stage1": torch.zeros(2, 32, 8, 8)}
    with pytest.raises(
        UserError,
        match=r"'fsp'.*student 'stage1' \(2, 16, 8, 8\).*teacher 'stage1' \(2, 32, 8, 8\)",
    ):
        setup_method(build_method({"name": "fsp"}), s, t)
    with pytest.raises(UserError, match="'fsp' needs at least two"):
        setup_method(build_method({"name": "fsp"}), {"stage1": s["stem"]}, t)
    with pytest.raises(UserError, match="init_epochs"):
        build_method({"name": "fsp", "init_epochs": -1})


def test_main_stage_is_ce_only_by_default_and_fsp_weighted_by_beta_otherwise():
    f = {"stem": torch.randn(2, 3, 4, 4), "stage1": torch.randn(2, 5, 4, 4)}
    t = {"stem": torch.randn(2, 3, 4, 4), "stage1": torch.randn(2, 5, 4, 4)}
    method = setup_method(build_method({"name": "fsp"}), f, t)
    assert method.init_epochs == 30
    s_out, t_out = feature_outputs(f, t)
    assert set(method(s_out, t_out, torch.zeros(2).long(), None)) == {"ce"}
    assert set(method.init_forward(s_out, t_out, None, None)) == {"fsp"}
    method = setup_method(build_method({"name": "fsp", "beta": 50.0, "kd_weight": 0.5}), f, t)
    terms = method(s_out, t_out, torch.zeros(2).long(), None)
    assert set(terms) == {"ce", "kd", "fsp"}
    assert terms["fsp"].item() == pytest.approx(50.0 * _fsp(method, f, t), rel=1e-6)


class _TinyNet(nn.Module):
    """stem -> stage1 -> pooled -> classifier, with the zoo's ``feature_points``."""

    def __init__(self, widths: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        self.classifier = nn.Linear(widths[1], 3)
        self.feature_points = {"pool": ("classifier", "input")}

    def forward(self, x):
        stem = torch.relu(self.conv1(x))
        stage1 = torch.relu(self.conv2(stem))
        return self.classifier(stage1.mean((2, 3))), {"stem": stem, "stage1": stage1}


def test_init_stage_trains_the_student_feature_layers_only():
    torch.manual_seed(0)
    student, teacher = _TinyNet((4, 6)), _TinyNet((4, 6)).requires_grad_(False)
    x = torch.randn(8, 3, 8, 8)

    def outputs():
        logits, feats = student(x)
        with torch.no_grad():
            t_logits, t_feats = teacher(x)
        return ModelOutputs(logits, feats), ModelOutputs(t_logits, t_feats)

    s, t = outputs()
    method = setup_method(build_method({"name": "fsp"}), s.features, t.features)
    params = method.init_parameters(student)
    assert {id(p) for p in params} == {
        id(p) for p in [*student.conv1.parameters(), *student.conv2.parameters()]
    }
    assert list(method.parameters()) == []  # FSP has no connectors
    check_one_step(
        lambda: method.init_forward(*outputs(), None, None)["fsp"],
        params,
        [*student.classifier.parameters(), *teacher.parameters()],
        lr=1e-2,
    )


def test_yaml_keys_are_the_constructor_arguments():
    method = method_from_yaml("fsp", to_container=False)
    assert (method.init_epochs, method.init_weight, method.beta) == (30, 1.0, 0.0)
    assert method.student_features == ("stem", "stages")


def test_matrices_computed_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(5)
    s = {
        "stem": torch.randn(2, 3, 4, 4, generator=g),
        "stage1": torch.randn(2, 4, 4, 4, generator=g),
    }
    t = {
        "stem": torch.randn(2, 3, 4, 4, generator=g),
        "stage1": torch.randn(2, 4, 4, 4, generator=g),
    }
    method = setup_method(build_method({"name": "fsp"}), s, t)

    def low(f):
        return {k: v.bfloat16() for k, v in f.items()}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = method.init_forward(*feature_outputs(low(s), low(t)), None, None)["fsp"]
    assert value.dtype == torch.float32
    rounded = [[v.bfloat16().float() for v in f.values()] for f in (s, t)]
    assert value.item() == pytest.approx(_reference_loss(*rounded), rel=1e-5)
