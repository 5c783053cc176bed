"""The one coefficients type that flows detect -> train -> fold -> export -> eval.

File format (JSON, versioned): see README "Coefficients file". A file names the model it belongs to
through a fingerprint; applying it to a model with another head layout is always refused, and to
other weights of the same layout only when their per-layer o_proj norms differ by more than a
tolerance (the same model in another quantization passes, a different model does not).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .atomic import write_text_atomic
from .errors import PearError

import numpy as np

FORMAT = "pear-edge/coefficients"
VERSION = 1
# Largest relative difference of any layer's o_proj Frobenius norm accepted as "same model".
# Quantization noise barely moves a Frobenius norm; the weight sketch below is what tells models apart.
NORM_TOLERANCE = 0.03
# Random bilinear probes u^T W_o v per layer: another quantization of the same weights keeps their
# direction (cosine > 0.99 for Q4), independently initialised or trained weights do not (cosine ~ 0).
SKETCH_SIZE = 8
SKETCH_MIN_COSINE = 0.9


def o_proj_sketch(weight_out_in: np.ndarray, layer: int) -> tuple[float, ...]:
    """SKETCH_SIZE random bilinear probes of one layer's o_proj weight, laid out (out, in)."""
    w = np.asarray(weight_out_in, dtype=np.float64)
    rng = np.random.default_rng(layer)
    u = rng.standard_normal((SKETCH_SIZE, w.shape[0]))
    v = rng.standard_normal((SKETCH_SIZE, w.shape[1]))
    return tuple(float(x) for x in ((u @ w) * v).sum(1))


def sketch_cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or not x.size:
        return 0.0
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-300))


@dataclass(frozen=True)
class ModelFingerprint:
    model_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    weights_sha256: str
    o_proj_norms: tuple[float, ...]
    name: str = ""
    o_proj_sketch: tuple[float, ...] = ()

    @classmethod
    def from_o_proj_weights(cls, model_type: str, num_layers: int, num_heads: int, head_dim: int,
                            hidden_size: int, weights: Sequence[np.ndarray], weights_sha256: str = "",
                            name: str = "") -> "ModelFingerprint":
        """Fingerprint from per-layer o_proj weights laid out (out, in) — usable from torch, GGUF or ONNX."""
        norms = tuple(float(np.linalg.norm(np.asarray(w, dtype=np.float64))) for w in weights)
        sketch = tuple(x for layer, w in enumerate(weights) for x in o_proj_sketch(w, layer))
        return cls(model_type, num_layers, num_heads, head_dim, hidden_size, weights_sha256, norms, name, sketch)

    def layout(self) -> tuple[int, int, int, int]:
        return (self.num_layers, self.num_heads, self.head_dim, self.hidden_size)

    def check_matches(self, other: "ModelFingerprint", what: str = "this model") -> str:
        """Raise PearError unless `other` is the model these coefficients were made for.

        Returns "exact" (same weights) or "compatible" (same layout, o_proj norms within tolerance).
        """
        if self.layout() != other.layout():
            raise PearError(
                f"coefficients are for a {self.model_type} with layers/heads/head_dim/hidden "
                f"{self.layout()}, but {what} has {other.layout()}; calibrate for this model instead"
            )
        if self.weights_sha256 and self.weights_sha256 == other.weights_sha256:
            return "exact"
        worst = max_relative_difference(self.o_proj_norms, other.o_proj_norms)
        cosine = sketch_cosine(self.o_proj_sketch, other.o_proj_sketch) if self.o_proj_sketch and other.o_proj_sketch else 1.0
        if cosine < SKETCH_MIN_COSINE:
            raise PearError(
                f"coefficients were calibrated on other weights ({self.name or self.model_type}): o_proj weight "
                f"sketches disagree (cosine {cosine:.2f} < {SKETCH_MIN_COSINE}); calibrate for this model"
            )
        if worst > NORM_TOLERANCE:
            raise PearError(
                f"coefficients were calibrated on other weights ({self.name or self.model_type}): "
                f"o_proj norms differ by up to {worst:.1%} (> {NORM_TOLERANCE:.0%}); calibrate for this model"
            )
        return "compatible"


def max_relative_difference(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b) or not a:
        return math.inf
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))


@dataclass(frozen=True)
class HeadCoefficient:
    layer: int
    head: int
    coefficient: float
    score: float | None = None


