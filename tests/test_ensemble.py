"""TeacherEnsemble: mean logits, the stacked-logits feature, concurrent runs, class checks."""

import threading

import pytest
import torch
from torch import Tensor, nn

from hpmkd.engine.module import FrozenTeacher
from hpmkd.errors import UserError
from hpmkd.models import FeatureTap, build_model
from hpmkd.models.ensemble import TeacherEnsemble


def _teachers(num_classes=(3, 3)) -> list[nn.Module]:
    """Seed 0: an ``mlp_small`` and an ``mlp`` (different architectures) on 4 features."""
    torch.manual_seed(0)
    arches = ("mlp_small", "mlp")
    return [
        build_model(arch, num_classes=c, input_shape=(4,))
        for arch, c in zip(arches, num_classes, strict=True)
    ]


class _ThreadRecorder(nn.Module):
    """A linear teacher that remembers the thread and the grad mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.thread: int | None = None
        self.grad: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.thread = threading.get_ident()
        self.grad = torch.is_grad_enabled()
        return self.layer(x)


def test_mean_logits_stacked_feature_input_and_name():
    teachers = _teachers()
    ensemble = TeacherEnsemble(teachers).eval()
    x = torch.randn(5, 4)
    with torch.no_grad(), FeatureTap(ensemble, ["teacher_logits", "input"]) as tap:
        out = ensemble(x)
        stacked, seen = tap.features["teacher_logits"], tap.features["input"]
        expected = [t(x) for t in teachers]
    assert ensemble.model_name == "ensemble(mlp_small,mlp)"
    assert out.shape == (5, 3) and stacked.shape == (5, 2, 3)
    assert torch.allclose(stacked[:, 0], expected[0]) and torch.allclose(stacked[:, 1], expected[1])
    # the mean is summed in another order than (a + b) / 2: equal up to rounding, also where
    # the two teachers' logits nearly cancel
    torch.testing.assert_close(out, (expected[0] + expected[1]) / 2)
    assert torch.equal(seen, x)


def test_concurrent_equals_sequential_and_keeps_grad_mode():
    teachers = _teachers()
    x = torch.randn(16, 4)
    concurrent, sequential = TeacherEnsemble(teachers), TeacherEnsemble(teachers, concurrent=False)
    with torch.no_grad():
        a, b = concurrent(x), sequential(x)
    assert torch.equal(a, b)
    assert concurrent(x).grad_fn is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_a, low_b = concurrent(x), sequential(x)
    assert low_a.dtype == torch.bfloat16 and torch.equal(low_a, low_b)


def test_concurrent_runs_teachers_off_the_calling_thread_and_sequential_does_not():
    teachers = [_ThreadRecorder(), _ThreadRecorder()]
    TeacherEnsemble(teachers)(torch.randn(2, 4))
    assert all(t.thread != threading.get_ident() for t in teachers)
    TeacherEnsemble(teachers, concurrent=False)(torch.randn(2, 4))
    assert all(t.thread == threading.get_ident() for t in teachers)


def test_worker_threads_run_in_the_callers_grad_mode():
    teachers = [_ThreadRecorder(), _ThreadRecorder()]
    ensemble = TeacherEnsemble(teachers)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            ensemble(torch.randn(2, 4))
        assert [t.grad for t in teachers] == [grad, grad]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_concurrent_streams_equal_sequential_on_cuda():
    teachers = _teachers()
    x = torch.randn(64, 4, device="cuda")
    concurrent = TeacherEnsemble(teachers).cuda().eval()
    sequential = TeacherEnsemble(teachers, concurrent=False).cuda().eval()
    with torch.no_grad(), FeatureTap(concurrent, ["teacher_logits"]) as tap:
        a, b = concurrent(x), sequential(x)
        stacked = tap.features["teacher_logits"]
    assert torch.equal(a, b)
    assert torch.equal(stacked.mean(dim=1), a)


def test_teachers_of_different_class_counts_are_a_user_error():
    ensemble = TeacherEnsemble(_teachers(num_classes=(3, 5)))
    message = "same classes; teacher 0 'mlp_small': 3 classes, teacher 1 'mlp': 5 classes"
    for concurrent in (True, False):
        ensemble.concurrent = concurrent
        with pytest.raises(UserError, match=message):
            ensemble(torch.randn(2, 4))


def test_no_teachers_is_a_user_error():
    with pytest.raises(UserError, match="at least one teacher"):
        TeacherEnsemble([])


def test_engine_teacher_wrapper_freezes_all_teachers_and_taps_the_stack():
    ensemble = TeacherEnsemble(_teachers())
    frozen = FrozenTeacher(ensemble, ("teacher_logits",))
    out = frozen(torch.randn(3, 4), torch.arange(3))
    assert out.features["teacher_logits"].shape == (3, 2, 3)
    assert all(not m.training for m in ensemble.modules())
    assert all(not p.requires_grad for p in ensemble.parameters())


# --- teachers of one architecture: one batched (vmapped) forward ------------------------------


def _image_teachers() -> list[nn.Module]:
    """Three ``resnet8`` (BatchNorm with non-trivial running statistics) and one ``mlp_small``,
    frozen, on 3x8x8 images."""
    torch.manual_seed(0)
    arches = ("resnet8", "resnet8", "mlp_small", "resnet8")
    teachers = [build_model(arch, num_classes=5, input_shape=(3, 8, 8)) for arch in arches]
    for teacher in teachers:
        for module in teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return [t.eval().requires_grad_(False) for t in teachers]


def test_teachers_of_one_architecture_run_batched_and_match_one_by_one():
    teachers = _image_teachers()
    x = torch.randn(6, 3, 8, 8)
    one_by_one = [t(x) for t in teachers]
    for concurrent in (False, True):
        ensemble = TeacherEnsemble(teachers, concurrent=concurrent)
        assert ensemble.groups == [(0, 1, 3), (2,)]
        for _ in range(2):  # the first forward builds and checks the stack, the second reuses it
            with torch.no_grad(), FeatureTap(ensemble, ["teacher_logits"]) as tap:
                out = ensemble(x)
                stacked = tap.features["teacher_logits"]
            assert ensemble.batched_groups == [(0, 1, 3)]
            assert stacked.shape == (6, 4, 5)
            for k, expected in enumerate(one_by_one):  # in the order the teachers were given
                assert torch.allclose(stacked[:, k], expected, atol=1e-5), k
            assert torch.allclose(out, torch.stack(one_by_one, dim=1).mean(dim=1), atol=1e-5)
    unbatched = TeacherEnsemble(teachers, batched=False)
    with torch.no_grad():
        # the teachers may run on threads of their own, whose convolutions can sum in another
        # order than the calls above: equal up to rounding
        torch.testing.assert_close(unbatched(x), torch.stack(one_by_one, dim=1).mean(dim=1))
    assert unbatched.batched_groups == []


def test_batched_teachers_under_cpu_bf16_autocast_match_one_by_one():
    """precision=auto is bf16-mixed for conv nets on CPUs with AMX: the stacked forward runs
    under that autocast too, and stays batched."""
    teachers = _image_teachers()
    x = torch.randn(6, 3, 8, 8)
    ensemble = TeacherEnsemble(teachers, concurrent=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        one_by_one = torch.stack([t(x).float() for t in teachers], dim=1)
        with FeatureTap(ensemble, ["teacher_logits"]) as tap:
            ensemble(x)
            stacked = tap.features["teacher_logits"].float()
    assert ensemble.batched_groups == [(0, 1, 3)]
    # bf16 keeps 8 bits of mantissa: both orders of rounding agree to a few parts in a hundred
    assert torch.allclose(stacked, one_by_one, atol=0.05, rtol=0.02)


def test_teachers_in_train_mode_or_with_gradients_run_one_by_one():
    teachers = _image_teachers()
    x = torch.randn(4, 3, 8, 8)
    ensemble = TeacherEnsemble(teachers, concurrent=False).train()  # BatchNorm would update
    with torch.no_grad():
        ensemble(x)
    assert ensemble.batched_groups == []
    ensemble.eval()
    teachers[0].requires_grad_(True)
    out = ensemble(x)  # the gradient must reach the teachers' own parameters
    assert ensemble.batched_groups == []
    out.sum().backward()
    assert teachers[0].conv1.weight.grad is not None


class _Scaled(nn.Module):
    """Same layers, same weight shapes, a setting the module repr does not show."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) * self.scale


