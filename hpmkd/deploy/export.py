"""Writing a deployable model as ONNX (the dynamo exporter, checked, run by onnxruntime),
TorchScript or a torch.export program; class names travel inside each file."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpmkd.deploy.optional import need
from hpmkd.io import write_atomic

FORMATS = ("onnx", "torchscript", "exported")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "exported": ".pt2"}
METADATA_KEY = "hpmkd"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> Path:
    """ONNX with a dynamic batch dimension; the graph passes onnx's checker."""
    onnx = need("onnx", "ONNX export")
    need("onnxscript", "ONNX export")
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    proto = program.model_proto
    entry = onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(metadata))
    proto.metadata_props.append(entry)
    onnx.checker.check_model(proto, full_check=True)
    write_atomic(path, lambda tmp: onnx.save_model(proto, str(tmp)))
    return path


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> Path:
    files = {f"{METADATA_KEY}.json": json.dumps(metadata)}
    with quiet_torchscript():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        write_atomic(path, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=files))
    return path


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """TorchScript's deprecation notices, not news to a user who asked for TorchScript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def export_program(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> Path:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    files = {f"{METADATA_KEY}.json": json.dumps(metadata)}
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer
    torch.export.save(program, buffer, extra_files=files)
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return path


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, dict], Path]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
    "exported": export_program,
}


def export(model: nn.Module, example: torch.Tensor, out: Path, fmt: str, metadata: dict) -> Path:
    """``out`` + the format's suffix; ``example`` is a raw input batch (its batch size > 1)."""
    path = out.with_suffix(SUFFIX[fmt])
    example = example.clone()  # a view would bring its whole storage into a .pt2's sample inputs
    with torch.no_grad():
        return EXPORTERS[fmt](model.eval(), example, path, metadata)


def onnx_session(path: Path, threads: int | None = None, device: str = "cpu"):  # noqa: ANN201
    """An onnxruntime InferenceSession for ``path``."""
    ort = need("onnxruntime", "running ONNX models")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def loader(
    fmt: str, path: Path, threads: int | None = None
) -> Callable[[torch.Tensor], np.ndarray]:
    """A function running the exported file on a raw batch, returning probabilities."""
    if fmt == "onnx":
        session = onnx_session(path, threads)
        return lambda x: session.run(None, {"input": x.numpy()})[0]
    if fmt == "torchscript":
        with quiet_torchscript():
            module = torch.jit.load(str(path))
    else:
        module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()

    return run
