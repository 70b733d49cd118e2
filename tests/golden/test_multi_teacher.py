"""Golden tests of AWMT, attention-weighted multi-teacher distillation (METHODS.md 2.3)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from hpmkd.data.augment import BatchTransform
from hpmkd.engine.context import prepare_method
from hpmkd.engine.module import DistillModule
from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method
from hpmkd.methods.functional import tempered_kl
from hpmkd.models import FeatureTap, build_model
from hpmkd.models.ensemble import TeacherEnsemble

from .helpers import Logits, TinyPair, check_one_step, method_from_yaml, setup_method, sgd_step

# two samples, K = 2 teachers, C = 3 classes
TEACHERS = [[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]], [[-1.0, 3.0, 0.0], [1.0, 1.0, -2.0]]]
STUDENT = [[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]]
LABELS = [0, 1]


def _method(k: int = 2, c: int = 3, **params) -> nn.Module:
    method = build_method({"name": "multi_teacher", **params})
    return setup_method(method, {}, {"teacher_logits": (4, k, c)}, num_classes=c)


def _terms(method, z_s: Tensor, z_t: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
    labels = torch.zeros(len(z_s), dtype=torch.long) if labels is None else labels
    teacher = ModelOutputs(z_t.mean(dim=1), {"teacher_logits": z_t})
    return method(ModelOutputs(z_s), teacher, labels, torch.arange(len(z_s)))


def _fix_weights(method, weights: list[float]) -> None:
    """Make the attention network output ``weights`` for every input."""
    last = method.attention[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(weights).log())


def _random(b: int = 6, k: int = 3, c: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 2, torch.randn(b, k, c, generator=g) * 2


def _kl(p: Tensor, z_s: Tensor, t: float) -> Tensor:
    """``T^2 * KL(p || softmax(z_s / T))``, batch mean, by the definition."""
    q = torch.softmax(z_s / t, dim=1)
    return t * t * (p * (p.log() - q.log())).sum(dim=1).mean()


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


# --- weights ---------------------------------------------------------------------------------


def test_attention_weights_are_on_the_simplex_and_differ_between_samples():
    torch.manual_seed(0)
    method = _method(k=3, c=5)
    z_s, z_t = _random()
    a, log_a = method.weights(z_t, z_s)
    assert a.shape == (6, 3) and (a > 0).all()
    assert torch.allclose(a.sum(dim=1), torch.ones(6))
    assert torch.allclose(log_a.exp(), a)
    assert not torch.allclose(a[0], a[1], atol=1e-4)


def test_uniform_weights_are_exactly_one_over_k_and_the_target_is_the_plain_mean():
    method = _method(k=3, c=5, weighting="uniform", alpha=1.0)
    z_s, z_t = _random()
    a, _ = method.weights(z_t, z_s)
    assert torch.equal(a, torch.full((6, 3), 1 / 3))
    terms = _terms(method, z_s, z_t)
    assert set(terms) == {"ce", "kd"}
    mean_probs = torch.softmax(z_t / 4.0, dim=2).mean(dim=1)
    assert terms["kd"].item() == pytest.approx(_kl(mean_probs, z_s, 4.0).item(), rel=1e-5)
    assert method.extra_parameters() == 0


def test_student_input_changes_the_weights_only_when_asked():
    torch.manual_seed(0)
    z_s, z_t = _random()
    other = torch.randn(6, 5) * 3
    with_student = _method(k=3, c=5, attention_input="teacher_probs_and_student")
    assert with_student.attention[0].in_features == 3 * 5 + 5
    a1, _ = with_student.weights(z_t, z_s)
    a2, _ = with_student.weights(z_t, other)
    assert not torch.allclose(a1, a2, atol=1e-4)
    teachers_only = _method(k=3, c=5)
    assert teachers_only.attention[0].in_features == 3 * 5
    assert torch.equal(teachers_only.weights(z_t, z_s)[0], teachers_only.weights(z_t, other)[0])


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mixing", ["probs", "logits"])
def test_identical_teachers_reduce_to_classic_kd(mixing):
    torch.manual_seed(0)
    method = _method(k=3, c=5, mixing=mixing, alpha=0.7, temperature=3.0)
    z_s, z_t = _random()
    same = z_t[:, :1].expand(-1, 3, -1).contiguous()
    terms = _terms(method, z_s, same)
    expected = 0.7 * tempered_kl(z_s, same[:, 0], 3.0)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_both_mixings_match_a_hand_written_attention_network_and_mixture():
    torch.manual_seed(0)
    z_s, z_t = _random()
    t, alpha = 2.0, 0.6
    results = {}
    for mixing in ("probs", "logits"):
        torch.manual_seed(1)
        method = _method(k=3, c=5, mixing=mixing, alpha=alpha, temperature=t)
        first, last = method.attention[0], method.attention[2]
        x = torch.softmax(z_t, dim=2).reshape(6, 15)
        h = torch.clamp(x @ first.weight.T + first.bias, min=0)
        a = torch.softmax(h @ last.weight.T + last.bias, dim=1)
        if mixing == "probs":
            p = (a[:, :, None] * torch.softmax(z_t / t, dim=2)).sum(dim=1)
        else:
            p = torch.softmax((a[:, :, None] * z_t).sum(dim=1) / t, dim=1)
        results[mixing] = _terms(method, z_s, z_t)["kd"].item()
        assert results[mixing] == pytest.approx(alpha * _kl(p, z_s, t).item(), rel=1e-5)
    assert results["probs"] != pytest.approx(results["logits"], rel=1e-3)


def test_pinned_values_of_fixed_weights_in_plain_floats():
    """a = (0.75, 0.25) for both samples, T 2, alpha 0.5, beta 0.1, by the formulas."""
    a, t = [0.75, 0.25], 2.0
    expected = {}
    for mixing in ("probs", "logits"):
        kl, ens_ce = 0.0, 0.0
        for teachers, s_row, y in zip(TEACHERS, STUDENT, LABELS, strict=True):
            if mixing == "probs":
                probs = [_softmax(row, t) for row in teachers]
                p = [sum(a[k] * probs[k][c] for k in range(2)) for c in range(3)]
                p1 = [sum(a[k] * _softmax(teachers[k], 1.0)[c] for k in range(2)) for c in range(3)]
            else:
                mixed = [sum(a[k] * teachers[k][c] for k in range(2)) for c in range(3)]
                p, p1 = _softmax(mixed, t), _softmax(mixed, 1.0)
            q = _softmax(s_row, t)
            kl += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q, strict=True)) / 2
            ens_ce += -math.log(p1[y]) / 2
        expected[mixing] = (0.5 * t * t * kl, ens_ce)
    ce = sum(-math.log(_softmax(r, 1.0)[y]) for r, y in zip(STUDENT, LABELS, strict=True)) / 2
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))

    got = {}
    for mixing, (kd, ens_ce) in expected.items():
        method = _method(
            mixing=mixing, temperature=t, alpha=0.5, beta=0.1, attention_training="ensemble_ce"
        )
        _fix_weights(method, a)
        terms = _terms(method, torch.tensor(STUDENT), torch.tensor(TEACHERS), torch.tensor(LABELS))
        assert set(terms) == {"ce", "kd", "entropy", "ensemble_ce"}
        assert terms["ce"].item() == pytest.approx(0.5 * ce, rel=1e-5)
        assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
        assert terms["entropy"].item() == pytest.approx(-0.1 * entropy, rel=1e-5)
        assert terms["ensemble_ce"].item() == pytest.approx(ens_ce, rel=1e-5)
        got[mixing] = (terms["kd"].item(), terms["ensemble_ce"].item())
    # pinned figures of the same case
    assert got["probs"] == pytest.approx((0.12217856, 0.28995800), rel=1e-5)
    assert got["logits"] == pytest.approx((0.14437343, 0.21781370), rel=1e-5)


def test_kd_is_finite_when_ensemble_probabilities_underflow():
    method = _method(k=2, c=3, mixing="probs", temperature=1.0)
    z_t = torch.tensor([[[200.0, 0.0, -200.0], [150.0, -150.0, 0.0]]])
    z_s = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    terms = _terms(method, z_s, z_t)
    sum(terms.values()).backward()
    assert torch.isfinite(terms["kd"])
    assert all(torch.isfinite(p.grad).all() for p in method.parameters())
    assert torch.isfinite(z_s.grad).all()


# --- entropy regulariser ---------------------------------------------------------------------


def test_entropy_term_is_lower_for_more_uniform_weights():
    z_s, z_t = _random(k=2, c=3)
    values = []
    for weights in ([0.95, 0.05], [0.7, 0.3], [0.5, 0.5]):
        method = _method(k=2, c=3, beta=0.1)
        _fix_weights(method, weights)
        values.append(_terms(method, z_s, z_t)["entropy"].item())
    assert values[0] > values[1] > values[2]
    assert values[2] == pytest.approx(-0.1 * math.log(2), rel=1e-6)


def test_entropy_gradient_step_makes_the_weights_more_uniform():
    z_s, z_t = _random(k=2, c=3)
    method = _method(k=2, c=3, beta=1.0)
    _fix_weights(method, [0.9, 0.1])
    _terms(method, z_s, z_t)["entropy"].backward()
    before = method.step_metrics()["attention_entropy"].item()
    sgd_step(method.parameters(), lr=0.5)
    _terms(method, z_s, z_t)
    assert method.step_metrics()["attention_entropy"].item() > before


# --- what trains the attention network -------------------------------------------------------


def _attention_grads(term: Tensor, method) -> list[Tensor | None]:
    return list(torch.autograd.grad(term, method.attention.parameters(), allow_unused=True))


def test_joint_mode_kd_term_trains_the_attention_network():
    torch.manual_seed(0)
    method = _method(k=3, c=5)
    terms = _terms(method, *_random())
    grads = _attention_grads(terms["kd"], method)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert "ensemble_ce" not in terms


def test_ensemble_ce_mode_trains_the_attention_network_on_the_ensemble_only():
    torch.manual_seed(0)
    method = _method(k=3, c=5, attention_training="ensemble_ce")
    z_s, z_t = _random()
    z_s.requires_grad_(True)  # the KD term has a graph: to the student only
    terms = _terms(method, z_s, z_t, torch.tensor([0, 1, 2, 3, 4, 0]))
    assert all(g is None for g in _attention_grads(terms["kd"], method))
    assert all(g.abs().sum() > 0 for g in _attention_grads(terms["ensemble_ce"], method))


# --- metrics ---------------------------------------------------------------------------------


def test_step_metrics_report_mean_weights_and_entropy():
    method = _method(k=2, c=3)
    assert method.step_metrics() == {}
    _fix_weights(method, [0.75, 0.25])
    _terms(method, torch.tensor(STUDENT), torch.tensor(TEACHERS))
    metrics = method.step_metrics()
    assert set(metrics) == {"teacher_weight_0", "teacher_weight_1", "attention_entropy"}
    assert metrics["teacher_weight_0"].item() == pytest.approx(0.75, rel=1e-6)
    assert metrics["teacher_weight_1"].item() == pytest.approx(0.25, rel=1e-6)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert metrics["attention_entropy"].item() == pytest.approx(h, rel=1e-6)
    assert not any(v.requires_grad for v in metrics.values())


def test_step_metrics_are_batch_means_of_varying_weights():
    torch.manual_seed(0)
    method = _method(k=3, c=5)
    z_s, z_t = _random()
    _terms(method, z_s, z_t)
    a, _ = method.weights(z_t, z_s)
    metrics = method.step_metrics()
    for k in range(3):
        assert metrics[f"teacher_weight_{k}"].item() == pytest.approx(a[:, k].mean().item())
    h = -(a * a.log()).sum(dim=1).mean()
    assert metrics["attention_entropy"].item() == pytest.approx(h.item(), rel=1e-5)


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arg, valid",
    [
        ("weighting", "attention, uniform"),
        ("mixing", "probs, logits"),
        ("attention_input", "teacher_probs, teacher_probs_and_student"),
        ("attention_training", "joint, ensemble_ce"),
    ],
)
def test_unknown_choices_list_the_valid_ones(arg, valid):
    with pytest.raises(UserError, match=f"unknown {arg} 'nope'; valid: {valid}$"):
        build_method({"name": "multi_teacher", arg: "nope"})


@pytest.mark.parametrize(
    "params", [{"alpha": 1.5}, {"beta": -0.1}, {"hidden": 0}, {"temperature": 0}]
)
def test_out_of_range_numbers_are_user_errors(params):
    with pytest.raises(UserError, match="method 'multi_teacher' needs"):
        build_method({"name": "multi_teacher", **params})


def test_a_single_teacher_is_a_user_error():
    single = build_model("mlp_small", num_classes=3, input_shape=(4,))
    method = build_method({"name": "multi_teacher"})
    with pytest.raises(UserError, match="needs a teacher ensemble.*'mlp_small' is a single model"):
        method.bind_features(single, single)
    with pytest.raises(UserError, match="needs a teacher ensemble"):
        setup_method(method, {}, {"teacher_logits": (4, 3)})


def test_yaml_holds_exactly_the_constructor_arguments():
    method = method_from_yaml("multi_teacher")
    assert (method.temperature, method.alpha, method.beta, method.hidden) == (4.0, 0.9, 0.1, 64)
    assert (method.weighting, method.mixing) == ("attention", "probs")
    assert (method.attention_input, method.attention_training) == ("teacher_probs", "joint")
    assert method.teacher_features == ("teacher_logits",)


# --- training steps --------------------------------------------------------------------------


class _Tapped(nn.Module):
    """A teacher ensemble that returns ``ModelOutputs`` with its stacked logits."""

    def __init__(self, ensemble: TeacherEnsemble) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.tap = FeatureTap(ensemble, ["teacher_logits"])

    def forward(self, x: Tensor) -> ModelOutputs:
        return ModelOutputs(self.ensemble(x), dict(self.tap.features))


def _mlp_teachers() -> TeacherEnsemble:
    torch.manual_seed(0)
    teachers = [build_model("mlp_small", num_classes=3, input_shape=(4,)) for _ in range(2)]
    return TeacherEnsemble(teachers)


@pytest.mark.parametrize("attention_training", ["joint", "ensemble_ce"])
def test_one_step_reduces_loss_and_only_student_and_attention_get_gradients(attention_training):
    torch.manual_seed(0)
    teacher = _Tapped(_mlp_teachers()).requires_grad_(False).eval()
    pair = TinyPair(
        Logits(nn.Linear(4, 3)), teacher, torch.randn(16, 4), torch.randint(0, 3, (16,))
    )
    method = pair.setup(
        build_method({"name": "multi_teacher", "attention_training": attention_training})
    )
    expected = {"ce", "kd", "entropy"} | (
        {"ensemble_ce"} if attention_training != "joint" else set()
    )
    pair.check_one_step(method, lr=0.05, connectors=list(method.parameters()), expected=expected)


def test_uniform_one_step_has_no_connectors():
    torch.manual_seed(0)
    teacher = _Tapped(_mlp_teachers()).requires_grad_(False).eval()
    pair = TinyPair(
        Logits(nn.Linear(4, 3)), teacher, torch.randn(16, 4), torch.randint(0, 3, (16,))
    )
    method = pair.setup(build_method({"name": "multi_teacher", "weighting": "uniform"}))
    assert list(method.parameters()) == []
    pair.check_one_step(method, lr=0.05, expected={"ce", "kd"})


def test_engine_step_with_an_ensemble_of_mlp_teachers_lowers_the_loss():
    """What a run does: prepare_method's dry forward and setup, then DistillModule steps."""
    ensemble = _mlp_teachers()
    student = build_model("mlp_small", num_classes=3, input_shape=(4,))
    method = build_method({"name": "multi_teacher"})
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    data = SimpleNamespace(x_train=x, y_train=y, num_classes=3, name="toy")
    ctx = SimpleNamespace(transform=BatchTransform(is_image=False), data=data)
    prepare_method(ctx, student, method, ensemble)
    module = DistillModule(
        student=student,
        method=method,
        transform=BatchTransform(is_image=False),
        num_classes=3,
        optimizer=lambda params: None,
        teacher=ensemble,
    )
    params = [*student.parameters(), *method.parameters()]

    def loss() -> Tensor:
        return module.training_step((x, y, torch.arange(32)), 0)

    check_one_step(loss, params, ensemble.parameters(), lr=0.05)
    assert "teacher_weight_1" in module.epoch_means()
