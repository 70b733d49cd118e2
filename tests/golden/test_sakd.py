"""Golden tests of SAKD, spot-adaptive distillation on AT and FitNet (hpmkd/methods/sakd.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpmkd.errors import UserError
from hpmkd.methods import MethodSetup, ModelOutputs, build_method
from hpmkd.methods.functional import tempered_kl_per_sample
from hpmkd.models import FeatureTap, build_model

from .helpers import method_from_yaml

SHAPE = (1, 8, 8)


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=4, input_shape=SHAPE)
    teacher = build_model("resnet14", num_classes=4, input_shape=SHAPE).requires_grad_(False)
    return student, teacher.eval()


def _outputs(model: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> ModelOutputs:
    with FeatureTap(model, names) as tap:
        logits = model(x)
        return ModelOutputs(logits, dict(tap.features))


def _ready(base: str = "at", **kwargs):
    """SAKD set up on resnet8 <- resnet14 as the engine does it, plus a batch of 6 and its
    outputs: (method, student, teacher, x, y, student outputs, teacher outputs)."""
    student, teacher = _models()
    method = build_method({"name": "sakd", "base": base, **kwargs})
    method.bind_features(student, teacher)
    x, y = torch.randn(6, *SHAPE), torch.tensor([0, 1, 2, 3, 0, 1])
    s_out = _outputs(student, method.student_features, x)
    with torch.no_grad():
        t_out = _outputs(teacher, method.teacher_features, x)
    method.setup(
        MethodSetup(
            {k: v.shape for k, v in s_out.features.items()},
            {k: v.shape for k, v in t_out.features.items()},
            num_classes=4,
            num_train=6,
        )
    )
    method.on_epoch_start(student)
    return method, student, teacher, x, y, s_out, t_out


def _force(method, guide: list[bool]) -> None:
    """Policy weights 0 and biases +-20: spot k (output last) guided iff ``guide[k]``."""
    with torch.no_grad():
        method.policy.weight.zero_()
        for k, on in enumerate(guide):
            method.policy.bias[2 * k] = 20.0 if on else -20.0
            method.policy.bias[2 * k + 1] = 0.0


def test_yaml_builds_the_method_and_the_base_gets_its_own_yaml_defaults():
    method = method_from_yaml("sakd")
    assert method.base.name == "at" and method.base.beta == 1000.0
    fitnet = build_method({"name": "sakd", "base": "fitnet", "base_cfg": {"beta": 7.0}})
    assert fitnet.base.name == "fitnet" and fitnet.base.beta == 7.0
    assert fitnet.base.regressor_relu is True  # from conf/method/fitnet.yaml


def test_unsupported_base_and_owned_settings_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"unsupported base 'crd'; supported: at, fitnet"):
        build_method({"name": "sakd", "base": "crd"})
    with pytest.raises(UserError, match="base_cfg may not set kd_weight"):
        build_method({"name": "sakd", "base": "at", "base_cfg": {"kd_weight": 1.0}})


def test_policy_sees_detached_pools_and_routes_per_sample_and_spot():
    method, *_, s_out, t_out = _ready()
    assert [s for s, _ in method.spots] == ["stage1", "stage2", "stage3"]
    assert method.policy.in_features == 64 + 64  # resnet14's then resnet8's pooled width
    # the paper's "homo" start: every spot guided, in eval mode and (bias 10) in training
    method.eval()
    assert method.decisions(s_out.features["pool"], t_out.features["pool"]).eq(1).all()
    # per-sample routing from the pooled features: spot 0 follows the sign of a pooled entry
    with torch.no_grad():
        method.policy.weight.zero_()
        method.policy.bias.zero_()
        method.policy.weight[0, 64] = 100.0  # "guide" logit of spot 0 = 100 * student pool[0]
    s_pool = torch.zeros(4, 64)
    s_pool[:, 0] = torch.tensor([1.0, -1.0, 2.0, -0.5])
    t_pool = torch.randn(4, 64)
    route = method.decisions(s_pool, t_pool)
    assert route[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert route[:, 1:].eq(0).all()  # ties (0 vs 0) go to "skip"


def test_training_decisions_are_hard_and_reproducible_with_a_seed():
    method, *_, s_out, t_out = _ready()
    with torch.no_grad():
        method.policy.bias.zero_()  # 50/50 at every spot: the Gumbel noise decides
    method.train()
    pools = (s_out.features["pool"], t_out.features["pool"])
    torch.manual_seed(3)
    first = method.decisions(*pools)
    torch.manual_seed(3)
    assert torch.equal(first, method.decisions(*pools))
    assert set(first.unique().tolist()) == {0.0, 1.0}  # hard, and both occur at 50/50


@pytest.mark.parametrize("base", ["at", "fitnet"])
def test_all_guided_equals_the_base_method_and_none_guided_gives_zero(base):
    method, student, teacher, x, y, s_out, t_out = _ready(base)
    method.eval()  # deterministic routing; FitNet's regressor BatchNorm on running statistics
    plain = build_method({"name": base})
    plain.bind_features(student, teacher)
    plain.pairs = method.base.pairs
    if base == "fitnet":
        plain.regressor = method.base.regressor
    own = plain(s_out, t_out, y, None)[base]
    kl = tempered_kl_per_sample(s_out.logits, t_out.logits, 4.0).mean()
    spots = len(method.spots) + 1
    _force(method, [True] * spots)
    terms = method(s_out, t_out, y, None)
    assert terms[base].item() == pytest.approx(own.item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert "policy" not in terms  # the policy learns in training only
    _force(method, [False] * spots)
    terms = method(s_out, t_out, y, None)
    assert terms[base].item() == 0.0 and terms["kd"].item() == 0.0
    assert terms["ce"].item() > 0


def _reference_at_sample(fs: list, ft: list) -> float:
    """AT loss of one sample, [C][H][W] lists of equal H, W: mean over positions of the squared
    difference of the L2-normalised channel means of f^2."""

    def att(f: list) -> list:
        c, h, w = len(f), len(f[0]), len(f[0][0])
        a = [sum(f[k][i][j] ** 2 for k in range(c)) / c for i in range(h) for j in range(w)]
        norm = math.sqrt(sum(v * v for v in a))
        return [v / norm for v in a]

    a, b = att(fs), att(ft)
    return sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) / len(a)


def test_partial_routing_equals_the_papers_subset_loss_and_a_pinned_value():
    method = build_method({"name": "sakd", "base": "at", "base_cfg": {"beta": 1.0}})
    method.student_features, method.teacher_features = ("stage1", "pool"), ("stage1", "pool")
    method.base.student_features = method.base.teacher_features = ("stage1",)
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(4, 2, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    pool = torch.Size((4, 5))
    shapes = ({"stage1": fs.shape, "pool": pool}, {"stage1": ft.shape, "pool": pool})
    method.setup(MethodSetup(*shapes, num_classes=3, num_train=4))
    method.eval()
    with torch.no_grad():
        method.policy.weight.zero_()
        method.policy.bias.zero_()
        method.policy.weight[0, 0] = 1.0  # spot stage1 guided where teacher pool[0] > 0
    t_pool = torch.tensor([[1.0], [-1.0], [3.0], [-2.0]]) * torch.ones(4, 5)
    s = ModelOutputs(torch.zeros(4, 3), {"stage1": fs, "pool": torch.zeros(4, 5)})
    t = ModelOutputs(torch.zeros(4, 3), {"stage1": ft, "pool": t_pool})
    got = method(s, t, torch.zeros(4, dtype=torch.long), None)["at"].item()
    # the paper's form: the base loss on the routed samples (0 and 2), times their share 2/4
    subset = build_method({"name": "at", "beta": 1.0})
    subset.pairs = [("stage1", "stage1")]
    on = torch.tensor([0, 2])
    sub = subset(
        ModelOutputs(torch.zeros(2, 3), {"stage1": fs[on]}),
        ModelOutputs(torch.zeros(2, 3), {"stage1": ft[on]}),
        torch.zeros(2, dtype=torch.long),
        None,
    )["at"].item()
    assert got == pytest.approx(sub * 2 / 4, rel=1e-6)
    reference = sum(_reference_at_sample(fs[i].tolist(), ft[i].tolist()) for i in (0, 2)) / 4
    assert got == pytest.approx(reference, rel=1e-6)
    assert got == pytest.approx(0.08899157, rel=1e-6)  # pinned: the reference, seed 1


def test_graft_without_routing_is_the_student_in_eval_mode_and_routing_changes_it():
    method, student, _, x, y, _, t_out = _ready()
    off = torch.zeros(6, 4)
    with torch.no_grad():
        expected = student.eval()(x)
    student.train()
    graft = method.graft_logits(x, t_out.features, off)
    assert torch.allclose(graft, expected, atol=1e-6)
    assert student.training  # mode restored
    on = off.clone()
    on[:3, 1] = 1.0  # samples 0-2 take the teacher's stage2 (through the adapter)
    routed = method.graft_logits(x, t_out.features, on)
    assert torch.allclose(routed[3:], expected[3:], atol=1e-6)
    assert not torch.allclose(routed[:3], expected[:3], atol=1e-3)


def test_policy_loss_all_guided_is_gamma_scaled_teacher_ce_plus_the_share_penalty():
    method, _, _, _, y, s_out, t_out = _ready(policy_weight=1.0)
    method.train()
    _force(method, [True] * 4)
    terms = method(s_out, t_out, y, None)
    ce_t = nn.functional.cross_entropy(t_out.logits, y).item()
    ce_s = nn.functional.cross_entropy(s_out.logits, y).item()
    scale = 2.0 if ce_t > ce_s else 0.5
    assert terms["policy"].item() == pytest.approx(scale * ce_t, rel=1e-5)  # no penalty: 6 >= 3
    _force(method, [True, True, True, False])
    terms = method(s_out, t_out, y, None)
    assert terms["policy"].item() > 0.5 * 6 - 1e-4  # the penalty 0.5 * N - 0 routed at output
    assert terms["kd"].item() == 0.0


def test_gradients_policy_term_reaches_policy_and_adapters_only():
    method, student, _, _, y, s_out, t_out = _ready(policy_weight=1.0)
    method.train()
    with torch.no_grad():
        method.policy.bias.zero_()
    torch.manual_seed(0)
    terms = method(s_out, t_out, y, None)
    terms["policy"].backward(retain_graph=True)
    assert all(p.grad is None for p in student.parameters())
    assert method.policy.weight.grad is not None and method.policy.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.adapters.parameters())
    method.zero_grad()
    (terms["at"] + terms["kd"] + terms["ce"]).backward()
    assert method.policy.weight.grad is None or method.policy.weight.grad.abs().sum() == 0
    assert all(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("base", ["at", "fitnet"])
def test_one_step_lowers_the_loss(base):
    method, student, teacher, x, y, *_ = _ready(base)
    method.train()
    params = [*student.parameters(), *method.parameters()]

    def loss() -> torch.Tensor:
        torch.manual_seed(5)  # the same Gumbel noise before and after the step
        s_out = _outputs(student, method.student_features, x)
        with torch.no_grad():
            t_out = _outputs(teacher, method.teacher_features, x)
        return torch.stack(list(method(s_out, t_out, y, None).values())).sum()

    before = loss()
    before.backward()
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 1e-3 * p.grad
    assert loss().item() < before.item()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.mark.slow
@pytest.mark.parametrize("base", ["at", "fitnet"])
def test_sakd_trains_end_to_end(base, run_cli, shared_store):
    run = run_cli(
        "train", "+strategy=kd", "method=sakd", f"method.base={base}", "teacher=resnet14",
        "student=resnet8", "recipe=smoke", "recipe.epochs=1", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", f"store.root={shared_store}", "teacher.seed=0",
    )  # fmt: skip
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["method"] == "sakd" and results["test_acc"] is not None
    assert results["student"]["extra_params"] > 0  # policy and adapters


def test_cli_refuses_an_unsupported_base(run_cli):
    run = run_cli("train", "+strategy=kd", "method=sakd", "method.base=crd", "recipe=smoke")
    assert run.code == 2
    assert run.err.strip().splitlines() == [
        "hpmkd: error: sakd: unsupported base 'crd'; supported: at, fitnet"
    ]
