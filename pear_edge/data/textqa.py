"""Questions generated from real text, for a RAG-shaped proxy that teaches *finding* the right passage
among look-alikes, not copying a fixed template.

A corpus is a list of passages (title, text): the user's own documents (`--corpus DIR`, or the chunks of
an existing `pear-edge rag` index) or the built-in offline corpus (corpora.py: FOLDOC and the Jargon File
from Debian's dict packages, real human-written encyclopedic prose). From each passage, `cloze_questions`
turns a sentence holding an answer span (a year, a number with its noun, a capitalised name) into a
wh-question about it; `qa_records` then surrounds the gold passage with distractors retrieved by embedding
similarity (topical look-alikes, the realistic RAG case) or drawn at random, never containing the answer,
with varied document counts and gold positions. The answer span is the training target.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pear_edge.base.errors import PearError
from pear_edge.data.prompts import Document

# A sentence ends at . ! ? followed by space and a capital/digit/bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_YEAR = re.compile(r"\b(1[5-9]\d\d|20[0-4]\d)\b")
_COUNT = re.compile(r"(?<![\w\-./:])(\d{1,6}(?:,\d{3})*(?:\.\d+)?)\s+([a-z][a-z\-]{2,})\b")
_NAME = re.compile(r"(?<![\w.])([A-Z][\w&\-]*(?:\s+(?:of|de|von|van|the|and|for)?\s*[A-Z][\w&\-]*){1,3})")
_STOP_NAMES = {"The", "This", "It", "In", "A", "An", "These", "Its", "He", "She", "They", "See", "For", "When"}
MIN_WORDS, MAX_WORDS = 12, 28  # question length window around the answer span
# Where qa_records puts the gold document: uniform over the slots, or middle = never the first or the last
# of three or more documents (the positions small models lose; the middle and the position gap).
GOLD_SLOTS = ("uniform", "middle")


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class ClozeQuestion:
    question: str
    answer: str
    kind: str  # year | count | name


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _window(words: list[str], first: int, last: int) -> tuple[int, int]:
    """A span of words around [first, last) of at most MAX_WORDS words."""
    start = max(0, first - (MAX_WORDS - (last - first)) // 2)
    end = min(len(words), start + MAX_WORDS)
    start = max(0, end - MAX_WORDS)
    return start, end


def _question(sentence: str, span: tuple[int, int], wh: str, title: str) -> str | None:
    """Replace sentence[span] by the wh-phrase, keep a window of words around it, end with '?'."""
    before, after = sentence[: span[0]].split(), sentence[span[1] :].split()
    words = before + [wh] + after
    start, end = _window(words, len(before), len(before) + 1)
    words = words[start:end]
    if len(words) < 5:
        return None
    text = re.sub(r"\s+([,;:)])", r"\1", " ".join(words)).rstrip(" .,;:!?")
    if title and title.lower() not in text.lower():
        text = f"{title}: {text}"  # name the subject, as a real question would
    return text + "?"


def cloze_questions(passage: Passage) -> list[ClozeQuestion]:
    """Every wh-question the passage's sentences allow, at most one per answer string."""
    out: dict[str, ClozeQuestion] = {}
    for sentence in split_sentences(passage.text):
        if len(sentence.split()) < 6:
            continue
        for m in _YEAR.finditer(sentence):
            prefix = sentence[: m.start()].rstrip()
            if prefix.endswith((" in", " In", " since", " until", " by")):
                start = m.start() - len(prefix.split()[-1]) - 1
                q = _question(sentence, (start, m.end()), prefix.split()[-1].lower() + " what year", passage.title)
            else:
                q = _question(sentence, m.span(), "what year", passage.title)
            if q:
                out.setdefault(m.group(1), ClozeQuestion(q, m.group(1), "year"))
        for m in _COUNT.finditer(sentence):
            if _YEAR.fullmatch(m.group(1)):
                continue
            q = _question(sentence, m.span(), f"how many {m.group(2)}", passage.title)
            if q:
                out.setdefault(m.group(1), ClozeQuestion(q, m.group(1), "count"))
        for m in _NAME.finditer(sentence):
            name = m.group(1).strip()
            if m.start() == 0 or name.split()[0] in _STOP_NAMES or name.lower() == passage.title.lower():
                continue
            if passage.title and name.lower() in passage.title.lower():
                continue
            prefix = sentence[: m.start()].rstrip()
            wh = "whom" if prefix.endswith((" by", " with", " to")) else "what"
            q = _question(sentence, m.span(), wh, passage.title)
            if q:
                out.setdefault(name, ClozeQuestion(q, name, "name"))
    return [q for q in out.values() if q.answer.lower() not in q.question.lower()]


