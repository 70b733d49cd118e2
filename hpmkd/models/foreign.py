"""Models from outside the zoo: any callable returning an ``nn.Module``, timm, Hugging Face.

``arch`` spellings (hpmkd.model_nodes): ``timm:<name>``, ``hf:<model id or directory>``, or the
dotted path of a callable. The model is sized for the data where its builder takes the number of
classes (``num_classes``; timm also ``in_chans``; HF ``num_labels``), checked by a dry forward
(output width against the data's classes), and given ``feature_points`` (foreign_features.py).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hpmkd.config import needs_extra
from hpmkd.errors import UserError

from .foreign_features import discover_feature_points, dry_forward, logits_of, replace_head

log = logging.getLogger("hpmkd")

# modules each spelling needs -> the extra that installs them
_EXTRAS = {"timm": "timm", "transformers": "hf"}


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = (error.name or module).partition(".")[0]
        if top in _EXTRAS:
            raise UserError(needs_extra(what, _EXTRAS[top])) from error
        raise UserError(f"{what}: cannot import module '{module}' ({error})") from error


def _callable(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise UserError(f"model '{path}' is neither a zoo name nor a dotted path to a callable")
    module = _import(module_name, f"model '{path}'")
    target = getattr(module, attr, None)
    if not callable(target):
        raise UserError(f"model '{path}': module '{module_name}' has no callable '{attr}'")
    return target


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def _takes(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` names the argument ``name`` or takes ``**kwargs``."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _check_arguments(arch: str, fn: Callable[..., Any], params: Mapping[str, Any]) -> None:
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    valid = sorted(p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL)
    for key in params:
        if key not in valid:
            raise UserError(f"model '{arch}' has no argument '{key}'; valid: {', '.join(valid)}")


def _not_cached(arch: str, error: Exception) -> UserError:
    return UserError(
        f"model '{arch}': pretrained weights are not cached here and cannot be downloaded "
        f"({type(error).__name__}); connect to the internet once or seed the library's cache"
    )


def _from_callable(
    arch: str, num_classes: int, pretrained: bool, params: dict[str, Any]
) -> nn.Module:
    fn = _callable(arch)
    _check_arguments(arch, fn, params)
    kwargs = dict(params)
    sized = False
    if "num_classes" not in kwargs and not pretrained and _takes(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
        sized = True
    if pretrained:
        if _accepts(fn, "weights"):  # torchvision's builders
            kwargs.setdefault("weights", "DEFAULT")
        elif _accepts(fn, "pretrained"):
            kwargs.setdefault("pretrained", True)
        else:
            raise UserError(f"model '{arch}' takes neither `weights` nor `pretrained`")
    try:
        try:
            model = fn(**kwargs)
        except TypeError as error:
            if not (sized and "num_classes" in str(error)):
                raise
            del kwargs["num_classes"]  # its **kwargs went somewhere that does not take it
            model = fn(**kwargs)
    except TypeError as error:
        if "keyword argument" in str(error):  # an argument its **kwargs passed on
            raise UserError(f"model '{arch}': {error}") from error
        raise
    except (OSError, RuntimeError) as error:
        if pretrained and _is_download_error(error):
            raise _not_cached(arch, error) from error
        raise
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{arch}' returned {type(model).__name__}, not a torch nn.Module")
    return model


def _is_download_error(error: BaseException) -> bool:
    import urllib.error

    while error is not None:
        if isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        name = type(error).__name__
        if "Connection" in name or "LocalEntryNotFound" in name or "OfflineMode" in name:
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def _from_timm(
    name: str, num_classes: int, input_shape: Sequence[int], pretrained: bool, params: dict
) -> nn.Module:
    timm = _import("timm", f"model 'timm:{name}'")
    kwargs = {"num_classes": num_classes, "pretrained": pretrained} | params
    if len(input_shape) == 3:
        kwargs.setdefault("in_chans", int(input_shape[0]))
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise UserError(
                f"unknown timm model '{name}' (timm.list_models() names them)"
            ) from error
        if pretrained and _is_download_error(error):
            raise _not_cached(f"timm:{name}", error) from error
        raise
    except OSError as error:
        if pretrained and _is_download_error(error):
            raise _not_cached(f"timm:{name}", error) from error
        raise


class HFClassifier(nn.Module):
    """A Hugging Face image classifier whose forward takes pixels and returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model
        self._interpolate = _accepts(model.forward, "interpolate_pos_encoding")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._interpolate:
            return self.hf(pixel_values=x, interpolate_pos_encoding=True).logits
        return self.hf(pixel_values=x).logits


def _from_hf(
    name: str, num_classes: int, input_shape: Sequence[int], pretrained: bool, params: dict
) -> nn.Module:
    transformers = _import("transformers", f"model 'hf:{name}'")
    kwargs = {"num_labels": num_classes} | params
    if len(input_shape) == 3:
        kwargs.setdefault("num_channels", int(input_shape[0]))
    try:
        config = transformers.AutoConfig.from_pretrained(name, **kwargs)
        auto = transformers.AutoModelForImageClassification
        if pretrained:
            model = auto.from_pretrained(name, config=config, ignore_mismatched_sizes=True)
        else:
            model = auto.from_config(config)
    except OSError as error:
        raise UserError(
            f"model 'hf:{name}': no such model id or directory, or its files are not cached here "
            f"and cannot be downloaded ({type(error).__name__})"
        ) from error
    except ValueError as error:
        raise UserError(f"model 'hf:{name}' is no image classifier ({error})") from error
    return HFClassifier(model)


def build_foreign(
    arch: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    pretrained: bool = False,
    features: Mapping[str, str] | None = None,
    **params: Any,
) -> nn.Module:
    """Build the foreign model ``arch`` for the data; ``features`` maps feature names to module
    paths (``path`` for its output, ``path:input`` for its input) over the ones found."""
    kind, _, name = arch.partition(":")
    if kind == "timm" and name:
        model = _from_timm(name, num_classes, input_shape, pretrained, params)
    elif kind == "hf" and name:
        model = _from_hf(name, num_classes, input_shape, pretrained, params)
    elif ":" in arch:
        raise UserError(f"model '{arch}': unknown prefix '{kind}:'; valid: timm:, hf:")
    else:
        model = _from_callable(arch, num_classes, pretrained, params)
    if pretrained and len(input_shape) > 0:
        logits = logits_of(dry_forward(model, input_shape)[1])
        if logits is not None and logits.shape[-1] != num_classes:
            if replace_head(model, arch, input_shape, num_classes):
                log.info("%s: pretrained head of %d classes replaced by a new one of %d",
                         arch, logits.shape[-1], num_classes)  # fmt: skip
    model.feature_points = discover_feature_points(
        model, arch, num_classes=num_classes, input_shape=input_shape, overrides=features or {}
    )
    return model


def pretrained_identity(arch: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a foreign model's pretrained weights beyond its spelling: the release of
    the library that serves them (``{}`` without pretrained weights)."""
    if not params.get("pretrained"):
        return {}
    kind, _, _ = arch.partition(":")
    library = {"timm": "timm", "hf": "transformers"}.get(kind) or arch.partition(".")[0]
    try:
        from importlib.metadata import version

        release = version(library)
    except Exception:  # noqa: BLE001 - a module that is no distribution: its name alone
        release = None
    return {"pretrained_weights": {"library": library, "version": release}}
