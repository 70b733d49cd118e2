"""Golden tests of FT, factor transfer (Kim et al. 2018; METHODS.md 1.2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method
from hpmkd.methods.ft import factor_distance

from .helpers import (
    check_one_step,
    method_from_yaml,
    preset_method_config,
    run_on_models,
    setup_method,
    wrn_raw_outputs,
    zoo_pair,
)


def _setup(method, s_shapes, t_shapes):
    return setup_method(method, s_shapes, t_shapes, num_train=100)


def _normalised(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


# --- 1. closed-form cases ------------------------------------------------------------------


def test_identical_factors_give_zero():
    f = torch.randn(4, 3, 5, 5)
    assert factor_distance(f, f.clone(), 1.0, "mean").item() == pytest.approx(0.0, abs=1e-7)
    assert factor_distance(f, f.clone(), 1.0, "batchmean").item() == pytest.approx(0.0, abs=1e-7)


def test_orthogonal_unit_factors():
    # normalised [1, 0] vs [0, 1]: |d| = [1, 1]; mean 1, per-sample L1 norm 2, L2 norm sqrt(2)
    f_s, f_t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert factor_distance(f_s, f_t, 1.0, "mean").item() == pytest.approx(1.0)
    assert factor_distance(f_s, f_t, 1.0, "batchmean").item() == pytest.approx(2.0)
    assert factor_distance(f_s, f_t, 2.0, "batchmean").item() == pytest.approx(math.sqrt(2))


# --- 2. invariances -------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [(3.0, 1.0), (1.0, 0.01), (25.0, 4.0)])
def test_invariant_to_positive_scaling_of_either_factor(a, b):
    torch.manual_seed(0)
    f_s, f_t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    base = factor_distance(f_s, f_t, 1.0, "mean").item()
    assert factor_distance(a * f_s, b * f_t, 1.0, "mean").item() == pytest.approx(base, rel=1e-5)


# --- 3. value from an independent computation ------------------------------------------------

FS = [[[[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 3.0, 1.0], [2.0, -2.0, 1.0, 1.0], [0.0, 4.0, 1.0, 0.0]]]]
FT_ = [[[[0.5, -1.0], [2.0, 1.5]]]]


def test_value_with_pooling_matches_independent_computation():
    # student factor 4x4 is average-pooled 2x2 to the teacher's 2x2, then both normalised
    pooled = [
        sum(FS[0][0][2 * i + di][2 * j + dj] for di in (0, 1) for dj in (0, 1)) / 4
        for i in (0, 1)
        for j in (0, 1)
    ]
    teacher = [v for row in FT_[0][0] for v in row]
    diff = [abs(a - b) for a, b in zip(_normalised(pooled), _normalised(teacher), strict=True)]
    got_mean = factor_distance(torch.tensor(FS), torch.tensor(FT_), 1.0, "mean").item()
    got_norm = factor_distance(torch.tensor(FS), torch.tensor(FT_), 1.0, "batchmean").item()
    assert got_mean == pytest.approx(sum(diff) / 4, rel=1e-6)
    assert got_norm == pytest.approx(sum(diff), rel=1e-6)
    assert got_mean == pytest.approx(0.36514837, rel=1e-5)  # pinned


def test_attention_factor_variant_matches_independent_computation():
    # RepDistiller's variant: channel mean of the squared factor, one value per position
    f_s = [[[[1.0, -2.0]], [[3.0, 0.0]]]]  # (1, 2, 1, 2)
    f_t = [[[[0.5, 1.0]], [[0.5, -1.0]]]]
    a_s = _normalised([(1.0 + 9.0) / 2, (4.0 + 0.0) / 2])
    a_t = _normalised([(0.25 + 0.25) / 2, (1.0 + 1.0) / 2])
    expected = sum(abs(a - b) for a, b in zip(a_s, a_t, strict=True)) / 2
    got = factor_distance(torch.tensor(f_s), torch.tensor(f_t), 1.0, "mean", "attention")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_method_loss_is_beta_times_distance_of_translator_and_paraphraser_factors():
    torch.manual_seed(1)
    method = _setup(
        build_method({"name": "ft", "beta": 3.0}), {"s": (4, 3, 4, 4)}, {"t": (4, 6, 4, 4)}
    )
    f_s, f_t = torch.randn(4, 3, 4, 4), torch.relu(torch.randn(4, 6, 4, 4))
    y = torch.tensor([0, 1, 2, 0])
    logits = torch.randn(4, 3)
    terms = method(ModelOutputs(logits, {"s": f_s}), ModelOutputs(logits, {"t": f_t}), y, None)
    assert set(terms) == {"ce", "ft"}
    method.eval()  # the translator's BN: recompute with batch statistics as in train mode
    method.translator.train()
    factor_s = method.translator(f_s)
    factor_t = method.encoder(f_t)
    assert factor_t.shape[1] == 3  # rate 0.5 of 6 channels
    manual = F.normalize(factor_s.flatten(1), dim=1) - F.normalize(factor_t.flatten(1), dim=1)
    assert terms["ft"].item() == pytest.approx(3.0 * manual.abs().mean().item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


# --- 4. one training step per stage ----------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self, width, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x, prefix):
        f = F.relu(self.conv(x))
        return ModelOutputs(self.fc(f.mean((2, 3))), {f"{prefix}stage1": f})


def test_init_stage_trains_the_paraphraser_only_and_main_stage_freezes_it():
    torch.manual_seed(2)
    student = _TinyNet(4)
    teacher = _TinyNet(8).requires_grad_(False).eval()
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    method = _setup(
        build_method({"name": "ft"}), {"s_stage1": (8, 4, 6, 6)}, {"t_stage1": (8, 8, 6, 6)}
    )
    assert method.init_epochs == 30
    paraphraser = list(method.encoder.parameters()) + list(method.decoder.parameters())
    assert {id(p) for p in method.init_parameters(student)} == {id(p) for p in paraphraser}

    def init_loss():
        with torch.no_grad():
            t_out = teacher(x, "t_")
        terms = method.init_forward(student(x, "s_"), t_out, y, torch.arange(8))
        assert set(terms) == {"ft_rec"}
        return terms["ft_rec"]

    not_init = [*student.parameters(), *method.translator.parameters(), *teacher.parameters()]
    check_one_step(init_loss, paraphraser, not_init, lr=0.05)

    # main stage: student and translator learn, the paraphraser stays as it is
    for p in paraphraser:
        p.grad = None
    frozen = [p.detach().clone() for p in paraphraser]
    trainable = list(student.parameters()) + list(method.parameters())

    def main_loss():
        with torch.no_grad():
            t_out = teacher(x, "t_")
        return sum(method(student(x, "s_"), t_out, y, torch.arange(8)).values())

    learn = [*student.parameters(), *method.translator.parameters()]
    check_one_step(main_loss, learn, [*paraphraser, *teacher.parameters()], 0.05, step=trainable)
    assert all(torch.equal(p, q) for p, q in zip(paraphraser, frozen, strict=True))


def test_paraphraser_batchnorm_is_not_updated_in_the_main_stage():
    torch.manual_seed(3)
    method = _setup(
        build_method({"name": "ft", "paraphraser_bn": True}),
        {"s": (4, 2, 3, 3)},
        {"t": (4, 4, 3, 3)},
    )
    stats = {k: v.clone() for k, v in method.encoder.state_dict().items() if "running" in k}
    assert stats
    s = ModelOutputs(torch.zeros(4, 3), {"s": torch.randn(4, 2, 3, 3)})
    t = ModelOutputs(torch.zeros(4, 3), {"t": torch.randn(4, 4, 3, 3)})
    method.train()
    method(s, t, torch.zeros(4, dtype=torch.long), None)
    assert method.encoder.training  # mode restored
    for k, v in stats.items():
        assert torch.equal(method.encoder.state_dict()[k], v)
    method.init_forward(s, t, None, None)  # the init stage does train its statistics
    assert any(not torch.equal(method.encoder.state_dict()[k], v) for k, v in stats.items())


# --- 5. mismatched features -----------------------------------------------------------------


def test_handled_mismatches_channels_sizes_and_vectors():
    torch.manual_seed(4)
    cases = [
        ((4, 5, 8, 8), (4, 12, 4, 4)),  # student map larger
        ((4, 5, 2, 2), (4, 12, 4, 4)),  # student map smaller
        ((4, 6), (4, 10)),  # MLP hidden layers
        ((4, 6), (4, 10, 2, 2)),  # vector against a map
    ]
    for s_shape, t_shape in cases:
        method = _setup(build_method({"name": "ft"}), {"s": s_shape}, {"t": t_shape})
        s = ModelOutputs(torch.zeros(4, 3), {"s": torch.randn(s_shape)})
        t = ModelOutputs(torch.zeros(4, 3), {"t": torch.randn(t_shape)})
        terms = method(s, t, torch.zeros(4, dtype=torch.long), None)
        assert torch.isfinite(terms["ft"])
        assert torch.isfinite(method.init_forward(s, t, None, None)["ft_rec"])


def test_unhandled_features_are_user_errors():
    with pytest.raises(UserError, match=r"'ft'.*'seq' \(4, 7, 16\)"):
        _setup(build_method({"name": "ft"}), {"s": (4, 3, 4, 4)}, {"seq": (4, 7, 16)})
    with pytest.raises(UserError, match="'ft' transfers one feature"):
        _setup(
            build_method({"name": "ft"}),
            {"a": (4, 3, 4, 4), "b": (4, 3, 4, 4)},
            {"t": (4, 3, 4, 4)},
        )
    with pytest.raises(UserError, match="'ft': reduction"):
        build_method({"name": "ft", "reduction": "sum"})
    with pytest.raises(UserError, match="'ft': factor"):
        build_method({"name": "ft", "factor": "pca"})


# --- config ---------------------------------------------------------------------------------


def test_yaml_keys_are_exactly_the_constructor_arguments():
    method = method_from_yaml("ft")
    assert (method.beta, method.rate, method.p, method.init_epochs) == (200.0, 0.5, 1.0, 30)
    assert method.student_features == ("last_stage",)


# --- CRD presets: the benchmark's factor, feature and initialisation lr --------------------


def test_crd_preset_compares_attention_factors_of_the_raw_wrn_output():
    teacher, student = zoo_pair("wrn_40_2", "wrn_16_2")
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    cfg = preset_method_config("crd_cifar100/wrn40_2_wrn16_2", "ft")
    assert cfg["factor"] == "attention" and cfg["init_lr"] == 0.01
    method = build_method(cfg)
    terms = run_on_models(method, student, teacher, x, y)
    assert method.pairs == [("stage3_pre", "stage3_pre")]
    with torch.no_grad():
        factor_s = method.translator(wrn_raw_outputs(student, x)[-1])
        factor_t = method.encoder.eval()(wrn_raw_outputs(teacher, x)[-1])

        # the benchmark's FT: normalize(F.pow(2).mean(1).view(N, -1)), |difference|.mean()
        def vec(f: torch.Tensor) -> torch.Tensor:
            return F.normalize(f.pow(2).mean(1).reshape(f.shape[0], -1))

        expected = 200 * (vec(factor_s) - vec(factor_t)).abs().mean()
    torch.testing.assert_close(terms["ft"].detach(), expected, rtol=1e-5, atol=1e-7)


def test_crd_preset_init_lr_is_the_benchmark_one_per_student():
    for pair, lr in [
        ("r56_r20", 0.01),
        ("r110_r32", 0.01),
        ("r32x4_r8x4", 0.01),
        ("wrn40_2_wrn16_2", 0.01),
        ("vgg13_vgg8", None),  # RepDistiller: the run's lr (0.05) for VGG students
    ]:
        method = build_method(preset_method_config(f"crd_cifar100/{pair}", "ft"))
        assert method.init_lr == lr, pair
    assert build_method({"name": "ft"}).init_lr is None  # hpmkd's default: the recipe's lr


def test_bad_init_lr_is_a_user_error():
    with pytest.raises(UserError, match="method 'ft' needs init_lr > 0 or null"):
        build_method({"name": "ft", "init_lr": 0.0})
