"""patch-gguf on tiny GGUFs: only the chosen head columns change, by exactly c (up to fp16 rounding of
the block scale), for every supported storage type; K-quant blocks shared by heads are requantized by
libggml and match libggml quantizing the ideal values."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

from pear_edge.converters.gguf_layout import pear_metadata, read_gguf, tensor_bytes, tensor_signature
from pear_edge.converters.gguf_patch import patch_gguf
from pear_edge.converters.gguf_quant import SCALE_OFFSETS, to_float
from pear_edge.converters.libggml import quantize_blocks

from gguf_tiny import coefficients_for, write_tiny_gguf

HEADS = [(0, 1, 0.5), (1, 2, -0.75), (1, 3, 1.25)]   # includes a negative coefficient
FP16_EPS = 2.0 ** -11


def tensors(path):
    reader = read_gguf(path)
    return reader, {t.name: t for t in reader.tensors}


def assert_only_heads_changed(src, out, heads):
    r_in, a = tensors(src)
    r_out, b = tensors(out)
    assert tensor_signature(r_in) == tensor_signature(r_out)
    edited = {f"blk.{l}.attn_output.weight" for l, _, _ in heads}
    for name, t in a.items():
        if name not in edited:
            assert np.array_equal(t.data.view(np.uint8), b[name].data.view(np.uint8)), name
    for key, field in r_in.fields.items():
        if not key.startswith("GGUF."):
            assert r_out.fields[key].contents() == field.contents(), key
    assert set(pear_metadata(r_out)) == {"pear.version", "pear.tool", "pear.coefficients", "pear.source_sha256",
                                         "pear.report"}
    for layer in {l for l, _, _ in heads}:
        name = f"blk.{layer}.attn_output.weight"
        old = to_float(tensor_bytes(a[name]), a[name].tensor_type).astype(np.float64)
        new = to_float(tensor_bytes(b[name]), b[name].tensor_type).astype(np.float64)
        yield layer, old, new


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1])
def test_legacy_types_scale_exactly(tmp_path, qtype):
    src = write_tiny_gguf(tmp_path / "in.gguf", qtype)
    coeffs = coefficients_for(src, HEADS)
    report = patch_gguf(src, coeffs, tmp_path / "out.gguf", progress=False)
    expected_method = "values" if qtype in (T.F32, T.F16, T.BF16) else "scale-edit"
    assert set(report["methods"]) == {expected_method}
    tol = {T.F32: 1e-7, T.F16: 2 ** -11, T.BF16: 2 ** -8}.get(qtype, 2 * FP16_EPS)
    for layer, old, new in assert_only_heads_changed(src, tmp_path / "out.gguf", HEADS):
        expected = old.copy()
        for l, h, c in HEADS:
            if l == layer:
                expected[:, h * 32:(h + 1) * 32] *= c
        changed = np.zeros(old.shape[1], bool)
        changed[[h * 32 + i for l, h, _ in HEADS if l == layer for i in range(32)]] = True
        assert np.array_equal(new[:, ~changed], old[:, ~changed])       # other heads bit-identical
        scale = np.abs(expected[:, changed]).max()
        assert np.abs(new[:, changed] - expected[:, changed]).max() <= tol * scale


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_1, T.Q5_1])
def test_scale_edit_changes_only_scale_bytes(tmp_path, qtype):
    """The quantized payload (qs/qh) stays byte-identical: no requantization happened."""
    src = write_tiny_gguf(tmp_path / "in.gguf", qtype)
    patch_gguf(src, coefficients_for(src, HEADS), tmp_path / "out.gguf", progress=False)
    _, a = tensors(src)
    _, b = tensors(tmp_path / "out.gguf")
    type_size = GGML_QUANT_SIZES[qtype][1]
    payload = np.ones(type_size, bool)
    for off in SCALE_OFFSETS[qtype]:
        payload[off:off + 2] = False
    for layer in (0, 1):
        name = f"blk.{layer}.attn_output.weight"
        x = tensor_bytes(a[name]).reshape(-1, type_size)
        y = tensor_bytes(b[name]).reshape(-1, type_size)
        assert np.array_equal(x[:, payload], y[:, payload])


@pytest.mark.parametrize("qtype", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K])
def test_k_quant_superblock_per_head_is_exact(tmp_path, qtype):
    src = write_tiny_gguf(tmp_path / "in.gguf", qtype, num_heads=4, head_dim=256, hidden=32)
    report = patch_gguf(src, coefficients_for(src, HEADS), tmp_path / "out.gguf", progress=False)
    assert set(report["methods"]) == {"scale-edit"}
    for layer, old, new in assert_only_heads_changed(src, tmp_path / "out.gguf", HEADS):
        for l, h, c in HEADS:
            if l == layer:
                cols = slice(h * 256, (h + 1) * 256)
                # Q2_K..Q5_K subtract a dmin term: bound by both terms, each rounded once in fp16.
                bound = 2 * FP16_EPS * abs(c) * np.abs(old[:, cols]).max() * 4
                assert np.abs(new[:, cols] - c * old[:, cols]).max() <= bound
    assert report["max_rel_error"] < 4 * FP16_EPS


def test_k_quant_shared_superblock_is_requantized_by_libggml(tmp_path):
    """head_dim 64 < 256: the super-block holding head 1 also holds heads 0, 2, 3 -> requantize it."""
    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q4_K, num_heads=8, head_dim=64, hidden=32)
    heads = [(0, 1, 0.5)]
    report = patch_gguf(src, coefficients_for(src, heads), tmp_path / "out.gguf", progress=False)
    info = report["tensors"]["blk.0.attn_output.weight"]
    assert info["method"] == "requantize"
    assert 0 < info["rms_rel_error"] < 0.2
    _, a = tensors(src)
    _, b = tensors(tmp_path / "out.gguf")
    old = tensor_bytes(a["blk.0.attn_output.weight"]).reshape(32, 2, 144)
    new = tensor_bytes(b["blk.0.attn_output.weight"]).reshape(32, 2, 144)
    assert np.array_equal(old[:, 1], new[:, 1])                         # super-block of heads 4-7 untouched
    values = dequantize(np.ascontiguousarray(old[:, 0]), T.Q4_K)
    values[:, 64:128] *= 0.5
    assert np.array_equal(new[:, 0], quantize_blocks(values, T.Q4_K))   # exactly what libggml writes
    assert np.array_equal(tensor_bytes(a["blk.1.attn_output.weight"]), tensor_bytes(b["blk.1.attn_output.weight"]))


def test_fp16_scale_overflow_is_refused(tmp_path):
    from pear_edge.errors import PearError

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q8_0)
    with pytest.raises(PearError, match="overflows the fp16 block scale"):
        patch_gguf(src, coefficients_for(src, [(0, 0, 1e9)]), tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()
