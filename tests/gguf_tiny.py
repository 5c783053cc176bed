"""Tiny GGUF files built offline with gguf-py's GGUFWriter, for the GGUF patch tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter
from gguf.quants import quantize

from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.converters.gguf_layout import gguf_fingerprint, read_gguf
from pear_edge.converters.libggml import quantize_blocks

K_QUANTS = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return values.astype(np.float32)
    if qtype == T.F16:
        return values.astype(np.float16)
    if qtype in K_QUANTS:
        return quantize_blocks(values, qtype)
    return quantize(values.astype(np.float32), qtype)


def write_tiny_gguf(path: Path, qtype: T, num_heads: int = 4, head_dim: int = 32, hidden: int = 64,
                    layers: int = 2, seed: int = 0, raw_attn_output: np.ndarray | None = None,
                    arch: str = "llama", qk_type: T = T.Q8_0, fused_qkv: bool = False, q_bias: bool = False) -> Path:
    """A GGUF (llama arch by default) with just enough metadata and tensors for patch-gguf (attn_q and attn_k
    stored as `qk_type`, or one attn_qkv with `fused_qkv`; an F32 attn_q.bias with `q_bias`)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{qtype.name}")
    w.add_block_count(layers)
    w.add_head_count(num_heads)
    w.add_head_count_kv(num_heads)
    w.add_embedding_length(hidden)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_tensor("token_embd.weight", rng.normal(size=(16, hidden)).astype(np.float32))
    for layer in range(layers):
        w.add_tensor(f"blk.{layer}.attn_norm.weight", rng.normal(size=hidden).astype(np.float32))
        q = rng.normal(size=(num_heads * head_dim, hidden)).astype(np.float32)
        k = np.random.default_rng((seed, layer, 1)).normal(size=(num_heads * head_dim, hidden)).astype(np.float32)
        if fused_qkv:
            w.add_tensor(f"blk.{layer}.attn_qkv.weight", encode(np.concatenate([q, k, k]), qk_type),
                         raw_dtype=_raw(qk_type))
        else:
            w.add_tensor(f"blk.{layer}.attn_q.weight", encode(q, qk_type), raw_dtype=_raw(qk_type))
            w.add_tensor(f"blk.{layer}.attn_k.weight", encode(k, qk_type), raw_dtype=_raw(qk_type))
            if q_bias:
                w.add_tensor(f"blk.{layer}.attn_q.bias", rng.normal(size=num_heads * head_dim).astype(np.float32))
        if raw_attn_output is not None:
            data = raw_attn_output
        else:
            data = encode(rng.normal(size=(hidden, num_heads * head_dim)).astype(np.float32), qtype)
        w.add_tensor(f"blk.{layer}.attn_output.weight", data, raw_dtype=_raw(qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _raw(qtype: T) -> T | None:
    return None if qtype in (T.F32, T.F16) else qtype


def coefficients_for(path: Path, heads: list[tuple[int, int, float]]) -> Coefficients:
    fp = gguf_fingerprint(read_gguf(path), path.name)
    return Coefficients(fp, [HeadCoefficient(l, h, c) for l, h, c in heads])
