"""The five CRD CIFAR-100 presets compose to the benchmark's code around the losses
(RepDistiller, METHODS.md section 5): VGG pooling, feature positions, FT factor and
initialisation lr, AB connector, CRD sampling; ``fidelity=none`` gives hpmkd's defaults back."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hpmkd import config
from hpmkd.methods import build_method
from hpmkd.models import build_model, resolve_features

PAIRS = ("r56_r20", "r110_r32", "r32x4_r8x4", "wrn40_2_wrn16_2", "vgg13_vgg8")
FT_INIT_LR = {"r56_r20": 0.01, "r110_r32": 0.01, "r32x4_r8x4": 0.01, "wrn40_2_wrn16_2": 0.01}

# the features RepDistiller's train_student.py hands each loss, per model family
RESNET = {
    "at": ["stage1", "stage2", "stage3"],
    "fitnet": ["stage2"],
    "sp": ["stage3"],
    "ft": ["stage3"],
    "fsp": ["stem", "stage1", "stage2", "stage3"],
    "ab": ["stage1_pre", "stage2_pre", "stage3_pre"],
}
WRN = {
    "at": ["stage1_pre", "stage2_pre", "stage3_pre"],
    "fitnet": ["stage2_pre"],
    "sp": ["stage3_pre"],
    "ft": ["stage3_pre"],
    "fsp": ["stem_pre", "stage1_pre", "stage2_pre", "stage3_pre"],
    "ab": ["stage1_bn", "stage2_bn", "stage3_bn"],
}
VGG = {
    "at": ["stage2", "stage3", "stage4", "stage5"],
    "fitnet": ["stage3"],
    "sp": ["stage5"],
    "ft": ["stage5"],
    "fsp": ["stage1", "stage2", "stage3", "stage4", "stage5"],
    "ab": ["stage2_pre", "stage3_pre", "stage4_pre", "stage5_pre"],
}
for table in (RESNET, WRN, VGG):
    table["nst"] = table["vid"] = table["at"]
EXPECTED = {"wrn40_2_wrn16_2": WRN, "vgg13_vgg8": VGG}


def _compose(*overrides: str):
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _method(pair: str, method: str, *extra: str) -> dict:
    cfg = _compose(f"experiment=crd_cifar100/{pair}", f"method={method}", *extra)
    return OmegaConf.to_container(cfg.method, resolve=True)


def _features(cfg: dict, role: str) -> list[str]:
    spec = cfg.get(f"{role}_features", cfg.get(f"{role}_feature"))
    return [spec] if isinstance(spec, str) else list(spec)


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", ["at", "nst", "vid", "fitnet", "sp", "ft", "fsp", "ab"])
def test_feature_positions_are_the_benchmarks(pair: str, method: str) -> None:
    cfg = _compose(f"experiment=crd_cifar100/{pair}", f"method={method}")
    spec = OmegaConf.to_container(cfg.method, resolve=True)
    expected = EXPECTED.get(pair, RESNET)[method]
    for role in ("student", "teacher"):
        model = build_model(
            cfg[role].arch, num_classes=100, input_shape=(3, 32, 32), **cfg[role].params
        )
        assert list(resolve_features(model, _features(spec, role))) == expected, role


@pytest.mark.parametrize("pair", PAIRS)
def test_methods_around_the_losses_are_the_benchmarks(pair: str) -> None:
    ft = build_method(_method(pair, "ft"))
    assert ft.factor == "attention"
    assert ft.init_lr == FT_INIT_LR.get(pair)  # VGG students: the recipe's lr, 0.05
    assert build_method(_method(pair, "ab")).connector == "identity_if_same"
    assert build_method(_method(pair, "crd")).negatives_replacement is False


def test_vgg_pair_runs_the_fifth_group_at_4x4() -> None:
    cfg = _compose("experiment=crd_cifar100/vgg13_vgg8")
    for role in ("teacher", "student"):
        assert cfg[role].params.pool4 == "auto"
        model = build_model(
            cfg[role].arch, num_classes=100, input_shape=(3, 32, 32), **cfg[role].params
        )
        assert isinstance(model.maxpool4, torch.nn.Identity)
        assert isinstance(model.maxpool3, torch.nn.MaxPool2d)


def test_fidelity_none_restores_hpmkd_defaults() -> None:
    none = ("fidelity=none",)
    assert _method("wrn40_2_wrn16_2", "at", *none)["student_features"] == ["stages"]
    assert _method("wrn40_2_wrn16_2", "fitnet", *none)["student_feature"] == "middle_stage"
    assert _method("vgg13_vgg8", "fsp", *none)["student_features"] == ["stages"]
    ft = _method("r56_r20", "ft", *none)
    assert ft["factor"] == "flatten" and ft["init_lr"] is None
    assert ft["student_features"] == ["last_stage"]
    assert _method("r56_r20", "ab", *none)["connector"] == "conv_bn"
    assert _method("r56_r20", "crd", *none)["negatives_replacement"] is True


def test_other_presets_keep_hpmkd_defaults() -> None:
    cfg = _compose("experiment=smskd_cifar100")
    assert "fidelity" not in cfg
    plain = _compose("+strategy=kd", "method=ft")
    assert plain.method.factor == "flatten" and plain.method.init_lr is None