class _Talker(nn.Module):
    """A forward vmap cannot batch (a Python number from a batched tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        return out - out.max().item()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: _Scaled(float(k + 1)), "batched outputs differ"),
        (lambda k: _Talker(), "item"),
    ],
)
def test_a_group_that_cannot_be_batched_falls_back_with_a_warning(make, reason, caplog):
    torch.manual_seed(0)
    teachers = [make(k).eval().requires_grad_(False) for k in range(3)]
    ensemble = TeacherEnsemble(teachers, concurrent=False)
    assert ensemble.groups == [(0, 1, 2)]
    x = torch.randn(5, 4)
    expected = torch.stack([t(x) for t in teachers], dim=1).mean(dim=1)
    with caplog.at_level("WARNING", logger="hpmkd"):
        for _ in range(2):
            assert torch.equal(ensemble(x), expected)
    assert ensemble.batched_groups == []
    (record,) = caplog.records  # warned once, then one by one for good
    assert "run one by one, not batched" in record.message and reason in record.message


def test_teachers_with_hooks_are_groups_of_their_own():
    teachers = _image_teachers()
    handle = teachers[1].register_forward_hook(lambda module, args, out: None)
    assert TeacherEnsemble(teachers).groups == [(0, 3), (1,), (2,)]
    handle.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_group_on_a_side_stream_matches_one_by_one_on_cuda():
    teachers = [t.cuda() for t in _image_teachers()]
    x = torch.randn(64, 3, 8, 8, device="cuda")
    ensemble = TeacherEnsemble(teachers)  # the batched group and the MLP on two streams
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = torch.stack([t(x) for t in teachers], dim=1).mean(dim=1)
        for _ in range(2):
            assert torch.allclose(ensemble(x), expected, atol=1e-4)
    assert ensemble.batched_groups == [(0, 1, 3)]
