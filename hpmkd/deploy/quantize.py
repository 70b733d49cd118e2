"""Post-training int8: dynamic for Linear layers (torch.ao, saved as TorchScript), static for
CNNs (onnxruntime's quantiser on the ONNX file, calibrated on training rows)."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from hpmkd.deploy.export import export_torchscript
from hpmkd.deploy.optional import need
from hpmkd.io import write_atomic

MODES = ("dynamic", "static", "none")
CALIBRATION_ROWS = 512
CALIBRATION_BATCH = 32


def quantize_dynamic(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> Path:
    """Linear weights int8, activations quantised per batch at run time; TorchScript file."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated, and says so
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        quantized = torch.ao.quantization.quantize_dynamic(
            model.eval(), {nn.Linear}, dtype=torch.qint8
        )
    with torch.no_grad():
        return export_torchscript(quantized, example, path, metadata)


def _batches(rows: torch.Tensor) -> Iterator[dict]:
    for start in range(0, len(rows), CALIBRATION_BATCH):
        yield {"input": rows[start : start + CALIBRATION_BATCH].numpy()}


def quantize_static(onnx_path: Path, calibration: torch.Tensor, path: Path) -> Path:
    """Weights and activations int8 (QDQ, per-channel weights) but the final softmax,
    activation ranges from ``calibration`` (raw inputs, at most CALIBRATION_ROWS) by min-max."""
    quantization = need("onnxruntime.quantization", "static int8 quantisation")
    shape_inference = need("onnxruntime.quantization.shape_inference", "static int8 quantisation")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(calibration[:CALIBRATION_ROWS])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    onnx = need("onnx", "static int8 quantisation")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        shape_inference.quant_pre_process(str(onnx_path), str(prepared))
        # the probabilities stay float: int8 steps of 1/255 would be all the output says
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        write_atomic(
            path,
            lambda out: quantization.quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QInt8,
                weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=softmax,
            ),
        )
    return path
