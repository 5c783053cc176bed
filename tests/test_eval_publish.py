"""`eval publish`: a report reduced for docs/ (no answers, no paths), and the claim numbers measured.json holds."""
import json

import pytest

from pear_edge.base.atomic import MARKER
from pear_edge.cli import main
from pear_edge.eval.harness import EvalResults, ExampleResult, PassageResult, paired_compare
from pear_edge.eval.publish import claim_numbers, published
from pear_edge.eval.report import Run, write_report


def _qa(correct, source="/home/me/models/m.gguf"):
    items = [ExampleResult(f"{i}@{p}", p, ("a",), "a" if c else "b", bool(c), {"seconds": 1.0})
             for i, (c, p) in enumerate(zip(correct, [0, 4, 9] * 4))]
    return EvalResults("mdqa", {"kind": "llamacpp", "name": "m.gguf", "source": source}, items,
                       {"data": "/home/me/data/nq.jsonl", "num_docs": 10})


def _ppl(nlls):
    return EvalResults("perplexity", {"kind": "llamacpp", "name": "m.gguf", "source": "/srv/m.gguf"},
                       [PassageResult(f"p{i}", nll, 100) for i, nll in enumerate(nlls)])


@pytest.fixture
def report(tmp_path):
    base, pear = _qa([1, 0, 0] * 4), _qa([1, 1, 0] * 4, "/home/me/pear.gguf")
    pb, pp = _ppl([300.0, 320.0, 310.0]), _ppl([290.0, 321.0, 300.0])
    runs = [Run("llamacpp:m.gguf", base, pear, paired_compare(base, pear, resamples=200)),
            Run("llamacpp:ppl", pb, pp, paired_compare(pb, pp, resamples=200))]
    write_report(tmp_path / "out", runs, {"settings": {"data": "/home/me/data/nq.jsonl"}})
    return tmp_path / "out"


def test_published_keeps_outcomes_and_drops_answers_and_paths(report):
    raw = json.loads((report / "results.json").read_text())
    doc = published(raw)
    side = doc["runs"][0]["pear"]
    assert side["correct"] == "110" * 4 and side["ids"][:2] == ["0@0", "1@4"] and "items" not in side
    assert side["backend"]["source"] == "pear.gguf" and side["settings"]["data"] == "nq.jsonl"
    assert doc["settings"]["data"] == "nq.jsonl" and "/home/" not in json.dumps(doc)
    assert doc["runs"][1]["base"]["values"][0] == {"id": "p0", "nll": 300.0, "tokens": 100}
    assert doc["runs"][0]["comparison"] == raw["runs"][0]["comparison"] and "items" in raw["runs"][0]["base"]
    assert published(doc) == doc  # publishing twice changes nothing


def test_claim_numbers_are_the_runs_in_measured_json_units(report):
    doc = published(json.loads((report / "results.json").read_text()))
    qa = claim_numbers(doc, 0, "docs/x/results.json")
    assert qa["n"] == 12 and (qa["base_pct"], qa["pear_pct"], qa["delta_pt"]) == (33.33, 66.67, 33.33)
    assert qa["gap_pt"] == [100.0, 100.0] and qa["by_position"] == {"0": 0.0, "4": 100.0, "9": 0.0}
    assert qa["ci_pt"][0] <= qa["delta_pt"] <= qa["ci_pt"][1] and 0 < qa["p"] <= 1
    assert (qa["source"], qa["run"]) == ("docs/x/results.json", 0)
    ppl = claim_numbers(doc, 1, "docs/x/results.json")
    assert ppl["metric"] == "perplexity" and ppl["n"] == 3 and ppl["pear_value"] < ppl["base_value"]
    assert ppl["delta_pct"] == pytest.approx(100 * (ppl["pear_value"] - ppl["base_value"]) / ppl["base_value"],
                                             abs=0.1)


def test_publish_cli_writes_a_new_folder_without_a_marker_and_prints_claims(report, tmp_path, capsys):
    out = tmp_path / "docs" / "run"
    assert main(["eval", "publish", str(report), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_by_position.png", "report.md", "results.json"]
    assert not (out / MARKER).exists()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["label"] for c in lines] == ["llamacpp:m.gguf", "llamacpp:ppl"]
    assert lines[0]["source"] == str(out / "results.json") and lines[0]["delta_pt"] == 33.33


@pytest.mark.parametrize("case, message", [
    ("no report", "holds no results.json"),
    ("not empty", "exists, is not empty and was not written by pear-edge"),
    ("not a report", "not a pear-edge eval report"),
    ("malformed", "is not a readable eval report"),
])
def test_publish_refuses_bad_input_with_one_line(report, tmp_path, capsys, case, message):
    out = tmp_path / "pub"
    source = report
    if case == "no report":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        source = tmp_path / "other"
        source.mkdir()
        doc = {"format": "something/else", "runs": []} if case == "not a report" else \
            {"format": "pear-edge/eval", "runs": [{"label": "x", "base": {}, "pear": {}, "comparison": {"overall": {"n": 3}}}]}
        (source / "results.json").write_text(json.dumps(doc))
    assert main(["eval", "publish", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error:") and message in err[0]
    if case == "not empty":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()
