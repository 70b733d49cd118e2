"""The fit's checkpoints (engine/checkpoints.py): last.ckpt at most every ``checkpoint_every_s``
seconds and after the final epoch; best.ckpt always the best epoch's, written with last.ckpt."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger

from hpmkd.data.loader import SplitsDataModule
from hpmkd.engine.fit import fit, quiet_lightning
from hpmkd.engine.module import DistillModule
from tests.test_engine import _data, _module

ACCURACIES = [0.5, 0.9, 0.7, 0.6]  # validation accuracy per epoch: the best is epoch 1


class SavesSeen(CSVLogger):
    """A logger that counts the checkpoint writes it is told of (wandb uploads on them)."""

    def __init__(self, root: Path) -> None:
        super().__init__(save_dir=str(root), name="csv", version="")
        self.told = 0

    def after_save_checkpoint(self, checkpoint_callback) -> None:  # noqa: ANN001
        self.told += 1


class WeightsPerEpoch(L.Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = pl_module.student.state_dict()  # type: ignore[union-attr]
        self.weights.append({k: v.clone() for k, v in state.items()})


def _fit(tmp_path: Path, every_s: float, monkeypatch: pytest.MonkeyPatch):
    quiet_lightning()
    scores = iter(ACCURACIES)

    def validate(self: DistillModule, split) -> None:
        self.log("val/acc", next(scores), on_step=False, on_epoch=True, batch_size=1)

    monkeypatch.setattr(DistillModule, "_validate_in_step", validate)
    written: list[str] = []
    save = TorchCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append(Path(path).name)
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", spy)
    weights = WeightsPerEpoch()
    logger = SavesSeen(tmp_path)
    result = fit(
        _module(None, method="ce"),
        SplitsDataModule(_data(), batch_size=16, eval_batch_size=64),
        out_dir=tmp_path,
        epochs=len(ACCURACIES),
        trainer_kwargs={
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
        },
        callbacks=[weights],
        loggers=[logger],
        checkpoint_every_s=every_s,
    )
    assert logger.told == len(written)  # every write reported, the kept best's too
    return result, written, weights.weights


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("every_s", [0, 3600])
def test_best_checkpoint_holds_the_best_epoch_however_often_last_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_s: float
) -> None:
    result, written, weights = _fit(tmp_path, every_s, monkeypatch)
    assert result.val_history == pytest.approx([100 * a for a in ACCURACIES])
    assert result.best_epoch == 2
    if every_s:  # both files once, after the final epoch: best first, then last
        assert written == ["best.ckpt", "last.ckpt"]
    else:  # best at each better epoch (0 and 1), last after every epoch
        assert written == ["best.ckpt", "last.ckpt", "best.ckpt", "last.ckpt", "last.ckpt",
                           "last.ckpt"]  # fmt: skip
    best = _load(tmp_path / "checkpoints" / "best.ckpt")
    last = _load(tmp_path / "checkpoints" / "last.ckpt")
    assert best["epoch"] == 1 and last["epoch"] == len(ACCURACIES) - 1
    for name, value in weights[1].items():
        assert torch.equal(best["state_dict"][f"student.{name}"], value), name
    for name, value in weights[-1].items():
        assert torch.equal(last["state_dict"][f"student.{name}"], value), name
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == len(ACCURACIES)


def test_the_journal_lists_the_epochs_a_resume_can_start_from(tmp_path: Path) -> None:
    """An epoch is journaled only once last.ckpt holds it (here: the final one only)."""
    from hpmkd.engine.journal import JOURNAL_FILE, Journal, JournalEpochs, read_journal

    quiet_lightning()
    journal = Journal.start(tmp_path)
    fit(
        _module(None, method="ce"),
        SplitsDataModule(_data(), batch_size=16, eval_batch_size=64),
        out_dir=tmp_path,
        epochs=3,
        trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False},
        callbacks=[JournalEpochs(journal, "student")],
        checkpoint_every_s=3600,
    )
    events = read_journal(tmp_path / JOURNAL_FILE)
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [3]
