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
    from pear_edge.base.errors import PearError

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q8_0)
    with pytest.raises(PearError, match="overflows the fp16 block scale"):
        patch_gguf(src, coefficients_for(src, [(0, 0, 1e9)]), tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()


# --------------------------------------------------------------------------- every edit kind

def _dequant(tensor) -> np.ndarray:
    return to_float(tensor_bytes(tensor), tensor.tensor_type).astype(np.float32)


def _folded(values: np.ndarray, edit) -> np.ndarray:
    """pear_edge.edits.fold's own transformation applied to a dequantized GGUF weight, laid out (out, in)."""
    import torch

    w = torch.from_numpy(values.copy())
    edit(w)
    return w.numpy()


def _v2(src, heads=(), channels=(), qk=()):
    from pear_edge.edits.coefficients import ChannelScales, QKChannelScale

    base = coefficients_for(src, list(heads))
    return type(base)(base.model, base.heads, o_proj_channels=[ChannelScales(l, tuple(s)) for l, s in channels],
                      qk_channels=[QKChannelScale(*q) for q in qk])


def test_o_proj_channel_scales_are_requantized_by_libggml_and_equal_the_fold(tmp_path):
    from pear_edge.edits.fold import scale_o_proj_columns

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q4_1)
    rng = np.random.default_rng(3)
    scales = rng.uniform(0.3, 1.7, 128)
    coeffs = _v2(src, heads=[(0, 1, 0.5), (1, 2, -0.75)], channels=[(1, scales)])
    report = patch_gguf(src, coeffs, tmp_path / "out.gguf", progress=False)
    assert report["edits"] == {"heads": 2, "o_proj_channels": 1, "qk_channels": 0,
                              "q_temperatures": 0}
    assert report["tensors"]["blk.0.attn_output.weight"]["method"] == "scale-edit"   # head scales: exact as before
    info = report["tensors"]["blk.1.attn_output.weight"]
    assert info["method"] == "requantize" and info["requantized_blocks"] == 64 * 4 and info["channel_scales"]
    _, a = tensors(src)
    _, b = tensors(tmp_path / "out.gguf")
    for name in a:
        if name not in ("blk.0.attn_output.weight", "blk.1.attn_output.weight"):
            assert np.array_equal(tensor_bytes(a[name]), tensor_bytes(b[name])), name
    factors = coeffs.o_proj_factors()[1]
    name = "blk.1.attn_output.weight"
    ideal = dequantize(tensor_bytes(a[name]), T.Q4_1) * coeffs.o_proj_factors(np.float64)[1]
    assert np.array_equal(tensor_bytes(b[name]), quantize_blocks(ideal, T.Q4_1))       # llama.cpp's quantizer
    folded = _folded(_dequant(a[name]), lambda w: scale_o_proj_columns(w, 1, factors))
    got = _dequant(b[name])
    step = (np.ptp(folded.reshape(64, 4, 32), axis=2) / 15).repeat(32, axis=1)           # one Q4_1 step per block
    assert (np.abs(got - folded) <= 0.51 * step).all()   # within rounding of the fold (+ fp16 scale rounding)


def test_channel_scales_constant_over_each_block_stay_exact_scale_edits(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q8_0)
    scales = np.repeat([0.5, 1.0, -1.25, 2.0], 32)
    report = patch_gguf(src, _v2(src, channels=[(0, scales)]), tmp_path / "out.gguf", progress=False)
    assert report["tensors"]["blk.0.attn_output.weight"]["method"] == "scale-edit"
    assert report["max_rel_error"] < 4 * FP16_EPS


