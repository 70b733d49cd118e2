"""One training of several members' student fits as a single vmapped model.

The students (one architecture, different seeds) are stacked with
``torch.func.stack_module_state`` and run as one stacked model (``stacked_mlp.py``: MLPs of
Linear layers and ReLU) or with ``functional_call`` under ``vmap`` (any other); each member's
loss is its own method on its own logits (its temperature, weights, teacher), and the summed
loss gives every member exactly its own gradients. The optimiser and scheduler (one config for
the pack) act elementwise on the stacked tensors, so each slice steps as the member alone would.
Each member's batches are drawn from its own global-RNG state, with the same calls in the same
order as its Lightning fit (train loader, sampler, validation loader per epoch): same initial
weights, same batch order, the same results to float tolerance (tests/test_packed.py).
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from hpmkd.data.loader import SplitsDataModule
from hpmkd.data.splits import DataSplits
from hpmkd.engine.direct_step import direct_step, direct_zero_grad
from hpmkd.engine.fit import FitResult, without_nvml_probe
from hpmkd.engine.fused import correct_top_k, sampler_order, skip_loader_seed
from hpmkd.engine.journal import JournalEpochs
from hpmkd.engine.packed import FitRequest
from hpmkd.engine.packed_checkpoint import MemberState, restore_members, save_members
from hpmkd.engine.packed_losses import BatchedTerms, batched_form
from hpmkd.engine.stacked_mlp import stacked_forward
from hpmkd.engine.teacher_cache import CacheCounts
from hpmkd.io import write_atomic
from hpmkd.methods.base import DistillMethod, ModelOutputs

ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
FP32 = (None, 32, "32", "32-true")


def pack_refusal(request: FitRequest) -> str | None:
    """Why this fit cannot be packed exactly (None: it can)."""
    module, data = request.module, request.datamodule
    method: DistillMethod = module.method
    kwargs = request.trainer_kwargs
    if type(data) is not SplitsDataModule or not isinstance(data.splits, DataSplits):
        return "its data is not an in-memory split"
    if data.splits.is_image:
        return "image data (per-step augmentation draws from the global RNG)"
    if module.init_stage or method.student_features or method.teacher_features:
        return f"method '{method.name}' reads features or has an initialisation stage"
    if list(method.parameters()) or type(method).on_epoch_start is not DistillMethod.on_epoch_start:
        return f"method '{method.name}' has parameters or per-epoch state"
    if list(module.student.buffers()) or any(
        isinstance(m, nn.Dropout) and m.p > 0 for m in module.student.modules()
    ):
        return "the student has buffers (BatchNorm) or dropout"
    if getattr(module.optimizer_factory, "func", None) not in ELEMENTWISE:
        return "its optimiser is not SGD, Adam or AdamW"
    accelerator = kwargs.get("accelerator", "auto")
    if accelerator != "cpu" and (accelerator != "auto" or torch.cuda.is_available()):
        return f"accelerator {accelerator}: packs train on the CPU only (GPU packs not built yet)"
    if kwargs.get("precision") not in FP32 or kwargs.get("gradient_clip_val"):
        return "precision other than 32-true, or gradient clipping"
    if kwargs.get("accumulate_grad_batches", 1) != 1 or str(kwargs.get("devices", 1)) != "1":
        return "gradient accumulation or several devices"
    known = (JournalEpochs, CacheCounts)
    if others := [type(c).__name__ for c in request.callbacks if not isinstance(c, known)]:
        return f"callbacks {', '.join(others)}"
    return None


def pack_signature(request: FitRequest) -> tuple:
    """What the members of one pack share: architecture, data, batches, epochs, optimiser."""
    module, data = request.module, request.datamodule
    shapes = tuple((n, tuple(p.shape)) for n, p in module.student.named_parameters())

    def partial(factory: Any) -> Any:
        if factory is None:
            return None
        return (factory.func, tuple(factory.args), tuple(sorted(factory.keywords.items())))

    return (
        type(module.student),
        shapes,
        data.splits.fingerprint(),
        data.batch_size,
        request.epochs,
        partial(module.optimizer_factory),
        partial(module.scheduler_factory),
        module.teacher is None,
        None if request.resume is None else request.resume["epochs_done"],
    )


def _draw(state: Tensor, n: int, has_val: bool) -> tuple[Tensor, Tensor]:
    """One epoch's sample order under a member's RNG state, drawn as its Lightning fit draws it
    (its batches are consecutive slices of it); and the RNG state after the epoch's draws."""
    torch.set_rng_state(state)
    skip_loader_seed()  # the train loader's iterator
    order = sampler_order(n)
    if has_val:
        skip_loader_seed()  # the validation loader's (a fit alone draws it in its fused step)
    return order, torch.get_rng_state()


