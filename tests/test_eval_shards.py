"""`eval --shard I/N` + `eval merge`: two shards merged give the single run's report (results.json but for
each answer's timing, report.md, the plot); a rerun of a shard reuses its finished sides; merge refuses shards
that are not all of one run, with one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_recipes import edits_of
from tiny import save_tiny_llama, word_tokenizer

from pear_edge.cli import main
from pear_edge.eval.shards import SHARD_FILE, parse_shard, shard_indices
from pear_edge.runtime.models import load_model


@pytest.fixture(scope="module")
def run_args(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    folder = save_tiny_llama(root / "hf")
    word_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}").save_pretrained(folder)
    coefficients = edits_of(load_model(str(folder)), "heads").save(root / "c.json")
    return ["-q", "eval", "--task", "counterfactual", "--count", "3", "--num-docs", "4", "--max-tokens", "3",
            "--model", str(folder), "--coefficients", str(coefficients)]


def without_timing(doc: dict) -> dict:
    """results.json less what a single run and merged shards may differ in: each answer's wall-clock timing."""
    for run in doc["runs"]:
        for side in ("base", "pear"):
            for item in run[side]["items"]:
                item.pop("timing", None)
    return doc


def test_a_shard_takes_every_nth_example():
    assert list(shard_indices(7, 1, 3)) == [0, 3, 6] and list(shard_indices(7, 3, 3)) == [2, 5]
    assert sorted(k for i in (1, 2, 3) for k in shard_indices(7, i, 3)) == list(range(7))
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_two_shards_merged_equal_one_run(tmp_path, run_args, capsys):
    one, merged = tmp_path / "one", tmp_path / "merged"
    assert main([*run_args, "-o", str(one)]) == 0
    for i in (1, 2):
        assert main([*run_args, "--shard", f"{i}/2", "-o", str(tmp_path / f"s{i}")]) == 0
    assert not (tmp_path / "s1" / "results.json").exists()
    shard = json.loads((tmp_path / "s1" / SHARD_FILE).read_text())
    assert [len(shard["results"][0][s]["items"]) for s in ("base", "pear")] == [5, 5]  # 9 examples: 5 + 4
    capsys.readouterr()
    assert main(["eval", "merge", str(tmp_path / "s2"), str(tmp_path / "s1"), "-o", str(merged)]) == 0
    assert "accuracy base" in capsys.readouterr().out
    single, joined = (json.loads((f / "results.json").read_text()) for f in (one, merged))
    assert joined["settings"]["examples"] == 9
    assert without_timing(joined) == without_timing(single)
    assert (merged / "report.md").read_text() == (one / "report.md").read_text()
    assert (merged / "accuracy_by_position.png").read_bytes() == (one / "accuracy_by_position.png").read_bytes()


def test_a_rerun_of_a_shard_reuses_its_finished_sides(tmp_path, run_args, capsys):
    out = tmp_path / "s1"
    assert main([*run_args, "--shard", "1/2", "-o", str(out)]) == 0
    before = (out / SHARD_FILE).read_text()
    doc = json.loads(before)
    doc["results"][0]["pear"] = None  # as if interrupted while PEAR was answering
    (out / SHARD_FILE).write_text(json.dumps(doc))
    capsys.readouterr()
    assert main([*run_args, "--shard", "1/2", "-o", str(out)]) == 0
    assert "reusing 1 finished side(s)" in capsys.readouterr().err
    after = json.loads((out / SHARD_FILE).read_text())
    assert after["results"][0]["base"] == json.loads(before)["results"][0]["base"]  # base not answered again
    assert without_timing({"runs": after["results"]}) == without_timing({"runs": json.loads(before)["results"]})
    # another run's settings in the same folder: answered afresh
    assert main([*run_args, "--max-tokens", "2", "--shard", "1/2", "-o", str(out)]) == 0
    assert "reusing" not in capsys.readouterr().err


def _refused(argv: list[str], message: str, capsys, out: Path) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error:") and message in err[0], err
    assert not out.exists()


def test_merge_refuses_shards_that_are_not_one_whole_run(tmp_path, run_args, capsys):
    for i in (1, 2):
        assert main([*run_args, "--shard", f"{i}/2", "-o", str(tmp_path / f"s{i}")]) == 0
    assert main([*run_args, "--max-tokens", "2", "--shard", "2/2", "-o", str(tmp_path / "other")]) == 0
    assert main([*run_args, "--shard", "2/3", "-o", str(tmp_path / "of3")]) == 0
    s1, s2, out = str(tmp_path / "s1"), str(tmp_path / "s2"), tmp_path / "merged"
    merge = ["eval", "merge"]
    _refused([*merge, s1, "-o", str(out)], "2/2 missing", capsys, out)
    _refused([*merge, s1, s1, s2, "-o", str(out)], "given twice", capsys, out)
    _refused([*merge, s1, str(tmp_path / "other"), "-o", str(out)], "different runs", capsys, out)
    _refused([*merge, s1, str(tmp_path / "of3"), "-o", str(out)], "different runs (N differ)", capsys, out)
    (tmp_path / "empty").mkdir()
    _refused([*merge, s1, str(tmp_path / "empty"), "-o", str(out)], "not found", capsys, out)
    doc = json.loads((tmp_path / "s2" / SHARD_FILE).read_text())
    doc["results"][0]["pear"] = None
    (tmp_path / "s2" / SHARD_FILE).write_text(json.dumps(doc))
    _refused([*merge, s1, s2, "-o", str(out)], "unfinished", capsys, out)
    (tmp_path / "s2" / SHARD_FILE).write_text("{}")
    _refused([*merge, s1, s2, "-o", str(out)], "not a readable eval shard", capsys, out)
    _refused([*run_args, "--shard", "3/2", "-o", str(out)], "1 <= I <= N", capsys, out)
    _refused([*run_args, "--shard", "10/10", "-o", str(out)], "only 9 examples", capsys, out)
