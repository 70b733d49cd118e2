"""Foreign teachers and students: any callable by `_target_`, timm, Hugging Face; their feature
points; checkpoints from other projects; pretrained weights from a pre-seeded cache. No network:
weights are random or saved by the test itself."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from hpmkd.errors import UserError
from hpmkd.model_nodes import canonical_model_nodes
from hpmkd.models import FeatureTap, build_model, count_parameters, load_weights, resolve_features
from hpmkd.models.family import family_members
from hpmkd.models.foreign import pretrained_identity

SHAPE = {"num_classes": 2, "input_shape": (3, 32, 32)}
USER_CLASS = "tests.foreign_model_fixture.TinyConvNet"


def _vit_dir(root: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8, num_labels=2,
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(root / "vit")
    return root / "vit"


def _shapes(model: torch.nn.Module, specs: list[str]) -> dict[str, tuple[int, ...]]:
    names = resolve_features(model, specs)
    with FeatureTap(model, names) as tap:
        model(torch.zeros(2, 3, 32, 32))
        return {name: tuple(tap.features[name].shape) for name in names}


# --- config nodes -------------------------------------------------------------------------------


def test_target_node_becomes_arch_and_params_without_the_zoo_defaults() -> None:
    cfg = OmegaConf.create({
        "student": {"arch": "mlp_small", "params": {"hidden": [64, 32], "dropout": 0.0,
                    "batch_norm": False}, "target_ratio": None,
                    "_target_": "torchvision.models.resnet18", "num_classes": 2,
                    "pretrained": True, "features": {"pool": "fc:input"}},
        "teacher": {"arch": "timm:resnet18", "params": {"hidden": [256, 512, 256],
                    "dropout": 0.3, "batch_norm": False}, "checkpoint": None},
        "teachers": [{"_target_": USER_CLASS, "width": 4}],
    })  # fmt: skip
    canonical_model_nodes(cfg, {"teacher": "mlp_large"})
    assert cfg.student.arch == "torchvision.models.resnet18" and "_target_" not in cfg.student
    assert OmegaConf.to_container(cfg.student.params) == {
        "num_classes": 2,
        "pretrained": True,
        "features": {"pool": "fc:input"},
    }
    assert OmegaConf.to_container(cfg.teacher.params) == {}
    assert cfg.teachers[0].arch == USER_CLASS and cfg.teachers[0].params.width == 4


def test_zoo_node_refuses_pretrained() -> None:
    cfg = OmegaConf.create({"student": {"arch": "resnet8", "params": {}, "pretrained": True}})
    with pytest.raises(UserError, match="student.pretrained applies to models from outside"):
        canonical_model_nodes(cfg)


# --- building -----------------------------------------------------------------------------------


def test_torchvision_model_gets_the_data_classes_and_feature_points() -> None:
    model = build_model("torchvision.models.resnet18", **SHAPE)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    points = model.feature_points
    assert [points[f"stage{i}"][0] for i in range(1, 5)] == ["layer1", "layer2", "layer3", "layer4"]
    assert points["stem"] == ("relu", "output") and points["pool"] == ("fc", "input")
    assert _shapes(model, ["last_stage", "pool"]) == {"stage4": (2, 512, 1, 1), "pool": (2, 512)}


def test_mobilenet_stages_skip_squeeze_excitation() -> None:
    model = build_model("torchvision.models.mobilenet_v3_small", **SHAPE)
    stages = [model.feature_points[n][0] for n in resolve_features(model, ["stages"])]
    assert stages == ["features.1", "features.3", "features.8", "features"]
    assert model.feature_points["pool"] == ("classifier.0", "input")


def test_user_class_and_feature_overrides() -> None:
    model = build_model(USER_CLASS, **SHAPE, width=4, features={"stage1": "block2", "x": "pool"})
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0
    assert resolve_features(model, ["stages"]) == ("stage1",)
    assert _shapes(model, ["stage1", "x"]) == {"stage1": (2, 8, 16, 16), "x": (2, 8, 1, 1)}
    with pytest.raises(UserError, match="has no module 'nowhere'.*top-level modules: block1"):
        build_model(USER_CLASS, **SHAPE, features={"pool": "nowhere"})
    with pytest.raises(UserError, match="has no argument 'depth'; valid: num_classes, width"):
        build_model(USER_CLASS, **SHAPE, depth=3)


def test_head_that_cannot_match_the_data_is_one_line() -> None:
    with pytest.raises(UserError, match="gives 5 logits per sample but the data has 2 classes"):
        build_model("tests.foreign_model_fixture.fixed_head", **SHAPE)
    with pytest.raises(UserError, match="no callable 'nothing'"):
        build_model("tests.foreign_model_fixture.nothing", **SHAPE)
    with pytest.raises(UserError, match="unknown prefix 'tf:'"):
        build_model("tf:resnet", **SHAPE)


def test_foreign_family_cannot_be_scaled() -> None:
    with pytest.raises(UserError, match="its family cannot be scaled"):
        family_members("torchvision.models.resnet18", {}, **SHAPE)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("timm", "transformers"):  # None in sys.modules: the import fails
        monkeypatch.setitem(sys.modules, module, None)
    for arch, extra in (("timm:resnet18", "timm"), ("hf:some/model", "hf")):
        with pytest.raises(UserError, match=rf'pip install "hpmkd\[{extra}\]"'):
            build_model(arch, **SHAPE)


def test_timm_model_uses_feature_info() -> None:
    pytest.importorskip("timm")
    model = build_model("timm:resnet18", **SHAPE)
    assert model.feature_points["stem"] == ("act1", "output")
    assert [model.feature_points[n][0] for n in resolve_features(model, ["stages"])] == [
        "layer1", "layer2", "layer3", "layer4"
    ]  # fmt: skip
    with pytest.raises(UserError, match="unknown timm model 'no_such_net'"):
        build_model("timm:no_such_net", **SHAPE)


def test_hf_vit_from_a_directory_gives_logits_and_token_maps(tmp_path: Path) -> None:
    directory = _vit_dir(tmp_path)
    model = build_model(f"hf:{directory}", **SHAPE)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    from safetensors.torch import load_file

    saved = load_file(str(directory / "model.safetensors"))["vit.embeddings.cls_token"]
    pretrained = build_model(f"hf:{directory}", **SHAPE, pretrained=True)
    assert torch.equal(pretrained.hf.vit.embeddings.cls_token, saved)
    assert not torch.equal(model.hf.vit.embeddings.cls_token, saved)
    # 16 patch tokens and the class token: the patches as a 4x4 map
    assert _shapes(model, ["stages", "pool"]) == {
        "stage1": (2, 32, 4, 4), "stage2": (2, 32, 4, 4), "pool": (2, 32)
    }  # fmt: skip


# --- pretrained weights -------------------------------------------------------------------------


def test_pretrained_from_a_seeded_cache_and_one_line_when_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="'torchvision.models.resnet18': pretrained weights are"):
        build_model("torchvision.models.resnet18", **SHAPE, pretrained=True)
    saved = resnet18(num_classes=1000).state_dict()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(ResNet18_Weights.DEFAULT.url).name
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, cached)
    model = build_model("torchvision.models.resnet18", **SHAPE, pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
    assert model.fc.out_features == 2  # the ImageNet head replaced for the data's classes
    identity = pretrained_identity("torchvision.models.resnet18", {"pretrained": True})
    assert identity["pretrained_weights"]["library"] == "torchvision"
    assert pretrained_identity("torchvision.models.resnet18", {}) == {}


# --- checkpoints from elsewhere -----------------------------------------------------------------


def test_checkpoints_of_other_projects(tmp_path: Path) -> None:
    source = build_model(USER_CLASS, **SHAPE)
    state = source.state_dict()
    lightning = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 3}, lightning)
    mixed = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {**{f"net.{k}": v for k, v in state.items()},
                               "ema.head.bias": state["head.bias"]}}, mixed)  # fmt: skip
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    for path, prefix in ((lightning, None), (mixed, "net."), (plain, None)):
        model = build_model(USER_CLASS, **SHAPE)
        load_weights(model, path, source=str(path), prefix=prefix)
        assert torch.equal(model.head.weight, state["head.weight"]), path
    with pytest.raises(
        UserError, match=r"first mismatching keys 'block1\.0\.weight'.*checkpoint_pre"
    ):
        load_weights(build_model(USER_CLASS, **SHAPE), mixed, source="mixed")
    with pytest.raises(UserError, match="has no key starting with 'teacher.'"):
        load_weights(build_model(USER_CLASS, **SHAPE), mixed, source="m", prefix="teacher.")


def test_safetensors_checkpoint(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    source = build_model(USER_CLASS, **SHAPE)
    path = tmp_path / "weights.safetensors"
    safetensors.save_file({f"model.{k}": v for k, v in source.state_dict().items()}, str(path))
    model = build_model(USER_CLASS, **SHAPE)
    load_weights(model, path, source=str(path))
    assert torch.equal(model.head.weight, source.head.weight)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        load_weights(model, tmp_path / "bad.safetensors", source="bad")


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 32x32 RGB images (the second darker in its top half)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 6)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                if label == "b":
                    pixels[:16] //= 4
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


def _train(run_cli, images: Path, store: Path, method: str, *models: str):
    run = run_cli(
        "train", "+strategy=kd", f"method={method}", "data=image_folder", f"data.root={images}",
        "recipe=smoke", "recipe.epochs=1", "trainer.enable_progress_bar=false",
        f"store.root={store}", *models,
    )  # fmt: skip
    assert run.code == 0, run.err
    (results,) = run.results()
    return results


@pytest.mark.parametrize("method", ["kd", "fitnet"])
def test_torchvision_teacher_to_torchvision_student(run_cli, images, store, method) -> None:
    results = _train(
        run_cli, images, store, method,
        "+teacher._target_=torchvision.models.resnet18",
        "+student._target_=torchvision.models.mobilenet_v3_small",
    )  # fmt: skip
    assert results["student"]["arch"] == "torchvision.models.mobilenet_v3_small"
    assert results["teacher"]["params"] == count_parameters(
        build_model("torchvision.models.resnet18", **SHAPE)
    )
    assert results["compression_ratio"] == pytest.approx(
        results["teacher"]["params"] / results["student"]["params"]
    )
    # the second run reuses the teacher the first one trained and stored
    if method == "fitnet":
        assert results["teacher"]["extra"]["source"] == "store"


@pytest.mark.parametrize("method", ["kd", "at"])
def test_timm_teacher_to_torchvision_student(run_cli, images, store, method) -> None:
    pytest.importorskip("timm")
    results = _train(
        run_cli, images, store, method,
        "teacher.arch=timm:resnet18", "+student._target_=torchvision.models.mobilenet_v3_small",
    )  # fmt: skip
    assert results["teacher"]["arch"] == "timm:resnet18" and results["test_acc"] is not None


@pytest.mark.parametrize("method", ["kd", "fitnet"])
def test_hf_vit_teacher_to_timm_student(run_cli, images, store, tmp_path, method) -> None:
    pytest.importorskip("timm")
    results = _train(
        run_cli, images, store, method,
        f"teacher.arch=hf:{_vit_dir(tmp_path)}", "student.arch=timm:resnet18",
    )  # fmt: skip
    assert results["student"]["arch"] == "timm:resnet18" and results["test_acc"] is not None


@pytest.mark.parametrize("method", ["kd", "at"])
def test_user_class_student_with_its_arguments(run_cli, images, store, method) -> None:
    results = _train(
        run_cli, images, store, method,
        "+teacher._target_=torchvision.models.resnet18",
        f"+student._target_={USER_CLASS}", "+student.width=4",
    )  # fmt: skip
    assert results["student"]["params"] == count_parameters(
        build_model(USER_CLASS, **SHAPE, width=4)
    )


def test_foreign_teacher_checkpoint_with_a_prefix(run_cli, images, store, tmp_path) -> None:
    teacher = build_model(USER_CLASS, **SHAPE)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in teacher.state_dict().items()}}, path)
    results = _train(
        run_cli, images, store, "kd",
        f"+teacher._target_={USER_CLASS}", f"teacher.checkpoint={path}",
        "+teacher.checkpoint_prefix=net.", f"+student._target_={USER_CLASS}", "+student.width=4",
    )  # fmt: skip
    assert results["teacher"]["extra"] == {"source": "checkpoint", "checkpoint": str(path)}


def test_foreign_cli_errors(run_cli, images, store) -> None:
    common = ("train", "data=image_folder", f"data.root={images}", f"store.root={store}")
    run = run_cli(*common, "+student._target_=torchvision.models.resnet18", "+student.depth=3")
    assert run.code == 2 and "unexpected keyword argument 'depth'" in run.err
    run = run_cli(*common, "+student._target_=torchvision.models.resnet18",
                  "student.target_ratio=4")  # fmt: skip
    assert run.code == 2 and "cannot be scaled" in run.err
    run = run_cli(*common, "+student.typo=3")  # a zoo node still refuses unknown keys
    assert run.code == 2 and "unknown key 'student.typo'" in run.err


def test_models_command_counts_foreign_models(run_cli) -> None:
    run = run_cli("models", "--classes", "2", "torchvision.models.resnet18", "resnet8")
    count = count_parameters(build_model("torchvision.models.resnet18", **SHAPE))
    assert run.code == 0 and f"{count:,}" in run.out and "resnet8" in run.out
    assert "resnet20" not in run.out


def test_own_keys_load_even_when_they_share_a_wrapper_prefix(tmp_path: Path) -> None:
    model = torch.nn.Sequential()
    model.model = torch.nn.Linear(3, 2)  # every key starts with `model.`, as the model's own
    path = tmp_path / "own.pt"
    torch.save(model.state_dict(), path)
    fresh = torch.nn.Sequential()
    fresh.model = torch.nn.Linear(3, 2)
    load_weights(fresh, path, source=str(path))
    assert torch.equal(fresh.model.weight, model.model.weight)
