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
    assert torch.allclose(out, (expected[0] + expected[1]) / 2)
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
