"""The fused epoch loop (engine/fused.py) trains exactly what Lightning's per-batch loop trains."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import hpmkd
from hpmkd.engine import fit as fit_module

# the tabular recipe's cosine schedule: the fused loop's scheduler stepping is checked too
QUICK = [
    "recipe=tabular",
    "recipe.epochs=3",
    "recipe.batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "logger=csv",
]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _run(tmp_path: Path, name: str, fused: bool, monkeypatch: pytest.MonkeyPatch, **kw):
    chosen: list[bool] = []
    refusal = fit_module.fused_refusal

    def spy(*args):
        reason = refusal(*args) if fused else "switched off by the test"
        chosen.append(reason is None)
        return reason

    monkeypatch.setattr(fit_module, "fused_refusal", spy)
    result = kw.pop("call")(data=_data(), overrides=QUICK, out_dir=tmp_path / name, **kw)
    assert chosen and all(c == fused for c in chosen)
    return result


@pytest.mark.parametrize("strategy", ["plain", "kd"])
def test_fused_epochs_match_the_per_batch_loop(
    hpmkd_env: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    if strategy == "plain":
        kw = {"call": hpmkd.fit, "student": "mlp_small"}
    else:
        teacher = torch.nn.Sequential(torch.nn.Linear(8, 3))
        kw = {"call": hpmkd.distill, "teacher": teacher, "student": "mlp_small"}
    import hpmkd.engine.module as module_file

    direct: list[bool] = []
    planned = module_file.direct_step

    def spy(optimizer: torch.optim.Optimizer):
        step = planned(optimizer)
        direct.append(step is not None)
        return step

    monkeypatch.setattr(module_file, "direct_step", spy)
    fused = _run(hpmkd_env, "fused", True, monkeypatch, **dict(kw))
    assert direct and all(direct)  # the optimiser stepped without torch.optim's wrappers
    loop = _run(hpmkd_env, "loop", False, monkeypatch, **dict(kw))
    for name, value in loop.student.state_dict().items():
        torch.testing.assert_close(fused.student.state_dict()[name], value)
    a, b = fused.metrics, loop.metrics
    assert a["val_acc_history"] == pytest.approx(b["val_acc_history"])
    assert set(a["curves"]) == set(b["curves"]) and "loss" in a["curves"]
    for name, curve in b["curves"].items():
        assert a["curves"][name] == pytest.approx(curve, rel=1e-5)
    assert a["test_acc"] == pytest.approx(b["test_acc"])
    steps = [
        torch.load(hpmkd_env / run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
        for run in ("fused", "loop")
    ]
    assert steps[0] == steps[1] > 3  # one optimiser step per batch, counted as Lightning counts
    # the same values logged at the same epochs and steps (the per-batch loop writes validation
    # and training metrics in rows of their own)
    logged = [
        pd.read_csv(hpmkd_env / run / "csv" / "metrics.csv")
        .melt(id_vars=["epoch", "step"])
        .dropna()
        .sort_values(["epoch", "step", "variable"], kind="stable", ignore_index=True)
        for run in ("fused", "loop")
    ]
    pd.testing.assert_frame_equal(logged[0], logged[1], rtol=1e-5)


def test_bench_small_parses_its_options() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_small.py"
    spec = importlib.util.spec_from_file_location("bench_small", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--quick", "--seeds", "4"])
    assert args.quick and args.seeds == 4 and not args.skip_sweep
    with pytest.raises(SystemExit):
        bench.parse_args(["--no-such-option"])


def test_sampler_order_is_the_random_samplers() -> None:
    from torch.utils.data import RandomSampler

    from hpmkd.engine.fused import sampler_order

    for n in (1, 7, 1000):
        torch.manual_seed(n)
        expected = list(RandomSampler(range(n)))
        after = torch.rand(3)  # the global RNG state the sampler leaves behind
        torch.manual_seed(n)
        assert sampler_order(n).tolist() == expected
        assert torch.equal(torch.rand(3), after)


def test_correct_top_k_counts_what_topk_counts() -> None:
    from hpmkd.engine.fused import correct_top_k

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 26, generator=g)
    y = torch.randint(0, 26, (500,), generator=g)
    for k in (1, 5):
        expected = (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
        assert correct_top_k(logits, y, k) == expected
        members = torch.stack([logits, logits.flip(1), -logits])  # per member of a pack
        for m, counted in enumerate(correct_top_k(members, y, k)):
            assert counted == (members[m].topk(k, dim=1).indices == y[:, None]).any(1).sum()


def test_a_fused_fit_shows_one_bar_over_its_epochs(tmp_path: Path) -> None:
    from hpmkd.data.loader import SplitsDataModule
    from hpmkd.engine.fit import make_trainer
    from hpmkd.engine.progress import RunProgressBar
    from tests.test_engine import _data, _module

    module = _module(None, method="ce")
    kwargs = {"accelerator": "cpu", "num_sanity_val_steps": 0, "enable_progress_bar": True}
    trainer, _ = make_trainer(out_dir=tmp_path, epochs=4, trainer_kwargs=kwargs, has_val=True)
    data = fit_module.fit_data(module, SplitsDataModule(_data(), 16, 64), trainer)
    (bar,) = [c for c in trainer.callbacks if isinstance(c, RunProgressBar)]
    trainer.fit(module, datamodule=data)
    assert module.fused_epochs
    (task,) = bar.progress.tasks
    assert task.description == "Epochs" and task.total == 4 and task.completed == 4
