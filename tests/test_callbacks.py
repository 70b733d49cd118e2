"""User callbacks (`conf/callbacks`): `_target_` nodes merged with hpmkd's own for the run's fit."""

from __future__ import annotations

from tests.conftest import TINY
from tests.test_cli_errors import _assert_user_error

# validation accuracy stays flat: nothing is learnt at this learning rate
FLAT = ["recipe.epochs=20", "recipe.optimizer.lr=1e-12"]


def test_early_stopping_from_the_preset_stops_the_student_early(run_cli):
    run = run_cli(
        "train", *TINY, *FLAT, "+strategy=kd", "teacher.params.hidden=[16]",
        "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
    )  # fmt: skip
    assert run.code == 0, run.err
    (results,) = run.results()
    # epoch 1 sets the best, epoch 2 does not improve on it: patience 1 is used up
    assert len(results["val_acc_history"]) == 2
    # the teacher is shared with other runs through the store: it trains its full recipe
    teacher_metrics = next(run.outputs.rglob("teacher/csv/metrics.csv")).read_text()
    assert len([line for line in teacher_metrics.splitlines() if "val/acc" not in line]) >= 20


def test_a_callback_added_by_name_runs_with_its_arguments(run_cli):
    target = "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping"
    args = ["+callbacks.stop.monitor=val/acc", "+callbacks.stop.mode=max"]
    run = run_cli("train", *TINY, *FLAT, target, *args, "+callbacks.stop.patience=2")
    assert run.code == 0, run.err
    (results,) = run.results()
    assert len(results["val_acc_history"]) == 3


def test_a_bad_target_is_one_line_before_the_teacher_trains(run_cli):
    run = run_cli("train", *TINY, "+strategy=kd", "+callbacks.x._target_=no.such.Callback")
    _assert_user_error(run, "callbacks.x", "no.such.Callback")


def test_a_target_that_is_no_callback_is_one_line(run_cli):
    run = run_cli("train", *TINY, "+callbacks.x._target_=collections.OrderedDict")
    _assert_user_error(run, "callbacks.x", "not a Lightning Callback")


def test_trainer_callbacks_points_to_the_callbacks_node(run_cli):
    run = run_cli("train", *TINY, "+trainer.callbacks=[]")
    _assert_user_error(run, "trainer.callbacks", "callbacks=early_stopping")
