"""A packed member's resumable checkpoint: its own slice of the pack's state.

Every member of a pack (``packed_fit.py``) writes ``checkpoints/packed_last.ckpt`` in its own run
directory, at the moments a fit alone writes ``last.ckpt`` (after an epoch once
``checkpoint_every_s`` have passed, and after the final epoch): its student's weights, its slice
of the optimiser state (each state tensor shaped like the stacked parameter is sliced; a shared
one, Adam's step count, is kept whole), the scheduler's state, its global-RNG state for the next
epoch's batch order, and its history (validation accuracies, curves, best weights, training
time). A member is complete on its own, so members resumed at the same epoch pack together again
whatever pack they came from, and a member resumed without the packed launcher continues as a
pack of one; either way the training goes on as if it had not stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpmkd.engine.packed import PACKED_CHECKPOINT, FitRequest
from hpmkd.io import write_atomic

FORMAT = "hpmkd-packed-member-1"


@dataclass
class MemberState:
    """What a member carries through the pack's epochs besides its weights."""

    rng_state: Tensor  # the global-RNG state its next epoch draws its batch order from
    val_history: list[float] = field(default_factory=list)
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    best: dict[str, Tensor] | None = None  # the weights of its best validation epoch
    best_acc: float = -1.0
    train_s: float = 0.0  # its share of the pack's training time in earlier processes


def read_member_checkpoint(path: str | Path) -> dict[str, Any]:
    """A member's checkpoint, as ``save_members`` wrote it."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a packed member's checkpoint ({FORMAT})")
    return saved


def save_members(
    requests: list[FitRequest],
    members: list[MemberState],
    params: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epochs_done: int,
    global_step: int,
    train_s: float,
) -> None:
    """Each member's checkpoint after ``epochs_done`` epochs; ``train_s``: each member's share of
    this process's training time so far."""
    full = optimizer.state_dict()
    shapes = [p.shape for p in params.values()]
    # state tensors shaped like their stacked parameter hold one slice per member
    sliced = [
        [index, key]
        for index, entries in full["state"].items()
        for key, value in entries.items()
        if isinstance(value, Tensor) and value.shape == shapes[index]
    ]
    for k, (request, member) in enumerate(zip(requests, members, strict=True)):
        state = {index: dict(entries) for index, entries in full["state"].items()}
        for index, key in sliced:
            state[index][key] = state[index][key][k].clone()
        checkpoint = {
            "format": FORMAT,
            "epochs_done": epochs_done,
            "global_step": global_step,
            "student": {name: p[k].detach().clone() for name, p in params.items()},
            "optimizer": {"state": state, "param_groups": full["param_groups"], "sliced": sliced},
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "member": asdict(member) | {"train_s": member.train_s + train_s},
        }
        path = request.out_dir / PACKED_CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp, c=checkpoint: torch.save(c, tmp))


def restore_members(
    requests: list[FitRequest],
    params: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[int, int, list[MemberState]]:
    """Put the members' checkpoints (``request.resume``; all at one epoch) back into the pack's
    stacked weights, optimiser and scheduler; returns the epochs done, the global step and the
    members' states. Without checkpoints: 0, 0 and fresh states."""
    saved = [r.resume for r in requests]
    if all(s is None for s in saved):
        return 0, 0, [MemberState(r.rng_state) for r in requests]
    assert all(s is not None for s in saved), "a pack mixes resumed and new members"
    done = {s["epochs_done"] for s in saved}  # type: ignore[index]
    assert len(done) == 1, f"a pack of members at different epochs: {sorted(done)}"
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.stack([s["student"][name] for s in saved]))  # type: ignore[index]
    first = saved[0]["optimizer"]  # type: ignore[index]
    state = {index: dict(entries) for index, entries in first["state"].items()}
    for index, key in first["sliced"]:
        state[index][key] = torch.stack([s["optimizer"]["state"][index][key] for s in saved])  # type: ignore[index]
    optimizer.load_state_dict({"state": state, "param_groups": first["param_groups"]})
    if scheduler is not None:
        scheduler.load_state_dict(saved[0]["scheduler"])  # type: ignore[index]
    members = [MemberState(**s["member"]) for s in saved]  # type: ignore[index]
    return done.pop(), int(saved[0]["global_step"]), members  # type: ignore[index]
