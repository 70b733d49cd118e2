"""Model zoo: parameter counts, shapes, feature taps, checkpoint loading, user errors."""

from functools import cache
from pathlib import Path

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.models import (
    FeatureTap,
    build_model,
    count_parameters,
    list_models,
    load_state_dict_file,
    load_weights,
    model_info,
)

CIFAR = (3, 32, 32)
TEACHERS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "teachers" / "cifar10-resnet-option-a"
)
RESNET56_A_CKPT = TEACHERS / "resnet56-4bfd9763.th"

# Computed once from this implementation, 100 classes, input (3, 32, 32).
EXACT_COUNTS_100 = {
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_40_2": 2_255_156,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_834,
    "shufflenetv2": 1_356_104,
    "resnet50": 23_705_252,
}

# Published figures (CRD benchmark zoo, 100 classes) and the relative tolerance.
PUBLISHED_100 = {
    "resnet20": (0.27e6, 0.05),
    "resnet56": (0.86e6, 0.03),
    "resnet110": (1.7e6, 0.03),
    "resnet8x4": (1.23e6, 0.03),
    "resnet32x4": (7.43e6, 0.03),
    "wrn_40_2": (2.2e6, 0.03),
    "wrn_16_2": (0.70e6, 0.03),
    "wrn_40_1": (0.57e6, 0.03),
    "vgg8": (3.96e6, 0.03),
    "vgg13": (9.46e6, 0.03),
    "mobilenetv2": (0.81e6, 0.03),
    "shufflenetv1": (0.95e6, 0.03),
    "shufflenetv2": (1.36e6, 0.03),
    "resnet50": (23.7e6, 0.03),
}

OPTION_A_COUNTS_10 = {
    "resnet20_a": 269_722,
    "resnet32_a": 464_154,
    "resnet44_a": 658_586,
    "resnet56_a": 853_018,
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input_shape(name: str) -> tuple[int, ...]:
    return CIFAR if model_info(name).needs_image else (64,)


@cache
def _shared_model(name: str) -> torch.nn.Module:
    """One 7-class model per name on CIFAR-shaped (or 64-feature) input, shared by tests that
    neither train it nor leave hooks on it."""
    return build_model(name, num_classes=7, input_shape=_input_shape(name))


def _one_per_family() -> list[str]:
    first: dict[str, str] = {}
    for name in list_models():
        first.setdefault(model_info(name).family, name)
    return sorted(first.values())


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", sorted(EXACT_COUNTS_100))
def test_parameter_count_exact(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name, num_classes=100, input_shape=CIFAR)
    assert count_parameters(model) == EXACT_COUNTS_100[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_100))
def test_parameter_count_near_published(name: str) -> None:
    published, tolerance = PUBLISHED_100[name]
    assert abs(EXACT_COUNTS_100[name] - published) <= tolerance * published


@pytest.mark.parametrize("name", sorted(OPTION_A_COUNTS_10))
def test_option_a_parameter_count(name: str) -> None:
    model = build_model(name, num_classes=10, input_shape=CIFAR)
    assert count_parameters(model) == OPTION_A_COUNTS_10[name]


def test_count_parameters_includes_frozen() -> None:
    model = build_model("mlp_small", num_classes=3, input_shape=(10,))
    for p in model.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == (10 * 64 + 64) + (64 * 32 + 32) + (32 * 3 + 3)


# ---------------------------------------------------------------- building and shapes


