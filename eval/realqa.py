"""Real-text multi-document QA for validation and claims: NQ-open questions with their gold Wikipedia
passages (`../shared/data/nq-open-dev.jsonl.gz` or any lost-in-the-middle oracle file), split into two
fixed halves by a hash of the question — `validation` to choose recipes, `test` to claim on — and given
distractors:

- `random`: other questions' gold passages, drawn at random;
- `topical`: the other gold passages nearest to the *question* by all-MiniLM-L6-v2 cosine, in retrieval
  order (what a RAG retriever would return around the right passage).

A distractor never contains any answer string. The gold is inserted at each requested position, so one
record yields paired examples per position. Nothing here trains coefficients: calibration never reads it.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from pear_edge.base.errors import PearError

from pear_edge.eval.metrics import normalize_answer
from pear_edge.data.tasks import MDQARecord, load_mdqa
from pear_edge.data.templates import Template

HALVES = ("validation", "test")
DISTRACTORS = ("random", "topical")


def half_of(question: str) -> str:
    return HALVES[int(hashlib.sha256(question.strip().lower().encode()).hexdigest(), 16) % 2]


def load_half(path: str | Path, half: str) -> list[MDQARecord]:
    """The records of one half (each record's own distractors are dropped: only gold passages are used)."""
    if half not in HALVES:
        raise PearError(f"half must be one of {', '.join(HALVES)}, not {half!r}")
    records = [r for r in load_mdqa(path) if half_of(r.question) == half]
    if not records:
        raise PearError(f"{path}: no records fall in the {half} half")
    return [replace(r, distractors=()) for r in records]


def _contains_answer(text: str, answers: Sequence[str]) -> bool:
    """As the metric reads it: an answer's normalised words occur as a run of whole words in the text."""
    padded = f" {normalize_answer(text)} "
    return any(f" {a} " in padded for a in map(normalize_answer, answers) if a)


def with_distractors(records: Sequence[MDQARecord], num_docs: int, mode: str, seed: int = 0,
                     embed=None) -> list[MDQARecord]:
    """Each record with `num_docs - 1` distractors drawn from the other records' gold passages; a record whose
    answer occurs in too many passages to find enough clean distractors is left out.
    `embed(texts) -> unit vectors` is needed for mode='topical' (default: the RAG embedder)."""
    if mode not in DISTRACTORS:
        raise PearError(f"distractors must be one of {', '.join(DISTRACTORS)}, not {mode!r}")
    need = num_docs - 1
    if len(records) <= need:
        raise PearError(f"{len(records)} records cannot give {need} distractors each; lower --num-docs")
    golds = [r.gold for r in records]
    if mode == "topical":
        if embed is None:
            from pear_edge.rag.embed import Embedder

            embed = Embedder().embed
        doc_vecs = np.asarray(embed([f"{d.title}. {d.text}" for d in golds]))
        query_vecs = np.asarray(embed([r.question for r in records]))
    out = []
    for index, record in enumerate(records):
        if mode == "topical":
            order = np.argsort(-(doc_vecs @ query_vecs[index])).tolist()
        else:
            order = list(range(len(records)))
            random.Random(f"realqa:{seed}:{index}").shuffle(order)
        chosen = [golds[i] for i in order if i != index and golds[i].text != record.gold.text
                  and not _contains_answer(golds[i].text, record.answers)][:need]
        if len(chosen) < need:  # an answer such as "a" or "1" occurs nearly everywhere: no clean distractors
            continue
        out.append(replace(record, distractors=tuple(chosen)))
    return out


def as_jsonl_records(records: Sequence[MDQARecord]) -> list[dict]:
    """Lost-in-the-middle records (gold first, distractors in order), for `pear-edge eval --data`."""
    return [{"question": r.question, "answers": list(r.answers),
             "ctxs": [{"title": r.gold.title, "text": r.gold.text, "isgold": True, "hasanswer": True}]
             + [{"title": d.title, "text": d.text, "isgold": False, "hasanswer": False} for d in r.distractors]}
            for r in records]


def corpus_records(corpus: str, count: int, num_docs: int, mode: str = "topical", seed: int = 0) -> list[MDQARecord]:
    """Questions about a user's corpus (a folder or a rag index), to measure `calibrate --corpus` on its own
    material: generated from the corpus' *held-out* files (textqa.split_of by title, which calibration never
    trains on) by the cloze question generator, with `num_docs - 1` distractors from the whole corpus —
    the passages nearest to the gold one (`topical`) or random ones — none containing the answer.
    The questions share the cloze proxy's generator, so they rank calibrations against each other on this
    corpus (e.g. --corpus vs the built-in default); they are not a claim about real users' questions."""
    from pear_edge.data.corpora import corpus_passages, embed_passages
    from pear_edge.data.textqa import qa_records, split_of

    if mode not in DISTRACTORS:
        raise PearError(f"distractors must be one of {', '.join(DISTRACTORS)}, not {mode!r}")
    passages = corpus_passages(corpus, seed)
    held = [i for i, p in enumerate(passages) if split_of(p.title) == "held_out"]
    if not held:
        raise PearError(f"{corpus}: no file falls in the held-out share (10 % of titles); give a larger corpus")
    vectors = embed_passages(passages) if mode == "topical" else None
    generated = qa_records(passages, vectors, count, seed=seed + 7, num_docs=(num_docs, num_docs),
                           topical_share=1.0 if mode == "topical" else 0.0, gold=held)
    return [MDQARecord(r.question, (r.answer,), r.documents[r.position],
                       tuple(d for i, d in enumerate(r.documents) if i != r.position)) for r in generated]


def real_examples(path: str | Path, half: str, records: int | None, num_docs: int, positions: Sequence[int],
                  mode: str = "random", template: Template | None = None, seed: int = 0, embed=None):
    """QAExamples for one half: the first `records` records (distractors drawn from the whole half),
    gold at each of `positions`, in `template` (default: the default preset)."""
    from pear_edge.data.tasks import mdqa_examples

    pool = with_distractors(load_half(path, half), num_docs, mode, seed, embed)
    return mdqa_examples(pool[:records] if records else pool, num_docs, positions, seed, "own", template=template)