@pytest.mark.parametrize("qk_type", [T.Q4_1, T.Q8_0, T.F32])
def test_qk_channel_scales_edit_attn_q_and_attn_k_columns(tmp_path, qk_type):
    from pear_edge.edits.fold import scale_qk_input_channel

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q4_1, qk_type=qk_type)
    qk = [(5, -1.0, 0, 1), (40, 0.0, 1, 1)]
    report = patch_gguf(src, _v2(src, qk=qk), tmp_path / "out.gguf", progress=False)
    assert report["edits"] == {"heads": 0, "o_proj_channels": 0, "qk_channels": 3,
                              "q_temperatures": 0}
    edited = {f"blk.{l}.attn_{p}.weight" for l in (0, 1) for p in "qk"}
    assert set(report["tensors"]) == edited
    assert report["tensors"]["blk.1.attn_q.weight"]["qk_channels"] == [5, 40]
    _, a = tensors(src)
    _, b = tensors(tmp_path / "out.gguf")
    for name in set(a) - edited:                                        # attn_output included: untouched
        assert np.array_equal(tensor_bytes(a[name]), tensor_bytes(b[name])), name
    block = GGML_QUANT_SIZES[qk_type][0]
    for name in edited:
        channels = {5: -1.0} if name.startswith("blk.0") else {5: -1.0, 40: 0.0}
        old, new = _dequant(a[name]), _dequant(b[name])
        folded = old.copy()
        for ch, s in channels.items():
            folded = _folded(folded, lambda w: scale_qk_input_channel(w, 1, range(w.shape[0]), ch, s))
        kept = np.ones(64, bool)
        for ch in channels:
            kept[ch // block * block:(ch // block + 1) * block] = False
        assert np.array_equal(new[:, kept], old[:, kept])               # blocks without the channel: as they were
        if qk_type == T.F32:
            assert np.array_equal(new, folded)
        else:
            assert np.sqrt(((new - folded) ** 2).mean()) / np.sqrt((folded ** 2).mean()) < 0.1
            assert report["tensors"][name]["method"] == "requantize"


def test_fused_qkv_gguf_is_refused_for_qk_edits(tmp_path):
    from pear_edge.base.errors import PearError

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q8_0, fused_qkv=True)
    with pytest.raises(PearError, match="fused in blk.0.attn_qkv.*export gguf"):
        patch_gguf(src, _v2(src, qk=[(5, -1.0, 0, 1)]), tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()
    patch_gguf(src, _v2(src, heads=[(0, 1, 0.5)]), tmp_path / "out.gguf", progress=False)  # head scales still fine


def test_version_2_coefficients_travel_in_the_gguf_and_info_shows_them(tmp_path, capsys):
    from pear_edge.cli import main
    from pear_edge.edits.coefficients import Coefficients

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q4_1)
    coeffs = _v2(src, heads=[(0, 1, 0.5)], channels=[(1, [0.9] * 128)], qk=[(5, -0.5, 0, 1)])
    path = coeffs.save(tmp_path / "c.json")
    assert main(["-q", "patch-gguf", str(src), "--coefficients", str(path), "-o", str(tmp_path / "p.gguf")]) == 0
    out = capsys.readouterr().out
    assert "patched 1 head scale, o_proj channel scales on 1 layer, q/k channel 5 x -0.5 on layers 0..1 in 6 tensors" in out
    stored = pear_metadata(read_gguf(tmp_path / "p.gguf"))["pear.coefficients"]
    assert Coefficients.from_json(stored).to_json() == coeffs.to_json()
    assert main(["info", str(tmp_path / "p.gguf")]) == 0
    text = capsys.readouterr().out
    assert "PEAR coefficients v2" in text and "q/k input channel 5 x -0.5 on layers 0..1" in text


# --------------------------------------------------------------------------- attention temperatures

def _tempered(src, temperatures, qk=()):
    from pear_edge.edits.coefficients import QKChannelScale, QTemperature

    base = coefficients_for(src, [])
    return type(base)(base.model, [], qk_channels=[QKChannelScale(*q) for q in qk],
                      q_temperatures=[QTemperature(*t) for t in temperatures])


TEMPERATURES = [(0, 1, 1.5), (1, 0, 0.75), (1, 3, 2.0)]  # exact in fp16 and fp32: the F32 fold is bit-exact


def _folded_q(values: np.ndarray, layer: int, temperatures, head_dim: int = 32) -> np.ndarray:
    """pear_edge.edits.fold.scale_q_rows on a dequantized attn_q weight (rows = queries) or bias."""
    from pear_edge.edits.fold import scale_q_rows

    rows = [h * head_dim + i for l, h, _ in temperatures if l == layer for i in range(head_dim)]
    taus = [t for l, _, t in temperatures if l == layer for _ in range(head_dim)]
    return _folded(values, lambda w: scale_q_rows(w, 0, rows, taus))


@pytest.mark.parametrize("qk_type, hidden", [(T.F32, 64), (T.F16, 64), (T.Q8_0, 64), (T.Q4_0, 64), (T.Q4_1, 64),
                                             (T.Q4_K, 256), (T.Q6_K, 256), (T.Q2_K, 256)])