def split_of(title: str, held_out_share: float = 0.1) -> str:
    """train / held_out by a hash of the passage title: the same passage never serves both."""
    bucket = int(hashlib.sha256(title.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "held_out" if bucket < held_out_share else "train"


@dataclass(frozen=True)
class QARecord:
    """One generated question with its ordered documents (gold at `position`)."""
    question: str
    answer: str
    documents: tuple[Document, ...]
    position: int


def qa_records(passages: Sequence[Passage], vectors: np.ndarray | None, count: int, seed: int = 0,
               num_docs: tuple[int, int] = (3, 10), topical_share: float = 0.6,
               gold: Sequence[int] | None = None, gold_slots: str = "uniform") -> list[QARecord]:
    """`count` questions over `passages` (asked about `gold` ones only, if given: indices into `passages`),
    each with num_docs[0]..num_docs[1] documents.

    Distractors: with probability `topical_share` the passages nearest to the gold one by embedding
    cosine (`vectors`, unit rows), otherwise random ones; never the gold's title, never one that
    contains the answer (case-insensitive). Gold positions: `gold_slots` (GOLD_SLOTS)."""
    if gold_slots not in GOLD_SLOTS:
        raise PearError(f"unknown gold placement {gold_slots!r}; choose one of {', '.join(GOLD_SLOTS)}")
    if len(passages) < num_docs[1] + 1:
        raise PearError(f"a corpus of {len(passages)} passages is too small for {num_docs[1]}-document prompts; "
                        f"give at least {num_docs[1] + 1} passages (more than 200 is better)")
    rng = random.Random(f"textqa:{seed}")
    askable = range(len(passages)) if gold is None else sorted(set(gold))
    candidates = [(i, q) for i in askable for q in cloze_questions(passages[i])]
    if not candidates:
        raise PearError("no questions could be generated from this corpus: it needs sentences holding years, "
                        "numbers or capitalised names")
    rng.shuffle(candidates)
    # Prefer one question per passage, then the rest: variety over depth.
    seen: set[int] = set()
    first = [not (i in seen or seen.add(i)) for i, _ in candidates]
    ordered = [c for c, f in zip(candidates, first) if f] + [c for c, f in zip(candidates, first) if not f]
    lowered = [p.text.lower() for p in passages]
    records = []
    for gold, q in ordered:
        if len(records) >= count:
            break
        n = rng.randint(*num_docs)
        answer = q.answer.lower()
        if vectors is not None and rng.random() < topical_share:
            order = np.argsort(-(vectors @ vectors[gold]))[: 8 * n + 8].tolist()
        else:
            order = rng.sample(range(len(passages)), min(len(passages), 8 * n + 8))
        chosen = [i for i in order if i != gold and passages[i].title != passages[gold].title
                  and answer not in lowered[i]][: n - 1]
        if len(chosen) < n - 1:
            continue
        rng.shuffle(chosen)  # nearest-first would put the hardest distractor at a fixed slot
        pos = rng.randrange(1, n - 1) if gold_slots == "middle" and n >= 3 else rng.randrange(n)
        docs = [Document(passages[i].title, passages[i].text) for i in chosen]
        docs.insert(pos, Document(passages[gold].title, passages[gold].text))
        records.append(QARecord(q.question, q.answer, tuple(docs), pos))
    if not records:
        raise PearError("no question found enough distractors without its answer; give a larger corpus")
    return records
