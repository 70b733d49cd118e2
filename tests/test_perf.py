"""conf/perf: switches resolved per device, channels_last, fp32 losses under bf16 autocast,
device-resident data, compiled forwards, and the record in results.json."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import Tensor, nn

from hpmkd import config
from hpmkd.data.augment import BatchTransform
from hpmkd.data.loader import SplitsDataModule
from hpmkd.data.splits import DataSplits
from hpmkd.engine import perf
from hpmkd.engine.context import RunContext
from hpmkd.engine.module import DistillModule, FrozenTeacher
from hpmkd.engine.perf import (
    CompiledForward,
    PerfSwitches,
    compile_targets,
    has_conv2d,
    resolve_perf,
)
from hpmkd.errors import UserError
from hpmkd.methods import build_method
from hpmkd.methods.base import ModelOutputs
from hpmkd.models import build_model
from hpmkd.models.ensemble import TeacherEnsemble
from tests.conftest import TINY

AUTO = {
    "channels_last": "auto",
    "device_data": "auto",
    "fused_optimizer": "auto",
    "compile": False,
    "cuda_graphs": False,
}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


class Adam(torch.optim.SGD):
    """An optimiser named Adam that is not torch's."""


CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)  # a device object only: resolving needs no GPU
SHAPE = (3, 8, 8)


