"""Name -> builder registry of the model zoo.

A builder is called as ``builder(*, num_classes, input_shape, **params)`` and returns an
``nn.Module`` that carries ``feature_points`` (see :mod:`hpmkd.models.features`). ``input_shape``
is the shape of one sample: ``(C, H, W)`` for images, ``(F,)`` for flat or tabular data.
"""

import copy
import functools
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hpmkd.errors import UserError, unknown_name
from hpmkd.model_nodes import is_foreign

Builder = Callable[..., nn.Module]
_RESERVED = frozenset({"num_classes", "input_shape"})


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name."""

    name: str
    family: str
    default_params: dict[str, Any]
    needs_image: bool
    builder: Builder = field(repr=False, compare=False)


_REGISTRY: dict[str, ModelSpec] = {}
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], ModelSpec]]] = []


def register_model(
    name: str, family: str, *, needs_image: bool = True, **default_params: Any
) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name`; `default_params` are passed unless overridden.

    `needs_image` marks models that need a ``(C, H, W)`` input shape (all CNNs).
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _check_params(name, builder, default_params)
        _REGISTRY[name] = ModelSpec(name, family, dict(default_params), needs_image, builder)
        return builder

    return decorator


def register_pattern(pattern: str, spec_for: Callable[[re.Match[str]], ModelSpec]) -> None:
    """Resolve unregistered names that fully match `pattern` (e.g. ``wrn_D_W``) with `spec_for`."""
    _PATTERNS.append((re.compile(pattern), spec_for))


def list_models() -> list[str]:
    """Sorted names of all registered models (pattern names such as ``wrn_22_4`` not included)."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelSpec:
    """The spec of model `name`; UserError listing the valid names when it is unknown.

    A foreign name (``timm:<name>``, ``hf:<id>``, a callable's dotted path) is family
    ``foreign``: no defaults, any input shape, built by :func:`hpmkd.models.foreign.build_foreign`.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_foreign(name):
        from .foreign import build_foreign

        return ModelSpec(name, "foreign", {}, False, functools.partial(build_foreign, name))
    for pattern, spec_for in _PATTERNS:
        match = pattern.fullmatch(name)
        if match:
            return spec_for(match)
    raise unknown_name("model", name, list_models())


def build_model(
    name: str, *, num_classes: int, input_shape: Sequence[int], **params: Any
) -> nn.Module:
    """Build model `name` for `num_classes` classes and per-sample `input_shape`.

    `params` override the registered defaults. The model gets the attributes ``model_name`` and
    ``feature_points``. Every user mistake raises UserError.
    """
    spec = model_info(name)
    shape = _check_input_shape(spec, input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"model '{name}' needs num_classes >= 1; got {num_classes!r}")
    _check_params(name, spec.builder, params, user=True)
    merged = copy.deepcopy(spec.default_params) | params
    model = spec.builder(num_classes=num_classes, input_shape=shape, **merged)
    if not isinstance(getattr(model, "feature_points", None), dict):
        raise TypeError(f"builder of model '{name}' did not set model.feature_points")
    model.model_name = name
    # the model's own input, for methods that run a further model on the same batch (SMSKD)
    model.feature_points["input"] = ("", "input")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of `model` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _check_input_shape(spec: ModelSpec, input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise UserError(f"model '{spec.name}' needs an input shape of positive sizes; got {shape}")
    if spec.needs_image and len(shape) != 3:
        raise UserError(f"model '{spec.name}' needs image input (C, H, W); the data gives {shape}")
    return shape


def _check_params(name: str, builder: Builder, params: dict[str, Any], user: bool = False) -> None:
    signature = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature):
        return
    valid = sorted(
        p.name
        for p in signature
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.name not in _RESERVED
    )
    for key in params:
        if key not in valid:
            message = (
                f"model '{name}' has no parameter '{key}'; valid: {', '.join(valid) or '(none)'}"
            )
            raise UserError(message) if user else ValueError(message)
