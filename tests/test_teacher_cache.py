"""The prediction cache gives the very losses of the online teacher, and is shared by runs."""

from __future__ import annotations

import pytest
import torch

from hpmkd.data.augment import BatchTransform
from hpmkd.engine.module import DistillModule
from hpmkd.engine.teacher_cache import teacher_predictions
from hpmkd.methods import build_method
from hpmkd.models import build_model
from hpmkd.store import ArtifactStore
from tests.conftest import TINY

CPU = torch.device("cpu")


def KEEP(x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the identity transform, a constant
    return x


def _module(teacher, logits=None) -> DistillModule:
    torch.manual_seed(0)
    student = build_model("mlp_small", num_classes=5, input_shape=(8,))
    return DistillModule(
        student=student, method=build_method({"name": "kd"}),
        transform=BatchTransform(is_image=False), num_classes=5,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1), teacher=teacher, teacher_logits=logits,
    )  # fmt: skip


def test_cached_logits_give_the_online_teachers_loss_for_a_shuffled_batch(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("mlp", num_classes=5, input_shape=(8,)).eval()
    with torch.no_grad():  # confident, sample-specific logits, so misaligned rows show
        for param in teacher.parameters():
            param.mul_(3.0)
    x, y = torch.randn(40, 8), torch.randint(0, 5, (40,))
    store = ArtifactStore(tmp_path)
    logits = teacher_predictions(
        store, {"t": 1}, teacher, x, KEEP, data_fingerprint="f", device=CPU
    )
    index = torch.randperm(40)[:16]  # a shuffled batch: rows must follow the sample index
    batch = (x[index], y[index], index)
    online = _module(teacher).training_step(batch, 0)
    cached = _module(teacher, logits).training_step(batch, 0)
    assert cached.item() == pytest.approx(online.item(), rel=1e-6)
    wrong_rows = _module(teacher, logits.roll(1, dims=0)).training_step(batch, 0)
    assert wrong_rows.item() != pytest.approx(online.item(), rel=1e-3)


def test_predictions_are_computed_once_and_reused(tmp_path, monkeypatch):
    teacher = build_model("mlp", num_classes=5, input_shape=(8,)).eval()
    x = torch.randn(10, 8)
    store = ArtifactStore(tmp_path)
    first = teacher_predictions(store, {"t": 1}, teacher, x, KEEP, data_fingerprint="f", device=CPU)
    calls = []
    monkeypatch.setattr(teacher, "forward", lambda *a: calls.append(1))
    again = teacher_predictions(store, {"t": 1}, teacher, x, KEEP, data_fingerprint="f", device=CPU)
    assert torch.equal(first, again) and calls == []  # read from the store, the teacher not run


@pytest.mark.slow
def test_a_seed_sweep_runs_the_teacher_once_and_matches_the_online_teacher(run_cli):
    common = ("train", "-m", "+strategy=kd", *TINY, "teacher.seed=0", "seed=0,1")
    cached = run_cli(*common)
    assert cached.code == 0, cached.err
    log = cached.err + cached.out
    assert log.count("teacher predictions: computed once") == 1
    assert log.count("teacher predictions: reused from the store") == 1
    online = run_cli(*common, "teacher_cache=false")
    assert online.code == 0 and "teacher predictions" not in online.err + online.out
    by_seed = {}
    for results in cached.results() + online.results():
        by_seed.setdefault((results["seed"], results["config"]["teacher_cache"]), results)
    for seed in (0, 1):
        a, b = by_seed[(seed, True)]["curves"]["kd"], by_seed[(seed, False)]["curves"]["kd"]
        assert a == pytest.approx(b, rel=1e-5)
