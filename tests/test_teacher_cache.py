"""The teacher prediction cache: exact per (sample, view), the online teacher's losses, shared by
runs, and never used where it would not be exact."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from hpmkd.data.augment import BatchTransform
from hpmkd.data.splits import DataSplits
from hpmkd.engine.module import DistillModule, FrozenTeacher
from hpmkd.engine.teacher_cache import CachedTeacher, ViewCache, open_view_cache
from hpmkd.methods import build_method
from hpmkd.parallel import DEVICE_ENV
from hpmkd.store import ArtifactStore
from tests.conftest import TINY

PAD, CLASSES, N = 1, 5, 24
SHAPE = (2, 5, 5)


def _transform() -> BatchTransform:
    return BatchTransform(
        is_image=True, mean=[0.4, 0.6], std=[0.2, 0.3], crop_padding=PAD, flip=True
    )


class CountingTeacher(nn.Module):
    """A linear teacher on the pixels, so every crop offset and flip changes its logits; counts
    the samples it is run on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(2 * 5 * 5, CLASSES)
        with torch.no_grad():  # confident, view-specific logits, so a wrong row shows
            self.linear.weight.mul_(4.0)
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += len(x)
        return self.linear(x.flatten(1))


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, *SHAPE), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, CLASSES, (N,), generator=g)


def _cache(store: ArtifactStore) -> ViewCache:
    views = _transform().views
    return open_view_cache(store, {"teacher": "t"}, samples=N, views=views, classes=CLASSES)


def _view_by_hand(image: torch.Tensor, view: int) -> torch.Tensor:
    side = 2 * PAD + 1
    dy, dx = (view // 2) // side, (view // 2) % side
    window = F.pad(image, (PAD,) * 4)[:, dy : dy + SHAPE[1], dx : dx + SHAPE[2]]
    return window.flip(2) if view % 2 else window


def test_cached_rows_are_the_teacher_on_the_view_named_by_sample_and_view_id(tmp_path):
    x, _ = _images()
    teacher, transform = CountingTeacher().eval(), _transform()
    cached = CachedTeacher(FrozenTeacher(teacher), _cache(ArtifactStore(tmp_path)))
    torch.manual_seed(0)
    index = torch.randperm(N)[:16]  # a shuffled batch: rows follow the sample index
    augmented, view = transform.augment(x[index])
    returned = cached(augmented, index, view).logits
    stored = _cache(ArtifactStore(tmp_path))  # a fresh mapping of the same files
    hit, logits = stored.read(stored.entries(index, view))
    assert hit.all() and torch.equal(returned, logits.float())
    by_hand = torch.stack([_view_by_hand(x[i], int(v)) for i, v in zip(index, view, strict=True)])
    with torch.no_grad():
        expected = teacher(transform.normalise(by_hand))
    assert torch.allclose(logits.float(), expected, rtol=1e-3, atol=1e-2)
    assert not torch.allclose(expected.roll(1, dims=0), expected, rtol=0.1)  # rows do differ
    others = stored.read(torch.arange(N * transform.views))[0]
    assert int(others.sum()) == 16  # nothing but the 16 (sample, view) rows was written


def _module(teacher: nn.Module, cache: ViewCache | None) -> DistillModule:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, CLASSES))
    return DistillModule(
        student=student, method=build_method({"name": "kd"}), transform=_transform(),
        num_classes=CLASSES, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), teacher=teacher,
        teacher_cache=cache,
    )  # fmt: skip


def _kd_losses(module: DistillModule, steps: int = 6) -> list[float]:
    """A few SGD steps over shuffled batches from seed 0 (the same augmentation draws)."""
    x, y = _images()
    optimizer = module.configure_optimizers()["optimizer"]
    torch.manual_seed(0)
    losses = []
    for step in range(steps):
        index = torch.randperm(N)[:8]
        optimizer.zero_grad()
        loss = module.training_step((x[index], y[index], index), step)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_few_steps_give_the_online_teachers_losses_and_a_second_run_reads_them(tmp_path):
    teacher = CountingTeacher()
    online = _kd_losses(_module(teacher, None))
    assert teacher.samples == 48
    first = _module(teacher, _cache(ArtifactStore(tmp_path)))
    filled = _kd_losses(first)
    assert teacher.samples == 96 and (first.teacher.hits, first.teacher.misses) == (0, 48)
    assert filled == pytest.approx(online, rel=1e-3)  # fp16 teacher logits, else the same
    second = _module(teacher, _cache(ArtifactStore(tmp_path)))
    assert _kd_losses(second) == filled  # hits give exactly the losses of misses
    assert teacher.samples == 96 and (second.teacher.hits, second.teacher.misses) == (48, 0)


def test_misaligned_rows_would_change_the_loss(tmp_path):
    """The loss comparison above can fail: entries of the wrong views give other losses."""
    teacher = CountingTeacher()
    online = _kd_losses(_module(teacher, None))
    cache = _cache(ArtifactStore(tmp_path))
    cache.entries = lambda index, view: index.cpu()  # keyed by sample index alone, not the view
    assert _kd_losses(_module(teacher, cache)) != pytest.approx(online, rel=1e-3)


