"""Test machinery shared by the golden method tests.

Only plumbing lives here: what the engine does before a method runs (feature names, setup from
the dry-run shapes), tiny student/teacher models, a plain SGD step, the one-step training check
and the config check. The independent reference computations each test compares against stay
in that test's own file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from hpmkd.methods import METHODS, DistillMethod, MethodSetup, ModelOutputs, build_method

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "method"

# a feature given to the setup helpers: the tensor itself or just its shape
FeatureOrShape = Tensor | Sequence[int]


def _shapes(features: Mapping[str, FeatureOrShape]) -> dict[str, torch.Size]:
    return {k: v.shape if isinstance(v, Tensor) else torch.Size(v) for k, v in features.items()}


def setup_shapes(
    method: DistillMethod,
    student: Mapping[str, FeatureOrShape],
    teacher: Mapping[str, FeatureOrShape],
    *,
    num_classes: int = 3,
    num_train: int = 10,
) -> DistillMethod:
    """``method.setup`` from the shapes of the given features; the feature names are left as
    the method's config set them. Returns the method."""
    method.setup(
        MethodSetup(
            student_shapes=_shapes(student),
            teacher_shapes=_shapes(teacher),
            num_classes=num_classes,
            num_train=num_train,
        )
    )
    return method


def setup_method(
    method: DistillMethod,
    student: Mapping[str, FeatureOrShape],
    teacher: Mapping[str, FeatureOrShape],
    **sizes: int,
) -> DistillMethod:
    """What the engine does: feature names resolved to the given ones, then ``setup_shapes``
    (``sizes``: its ``num_classes`` and ``num_train``). Returns the method."""
    method.student_features = tuple(student)
    method.teacher_features = tuple(teacher)
    return setup_shapes(method, student, teacher, **sizes)


def setup_two_vs_three_stages(method: DistillMethod) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Sets the method up on seeded random maps, batch 2: student ``stage1`` 3x4x4 and
    ``stage2`` 4x2x2, teacher ``stage1`` 2x8x8, ``stage2`` 6x2x2 and ``stage3`` 8x4x4, and
    checks that it pairs them from the deepest: student stage1 with teacher stage2 (the
    student's 4x4 to be pooled to 2x2), student stage2 with teacher stage3 (the teacher's
    pooled). Returns the student and teacher features."""
    g = torch.Generator().manual_seed(4)
    s1, s2 = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    t0, t1 = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 6, 2, 2, generator=g)
    t2 = torch.randn(2, 8, 4, 4, generator=g)
    student, teacher = {"stage1": s1, "stage2": s2}, {"stage1": t0, "stage2": t1, "stage3": t2}
    setup_method(method, student, teacher)
    assert method.pairs == [("stage1", "stage2"), ("stage2", "stage3")]
    return student, teacher


def feature_outputs(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], num_classes: int = 3
) -> tuple[ModelOutputs, ModelOutputs]:
    """Student and teacher outputs of the given features with all-zero logits."""
    n = next(iter(student.values())).shape[0]
    return (
        ModelOutputs(torch.zeros(n, num_classes), dict(student)),
        ModelOutputs(torch.zeros(n, num_classes), dict(teacher)),
    )


def feature_terms(
    method: DistillMethod,
    student: Mapping[str, Tensor],
    teacher: Mapping[str, Tensor],
    *,
    with_index: bool = False,
) -> dict[str, Tensor]:
    """The method's loss terms on the given features: zero logits, all labels 0, and sample
    indices ``0..n-1`` when ``with_index`` (else None)."""
    s, t = feature_outputs(student, teacher)
    n = s.logits.shape[0]
    index = torch.arange(n) if with_index else None
    return method(s, t, torch.zeros(n, dtype=torch.long), index)


def sgd_step(params: Iterable[Tensor], lr: float) -> None:
    """A plain SGD step on the parameters that have a gradient (torch.optim's first use
    imports torch._dynamo: seconds a fresh process does not need)."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= lr * p.grad


