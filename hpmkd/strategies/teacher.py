"""Getting a teacher: from an explicit checkpoint, from the artifact store, or by training one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpmkd.engine.evaluate import accuracy
from hpmkd.models import count_parameters, load_weights
from hpmkd.store import content_key
from hpmkd.strategies.context import ModelRecord, RunContext, model_params

log = logging.getLogger("hpmkd")


def teacher_spec(ctx: RunContext, teacher_cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines a trained teacher's weights (its store key)."""
    return {
        "arch": teacher_cfg.arch,
        "params": model_params(teacher_cfg),
        "num_classes": ctx.data.num_classes,
        "input_shape": list(ctx.data.input_shape),
        "data": ctx.data.fingerprint(),
        "recipe": OmegaConf.to_container(ctx.cfg.recipe, resolve=True),
        "precision": str(ctx.cfg.trainer.get("precision")),
        "seed": ctx.cfg.seed,
    }


def obtain_teacher(
    ctx: RunContext, teacher_cfg: DictConfig, role: str = "teacher"
) -> tuple[nn.Module, ModelRecord]:
    """Build the teacher and give it weights; the record says where they came from."""
    model = ctx.build(teacher_cfg)
    checkpoint = teacher_cfg.get("checkpoint")
    extra: dict[str, Any]
    if checkpoint:
        path = str(Path(checkpoint).expanduser())
        load_weights(model, path, source=path)
        log.info("%s %s: loaded from checkpoint %s", role, teacher_cfg.arch, path)
        extra = {"source": "checkpoint", "checkpoint": path}
    else:
        spec = teacher_spec(ctx, teacher_cfg)
        key = content_key("model", spec)
        with ctx.store.lock(key):
            artifact = ctx.store.get(key)
            if artifact is not None:
                load_weights(model, str(artifact.model_file), source=str(artifact.model_file))
                log.info("%s %s: reused from the store (%s)", role, teacher_cfg.arch, key[:12])
                extra = {"source": "store", "store_key": key}
            else:
                log.info("%s %s: not in the store, training it first", role, teacher_cfg.arch)
                ctx.seed()
                result = ctx.train_plain(model, out_dir=ctx.out_dir / role, nested=True)
                meta = {
                    **spec,
                    "role": role,
                    "val_acc": result.acc_best,
                    "test_acc": result.test_acc,
                    "epochs": result.epochs,
                    "train_time_s": result.train_time_s,
                }
                ctx.store.put_model(key, model.state_dict(), meta)
                log.info("%s %s: trained and stored (%s)", role, teacher_cfg.arch, key[:12])
                extra = {"source": "trained", "store_key": key}
    data = ctx.data
    record = ModelRecord(
        role=role,
        arch=teacher_cfg.arch,
        params=count_parameters(model),
        val_acc=accuracy(model, data.x_val, data.y_val, ctx.transform, device=ctx.device),
        test_acc=accuracy(model, data.x_test, data.y_test, ctx.transform, device=ctx.device),
        extra=extra,
    )
    return model.eval().requires_grad_(False), record