def _accuracy(logits: Tensor, y: Tensor, k: int = 1) -> Tensor:
    """Per member: the fraction of samples whose label is among the top ``k`` logits, counted
    as a fit alone counts it."""
    return correct_top_k(logits, y, k).float() / len(y)


class _Epoch:
    """Stand-in for the trainer in the journal callbacks' hooks."""

    def __init__(self, epoch: int) -> None:
        self.current_epoch = epoch
        self.is_global_zero = True


def train_pack(requests: Sequence[FitRequest]) -> list[FitResult]:
    """Train the fits of ``requests`` (one ``pack_signature``) together; each member's
    checkpoints, logger rows, journal lines and student weights are written as its own fit
    writes them."""
    started = time.perf_counter()
    first = requests[0]
    modules = [r.module for r in requests]
    splits: DataSplits = first.datamodule.splits
    params, buffers = stack_module_state([m.student for m in modules])
    train_forward, eval_forward, set_mode = _pack_forward(modules[0].student, buffers)
    optimizer = first.module.optimizer_factory(list(params.values()))
    scheduler = first.module.scheduler_factory
    scheduler = scheduler(optimizer) if scheduler is not None else None
    first_epoch, global_step, members = restore_members(
        list(requests), params, optimizer, scheduler
    )
    zero_grad, optimizer_step = (
        direct_zero_grad(optimizer),
        direct_step(optimizer) or optimizer.step,
    )
    has_val = len(splits.y_val) > 0
    rng = torch.get_rng_state()
    for r in requests:
        _callbacks(r, "on_train_start", first_epoch)
    groups = _loss_groups(modules)
    forms = [batched_form(method) for method, _ in groups]
    member_group = _member_groups(groups, len(requests))
    tables = _teacher_tables(modules, splits)
    offsets = None
    if tables is not None:  # what each member's loss terms read of its teacher
        tables, which = _distinct([
            table if (form := forms[member_group[k]]) is None else form.teacher_rows(table)
            for k, table in enumerate(tables)
        ])  # fmt: skip
        offsets = which.unsqueeze(1) * len(splits.y_train)  # each member's rows of the tables
    n, batch_size = len(splits.y_train), first.datamodule.batch_size
    sizes = torch.tensor(
        [min(batch_size, n - s) for s in range(0, n, batch_size)], dtype=torch.float
    )
    loss_terms: dict[int, tuple[str, ...]] = {}  # per loss group: its method's loss terms
    top5 = splits.num_classes > 10
    saved_at = time.monotonic()
    with without_nvml_probe():
        for epoch in range(first_epoch, first.epochs):
            orders = []
            for member in members:
                order, member.rng_state = _draw(member.rng_state, n, has_val)
                orders.append(order)
            stacked = torch.stack(orders)  # [members, samples]: each member's sample order
            # the epoch's inputs, labels and teacher rows in each member's order; a batch is a slice
            xs_epoch, ys_epoch = _rows(splits.x_train, stacked), _rows(splits.y_train, stacked)
            teacher_epoch = (
                None if tables is None else _rows(tables.flatten(0, 1), stacked + offsets)
            )
            for m in modules:
                m.method.epoch = epoch
            steps: dict[tuple[int, str], list[Tensor]] = {}  # per group and term: its steps
            set_mode(True)
            for start in range(0, n, batch_size):
                end = start + batch_size
                index = stacked[:, start:end]
                logits = train_forward(params, xs_epoch[:, start:end])
                ys = ys_epoch[:, start:end]
                teacher = None if teacher_epoch is None else teacher_epoch[:, start:end]
                group_losses = []
                for g, (method, group) in enumerate(groups):
                    form = forms[g]
                    if group is None:  # every member
                        terms, names = _group_terms(method, form, logits, teacher, ys, index)
                    else:
                        rows = None if teacher is None else teacher[group]
                        terms, names = _group_terms(
                            method, form, logits[group], rows, ys[group], index[group]
                        )
                    loss_terms[g] = names
                    for term, value in terms.items():
                        steps.setdefault((g, term), []).append(value.detach())
                    group_losses.append(terms["loss"].sum())
                zero_grad()
                total = group_losses[0] if len(groups) == 1 else torch.stack(group_losses).sum()
                total.backward()
                optimizer_step()
                global_step += 1
            set_mode(False)
            with torch.no_grad():
                val_logits = eval_forward(params, splits.x_val)
                accs = _accuracy(val_logits, splits.y_val)
                accs5 = _accuracy(val_logits, splits.y_val, 5) if top5 else None
            sums = _epoch_sums(steps, sizes, groups, len(requests))
            for k, (r, member) in enumerate(zip(requests, members, strict=True)):
                means = {t: v / n for t, v in sums[k].items()}
                temperature = getattr(r.module.method, "temperature", None)
                if temperature is not None:
                    means["temperature"] = float(temperature)
                for name, value in means.items():
                    curve = member.curves.setdefault(name, [])
                    curve.extend([None] * (epoch - len(curve)))
                    curve.append(value)
                # as a fit alone logs them: a method's one loss term only as train/loss
                names = loss_terms[member_group[k]]
                hidden = {"temperature", *(names if len(names) == 1 else ())}
                metrics = {f"train/{t}": v for t, v in means.items() if t not in hidden}
                if has_val:
                    acc = float(accs[k])
                    member.val_history.append(100.0 * acc)
                    metrics["val/acc"] = acc
                    if accs5 is not None:
                        metrics["val/acc_top5"] = float(accs5[k])
                    if acc > member.best_acc:
                        member.best_acc = acc
                        member.best = {name: p[k].detach().clone() for name, p in params.items()}
                for logger in r.loggers or ():
                    logger.log_metrics(metrics | {"epoch": epoch}, step=global_step - 1)
            if scheduler is not None:
                scheduler.step()
            every_s = first.checkpoint_every_s
            final = epoch + 1 == first.epochs
            if every_s <= 0 or final or time.monotonic() - saved_at >= every_s:
                train_s = (time.perf_counter() - started) / len(requests)
                save_members(
                    list(requests), members, params, optimizer, scheduler, epoch + 1,
                    global_step, train_s,
                )  # fmt: skip
                saved_at = time.monotonic()
                for r in requests:  # journaled once a resume would start after it
                    _callbacks(r, "on_train_epoch_end", epoch)
    train_s = (time.perf_counter() - started) / len(requests)
    last = {name: p.detach() for name, p in params.items()}
    results = [
        _finish(r, k, last, member, member.train_s + train_s, global_step, first_epoch)
        for k, (r, member) in enumerate(zip(requests, members, strict=True))
    ]
    torch.set_rng_state(rng)
    for r, member in zip(requests, members, strict=True):
        r.rng_state = member.rng_state
    return results