def check_one_step(
    loss: Callable[[], Tensor],
    learn: Iterable[Tensor],
    frozen: Iterable[Tensor],
    lr: float,
    step: Iterable[Tensor] | None = None,
) -> None:
    """The one-step check: after ``loss().backward()`` every parameter in ``learn`` has a
    non-zero gradient and none in ``frozen`` has a gradient; one SGD step of size ``lr`` on
    ``step`` (default: ``learn``) then lowers ``loss()``."""
    learn = list(learn)
    before = loss()
    before.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learn)
    assert all(p.grad is None for p in frozen)
    sgd_step(learn if step is None else step, lr)
    assert loss().item() < before.item()


@dataclass
class TinyPair:
    """A tiny student, a frozen teacher (both return ``ModelOutputs``) and one batch."""

    student: nn.Module
    teacher: nn.Module
    x: Tensor
    y: Tensor

    def outputs(self) -> tuple[ModelOutputs, ModelOutputs]:
        """Student outputs with autograd, teacher outputs without."""
        s = self.student(self.x)
        with torch.no_grad():
            t = self.teacher(self.x)
        return s, t

    def setup(self, method: DistillMethod, **kwargs: int) -> DistillMethod:
        """``setup_method`` with the features the two models produce."""
        s, t = self.outputs()
        return setup_method(method, s.features, t.features, **kwargs)

    def loss(self, method: DistillMethod, expected: set[str] | None = None) -> Tensor:
        """The sum of the method's terms on the batch (indices ``0..n-1``); with ``expected``,
        first asserts that these are the names of the terms."""
        terms = method(*self.outputs(), self.y, torch.arange(len(self.y)))
        if expected is not None:
            assert set(terms) == expected
        return sum(terms.values())

    def check_one_step(
        self,
        method: DistillMethod,
        lr: float,
        connectors: Sequence[Tensor] = (),
        expected: set[str] | None = None,
    ) -> None:
        """``check_one_step`` of ``self.loss``: the student's parameters and ``connectors``
        learn, the teacher's stay without gradients."""
        check_one_step(
            lambda: self.loss(method, expected),
            [*self.student.parameters(), *connectors],
            self.teacher.parameters(),
            lr,
        )


class ConvStages(nn.Module):
    """Conv-ReLU stages, each output a named feature; logits from a linear head on the pooled
    last stage, or zeros without a head."""

    def __init__(
        self, convs: Sequence[nn.Conv2d], names: Sequence[str], head: nn.Linear | None = None
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.head = head
        self.names = tuple(names)

    def forward(self, x: Tensor) -> ModelOutputs:
        features = {}
        for name, conv in zip(self.names, self.convs, strict=True):
            x = torch.relu(conv(x))
            features[name] = x
        logits = torch.zeros(len(x), 3) if self.head is None else self.head(x.mean((2, 3)))
        return ModelOutputs(logits, features)


def conv_pair(
    student_convs: Sequence[nn.Conv2d],
    teacher_convs: Sequence[nn.Conv2d],
    head: nn.Linear,
    student_names: Sequence[str] = ("stage1", "stage2"),
    teacher_names: Sequence[str] = ("stage1", "stage2"),
) -> TinyPair:
    """Conv students and teachers (``ConvStages``; the head is the student's) on a batch of 8
    random 3x8x8 images with labels in 0..2, drawn after the layers were built."""
    student = ConvStages(student_convs, student_names, head)
    teacher = ConvStages(teacher_convs, teacher_names).requires_grad_(False)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    return TinyPair(student, teacher, x, y)


def two_stage_conv_pair() -> TinyPair:
    """Seed 0: a 4- then 8-channel (stride 2) student with a linear head against a frozen 6-
    then 6-channel teacher; features ``stage1`` and ``stage2``."""
    torch.manual_seed(0)
    return conv_pair(
        [nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1)],
        [nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)],
        nn.Linear(8, 3),
    )


class Logits(nn.Module):
    """A model whose output is the logits of one layer, no features."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> ModelOutputs:
        return ModelOutputs(self.layer(x))


def linear_logits_pair() -> TinyPair:
    """Seed 0: linear 8 -> 5 student and frozen teacher, a batch of 32 with labels in 0..4."""
    torch.manual_seed(0)
    student = Logits(nn.Linear(8, 5))
    teacher = Logits(nn.Linear(8, 5)).requires_grad_(False)
    return TinyPair(student, teacher, torch.randn(32, 8), torch.randint(0, 5, (32,)))


class Pooled(nn.Module):
    """A body whose output is the ``pool`` feature and a linear head on it."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> ModelOutputs:
        f = self.body(x)
        return ModelOutputs(self.head(f), {"pool": f})


