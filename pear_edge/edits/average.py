"""The mean of several coefficient files for one model (`pear-edge average`): each edit's value averaged over the
files, an edit a file lacks counting as the identity (1). Calibrations that differ only in their seed each fit a
few hundred proxy prompts; their mean keeps what they agree on (the idea of model soups, arXiv 2203.05482, which
averages fine-tuned weights; here the averaged parameters are the per-head scalars).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pear_edge.base.errors import PearError
from pear_edge.edits.coefficients import ChannelScales, Coefficients, HeadCoefficient, QTemperature

SOURCES_KEY = "averaged"  # coefficients: calibration.averaged, one entry per file the mean was taken over


def common_record(records: Sequence[dict]) -> dict:
    """The keys whose values all `records` share; a dict value shared key by key, one level down
    ({"seed": 1, "train": {"seed": 1, "steps": 30}}, {"seed": 2, "train": {"seed": 2, "steps": 30}}
    -> {"train": {"steps": 30}})."""
    first, rest = records[0], records[1:]
    out: dict[str, Any] = {}
    for key, value in first.items():
        others = [r.get(key) for r in rest]
        if all(o == value for o in others):
            out[key] = value
        elif isinstance(value, dict) and all(isinstance(o, dict) for o in others):
            shared = {k: v for k, v in value.items() if all(k in o and o[k] == v for o in others)}
            if shared:
                out[key] = shared
    return out


def _means(per_file: Sequence[dict], one: Any) -> dict:
    """{key: value} of each file -> {key: mean over the files}, keys in order; a key a file lacks counts as `one`."""
    keys = sorted({key for values in per_file for key in values})
    return {key: np.mean([values.get(key, one) for values in per_file], axis=0) for key in keys}


def _head_scales(f: Coefficients) -> dict[tuple[int, int], float]:
    return {(h.layer, h.head): h.coefficient for h in f.heads}


def _mean_heads(files: Sequence[Coefficients]) -> list[HeadCoefficient]:
    """Head scales averaged; a head's score averaged only where every file scored it."""
    coefficients = _means([_head_scales(f) for f in files], 1.0)
    scores = [{(h.layer, h.head): h.score for h in f.heads} for f in files]
    out = []
    for (layer, head), c in coefficients.items():
        each = [s.get((layer, head)) for s in scores]
        score = None if any(x is None for x in each) else float(np.mean(each))
        out.append(HeadCoefficient(layer, head, float(c), score))
    return out


def _mean_channels(files: Sequence[Coefficients], width: int) -> list[ChannelScales]:
    means = _means([{c.layer: np.asarray(c.scales, dtype=np.float64) for c in f.o_proj_channels} for f in files],
                   np.ones(width))
    return [ChannelScales(layer, tuple(float(x) for x in scales)) for layer, scales in means.items()]


def _mean_temperatures(files: Sequence[Coefficients]) -> list[QTemperature]:
    means = _means([{(t.layer, t.head): t.tau for t in f.q_temperatures} for f in files], 1.0)
    return [QTemperature(layer, head, float(tau)) for (layer, head), tau in means.items()]


@dataclass(frozen=True)
class Agreement:
    """How two coefficient files agree on their head scales, over the heads either one scales (1 where missing).
    correlation: Pearson's r of (c - 1), None where either file leaves every head at one value; moved: heads both
    files move by more than MOVED from 1; same_direction: how many of those they move the same way."""
    a: str
    b: str
    correlation: float | None
    moved: int
    same_direction: int
    largest_gap: tuple[int, int, float]  # (layer, head, |c_a - c_b|) of the head where they differ most


MOVED = 0.05  # a head scale this far from 1 or further counts as moved, for Agreement.same_direction


def head_agreement(files: Sequence[Coefficients], names: Sequence[str]) -> list[Agreement]:
    """Every pair of `files` (file i against each earlier file j) -> its Agreement on head scales; none when no
    file scales a head (channel or temperature edits only)."""
    per_file = [_head_scales(f) for f in files]
    keys = sorted({key for values in per_file for key in values})
    moves = [np.array([values.get(key, 1.0) - 1.0 for key in keys]) for values in per_file]
    out = []
    for i in range(1, len(files) if keys else 0):
        for j in range(i):
            x, y = moves[i], moves[j]
            both = (np.abs(x) > MOVED) & (np.abs(y) > MOVED)
            gap = np.abs(x - y)
            worst = int(np.argmax(gap))
            r = float(np.corrcoef(x, y)[0, 1]) if len(keys) > 1 and x.std() > 0 and y.std() > 0 else None
            out.append(Agreement(names[i], names[j], r, int(both.sum()), int((both & (x * y > 0)).sum()),
                                 (*keys[worst], float(gap[worst]))))
    return out


def describe_agreement(a: Agreement) -> str:
    r = "undefined (one file scales every head alike)" if a.correlation is None else f"{a.correlation:.3f}"
    layer, head, gap = a.largest_gap
    return (f"{a.a} vs {a.b}: correlation of (c - 1) {r}; of the {a.moved} heads both move by more than {MOVED}, "
            f"{a.same_direction} the same way; furthest apart L{layer}H{head} by {gap:.3f}")


def average_coefficients(files: Sequence[Coefficients], names: Sequence[str],
                         sha256s: Sequence[str] | None = None) -> Coefficients:
    """[Coefficients] of one model (n >= 2) -> one Coefficients: head scales c = mean_i c_i, o_proj channel
    scales (num_heads * head_dim per layer) and attention temperatures tau averaged the same way, a missing edit
    counting as 1; q/k channel edits (a discrete choice of channel and layers) must be the same in every file and
    are kept. The calibration record holds what every file's record shares (so the template and prompt format
    warnings still apply) and, under `averaged`, each file's name, seed and `sha256s` entry (the files' sha256, if given).
    """
    if len(files) < 2:
        raise PearError(f"average needs at least two coefficient files, got {len(files)}")
    if len(names) != len(files) or (sha256s is not None and len(sha256s) != len(files)):
        raise PearError("average: one name (and sha256) per coefficients file")
    first = files[0]
    for f, name in zip(files[1:], names[1:]):
        first.model.check_matches(f.model, what=f"{name}'s model")
        if set(f.qk_channels) != set(first.qk_channels):
            raise PearError(f"{name} has other q/k channel edits than {names[0]}; only files with the same q/k "
                            f"channel edits can be averaged")
    sources = [{"file": name, "seed": f.calibration.get("seed")} for f, name in zip(files, names)]
    for entry, sha256 in zip(sources, sha256s or ()):
        entry["sha256"] = sha256
    calibration = {**common_record([f.calibration for f in files]), SOURCES_KEY: sources}
    width = first.model.num_heads * first.model.head_dim
    return Coefficients(first.model, _mean_heads(files), calibration=calibration, metrics={},
                        o_proj_channels=_mean_channels(files, width), qk_channels=list(first.qk_channels),
                        q_temperatures=_mean_temperatures(files))
