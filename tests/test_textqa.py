"""Real-text questions (textqa), the dictd corpus reader (corpora) and the NQ halves (eval.realqa)."""
from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest

from pear_edge.data.corpora import clean_entry, cut_words, read_dictd
from pear_edge.base.errors import PearError
from pear_edge.eval.realqa import as_jsonl_records, half_of, load_half, real_examples, with_distractors
from pear_edge.eval.metrics import best_subspan_em
from pear_edge.data.tasks import parse_mdqa
from pear_edge.data.prompts import Document
from pear_edge.data.templates import preset
from pear_edge.data.textqa import Passage, cloze_questions, qa_records, split_of

PASSAGES = [
    Passage("SuperPaint", "SuperPaint was an early paint program developed by Richard Shoup at Xerox PARC. "
                          "Design started in 1972 and the system produced its first stable image in April 1973. "
                          "It could capture images from 2 video inputs."),
    Passage("Ada", "Ada is a programming language designed by a team led by Jean Ichbiah at CII Honeywell Bull. "
                   "The language was standardised by ANSI in 1983 and revised by ISO in 1995."),
    Passage("Unix", "Unix is an operating system first developed at Bell Labs in 1969 by Ken Thompson and "
                    "Dennis Ritchie. The first edition ran on a PDP-7 with 8192 words of memory."),
]


def test_cloze_questions_ask_for_a_span_of_the_passage_without_giving_it_away():
    questions = cloze_questions(PASSAGES[0])
    answers = {q.answer for q in questions}
    assert {"1972", "Richard Shoup"} <= answers
    for q in questions:
        assert q.answer in PASSAGES[0].text and q.answer.lower() not in q.question.lower()
        assert q.question.endswith("?") and "SuperPaint" in q.question  # names its subject
    year = next(q for q in questions if q.answer == "1972")
    assert "in what year" in year.question and year.kind == "year"
    by = next(q for q in questions if q.answer == "Richard Shoup")
    assert "by whom" in by.question


def _corpus(count: int) -> list[Passage]:
    """Distinct passages, each with one year and one name."""
    return [Passage(f"Entry {i}", f"The Entry {i} machine was built in {1900 + i} by Person{i} Maker{i} "
                                  f"in a laboratory. It was used for many years.") for i in range(count)]


@pytest.mark.parametrize("topical", [0.0, 1.0])
def test_qa_records_place_gold_and_never_use_a_distractor_holding_the_answer(topical):
    passages = _corpus(40)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = qa_records(passages, vectors, 30, seed=1, num_docs=(3, 6), topical_share=topical)
    assert len(records) == 30
    positions = set()
    for r in records:
        assert 3 <= len(r.documents) <= 6
        gold = r.documents[r.position]
        assert r.answer in gold.text
        others = [d for i, d in enumerate(r.documents) if i != r.position]
        assert all(r.answer.lower() not in d.text.lower() for d in others)
        assert len({d.title for d in r.documents}) == len(r.documents)
        positions.add(r.position)
    assert len(positions) >= 3  # gold positions vary
    if topical:  # nearest neighbours by the vectors
        r = records[0]
        gold_index = int(r.documents[r.position].title.split()[1])
        sims = vectors @ vectors[gold_index]
        chosen = [int(d.title.split()[1]) for i, d in enumerate(r.documents) if i != r.position]
        assert np.mean(sims[chosen]) > np.median(sims)


def test_qa_records_middle_never_puts_gold_first_or_last_and_uniform_is_unchanged():
    passages = _corpus(40)
    middle = qa_records(passages, None, 40, seed=2, num_docs=(3, 8), gold_slots="middle")
    assert all(0 < r.position < len(r.documents) - 1 for r in middle)
    assert len({r.position for r in middle}) >= 4
    uniform = qa_records(passages, None, 40, seed=2, num_docs=(3, 8))
    assert any(r.position in (0, len(r.documents) - 1) for r in uniform)
    assert uniform == qa_records(passages, None, 40, seed=2, num_docs=(3, 8), gold_slots="uniform")
    with pytest.raises(PearError, match="gold placement"):
        qa_records(passages, None, 4, gold_slots="edges")


def test_qa_records_refuse_a_tiny_corpus():
    with pytest.raises(PearError, match="too small"):
        qa_records(_corpus(5), None, 3, num_docs=(3, 10))


def test_split_is_stable_and_mostly_train():
    splits = [split_of(f"title {i}") for i in range(1000)]
    assert splits == [split_of(f"title {i}") for i in range(1000)]
    assert 0.05 < splits.count("held_out") / 1000 < 0.15


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if not n:
            return out


def test_dictd_reader_and_cleaning(tmp_path):
    entries = ["Unix\n\n   <operating system> An {operating system} developed at {Bell Labs (http://bell-labs.com/)}\n"
               "   in 1969 [\"The UNIX System\", Bach].\n\n   (2003-01-07)\n",
               "Ada\n\n   <language> 1. A language by {Jean Ichbiah}.\n"]
    raw = "".join(entries).encode()
    (tmp_path / "x.dict.dz").write_bytes(gzip.compress(raw))
    offsets = [0, len(entries[0].encode())]
    index = "".join(f"{w}\t{_b64(o)}\t{_b64(len(e.encode()))}\n"
                    for w, o, e in zip(("unix", "ada"), offsets, entries)) + f"UNIX\t{_b64(0)}\t{_b64(10)}\n"
    (tmp_path / "x.index").write_text(index)
    got = read_dictd(tmp_path / "x.index", tmp_path / "x.dict.dz")
    assert len(got) == 2  # the alias at the same offset is read once
    title, text = clean_entry(got[0][1])
    assert title == "Unix" and text == "An operating system developed at Bell Labs in 1969."
    assert clean_entry(got[1][1]) == ("Ada", "A language by Jean Ichbiah.")
    assert cut_words("One two three. Four five six seven.", 5) == "One two three."