@dataclass
class Coefficients:
    model: ModelFingerprint
    heads: list[HeadCoefficient]
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        seen: set[tuple[int, int]] = set()
        for h in self.heads:
            key = (h.layer, h.head)
            if key in seen:
                raise PearError(f"head L{h.layer}H{h.head} appears twice in the coefficients")
            seen.add(key)
            if not (0 <= h.layer < self.model.num_layers and 0 <= h.head < self.model.num_heads):
                raise PearError(
                    f"head L{h.layer}H{h.head} is outside the model's {self.model.num_layers} layers x "
                    f"{self.model.num_heads} heads"
                )
            if not math.isfinite(h.coefficient):
                raise PearError(f"coefficient of L{h.layer}H{h.head} is {h.coefficient}; it must be finite")

    def as_dict(self) -> dict[tuple[int, int], float]:
        return {(h.layer, h.head): h.coefficient for h in self.heads}

    def summary(self, listed: int = 12) -> str:
        """One line: every coefficient when there are few, else the range and the furthest from 1."""
        heads = sorted(self.heads, key=lambda h: -abs(h.coefficient - 1))
        text = lambda hs: ", ".join(f"L{h.layer}H{h.head}={h.coefficient:.3f}" for h in hs)  # noqa: E731
        if len(heads) <= listed:
            return f"{len(heads)} coefficients: {text(heads)}"
        values = sorted(h.coefficient for h in heads)
        return (f"{len(heads)} coefficients, {values[0]:.3f} .. {values[-1]:.3f} (median {values[len(values) // 2]:.3f});"
                f" furthest from 1: {text(heads[:listed])}")

    def by_layer(self) -> dict[int, list[HeadCoefficient]]:
        out: dict[int, list[HeadCoefficient]] = {}
        for h in sorted(self.heads, key=lambda x: (x.layer, x.head)):
            out.setdefault(h.layer, []).append(h)
        return out

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "model": _fingerprint_dict(self.model),
            "heads": [asdict(h) for h in self.heads],
            "calibration": self.calibration,
            "metrics": self.metrics,
        }
        return json.dumps(doc, indent=2, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str, source: str = "coefficients") -> "Coefficients":
        try:
            doc = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise PearError(f"{source}: not a valid coefficients JSON file ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PearError(f"{source}: not a pear-edge coefficients file (missing format={FORMAT!r})")
        if doc.get("version") != VERSION:
            raise PearError(f"{source}: coefficients format version {doc.get('version')} is not supported "
                            f"(this pear-edge reads version {VERSION})")
        try:
            m = doc["model"]
            model = ModelFingerprint(
                model_type=str(m["model_type"]), num_layers=int(m["num_layers"]),
                num_heads=int(m["num_heads"]), head_dim=int(m["head_dim"]),
                hidden_size=int(m["hidden_size"]), weights_sha256=str(m.get("weights_sha256", "")),
                o_proj_norms=tuple(float(x) for x in m.get("o_proj_norms", [])), name=str(m.get("name", "")),
                o_proj_sketch=tuple(float(x) for x in m.get("o_proj_sketch", [])),
            )
            heads = [
                HeadCoefficient(int(h["layer"]), int(h["head"]), _finite(h["coefficient"], h),
                                None if h.get("score") is None else float(h["score"]))
                for h in doc["heads"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise PearError(f"{source}: malformed coefficients file ({exc})") from None
        return cls(model, heads, dict(doc.get("calibration", {})), dict(doc.get("metrics", {})))

    @classmethod
    def load(cls, path: str | Path) -> "Coefficients":
        p = Path(path)
        if not p.is_file():
            raise PearError(f"coefficients file {p} not found")
        return cls.from_json(p.read_text(), source=str(p))

    @classmethod
    def identity(cls, model: ModelFingerprint, heads: Iterable[tuple[int, int]]) -> "Coefficients":
        return cls(model, [HeadCoefficient(l, h, 1.0) for l, h in heads])


def _fingerprint_dict(model: ModelFingerprint) -> dict[str, Any]:
    return {**asdict(model), "o_proj_norms": list(model.o_proj_norms), "o_proj_sketch": list(model.o_proj_sketch)}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _finite(value: Any, head: dict) -> float:
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"coefficient of L{head.get('layer')}H{head.get('head')} is {value}")
    return x
