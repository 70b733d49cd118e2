"""Golden tests of neuron selectivity transfer (Huang & Wang 2017; METHODS.md 1.2)."""

import logging
import math

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.methods import build_method

from .helpers import (
    feature_terms,
    method_from_yaml,
    setup_method,
    setup_two_vs_three_stages,
    two_stage_conv_pair,
)


def _nst(method, student: dict, teacher: dict) -> float:
    return feature_terms(method, student, teacher)["nst"].item()


def _method(**kwargs):
    return build_method({"name": "nst", "beta": 1.0, **kwargs})


def _reference_mmd2(fs: torch.Tensor, ft: torch.Tensor, d: float = 2.0, c: float = 0.0) -> float:
    """Batch mean of MMD^2 between the L2-normalised channel patterns, in plain floats."""

    def channels(sample: list) -> list:
        rows = [[v for row in ch for v in row] for ch in sample]
        return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]

    def mean_k(a: list, b: list) -> float:
        vals = [(sum(x * y for x, y in zip(p, q, strict=True)) + c) ** d for p in a for q in b]
        return sum(vals) / len(vals)

    per_sample = []
    for s, t in zip(fs.tolist(), ft.tolist(), strict=True):
        s_ch, t_ch = channels(s), channels(t)
        per_sample.append(mean_k(t_ch, t_ch) + mean_k(s_ch, s_ch) - 2 * mean_k(s_ch, t_ch))
    return sum(per_sample) / len(per_sample)


def test_identical_features_give_zero_and_single_pattern_sets_a_closed_form():
    f = torch.randn(2, 4, 3, 3)
    method = setup_method(_method(), {"stage1": f}, {"stage1": f})
    assert _nst(method, {"stage1": f}, {"stage1": f.clone()}) == pytest.approx(0.0, abs=1e-6)
    # every student channel has pattern u, every teacher channel pattern v, u.v = cos(theta):
    # MMD^2 = k(v, v) + k(u, u) - 2 k(u, v) = 2 - 2 cos^2(theta) with k = (x.y)^2
    u, v = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.6, 0.8, 0.0, 0.0])
    s = u.view(1, 1, 2, 2).repeat(1, 3, 1, 1) * torch.tensor([1.0, 2.0, 5.0]).view(1, 3, 1, 1)
    t = v.view(1, 1, 2, 2).repeat(1, 5, 1, 1)
    method = setup_method(_method(), {"stage1": s}, {"stage1": t})
    assert _nst(method, {"stage1": s}, {"stage1": t}) == pytest.approx(2 - 2 * 0.36, rel=1e-6)


def test_invariant_to_positive_channel_scaling_and_channel_order():
    torch.manual_seed(0)
    fs, ft = torch.randn(3, 4, 4, 4), torch.randn(3, 6, 4, 4)
    method = setup_method(_method(), {"stage1": fs}, {"stage1": ft})
    base = _nst(method, {"stage1": fs}, {"stage1": ft})
    scale = torch.tensor([0.1, 3.0, 7.0, 1.5]).view(1, 4, 1, 1)
    assert _nst(method, {"stage1": fs * scale}, {"stage1": 20 * ft}) == pytest.approx(
        base, rel=1e-5
    )
    # MMD compares sets of channels: their order does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert _nst(method, {"stage1": fs[:, perm]}, {"stage1": ft}) == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize(("d", "c"), [(2.0, 0.0), (3.0, 1.0)])
def test_value_matches_independent_computation(d, c):
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(2, 3, 2, 3, generator=g)
    ft = torch.randn(2, 5, 2, 3, generator=g)
    method = setup_method(_method(beta=50.0, degree=d, coef0=c), {"stage1": fs}, {"stage1": ft})
    got = _nst(method, {"stage1": fs}, {"stage1": ft})
    assert got == pytest.approx(50.0 * _reference_mmd2(fs, ft, d, c), rel=1e-5)


def test_stages_summed_paired_from_the_deepest_and_sizes_pooled():
    method = _method()
    student, teacher = setup_two_vs_three_stages(method)
    s1_pooled = student["stage1"].reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))
    t2_pooled = teacher["stage3"].reshape(2, 8, 2, 2, 2, 2).mean(dim=(3, 5))
    expected = _reference_mmd2(s1_pooled, teacher["stage2"]) + _reference_mmd2(
        student["stage2"], t2_pooled
    )
    assert _nst(method, student, teacher) == pytest.approx(expected, rel=1e-5)


def test_flat_features_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="hpmkd"):
        setup_method(_method(), {"hidden1": torch.randn(4, 8)}, {"hidden2": torch.randn(4, 16)})
    assert "1x1 spatial extent" in caplog.text


def test_bad_feature_rank_raises_user_error_naming_the_method():
    with pytest.raises(UserError, match=r"'nst'.*teacher 'tokens' \(2, 5, 8\)"):
        setup_method(
            _method(), {"stage1": torch.zeros(2, 4, 2, 2)}, {"tokens": torch.zeros(2, 5, 8)}
        )


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    pair = two_stage_conv_pair()
    pair.check_one_step(pair.setup(build_method({"name": "nst"})), lr=1e-3)


def test_yaml_keys_are_the_constructor_arguments():
    method = method_from_yaml("nst", to_container=False)
    assert (method.beta, method.degree, method.coef0) == (50.0, 2.0, 0.0)
    assert method.teacher_features == ("stages",)


def test_kernel_computed_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(5)
    fs, ft = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    method = setup_method(_method(), {"stage1": fs}, {"stage1": ft})
    exact = _nst(method, {"stage1": fs}, {"stage1": ft})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = feature_terms(method, {"stage1": fs.bfloat16()}, {"stage1": ft.bfloat16()})["nst"]
    assert value.dtype == torch.float32
    expected = _nst(method, {"stage1": fs.bfloat16().float()}, {"stage1": ft.bfloat16().float()})
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert value.item() == pytest.approx(exact, rel=2e-2)