def _nq_file(tmp_path, count=24):
    rows = [{"question": f"question number {i} about topic {i % 5}?", "answers": [f"answer{i}"],
             "ctxs": [{"title": f"T{i}", "text": f"Passage {i} says answer{i} about topic {i % 5}.",
                       "isgold": True, "hasanswer": True}]} for i in range(count)]
    rows[1]["ctxs"][0]["text"] += " It also mentions answer2."  # must never be a distractor for record 2
    path = tmp_path / "nq.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_real_halves_are_disjoint_and_distractors_never_hold_the_answer(tmp_path):
    path = _nq_file(tmp_path)
    val, test = load_half(path, "validation"), load_half(path, "test")
    assert len(val) + len(test) == 24 and not {r.question for r in val} & {r.question for r in test}
    assert all(half_of(r.question) == "validation" for r in val)
    fake = lambda texts: np.stack([np.eye(8, dtype=np.float32)[sum(map(ord, t)) % 8] for t in texts])  # noqa: E731
    for mode in ("random", "topical"):
        both = with_distractors(val + test, 5, mode, seed=0, embed=fake)
        for r in both:
            assert len(r.distractors) == 4
            assert not any(best_subspan_em(d.text, r.answers) for d in r.distractors)  # as the metric reads it
            assert r.gold not in r.distractors
        again = [parse_mdqa(x) for x in as_jsonl_records(both)]
        assert [(r.question, r.gold, r.distractors) for r in again] == [(r.question, r.gold, r.distractors) for r in both]
    examples = real_examples(path, "test", 3, 5, (0, 4), "random", preset("litm-plain"), embed=fake)
    assert len(examples) == 6 and {e.position for e in examples} == {0, 4}
    assert "Answer with a short phrase" not in examples[0].prompt
    gold = Document(test[0].gold.title, test[0].gold.text)
    assert f"Document [1](Title: {gold.title}) {gold.text}" in examples[0].prompt


def test_make_data_writes_a_real_half_that_eval_reads(tmp_path, capsys):
    from pear_edge.cli import main
    from pear_edge.data.tasks import load_mdqa, mdqa_examples

    src = _nq_file(tmp_path)
    out = tmp_path / "test-random5.jsonl"
    assert main(["eval", "make-data", "--task", "nq", "--source", str(src), "--half", "test", "--num-docs", "5",
                 "-o", str(out)]) == 0
    records = load_mdqa(out)
    assert records and all(half_of(r.question) == "test" and len(r.distractors) == 4 for r in records)
    examples = mdqa_examples(records, 5, (2,), distractors="own", template=preset("litm-plain"))
    assert examples[0].prompt.count("Document [") == 5 and "short phrase" not in examples[0].prompt
    assert main(["eval", "make-data", "--task", "nq", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "needs --source" in capsys.readouterr().err


def test_builtin_corpus_is_real_prose_with_questions():
    """The offline corpus installed by scripts/setup.sh (Debian dict-foldoc + dict-jargon)."""
    from pear_edge.data.corpora import MAX_PASSAGES, corpus_passages, dict_dirs

    if not any((d / "foldoc.index").is_file() for d in dict_dirs()):
        pytest.skip("dict-foldoc not unpacked (scripts/setup.sh does it)")
    passages = corpus_passages("builtin")
    assert len(passages) == MAX_PASSAGES  # a seeded sample of ~8,000 entries
    assert passages == corpus_passages(None)  # deterministic
    words = [len(p.text.split()) for p in passages]
    assert 15 <= min(words) and max(words) <= 100
    assert sum("{" in p.text for p in passages) < 0.02 * len(passages)  # cross-reference braces are gone
    questions = [q for p in passages[:500] for q in cloze_questions(p)]
    assert len(questions) > 300 and {q.kind for q in questions} == {"year", "count", "name"}


def test_make_data_corpus_asks_only_about_held_out_files(tmp_path, capsys):
    """Questions to measure `calibrate --corpus` on its own material: gold from held-out files only."""
    from pear_edge.cli import main
    from pear_edge.data.tasks import load_mdqa

    docs = tmp_path / "docs"
    docs.mkdir()
    for k in range(60):
        (docs / f"system{k}.txt").write_text(
            f"The Orion{k} controller was designed by Maria Keller{k} at Vantor Labs. It shipped in {1900 + k} "
            f"with {k + 3} channels and replaced the older Castor{k} unit used by the Harbor{k} authority.")
    held = {f"system{k}" for k in range(60) if split_of(f"system{k}") == "held_out"}
    assert held  # 10 % of titles by hash: a few of 60
    out = tmp_path / "corpus.jsonl"
    assert main(["eval", "make-data", "--task", "corpus", "--corpus", str(docs), "--distractors", "random",
                 "--num-docs", "4", "--count", "20", "-o", str(out)]) == 0
    records = load_mdqa(out)
    assert records and all(r.gold.title in held and len(r.distractors) == 3 for r in records)
    assert all(not best_subspan_em(d.text, r.answers) for r in records for d in r.distractors)
    assert main(["eval", "make-data", "--task", "corpus", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "needs --corpus" in capsys.readouterr().err
