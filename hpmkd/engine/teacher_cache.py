"""Teacher predictions computed once and read by sample index (the shared memory's prediction
cache, METHODS.md 2.6).

When a training batch is not randomly augmented (tabular data; images with ``recipe.augment``
off) the teacher's logits for a sample never change, so they are computed once over the training
split, stored in the artifact store under the teacher's identity and the data fingerprint, and
every later fit with the same teacher and data reads rows by sample index instead of running the
teacher. Stored in fp32: the losses are exactly those of the online teacher. Methods that read
teacher features keep the online teacher; randomly augmented images need per-view caching
(not done here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hpmkd.methods.base import ModelOutputs
from hpmkd.store import ArtifactStore, content_key

log = logging.getLogger("hpmkd")


class CachedTeacher:
    """Stands in for ``FrozenTeacher``: the teacher's logits of a batch, by sample index."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits

    def to(self, device: torch.device) -> CachedTeacher:
        self.logits = self.logits.to(device)
        return self

    def __call__(self, x: Tensor, index: Tensor) -> ModelOutputs:
        return ModelOutputs(self.logits[index.to(self.logits.device)])

    def release(self) -> None:
        """Nothing to release (no hooks)."""


@torch.no_grad()
def teacher_predictions(
    store: ArtifactStore,
    identity: Any,
    teacher: nn.Module,
    inputs: Tensor,
    transform: Callable[[Tensor], Tensor],
    *,
    data_fingerprint: str,
    device: torch.device,
    batch_size: int = 1024,
) -> Tensor:
    """The teacher's logits for every row of ``inputs`` (raw; ``transform`` is applied batch by
    batch, on the device), from the store or computed once and stored."""
    key = content_key("predictions", {"teacher": identity, "data": data_fingerprint})
    with store.lock(key):
        artifact = store.get(key)
        if artifact is not None:
            log.info("teacher predictions: reused from the store (%s)", key[:12])
            return torch.load(artifact.model_file, weights_only=True)["logits"]
        was_training = teacher.training
        teacher.eval().to(device)
        logits = torch.cat(
            [teacher(transform(inputs[i : i + batch_size].to(device))).float().cpu()
             for i in range(0, len(inputs), batch_size)]
        )  # fmt: skip
        teacher.train(was_training)
        store.put_model(key, {"logits": logits}, {"role": "predictions", "teacher": identity})
        log.info("teacher predictions: computed once, %d samples (%s)", len(logits), key[:12])
        return logits
