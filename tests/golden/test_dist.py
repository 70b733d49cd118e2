"""Golden tests of DIST (Huang et al. 2022): Pearson relations of tempered probabilities."""

import math

import pytest
import torch

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method

from .helpers import linear_logits_pair, method_from_yaml

STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.5, 2.5, 0.0, 1.0]]
TEACHER = [[3.0, -2.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, -1.0, 4.0]]


def _softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in a))
    vb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (va * vb)


def _reference_dist(student, teacher, t):
    """(inter, intra) relation losses, without the tau^2 and weights, in plain floats."""
    y_s = [_softmax(r, t) for r in student]
    y_t = [_softmax(r, t) for r in teacher]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(y_s, y_t, strict=True)) / len(y_s)
    cols_s, cols_t = list(zip(*y_s, strict=True)), list(zip(*y_t, strict=True))
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols_s, cols_t, strict=True)) / len(cols_s)
    return inter, intra


def _terms(method, s, t, y=None):
    y = torch.zeros(len(s), dtype=torch.long) if y is None else y
    return method(ModelOutputs(s), ModelOutputs(t), y, torch.arange(len(s)))


def test_identical_logits_give_zero():
    # zero up to the reference's eps 1e-8 next to small centred norms (and times 2 * tau^2)
    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 3
    terms = _terms(build_method({"name": "dist"}), z, z.clone())
    assert terms["dist_inter"].item() == pytest.approx(0.0, abs=1e-3)
    assert terms["dist_intra"].item() == pytest.approx(0.0, abs=1e-3)


def test_student_mixing_teacher_with_uniform_scores_zero():
    """Pearson is blind to a positive affine map: p_s = a p_t + (1 - a) / C matches exactly,
    although the KL between them is not zero."""
    t_logits = torch.randn(6, 5) * 3
    p_t = torch.softmax(t_logits / 4.0, dim=1)
    s_logits = 4.0 * torch.log(0.3 * p_t + 0.7 / 5)
    terms = _terms(build_method({"name": "dist"}), s_logits, t_logits)
    assert terms["dist_inter"].item() == pytest.approx(0.0, abs=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(0.0, abs=1e-4)


def test_reversed_binary_predictions_give_maximum():
    """Two classes, student = teacher's probabilities swapped: every correlation is -1, so
    each relation loss is 2 (times tau^2 and its weight)."""
    t_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    s_logits = t_logits.flip(1)
    method = build_method({"name": "dist", "beta": 1.0, "gamma": 0.5, "temperature": 2.0})
    terms = _terms(method, s_logits, t_logits)
    assert terms["dist_inter"].item() == pytest.approx(1.0 * 4.0 * 2.0, rel=1e-5)
    assert terms["dist_intra"].item() == pytest.approx(0.5 * 4.0 * 2.0, rel=1e-5)


def test_value_matches_independent_computation():
    method = build_method(
        {"name": "dist", "beta": 2.0, "gamma": 2.0, "temperature": 4.0, "ce_weight": 1.0}
    )
    labels = torch.tensor([0, 2, 3])
    terms = _terms(method, torch.tensor(STUDENT), torch.tensor(TEACHER), labels)
    inter, intra = _reference_dist(STUDENT, TEACHER, 4.0)
    ce = -sum(math.log(_softmax(r, 1.0)[c]) for r, c in zip(STUDENT, [0, 2, 3], strict=True)) / 3
    assert set(terms) == {"ce", "dist_inter", "dist_intra"}
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["dist_inter"].item() == pytest.approx(2 * 16 * inter, rel=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(2 * 16 * intra, rel=1e-4)
    # pinned figures of the same case
    assert terms["dist_inter"].item() == pytest.approx(9.4727688, rel=1e-5)
    assert terms["dist_intra"].item() == pytest.approx(7.5475197, rel=1e-5)


def test_invariances_shift_and_joint_permutation():
    method = build_method({"name": "dist"})
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    base = _terms(method, s, t)
    shifted = _terms(method, s + 5.0, t - torch.tensor([[1.0], [2.0], [3.0]]))
    perm_c, perm_b = torch.tensor([2, 0, 3, 1]), torch.tensor([1, 2, 0])
    permuted = _terms(method, s[perm_b][:, perm_c], t[perm_b][:, perm_c])
    for other in (shifted, permuted):
        for term in ("dist_inter", "dist_intra"):
            assert other[term].item() == pytest.approx(base[term].item(), rel=1e-5)


def test_batch_of_one_stays_finite_and_low_precision_is_fp32():
    method = build_method({"name": "dist"})
    terms = _terms(method, torch.tensor(STUDENT[:1]), torch.tensor(TEACHER[:1]))
    assert all(torch.isfinite(v) for v in terms.values())
    low = _terms(method, torch.tensor(STUDENT).bfloat16(), torch.tensor(TEACHER).bfloat16())
    assert all(v.dtype == torch.float32 for v in low.values())


def test_mismatched_logits_raise_user_error():
    with pytest.raises(UserError, match="method 'dist'.*\\(3, 4\\).*\\(3, 6\\)"):
        _terms(build_method({"name": "dist"}), torch.zeros(3, 4), torch.zeros(3, 6))


def test_one_step_reduces_loss_and_only_student_gets_gradients():
    pair = linear_logits_pair()
    pair.check_one_step(build_method({"name": "dist"}), lr=0.05)


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("dist")
    assert (method.beta, method.gamma, method.temperature, method.ce_weight) == (2, 2, 4, 1)
