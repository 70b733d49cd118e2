"""What a model costs to deploy: parameters, bytes on disk, floating-point operations."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpmkd.models import count_parameters


def flops(model: nn.Module, example: torch.Tensor) -> int:
    """Floating-point operations of one forward on ``example`` (one sample; a multiply-add
    counts 2), as torch.utils.flop_counter counts them (convolutions, matmuls, attention)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    return int(counter.get_total_flops())


def state_size(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (``student.pt``)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def model_cost(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """``{params, flops, size_bytes}`` of ``model`` (in eval mode) on one sample."""
    was_training = model.training
    model.eval()
    try:
        count = flops(model, torch.zeros((1, *input_shape), dtype=torch.float32))
    finally:
        model.train(was_training)
    return {"params": count_parameters(model), "flops": count, "size_bytes": state_size(model)}
