"""End to end on the real default model (SmolLM2-135M Q4_1): patch the GGUF, load it in llama.cpp and
check its logits against torch running the folded dequantized model, as closely as the unpatched GGUF
matches the unpatched torch model."""
from __future__ import annotations

import numpy as np
import pytest

from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.converters.gguf_layout import read_gguf, tensor_signature
from pear_edge.converters.gguf_patch import patch_gguf
from pear_edge.converters.gguf_verify import gguf_logits
from pear_edge.converters.verify import BUILTIN_PROMPTS, compare, torch_logits
from pear_edge.edits.fold import fold_model
from pear_edge.runtime.models import default_gguf_path, load_model

pytestmark = pytest.mark.slow
HEADS = [(2, 5, 0.35), (9, 3, 0.0), (17, 0, 0.5), (21, 4, -0.5), (29, 2, 1.5)]


def test_patched_default_gguf_matches_folded_torch(tmp_path):
    base = default_gguf_path()
    loaded = load_model("default")
    coeffs = Coefficients(loaded.fingerprint(), [HeadCoefficient(l, h, c) for l, h, c in HEADS])
    patched = tmp_path / "patched.gguf"
    report = patch_gguf(base, coeffs, patched, progress=False)
    assert report["methods"] == {"scale-edit": 5} and report["max_rel_error"] < 2e-3
    assert tensor_signature(read_gguf(patched)) == tensor_signature(read_gguf(base))

    tokens = [loaded.tokenizer(t)["input_ids"] for t in BUILTIN_PROMPTS[:2]]
    unpatched_torch = torch_logits(loaded.model, tokens)
    fold_model(loaded, coeffs)
    folded_torch = torch_logits(loaded.model, tokens)
    base_gguf, patched_gguf = gguf_logits(base, tokens), gguf_logits(patched, tokens)

    floor = compare("floor", base_gguf, unpatched_torch)          # quantized-activation noise of llama.cpp
    got = compare("patched", patched_gguf, folded_torch)
    change = compare("change", base_gguf, patched_gguf)
    assert got.mean_abs_logit_diff <= 1.5 * floor.mean_abs_logit_diff
    assert got.top1_agreement >= floor.top1_agreement - 0.05
    # and the patch really changed the computation, the way torch says it should
    assert change.mean_abs_logit_diff > 3 * got.mean_abs_logit_diff
    assert np.abs(np.concatenate(patched_gguf) - np.concatenate(base_gguf)).max() > 1.0
