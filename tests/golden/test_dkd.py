"""Golden tests of DKD (Zhao et al. 2022; METHODS.md 1.2)."""

import math

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method
from hpmkd.methods.functional import tempered_kl

from .helpers import linear_logits_pair, method_from_yaml

STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.5, 2.5, 0.0, 1.0]]
TEACHER = [[3.0, -2.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, -1.0, 4.0]]
LABELS = [0, 2, 3]


def _softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _reference_dkd(student, teacher, labels, t):
    """(TCKD, NCKD) batch means in plain floats, straight from the paper's definitions."""
    tckd, nckd = [], []
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        tckd.append(_kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]]))
        hat_s = [p / (1 - p_s[y]) for c, p in enumerate(p_s) if c != y]
        hat_t = [p / (1 - p_t[y]) for c, p in enumerate(p_t) if c != y]
        nckd.append(_kl(hat_t, hat_s))
    n = len(labels)
    return t * t * sum(tckd) / n, t * t * sum(nckd) / n


def _terms(method, s, t, y, epoch=100):
    method.epoch = epoch
    return method(ModelOutputs(s), ModelOutputs(t), y, torch.arange(len(y)))


def test_identical_logits_give_zero_kd_terms():
    z = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    terms = _terms(build_method({"name": "dkd"}), z, z.clone(), y)
    assert terms["tckd"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["nckd"].item() == pytest.approx(0.0, abs=1e-6)


def test_value_matches_independent_computation():
    method = build_method({"name": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0})
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    terms = _terms(method, s, t, y)
    tckd, nckd = _reference_dkd(STUDENT, TEACHER, LABELS, 4.0)
    ce = -sum(math.log(_softmax(r, 1.0)[c]) for r, c in zip(STUDENT, LABELS, strict=True)) / 3
    assert set(terms) == {"ce", "tckd", "nckd"}
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(8.0 * nckd, rel=1e-5)
    # pinned figures of the same case
    assert terms["tckd"].item() == pytest.approx(0.6638367, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(5.9893584, rel=1e-5)


def test_decomposition_of_classic_kd():
    """Per sample: KD = TCKD + (1 - p_t[gt]) * NCKD (the paper's Eq. 3)."""
    method = build_method({"name": "dkd", "alpha": 1.0, "beta": 1.0, "warmup_epochs": 0})
    for row in range(3):
        s, t = torch.tensor(STUDENT[row : row + 1]), torch.tensor(TEACHER[row : row + 1])
        y = torch.tensor(LABELS[row : row + 1])
        terms = _terms(method, s, t, y)
        p_gt = torch.softmax(t / 4.0, dim=1)[0, y].item()
        kd = tempered_kl(s, t, 4.0).item()
        assert kd == pytest.approx(terms["tckd"].item() + (1 - p_gt) * terms["nckd"].item(), 1e-5)


def test_the_two_parts_are_decoupled():
    method = build_method({"name": "dkd", "warmup_epochs": 0})
    y = torch.tensor([1, 0])
    t = torch.tensor([[0.5, 2.0, -1.0, 0.3], [1.0, 0.0, 2.0, -1.0]])
    # only the target logit differs: same non-target distribution, NCKD is exactly zero
    s = t.clone()
    s[0, 1] += 3.0
    s[1, 0] -= 2.0
    terms = _terms(method, s, t, y)
    assert terms["nckd"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["tckd"].item() > 0.1
    # non-target logits permuted, target probability kept: TCKD is exactly zero
    s = t.clone()
    s[0, [0, 2, 3]] = t[0, [3, 0, 2]]
    s[1, [1, 2, 3]] = t[1, [2, 3, 1]]
    terms = _terms(method, s, t, y)
    assert terms["tckd"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["nckd"].item() > 0.1


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 20), (9, 0.5), (19, 1.0), (150, 1.0)])
def test_linear_warmup_over_twenty_epochs(epoch, factor):
    method = build_method({"name": "dkd"})
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    full = _terms(method, s, t, y, epoch=1000)
    warm = _terms(method, s, t, y, epoch=epoch)
    assert warm["tckd"].item() == pytest.approx(factor * full["tckd"].item(), rel=1e-6)
    assert warm["nckd"].item() == pytest.approx(factor * full["nckd"].item(), rel=1e-6)
    assert warm["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-6)
    no_warmup = build_method({"name": "dkd", "warmup_epochs": 0})
    assert _terms(no_warmup, s, t, y, epoch=0)["nckd"].item() == pytest.approx(
        full["nckd"].item(), rel=1e-6
    )


def test_beta_scales_only_nckd_and_large_logits_stay_finite():
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    two = _terms(build_method({"name": "dkd", "beta": 2.0}), s, t, y)
    six = _terms(build_method({"name": "dkd", "beta": 6.0}), s, t, y)
    assert six["nckd"].item() == pytest.approx(3 * two["nckd"].item(), rel=1e-6)
    assert six["tckd"].item() == pytest.approx(two["tckd"].item(), rel=1e-6)
    big = torch.tensor([[1000.0, -1000.0, 0.0], [-800.0, 900.0, 0.0]])
    terms = _terms(build_method({"name": "dkd"}), big, -big, torch.tensor([0, 1]))
    assert all(torch.isfinite(v) for v in terms.values())
    low = _terms(build_method({"name": "dkd"}), s.bfloat16(), t.bfloat16(), y)
    assert all(v.dtype == torch.float32 for v in low.values())


def test_mismatched_logits_raise_user_error():
    with pytest.raises(UserError, match="method 'dkd'.*\\(3, 4\\).*\\(3, 5\\)"):
        _terms(build_method({"name": "dkd"}), torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3))


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    pair = linear_logits_pair()
    method = build_method({"name": "dkd"})
    method.epoch = 30
    pair.check_one_step(method, lr=0.05)


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("dkd")
    assert (method.alpha, method.beta, method.temperature) == (1.0, 8.0, 4.0)
    assert (method.ce_weight, method.warmup_epochs) == (1.0, 20)
