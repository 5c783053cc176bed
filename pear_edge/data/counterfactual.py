"""Counterfactual multi-document QA: invented people, towns, years, objects and societies, so a
model can only answer by reading the documents (not from memory). Written in the NQ-open /
lost-in-the-middle JSONL format, so it runs through exactly the same loader as user data.

Splits use disjoint entity pools: a person's name hashes to train / validation / test, so an
entity asked about in one split never appears (as gold or distractor) in another, whatever the seed.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Iterator

from pear_edge.base.errors import PearError

SPLITS = ("train", "validation", "test")
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}

# Plain consonant-vowel syllables: invented names that still tokenise into few tokens.
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "h", "j"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l", "s"]
_TOWN_ENDINGS = ["mere", "holt", "vik", "ford", "stead", "wick", "dale", "port", "moor", "gate"]
_MATERIALS = ["copper", "glass", "ivory", "brass", "cedar", "silver", "slate", "amber", "iron", "jade"]
_THINGS = ["lantern", "compass", "loom", "bell", "clock", "telescope", "kettle", "harp", "sundial", "anchor"]
_JOBS = ["clockmaker", "cartographer", "weaver", "glassblower", "astronomer", "shipwright", "potter",
         "bookbinder", "beekeeper", "mason"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables)).capitalize()


def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return next(s for s, r in _SPLIT_BUCKETS.items() if bucket in r)


@dataclass(frozen=True)
class Person:
    name: str
    job: str
    town: str
    year: str
    thing: str
    society: str

    def document(self) -> dict[str, str]:
        return {"title": self.name,
                "text": f"{self.name} was a {self.job} from {self.town}. {self.name} built the {self.thing} "
                        f"in {self.year} for the {self.society}."}

    def questions(self) -> list[tuple[str, str]]:
        return [(f"Which town was {self.name} from?", self.town),
                (f"In what year did {self.name} build the {self.thing}?", self.year),
                (f"What did {self.name} build in {self.year}?", self.thing),
                (f"For which society did {self.name} build the {self.thing}?", self.society)]


def _person(rng: random.Random, split: str, used: set[str]) -> Person:
    while True:
        name = f"{_word(rng, 2)} {_word(rng, 2)}"
        if name not in used and split_of(name) == split:
            used.add(name)
            break
    return Person(name, rng.choice(_JOBS), _word(rng, 1) + rng.choice(_TOWN_ENDINGS), str(rng.randint(1520, 1890)),
                  f"{rng.choice(_MATERIALS)} {rng.choice(_THINGS)}", f"{_word(rng, 2)} Society")


def generate_counterfactual(count: int, split: str = "test", seed: int = 0,
                            num_distractors: int = 9) -> Iterator[dict[str, Any]]:
    """Yield `count` records; the gold ctx sits at a seeded position among `num_distractors` others."""
    if split not in SPLITS:
        raise PearError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if count < 1 or num_distractors < 0:
        raise PearError("need at least one example and a non-negative number of distractors")
    rng = random.Random(f"counterfactual:{split}:{seed}")
    used: set[str] = set()
    for index in range(count):
        gold = _person(rng, split, used)
        question, answer = rng.choice(gold.questions())
        ctxs = []
        while len(ctxs) < num_distractors:
            doc = _person(rng, split, used).document()
            if answer.lower() not in doc["text"].lower():
                ctxs.append({**doc, "isgold": False, "hasanswer": False})
        ctxs.insert(rng.randint(0, len(ctxs)), {**gold.document(), "isgold": True, "hasanswer": True})
        yield {"id": f"cf-{split}-{seed}-{index}", "question": question, "answers": [answer], "ctxs": ctxs}
