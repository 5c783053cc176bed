"""Registry caveats reach the user: `calibrate` prints the Gemma post-norm caveat as a `pear-edge: note:`
line on stderr, and `info` shows it for a Gemma model folder (tiny config-built model, offline); a recipe
without a measured gain for the model is called unvalidated, at calibration and in `info`."""
from __future__ import annotations

import json

from gguf import GGMLQuantizationType as T

from pear_edge.cli import main
from tests.gguf_tiny import write_tiny_gguf
from tests.tiny import save_tiny_llama


def test_calibrate_and_info_tell_the_gemma_post_norm_caveat(tmp_path, capsys):
    folder = save_tiny_llama(tmp_path / "gemma", model_type="gemma3_text")
    out = tmp_path / "c.json"
    assert main(["-q", "calibrate", "--model", str(folder), "--proxy", "copy", "--method", "exact", "--lengths", "4",
                 "--detect-batch", "2", "-k", "2", "--steps", "1", "--batch", "2", "--n", "4", "--guard", "0",
                 "-o", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("pear-edge: note:") and "post-attention RMSNorm" in line]
    assert len(notes) == 1 and "gemma3_text" in notes[0]
    assert main(["info", str(folder)]) == 0
    assert "pear-edge: note: gemma3_text: a post-attention RMSNorm" in capsys.readouterr().out


def test_calibrate_calls_a_recipe_unmeasured_on_the_model_unvalidated(tmp_path, capsys):
    folder = save_tiny_llama(tmp_path / "llama")
    out = tmp_path / "c.json"
    assert main(["-q", "calibrate", "--model", str(folder), "--proxy", "copy", "--method", "exact", "--lengths", "4",
                 "--detect-batch", "2", "-k", "2", "--steps", "1", "--batch", "2", "--n", "4", "--guard", "0",
                 "-o", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pear-edge: warning:")]
    assert len(warnings) == 1 and "unvalidated: no recipe has been measured" in warnings[0]
    assert json.loads(out.read_text())["calibration"]["validated"] is False
    assert main(["info", str(out)]) == 0
    assert "UNVALIDATED" in capsys.readouterr().out


def test_only_the_measured_settings_on_the_measured_model_are_validated():
    from pear_edge import results
    from pear_edge.calibration.calibrate import DEFAULTS, unvalidated_reason, with_budget, with_overrides

    entry = results.measured()["notes"]["model"]["default"]
    sha = entry["weights_sha256"]
    assert entry["validated"] and unvalidated_reason(sha, DEFAULTS) is None
    # execution-only fields (the same gradient) and the unused positional fields do not count
    same = with_overrides(DEFAULTS, {"micro_batch": 0, "checkpoint": True, "positional_candidates": 5})
    assert unvalidated_reason(sha, same) is None
    assert "(recipe;" in unvalidated_reason(sha, with_overrides(DEFAULTS, {"recipe": "seal-c"}))
    # the full budget is the measured one; lean (measured, but without the counterfactual gain) is not validated
    assert unvalidated_reason(sha, with_budget(DEFAULTS, "full")) is None
    assert "(budget, gradient_batches, train.batch, train.guard_batch, train.lr, train.steps;" in \
        unvalidated_reason(sha, with_budget(DEFAULTS, "lean"))
    fast = unvalidated_reason(sha, with_budget(DEFAULTS, "fast"))
    assert "(budget, gradient_batches, train.lr, train.steps;" in fast
    assert "no recipe has been measured" in unvalidated_reason("0" * 64, DEFAULTS)


def test_no_note_for_a_family_without_caveat(tmp_path, capsys):
    folder = save_tiny_llama(tmp_path / "llama")
    assert main(["info", str(folder)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_info_of_a_gemma_gguf_tells_the_caveat(tmp_path, capsys):
    gemma = write_tiny_gguf(tmp_path / "gemma.gguf", T.F32, arch="gemma3")
    assert main(["info", str(gemma)]) == 0
    out = capsys.readouterr().out
    assert "2 layers x 4 heads x head_dim 32, hidden 64" in out
    assert "pear-edge: note: gemma3_text: a post-attention RMSNorm" in out
    llama = write_tiny_gguf(tmp_path / "llama.gguf", T.F32)
    assert main(["info", str(llama)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_gemma_profile_is_the_measured_cloze_recipe_and_says_what_was_measured_on_it(capsys):
    """Gemma-3-270M's profile is the recipe its validation half chose (docs/experiments/): the cloze
    proxy, every head, in the completion format `auto` picks for a model without a chat template; its gain is
    not established (docs/results.md), so even those settings are called unvalidated, saying where the evidence is; after
    a calibration of Gemma the note is Gemma's own measurement, not SmolLM2's numbers (the shipped Gemma
    coefficients carry its fingerprint)."""
    from pear_edge import results
    from pear_edge.calibration.calibrate import PROFILES, unvalidated_reason, with_overrides
    from pear_edge.cli.commands import _print_summary
    from pear_edge.edits.coefficients import Coefficients

    profile = PROFILES["gemma3-270m"]
    assert (profile.recipe, profile.top_k, profile.train.proxy, profile.train.prompt_format) == ("pear", 0, "cloze",
                                                                                                   "auto")
    entry = results.measured()["notes"]["model"]["gemma3-270m"]
    GEMMA_WEIGHTS_SHA256 = entry["weights_sha256"]
    assert entry["profile"] == "gemma3-270m" and not entry["validated"] and "Gemma" in entry["text"]
    reason = unvalidated_reason(GEMMA_WEIGHTS_SHA256, profile)
    assert "no established gain" in reason and "docs/results.md" in reason
    assert unvalidated_reason(GEMMA_WEIGHTS_SHA256, with_overrides(profile, {"recipe": "seal-c"})) == reason
    shipped = Coefficients.load("gemma3-270m")
    assert shipped.model.weights_sha256 == GEMMA_WEIGHTS_SHA256 and shipped.calibration["validated"] is False
    assert shipped.calibration["prompt_format"] == "completion"
    _print_summary(shipped)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pear-edge: note:")]
    assert notes == [f"pear-edge: note: {results.note('model', 'gemma3-270m')}"]
    assert results.note("proxy", "cloze") not in notes[0]

