"""HPM-KD's components that need no training: model families and chain budgets, temperature
schedules, the run-history row. (ACM: test_acm.py; AWMT: golden/test_multi_teacher.py and
test_ensemble.py; PPP: test_parallel.py; end to end: test_hpm_cli.py.)"""

from __future__ import annotations

import math

import pytest

from hpmkd.errors import UserError
from hpmkd.hpm.chain import next_budget, next_member
from hpmkd.hpm.record import history_row
from hpmkd.hpm.temperature import distillation_loss, temperature_at
from hpmkd.models import build_model, count_parameters
from hpmkd.models.family import closest_member, family_members, member_at_ratio
from tests.conftest import toy_splits


def _params(arch: str, **params) -> int:
    return count_parameters(build_model(arch, num_classes=10, input_shape=(3, 32, 32), **params))


# --- model families ---------------------------------------------------------------------------


def test_resnet_family_is_the_6n_plus_2_ladder_with_true_parameter_counts():
    members = family_members("resnet20", {}, num_classes=10, input_shape=(3, 32, 32))
    names = {m.arch for m in members}
    assert {"resnet8", "resnet14", "resnet20", "resnet26", "resnet110", "resnet20w2"} <= names
    assert all((int(m.arch[6:].split("w")[0]) - 2) % 6 == 0 for m in members)
    counts = [m.num_params for m in members]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    for member in (members[0], members[len(members) // 2], members[-1]):
        assert member.num_params == _params(member.arch)  # counting skips init, not parameters


def test_option_a_resnets_stay_option_a():
    members = family_members("resnet20_a", {}, num_classes=10, input_shape=(3, 32, 32))
    assert all(m.arch.endswith("_a") for m in members)


def test_resnet_pattern_rejects_depths_off_the_ladder():
    with pytest.raises(UserError, match="6n\\+2"):
        build_model("resnet21", num_classes=10, input_shape=(3, 32, 32))


def test_mlp_family_scales_the_widths_and_keeps_the_rest():
    members = family_members(
        "mlp", {"hidden": [100, 50], "dropout": 0.2}, num_classes=3, input_shape=(8,)
    )
    assert all(len(m.params["hidden"]) == 2 and m.params["dropout"] == 0.2 for m in members)
    base = next(m for m in members if m.params["hidden"] == [100, 50])
    assert base.num_params == 8 * 100 + 100 + 100 * 50 + 50 + 50 * 3 + 3


def test_closest_member_is_closest_on_a_log_scale_within_the_bounds():
    members = family_members("resnet20", {}, num_classes=10, input_shape=(3, 32, 32))
    budget = 500_000
    pick = closest_member(members, budget)
    assert all(
        abs(math.log(pick.num_params / budget)) <= abs(math.log(m.num_params / budget))
        for m in members
    )
    bounded = closest_member(members, budget, above=600_000, below=800_000)
    assert 600_000 < bounded.num_params < 800_000
    assert closest_member(members, budget, above=10**9) is None


def test_member_at_ratio_reports_the_ratio_it_achieved():
    members = family_members("mlp_small", {}, num_classes=10, input_shape=(64,))
    member, ratio = member_at_ratio(members, 300_000, 10)
    assert ratio == pytest.approx(300_000 / member.num_params)
    assert 8 < ratio < 12.5
    with pytest.raises(UserError, match="target_ratio"):
        member_at_ratio(members, 300_000, 0)


def test_target_ratio_resizes_a_cifar_student_whose_params_are_empty():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from hpmkd.engine.model_config import student_at_ratio

    cfg = OmegaConf.create({
        "teacher": {"arch": "resnet56", "params": {}},
        "student": {"arch": "resnet20", "params": {}, "target_ratio": 4},
    })  # fmt: skip
    student_at_ratio(cfg, SimpleNamespace(num_classes=10, input_shape=(3, 32, 32)))
    ratio = _params("resnet56") / _params(cfg.student.arch, **cfg.student.params)
    assert cfg.student.arch != "resnet20" and 3 < ratio < 5.5


# --- chain budgets ----------------------------------------------------------------------------


def test_next_budget_is_the_geometric_mean():
    assert next_budget(861_620, 272_474) == pytest.approx((861_620 * 272_474) ** 0.5)
    assert next_budget(1_000_000, 10_000) == pytest.approx(100_000)


def test_next_member_lies_strictly_between_and_nearest_the_budget():
    members = family_members("resnet8", {}, num_classes=10, input_shape=(3, 32, 32))
    teacher, student = _params("resnet110"), _params("resnet8")
    member = next_member(members, teacher, student)
    assert student < member.num_params < teacher
    budget = (teacher * student) ** 0.5
    between = [m for m in members if student < m.num_params < teacher]
    best = min(abs(math.log(m.num_params / budget)) for m in between)
    assert abs(math.log(member.num_params / budget)) == pytest.approx(best)
    # nothing fits between a model and the next rung below it
    resnet14 = _params("resnet14")
    assert next_member(members, resnet14, student) is None


# --- temperature schedules --------------------------------------------------------------------


def test_mts_follows_the_relative_loss_change_with_clipping():
    # T0 until two epochs have finished
    assert temperature_at("mts", 0, 10, []) == 4.0
    assert temperature_at("mts", 1, 10, [2.0]) == 4.0
    # |1.5 - 2.0| / 2.0 = 0.25 -> 4 * 1.25 = 5.0
    assert temperature_at("mts", 2, 10, [2.0, 1.5]) == pytest.approx(5.0)
    # gamma 0.5: 4 * (1 + 0.5 * 0.25) = 4.5
    assert temperature_at("mts", 2, 10, [2.0, 1.5], gamma=0.5) == pytest.approx(4.5)
    # a loss that rose is a change too
    assert temperature_at("mts", 2, 10, [1.0, 1.1]) == pytest.approx(4.4)
    # clipped to t_max and kept at least t_min
    assert temperature_at("mts", 2, 10, [1.0, 0.1]) == 6.0
    assert temperature_at("mts", 2, 10, [1.0, 1.0], t0=1.0) == 2.0


def test_linear_cosine_and_constant_schedules():
    assert temperature_at("constant", 7, 10, [], t0=3.0) == 3.0
    assert temperature_at("linear", 0, 11, [], t0=4.0, t_end=2.0) == 4.0
    assert temperature_at("linear", 5, 11, [], t0=4.0, t_end=2.0) == pytest.approx(3.0)
    assert temperature_at("linear", 10, 11, [], t0=4.0, t_end=2.0) == pytest.approx(2.0)
    assert temperature_at("cosine", 0, 11, [], t0=4.0, t_end=2.0) == pytest.approx(4.0)
    assert temperature_at("cosine", 5, 11, [], t0=4.0, t_end=2.0) == pytest.approx(3.0)
    assert temperature_at("cosine", 10, 11, [], t0=4.0, t_end=2.0) == pytest.approx(2.0)
    with pytest.raises(UserError, match="valid: constant, cosine, linear, mts"):
        temperature_at("step", 0, 10, [])


def test_the_distillation_loss_is_every_term_but_cross_entropy():
    assert distillation_loss({"ce": 1.0, "kd": 2.0, "entropy": -0.5}) == pytest.approx(1.5)


# --- the run-history row ----------------------------------------------------------------------


def _results(method: dict, strategy: dict, **extra) -> dict:
    return {
        "config": {
            "method": method,
            "strategy": strategy,
            "recipe": {"optimizer": {"lr": 0.01}, "epochs": 7},
            "paths": {"output_dir": "/runs/x"},
        },
        "teacher": {"params": 1000, "val_acc": 90.0, "test_acc": 80.0},
        "student": {"params": 100},
        "acc_best": 81.0,
        "test_acc": 72.0,
        "data": {"name": "toy"},
        "strategy": strategy["name"],
        **extra,
    }


def test_a_kd_run_becomes_a_history_row_with_test_retention_and_no_epsilon():
    """Retention is test over test, as in results.json; a KD run has no chain, so no epsilon.
    The teacher's meta-feature stays its validation accuracy (known when ACM chooses)."""
    kd = {"name": "kd", "temperature": 3.0, "ce_weight": 0.25, "kd_weight": 0.75}
    row = history_row(_results(kd, {"name": "kd"}), toy_splits())
    assert row["config"] == {"T0": 3.0, "alpha": 0.75, "lr": 0.01, "epochs": 7}
    assert row["chain"] is False
    assert row["result"] == {
        "retention": pytest.approx(0.9),  # 72 / 80, not 81 / 90 on validation
        "student_acc": 72.0,
        "teacher_acc": 80.0,
        "split": "test",
    }
    assert row["phi"]["teacher_acc"] == 90.0
    assert row["phi"]["compression_ratio"] == pytest.approx(10.0)
    assert row["phi"]["n_train"] == 10 and row["phi"]["class_imbalance"] == 2.0


def test_a_progressive_run_records_its_epsilon():
    kd = {"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    strategy = {"name": "progressive", "epsilon": 0.25, "max_length": 3}
    row = history_row(_results(kd, strategy), toy_splits())
    assert row["chain"] is True and row["config"]["epsilon"] == 0.25


def test_hpmkd_rows_record_the_configuration_acm_chose_and_som_off_records_nothing():
    method = {"name": "multi_teacher", "temperature": 4.0, "alpha": 0.9}
    chosen = {"T0": 5.0, "alpha": 0.7, "lr": 0.02, "epochs": 7, "epsilon": 1.0}
    components = {"som": True, "pdc": True}
    strategy = {"name": "hpmkd", "epsilon": 0.5, "max_length": 3, "components": components}
    row = history_row(_results(method, strategy, details={"config": chosen}), toy_splits())
    assert row["config"] == chosen and row["chain"] is True
    components["pdc"] = False  # no chain: epsilon was not used
    row = history_row(_results(method, strategy, details={"config": chosen}), toy_splits())
    assert row["chain"] is False and "epsilon" not in row["config"]
    components["som"] = False
    assert history_row(_results(method, strategy, details={"config": chosen}), toy_splits()) is None


def test_runs_outside_acms_space_are_not_recorded():
    fitnet = {"name": "fitnet", "temperature": 4.0}
    assert history_row(_results(fitnet, {"name": "kd"}), toy_splits()) is None
    plain = _results({"name": "ce"}, {"name": "plain"}, teacher=None)
    assert history_row(plain, toy_splits()) is None