@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_logits(name: str) -> None:
    with torch.no_grad():
        assert _shared_model(name)(torch.randn(2, *_input_shape(name))).shape == (2, 7)
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = build_model(name, num_classes=7, input_shape=(1, 28, 28))
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("name", ["vgg8", "resnet20", "wrn_16_1", "mobilenetv2", "shufflenetv2"])
def test_cnns_accept_tiny_images(name: str) -> None:
    model = build_model(name, num_classes=5, input_shape=(3, 8, 8))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_registry_contents_and_info() -> None:
    names = list_models()
    assert names == sorted(names)
    expected = {"resnet20", "resnet56_a", "resnet32x4", "wrn_40_2", "vgg13", "mobilenetv2"}
    assert expected | {"shufflenetv1", "shufflenetv2", "resnet50", "mlp", "mlp_large"} <= set(names)
    info = model_info("mlp_large")
    assert (info.family, info.needs_image) == ("mlp", False)
    assert info.default_params == {"hidden": [256, 512, 256], "dropout": 0.3, "batch_norm": False}
    assert model_info("resnet20").needs_image


def test_params_override_defaults_without_mutating_them() -> None:
    model = build_model("mlp", num_classes=4, input_shape=(12,), hidden=[8], batch_norm=True)
    assert count_parameters(model) == (12 * 8 + 8) + 2 * 8 + (8 * 4 + 4)
    assert model_info("mlp").default_params["hidden"] == [256, 256]
    assert build_model("mobilenetv2", num_classes=10, input_shape=CIFAR, width_mult=1.0)


def test_any_wrn_name_is_parsed() -> None:
    assert "wrn_22_4" not in list_models()
    assert model_info("wrn_22_4").family == "wrn"
    model = build_model("wrn_10_3", num_classes=6, input_shape=(1, 16, 16), dropout=0.3)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 6)
    with pytest.raises(UserError, match=r"wrn_17_2.*6n\+4"):
        build_model("wrn_17_2", num_classes=6, input_shape=CIFAR)


def test_built_model_knows_its_name() -> None:
    assert build_model("resnet8", num_classes=2, input_shape=CIFAR).model_name == "resnet8"


# ---------------------------------------------------------------- user errors


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"unknown model 'resnext20'.*resnet20.*vgg13"):
        build_model("resnext20", num_classes=10, input_shape=CIFAR)


def test_cnn_on_flat_input_is_a_user_error() -> None:
    message = r"model 'resnet20' needs image input \(C, H, W\); the data gives \(64,\)"
    with pytest.raises(UserError, match=message):
        build_model("resnet20", num_classes=10, input_shape=(64,))


def test_unknown_param_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"model 'resnet20' has no parameter 'width'"):
        build_model("resnet20", num_classes=10, input_shape=CIFAR, width=2)
    with pytest.raises(UserError, match=r"model 'mlp' has no parameter 'hiden'.*hidden"):
        build_model("mlp", num_classes=10, input_shape=(5,), hiden=[3])


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mlp", {"hidden": [0]}),
        ("mlp", {"hidden": 64}),
        ("mlp", {"dropout": 1.5}),
        ("mlp", {"batch_norm": "yes"}),
        ("wrn_16_1", {"dropout": -0.1}),
        ("mobilenetv2", {"width_mult": 0.0}),
    ],
)
def test_bad_param_values_are_user_errors(name: str, params: dict) -> None:
    with pytest.raises(UserError, match=f"model '{name}'"):
        build_model(name, num_classes=3, input_shape=_input_shape(name), **params)


@pytest.mark.parametrize("num_classes", [0, 2.5])
def test_bad_num_classes_is_a_user_error(num_classes: object) -> None:
    with pytest.raises(UserError, match="num_classes"):
        build_model("mlp", num_classes=num_classes, input_shape=(5,))


# ---------------------------------------------------------------- feature taps


