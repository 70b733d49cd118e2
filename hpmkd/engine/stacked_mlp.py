"""Several members' MLPs of one architecture as one stacked model, for packed fits.

Each Linear layer's weights are stacked as ``[members, out, in]`` (its bias ``[members, out]``,
as ``torch.func.stack_module_state`` gives them) and applied to all members' inputs with one
``torch.baddbmm``: the same arithmetic as each member's own ``nn.Linear`` without the per-call
dispatch of ``vmap(functional_call)``, which dominates for models this small. Only hpmkd MLPs
made of Linear layers and ReLU qualify (no BatchNorm, dropout of 0); the pack uses vmap for any
other architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hpmkd.models.mlp import MLP, HiddenLayer

StackedForward = Callable[..., Tensor]


def stacked_forward(student: nn.Module) -> StackedForward | None:
    """The stacked forward of models like ``student``: ``forward(params, x, shared=False)`` with
    ``params`` from ``stack_module_state`` and ``x`` each member's inputs ``[members, batch,
    ...]`` (``shared``: one input ``[batch, ...]`` for all members), returning ``[members, batch,
    classes]``; None when ``student`` is not an MLP of Linear layers and ReLU only."""
    if type(student) is not MLP or type(student.classifier) is not nn.Linear:
        return None
    layers = []
    for index, layer in enumerate(student.hidden):
        plain = (
            type(layer) is HiddenLayer
            and type(layer.linear) is nn.Linear
            and type(layer.bn) is nn.Identity
            and type(layer.act) is nn.ReLU
            and type(layer.dropout) is nn.Dropout
            and layer.dropout.p == 0
        )
        if not plain:
            return None
        layers.append(f"hidden.{index}.linear")
    layers.append("classifier")

    def forward(params: dict[str, Tensor], x: Tensor, shared: bool = False) -> Tensor:
        members = params[f"{layers[0]}.weight"].shape[0]
        h = x.flatten(1).expand(members, -1, -1) if shared else x.flatten(2)
        for i, name in enumerate(layers):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h

    return forward
