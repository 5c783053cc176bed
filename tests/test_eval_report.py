"""Report writers on synthetic results: tables, ratios and PNGs (no model needed)."""
import json

import pytest

from pear_edge.base.atomic import MARKER
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


def test_gain_kept_against_the_torch_run(tmp_path):
    """Several runs on the same examples: each run's gain as a share of the torch (fp32) run's, and the
    difference with a paired CI; the torch run is the reference wherever it stands."""
    from pear_edge.eval.report import gains_kept

    base = _results([1, 0, 0] * 4)
    runs = [Run(label, base, pear, paired_compare(base, pear, resamples=200))
            for label, pear in (("llamacpp:q4.gguf", _results([1, 1, 0] * 2 + [1, 0, 0] * 2)),   # +2 of 12
                                ("torch:m hooked", _results([1, 1, 0] * 4)),                      # +4 of 12
                                ("onnx:int8", _results([1, 0, 0] * 4)))]                           # +0
    kept = gains_kept(runs, resamples=200)
    assert [k.label for k in kept] == ["llamacpp:q4.gguf", "torch:m hooked", "onnx:int8"]
    assert {k.reference for k in kept} == {"torch:m hooked"}
    assert [k.share for k in kept] == pytest.approx([0.5, 1.0, 0.0])
    assert [k.difference for k in kept] == pytest.approx([-2 / 12, 0.0, -4 / 12])
    q4 = kept[0]
    assert q4.ci_low < q4.difference < q4.ci_high <= 0.0  # it never gains where the reference did not
    write_report(tmp_path / "r", runs)
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.startswith("### Gain kept in each run (reference: torch:m hooked)")
    assert "| onnx:int8 | +0.0 pt | 0% | -33.3 pt [" in md
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [k["share"] for k in doc["gain_kept"]] == pytest.approx([0.5, 1.0, 0.0])
    # one run, or no gain in the reference: no share to give
    assert gains_kept(runs[:1]) == []
    flat = [Run("torch:x", base, base, paired_compare(base, base, resamples=50)), runs[0]]
    assert [k.share for k in gains_kept(flat, resamples=50)] == [None, None]


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


def test_a_speed_ratio_spread_wider_than_the_noise_limit_is_not_reported_as_a_number(tmp_path):
    from pear_edge.eval.speed import NOISE_LIMIT, TOO_NOISY, ratio_is_measured, speed_markdown

    assert ratio_is_measured(1.0, 1 - NOISE_LIMIT / 2, 1 + NOISE_LIMIT / 2)
    assert ratio_is_measured(2.0, 2.0, 2.0 + 3 * NOISE_LIMIT)  # lopsided but narrow enough
    assert not ratio_is_measured(1.0, 1 - NOISE_LIMIT, 1 + NOISE_LIMIT + 0.01)
    assert not ratio_is_measured(float("nan"), 1.0, 1.0) and not ratio_is_measured(0.0, 0.0, 0.0)
    base_file = tmp_path / "m.bin"
    base_file.write_bytes(b"x")
    report = SpeedReport({"rounds": 4, "prompt_tokens": 8, "gen_tokens": 4, "threads": 1},
                         [Pair("q", "llamacpp", str(base_file), str(base_file))])
    # a busy machine: decode rates swing with the other jobs, prefill and memory stay steady
    base = [{"prefill_tps": 100.0, "decode_tps": d, "peak_rss_mib": 200.0} for d in (10.0, 3.0, 12.0, 2.0)]
    pear = [{"prefill_tps": p, "decode_tps": d, "peak_rss_mib": 200.0}
            for p, d in zip((101.0, 99.0, 102.0, 100.0), (11.0, 9.0, 12.0, 12.0))]
    report.samples = {"q": {"base": base, "pear": pear}}
    summ = report.summary("q")
    assert summ["decode_tps"]["ratio_median"] > 2 and not summ["decode_tps"]["ratio_measured"]
    assert summ["prefill_tps"]["ratio_measured"] and summ["peak_rss_mib"]["ratio_measured"]
    rows = {line.split(" | ")[1]: line for line in speed_markdown(report).splitlines() if line.startswith("| q |")}
    decode = summ["decode_tps"]
    assert rows["decode_tps"].endswith(f"| {TOO_NOISY} | [{decode['ratio_q1']:.3f}, {decode['ratio_q3']:.3f}] |")
    assert f"{decode['ratio_median']:.3f}" not in rows["decode_tps"]
    assert "| 1.005 |" in rows["prefill_tps"] and "| 1.000 | [1.000, 1.000] |" in rows["peak_rss_mib"]


