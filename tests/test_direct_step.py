"""engine/direct_step.py: the direct fused Adam/AdamW step is bitwise ``optimizer.step()``."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.optimizer import register_optimizer_step_post_hook

from hpmkd.engine import direct_step as direct_module
from hpmkd.engine.direct_step import direct_step, direct_zero_grad

STEPS = 30


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 26)
    )


def _batches(steps: int = STEPS, seed: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randn(32, 16, generator=g), torch.randint(0, 26, (32,), generator=g)


@pytest.fixture
def torch_steps(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each fallback to ``optimizer.step()`` (True: followed by a re-plan)."""
    calls: list[bool] = []
    original = direct_module._DirectAdam._torch_step

    def spy(self: direct_module._DirectAdam, replan: bool) -> None:
        calls.append(replan)
        original(self, replan)

    monkeypatch.setattr(direct_module._DirectAdam, "_torch_step", spy)
    return calls


def _assert_same(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    """Parameters and state_dict() bitwise equal."""
    for ga, gb in zip(a.param_groups, b.param_groups, strict=True):
        for pa, pb in zip(ga["params"], gb["params"], strict=True):
            assert torch.equal(pa, pb)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for index, state in sa["state"].items():
        assert state.keys() == sb["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(value, sb["state"][index][key]), (index, key)
    for ga, gb in zip(sa["param_groups"], sb["param_groups"], strict=True):
        assert ga.keys() == gb.keys()
        for key, value in ga.items():
            if isinstance(value, Tensor):
                assert torch.equal(value, gb[key])
            else:
                assert value == gb[key], key


def _lockstep(
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    loss_fn: Callable[[nn.Module, Tensor, Tensor, int], Tensor],
    steps: int = STEPS,
    schedule: bool = True,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Train two copies from identical states, one with ``optimizer.step()`` and one with the
    direct step (and direct zero_grad), checking exact equality after every step."""
    torch.manual_seed(0)
    model_a = make_model()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = make_optimizer(model_a), make_optimizer(model_b)
    step_b = direct_step(opt_b)
    assert step_b is not None
    zero_b = direct_zero_grad(opt_b)
    sched = [CosineAnnealingLR(o, T_max=3) for o in (opt_a, opt_b)] if schedule else []
    for i, (x, y) in enumerate(_batches(steps)):
        opt_a.zero_grad()
        zero_b()
        loss_fn(model_a, x, y, i).backward()
        loss_fn(model_b, x, y, i).backward()
        opt_a.step()
        step_b()
        _assert_same(opt_a, opt_b)
        if i % 10 == 9:
            for s in sched:
                s.step()
    return opt_a, opt_b


def _ce(model: nn.Module, x: Tensor, y: Tensor, i: int) -> Tensor:
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_exactly_optimizer_step(
    cls: type, weight_decay: float, maximize: bool, tensor_lr: bool, torch_steps: list[bool]
) -> None:
    lr = torch.tensor(1e-2) if tensor_lr else 1e-2

    def make(model: nn.Module) -> torch.optim.Optimizer:
        lr_ = lr.clone() if isinstance(lr, Tensor) else lr
        return cls(
            model.parameters(), lr=lr_, weight_decay=weight_decay, maximize=maximize, fused=True
        )

    _lockstep(_mlp, make, _ce)
    assert torch_steps == [True]  # only the first step, which creates the state


def test_amsgrad_and_param_groups(torch_steps: list[bool]) -> None:
    def make(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [
                {"params": model[0].parameters(), "lr": 3e-2, "weight_decay": 0.1},
                {"params": model[2].parameters(), "betas": (0.8, 0.99), "amsgrad": True},
                {"params": model[4].parameters(), "decoupled_weight_decay": True},
            ],
            lr=1e-2,
            weight_decay=0.01,
            fused=True,
        )

    _lockstep(_mlp, make, _ce)
    assert torch_steps == [True]


def test_mixed_dtypes_bucket_like_torch() -> None:
    def model() -> nn.Module:
        m = _mlp()
        m[2].double()
        return m

    def loss(m: nn.Module, x: Tensor, y: Tensor, i: int) -> Tensor:
        h = m[1](m[0](x)).double()
        return F.cross_entropy(m[4](m[3](m[2](h)).float()), y)

    _lockstep(model, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True), loss)


def test_params_without_grad_some_steps(torch_steps: list[bool]) -> None:
    def model() -> nn.Module:
        m = _mlp()
        m.append(nn.Linear(26, 26))  # used on even steps only: its grads are None on odd ones
        return m

    def loss(m: nn.Module, x: Tensor, y: Tensor, i: int) -> Tensor:
        out = m[:5](x)
        return F.cross_entropy(m[5](out) if i % 2 == 0 else out, y)

    _lockstep(model, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, fused=True), loss)
    # step 0 creates the state; afterwards each change of the set of params with grads re-plans
    assert torch_steps == [True] * STEPS

    def loss_late(m: nn.Module, x: Tensor, y: Tensor, i: int) -> Tensor:
        out = m[:5](x)
        return F.cross_entropy(m[5](out) if i >= 20 else out, y)

    torch_steps.clear()
    _lockstep(model, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, fused=True), loss_late)
    assert torch_steps == [True, True]  # the first step, then step 20 creates the new state


def test_stacked_members() -> None:
    torch.manual_seed(0)
    members = [_mlp() for _ in range(8)]
    base = copy.deepcopy(members[0]).to("meta")
    params, _ = torch.func.stack_module_state(members)
    assert params["0.weight"].shape == (8, 64, 16)

    class Stacked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.ParameterDict(
                {k.replace(".", "_"): nn.Parameter(v.detach().clone()) for k, v in params.items()}
            )

        def forward(self, x: Tensor) -> Tensor:
            named = {k: self.p[k.replace(".", "_")] for k in params}
            return torch.vmap(
                lambda p, x: torch.func.functional_call(base, p, (x,)), in_dims=(0, None)
            )(named, x)

    def loss(m: nn.Module, x: Tensor, y: Tensor, i: int) -> Tensor:
        out = m(x)
        return F.cross_entropy(out.flatten(0, 1), y.repeat(8))

    _lockstep(Stacked, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True), loss)


class _AdamSubclass(torch.optim.Adam):
    pass


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.Adam(ps, fused=False),
        lambda ps: torch.optim.Adam(ps),
        lambda ps: torch.optim.Adam(ps, foreach=True),
        lambda ps: torch.optim.AdamW(ps, foreach=False),
        lambda ps: _AdamSubclass(ps, fused=True),
    ],
    ids=["sgd", "adam-unfused", "adam-default", "adam-foreach", "adamw-single", "subclass"],
)
def test_unsupported_optimisers(make: Callable) -> None:
    assert direct_step(make(_mlp().parameters())) is None


def test_hooks_at_creation() -> None:
    opt = torch.optim.Adam(_mlp().parameters(), fused=True)
    handle = opt.register_step_pre_hook(lambda *args: None)
    assert direct_step(opt) is None
    handle.remove()
    assert direct_step(opt) is not None
    handle = register_optimizer_step_post_hook(lambda *args: None)
    try:
        assert direct_step(opt) is None
    finally:
        handle.remove()
    opt.step = lambda *args, **kwargs: None  # a patched step that is not a scheduler's
    assert direct_step(opt) is None


def test_hook_registered_later_runs_and_stays_exact(torch_steps: list[bool]) -> None:
    seen: list[torch.optim.Optimizer] = []
    handles = []

    def make(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)

    def loss(m: nn.Module, x: Tensor, y: Tensor, i: int) -> Tensor:
        # called for both copies each step: register and remove once
        if i == 10 and not handles:
            opt = direct_hooked["opt"]
            handles.append(opt.register_step_post_hook(lambda o, args, kwargs: seen.append(o)))
        if i == 20 and handles:
            handles.pop().remove()
        return _ce(m, x, y, i)

    direct_hooked: dict[str, torch.optim.Optimizer] = {}

    def make_b(model: nn.Module) -> torch.optim.Optimizer:
        opt = make(model)
        direct_hooked["opt"] = opt  # the second one made is the direct one
        return opt

    _lockstep(_mlp, make_b, loss)
    assert seen == [direct_hooked["opt"]] * 10  # steps 10 to 19
    assert torch_steps == [True] + [False] * 10


def test_zero_grad() -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), fused=True)
    zero = direct_zero_grad(opt)
    assert zero != opt.zero_grad
    _ce(model, *next(_batches()), 0).backward()
    assert all(p.grad is not None for p in model.parameters())
    zero()
    assert all(p.grad is None for p in model.parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert direct_zero_grad(sgd) != sgd.zero_grad

    subclass = _AdamSubclass(model.parameters())
    assert direct_zero_grad(subclass) == subclass.zero_grad
    opt.zero_grad = lambda set_to_none=True: None
    assert direct_zero_grad(opt) is opt.zero_grad


def test_resume_from_state_dict(torch_steps: list[bool]) -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    step, zero = direct_step(opt), direct_zero_grad(opt)
    assert step is not None
    batches = list(_batches(20))
    for x, y in batches[:10]:
        zero()
        _ce(model, x, y, 0).backward()
        step()
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))

    def resumed() -> tuple[nn.Module, torch.optim.Optimizer]:
        m = _mlp()
        m.load_state_dict(saved[0])
        o = torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True)
        o.load_state_dict(copy.deepcopy(saved[1]))  # loading aliases the dict's tensors
        return m, o

    (model_a, opt_a), (model_b, opt_b) = resumed(), resumed()
    step_b = direct_step(opt_b)
    assert step_b is not None
    # the original optimiser reloads its own checkpoint: its direct step must see the new state
    opt.load_state_dict(copy.deepcopy(saved[1]))
    for x, y in batches[10:]:
        for m, o, s in ((model_a, opt_a, opt_a.step), (model_b, opt_b, step_b), (model, opt, step)):
            o.zero_grad()
            _ce(m, x, y, 0).backward()
            s()
        _assert_same(opt_a, opt_b)
        _assert_same(opt_a, opt)
    assert torch_steps.count(True) == 2  # the original's first step, the resumed one's first


def test_no_scheduler_warning_over_epochs() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    step, zero = direct_step(opt), direct_zero_grad(opt)
    assert step is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler = CosineAnnealingLR(opt, T_max=5)
        for _ in range(5):
            for x, y in _batches(4):
                zero()
                _ce(model, x, y, 0).backward()
                step()
            scheduler.step()
    assert [str(w.message) for w in caught] == []


def test_profiler_sees_torch_ranges(torch_steps: list[bool]) -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), fused=True)
    step, zero = direct_step(opt), direct_zero_grad(opt)
    assert step is not None
    _ce(model, *next(_batches()), 0).backward()
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
        zero()
    names = {event.name for event in prof.events()}
    assert {"Optimizer.step#Adam.step", "Optimizer.zero_grad#Adam.zero_grad"} <= names
    assert torch_steps == [True, False]
