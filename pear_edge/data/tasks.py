"""Evaluation tasks: the records users bring (lost-in-the-middle JSONL formats) and the examples
built from them, with the gold document / key moved to chosen positions.

One record gives one example per gold position, with the same distractors in the same order, so
accuracy per position is a paired, within-record comparison (only the gold moves).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pear_edge.base.errors import PearError
from pear_edge.data.prompts import Document, kv_prompt, mdqa_prompt
from pear_edge.data.templates import Template

from pear_edge.data.jsonl import LineError, read_jsonl


@dataclass(frozen=True)
class QAExample:
    """One prompt with its accepted answers; `position` is where the gold sits (0-based)."""
    id: str
    prompt: str
    answers: tuple[str, ...]
    position: int | None = None


@dataclass(frozen=True)
class TextExample:
    """A passage scored by perplexity (knowledge retention)."""
    id: str
    text: str


# --------------------------------------------------------------------------- multi-document QA

@dataclass(frozen=True)
class MDQARecord:
    question: str
    answers: tuple[str, ...]
    gold: Document
    distractors: tuple[Document, ...] = field(default=())


def _string(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not value.strip():
        raise LineError(f"field {key!r} must be a non-empty string")
    return value


def _flag(ctx: dict[str, Any], key: str, i: int) -> bool:
    """A JSON true/false (absent or null: false); the string "false" is refused, not read as true."""
    value = ctx.get(key)
    if value is not None and not isinstance(value, bool):
        raise LineError(f"ctxs[{i}].{key} must be true or false, not {value!r}")
    return bool(value)


def parse_mdqa(doc: dict[str, Any]) -> MDQARecord:
    """NQ-open / lost-in-the-middle record: question, answers, ctxs[{title, text, isgold|hasanswer}]."""
    question = _string(doc, "question")
    answers = doc["answers"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
        raise LineError("field 'answers' must be a non-empty list of strings")
    ctxs = doc["ctxs"]
    if not isinstance(ctxs, list) or not ctxs:
        raise LineError("field 'ctxs' must be a non-empty list")
    docs, flags = [], []
    for i, ctx in enumerate(ctxs):
        if not isinstance(ctx, dict) or not isinstance(ctx.get("text"), str):
            raise LineError(f"ctxs[{i}] needs a string 'text'")
        docs.append(Document(str(ctx.get("title") or ""), ctx["text"]))
        flags.append((_flag(ctx, "isgold", i), _flag(ctx, "hasanswer", i)))
    gold_idx = next((i for i, (g, _) in enumerate(flags) if g), None)
    if gold_idx is None:
        gold_idx = next((i for i, (_, h) in enumerate(flags) if h), None)
    if gold_idx is None:
        raise LineError("no ctx is marked isgold (or hasanswer); cannot tell which document is the gold one")
    distractors = tuple(d for i, (d, (g, h)) in enumerate(zip(docs, flags)) if i != gold_idx and not g and not h)
    return MDQARecord(question, tuple(answers), docs[gold_idx], distractors)


def load_mdqa(path: str | Path) -> list[MDQARecord]:
    return read_jsonl(path, parse_mdqa)


def documents_per_record(records: Sequence[MDQARecord]) -> int:
    """The documents a prompt can take from the records alone (gold + own distractors, the fewest over
    `records`): the document count of a file made for one count, so that nothing is topped up unasked."""
    if not records:
        raise PearError("no MDQA records")
    return min(1 + len(r.distractors) for r in records)


def default_positions(slots: int) -> tuple[int, ...]:
    """First, middle and last of `slots` (fewer when slots < 3)."""
    return tuple(dict.fromkeys((0, (slots - 1) // 2, slots - 1)))


def check_positions(positions: Sequence[int], slots: int, what: str) -> tuple[int, ...]:
    if not positions:
        raise PearError("give at least one gold position")
    bad = [p for p in positions if not 0 <= p < slots]
    if bad:
        raise PearError(f"gold positions {bad} are outside 0..{slots - 1} for {slots} {what}")
    return tuple(dict.fromkeys(positions))


def mdqa_examples(records: Sequence[MDQARecord], num_docs: int = 10, positions: Sequence[int] = (0, 4, 9),
                  seed: int = 0, distractors: str = "own", limit: int | None = None,
                  template: Template | None = None) -> list[QAExample]:
    """Build `num_docs`-document prompts with the gold at each of `positions`.

    distractors="own": the record's own non-gold ctxs in file (retrieval) order, topped up with other
    records' gold passages if it has too few; "others": other records' gold passages only.
    Other-record passages are drawn with `seed`. `template`: the prompt's layout (default: the default preset).
    """
    if num_docs < 1:
        raise PearError("--num-docs must be at least 1")
    if distractors not in ("own", "others"):
        raise PearError(f"distractor source must be 'own' or 'others', not {distractors!r}")
    positions = check_positions(positions, num_docs, "documents")
    records = list(records[:limit] if limit else records)
    need = num_docs - 1
    if need and len(records) < 2 and (distractors == "others" or len(records[0].distractors) < need):
        raise PearError(f"not enough distractor documents for {num_docs} documents; lower --num-docs")
    out = []
    for index, record in enumerate(records):
        rng = random.Random(f"{seed}:{index}")
        chosen = list(record.distractors[:need]) if distractors == "own" else []
        answers_lower = [a.lower() for a in record.answers]
        pool = [i for i in range(len(records)) if i != index]
        rng.shuffle(pool)
        for other in pool:
            if len(chosen) >= need:
                break
            doc = records[other].gold
            if not any(a in doc.text.lower() for a in answers_lower):
                chosen.append(doc)
        if len(chosen) < need:
            raise PearError(f"record {index + 1}: only {len(chosen)} distractors available for "
                            f"{num_docs} documents; lower --num-docs")
        for pos in positions:
            docs = chosen[:pos] + [record.gold] + chosen[pos:]
            out.append(QAExample(f"{index}@{pos}", mdqa_prompt(record.question, docs, template), record.answers, pos))
    return out


def counterfactual_records(count: int, split: str, num_docs: int, seed: int = 0) -> list[MDQARecord]:
    """`count` generated counterfactual records of one split, with `num_docs - 1` distractors each."""
    from pear_edge.data.counterfactual import generate_counterfactual

    return [parse_mdqa(r) for r in generate_counterfactual(count, split, seed, num_distractors=max(num_docs - 1, 0))]


# --------------------------------------------------------------------------- key-value retrieval

@dataclass(frozen=True)
class KVRecord:
    pairs: tuple[tuple[str, str], ...]
    key: str
    value: str


def parse_kv(doc: dict[str, Any]) -> KVRecord:
    """Lost-in-the-middle KV record: ordered_kv_records [[key, value], ...], key, value."""
    raw = doc["ordered_kv_records"]
    if not isinstance(raw, list) or not raw:
        raise LineError("field 'ordered_kv_records' must be a non-empty list of [key, value] pairs")
    pairs = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise LineError(f"ordered_kv_records[{i}] must be a [key, value] pair of strings")
        pairs.append((pair[0], pair[1]))
    key, value = _string(doc, "key"), _string(doc, "value")
    if (key, value) not in pairs:
        raise LineError(f"the pair ({key!r}, {value!r}) is not among ordered_kv_records")
    if len({k for k, _ in pairs}) != len(pairs):
        raise LineError("keys in ordered_kv_records must be unique")
    return KVRecord(tuple(pairs), key, value)


def load_kv(path: str | Path) -> list[KVRecord]:
    return read_jsonl(path, parse_kv)


def kv_examples(records: Sequence[KVRecord], positions: Sequence[int] = (0,), num_pairs: int | None = None,
                limit: int | None = None) -> list[QAExample]:
    """Move the queried pair to each position; `num_pairs` keeps the first distractor pairs only."""
    records = list(records[:limit] if limit else records)
    out = []
    for index, record in enumerate(records):
        others = [p for p in record.pairs if p[0] != record.key]
        n = num_pairs or len(record.pairs)
        if n > len(record.pairs):
            raise PearError(f"record {index + 1} has {len(record.pairs)} pairs, fewer than --num-pairs {n}")
        others = others[: n - 1]
        for pos in check_positions(positions, n, "key-value pairs"):
            pairs = others[:pos] + [(record.key, record.value)] + others[pos:]
            out.append(QAExample(f"{index}@{pos}", kv_prompt(pairs, record.key), (record.value,), pos))
    return out


# --------------------------------------------------------------------------- knowledge retention

def pydoc_passages(count: int = 16, chars: int = 1200, seed: int = 0) -> list[TextExample]:
    """Passages from the Python docs that ship with the interpreter (`pydoc_data.topics`): text the
    model has likely seen, so a rise in perplexity means PEAR cost general knowledge."""
    from pydoc_data.topics import topics

    names = sorted(name for name, text in topics.items() if len(text.strip()) >= chars)
    if count > len(names):
        raise PearError(f"only {len(names)} pydoc topics have {chars} characters; ask for fewer passages")
    picked = sorted(random.Random(seed).sample(names, count))
    return [TextExample(name, _cut_at_word(topics[name].strip(), chars)) for name in picked]


def _cut_at_word(text: str, chars: int) -> str:
    cut = text[:chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut
