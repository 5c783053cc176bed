"""The package's results data: shipped coefficients usable by name after install, and measured.json, whose claims
the notes of `calibrate` and `info` are built from."""
from __future__ import annotations

import json
import math
import re

import pytest

from pear_edge import results
from pear_edge.base.errors import PearError
from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients

CLAIM = re.compile(r"p ?[=<] ?0\.|[+\u2212-][0-9]+(\.[0-9]+)? ?(pt|%)|n ?= ?[0-9]")


def test_shipped_coefficients_load_by_name_and_a_real_file_of_that_name_wins(tmp_path, monkeypatch):
    assert {"default", "gemma3-270m", "smollm2-135m-seal-c"} <= set(results.shipped_names())
    default = Coefficients.load("default")
    assert default.to_json() == Coefficients.load(results.COEFFICIENTS_DIR / "smollm2-135m.coeffs.json").to_json()
    assert default.model.weights_sha256 == results.measured()["notes"]["model"]["default"]["weights_sha256"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text("{}")
    with pytest.raises(PearError):  # the user's own file named "default" is read (and refused), not the shipped one
        Coefficients.load("default")
    with pytest.raises(PearError, match="not found"):
        Coefficients.load("no-such-set")
    assert results.shipped_coefficients("../coefficients/smollm2-135m") is None


def test_info_describes_a_shipped_set_by_name_with_what_was_measured(capsys):
    assert main(["info", "gemma3-270m"]) == 0
    out = capsys.readouterr().out
    assert "PEAR coefficients" in out and "measured on this model: " in out and "Gemma" in out
    assert main(["info", "no-such-set"]) == 2
    assert capsys.readouterr().err.startswith("pear-edge: error: no-such-set not found")


def test_every_note_names_claims_that_exist_and_every_claim_is_complete():
    data = results.measured()
    claims = data["claims"]
    for kind, entries in data["notes"].items():
        for name, entry in entries.items():
            assert entry["text"] and not CLAIM.search(entry["text"]), f"{kind}/{name}: numbers belong in claims"
            assert set(entry.get("claims", ())) <= set(claims), f"{kind}/{name} names a missing claim"
            assert results.note(kind, name).startswith(entry["text"])
    for claim_id, c in claims.items():
        assert {"model", "task", "backend", "n", "delta_pt", "source"} <= set(c), claim_id
        assert isinstance(c["n"], int) and c["n"] > 0 and math.isfinite(c["delta_pt"])
        if c.get("ci_pt"):
            assert c["ci_pt"][0] <= c["delta_pt"] <= c["ci_pt"][1], claim_id
        assert f"n={c['n']}" in results.claim_text(claim_id)


def test_a_claim_reads_as_words_from_its_numbers(monkeypatch):
    fake = {"claims": {"x": {"model": "default", "task": "NQ", "backend": "llama.cpp Q4_1", "n": 120,
                             "base_pct": 27.5, "pear_pct": 31.7, "delta_pt": 4.2, "ci_pt": [-3.3, 11.7], "p": 0.49,
                             "gap_pt": [17.5, 22.5], "source": "s.json"}},
            "notes": {"proxy": {"cloze": {"text": "the cloze proxy", "claims": ["x"], "doc": "docs/results.md#a"}}}}
    monkeypatch.setattr(results, "measured", lambda: json.loads(json.dumps(fake)))
    assert results.note("proxy", "cloze") == (
        "the cloze proxy: NQ, llama.cpp Q4_1: 27.5 -> 31.7 %: +4.2 pt, 95 % CI [\u22123.3, +11.7], p=0.49, n=120, "
        "position gap 17.5 -> 22.5 pt (docs/results.md#a)")
    assert results.note("proxy", "copy") is None


def test_calibrate_notes_what_was_measured_of_its_template_or_family():
    from pear_edge.edits.describe import ONE_TEMPLATE, template_measured

    notes = results.measured()["notes"]["template"]
    family = {"template": {"family": "generic", "name": "generic", "excluded": [], "templates": 2}}
    single = {"template": {"name": "my-prompt", "sha256": "0" * 64}}
    assert template_measured(family).startswith(notes["generic"]["text"])
    assert template_measured(single).startswith(notes[ONE_TEMPLATE]["text"])
    assert template_measured({"template": {"family": "mine", "name": "mine"}}) is None  # nothing measured of it
    assert template_measured({}) is None and template_measured(None) is None
