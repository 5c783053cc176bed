"""Report writers on synthetic results: tables, ratios and PNGs (no model needed)."""
import json

import pytest

from pear_edge.atomic import MARKER
from pear_edge.eval.harness import EvalResults, ExampleResult, paired_compare
from pear_edge.eval.report import Run, write_report
from pear_edge.eval.speed import Pair, SpeedReport, write_speed_report


def _results(correct):
    items = [ExampleResult(f"{i}@{p}", p, ("a",), "a" if c else "b", bool(c))
             for i, (c, p) in enumerate(zip(correct, [0, 4, 9] * 4))]
    return EvalResults("mdqa", {"kind": "llamacpp", "source": "m.gguf"}, items)


def test_write_report_table_json_and_plot(tmp_path):
    base, pear = _results([1, 0, 0] * 4), _results([1, 1, 0] * 4)
    run = Run("llamacpp Q4_1", base, pear, paired_compare(base, pear, resamples=200))
    written = write_report(tmp_path / "r", [run])
    names = sorted(p.name for p in written)
    assert names == ["accuracy_by_position.png", "report.md", "results.json"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| all | 12 | 33.3% | 66.7% | +33.3 pt |" in md
    assert "| 4 | 4 | 0.0% | 100.0% | +100.0 pt |" in md and "| 0 / 4 | 0.125 |" in md
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert doc["runs"][0]["comparison"]["by_position"]["9"]["delta"] == 0.0
    assert "position gap (best − worst gold position): base 100.0 pt → PEAR 100.0 pt (unchanged)" in md
    assert (tmp_path / "r" / "accuracy_by_position.png").read_bytes()[:4] == b"\x89PNG"
    # no temp files left; the marker says pear-edge wrote the folder
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")] == [MARKER]


def test_gap_change_compares_what_the_report_prints():
    from pear_edge.eval.report import gap_change

    assert gap_change(0.15, 0.15000000000000002) == "unchanged" == gap_change(0.15, 0.14999999999999997)
    assert gap_change(0.229, 0.171) == "narrower" and gap_change(0.075, 0.2) == "wider"


def test_speed_summary_uses_per_round_ratios(tmp_path):
    base_file, pear_file = tmp_path / "b.bin", tmp_path / "p.bin"
    base_file.write_bytes(b"x" * 100)
    pear_file.write_bytes(b"x" * 100)
    report = SpeedReport({"rounds": 3, "prompt_tokens": 8, "gen_tokens": 4, "threads": 1},
                         [Pair("q", "llamacpp", str(base_file), str(pear_file))])
    base = [{"prefill_tps": 100.0, "decode_tps": 10.0, "peak_rss_mib": 200.0},
            {"prefill_tps": 50.0, "decode_tps": 5.0, "peak_rss_mib": 200.0},
            {"prefill_tps": 80.0, "decode_tps": 8.0, "peak_rss_mib": 200.0}]
    pear = [{"prefill_tps": 110.0, "decode_tps": 10.0, "peak_rss_mib": 202.0},
            {"prefill_tps": 50.0, "decode_tps": 4.0, "peak_rss_mib": 198.0},
            {"prefill_tps": 72.0, "decode_tps": 8.8, "peak_rss_mib": 200.0}]
    report.samples = {"q": {"base": base, "pear": pear}}
    summ = report.summary("q")
    assert summ["prefill_tps"]["ratio_median"] == pytest.approx(1.0)       # ratios 1.1, 1.0, 0.9
    assert summ["prefill_tps"]["ratio_q1"] == pytest.approx(0.95)
    assert summ["decode_tps"]["ratio_median"] == pytest.approx(1.0)        # 1.0, 0.8, 1.1
    assert summ["pear_bytes"] == summ["base_bytes"] == 100
    paths = write_speed_report(report, tmp_path / "s")
    assert "| q | prefill_tps | 80.0 | 72.0 | 1.000 | [0.950, 1.050] |" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
