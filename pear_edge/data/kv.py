"""Synthetic key-value retrieval data in the lost-in-the-middle format (`ordered_kv_records`, `key`,
`value`), sized for small models: a few pairs and short hex or invented-word keys/values."""
from __future__ import annotations

import random
from typing import Any, Iterator

from pear_edge.base.errors import PearError

from pear_edge.data.counterfactual import _word

KEY_STYLES = ("hex", "word")


def _token(rng: random.Random, style: str, length: int) -> str:
    if style == "hex":
        return "".join(rng.choice("0123456789abcdef") for _ in range(length))
    return _word(rng, max(1, length // 3)).lower()


def generate_kv(count: int, num_pairs: int = 12, style: str = "hex", key_length: int = 6,
                value_length: int = 6, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield `count` records of `num_pairs` unique keys; the queried pair is picked with `seed`."""
    if style not in KEY_STYLES:
        raise PearError(f"key style must be one of {', '.join(KEY_STYLES)}, not {style!r}")
    if count < 1 or num_pairs < 1 or key_length < 1 or value_length < 1:
        raise PearError("count, --num-pairs and key/value lengths must be positive")
    rng = random.Random(f"kv:{style}:{seed}")
    for _ in range(count):
        keys: dict[str, str] = {}
        attempts = 0
        while len(keys) < num_pairs:
            attempts += 1
            if attempts > 100 * num_pairs:
                raise PearError(f"cannot make {num_pairs} distinct keys of length {key_length}; make them longer")
            keys.setdefault(_token(rng, style, key_length), _token(rng, style, value_length))
        pairs = [[k, v] for k, v in keys.items()]
        key, value = rng.choice(pairs)
        yield {"ordered_kv_records": pairs, "key": key, "value": value}