def test_the_cache_pickles_without_its_mapped_files(tmp_path):
    cache = _cache(ArtifactStore(tmp_path))
    cache.write(torch.tensor([3]), torch.ones(1, CLASSES, dtype=torch.float16))
    copy = pickle.loads(pickle.dumps(cache))  # as spawned DDP workers receive it
    assert len(pickle.dumps(cache)) < 2000
    assert torch.equal(copy.read(torch.tensor([3, 4]))[0], torch.tensor([True, False]))


def _context(tmp_path, teacher_cache: bool):
    from hpmkd.engine.context import RunContext

    x, y = _images()
    data = DataSplits(
        name="toy", x_train=x, y_train=y, x_val=x[:2], y_val=y[:2], x_test=x[:4], y_test=y[:4],
        num_classes=CLASSES, class_names=list("abcde"), input_shape=SHAPE, is_image=True,
        mean=(0.4, 0.6), std=(0.2, 0.3), augment={"crop_padding": PAD, "flip": True},
    )  # fmt: skip
    cfg = OmegaConf.create({
        "teacher_cache": teacher_cache,
        "recipe": {"augment": True},
        "trainer": {"accelerator": "cpu", "precision": "32-true"},
    })  # fmt: skip
    return RunContext(cfg=cfg, out_dir=tmp_path, data=data, store=ArtifactStore(tmp_path / "s"))


def test_logit_methods_get_the_cache_feature_methods_and_the_off_switch_do_not(tmp_path):
    teacher = CountingTeacher()
    ctx = _context(tmp_path, teacher_cache=True)
    cache = ctx.teacher_cache(teacher, "t", build_method({"name": "kd"}))
    assert cache is not None and (cache.samples, cache.views) == (N, 18)
    assert [a.meta["role"] for a in ctx.store.list()] == ["teacher_cache"]
    fitnet = build_method({"name": "fitnet"})
    assert fitnet.teacher_features  # reads a teacher feature (the hint)
    assert ctx.teacher_cache(teacher, "t", fitnet) is None
    assert ctx.teacher_cache(teacher, None, build_method({"name": "kd"})) is None
    off = _context(tmp_path / "off", teacher_cache=False)
    assert off.teacher_cache(teacher, "t", build_method({"name": "kd"})) is None
    assert off.store.list() == [] and not (off.store.root / "locks").exists()


def test_another_teacher_or_other_weights_get_another_cache(tmp_path):
    ctx = _context(tmp_path, teacher_cache=True)
    kd = build_method({"name": "kd"})
    first = ctx.teacher_cache(CountingTeacher(), "t", kd)
    retrained = CountingTeacher()
    with torch.no_grad():
        retrained.linear.bias.add_(1.0)  # a checkpoint overwritten at the same path
    paths = {first.path, ctx.teacher_cache(retrained, "t", kd).path}
    paths.add(ctx.teacher_cache(CountingTeacher(), "u", kd).path)
    assert len(paths) == 3 and ctx.teacher_cache(CountingTeacher(), "t", kd).path == first.path


@pytest.mark.slow
def test_a_seed_sweep_reads_the_first_runs_teacher_logits_and_matches_the_online_teacher(run_cli):
    common = ("train", "-m", "+strategy=kd", *TINY, "teacher.seed=0", "seed=0,1")
    cached = run_cli(*common)
    assert cached.code == 0, cached.err
    online = run_cli(*common, "teacher_cache=false")
    assert online.code == 0, online.err
    by_seed = {}
    for results in cached.results() + online.results():
        by_seed.setdefault((results["seed"], results["config"]["teacher_cache"]), results)
    first, second = by_seed[(0, True)]["details"], by_seed[(1, True)]["details"]
    train = by_seed[(0, True)]["data"]["train"]
    epochs = by_seed[(0, True)]["epochs"]
    assert first["teacher_cache"]["misses"] == train  # each sample once (one view: no augment)
    assert first["teacher_cache"]["hits"] == train * (epochs - 1)
    assert second["teacher_cache"] == {"hits": train * epochs, "misses": 0, "saved_fraction": 1.0}
    assert "teacher_cache" not in by_seed[(0, False)]["details"]
    assert f"teacher cache: {train * epochs} hits, 0 misses (100.0%" in cached.err + cached.out
    for seed in (0, 1):
        a, b = by_seed[(seed, True)]["curves"]["kd"], by_seed[(seed, False)]["curves"]["kd"]
        assert a == pytest.approx(b, rel=1e-3)


@pytest.mark.slow
def test_spawned_ddp_ranks_share_one_cache_and_report_their_summed_counts(run_cli, monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", DEVICE_ENV):
        monkeypatch.delenv(name, raising=False)  # this process spawns its two workers
    run = run_cli("train", "+strategy=kd", "trainer=ddp_cpu", *TINY)
    assert run.code == 0, run.err
    (results,) = run.results()
    counts = results["details"]["teacher_cache"]
    train, epochs = results["data"]["train"], results["epochs"]
    padded = train + train % 2  # the distributed sampler repeats a sample to even the ranks
    assert counts["hits"] + counts["misses"] == epochs * padded  # both ranks' counts came back
    assert train <= counts["misses"] <= padded  # each sample computed once, by either rank
