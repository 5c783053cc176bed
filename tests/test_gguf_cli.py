"""`pear-edge patch-gguf` / `info` through pear_edge.cli.main: bad inputs give one line, exit 2, leave
no output behind and never touch the input."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients, HeadCoefficient, ModelFingerprint
from pear_edge.arch.layout import HeadLayout

from gguf_tiny import coefficients_for, write_tiny_gguf


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_fails(capsys, tmp_path, argv, inputs, match):
    before = {p: sha(p) for p in inputs}
    out = tmp_path / "out.gguf"
    assert main(argv + ["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error:") and "\n" not in err and match in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.gguf")]    # no temp left
    assert {p: sha(p) for p in inputs} == before


@pytest.fixture
def tiny(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf", T.Q4_1)
    coeffs = tmp_path / "c.json"
    coefficients_for(src, [(1, 2, 0.5)]).save(coeffs)
    return src, coeffs


def test_patch_then_info(tmp_path, tiny, capsys):
    src, coeffs = tiny
    assert main(["-q", "patch-gguf", str(src), "--coefficients", str(coeffs), "-o", str(tmp_path / "p.gguf")]) == 0
    assert "scale-edit x1" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "p.gguf")]) == 0
    text = capsys.readouterr().out
    assert "PEAR-patched" in text and "L 1H2  coefficient 0.5000" in text
    assert main(["info", str(src)]) == 0
    assert "not PEAR-patched" in capsys.readouterr().out
    # patching a patched file is refused
    run_fails(capsys, tmp_path, ["patch-gguf", str(tmp_path / "p.gguf"), "--coefficients", str(coeffs)],
              [tmp_path / "p.gguf"], "already PEAR-patched")


def test_truncated_gguf(tmp_path, tiny, capsys):
    src, coeffs = tiny
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size - 100])
    run_fails(capsys, tmp_path, ["patch-gguf", str(cut), "--coefficients", str(coeffs)], [cut, coeffs], "truncated")


def test_corrupt_gguf(tmp_path, tiny, capsys):
    _, coeffs = tiny
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(5000))
    run_fails(capsys, tmp_path, ["patch-gguf", str(bad), "--coefficients", str(coeffs)], [bad, coeffs],
              "not a readable GGUF")


def test_unsupported_tensor_type(tmp_path, capsys):
    block, size = GGML_QUANT_SIZES[T.IQ4_NL]
    raw = np.zeros((64, 128 // block, size), np.uint8)
    raw[..., :2] = np.array([0.01], np.float16).view(np.uint8)
    src = write_tiny_gguf(tmp_path / "iq.gguf", T.IQ4_NL, raw_attn_output=raw.reshape(64, -1))
    coeffs = tmp_path / "c.json"
    Coefficients(ModelFingerprint(HeadLayout("llama", 2, 4, 32, 64), "", (1.0, 1.0)), [HeadCoefficient(0, 1, 0.5)]).save(coeffs)
    run_fails(capsys, tmp_path, ["patch-gguf", str(src), "--coefficients", str(coeffs)], [src, coeffs],
              "IQ4_NL, which pear-edge cannot patch")


def test_coefficients_for_another_layout(tmp_path, tiny, capsys):
    src, _ = tiny
    other = write_tiny_gguf(tmp_path / "other.gguf", T.Q4_1, num_heads=2, head_dim=32)
    coeffs = tmp_path / "other.json"
    coefficients_for(other, [(0, 1, 0.5)]).save(coeffs)
    run_fails(capsys, tmp_path, ["patch-gguf", str(src), "--coefficients", str(coeffs)], [src, coeffs],
              "calibrate for this model")


def test_coefficients_for_other_weights(tmp_path, tiny, capsys):
    src, _ = tiny
    other = write_tiny_gguf(tmp_path / "other.gguf", T.Q4_1, seed=1)
    fp = coefficients_for(other, []).model
    scaled = ModelFingerprint(**{**fp.__dict__, "o_proj_norms": tuple(2 * n for n in fp.o_proj_norms)})
    coeffs = tmp_path / "other.json"
    Coefficients(scaled, [HeadCoefficient(0, 1, 0.5)]).save(coeffs)
    run_fails(capsys, tmp_path, ["patch-gguf", str(src), "--coefficients", str(coeffs)], [src, coeffs],
              "calibrated on other weights")


def test_output_equal_to_input_refused(tmp_path, tiny, capsys):
    src, coeffs = tiny
    before = sha(src)
    assert main(["patch-gguf", str(src), "--coefficients", str(coeffs), "-o", str(src)]) == 2
    assert "same as input" in capsys.readouterr().err
    assert sha(src) == before