def _rows(table: Tensor, order: Tensor) -> Tensor:
    """``table[order]`` for a 2-d ``order`` (as one ``index_select``, several times faster)."""
    return table.index_select(0, order.reshape(-1)).view(*order.shape, *table.shape[1:])


def _teacher_tables(modules: Sequence[Any], splits: DataSplits) -> Tensor | None:
    """Each member's teacher logits for every training sample, ``[members, samples, classes]``,
    read once: tabular data has one view per sample, so a step's teacher outputs are rows of
    this table (the same fp16-rounded rows the prediction cache gives a fit alone)."""
    if modules[0].teacher is None:
        return None
    index = torch.arange(len(splits.y_train), device=splits.x_train.device)
    tables = []
    for module in modules:
        x, view = module.transform.augment(splits.x_train)
        module.teacher.to(x.device)
        tables.append(module.teacher(x, index, view).logits)
    return torch.stack(tables)


def _distinct(tables: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The distinct ones of the members' teacher tables, stacked, and each member's position in
    them: the members of a seed sweep share one teacher, and one table a fraction of the size
    makes the epoch's gather of rows several times faster."""
    distinct: list[Tensor] = []
    which = []
    for table in tables:
        same = [u for u, seen in enumerate(distinct) if torch.equal(seen, table)]
        if not same:
            distinct.append(table)
        which.append(same[0] if same else len(distinct) - 1)
    return torch.stack(distinct), torch.tensor(which)


def _settings(method: DistillMethod) -> tuple:
    scalars = (int, float, str, bool, type(None))
    return type(method), tuple(
        sorted((k, v) for k, v in vars(method).items() if isinstance(v, scalars))
    )


def _loss_groups(modules: Sequence[Any]) -> list[tuple[DistillMethod, Tensor | None]]:
    """Members whose methods have the same settings (a seed sweep: all of them), so that one
    vmapped call computes their losses; with the members' positions in the pack (None: one
    group of every member)."""
    groups: dict[tuple, tuple[DistillMethod, list[int]]] = {}
    for k, module in enumerate(modules):
        groups.setdefault(_settings(module.method), (module.method, []))[1].append(k)
    if len(groups) == 1:
        return [(modules[0].method, None)]
    return [(method, torch.tensor(members)) for method, members in groups.values()]


def _group_terms(
    method: DistillMethod,
    form: BatchedTerms | None,
    logits: Tensor,
    teacher: Tensor | None,
    y: Tensor,
    index: Tensor,
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Per member of a loss group: its named loss terms, their sum ``loss`` and the method's
    step metrics, as ``DistillModule._step`` computes them for one fit: with the method's
    batched ``form`` where it has one (``packed_losses.py``), else the method itself under
    ``vmap``; and the names of the loss terms."""
    if form is not None:  # methods with no step metrics
        batched = form(logits, teacher, y)
        return {**batched, "loss": torch.stack(list(batched.values())).sum(0)}, tuple(batched)
    names: list[str] = []

    def one(s: Tensor, t: Tensor | None, labels: Tensor, idx: Tensor) -> dict[str, Tensor]:
        target = None if t is None else ModelOutputs(t, {})
        losses = method(ModelOutputs(s, {}), target, labels, idx)
        names[:] = losses
        loss = torch.stack(list(losses.values())).sum()
        return {**losses, "loss": loss, **method.step_metrics()}

    in_dims = (0, None if teacher is None else 0, 0, 0)
    return vmap(one, in_dims=in_dims)(logits, teacher, y, index), tuple(names)


def _member_groups(groups: list[tuple[DistillMethod, Tensor | None]], count: int) -> list[int]:
    """Each member's loss group."""
    member_group = [0] * count
    for g, (_, group) in enumerate(groups):
        for k in range(count) if group is None else group.tolist():
            member_group[k] = g
    return member_group


def _callbacks(request: FitRequest, hook: str, epoch: int) -> None:
    for callback in request.callbacks:
        if isinstance(callback, JournalEpochs):
            getattr(callback, hook)(_Epoch(epoch), request.module)


def _finish(
    request: FitRequest,
    k: int,
    last: dict[str, Tensor],
    member: MemberState,
    train_time: float,
    global_step: int,
    start_epoch: int,
) -> FitResult:
    """Test the member's last and best weights, write its best checkpoint, leave the best
    weights in its student (as testing the best checkpoint does in a fit alone)."""
    best = member.best
    module = request.module
    splits: DataSplits = request.datamodule.splits
    student = module.student
    epochs = request.epochs

    def test(weights: dict[str, Tensor]) -> tuple[float, float | None]:
        student.load_state_dict(weights)
        student.eval()
        with torch.no_grad():
            logits = student(splits.x_test).unsqueeze(0)
        acc5 = _accuracy(logits, splits.y_test, 5) if splits.num_classes > 10 else None
        return 100.0 * float(_accuracy(logits, splits.y_test)), (
            None if acc5 is None else 100.0 * float(acc5)
        )

    def log_test(acc: float, acc5: float | None) -> None:  # a row per test, as in a fit alone
        row = {"test/acc": acc / 100.0, "epoch": epochs}
        if acc5 is not None:
            row["test/acc_top5"] = acc5 / 100.0
        for logger in request.loggers or ():
            logger.log_metrics(row, step=global_step)

    last_member = {name: w[k] for name, w in last.items()}
    test_last, top5 = test(last_member)
    log_test(test_last, top5)
    test_best = None
    if best is not None:
        test_best, best5 = test(best)
        log_test(test_best, best5)
        _checkpoint(request, "best", epochs, global_step)
    student.train()
    _callbacks(request, "on_train_end", epochs)
    teacher = module.teacher
    for callback in request.callbacks:
        if isinstance(callback, CacheCounts):  # the one lookup of the table
            callback.counts = {"hits": teacher.hits, "misses": teacher.misses}
    for logger in request.loggers or ():
        logger.log_hyperparams(dict(module.hparams))
        logger.save()
        logger.finalize("success")
    return FitResult(
        epochs=epochs,
        val_history=member.val_history,
        test_acc_last=test_last,
        test_acc_best=test_best,
        test_acc5_last=top5,
        train_time_s=train_time,
        start_epoch=start_epoch,
        curves=member.curves,
    )


def _checkpoint(request: FitRequest, name: str, epochs: int, global_step: int) -> None:
    """``checkpoints/<name>.ckpt`` with the student's current weights and the fit's
    hyperparameters (what ``hpmkd.load_student`` reads)."""
    module = request.module
    state = {f"student.{n}": v.detach().clone() for n, v in module.student.state_dict().items()}
    ckpt = {
        "epoch": epochs - 1,
        "global_step": global_step,
        "state_dict": state,
        "hyper_parameters": dict(module.hparams),
        "packed": True,
    }
    path = request.out_dir / "checkpoints" / f"{name}.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(ckpt, tmp))


def _pack_forward(
    student: nn.Module, buffers: dict[str, Tensor]
) -> tuple[Callable[..., Tensor], Callable[..., Tensor], Callable[[bool], None]]:
    """The pack's training and evaluation forwards (``params``, each member's inputs / one input
    for all) and its train/eval switch: the stacked model for MLPs of Linear layers and ReLU
    (``stacked_mlp.py``), else ``functional_call`` under ``vmap``."""
    stacked = stacked_forward(student)
    if stacked is not None:
        return stacked, functools.partial(stacked, shared=True), lambda training: None
    base = copy.deepcopy(student).to("meta")

    def forward(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, (p, b), (x,))

    train_forward, eval_forward = vmap(forward), vmap(forward, in_dims=(0, 0, None))
    return (
        lambda p, x: train_forward(p, buffers, x),
        lambda p, x: eval_forward(p, buffers, x),
        base.train,
    )


def _epoch_sums(
    steps: dict[tuple[int, str], list[Tensor]],
    sizes: Tensor,
    groups: list[tuple[DistillMethod, Tensor | None]],
    count: int,
) -> list[dict[str, float]]:
    """Each member's terms summed over the epoch's steps, each step's value times its batch
    size (what the fit's epoch mean is made of)."""
    sums: list[dict[str, float]] = [{} for _ in range(count)]
    for (g, term), per_step in steps.items():
        group = groups[g][1]
        members = range(count) if group is None else group.tolist()
        total = (torch.stack(per_step) * sizes.unsqueeze(1)).sum(0).tolist()
        for k, value in zip(members, total, strict=True):
            sums[k][term] = value
    return sums
