"""Golden tests of attention transfer (Zagoruyko & Komodakis 2017; METHODS.md 1.2)."""

import logging
import math

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.methods import build_method

from .helpers import (
    feature_terms,
    method_from_yaml,
    preset_method_config,
    run_on_models,
    setup_method,
    setup_two_vs_three_stages,
    two_stage_conv_pair,
    wrn_raw_outputs,
    zoo_pair,
)


def _at(method, student: dict, teacher: dict) -> float:
    return feature_terms(method, student, teacher)["at"].item()


def _method(**kwargs):
    return build_method({"name": "at", "beta": 1.0, **kwargs})


def _reference_map(f: list) -> list:
    """Attention map of one sample ([C][H][W] nested lists): mean_c f^2, L2-normalised."""
    c, h, w = len(f), len(f[0]), len(f[0][0])
    a = [sum(f[k][i][j] ** 2 for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in a))
    return [v / norm for v in a]


def _reference_at(fs: torch.Tensor, ft: torch.Tensor) -> float:
    total, count = 0.0, 0
    for s, t in zip(fs.tolist(), ft.tolist(), strict=True):
        for a, b in zip(_reference_map(s), _reference_map(t), strict=True):
            total += (a - b) ** 2
            count += 1
    return total / count


def test_identical_features_give_zero_and_orthogonal_maps_the_maximum():
    f = torch.randn(2, 4, 3, 3)
    method = setup_method(_method(), {"stage1": f}, {"stage1": f})
    assert _at(method, {"stage1": f}, {"stage1": f.clone()}) == pytest.approx(0.0, abs=1e-7)
    # disjoint supports: attention maps e_1 and e_2, so mean((a_s - a_t)^2) = 2 / (H * W)
    s, t = torch.zeros(1, 2, 3, 3), torch.zeros(1, 5, 3, 3)
    s[0, :, 0, 0], t[0, :, 2, 1] = 1.5, -4.0
    method = setup_method(_method(), {"stage1": s}, {"stage1": t})
    assert _at(method, {"stage1": s}, {"stage1": t}) == pytest.approx(2 / 9, rel=1e-6)


def test_invariant_to_positive_scaling_and_channel_count():
    torch.manual_seed(0)
    fs, ft = torch.randn(3, 4, 4, 4), torch.randn(3, 6, 4, 4)
    method = setup_method(_method(), {"stage1": fs}, {"stage1": ft})
    base = _at(method, {"stage1": fs}, {"stage1": ft})
    assert _at(method, {"stage1": 7.5 * fs}, {"stage1": 0.01 * ft}) == pytest.approx(base, rel=1e-5)
    # the same map spread over twice the channels: the teacher's attention does not change
    twice = torch.cat([ft, -ft], dim=1)
    assert _at(method, {"stage1": fs}, {"stage1": twice}) == pytest.approx(base, rel=1e-5)


def test_value_matches_independent_computation():
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(2, 3, 2, 3, generator=g)
    ft = torch.randn(2, 5, 2, 3, generator=g)
    method = setup_method(_method(beta=1000.0), {"stage1": fs}, {"stage1": ft})
    got = _at(method, {"stage1": fs}, {"stage1": ft})
    assert got == pytest.approx(1000.0 * _reference_at(fs, ft), rel=1e-5)


def test_stages_summed_paired_from_the_deepest_and_sizes_pooled():
    method = _method()
    student, teacher = setup_two_vs_three_stages(method)
    # stage1 (4x4) meets teacher stage2 (2x2): the student map is 2x2-average-pooled first;
    # student stage2 (2x2) meets teacher stage3 (4x4): the teacher map is pooled
    s1_pooled = student["stage1"].reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))
    t2_pooled = teacher["stage3"].reshape(2, 8, 2, 2, 2, 2).mean(dim=(3, 5))
    expected = _reference_at(s1_pooled, teacher["stage2"]) + _reference_at(
        student["stage2"], t2_pooled
    )
    assert _at(method, student, teacher) == pytest.approx(expected, rel=1e-5)


def test_flat_features_are_constant_maps_and_warned_about(caplog):
    fs, ft = torch.randn(4, 8), torch.randn(4, 16)
    with caplog.at_level(logging.WARNING, logger="hpmkd"):
        method = setup_method(_method(), {"hidden1": fs}, {"hidden2": ft})
    assert "1x1 spatial extent" in caplog.text
    assert _at(method, {"hidden1": fs}, {"hidden2": ft}) == pytest.approx(0.0, abs=1e-7)


def test_bad_feature_rank_raises_user_error_naming_the_method():
    with pytest.raises(UserError, match=r"'at'.*student 'tokens' \(2, 5, 8\)"):
        setup_method(
            _method(), {"tokens": torch.zeros(2, 5, 8)}, {"stage1": torch.zeros(2, 4, 2, 2)}
        )
    with pytest.raises(UserError, match="bad parameters for method 'at'"):
        build_method({"name": "at", "q": 3})


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    pair = two_stage_conv_pair()
    pair.check_one_step(pair.setup(build_method({"name": "at"})), lr=1e-3)


def test_yaml_keys_are_the_constructor_arguments():
    method = method_from_yaml("at", to_container=False)
    assert method.beta == 1000.0 and method.p == 2.0
    assert method.student_features == ("stages",)


def test_low_precision_features_computed_in_fp32():
    g = torch.Generator().manual_seed(5)
    fs, ft = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    method = setup_method(_method(), {"stage1": fs}, {"stage1": ft})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = feature_terms(method, {"stage1": fs.bfloat16()}, {"stage1": ft.bfloat16()})["at"]
    assert value.dtype == torch.float32
    expected = _reference_at(fs.bfloat16().float(), ft.bfloat16().float())
    assert value.item() == pytest.approx(expected, rel=1e-5)


# --- CRD presets: the benchmark's feature positions ----------------------------------------


def _benchmark_attention(f: torch.Tensor) -> torch.Tensor:
    """The benchmark's AT map: normalize(f.pow(2).mean(1).view(N, -1))."""
    a = f.pow(2).mean(dim=1).reshape(f.shape[0], -1)
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


def test_crd_preset_takes_the_raw_wrn_block_outputs():
    teacher, student = zoo_pair("wrn_40_2", "wrn_16_2")
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    method = build_method(preset_method_config("crd_cifar100/wrn40_2_wrn16_2", "at"))
    terms = run_on_models(method, student, teacher, x, y)
    assert method.pairs == [(f"stage{k}_pre", f"stage{k}_pre") for k in (1, 2, 3)]
    with torch.no_grad():
        raw_s, raw_t = wrn_raw_outputs(student, x)[1:], wrn_raw_outputs(teacher, x)[1:]
        expected = 1000 * sum(
            (_benchmark_attention(s) - _benchmark_attention(t)).pow(2).mean()
            for s, t in zip(raw_s, raw_t, strict=True)
        )
    torch.testing.assert_close(terms["at"].detach(), expected, rtol=1e-5, atol=1e-7)
    # hpmkd's own default (post-BN-ReLU stages) is another loss on the same nets
    default = run_on_models(build_method({"name": "at"}), student, teacher, x, y)["at"]
    assert abs(float(default) - float(expected)) > 0.1 * float(expected)


def test_crd_preset_pairs_vgg_groups_two_to_five():
    teacher, student = zoo_pair("vgg13", "vgg8")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    method = build_method(preset_method_config("crd_cifar100/vgg13_vgg8", "at"))
    run_on_models(method, student, teacher, x, y)
    assert method.pairs == [(f"stage{k}", f"stage{k}") for k in (2, 3, 4, 5)]
