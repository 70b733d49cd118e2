"""experiment=imagenet/* and tiny_imagenet/* compose, with every method row of
docs/reproduce.md, to the recipe and models they state; their students build."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hpmkd import config
from hpmkd.model_nodes import canonical_model_nodes
from hpmkd.models import build_model

PRESETS = sorted(
    f"{path.parent.name}/{path.stem}"
    for group in ("imagenet", "tiny_imagenet")
    for path in (config.config_dir() / "experiment" / group).glob("*.yaml")
)
# the rows of docs/reproduce.md, "ImageNet and Tiny-ImageNet" (after data.root)
KD_IMAGENET = "method=kd method.temperature=1 method.ce_weight=0.5 method.kd_weight=0.5"
DKD_IMAGENET = "method=dkd method.temperature=1 method.warmup_epochs=1"
ROWS = {
    "imagenet/r34_r18": [KD_IMAGENET, "method=crd", DKD_IMAGENET],
    "imagenet/r50_mbv1": [KD_IMAGENET, "method=crd", DKD_IMAGENET],
    "tiny_imagenet/r56_r20": ["method=kd", "method=fitnet"],
    "tiny_imagenet/smskd_r56_r20": [],
}


def _compose(*overrides: str):
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    canonical_model_nodes(cfg, dict(cfg.hydra.runtime.choices))
    nodes = ("data", "teacher", "student", "recipe", "method", "strategy")
    return {n: OmegaConf.to_container(cfg[n], resolve=True) for n in nodes if n in cfg}


def test_every_preset_has_rows() -> None:
    assert PRESETS == sorted(ROWS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_each_row(preset: str, tmp_path: Path) -> None:
    for row in ["", *ROWS[preset]]:
        cfg = _compose(f"experiment={preset}", f"data.root={tmp_path}", *row.split())
        assert cfg["data"]["root"] == str(tmp_path)
        for override in row.split():
            key, _, value = override.partition("=")
            group, _, field = key.partition(".")
            assert str(cfg[group][field or "name"]) == value, override


def test_imagenet_recipe_and_models() -> None:
    small = _compose("experiment=imagenet/r34_r18", "method=dkd")
    assert small["data"]["name"] == "imagenet"
    recipe = small["recipe"]
    assert (recipe["epochs"], recipe["batch_size"]) == (100, 256)
    assert recipe["optimizer"]["_target_"] == "torch.optim.SGD"
    assert (recipe["optimizer"]["lr"], recipe["optimizer"]["weight_decay"]) == (0.1, 1e-4)
    assert recipe["optimizer"]["momentum"] == 0.9
    assert recipe["scheduler"]["milestones"] == [30, 60, 90]
    assert recipe["scheduler"]["gamma"] == 0.1
    assert small["teacher"]["arch"] == "torchvision.models.resnet34"
    assert small["teacher"]["params"] == {"pretrained": True, "weights": "IMAGENET1K_V1"}
    assert (small["student"]["arch"], small["student"]["params"]) == (
        "torchvision.models.resnet18",
        {},
    )
    assert small["method"]["beta"] == 0.5

    mobile = _compose("experiment=imagenet/r50_mbv1", "method=dkd")
    assert mobile["teacher"]["arch"] == "torchvision.models.resnet50"
    assert mobile["teacher"]["params"] == {"pretrained": True, "weights": "IMAGENET1K_V1"}
    assert (mobile["student"]["arch"], mobile["student"]["params"]) == ("timm:mobilenetv1_100", {})
    assert mobile["recipe"] == recipe and mobile["method"]["beta"] == 2.0


def test_the_mobilenet_student_is_the_classic_one() -> None:
    pytest.importorskip("timm")
    model = build_model("timm:mobilenetv1_100", num_classes=1000, input_shape=(3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == 4_231_976  # MobileNet (1.0): 4.2 M


def test_tiny_imagenet_smskd_keeps_what_methods_md_states() -> None:
    cfg = _compose("experiment=tiny_imagenet/smskd_r56_r20")
    assert cfg["data"]["name"] == "tiny_imagenet" and cfg["data"]["val_fraction"] == 0.0
    assert cfg["strategy"]["name"] == "smskd"
    assert cfg["strategy"]["methods"] == ["fitnet", "kd"]
    assert cfg["strategy"]["transitions"] == [150]
    assert cfg["recipe"]["scheduler"]["milestones"][0] == 150  # the first LR decay
    assert (cfg["teacher"]["arch"], cfg["student"]["arch"]) == ("resnet56", "resnet20")
    baseline = _compose("experiment=tiny_imagenet/r56_r20", "method=kd")
    for key in ("data", "teacher", "student", "recipe"):
        assert baseline[key] == cfg[key], key
