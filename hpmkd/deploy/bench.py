"""``hpmkd bench``: latency and throughput of a run's student and teacher (or of one zoo model)
in eager PyTorch and in each exported format, on CPU or CUDA; ``bench.json`` in the run dir."""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpmkd.deploy.cost import flops, state_size
from hpmkd.deploy.evaluation import run_results
from hpmkd.deploy.export import FORMATS, export, onnx_session, quiet_torchscript
from hpmkd.deploy.latency import cpu_name, measure_interleaved
from hpmkd.deploy.wrapper import Deployable, example_inputs, load_deployable, load_model
from hpmkd.errors import UserError
from hpmkd.io import write_json_atomic
from hpmkd.models import count_parameters

log = logging.getLogger("hpmkd")

BENCH_FILE = "bench.json"
RUNTIMES = ("eager", *FORMATS)  # "onnx" runs on onnxruntime


def read_bench(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / BENCH_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _runner(
    runtime: str, model: Deployable, example: torch.Tensor, tmp: Path, device: str, threads: int
) -> tuple[Callable[[torch.Tensor], Any], int]:
    """A function running a raw batch on ``runtime``, and the bytes of its file."""
    if runtime == "eager":  # a copy: the exports below need the model on the CPU
        module = copy.deepcopy(model).to(device)
        return _no_grad(module), state_size(model.model)
    path = export(model, example, tmp / f"{id(model)}", runtime, {})
    size = path.stat().st_size
    if runtime == "onnx":
        session = onnx_session(path, threads, device)
        return (lambda x: session.run(None, {"input": x.cpu().numpy()})[0]), size
    if runtime == "torchscript":
        with quiet_torchscript():
            module = torch.jit.load(str(path), map_location=device)
    else:
        module = torch.export.load(str(path)).module().to(device)
    return _no_grad(module), size


def _no_grad(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def prepare(
    role: str,
    model: Deployable,
    contract: dict[str, Any],
    *,
    runtimes: list[str],
    device: str,
    threads: int,
    tmp: Path,
) -> list[tuple[dict[str, Any], Callable[[torch.Tensor], Any]]]:
    """Per runtime: the row's fixed fields (model, arch, params, FLOPs, bytes) and a runner."""
    one = example_inputs(contract, 1)
    base = {
        "model": role,
        "arch": contract["arch"],
        "params": count_parameters(model.model),
        "flops": flops(model.model.eval(), _model_input(model, one)),
    }
    prepared = []
    for runtime in runtimes:
        run, size = _runner(runtime, model, example_inputs(contract, 2), tmp, device, threads)
        prepared.append((base | {"runtime": runtime, "size_bytes": size}, run))
    return prepared


def _model_input(model: Deployable, raw: torch.Tensor) -> torch.Tensor:
    """What the inner model sees for ``raw`` (the wrapper's preprocessing, without softmax)."""
    captured: list[torch.Tensor] = []
    handle = model.model.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model(raw)
    finally:
        handle.remove()
    return captured[0]


def _teacher(run_dir: Path, results: dict[str, Any], contract: dict[str, Any]) -> nn.Module | None:
    """The run's teacher as a torch model with its weights, when the run's config names it."""
    from hpmkd.models import load_weights
    from hpmkd.store import ArtifactStore

    record, config = results.get("teacher"), results["config"]
    node = config.get("teacher") or {}
    if not record or node.get("arch") != record["arch"] or config.get("teachers") is not None:
        return None
    extra = record.get("extra") or {}
    if "cost" in extra:  # a scikit-learn teacher: its recorded cost is shown instead
        return None
    spec = contract | {"arch": node["arch"], "params": node.get("params") or {}}
    model = load_model(spec, None)
    if extra.get("checkpoint"):
        weights = extra["checkpoint"]
    elif extra.get("store_key"):
        artifact = ArtifactStore(config["store"]["root"]).get(extra["store_key"])
        weights = str(artifact.model_file) if artifact else None
    else:
        weights = None
    if weights and Path(weights).is_file():
        load_weights(model, weights, source=weights, prefix=node.get("checkpoint_prefix"))
    else:
        log.info("teacher %s: weights not found, timed with initial weights", record["arch"])
    return model.eval()


def spec_contract(name: str, input_shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """A zoo model's stand-in contract: uint8 images (no normalisation) or float rows."""
    image = len(input_shape) == 3
    kind = {"kind": "image", "mean": [0.0], "std": [1.0]} if image else {"kind": "table"}
    return {
        "arch": name,
        "params": {},
        "num_classes": classes,
        "input_shape": list(input_shape),
        "class_names": [str(i) for i in range(classes)],
        "data": "none",
        "input": kind,
    }


def bench(
    target: str,
    *,
    runtimes: list[str],
    batch: int = 64,
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 50,
    input_shape: tuple[int, ...] = (3, 32, 32),
    classes: int = 10,
) -> dict[str, Any]:
    """Bench a run directory (student, and teacher when it is a torch model of the config; a
    scikit-learn teacher's recorded cost is carried over) or a zoo model name; a run's record
    is written to ``<run>/bench.json``. Every (model, runtime) is timed in turn, in rounds, so
    that a change of machine load falls on all of them alike."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA device")
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    path = Path(target)
    with tempfile.TemporaryDirectory() as tmp:
        options = {"runtimes": runtimes, "device": device, "threads": threads, "tmp": Path(tmp)}
        if path.is_dir():
            results = run_results(path)
            student, contract = load_deployable(path)
            prepared = prepare("student", student, contract, **options)
            teacher_model = _teacher(path, results, contract)
            if teacher_model is not None:
                teacher_contract = contract | {"arch": results["teacher"]["arch"]}
                teacher = Deployable(teacher_model, contract)
                prepared += prepare("teacher", teacher, teacher_contract, **options)
            sklearn_cost = ((results.get("teacher") or {}).get("extra") or {}).get("cost")
        else:
            contract = spec_contract(target, input_shape, classes)
            model = Deployable(load_model(contract, None), contract)
            prepared = prepare("model", model, contract, **options)
            sklearn_cost, results = None, None
        one, many = example_inputs(contract, 1), example_inputs(contract, batch, seed=1)
        timed = measure_interleaved(
            [run for _, run in prepared],
            one.to(device),
            many.to(device),
            batch,
            repeats=repeats,
            device=device,
        )
    rows = [fields | figures for (fields, _), figures in zip(prepared, timed, strict=True)]
    machine = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    record = {
        "target": target,
        "device": device,
        "machine": machine,
        "threads": threads,
        "batch": batch,
        "repeats": repeats,
        "rows": rows,
        "teacher_cost": sklearn_cost,
    }
    if results is not None:
        write_json_atomic(path / BENCH_FILE, record)
    return record
