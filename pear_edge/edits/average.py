"""The mean of several coefficient files for one model (`pear-edge average`): each edit's value averaged over the
files, an edit a file lacks counting as the identity (1). Calibrations that differ only in their seed each fit a
few hundred proxy prompts; their mean keeps what they agree on (the idea of model soups, arXiv 2203.05482, which
averages fine-tuned weights; here the averaged parameters are the per-head scalars).
"""
from __future__ import annotations

import hashlib
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


def _mean_heads(files: Sequence[Coefficients]) -> list[HeadCoefficient]:
    keys = sorted({(h.layer, h.head) for f in files for h in f.heads})
    maps = [{(h.layer, h.head): h for h in f.heads} for f in files]
    out = []
    for key in keys:
        present = [m[key] for m in maps if key in m]
        coefficient = float(np.mean([m[key].coefficient if key in m else 1.0 for m in maps]))
        scores = [h.score for h in present]
        score = (float(np.mean(scores)) if len(present) == len(maps) and all(s is not None for s in scores)
                 else None)
        out.append(HeadCoefficient(key[0], key[1], coefficient, score))
    return out


def _mean_channels(files: Sequence[Coefficients], width: int) -> list[ChannelScales]:
    layers = sorted({c.layer for f in files for c in f.o_proj_channels})
    out = []
    for layer in layers:
        rows = [next((np.asarray(c.scales, dtype=np.float64) for c in f.o_proj_channels if c.layer == layer),
                     np.ones(width)) for f in files]
        out.append(ChannelScales(layer, tuple(float(x) for x in np.mean(rows, axis=0))))
    return out


def _mean_temperatures(files: Sequence[Coefficients]) -> list[QTemperature]:
    keys = sorted({(t.layer, t.head) for f in files for t in f.q_temperatures})
    maps = [{(t.layer, t.head): t.tau for t in f.q_temperatures} for f in files]
    return [QTemperature(layer, head, float(np.mean([m.get((layer, head), 1.0) for m in maps])))
            for layer, head in keys]


def average_coefficients(files: Sequence[Coefficients], names: Sequence[str],
                         texts: Sequence[str] | None = None) -> Coefficients:
    """[Coefficients] of one model (n >= 2) -> one Coefficients: head scales c = mean_i c_i, o_proj channel
    scales (num_heads * head_dim per layer) and attention temperatures tau averaged the same way, a missing edit
    counting as 1; q/k channel edits (a discrete choice of channel and layers) must be the same in every file and
    are kept. The calibration record holds what every file's record shares (so the template and prompt format
    warnings still apply) and, under `averaged`, each file's name, seed and sha256 (of `texts`, the files as read).
    """
    if len(files) < 2:
        raise PearError(f"average needs at least two coefficient files, got {len(files)}")
    if len(names) != len(files) or (texts is not None and len(texts) != len(files)):
        raise PearError("average: one name (and text) per coefficients file")
    first = files[0]
    for f, name in zip(files[1:], names[1:]):
        first.model.check_matches(f.model, what=f"{name}'s model")
        if sorted(map(repr, f.qk_channels)) != sorted(map(repr, first.qk_channels)):
            raise PearError(f"{name} has other q/k channel edits than {names[0]}; only files with the same q/k "
                            f"channel edits can be averaged")
    sources = []
    for i, (f, name) in enumerate(zip(files, names)):
        entry: dict[str, Any] = {"file": name, "seed": f.calibration.get("seed")}
        if texts is not None:
            entry["sha256"] = hashlib.sha256(texts[i].encode()).hexdigest()
        sources.append(entry)
    calibration = {**common_record([f.calibration for f in files]), SOURCES_KEY: sources}
    width = first.model.num_heads * first.model.head_dim
    return Coefficients(first.model, _mean_heads(files), calibration=calibration, metrics={},
                        o_proj_channels=_mean_channels(files, width), qk_channels=list(first.qk_channels),
                        q_temperatures=_mean_temperatures(files))
