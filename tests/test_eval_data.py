"""Loaders, generators and example building for the eval tasks."""
import gzip
import json

import pytest

from pear_edge.cli import build_parser, main
from pear_edge.base.errors import PearError
from pear_edge.data.counterfactual import SPLITS, generate_counterfactual, split_of
from pear_edge.data.jsonl import write_jsonl
from pear_edge.data.kv import generate_kv
from pear_edge.data.tasks import (default_positions, documents_per_record, kv_examples, load_kv, load_mdqa,
                                  mdqa_examples, pydoc_passages)
from pear_edge.eval.cli import build_examples


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"question": "q?", "answers": ["x"], "ctxs": [{"title": "t", "text": "x", "isgold": True}]})


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"data\.jsonl:3: not valid JSON"),
    ('{"answers": ["x"], "ctxs": []}', r"data\.jsonl:3: malformed record: missing field 'question'"),
    ('{"question": "q", "answers": [], "ctxs": [{"text": "x"}]}', r":3: .*'answers' must be a non-empty list"),
    ('{"question": "q", "answers": ["x"], "ctxs": [{"title": "t", "text": "y"}]}', r":3: .*no ctx is marked isgold"),
    ("[1, 2]", r":3: .*expected a JSON object"),
])
def test_malformed_mdqa_line_is_reported_with_its_number(tmp_path, bad, message):
    path = _write(tmp_path / "data.jsonl", [GOOD, "", bad])
    with pytest.raises(PearError, match=message):
        load_mdqa(path)


def test_malformed_kv_and_cli_exit_code(tmp_path, capsys):
    rec = {"ordered_kv_records": [["a", "1"], ["b", "2"]], "key": "a", "value": "9"}
    path = _write(tmp_path / "kv.jsonl", [json.dumps(rec)])
    with pytest.raises(PearError, match=r"kv\.jsonl:1: .*not among ordered_kv_records"):
        load_kv(path)
    assert main(["eval", "--task", "kv", "--data", str(path), "--base", "a.gguf", "--pear", "b.gguf",
                 "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error: ") and "kv.jsonl:1:" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_gold_detection_prefers_isgold_and_falls_back_to_hasanswer(tmp_path):
    rec = {"question": "q", "answers": ["x"], "ctxs": [
        {"title": "d1", "text": "x here", "hasanswer": True}, {"title": "g", "text": "gold x", "isgold": True},
        {"title": "d2", "text": "nothing"}]}
    rec2 = {"question": "q", "answers": ["x"], "ctxs": [{"title": "d", "text": "no"}, {"title": "h", "text": "x",
                                                                                       "hasanswer": True}]}
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(rec) + "\n" + json.dumps(rec2) + "\n")
    first, second = load_mdqa(path)
    assert first.gold.title == "g" and [d.title for d in first.distractors] == ["d2"]  # answer-bearing ctx dropped
    assert second.gold.title == "h"


def test_counterfactual_is_deterministic_and_answerable_only_from_gold():
    a = list(generate_counterfactual(20, "test", seed=3, num_distractors=5))
    assert a == list(generate_counterfactual(20, "test", seed=3, num_distractors=5))
    assert a != list(generate_counterfactual(20, "test", seed=4, num_distractors=5))
    for rec in a:
        gold = [c for c in rec["ctxs"] if c["isgold"]]
        assert len(gold) == 1 and len(rec["ctxs"]) == 6
        assert rec["answers"][0] in gold[0]["text"] and gold[0]["title"] in rec["question"]
        others = [c for c in rec["ctxs"] if not c["isgold"]]
        assert not any(rec["answers"][0].lower() in c["text"].lower() for c in others)


def test_counterfactual_splits_use_disjoint_entities():
    names = {}
    for split in SPLITS:
        recs = generate_counterfactual(40, split, seed=0, num_distractors=3)
        names[split] = {c["title"] for r in recs for c in r["ctxs"]}
        assert all(split_of(n) == split for n in names[split])
    assert not names["train"] & names["test"]
    assert not names["train"] & names["validation"]
    assert not names["validation"] & names["test"]


