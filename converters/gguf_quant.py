"""Scale columns inside one GGUF tensor's raw bytes, as exactly as its storage type allows.

A row of a 2-D GGUF weight runs along its *input* features (ggml ne0): attn_output's along the
concatenated heads (n_head*head_dim), attn_q/attn_k's along the hidden channels. So "W[:, j] *= f_j"
(pear_edge.edits.fold) scales element j of every row, and quant blocks tile that axis. Per block, best first:

* scale-edit: every factor in the block is the same c (a head covering whole blocks, or a per-channel
  vector constant over the block) -> multiply the block's fp16 scale(s) by c. Dequantization of all
  these types is linear in (d, m) / (d, dmin): x = d*q + m, or x = d*sc*q - dmin*mn, so
  c*x = (c*d)*q + (c*m) exactly, for any sign of c (fp16 scales are signed and no ggml kernel assumes
  a sign). The only error is fp16 rounding of c*d (<= 2^-11).
* requantize: the factors differ inside the block (a K-quant super-block shared by heads, o_proj
  channel scales, one q/k channel inside a 32-wide block) -> dequantize just those blocks, scale the
  columns, requantize them with libggml (llama.cpp's own quantizer).
* values: F32/F16/BF16 -> scale the numbers, round to the storage type.
A whole row scaled (`scale_rows`: a head's query rows under an attention temperature) is the first case for
every block of the row: a scale-edit, exact up to fp16 rounding of the scale(s), for every quantized type here.
Blocks whose factors are all 1 are left byte-identical. Every result carries the error it introduced,
measured against f * dequantize(original) over the blocks it touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from pear_edge.base.errors import PearError

from pear_edge.converters.libggml import QUANTIZABLE, quantize_blocks

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
    method: str              # "scale-edit" | "values" | "requantize" (some blocks requantized) | "unchanged"
    max_rel_error: float     # max |got - f*orig| / max |f*orig| over the touched blocks' columns
    rms_rel_error: float     # rms(got - f*orig) / rms(f*orig) over the touched blocks' columns
    requantized_blocks: int = 0  # blocks (over all rows) that went through libggml's quantizer


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


def scale_head_columns(raw: np.ndarray, qtype: T, head_dim: int, coefficients: dict[int, float],
                       name: str = "tensor") -> ScaledTensor:
    """Return new bytes for a (rows, row_bytes) tensor with head h's columns multiplied by c_h."""
    check_supported(qtype, name)
    block, type_size = GGML_QUANT_SIZES[qtype]
    return scale_columns(raw, qtype, column_factors(raw.shape[1] // type_size * block, head_dim, coefficients), name)


def scale_columns(raw: np.ndarray, qtype: T, factors: np.ndarray, name: str = "tensor") -> ScaledTensor:
    """Return new bytes for a (rows, row_bytes) tensor with column j (element j of every row) multiplied by
    factors[j]: a scale-edit of the blocks with one factor, libggml requantization of the others."""
    check_supported(qtype, name)
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows = raw.shape[0]
    width = raw.shape[1] // type_size * block
    factors = np.asarray(factors, dtype=np.float64)
    if factors.shape != (width,):
        raise PearError(f"{name}: {factors.shape[0] if factors.ndim == 1 else factors.shape} column factors for "
                        f"{width} columns")
    per_block = factors.reshape(-1, block)
    touched = np.flatnonzero((per_block != 1.0).any(1))
    uniform = touched[(per_block[touched] == per_block[touched, :1]).all(1)]
    mixed = np.setdiff1d(touched, uniform)
    requantized = 0
    if not touched.size:
        return ScaledTensor(raw.copy(), "unchanged", 0.0, 0.0)
    if qtype in FLOAT_TYPES:
        new, method = from_float(to_float(raw, qtype) * factors, qtype), "values"
    else:
        new, method = raw.reshape(rows, -1, type_size), "scale-edit"
        if uniform.size:
            new = _edit_scales(new, qtype, {int(b): float(per_block[b, 0]) for b in uniform}, name)
        if mixed.size:
            if qtype not in QUANTIZABLE:
                raise PearError(f"{name}: cannot requantize {qtype.name}")
            new, method = _requantize(new, qtype, factors, mixed), "requantize"
            requantized = rows * mixed.size
    new = new.reshape(rows, -1)
    cols = (touched[:, None] * block + np.arange(block)).ravel()
    ideal = to_float(raw, qtype)[:, cols].astype(np.float64) * factors[cols]
    err = to_float(new, qtype)[:, cols] - ideal
    max_rel = float(np.abs(err).max() / max(np.abs(ideal).max(), 1e-30))
    rms_rel = float(np.sqrt((err ** 2).mean()) / max(np.sqrt((ideal ** 2).mean()), 1e-30))
    return ScaledTensor(new, method, max_rel, rms_rel, requantized)


def scale_rows(raw: np.ndarray, qtype: T, factors: np.ndarray, name: str = "tensor") -> ScaledTensor:
    """Return new bytes for a (rows, row_bytes) tensor with row i (every input feature of output feature i)
    multiplied by factors[i]: every block of a scaled row has its fp16 scale(s) multiplied by the row's factor
    (`_edit_scales`), float types have their values scaled; rows whose factor is 1 stay byte-identical."""
    check_supported(qtype, name)
    type_size = GGML_QUANT_SIZES[qtype][1]
    rows = raw.shape[0]
    factors = np.asarray(factors, dtype=np.float64)
    if factors.shape != (rows,):
        raise PearError(f"{name}: {factors.shape[0] if factors.ndim == 1 else factors.shape} row factors for "
                        f"{rows} rows")
    touched = np.flatnonzero(factors != 1.0)
    if not touched.size:
        return ScaledTensor(raw.copy(), "unchanged", 0.0, 0.0)
    new = raw.copy()
    if qtype in FLOAT_TYPES:
        scaled = from_float(to_float(np.ascontiguousarray(raw[touched]), qtype) * factors[touched, None], qtype)
        new[touched], method = scaled.reshape(touched.size, -1), "values"
    else:
        blocks = new.reshape(rows, -1, type_size)
        every_block = range(blocks.shape[1])
        for c in np.unique(factors[touched]):
            picked = touched[factors[touched] == c]
            blocks[picked] = _edit_scales(blocks[picked], qtype, {b: float(c) for b in every_block}, name)
        new, method = blocks.reshape(rows, -1), "scale-edit"
    ideal = to_float(np.ascontiguousarray(raw[touched]), qtype).astype(np.float64) * factors[touched, None]
    err = to_float(np.ascontiguousarray(new[touched]), qtype) - ideal
    max_rel = float(np.abs(err).max() / max(np.abs(ideal).max(), 1e-30))
    rms_rel = float(np.sqrt((err ** 2).mean()) / max(np.sqrt((ideal ** 2).mean()), 1e-30))
    return ScaledTensor(new, method, max_rel, rms_rel)


def _edit_scales(blocks: np.ndarray, qtype: T, factors: dict[int, float], name: str) -> np.ndarray:
    """blocks: (rows, blocks per row, type_size) uint8; multiply the fp16 scale(s) of block b by factors[b]."""
    out = blocks.copy()
    by_factor: dict[float, list[int]] = {}
    for b, c in factors.items():
        by_factor.setdefault(c, []).append(b)
    for c, idx in by_factor.items():
        for off in SCALE_OFFSETS[qtype]:
            scale = np.ascontiguousarray(out[:, idx, off:off + 2]).view(np.float16)
            with np.errstate(over="ignore"):
                scaled = (scale.astype(np.float64) * c).astype(np.float16)
            if not np.isfinite(scaled).all():
                raise PearError(f"{name}: scale {c} overflows the fp16 block scale")
            out[:, idx, off:off + 2] = scaled.view(np.uint8).reshape(out[:, idx, off:off + 2].shape)
    return out


def _requantize(blocks: np.ndarray, qtype: T, factors: np.ndarray, picked_blocks: np.ndarray) -> np.ndarray:
    """blocks: (rows, blocks per row, type_size) uint8; dequantize `picked_blocks`, scale, requantize with libggml."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows = blocks.shape[0]
    out = blocks.copy()
    picked = np.ascontiguousarray(out[:, picked_blocks]).reshape(-1, type_size)
    values = dequantize(picked, qtype).reshape(rows, len(picked_blocks), block)
    values = values * factors.reshape(-1, block)[picked_blocks]
    out[:, picked_blocks] = quantize_blocks(values.reshape(-1, block), qtype).reshape(rows, len(picked_blocks), type_size)
    return out