def pooled_pair(
    body: Callable[[int], nn.Module], widths: tuple[int, int], input_shape: Sequence[int]
) -> TinyPair:
    """Seed 0: ``Pooled`` student and frozen teacher of the given body widths, 5 classes, and
    a batch of 16 inputs of ``input_shape`` with labels in 0..4."""
    torch.manual_seed(0)
    student = Pooled(body(widths[0]), nn.Linear(widths[0], 5))
    teacher = Pooled(body(widths[1]), nn.Linear(widths[1], 5)).requires_grad_(False)
    x, y = torch.randn(16, *input_shape), torch.randint(0, 5, (16,))
    return TinyPair(student, teacher, x, y)


def pooled_mlp_pair() -> TinyPair:
    """``pooled_pair`` of Linear-ReLU bodies 8 -> 6 (student) and 8 -> 12 (teacher)."""
    return pooled_pair(lambda width: nn.Sequential(nn.Linear(8, width), nn.ReLU()), (6, 12), (8,))


def method_from_yaml(name: str, *, to_container: bool = True) -> DistillMethod:
    """Checks that ``conf/method/<name>.yaml`` names the method and that its other keys are
    exactly the constructor's arguments; returns the method built from it: from a plain dict
    with the interpolations resolved (``${oc.select:pair.<key>,<default>}`` gives the default
    here), or from the OmegaConf node itself when not ``to_container``."""
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert cfg.name == name
    args = set(inspect.signature(METHODS[name].__init__).parameters) - {"self"}
    assert set(cfg) - {"name"} == args
    return build_method(OmegaConf.to_container(cfg, resolve=True) if to_container else cfg)


def preset_method_config(experiment: str, method: str) -> dict:
    """The resolved ``method`` node of ``experiment=<experiment> method=<method>``, composed by
    Hydra as ``hpmkd train`` does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hpmkd import config

    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"method={method}"])
    return OmegaConf.to_container(cfg.method, resolve=True)  # type: ignore[return-value]


def zoo_pair(
    teacher: str, student: str, *, num_classes: int = 10, seed: int = 0
) -> tuple[nn.Module, nn.Module]:
    """Seeded random-init zoo models for 32x32 RGB input, in eval mode (BN running stats)."""
    from hpmkd.models import build_model

    torch.manual_seed(seed)
    t = build_model(teacher, num_classes=num_classes, input_shape=(3, 32, 32)).eval()
    s = build_model(student, num_classes=num_classes, input_shape=(3, 32, 32)).eval()
    return t, s


def run_on_models(
    method: DistillMethod,
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    init_stage: bool = False,
) -> dict[str, Tensor]:
    """What the engine does with zoo models: resolve the method's feature aliases, tap the
    features, set the method up from a dry forward, then return its terms on ``(x, y)`` (those
    of its initialisation stage with ``init_stage``)."""
    from hpmkd.models import FeatureTap

    method.bind_features(student, teacher)
    with FeatureTap(student, method.student_features) as s_tap:
        with FeatureTap(teacher, method.teacher_features) as t_tap:
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            s_out = ModelOutputs(s_logits, dict(s_tap.features))
            t_out = ModelOutputs(t_logits, dict(t_tap.features))
    setup_shapes(
        method,
        s_out.features,
        t_out.features,
        num_classes=int(s_logits.shape[1]),
        num_train=max(2, x.shape[0]),
    )
    step = method.init_forward if init_stage else method
    return step(s_out, t_out, y, torch.arange(x.shape[0]))


def wrn_raw_outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The benchmark's WRN feature list by hand: conv1's output and each block group's raw
    output (no BN-ReLU after it)."""
    f0 = model.conv1(x)
    f1 = model.layer1(f0)
    f2 = model.layer2(f1)
    return [f0, f1, f2, model.layer3(f2)]