@pytest.mark.parametrize("name", list_models())
def test_feature_points_give_rectified_and_pre_activation_tensors(name: str) -> None:
    torch.manual_seed(0)
    model = _shared_model(name).eval()
    points = model.feature_points
    assert "pool" in points and all(where in ("input", "output") for _, where in points.values())
    x = torch.randn(2, *_input_shape(name))
    with torch.no_grad():
        reference = model(x)
    with FeatureTap(model, list(points)) as tap:
        model(x)
        feats = tap.features
        assert set(feats) == set(points)
        assert torch.equal(feats.pop("input"), x)  # the model's own input, as given
        assert feats["pool"].shape == (2, model.get_submodule(points["pool"][0]).in_features)
        for feat_name, feat in feats.items():
            assert isinstance(feat, torch.Tensor) and feat.shape[0] == 2
            assert feat.requires_grad, feat_name
            if feat_name.endswith("_pre"):
                post = feats[feat_name.removesuffix("_pre")]
                assert feat.shape == post.shape
                assert feat.min() < 0, feat_name
                assert post.min() >= 0, feat_name
        assert feats["pool"].min() >= 0
        with torch.no_grad():
            assert torch.equal(model(x), reference)


@pytest.mark.parametrize("name", _one_per_family())
def test_gradient_flows_from_tapped_features(name: str) -> None:
    shape = (3, 16, 16) if model_info(name).needs_image else (64,)
    model = build_model(name, num_classes=7, input_shape=shape)
    with FeatureTap(model, list(model.feature_points)) as tap:
        model(torch.randn(2, *shape))
        loss = sum(feat.square().mean() for feat in tap.features.values())
    loss.backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_tap_keeps_latest_forward_and_works_without_grad() -> None:
    model = build_model("resnet8", num_classes=3, input_shape=(3, 8, 8))
    tap = FeatureTap(model, ["stage3", "pool", "stage3"])
    model(torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        model(torch.randn(5, 3, 8, 8))
    assert {k: v.shape[0] for k, v in tap.features.items()} == {"stage3": 5, "pool": 5}
    assert not tap.features["pool"].requires_grad
    tap.remove()
    tap.remove()
    model(torch.randn(1, 3, 8, 8))
    assert tap.features["pool"].shape[0] == 5


def test_tap_registers_hooks_once_and_removes_them() -> None:
    model = build_model("wrn_10_1", num_classes=3, input_shape=(3, 8, 8))

    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    with FeatureTap(model, []) as empty:
        assert hook_count() == 0
        model(torch.randn(2, 3, 8, 8))
        assert empty.features == {}
    with FeatureTap(model, ["stem", "stem_pre", "stage3"]):
        registered = hook_count()
        for _ in range(3):
            model(torch.randn(2, 3, 8, 8))
        assert hook_count() == registered <= 4
    assert hook_count() == 0


def test_unknown_feature_is_a_user_error() -> None:
    model = build_model("mlp_small", num_classes=3, input_shape=(8,))
    with pytest.raises(UserError, match=r"model 'mlp_small' has no feature 'stage1'.*hidden1"):
        FeatureTap(model, ["pool", "stage1"])


# ---------------------------------------------------------------- checkpoints


@pytest.mark.shared_data
def test_option_a_checkpoint_loads_strictly_into_resnet56_a() -> None:
    if not RESNET56_A_CKPT.is_file():
        pytest.skip(f"{RESNET56_A_CKPT} not available")
    state = load_state_dict_file(RESNET56_A_CKPT)
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    model = build_model("resnet56_a", num_classes=10, input_shape=CIFAR)
    load_weights(model, RESNET56_A_CKPT, source=str(RESNET56_A_CKPT))
    assert torch.equal(model.linear.weight, state["linear.weight"])
    assert torch.equal(model.layer3[8].bn2.running_var, state["layer3.8.bn2.running_var"])


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("resnet20_a", r"'layer1\.3\.conv1\.weight' \(unexpected"),
        ("resnet56", r"'layer2\.0\.shortcut\.0\.weight' \(missing from the checkpoint\)"),
    ],
)
def test_option_a_checkpoint_rejected_by_other_models(name: str, key: str) -> None:
    if not RESNET56_A_CKPT.is_file():
        pytest.skip(f"{RESNET56_A_CKPT} not available")
    model = build_model(name, num_classes=10, input_shape=CIFAR)
    message = f"checkpoint .*resnet56-4bfd9763.th does not match model {name}: .*{key}"
    with pytest.raises(UserError, match=message):
        load_weights(model, RESNET56_A_CKPT, source=str(RESNET56_A_CKPT))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 9.0},
        lambda sd: {
            "state_dict": {f"student.{k}": v for k, v in sd.items()},
            "epoch": 3,
            "global_step": 30,
            "pytorch-lightning_version": "2.4.0",
        },
    ],
    ids=["raw", "module-prefix", "lightning-student"],
)
def test_checkpoint_round_trip(tmp_path: Path, wrap) -> None:
    source = build_model("resnet8", num_classes=4, input_shape=(3, 8, 8)).eval()
    path = tmp_path / "weights.ckpt"
    torch.save(wrap(source.state_dict()), path)
    target = build_model("resnet8", num_classes=4, input_shape=(3, 8, 8)).eval()
    load_weights(target, path, source=str(path))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_shape_mismatch_names_both_shapes() -> None:
    state = build_model("resnet8", num_classes=100, input_shape=CIFAR).state_dict()
    model = build_model("resnet8", num_classes=10, input_shape=CIFAR)
    message = r"'linear\.weight' \(checkpoint shape \(100, 64\), model shape \(10, 64\)\)"
    with pytest.raises(UserError, match=f"checkpoint teacher does not match .*{message}"):
        load_weights(model, state, source="teacher")


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "teacher.th"
    model = build_model("resnet8", num_classes=10, input_shape=CIFAR)
    with pytest.raises(UserError, match=f"not found: {path}"):
        load_weights(model, path, source=str(path))


