"""Getting a trained model: given as a module (the Python API), from an explicit checkpoint, from
the artifact store, or by training.

Teachers are trained on the labels; intermediates of a chain (TAKD's assistant, later PDC's
links) are distilled from the model above them. Either way the result is stored under a key of
everything that determines it, so the next run that needs the same model reuses it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpmkd.engine.context import RunContext
from hpmkd.engine.evaluate import split_accuracy
from hpmkd.engine.model_config import model_params
from hpmkd.engine.records import ModelRecord
from hpmkd.engine.tabular_teacher import obtain_tabular_teacher, refuse_feature_method
from hpmkd.engine.teacher_cache import weights_digest
from hpmkd.errors import UserError
from hpmkd.methods import build_method
from hpmkd.models import count_parameters, load_weights
from hpmkd.models.foreign import pretrained_identity
from hpmkd.models.sklearn_teacher import names_classifier
from hpmkd.store import content_key

log = logging.getLogger("hpmkd")


def model_seed(ctx: RunContext, model_cfg: DictConfig) -> int:
    seed = model_cfg.get("seed")
    return ctx.cfg.seed if seed is None else seed


def model_spec(ctx: RunContext, model_cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines a trained model's weights (its store key)."""
    return {
        "arch": model_cfg.arch,
        "params": model_params(model_cfg),
        "num_classes": ctx.data.num_classes,
        "input_shape": list(ctx.data.input_shape),
        "data": ctx.data.fingerprint(),
        "recipe": OmegaConf.to_container(ctx.recipe, resolve=True),
        "precision": ctx.perf.precision,
        "seed": model_seed(ctx, model_cfg),
        # which library release gave a foreign model's pretrained weights
        **pretrained_identity(model_cfg.arch, model_params(model_cfg)),
    }


def teacher_identity(record: ModelRecord) -> Any:
    """What identifies a teacher in its students' store keys: its own key, or its source."""
    return record.extra.get("store_key") or record.extra


def obtain_model(
    ctx: RunContext,
    model_cfg: DictConfig,
    role: str,
    *,
    teacher: tuple[nn.Module, ModelRecord] | None = None,
    method_cfg: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelRecord]:
    """Build ``model_cfg`` and give it weights; the record says where they came from.

    Without ``teacher`` the model is trained on the labels; with one it is distilled from it
    with ``method_cfg``. A scikit-learn-compatible classifier is a tabular teacher: its
    soft labels (``hpmkd.engine.tabular_teacher``).
    """
    if names_classifier(model_cfg.arch):
        if teacher is not None:
            raise UserError(
                f"{role} '{model_cfg.arch}' is a scikit-learn model and cannot learn from a "
                "teacher; use a torch model there"
            )
        return obtain_tabular_teacher(ctx, model_cfg, role, model_seed(ctx, model_cfg))
    if model_cfg.get("oof_folds") is not None:
        raise UserError(
            f"{role}.oof_folds applies to scikit-learn teachers; "
            f"'{model_cfg.arch}' is a torch model"
        )
    model = ctx.build(model_cfg, role)
    checkpoint = model_cfg.get("checkpoint")
    extra: dict[str, Any]
    if model_cfg.arch in ctx.given:
        log.info("%s %s: given as a module", role, model_cfg.arch)
        extra = {"source": "module", "weights": weights_digest(model)}
        fit = None
        ctx.record_unit(role, model_cfg.arch, "module", None)
    elif checkpoint:
        path = str(Path(checkpoint).expanduser())
        load_weights(model, path, source=path, prefix=model_cfg.get("checkpoint_prefix"))
        log.info("%s %s: loaded from checkpoint %s", role, model_cfg.arch, path)
        extra = {"source": "checkpoint", "checkpoint": path}
        fit = None
        ctx.record_unit(role, model_cfg.arch, "checkpoint", None)
    else:
        spec = model_spec(ctx, model_cfg)
        if teacher is not None:
            spec["distilled_from"] = teacher_identity(teacher[1])
            spec["method"] = method_cfg
            schedule = ctx.temperature
            if schedule:  # a temperature schedule changes what the distilled model learns
                spec["temperature_schedule"] = OmegaConf.to_container(schedule, resolve=True)
        key = content_key("model", spec)
        with ctx.store.lock(key):
            artifact = ctx.store.get(key)
            if artifact is not None:
                load_weights(model, str(artifact.model_file), source=str(artifact.model_file))
                log.info("%s %s: reused from the store (%s)", role, model_cfg.arch, key[:12])
                extra = {"source": "store", "store_key": key}
                fit = artifact.meta.get("fit")
                extra_params = artifact.meta.get("extra_params", 0)
                ctx.record_unit(role, model_cfg.arch, "store", fit)
            else:
                log.info("%s %s: not in the store, training it first", role, model_cfg.arch)
                ctx.seed(model_seed(ctx, model_cfg))
                extra_params = 0
                if teacher is None:
                    result = ctx.train_plain(model, out_dir=ctx.out_dir / role, nested=True)
                else:
                    method = build_method(method_cfg or {"name": "kd"})
                    refuse_feature_method(teacher[0], method)
                    result = ctx.train(
                        model, method, out_dir=ctx.out_dir / role, teacher=teacher[0],
                        teacher_id=spec["distilled_from"], nested=True,
                    )  # fmt: skip
                    extra_params = method.extra_parameters()
                fit = asdict(result)
                meta = {
                    **spec,
                    "extra_params": extra_params,
                    "role": role,
                    "val_acc": result.acc_best,
                    "test_acc": result.test_acc,
                    "epochs": result.epochs,
                    "train_time_s": result.train_time_s,
                    "fit": fit,
                }
                ctx.store.put_model(key, model.state_dict(), meta)
                log.info("%s %s: trained and stored (%s)", role, model_cfg.arch, key[:12])
                ctx.record_unit(role, model_cfg.arch, "trained", result)
                extra = {"source": "trained", "store_key": key}
        if teacher is not None:
            extra["extra_params"] = extra_params
    data = ctx.data
    record = ModelRecord(
        role=role,
        arch=model_cfg.arch,
        params=count_parameters(model),
        val_acc=split_accuracy(model, data, "val", ctx.transform, device=ctx.device),
        test_acc=split_accuracy(model, data, "test", ctx.transform, device=ctx.device),
        extra=extra,
        fit=fit,
    )
    return model.eval().requires_grad_(False), record


def obtain_teacher(ctx: RunContext, teacher_cfg: DictConfig) -> tuple[nn.Module, ModelRecord]:
    return obtain_model(ctx, teacher_cfg, "teacher")