def _perplexity(nlls):
    from pear_edge.eval.harness import PassageResult

    return EvalResults("perplexity", {"kind": "llamacpp", "name": "m.gguf", "source": "m.gguf"},
                       [PassageResult(f"p{i}", x, 100) for i, x in enumerate(nlls)])


def test_tradeoff_table_and_plot_from_saved_reports(tmp_path, capsys):
    """`pear-edge eval tradeoff`: each point's cost beside its saved reports' paired Δ, one column per thing
    measured, perplexity as a relative change flagged over the bound; bad points are one error each."""
    from pear_edge.cli import main

    base, pear = _results([1, 0, 0] * 4), _results([1, 1, 0] * 4)
    write_report(tmp_path / "acc", [Run("q", base, pear, paired_compare(base, pear, resamples=200))])
    pb, pp = _perplexity([200.0] * 8), _perplexity([210.0] * 8)  # nll per passage of 100 tokens: +10 %/100 tok
    write_report(tmp_path / "ppl", [Run("q", pb, pp, paired_compare(pb, pp, resamples=200))])
    assert main(["eval", "tradeoff", "-o", str(tmp_path / "t"), "--time-target", "300",
                 "--point", f"slow=900:2.5={tmp_path / 'acc'},{tmp_path / 'ppl' / 'results.json'}#0",
                 "--point", f"quick=250={tmp_path / 'acc'}"]) == 0
    md = (tmp_path / "t" / "tradeoff.md").read_text()
    assert "| slow | 900 | 2.50 | +33.3 pt [" in md
    assert "(n=12) | +10.5 % [+10.5, +10.5] (n=8) **over the bound** |" in md
    assert "| quick | 250 | — | +33.3 pt [" in md and md.splitlines()[3].endswith("| — |")
    assert (tmp_path / "t" / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "t" / "tradeoff.json").read_text())["points"][1]["seconds"] == 250
    capsys.readouterr()
    for spec, says in ((f"x=1={tmp_path / 'nothere'}", "cannot read eval report"),
                       (f"x=-3={tmp_path / 'acc'}", "seconds must be positive"),
                       (f"x=1:inf={tmp_path / 'acc'}", "GiB must be positive and finite"),
                       (f"x={tmp_path / 'acc'}", "expected LABEL=SECONDS"),
                       (f"x=1={tmp_path / 'acc'}#3", "not a pear-edge eval report with run 3"),
                       (f"x=1={tmp_path / 'acc'},{tmp_path / 'acc'}", "two reports measure the same thing")):
        assert main(["eval", "tradeoff", "-o", str(tmp_path / "t2"), "--point", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pear-edge: error:") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "t2").exists()  # a bad point is refused before anything is written
    damaged = json.loads((tmp_path / "acc" / "results.json").read_text())
    damaged["runs"][0]["comparison"]["overall"]["ci_high"] = damaged["runs"][0]["comparison"]["overall"]["delta"] - 0.1
    (tmp_path / "damaged.json").write_text(json.dumps(damaged))
    assert main(["eval", "tradeoff", "-o", str(tmp_path / "t3"), "--point", f"x=1={tmp_path / 'damaged.json'}"]) == 2
    err = capsys.readouterr().err
    assert "does not contain its difference" in err and err.count("\n") == 1 and not (tmp_path / "t3").exists()


def test_demo_quick_summary_shows_accuracy_by_position_and_an_example_where_the_models_disagree():
    from pear_edge.eval.demo import quick_summary
    from pear_edge.data.tasks import QAExample

    examples = [QAExample(f"{r}@{p}", f"Document [1] ...\nQuestion: q{r}?\nAnswer:", (f"a{r}",), p)
                for r in range(2) for p in (0, 2)]
    backend = {"kind": "llamacpp", "name": "m.gguf", "source": "m.gguf"}
    right = {"0@0": (True, True), "0@2": (False, False), "1@0": (True, True), "1@2": (False, True)}
    items = {which: [ExampleResult(e.id, e.position, e.answers, "a1" if right[e.id][which] else "no idea",
                                   right[e.id][which]) for e in examples] for which in (0, 1)}
    base, pear = (EvalResults("nq-open", backend, items[w]) for w in (0, 1))
    text = quick_summary(Run("quick", base, pear, paired_compare(base, pear)), examples, 41.6)
    assert text.startswith("First result, 42 s after the start: quick\n")
    assert "| all | 4 | 50.0% | 75.0% |" in text and "| 0 | 2 | 100.0% | 100.0% |" in text
    assert "| 2 | 2 | 0.0% | 50.0% |" in text
    assert "Example: Question: q1? (gold document 3; accepted: a1)" in text  # the one pair that differs
    assert text.endswith("| base | no idea | no |\n| PEAR | a1 | yes |\n")


def test_demo_quick_examples_come_from_the_validation_half_at_first_middle_and_last():
    from pear_edge.eval.demo import SHIPPED_REAL, quick_examples
    from pear_edge.eval.realqa import half_of

    if not SHIPPED_REAL.is_file():
        pytest.skip(f"{SHIPPED_REAL} is not beside this checkout")
    examples = quick_examples(SHIPPED_REAL, 3, 5, seed=0)
    assert [e.position for e in examples] == [0, 2, 4] * 3
    questions = {e.prompt.splitlines()[-2] for e in examples}
    assert len(questions) == 3 and all(e.prompt.count("Document [") == 5 for e in examples)
    assert all(half_of(q.removeprefix("Question: ")) == "validation" for q in questions)


def test_tradeoff_keeps_reports_on_other_templates_apart(tmp_path):
    """The same examples asked in two prompt templates are two measurements: one column each."""
    from pear_edge.eval.lab.tradeoff import read_measure

    refs = []
    for name in ("litm-short", "haystack-rag"):
        base, pear = _results([1, 0, 0] * 4), _results([1, 1, 0] * 4)
        for side in (base, pear):
            side.settings = {"data": "nq.jsonl", "template": {"name": name}}
        write_report(tmp_path / name, [Run("q", base, pear, paired_compare(base, pear, resamples=50))])
        refs.append(str(tmp_path / name))
    columns = [read_measure(r).column for r in refs]
    assert columns == ["mdqa nq litm-short · ?", "mdqa nq haystack-rag · ?"]


def test_tradeoff_plot_wraps_many_columns_into_rows(tmp_path):
    """Six measurements: two rows of four panels (the last two hidden), not one strip six panels wide."""
    import struct

    from pear_edge.eval.lab.tradeoff import PANELS_PER_ROW, Measure, Point, plot

    measures = tuple(Measure(f"mdqa nq-test{n} template-{n} · model.gguf", "accuracy", 60, 2.0, -5.0, 9.0, 0.5)
                     for n in range(6))
    png = plot([Point("generic", 410.0, None, measures, ())], 2.0, tmp_path / "t.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert PANELS_PER_ROW == 4 and width / height == pytest.approx((4.2 * 4) / (3.8 * 2), rel=0.05)
