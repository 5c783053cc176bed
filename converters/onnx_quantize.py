"""Weight quantization of an fp32 ONNX export with onnxruntime's own tools.

int8: dynamic quantization (weights int8 per output channel, activations quantized at run time),
      i.e. MatMul -> DynamicQuantizeLinear + MatMulInteger. Weights use 7 bits (reduce_range): on x86
      CPUs without VNNI the u8 x s8 kernel sums pairs in saturating int16, and full-range weights
      overflowed there (SmolLM2-135M: 0 % top-1 agreement with torch; see docs/onnx.md).
int4: weight-only blockwise 4-bit (MatMulNBits, block 32, symmetric), activations stay fp32.
PEAR coefficients must be folded before this step: afterwards o_proj weights are integers.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx

from pear_edge.base.errors import PearError

QUANTIZATIONS = ("none", "int8", "int4")
INT4_BLOCK_SIZE = 32
TWO_GB = 2 * 1024**3


NOISY_LOGGERS = ("", "onnxruntime.quantization.matmul_nbits_quantizer")


@contextlib.contextmanager
def _quiet_quantizer_logs():
    """onnxruntime's quantizers log one INFO line per node and a pre-processing hint (root logger and their own)."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer_logs():
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=True, weight_type=QuantType.QInt8,
                         use_external_data_format=_needs_external(source))


def quantize_int4(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise PearError(f"onnxruntime's 4-bit quantizer is unavailable ({exc}); pip install onnx-ir") from None

    with _quiet_quantizer_logs():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=INT4_BLOCK_SIZE,
                                         is_symmetric=True, op_types_to_quantize=("MatMul",))
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=_needs_external(source))


def _needs_external(source: Path) -> bool:
    return sum(p.stat().st_size for p in source.parent.glob(source.name + "*")) > TWO_GB


def quantize(kind: str, source: Path, target: Path) -> None:
    if kind == "int8":
        quantize_int8(source, target)
    elif kind == "int4":
        quantize_int4(source, target)
    else:
        raise PearError(f"unknown quantization {kind!r}; choose one of {', '.join(QUANTIZATIONS)}")