def test_temperatures_scale_whole_attn_q_rows_as_the_fold_does(tmp_path, qk_type, hidden):
    """Every block of a head's query rows has its scale(s) multiplied (payload bytes untouched); the result is
    the fold's scale_q_rows of the dequantized weight up to fp16 rounding of the block scales (exact for F32)."""
    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q8_0, hidden=hidden, qk_type=qk_type, q_bias=True)
    report = patch_gguf(src, _tempered(src, TEMPERATURES), tmp_path / "out.gguf", progress=False)
    assert report["edits"] == {"heads": 0, "o_proj_channels": 0, "qk_channels": 0, "q_temperatures": 3}
    edited = {f"blk.{l}.attn_q.{p}" for l in (0, 1) for p in ("weight", "bias")}
    assert set(report["tensors"]) == edited and report["tensors"]["blk.1.attn_q.weight"]["q_temperatures"] == [0, 3]
    expected = "values" if qk_type in (T.F32, T.F16) else "scale-edit"
    assert report["tensors"]["blk.0.attn_q.weight"]["method"] == expected
    _, a = tensors(src)
    _, b = tensors(tmp_path / "out.gguf")
    for name in set(a) - edited:                                        # attn_k, attn_output, ...: untouched
        assert np.array_equal(tensor_bytes(a[name]), tensor_bytes(b[name])), name
    for layer in (0, 1):
        bias = f"blk.{layer}.attn_q.bias"
        assert np.array_equal(_dequant(b[bias]), _folded_q(_dequant(a[bias])[0], layer, TEMPERATURES)[None])
        name = f"blk.{layer}.attn_q.weight"
        old, new = _dequant(a[name]), _dequant(b[name])
        folded = _folded_q(old, layer, TEMPERATURES)
        kept = np.ones(old.shape[0], bool)
        kept[[h * 32 + i for l, h, _ in TEMPERATURES if l == layer for i in range(32)]] = False
        assert np.array_equal(new[kept], old[kept])                     # other heads' rows bit-identical
        if qk_type == T.F32:
            assert np.array_equal(new, folded)
        else:
            # each fp16 scale (d, and m / dmin where the type has one) rounded once: both terms bound the error
            bound = 8 * FP16_EPS * np.abs(folded).max()
            assert np.abs(new - folded).max() <= bound
        if qk_type not in (T.F32, T.F16):                               # a scale-edit: payload bytes as they were
            type_size = GGML_QUANT_SIZES[qk_type][1]
            payload = np.ones(type_size, bool)
            for off in SCALE_OFFSETS[qk_type]:
                payload[off:off + 2] = False
            x, y = (tensor_bytes(t[name]).reshape(-1, type_size) for t in (a, b))
            assert np.array_equal(x[:, payload], y[:, payload])


def test_q_k_channels_and_temperatures_on_one_attn_q_compose_like_the_fold(tmp_path):
    from pear_edge.edits.fold import scale_qk_input_channel

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q8_0, qk_type=T.F32)
    coeffs = _tempered(src, TEMPERATURES, qk=[(5, -0.5, 0, 1)])
    report = patch_gguf(src, coeffs, tmp_path / "out.gguf", progress=False)
    info = report["tensors"]["blk.1.attn_q.weight"]
    assert info["qk_channels"] == [5] and info["q_temperatures"] == [0, 3] and info["method"] == "values"
    _, a = tensors(src)
    _, b = tensors(tmp_path / "out.gguf")
    for layer in (0, 1):
        name = f"blk.{layer}.attn_q.weight"
        folded = _folded(_dequant(a[name]), lambda w: scale_qk_input_channel(w, 1, range(w.shape[0]), 5, -0.5))
        assert np.array_equal(_dequant(b[name]), _folded_q(folded, layer, TEMPERATURES))


def test_temperatures_are_refused_for_fused_qkv_and_for_a_norm_on_the_queries(tmp_path):
    from pear_edge.base.errors import PearError

    fused = write_tiny_gguf(tmp_path / "fused.gguf", T.Q8_0, fused_qkv=True)
    with pytest.raises(PearError, match="fused in blk.0.attn_qkv.*attention temperatures.*export gguf"):
        patch_gguf(fused, _tempered(fused, TEMPERATURES), tmp_path / "out.gguf", progress=False)
    qwen3 = write_tiny_gguf(tmp_path / "qwen3.gguf", T.Q8_0, arch="qwen3")
    with pytest.raises(PearError, match="normalises each head's queries"):
        patch_gguf(qwen3, _tempered(qwen3, TEMPERATURES), tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_version_3_coefficients_travel_in_the_gguf(tmp_path, capsys):
    from pear_edge.cli import main
    from pear_edge.edits.coefficients import Coefficients

    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q4_1)
    coeffs = _tempered(src, TEMPERATURES)
    path = coeffs.save(tmp_path / "c.json")
    assert main(["-q", "patch-gguf", str(src), "--coefficients", str(path), "-o", str(tmp_path / "p.gguf")]) == 0
    assert "patched 3 attention temperatures in 2 tensors" in capsys.readouterr().out
    stored = pear_metadata(read_gguf(tmp_path / "p.gguf"))["pear.coefficients"]
    assert Coefficients.from_json(stored).to_json() == coeffs.to_json()
    assert main(["info", str(tmp_path / "p.gguf")]) == 0
    assert "PEAR coefficients v3" in capsys.readouterr().out


def test_patch_gguf_of_temperatures_on_a_q_norm_family_is_one_error_line(tmp_path, capsys):
    from pear_edge.cli import main

    qwen3 = write_tiny_gguf(tmp_path / "qwen3.gguf", T.Q8_0, arch="qwen3")
    path = _tempered(qwen3, TEMPERATURES).save(tmp_path / "c.json")
    capsys.readouterr()
    assert main(["-q", "patch-gguf", str(qwen3), "--coefficients", str(path), "-o", str(tmp_path / "p.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error: qwen3 normalises each head's queries")
    assert not (tmp_path / "p.gguf").exists()
