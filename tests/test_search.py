"""`pear-edge search`: batched greedy decoding must answer exactly as one-prompt-at-a-time decoding,
and the guard and all-heads options used by the default recipe must do what they say."""
from __future__ import annotations

import json

import pytest
import torch

from pear_edge.calibration.calibrate import calibrate
from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients
from pear_edge.eval.backends import TorchBackend
from pear_edge.data.counterfactual import generate_counterfactual
from pear_edge.eval.lab.variants import settings_from
from pear_edge.data.tasks import mdqa_examples, parse_mdqa, pydoc_passages
from pear_edge.calibration.guard import TextGuard, guard_text
from pear_edge.runtime.models import load_model


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


@pytest.mark.slow
def test_batched_greedy_equals_one_prompt_at_a_time(default_model):
    records = [parse_mdqa(r) for r in generate_counterfactual(2, "validation", num_distractors=2)]
    examples = mdqa_examples(records, 3, (0, 2))  # prompts of different lengths: left padding is exercised
    backend = TorchBackend(default_model)
    batched = backend.generate_batch([e.prompt for e in examples], max_tokens=12, batch=4)
    assert batched == [backend.generate(e.prompt, 12) for e in examples]


@pytest.mark.slow
def test_guard_text_is_disjoint_from_the_perplexity_check(default_model):
    text = guard_text()
    for passage in pydoc_passages(16):
        assert passage.text[:120] not in text
    guard = TextGuard(default_model.tokenizer, batch=2, tokens=64)
    windows = guard.sample(torch.Generator().manual_seed(0))
    assert windows.shape == (2, 64)
    assert 1.0 < float(guard.loss(default_model.model, windows)) < 6.0  # real English text, a trained model


@pytest.mark.slow
def test_top_k_zero_trains_every_head_with_the_guard_recorded(default_model):
    settings = settings_from({"method": "attribution", "lengths": [8], "detect_batch": 2, "top_k": 0,
                              "constraint": "none", "steps": 2, "batch": 2, "n": 8, "guard": 1.0, "guard_batch": 1})
    coeffs = calibrate(default_model, settings, progress=False)
    assert len(coeffs.heads) == 30 * 9
    assert len(coeffs.calibration["guard_curve"]) == 2
    assert any(abs(h.coefficient - 1) > 1e-3 for h in coeffs.heads)


@pytest.mark.slow
def test_search_command_writes_a_sweep_style_report(tmp_path):
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps({"tiny": {"method": "attribution", "lengths": [8], "detect_batch": 2, "top_k": 2,
                                             "steps": 1, "batch": 1, "n": 8}}))
    out = tmp_path / "search"
    assert main(["-q", "search", "--variants", str(variants), "--records", "1", "--positions", "0", "--num-docs", "2",
                 "--kv-records", "1", "--kv-pairs", "2", "--passages", "1", "--device", "cpu", "-o", str(out)]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["variant"] for r in rows] == ["tiny"] and rows[0]["counterfactual"]["n"] == 1
    assert "| tiny |" in (out / "sweep.md").read_text() and (out / "sweep.png").stat().st_size > 0
    assert len(Coefficients.load(out / "tiny" / "coeffs.json").heads) == 2
    # resumable: a second run reads the cached base results (JSON) and the finished row instead of recomputing
    cached = {p: p.stat().st_mtime_ns for p in (out / "base-results.json", out / "tiny" / "row.json")}
    assert main(["-q", "search", "--variants", str(variants), "--records", "1", "--positions", "0", "--num-docs", "2",
                 "--kv-records", "1", "--kv-pairs", "2", "--passages", "1", "--device", "cpu", "-o", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert json.loads((out / "sweep.json").read_text()) == rows