def test_mdqa_examples_place_the_gold_and_keep_distractors_fixed(tmp_path):
    path = write_jsonl(tmp_path / "cf.jsonl", generate_counterfactual(4, num_distractors=9))
    records = load_mdqa(path)
    examples = mdqa_examples(records, num_docs=6, positions=(0, 3, 5))
    assert len(examples) == 12
    for rec_index, record in enumerate(records):
        prompts = {}
        for pos in (0, 3, 5):
            ex = next(e for e in examples if e.id == f"{rec_index}@{pos}")
            assert ex.position == pos and ex.answers == record.answers
            assert f"Document [{pos + 1}](Title: {record.gold.title})" in ex.prompt
            assert ex.prompt.count("Document [") == 6
            prompts[pos] = [line.split("](", 1)[1] for line in ex.prompt.splitlines()
                            if line.startswith("Document [") and record.gold.title not in line]
        assert prompts[0] == prompts[3] == prompts[5]  # only the gold moved
    with pytest.raises(PearError, match="outside 0..5"):
        mdqa_examples(records, num_docs=6, positions=(6,))


def test_mdqa_others_mode_uses_other_gold_passages_seeded(tmp_path):
    records = load_mdqa(write_jsonl(tmp_path / "cf.jsonl", generate_counterfactual(6, num_distractors=1)))
    a = mdqa_examples(records, num_docs=4, positions=(1,), distractors="others", seed=1)
    assert a == mdqa_examples(records, num_docs=4, positions=(1,), distractors="others", seed=1)
    golds = {r.gold.title for r in records}
    titles = [line.split("Title: ")[1].split(")")[0] for line in a[0].prompt.splitlines() if "Title:" in line]
    assert set(titles) <= golds and titles[1] == records[0].gold.title
    # 'own' tops up a record with too few distractors from other records' gold passages
    topped = mdqa_examples(records, num_docs=4, positions=(0,))
    assert topped[0].prompt.count("Document [") == 4


def test_eval_takes_the_document_count_from_the_data_file(tmp_path):
    """A file made with five documents is asked with five (gold first / middle / last), not topped up to ten."""
    path = write_jsonl(tmp_path / "five.jsonl", generate_counterfactual(6, num_distractors=4))
    assert documents_per_record(load_mdqa(path)) == 5
    args = build_parser().parse_args(["eval", "--task", "mdqa", "--data", str(path), "-o", "x"])
    examples, num_docs = build_examples(args)
    assert num_docs == 5 and {e.position for e in examples} == {0, 2, 4}
    assert all(e.prompt.count("Document [") == 5 for e in examples)
    args = build_parser().parse_args(["eval", "--task", "mdqa", "--data", str(path), "--num-docs", "7", "-o", "x"])
    examples, num_docs = build_examples(args)  # asked for more: topped up with other records' gold passages
    assert num_docs == 7 and {e.position for e in examples} == {0, 3, 6}
    assert all(e.prompt.count("Document [") == 7 for e in examples)
    assert default_positions(1) == (0,) and default_positions(2) == (0, 1)


def test_kv_generation_and_placement(tmp_path):
    recs = list(generate_kv(5, num_pairs=8, style="hex", key_length=4, seed=2))
    assert recs == list(generate_kv(5, num_pairs=8, style="hex", key_length=4, seed=2))
    assert all(len({k for k, _ in r["ordered_kv_records"]}) == 8 for r in recs)
    records = load_kv(write_jsonl(tmp_path / "kv.jsonl", recs))
    examples = kv_examples(records, positions=(0, 7))
    for ex in examples:
        record = records[int(ex.id.split("@")[0])]
        body = json.loads(ex.prompt.split("JSON data:\n")[1].split("\n\nKey:")[0])
        assert list(body)[ex.position] == record.key and body[record.key] == record.value
        assert ex.answers == (record.value,)
    short = kv_examples(records, positions=(2,), num_pairs=4)
    assert all(len(json.loads(e.prompt.split("JSON data:\n")[1].split("\n\nKey:")[0])) == 4 for e in short)
    words = next(generate_kv(1, num_pairs=8, style="word"))
    assert all(k.isalpha() for k, _ in words["ordered_kv_records"])


def test_pydoc_passages_are_deterministic():
    a = pydoc_passages(4, chars=500, seed=1)
    assert a == pydoc_passages(4, chars=500, seed=1) and len({p.id for p in a}) == 4
    assert all(0 < len(p.text) <= 500 for p in a)


def test_make_data_cli_writes_loadable_jsonl(tmp_path):
    out = tmp_path / "cf.jsonl"
    assert main(["--seed", "5", "eval", "make-data", "--task", "counterfactual", "--count", "7", "-o", str(out)]) == 0
    assert len(load_mdqa(out)) == 7
    out_kv = tmp_path / "kv.jsonl"
    assert main(["eval", "make-data", "--task", "kv", "--count", "3", "--num-pairs", "10", "-o", str(out_kv)]) == 0
    assert [len(r.pairs) for r in load_kv(out_kv)] == [10, 10, 10]
