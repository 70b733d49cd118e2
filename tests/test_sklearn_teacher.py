"""Scikit-learn and boosting teachers: out-of-fold soft labels, the store, every logit method."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier

from hpmkd.errors import UserError
from hpmkd.models.sklearn_teacher import PROB_FLOOR, estimator_class, soft_labels
from tests.conftest import TINY

# breast_cancer (embedded, 2 classes) with a 5-round HGB: seconds per run
HGB = ["data=breast_cancer", "teacher=hgb", "teacher.params.max_iter=5"]


class SeenRecorder(ClassifierMixin, BaseEstimator):
    """Predicts class 0 for rows it was fitted on and class 1 for the others (column 0: row id)."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> SeenRecorder:
        self.seen_ = set(x[:, 0].tolist())
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        seen = np.array([row in self.seen_ for row in x[:, 0].tolist()], dtype=float)
        return np.stack([seen, 1 - seen], axis=1)


def planted(n: int = 200, classes: int = 4, seed: int = 0) -> dict[str, tuple]:
    """Unique random rows with random labels: only memorising a row predicts its label."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.arange(n)[:, None], rng.normal(size=(n, 3))], axis=1)
    y = rng.permutation(np.arange(n) % classes)
    return {"train": (x, y), "val": (x[:10], y[:10]), "test": (x[:10], y[:10])}


def test_no_training_row_is_labelled_by_a_model_that_saw_it():
    splits = planted()
    oof = soft_labels(SeenRecorder, splits, num_classes=2, folds=5, seed=0)
    assert (oof.train.argmax(1) == 1).all()  # every row predicted as unseen
    assert sorted(np.bincount(oof.fold)) == [40] * 5
    leaky = soft_labels(SeenRecorder, splits, num_classes=2, folds=0, seed=0)
    assert (leaky.train.argmax(1) == 0).all() and (leaky.fold == -1).all()
    # validation and test rows come from the model fitted on every training row
    assert (oof.val.argmax(1) == 0).all()


def test_a_memorising_teacher_is_certain_in_fold_and_at_chance_out_of_fold():
    splits = planted()
    y = splits["train"][1]

    def make() -> KNeighborsClassifier:
        return KNeighborsClassifier(n_neighbors=1)

    leaky = soft_labels(make, splits, num_classes=4, folds=0, seed=0)
    oof = soft_labels(make, splits, num_classes=4, folds=5, seed=0)
    assert (leaky.train.argmax(1) == y).mean() == 1.0
    assert (oof.train.argmax(1) == y).mean() < 0.45  # chance is 0.25
    # probabilities of 0 are floored, renormalised, then logged: finite logits
    assert oof.train.min() == pytest.approx(np.log(PROB_FLOOR / (1 + 3 * PROB_FLOOR)), rel=1e-4)
    assert np.allclose(np.exp(oof.train).sum(1), 1.0, atol=1e-5)


def test_the_same_seed_gives_the_same_soft_labels():
    splits = planted()

    def make() -> KNeighborsClassifier:
        return KNeighborsClassifier(n_neighbors=3)

    a, b = (soft_labels(make, splits, num_classes=4, folds=5, seed=1) for _ in range(2))
    other = soft_labels(make, splits, num_classes=4, folds=5, seed=2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.fold, b.fold)
    assert not np.array_equal(a.fold, other.fold)


def test_a_missing_extra_and_a_non_classifier_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "xgboost", None)
    with pytest.raises(UserError, match=r"pip install 'hpmkd\[xgboost\]'"):
        estimator_class("xgboost.XGBClassifier")
    with pytest.raises(UserError, match="neither a torch model nor a classifier"):
        estimator_class("sklearn.ensemble.HistGradientBoostingRegressor")


def test_the_store_keeps_the_soft_labels_and_the_next_run_fits_nothing(run_cli):
    first = run_cli("train", "+strategy=kd", *HGB, *TINY)
    assert first.code == 0, first.err
    second = run_cli("train", "+strategy=kd", *HGB, *TINY)
    assert second.code == 0, second.err
    a, b = second.results()
    assert a["teacher"]["extra"]["source"] == "trained"
    assert b["teacher"]["extra"]["source"] == "store"
    assert a["teacher"]["extra"]["store_key"] == b["teacher"]["extra"]["store_key"]
    assert a["teacher_acc"] == b["teacher_acc"] > 80
    cost = b["teacher"]["extra"]["cost"]
    assert set(cost) == {"kind", "size_bytes", "nodes", "predict_ms_per_1000", "fit_s"}
    assert cost["kind"] == "sklearn" and cost["nodes"] > 0 and cost["predict_ms_per_1000"] > 0
    logs = sorted(second.outputs.rglob("train.log"))
    assert "fitting it (5 folds)" in logs[0].read_text()
    assert "reused from the store" in logs[1].read_text()
    assert "fitting it" not in logs[1].read_text()
    # the same seed gives the same student whether the soft labels were fitted or reused
    assert a["val_acc_history"] == b["val_acc_history"]


def test_every_logit_method_and_strategy_learns_from_a_boosting_teacher(run_cli):
    one = "recipe.epochs=1"
    runs = {
        "kd": ["+strategy=kd", one],
        "dkd": ["+strategy=kd", "method=dkd", one],
        "dist": ["+strategy=kd", "method=dist", one],
        "smskd": ["+strategy=smskd", "strategy.methods=[kd,dist]", "strategy.transitions=[1]",
                  "recipe.epochs=2"],
        "takd": ["+strategy=takd", "assistant=mlp", one],
        "progressive": ["+strategy=progressive", "strategy.max_length=1", one],
        "awmt": ["+strategy=multi_teacher", "teachers=[{arch: hgb, params: {max_iter: 5}},mlp]",
                 one],
    }  # fmt: skip
    for name, args in runs.items():
        run = run_cli("train", *HGB, *TINY, *args)
        assert run.code == 0, f"{name}: {run.err}"
        result = run.results()[-1]
        assert result["test_acc"] > 50, name
    awmt = run.results()[-1]
    members = awmt["details"]["teachers"]
    assert members[0]["arch"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert members[0]["extra"]["source"] == "store"  # fitted once, by the first run
    weights = awmt["details"]["attention_test"]
    assert len(weights["mean"]) == len(weights["std"]) == len(weights["top_share"]) == 2
    assert sum(weights["mean"]) == pytest.approx(1.0) and sum(weights["top_share"]) == 1.0


def test_a_feature_method_with_a_boosting_teacher_is_refused(run_cli):
    run = run_cli("train", "+strategy=kd", "method=fitnet", *HGB, *TINY)
    assert run.code == 2
    assert run.err.strip().count("\n") == 0
    assert "is a scikit-learn model and has no features; method fitnet" in run.err
    assert "fitting it" not in run.out + run.err  # refused before the teacher is fitted


def test_presets_in_a_teachers_list_take_the_entry_keys():
    from omegaconf import OmegaConf

    from hpmkd.engine.model_config import teacher_configs

    cfg = OmegaConf.create({"teachers": ["hgb", {"arch": "lightgbm", "seed": 3,
                                                 "params": {"n_estimators": 7}}]})  # fmt: skip
    hgb, lgbm = teacher_configs(cfg)
    assert hgb.arch == "sklearn.ensemble.HistGradientBoostingClassifier" and hgb.oof_folds == 5
    assert lgbm.arch == "lightgbm.LGBMClassifier" and lgbm.seed == 3
    assert lgbm.params.n_estimators == 7 and lgbm.params.num_leaves == 31


def test_oof_folds_on_a_torch_teacher_is_refused(run_cli):
    run = run_cli("train", "+strategy=kd", "+teacher.oof_folds=3", *TINY)
    assert run.code == 2
    assert "teacher.oof_folds applies to scikit-learn teachers" in run.err
