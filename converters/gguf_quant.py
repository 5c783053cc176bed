"""Scale head columns inside one GGUF tensor's raw bytes, as exactly as its storage type allows.

Rows of an attn_output tensor run along the concatenated heads (ggml ne0 = n_head*head_dim), so head h
is elements [h*d, (h+1)*d) of every row and quant blocks tile that axis. Three ways, best first:

* scale-edit: every block a head covers lies inside that head -> multiply the block's fp16 scale(s)
  by c. Dequantization of all these types is linear in (d, m) / (d, dmin): x = d*q + m, or
  x = d*sc*q - dmin*mn, so c*x = (c*d)*q + (c*m) exactly, for any sign of c (fp16 scales are
  signed and no ggml kernel assumes a sign). The only error is fp16 rounding of c*d (<= 2^-11).
* values: F32/F16/BF16 -> scale the numbers, round to the storage type.
* requantize: a block straddles heads (e.g. head_dim 64 in a 256-wide K-quant super-block) ->
  dequantize just those blocks, scale the head's columns, requantize them with libggml.
Every result carries the error it introduced, measured against c * dequantize(original).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from pear_edge.errors import PearError

from .libggml import QUANTIZABLE, quantize_blocks

FLOAT_TYPES = {T.F32, T.F16, T.BF16}
# Byte offsets of the fp16 scale fields inside one block (layouts of ggml-common.h's block_* structs).
SCALE_OFFSETS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}
SUPPORTED = FLOAT_TYPES | set(SCALE_OFFSETS)


@dataclass
class ScaledTensor:
    raw: np.ndarray          # new bytes, (rows, row_bytes) uint8
    method: str              # "scale-edit" | "values" | "requantize"
    max_rel_error: float     # max |got - c*orig| / max |c*orig| over the edited columns
    rms_rel_error: float     # rms(got - c*orig) / rms(c*orig) over the edited columns


def check_supported(qtype: T, name: str) -> None:
    if qtype not in SUPPORTED:
        raise PearError(f"{name} is stored as {qtype.name}, which pear-edge cannot patch "
                        f"(supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); "
                        f"patch an F16/Q8_0/K-quant file, or use `pear-edge export gguf`")


def to_float(raw: np.ndarray, qtype: T) -> np.ndarray:
    """Dequantize (rows, row_bytes) uint8 -> (rows, width) float32 (gguf-py reference code)."""
    if qtype == T.F32:
        return raw.view(np.float32)
    if qtype == T.F16:
        return raw.view(np.float16).astype(np.float32)
    return dequantize(raw, qtype)


def from_float(values: np.ndarray, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)
    if qtype == T.F16:
        return np.ascontiguousarray(values.astype(np.float16)).view(np.uint8)
    if qtype == T.BF16:
        return np.ascontiguousarray(quantize(values.astype(np.float32), T.BF16)).view(np.uint8)
    return quantize_blocks(values, qtype)


def column_factors(width: int, head_dim: int, coefficients: dict[int, float]) -> np.ndarray:
    factors = np.ones(width, dtype=np.float64)
    for head, c in coefficients.items():
        factors[head * head_dim:(head + 1) * head_dim] = c
    return factors


def touched_blocks(head_dim: int, block: int, heads: list[int]) -> np.ndarray:
    """Indices of the blocks (along a row) that hold any column of the given heads."""
    idx = set()
    for h in heads:
        idx.update(range(h * head_dim // block, -(-(h + 1) * head_dim // block)))
    return np.array(sorted(idx), dtype=np.int64)


def scale_head_columns(raw: np.ndarray, qtype: T, head_dim: int, coefficients: dict[int, float],
                       name: str = "tensor") -> ScaledTensor:
    """Return new bytes for a (rows, row_bytes) tensor with head h's columns multiplied by c_h."""
    check_supported(qtype, name)
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows = raw.shape[0]
    width = raw.shape[1] // type_size * block
    factors = column_factors(width, head_dim, coefficients)
    blocks = touched_blocks(head_dim, block, sorted(coefficients))
    if qtype in FLOAT_TYPES:
        new, method = from_float(to_float(raw, qtype) * factors, qtype), "values"
    elif head_dim % block == 0:
        new, method = _edit_scales(raw, qtype, head_dim, coefficients, name), "scale-edit"
    elif qtype in QUANTIZABLE:
        new, method = _requantize(raw, qtype, factors, blocks), "requantize"
    else:
        raise PearError(f"{name}: cannot requantize {qtype.name}")
    new = new.reshape(rows, -1)
    cols = (blocks[:, None] * block + np.arange(block)).ravel()
    ideal = to_float(raw, qtype)[:, cols].astype(np.float64) * factors[cols]
    err = to_float(new, qtype)[:, cols] - ideal
    max_rel = float(np.abs(err).max() / max(np.abs(ideal).max(), 1e-30))
    rms_rel = float(np.sqrt((err ** 2).mean()) / max(np.sqrt((ideal ** 2).mean()), 1e-30))
    return ScaledTensor(new, method, max_rel, rms_rel)


def _edit_scales(raw: np.ndarray, qtype: T, head_dim: int, coefficients: dict[int, float], name: str) -> np.ndarray:
    block, type_size = GGML_QUANT_SIZES[qtype]
    out = raw.reshape(raw.shape[0], -1, type_size).copy()
    per_head = head_dim // block
    for head, c in coefficients.items():
        sl = slice(head * per_head, (head + 1) * per_head)
        for off in SCALE_OFFSETS[qtype]:
            scale = np.ascontiguousarray(out[:, sl, off:off + 2]).view(np.float16)
            with np.errstate(over="ignore"):
                scaled = (scale.astype(np.float64) * c).astype(np.float16)
            if not np.isfinite(scaled).all():
                raise PearError(f"{name}: coefficient {c} of head {head} overflows the fp16 block scale")
            out[:, sl, off:off + 2] = scaled.view(np.uint8)
    return out


def _requantize(raw: np.ndarray, qtype: T, factors: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows = raw.shape[0]
    out = raw.reshape(rows, -1, type_size).copy()
    picked = np.ascontiguousarray(out[:, blocks]).reshape(-1, type_size)
    values = dequantize(picked, qtype).reshape(rows, len(blocks), block)
    values = values * factors.reshape(-1, block)[blocks]
    out[:, blocks] = quantize_blocks(values.reshape(-1, block), qtype).reshape(rows, len(blocks), type_size)
    return out
