"""The verify core (converters/verify.py) without any model: comparison, tolerance policy, verdicts."""
from __future__ import annotations

import numpy as np
import pytest

from pear_edge.converters.gguf_verify import WEIGHT_KINDS as GGUF_KINDS
from pear_edge.converters.onnx_verify import WEIGHT_KINDS as ONNX_KINDS
from pear_edge.converters.verify import (TOLERANCES, Comparison, Tolerance, VerifyReport, compare, read_prompts,
                                         tolerance_for)
from pear_edge.base.errors import PearError


def test_compare_measures_every_position_and_refuses_other_vocabularies():
    a = [np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 3.0]])]
    b = [np.array([[0.0, 1.5, 0.0], [0.0, 0.0, 2.5]]), np.array([[0.0, 0.0, 3.0]])]
    c = compare("a vs b", a, b)
    assert (c.prompts, c.positions) == (2, 3)
    assert c.max_abs_logit_diff == 2.5 and c.per_prompt_max_abs == [2.5, 0.0]
    assert c.top1_agreement == pytest.approx(2 / 3)
    with pytest.raises(PearError, match="3 and 4 vocabulary entries"):
        compare("trimmed?", a, [np.zeros((2, 4)), np.zeros((1, 4))])


def test_every_weight_kind_of_both_formats_has_a_tolerance_and_overrides_apply():
    assert set(GGUF_KINDS.values()) | set(ONNX_KINDS.values()) | {"low-bit"} == set(TOLERANCES)
    kinds = list(TOLERANCES)  # from exact to coarse: thresholds only loosen
    assert all(TOLERANCES[a].max_abs_logit_diff < TOLERANCES[b].max_abs_logit_diff
               and TOLERANCES[a].min_top1_agreement > TOLERANCES[b].min_top1_agreement for a, b in zip(kinds, kinds[1:]))
    assert tolerance_for("8-bit", min_top1_agreement=0.5) == Tolerance(TOLERANCES["8-bit"].max_abs_logit_diff, 0.5)


def _report(max_diff: float, top1: float, kind: str = "fp32") -> VerifyReport:
    checked = Comparison("ONNX vs folded torch", 4, 100, max_diff, max_diff / 10, top1, [max_diff] * 4)
    return VerifyReport("x", None, "default", kind, 3, 4, tolerance_for(kind), [checked])


def test_verdict_names_what_failed():
    assert _report(5e-5, 1.0).ok and _report(5e-5, 1.0).verdict().startswith("PASS: ONNX vs folded torch")
    bad = _report(0.2, 0.5)
    assert not bad.ok
    assert bad.verdict().startswith("verify FAILED: ONNX vs folded torch: max |Δlogit| 0.2 > 0.001; "
                                    "top-1 agreement 50.0% < 99%")
    assert not _report(float("nan"), 1.0).ok  # NaN logits never pass
    assert _report(2.8, 0.956, "8-bit").ok and not _report(19.2, 0.593, "8-bit").ok  # measured Q8_0 / onnx int8
    assert bad.as_dict()["ok"] is False and "FAILED" in bad.as_dict()["verdict"]


def test_prompts_file(tmp_path):
    (tmp_path / "p.txt").write_text("first\\nline\n\n second \n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["first\nline", " second "]
    assert len(read_prompts(None)) == 4


def test_table_and_plot(tmp_path):
    from pear_edge.converters.verify import format_table, plot_report

    report = _report(5e-5, 1.0)
    assert format_table(report).splitlines()[-1].startswith("PASS: ONNX vs folded torch within the fp32 tolerance")
    assert plot_report(report, tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["v.png"]  # no temporary left behind
