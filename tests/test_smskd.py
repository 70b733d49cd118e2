"""SMSKD (METHODS.md section 3): stages, the frozen reference, TCP weights, the stage loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs
from hpmkd.methods.composite import build_children
from hpmkd.methods.smskd import SMSKD
from hpmkd.models import FeatureTap, build_model
from tests.conftest import TINY


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", num_classes=4, input_shape=(5,), hidden=[8])


def _smskd(student, **kwargs) -> SMSKD:
    stages = build_children([{"name": "kd"}, {"name": "kd", "temperature": 2.0}])
    method = SMSKD(stages, [0, 3], student, **kwargs)
    method.student_features = ("input",)
    return method


def _outputs(student, x):
    with FeatureTap(student, ["input"]) as tap:
        logits = student(x)
        return ModelOutputs(logits, dict(tap.features))


def test_stage_boundaries_and_reference_snapshot_at_transition():
    student = _student()
    method = _smskd(student)
    assert [method.stage_at(e) for e in range(6)] == [0, 0, 0, 1, 1, 1]
    for epoch in range(3):
        method.epoch = epoch
        method.on_epoch_start(student)
    assert int(method.reference_stage) == 0
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # training moved the student during stage 1
    method.epoch = 3
    method.on_epoch_start(student)
    assert int(method.reference_stage) == 1
    for (name, p), (_, r) in zip(
        student.named_parameters(), method.reference.named_parameters(), strict=True
    ):
        assert torch.equal(p, r), name  # equal to the student at the transition
        assert not r.requires_grad
    snapshot = {k: v.clone() for k, v in method.reference.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # stage 2 trains on ...
    method.epoch = 4
    method.on_epoch_start(student)  # ... the reference stays as it was at the transition
    assert all(torch.equal(v, snapshot[k]) for k, v in method.reference.state_dict().items())
    method.train()
    assert not method.reference.training


@pytest.mark.parametrize(
    "weight", ["teacher_tcp", "one_minus_teacher_tcp", "reference_tcp", "none"]
)
def test_stage_two_loss_is_the_sum_of_its_terms(weight):
    student = _student()
    method = _smskd(student, lambda_c=0.7, lambda_r=0.4, tau=3.0, weight=weight)
    method.epoch = 3
    method.on_epoch_start(student)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))  # the student has moved away from the reference
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    teacher_logits = torch.randn(6, 4)
    out = _outputs(student, x)
    terms = method(out, ModelOutputs(teacher_logits), y, torch.arange(6))

    s = out.logits
    with torch.no_grad():
        r = method.reference(x)
    p_t = teacher_logits.softmax(1)[torch.arange(6), y]
    p_r = r.softmax(1)[torch.arange(6), y]
    w = {
        "teacher_tcp": p_t,
        "one_minus_teacher_tcp": 1 - p_t,
        "reference_tcp": p_r,
        "none": torch.ones(6),
    }[weight]
    log_ps, ref_p = F.log_softmax(s / 3.0, 1), F.softmax(r / 3.0, 1)
    kl = (ref_p * (ref_p.log() - log_ps)).sum(1) * 9.0
    stage_kd = (
        0.9
        * (
            F.softmax(teacher_logits / 2, 1)
            * (F.log_softmax(teacher_logits / 2, 1) - F.log_softmax(s / 2, 1))
        )
        .sum(1)
        .mean()
        * 4
    )
    assert set(terms) == {"kd/ce", "kd/kd", "ce", "adaref"}
    assert terms["kd/ce"].item() == 0.0  # the stage method's own CE is off: CE counts once
    assert terms["ce"].item() == pytest.approx(0.7 * F.cross_entropy(s, y).item(), rel=1e-5)
    assert terms["kd/kd"].item() == pytest.approx(stage_kd.item(), rel=1e-5)
    assert terms["adaref"].item() == pytest.approx(0.4 * (w * kl).mean().item(), rel=1e-5)
    assert method.step_metrics()["tcp_weight"].item() == pytest.approx(w.mean().item(), rel=1e-5)


def test_tcp_weights_are_detached_and_stage_one_has_no_reference_term():
    student = _student()
    method = _smskd(student)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    teacher_logits = torch.randn(4, 4, requires_grad=True)
    method.epoch = 0
    assert "adaref" not in method(
        _outputs(student, x), ModelOutputs(teacher_logits), y, torch.arange(4)
    )
    assert not method.sample_weights(teacher_logits, teacher_logits, y).requires_grad
    no_ref = _smskd(student, reference=False)
    no_ref.epoch = 3
    no_ref.on_epoch_start(student)
    assert "adaref" not in no_ref(
        _outputs(student, x), ModelOutputs(teacher_logits), y, torch.arange(4)
    )


def test_forgetting_rate_counts_right_then_wrong_over_right_before():
    from hpmkd.strategies.smskd import forgetting_rates

    end_1 = torch.tensor([True, True, True, True, False, False])
    end_2 = torch.tensor([True, False, True, False, True, False])
    end_3 = torch.tensor([True, True, True, True, True, True])
    assert forgetting_rates([end_1, end_2, end_3]) == pytest.approx([50.0, 0.0])


def test_bad_stage_plans_are_user_errors():
    student = _student()
    with pytest.raises(UserError, match="strictly increasing"):
        SMSKD(build_children([{"name": "kd"}, {"name": "kd"}]), [0, 0], student)
    with pytest.raises(UserError, match="unknown weight"):
        _smskd(student, weight="tcp")


@pytest.mark.slow
def test_smskd_cli_transitions_at_the_configured_epoch_and_reports_forgetting(run_cli):
    run = run_cli(
        "train", "+strategy=smskd", "strategy.methods=[dkd,kd]", "strategy.transitions=[2]",
        *TINY, "recipe.epochs=4",
    )  # fmt: skip
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["details"]["stages"] == [
        {"method": "dkd", "start_epoch": 0},
        {"method": "kd", "start_epoch": 2},
    ]
    (forgetting,) = results["details"]["forgetting_pct"]
    assert 0.0 <= forgetting <= 100.0
    assert results["test_acc"] > 50
    run_dir = next(run.outputs.rglob("results.json")).parent
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/stage")]
    stage_by_epoch = {int(r["epoch"]): float(r["train/stage"]) for r in rows}
    assert stage_by_epoch == {0: 1.0, 1: 1.0, 2: 2.0, 3: 2.0}
    assert all(r["train/adaref"] for r in rows if float(r["train/stage"]) == 2.0)
    # per-epoch curves in results.json stay aligned with epochs: stage-2 terms start at epoch 2
    adaref = results["curves"]["adaref"]
    assert adaref[:2] == [None, None] and all(v is not None for v in adaref[2:])
    assert len(adaref) == 4 and results["curves"]["stage"] == [1.0, 1.0, 2.0, 2.0]


@pytest.mark.slow
def test_aggregate_sums_all_methods_in_one_stage(run_cli):
    run = run_cli("train", "+strategy=aggregate", "strategy.methods=[dkd,kd]", *TINY)
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["strategy"] == "aggregate" and results["test_acc"] > 50


@pytest.mark.slow
def test_run_killed_in_stage_two_resumes_in_stage_two_with_its_reference(run_cli, monkeypatch):
    import csv

    from hpmkd.engine.module import DistillModule

    args = ["train", "+strategy=smskd", "strategy.methods=[kd,kd]", "strategy.transitions=[2]"]
    args += [*TINY, "recipe.epochs=4", "checkpoint_every_s=0"]  # last.ckpt every epoch
    seen = {}
    original = DistillModule.on_train_epoch_start

    def crash_in_stage_two(self):
        original(self)
        if not isinstance(self.method, SMSKD):  # the teacher's own training
            return
        seen[self.current_epoch] = self.method.reference.state_dict()["classifier.weight"].clone()
        if self.current_epoch == 3:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(DistillModule, "on_train_epoch_start", crash_in_stage_two)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_cli(*args)
    reference_before = seen[3]

    def record(self):
        original(self)
        if not isinstance(self.method, SMSKD):
            return
        seen["resumed"] = (self.current_epoch, int(self.method.reference_stage))
        seen["resumed_reference"] = self.method.reference.state_dict()["classifier.weight"].clone()

    with monkeypatch.context() as patch:
        patch.setattr(DistillModule, "on_train_epoch_start", record)
        resumed = run_cli(*args, "resume=true")
    assert resumed.code == 0, resumed.err
    assert seen["resumed"] == (3, 1)  # epoch 3, reference taken at the stage-2 transition
    assert torch.equal(seen["resumed_reference"], reference_before)
    run_dir = next(resumed.outputs.rglob("results.json")).parent
    with open(run_dir / "csv" / "metrics.csv") as f:
        trained = {r["epoch"] for r in csv.DictReader(f) if r.get("train/loss")}
    assert trained == {"3"}  # finished epochs and stages are not trained again