def test_corrupt_checkpoint_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.th"
    path.write_bytes(b"\x00\x01this is not a checkpoint\xff" * 10)
    with pytest.raises(UserError, match=f"{path} is not a readable checkpoint"):
        load_state_dict_file(path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_state_dict_file(path)


def test_checkpoint_without_tensors_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "meta.ckpt"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(UserError, match=f"{path} is not a readable checkpoint"):
        load_state_dict_file(path)


# ---------------------------------------------------------------- CRD benchmark fidelity


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine terms, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _benchmark_vgg_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The benchmark's CIFAR VGG forward written from its description, with the weights of
    ``model``: each group conv-BN-ReLU units; 2x2 max-pool (stride 2) after groups 1, 2, 3; after
    group 4 only for 64x64 inputs; global average pool; linear."""
    import torch.nn.functional as F

    h = x.shape[2]
    for group in range(1, 6):
        for unit in model.get_submodule(f"stage{group}"):
            bn = unit.bn
            x = F.conv2d(x, unit.conv.weight, unit.conv.bias, padding=1)
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
            x = F.relu(x)
        if group <= 3 or (group == 4 and h == 64):
            x = F.max_pool2d(x, 2, 2)
    x = x.mean(dim=(2, 3))
    return F.linear(x, model.classifier.weight, model.classifier.bias)


@pytest.mark.parametrize("name", ["vgg8", "vgg13"])
@pytest.mark.parametrize("size", [32, 64])
def test_vgg_default_is_the_benchmark_vgg(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, input_shape=(3, size, size)).eval()
    _randomise_batchnorm(model, 1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad(), FeatureTap(model, ["stage4", "stage5"]) as tap:
        logits = model(x)
        assert tap.features["stage5"].shape[-1] == 4  # benchmark: 4x4 at 32 and at 64
        expected = _benchmark_vgg_logits(model, x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_vgg_pool4_true_keeps_the_old_forward_on_the_same_weights() -> None:
    torch.manual_seed(0)
    new = build_model("vgg8", num_classes=10, input_shape=CIFAR).eval()
    old = build_model("vgg8", num_classes=10, input_shape=CIFAR, pool4=True).eval()
    _randomise_batchnorm(new, 2)
    load_weights(old, new.state_dict(), source="vgg8 (pool4 auto)")  # same keys: loads strictly
    x = torch.randn(2, *CIFAR)
    with torch.no_grad(), FeatureTap(old, ["stage4", "stage5"]) as t_old:
        with FeatureTap(new, ["stage4", "stage5"]) as t_new:
            old_logits, new_logits = old(x), new(x)
            torch.testing.assert_close(t_old.features["stage4"], t_new.features["stage4"])
            assert t_old.features["stage5"].shape[-1] == 2
            assert t_new.features["stage5"].shape[-1] == 4
    assert not torch.allclose(old_logits, new_logits, atol=1e-3)


def test_vgg_bad_pool4_is_a_user_error() -> None:
    with pytest.raises(UserError, match="model 'vgg8' needs pool4 = auto, true or false"):
        build_model("vgg8", num_classes=3, input_shape=CIFAR, pool4="sometimes")


def test_wrn_benchmark_features_are_the_raw_block_outputs_and_their_next_bn() -> None:
    from hpmkd.models import resolve_features

    torch.manual_seed(0)
    model = build_model("wrn_16_2", num_classes=10, input_shape=CIFAR).eval()
    _randomise_batchnorm(model, 3)
    feat = resolve_features(model, ["feat[:]"])
    preact = resolve_features(model, ["preact[1:-1]"])
    x = torch.randn(2, *CIFAR)
    with torch.no_grad(), FeatureTap(model, [*feat, *preact]) as tap:
        model(x)
        # the benchmark's WRN feature list, computed from the modules by hand
        f0 = model.conv1(x)
        f1 = model.layer1(f0)
        f2 = model.layer2(f1)
        f3 = model.layer3(f2)
        pooled = torch.relu(model.bn(f3)).mean(dim=(2, 3))
        expected = [f0, f1, f2, f3, pooled]
        for name, value in zip(feat, expected, strict=True):
            torch.testing.assert_close(tap.features[name], value)
        bns = [model.layer2[0].bn1(f1), model.layer3[0].bn1(f2), model.bn(f3)]
        for name, value in zip(preact, bns, strict=True):
            torch.testing.assert_close(tap.features[name], value)
            assert value.min() < 0  # before the ReLU
    assert feat[1:-1] == ("stage1_pre", "stage2_pre", "stage3_pre")


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("resnet20", "feat[1:-1]", ("stage1", "stage2", "stage3")),
        ("resnet8x4", "preact[1:-1]", ("stage1_pre", "stage2_pre", "stage3_pre")),
        ("resnet56", "feat[:-1]", ("stem", "stage1", "stage2", "stage3")),
        ("wrn_40_2", "feat[-2]", ("stage3_pre",)),
        ("wrn_16_2", "feat[2]", ("stage2_pre",)),
        ("vgg13", "feat[1:-1]", ("stage2", "stage3", "stage4", "stage5")),
        ("vgg8", "feat[2]", ("stage3",)),
        ("vgg8", "preact[1:-1]", ("stage2_pre", "stage3_pre", "stage4_pre", "stage5_pre")),
        ("vgg8", "feat[:-1]", ("stage1", "stage2", "stage3", "stage4", "stage5")),
    ],
)
def test_benchmark_feature_aliases(name: str, spec: str, expected: tuple[str, ...]) -> None:
    from hpmkd.models import resolve_features

    model = build_model(name, num_classes=10, input_shape=CIFAR)
    assert resolve_features(model, [spec]) == expected


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("mobilenetv2", "feat[1:-1]", "declares no benchmark feature list"),
        ("resnet20", "feat[7]", r"'feat\[7\]' is not an entry of its 5 features"),
        ("resnet20", "feat[3:1]", r"has no features for 'feat\[3:1\]'"),
    ],
)
def test_bad_benchmark_alias_is_a_user_error(name: str, spec: str, message: str) -> None:
    from hpmkd.models import resolve_features

    model = build_model(name, num_classes=10, input_shape=_input_shape(name))
    with pytest.raises(UserError, match=message):
        resolve_features(model, [spec])
