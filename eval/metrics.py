"""Scoring and paired statistics, implemented exactly (no scipy).

best-subspan EM: the SQuAD-normalised gold answer occurs in the normalised output as a run of whole
words (lost-in-the-middle's metric, at word boundaries so "1784" does not match "17845").
Paired comparison: Δ accuracy with a paired bootstrap 95% CI, and an exact two-sided McNemar test,
i.e. a binomial(n = discordant pairs, p = 1/2) test on the examples only one model got right.
"""
from __future__ import annotations

import math
import re
import string
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def best_subspan_em(prediction: str, answers: Iterable[str]) -> bool:
    pred = f" {normalize_answer(prediction)} "
    return any(gold and f" {gold} " in pred for gold in map(normalize_answer, answers))


def mcnemar_exact(base_only: int, pear_only: int) -> float:
    """Two-sided exact McNemar p-value: P(|X - n/2| >= |b - n/2|), X ~ Binomial(b + c, 1/2)."""
    n = base_only + pear_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(base_only, pear_only) + 1))
    return float(min(Fraction(1), 2 * Fraction(tail, 2 ** n)))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test; the same binomial as McNemar, for paired continuous scores."""
    return mcnemar_exact(wins, losses)


def bootstrap_ci(values: Sequence[float], resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences; deterministic for a seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def bootstrap_perplexity_delta(base_nll: Sequence[float], pear_nll: Sequence[float], tokens: Sequence[int],
                               resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap CI of corpus perplexity pear - base, resampling passages (paired)."""
    b, p, t = (np.asarray(v, np.float64) for v in (base_nll, pear_nll, tokens))
    idx = np.random.default_rng(seed).integers(0, t.size, size=(resamples, t.size))
    tok = t[idx].sum(axis=1)
    deltas = np.exp(p[idx].sum(axis=1) / tok) - np.exp(b[idx].sum(axis=1) / tok)
    alpha = (1 - level) / 2
    return (float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha)))


def median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile)."""
    x = np.asarray(values, np.float64)
    return float(np.median(x)), float(np.quantile(x, 0.25)), float(np.quantile(x, 0.75))
