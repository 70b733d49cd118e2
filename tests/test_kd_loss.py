"""Golden tests of Hinton KD (METHODS.md 1.1): the bugs popular code has shipped must fail here."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpmkd.methods import ModelOutputs, build_method
from hpmkd.methods.functional import tempered_kl


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _reference_kd(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T^2 * mean over samples of sum_c p_t log(p_t / p_s), in plain Python floats."""
    per_sample = []
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        per_sample.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True)))
    return t * t * sum(per_sample) / len(per_sample)


STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.5, 2.5, 0.0, 1.0]]
TEACHER = [[3.0, -2.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, -1.0, 4.0]]


def test_identical_logits_give_zero():
    z = torch.randn(16, 10)
    assert tempered_kl(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_value_matches_independent_computation():
    expected = _reference_kd(STUDENT, TEACHER, 4.0)
    got = tempered_kl(torch.tensor(STUDENT), torch.tensor(TEACHER), 4.0).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # pinned figure of the same case, so a change in the reference cannot hide a change here
    assert got == pytest.approx(1.1030974, rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 8.0])
def test_temperature_squared_scaling(t):
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    raw = F.kl_div(F.log_softmax(s / t, 1), F.softmax(te / t, 1), reduction="sum") / len(s)
    assert tempered_kl(s, te, t).item() == pytest.approx(t * t * raw.item(), rel=1e-5)
    assert tempered_kl(s, te, t).item() == pytest.approx(
        _reference_kd(STUDENT, TEACHER, t), rel=1e-5
    )


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_batchmean_not_mean_over_classes():
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    per_element_mean = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(te / 4, 1), reduction="mean")
    got = tempered_kl(s, te, 4.0)
    assert got.item() == pytest.approx(16 * per_element_mean.item() * s.shape[1], rel=1e-5)
    # a batch of copies has the same value as one sample: averaged over the batch, not summed
    one = tempered_kl(s[:1], te[:1], 4.0)
    assert tempered_kl(s[:1].repeat(5, 1), te[:1].repeat(5, 1), 4.0).item() == pytest.approx(
        one.item(), rel=1e-5
    )


def test_teacher_distribution_comes_first():
    # a confident teacher against a flat student: KL(p_t || p_s) and KL(p_s || p_t) differ a lot
    student, teacher = [[0.0, 0.0, 0.0]], [[12.0, 0.0, 0.0]]
    got = tempered_kl(torch.tensor(student), torch.tensor(teacher), 1.0).item()
    assert got == pytest.approx(_reference_kd(student, teacher, 1.0), rel=1e-5)
    assert abs(got - _reference_kd(teacher, student, 1.0)) > 1.0


def test_shift_invariance_and_no_nan_on_large_logits():
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert tempered_kl(s + 7.0, te - 3.0, 4.0).item() == pytest.approx(
        tempered_kl(s, te, 4.0).item(), rel=1e-5
    )
    big = torch.tensor([[1000.0, -1000.0, 0.0]])
    value = tempered_kl(big, -big, 1.0)
    assert torch.isfinite(value)


def test_low_precision_inputs_computed_in_fp32():
    s = torch.tensor(STUDENT, dtype=torch.bfloat16)
    te = torch.tensor(TEACHER, dtype=torch.bfloat16)
    value = tempered_kl(s, te, 4.0)
    assert value.dtype == torch.float32
    expected = _reference_kd(s.float().tolist(), te.float().tolist(), 4.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_kd_method_weights_ce_and_kl():
    method = build_method({"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9})
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    labels = torch.tensor([0, 2, 3])
    terms = method(ModelOutputs(s), ModelOutputs(te), labels, torch.arange(3))
    ce = (
        -sum(math.log(_softmax(row, 1.0)[y]) for row, y in zip(STUDENT, [0, 2, 3], strict=True)) / 3
    )
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(0.1 * ce, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.9 * _reference_kd(STUDENT, TEACHER, 4.0), rel=1e-5)


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    torch.manual_seed(0)
    student = torch.nn.Linear(8, 5)
    teacher = torch.nn.Linear(8, 5).requires_grad_(False)
    method = build_method({"name": "kd"})
    x, y = torch.randn(32, 8), torch.randint(0, 5, (32,))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)

    def loss() -> torch.Tensor:
        terms = method(ModelOutputs(student(x)), ModelOutputs(teacher(x)), y, torch.arange(32))
        return sum(terms.values())

    before = loss()
    before.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    assert loss().item() < before.item()


def test_unknown_method_lists_valid_names():
    from hpmkd.errors import UserError

    with pytest.raises(UserError, match="unknown method 'nope'.*kd"):
        build_method({"name": "nope"})
