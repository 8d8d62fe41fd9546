"""Post-training int8 quantization of an exported ONNX model, with onnxruntime.

Static quantization: real images (the calibration set) are run through the float model to
record each activation's range; weights become int8 per output channel, activations uint8
with the recorded scales, written as QuantizeLinear/DequantizeLinear pairs (QDQ) that
onnxruntime fuses into int8 convolutions and matmuls when it loads the file. That is
onnxruntime's recommended form for x86. On CPUs with AVX512-VNNI or AVX-VNNI a uint8 x int8
dot product instruction does twice the multiply-adds of a bf16 one, which is where the
speed comes from (``alexnet bench inference`` measures it against float32).

The price is accuracy: :func:`alexnet.inference.export.export_model` checks the quantized model's
top-1 agreement with the float model on the calibration images, and ``alexnet eval
model.int8.onnx`` measures its accuracy on the test split.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["quantize_int8", "CALIBRATION_METHODS"]

# minmax: the observed range (fast, the default). percentile: clips the 0.001% tails, which
# helps when a few outliers stretch a range. entropy: the KL-divergence choice of TensorRT.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def quantize_int8(
    float_model: str | os.PathLike,
    output: str | os.PathLike,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    batch_size: int = 32,
) -> None:
    """Write an int8 (QDQ) version of ``float_model`` to ``output``.

    ``calibration``: float32 (N, C, S, S) images preprocessed exactly as for inference
    (resized, cropped, normalised); a few hundred representative images are enough.
    ``float_model`` must have a dynamic batch axis (as ``alexnet export`` writes it).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be (N, C, S, S) with N >= 1, got {calibration.shape}")
    import onnx

    input_name = onnx.load(os.fspath(float_model), load_external_data=False).graph.input[0].name
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._starts = iter(range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._starts, None)
            if start is None:
                return None
            return {input_name: calibration[start : start + batch_size]}

    output = Path(output)
    prepared = output.with_name(f".{output.stem}.prep{output.suffix}")
    chosen = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    # onnxruntime's quantizer logs and warns about every tensor it treats specially; none of
    # that is actionable for a user of this command.
    root = logging.getLogger()
    quiet = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Shape inference and graph clean-up first, as onnxruntime's docs recommend:
            # the quantizer needs every tensor's shape to quantize it.
            quant_pre_process(os.fspath(float_model), os.fspath(prepared))
            quantize_static(
                os.fspath(prepared),
                os.fspath(output),
                Batches(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: VNNI's form
                weight_type=QuantType.QInt8,
                per_channel=True,  # one scale per output channel: conv1's filters differ a lot
                calibrate_method=chosen,
            )
    finally:
        root.setLevel(quiet)
        prepared.unlink(missing_ok=True)