def _images(n: int = 48) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    return DataSplits(
        name="toy", x_train=x[:32], y_train=y[:32], x_val=x[32:40], y_val=y[32:40],
        x_test=x[40:], y_test=y[40:], num_classes=4, class_names=list("abcd"),
        input_shape=SHAPE, is_image=True, mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip


def _context(tmp_path: Path, **switches: object) -> RunContext:
    trainer = {"accelerator": "cpu", "precision": "auto"}
    recipe = {"batch_size": 8, "eval_batch_size": 16, "augment": False}
    cfg = OmegaConf.create(
        {"seed": 0, "data": {}, "trainer": trainer, "recipe": recipe, "perf": AUTO | switches}
    )
    return RunContext(cfg=cfg, out_dir=tmp_path, data=_images(), store=None)  # type: ignore[arg-type]


def _nhwc(t: Tensor) -> bool:
    """Channels-last and not also plain contiguous (as 1x1 kernels or a single channel are)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


# --- resolution --------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_turns_on_what_pays_on_each_device(monkeypatch, bf16):
    monkeypatch.setattr(perf, "cuda_bf16", lambda device: bf16)
    assert resolve_perf(AUTO, "auto", CPU) == PerfSwitches(
        device="cpu", precision="32-true", channels_last=True
    )
    assert resolve_perf(AUTO, "auto", CUDA) == PerfSwitches(
        device="cuda",
        precision="bf16-mixed" if bf16 else "32-true",
        channels_last=True,
        device_data=True,
    )


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_on_the_cpu_is_bf16_for_conv_nets_with_amx(monkeypatch, amx):
    monkeypatch.setattr(perf, "cpu_bf16", lambda: amx)
    conv = resolve_perf(AUTO, "auto", CPU, conv=True)
    assert conv.precision == ("bf16-mixed" if amx else "32-true")
    assert resolve_perf(AUTO, "auto", CPU, conv=False).precision == "32-true"  # MLPs gain nothing
    assert resolve_perf(AUTO, "32-true", CPU, conv=True).precision == "32-true"  # explicit wins


def test_cpu_bf16_reads_the_cpus_amx_support(monkeypatch):
    monkeypatch.undo()  # the suite pins it to False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert perf.cpu_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not perf.cpu_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not perf.cpu_bf16()


def test_explicit_switches_win_and_bad_values_are_user_errors(caplog):
    off = {"channels_last": False, "device_data": False, "compile": True, "cuda_graphs": False}
    assert resolve_perf(off, "16-mixed", CUDA) == PerfSwitches(
        device="cuda", precision="16-mixed", compile=True
    )
    graphs = AUTO | {"cuda_graphs": True}
    assert resolve_perf(graphs, "auto", CUDA).compile  # CUDA graphs are a compile mode
    with caplog.at_level("WARNING", logger="hpmkd"):
        on_cpu = resolve_perf(graphs | {"device_data": True}, "auto", CPU)
    assert not (on_cpu.cuda_graphs or on_cpu.compile or on_cpu.device_data)
    assert "needs a CUDA device" in caplog.text
    with pytest.raises(
        UserError, match="perf.channels_last must be auto, true or false; got 'yes'"
    ):
        resolve_perf(AUTO | {"channels_last": "yes"}, "auto", CPU)
    with pytest.raises(UserError, match="perf.compile must be true or false; got 'auto'"):
        resolve_perf(AUTO | {"compile": "auto"}, "auto", CPU)


def _compose(*overrides: str):
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_fused_optimizer_where_the_class_has_a_kernel_unless_the_recipe_chose():
    assert resolve_perf(AUTO, "auto", CPU, optimizer=ADAM).fused_optimizer
    assert resolve_perf(AUTO, "auto", CUDA, optimizer=ADAM).fused_optimizer
    assert not resolve_perf(AUTO, "auto", torch.device("mps"), optimizer=ADAM).fused_optimizer
    sgd = ADAM | {"_target_": "torch.optim.SGD"}
    assert not resolve_perf(AUTO, "auto", CPU, optimizer=sgd).fused_optimizer  # not measured to pay
    on = AUTO | {"fused_optimizer": True}
    assert resolve_perf(on, "auto", CPU, optimizer=sgd).fused_optimizer
    rmsprop = ADAM | {"_target_": "torch.optim.RMSprop"}  # no fused kernel in torch
    assert not resolve_perf(on, "auto", CPU, optimizer=rmsprop).fused_optimizer
    # a class of another library that happens to be called Adam is not fused by default
    other = ADAM | {"_target_": "tests.test_perf.Adam"}
    assert not resolve_perf(AUTO, "auto", CPU, optimizer=other).fused_optimizer
    assert not resolve_perf(AUTO, "auto", CPU, optimizer=ADAM | {"foreach": True}).fused_optimizer
    assert not resolve_perf(AUTO, "auto", CPU, optimizer=ADAM | {"fused": False}).fused_optimizer
    off = AUTO | {"fused_optimizer": False}
    assert not resolve_perf(off, "auto", CPU, optimizer=ADAM).fused_optimizer
    assert resolve_perf(off, "auto", CPU, optimizer=ADAM | {"fused": True}).fused_optimizer
    with pytest.raises(UserError, match="perf.fused_optimizer"):
        resolve_perf(AUTO | {"fused_optimizer": "yes"}, "auto", CPU, optimizer=ADAM)


def test_perf_group_defaults_and_the_off_preset():
    cfg = _compose()
    assert OmegaConf.to_container(cfg.perf) == AUTO
    assert cfg.trainer.precision == "auto" and _compose("trainer=gpu").trainer.precision == "auto"
    off = OmegaConf.to_container(_compose("perf=off").perf)
    assert off == dict.fromkeys(AUTO, False)


def test_run_context_resolves_precision_for_the_trainer(tmp_path):
    ctx = _context(tmp_path)
    assert ctx.perf == PerfSwitches(device="cpu", precision="32-true", channels_last=True)
    assert ctx.trainer_kwargs(nested=False)["precision"] == "32-true"
    assert not ctx.datamodule().device_data


@pytest.mark.parametrize(
    ("arch", "precision"), [("resnet8", "bf16-mixed"), ("mlp_small", "32-true")]
)
def test_run_context_asks_whether_the_student_is_a_conv_net(tmp_path, monkeypatch, arch, precision):
    monkeypatch.setattr(perf, "cpu_bf16", lambda: True)
    ctx = _context(tmp_path)
    ctx.cfg.student = {"arch": arch}
    assert ctx.perf.precision == precision
    assert ctx.trainer_kwargs(nested=False)["precision"] == precision


# --- channels_last -----------------------------------------------------------------------------


def test_channels_last_applies_to_conv_nets_and_not_to_mlps(tmp_path):
    on, off = _context(tmp_path, channels_last=True), _context(tmp_path, channels_last=False)
    conv, mlp = on.build({"arch": "resnet8"}), on.build({"arch": "mlp_small"})
    assert has_conv2d(conv) and not has_conv2d(mlp)
    kernels = [p for p in conv.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert any(_nhwc(p) for p in kernels)
    assert all(p.is_contiguous() for p in mlp.parameters())
    assert not any(_nhwc(p) for p in off.build({"arch": "resnet8"}).parameters())


def _module(student: nn.Module, channels_last: bool) -> DistillModule:
    transform = BatchTransform(
        is_image=True, mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=1, flip=True
    )
    return DistillModule(
        student=student, method=build_method({"name": "ce"}), transform=transform,
        num_classes=4, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        channels_last=channels_last,
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_module_feeds_image_batches_in_the_switched_memory_format(channels_last):
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=4, input_shape=SHAPE)
    seen: list[Tensor] = []
    student.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    module = _module(student, channels_last)
    data = _images()
    module.training_step((data.x_train[:8], data.y_train[:8], torch.arange(8)), 0)
    module.validation_step((data.x_val, data.y_val, torch.arange(8)), 0)
    assert len(seen) == 2 and all(_nhwc(x) == channels_last for x in seen)
    tabular = torch.randn(3, 6)
    assert module.memory_format(tabular) is tabular


# --- fp32 losses under autocast ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce", "kd", "dkd", "dist"])
def test_losses_under_bf16_autocast_are_computed_in_fp32(name):
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
    method = build_method({"name": name})
    x, y, index = torch.randn(16, 6), torch.arange(16) % 4, torch.arange(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, t = student(x), teacher(x)
        assert s.dtype == t.dtype == torch.bfloat16
        low = method(ModelOutputs(s), ModelOutputs(t), y, index)
    full = method(ModelOutputs(s.float()), ModelOutputs(t.float()), y, index)
    for term, value in low.items():
        assert value.dtype == torch.float32, term
        assert torch.allclose(value, full[term], rtol=1e-6, atol=1e-7), term


# --- device-resident data ----------------------------------------------------------------------


def _attached(datamodule: SplitsDataModule, device: torch.device) -> SplitsDataModule:
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device))  # type: ignore[assignment]
    datamodule.setup("fit")
    return datamodule


def test_device_data_leaves_cpu_runs_unchanged():
    data = _images()
    on = _attached(SplitsDataModule(data, 8, 16, device_data=True), CPU)
    off = _attached(SplitsDataModule(data, 8, 16), CPU)
    assert on.held is data and off.held is data
    batches = []
    for datamodule in (on, off):
        torch.manual_seed(0)
        batches.append([b for loader in ("train", "val") for b in _batches(datamodule, loader)])
    for a, b in zip(*batches, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def _batches(datamodule: SplitsDataModule, split: str) -> list:
    return list(getattr(datamodule, f"{split}_dataloader")())


def test_device_data_indexes_batches_on_the_training_device():
    """The ``meta`` device stands in for a GPU: the splits move once, batches are sliced there."""
    data = _images()
    datamodule = _attached(SplitsDataModule(data, 8, 16, device_data=True), torch.device("meta"))
    held = datamodule.held
    x, y, index = _batches(datamodule, "train")[0]
    assert {x.device.type, y.device.type, index.device.type} == {"meta"}
    assert x.shape == (8, *SHAPE) and data.x_train.device == CPU  # the run's splits stay put
    datamodule.setup("test")
    assert datamodule.held is held  # copied once
    assert datamodule.with_batch_size(4).device_data


# --- compiled forwards -------------------------------------------------------------------------


def test_compiled_forward_for_one_fit_then_restored(monkeypatch):
    calls: list[str | None] = []

    def fake_compile(fn, mode=None):
        calls.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    student = build_model("mlp_small", num_classes=4, input_shape=SHAPE)
    teacher = build_model("resnet8", num_classes=4, input_shape=SHAPE)
    keys = list(student.state_dict())
    module = SimpleNamespace(student=student, teacher=FrozenTeacher(teacher))
    callback = CompiledForward(cuda_graphs=True)
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    callback.setup(None, module, "test")  # type: ignore[arg-type]  # compiled once
    assert calls == ["reduce-overhead"] * 2
    assert "forward" in vars(student) and "forward" in vars(teacher)
    assert list(student.state_dict()) == keys
    callback.teardown(None, module, "fit")  # type: ignore[arg-type]
    assert "forward" not in vars(student) and "forward" not in vars(teacher)
    cached = SimpleNamespace(teacher=FrozenTeacher(teacher))  # the prediction cache's misses
    assert compile_targets(SimpleNamespace(student=student, teacher=cached)) == [student, teacher]  # type: ignore[arg-type]
    ensemble = TeacherEnsemble([teacher])  # runs its teachers on threads or streams: not compiled
    callback.setup(None, SimpleNamespace(student=student, teacher=FrozenTeacher(ensemble)), "fit")  # type: ignore[arg-type]
    assert "forward" not in vars(ensemble) and len(calls) == 3


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_kd_with_channels_last_on_tiny_images_records_the_switches(run_cli):
    from hpmkd.report.collect import collect_results

    args = ["+strategy=kd", "teacher=resnet8", "student=resnet8", "perf.channels_last=true"]
    run = run_cli("train", *TINY, *args)
    assert run.code == 0, run.err
    (results,) = run.results()
    assert (
        results["perf"]
        == PerfSwitches(
            device="cpu", precision="32-true", channels_last=True, fused_optimizer=True
        ).as_dict()
    )
    assert results["test_acc"] > 30  # 10 digit classes
    (settings,) = collect_results([run.outputs])["settings"]
    assert settings["perf.channels_last"] == "true" and settings["perf.precision"] == '"32-true"'
    # the deployable student loads into a fresh model in the default memory format
    student = build_model("resnet8", num_classes=10, input_shape=(1, 8, 8))
    state = torch.load(next(run.outputs.rglob("student.pt")), weights_only=True)
    student.load_state_dict(state)
    assert all(p.is_contiguous() for p in student.parameters())


@pytest.mark.slow
def test_kd_in_bf16_on_a_cpu_with_amx(run_cli, monkeypatch):
    """Where the CPU has AMX, a conv-net run trains under bf16 autocast; works on any CPU."""
    monkeypatch.setattr(perf, "cpu_bf16", lambda: True)
    run = run_cli("train", *TINY, "+strategy=kd", "teacher=resnet8", "student=resnet8")
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["perf"]["precision"] == "bf16-mixed"
    assert results["details"]["teacher_cache"]["misses"] > 0
    assert results["test_acc"] > 30  # 10 digit classes


def test_fp16_amp_is_refused_on_a_cpu_not_silently_bf16() -> None:
    """Lightning runs precision 16 on a CPU as bf16-mixed; results.json would record "16"."""
    for precision in (16, "16", "16-mixed"):
        with pytest.raises(UserError, match="bf16-mixed"):
            resolve_perf(AUTO, precision, CPU)
        assert resolve_perf(AUTO, precision, CUDA).precision == str(precision)
    assert resolve_perf(AUTO, "bf16-mixed", CPU).precision == "bf16-mixed"
    with pytest.raises(UserError, match="unknown trainer.precision 8"):
        resolve_perf(AUTO, 8, CPU)
