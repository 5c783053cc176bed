"""The one coefficients type that flows detect -> train -> fold -> export -> eval.

File format (JSON, versioned): see README "Coefficients file". A file names the model it belongs to
through a fingerprint; applying it to a model with another head layout is always refused, and to
other weights of the same layout only when their per-layer o_proj norms differ by more than a
tolerance (the same model in another quantization passes, a different model does not).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .atomic import write_text_atomic
from .errors import PearError
from .layout import HeadLayout

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
    """Which model coefficients belong to: its head layout, the sha256 of its fp32 weights (torch only),
    and per-layer o_proj norms and sketches (comparable across torch, GGUF and ONNX). In a file the
    layout's fields are written flat beside the others (README "Coefficients file")."""

    layout: HeadLayout
    weights_sha256: str
    o_proj_norms: tuple[float, ...]
    name: str = ""
    o_proj_sketch: tuple[float, ...] = ()

    @classmethod
    def from_o_proj_weights(cls, layout: HeadLayout, weights: Sequence[np.ndarray], weights_sha256: str = "",
                            name: str = "") -> "ModelFingerprint":
        """Fingerprint from per-layer o_proj weights laid out (out, in) — usable from torch, GGUF or ONNX."""
        norms = tuple(float(np.linalg.norm(np.asarray(w, dtype=np.float64))) for w in weights)
        sketch = tuple(x for layer, w in enumerate(weights) for x in o_proj_sketch(w, layer))
        return cls(layout, weights_sha256, norms, name, sketch)

    @property
    def model_type(self) -> str:
        return self.layout.model_type

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    @property
    def num_heads(self) -> int:
        return self.layout.num_heads

    @property
    def head_dim(self) -> int:
        return self.layout.head_dim

    @property
    def hidden_size(self) -> int:
        return self.layout.hidden_size

    def check_matches(self, other: "ModelFingerprint", what: str = "this model") -> str:
        """Raise PearError unless `other` is the model these coefficients were made for.

        Returns "exact" (same weights) or "compatible" (same layout, o_proj norms within tolerance).
        """
        if self.layout.counts() != other.layout.counts():
            raise PearError(
                f"coefficients are for a {self.model_type} with layers/heads/head_dim/hidden "
                f"{self.layout.counts()}, but {what} has {other.layout.counts()}; calibrate for this model instead"
            )
        if self.weights_sha256 and self.weights_sha256 == other.weights_sha256:
            return "exact"
        worst = max_relative_difference(self.o_proj_norms, other.o_proj_norms)
        cosine = sketch_cosine(self.o_proj_sketch, other.o_proj_sketch) if self.o_proj_sketch and other.o_proj_sketch else 1.0
        # Written as "not (ok)" so that a NaN (from NaN/inf weights or a hand-edited file) never passes.
        if not cosine >= SKETCH_MIN_COSINE:
            raise PearError(
                f"coefficients were calibrated on other weights ({self.name or self.model_type}): o_proj weight "
                f"sketches disagree (cosine {cosine:.2f} < {SKETCH_MIN_COSINE}); calibrate for this model"
            )
        if not worst <= NORM_TOLERANCE:
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
        """The one strict reader (see `parse_document`); every problem is one PearError naming `source`."""
        doc = parse_json_object(text, source, "coefficients")
        return parse_document(doc, source)

    @classmethod
    def load(cls, path: str | Path) -> "Coefficients":
        from .inputs import read_text

        return cls.from_json(read_text(path, "coefficients file"), source=str(path))

    @classmethod
    def identity(cls, model: ModelFingerprint, heads: Iterable[tuple[int, int]]) -> "Coefficients":
        return cls(model, [HeadCoefficient(l, h, 1.0) for l, h in heads])


def _fingerprint_dict(model: ModelFingerprint) -> dict[str, Any]:
    """The file form: the layout's fields flat, then the weight checks (the order files always had)."""
    return {**asdict(model.layout), "weights_sha256": model.weights_sha256, "o_proj_norms": list(model.o_proj_norms),
            "name": model.name, "o_proj_sketch": list(model.o_proj_sketch)}


# --------------------------------------------------------------------------- the strict reader

MAX_COEFFICIENT = 100.0
"""Largest |coefficient| accepted when reading a file (trained ones stay within a few units; 1e30 would
overflow fp16 weights). Override with the environment variable PEAR_EDGE_MAX_COEFFICIENT."""
MAX_DIMENSION = 1 << 20
_MODEL_KEYS = {"model_type", "num_layers", "num_heads", "head_dim", "hidden_size", "weights_sha256",
               "o_proj_norms", "name", "o_proj_sketch"}
_HEAD_KEYS = {"layer", "head", "coefficient", "score"}
_TOP_KEYS = {"format", "version", "model", "heads", "calibration", "metrics"}


def max_coefficient() -> float:
    text = os.environ.get("PEAR_EDGE_MAX_COEFFICIENT")
    if text is None:
        return MAX_COEFFICIENT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise PearError(f"PEAR_EDGE_MAX_COEFFICIENT must be a positive number, not {text!r}")
    return value


def parse_json_object(text: str, source: str, what: str) -> dict:
    """`text` parsed as a JSON object; NaN/Infinity literals and absurd nesting refused."""
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise PearError(f"{source}: not a valid {what} JSON file (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers with thousands of digits
        raise PearError(f"{source}: not a valid {what} JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise PearError(f"{source}: not a pear-edge {what} file (expected a JSON object, got {_type(doc)})")
    return doc


def _type(value: Any) -> str:
    return {bool: "true/false", dict: "an object", list: "a list", str: "a string", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PearError(f"{where} must be an integer, not {_type(value)} {json.dumps(value)[:40]}")
    if not low <= value <= high:
        raise PearError(f"{where} is {value}; it must be between {low} and {high}")
    return value


def _number(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise PearError(f"{where} must be a number, not {_type(value)} {json.dumps(value)[:40]}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise PearError(f"{where} is {value}; it must be finite")
    return x


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PearError(f"{where} must be a string, not {_type(value)}")
    return value


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise PearError(f"{where} must be a JSON object, not {_type(value)}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise PearError(f"{where} must be a list, not {_type(value)}")
    return value


def _no_unknown_keys(doc: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise PearError(f"{where} has unknown field(s) {', '.join(map(repr, unknown[:5]))}; "
                        f"known: {', '.join(sorted(known))}")


def _required(doc: dict, key: str, where: str) -> Any:
    if key not in doc:
        raise PearError(f"{where} lacks the field {key!r}")
    return doc[key]


def parse_fingerprint(m: Any, where: str) -> ModelFingerprint:
    """A model fingerprint object (coefficients and head-scores files): every field typed and finite."""
    m = _object(m, where)
    _no_unknown_keys(m, _MODEL_KEYS, where)
    model_type = _string(_required(m, "model_type", where), f"{where}.model_type")
    if not model_type.strip():
        raise PearError(f"{where}.model_type is empty")
    dims = {k: _integer(_required(m, k, where), f"{where}.{k}", 1, MAX_DIMENSION)
            for k in ("num_layers", "num_heads", "head_dim", "hidden_size")}
    sha = _string(m.get("weights_sha256", ""), f"{where}.weights_sha256")
    if sha and not (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise PearError(f"{where}.weights_sha256 must be 64 lowercase hex digits (or empty)")
    norms = _numbers(m.get("o_proj_norms", []), f"{where}.o_proj_norms", (0, dims["num_layers"]))
    if any(x < 0 for x in norms):
        raise PearError(f"{where}.o_proj_norms has a negative norm")
    sketch = _numbers(m.get("o_proj_sketch", []), f"{where}.o_proj_sketch", (0, dims["num_layers"] * SKETCH_SIZE))
    name = _string(m.get("name", ""), f"{where}.name")
    return ModelFingerprint(HeadLayout(model_type, **dims), sha, norms, name, sketch)


def _numbers(value: Any, where: str, lengths: tuple[int, ...]) -> tuple[float, ...]:
    items = _list(value, where)
    if len(items) not in lengths:
        raise PearError(f"{where} has {len(items)} values; expected {' or '.join(map(str, lengths))}")
    return tuple(_number(x, f"{where}[{i}]") for i, x in enumerate(items))


def _parse_head(h: Any, where: str, bound: float) -> HeadCoefficient:
    h = _object(h, where)
    _no_unknown_keys(h, _HEAD_KEYS, where)
    layer = _integer(_required(h, "layer", where), f"{where}.layer", 0, MAX_DIMENSION)
    head = _integer(_required(h, "head", where), f"{where}.head", 0, MAX_DIMENSION)
    c = _number(_required(h, "coefficient", where), f"coefficient of L{layer}H{head}")
    if abs(c) > bound:
        raise PearError(f"coefficient of L{layer}H{head} is {c:g}, beyond ±{bound:g}; if this is intended, "
                        f"set PEAR_EDGE_MAX_COEFFICIENT")
    score = h.get("score")
    return HeadCoefficient(layer, head, c, None if score is None else _number(score, f"{where}.score"))


def _check_version(doc: dict, source: str) -> None:
    version = _required(doc, "version", source)
    if isinstance(version, int) and not isinstance(version, bool) and version == VERSION:
        return
    if isinstance(version, int) and not isinstance(version, bool):
        raise PearError(f"{source}: coefficients format version {version} is not supported "
                        f"(this pear-edge reads version {VERSION})")
    raise PearError(f"{source}: field 'version' must be the integer {VERSION}, not {_type(version)} "
                    f"{json.dumps(version)[:20]}")


def parse_document(doc: dict, source: str) -> Coefficients:
    """Check a parsed coefficients document field by field: format, version, the model fingerprint, a
    non-empty list of distinct heads inside the model with finite, bounded coefficients, and
    calibration/metrics objects. Raises PearError naming the first problem."""
    if doc.get("format") != FORMAT:
        raise PearError(f"{source}: not a pear-edge coefficients file (missing format={FORMAT!r})")
    _check_version(doc, source)
    _no_unknown_keys(doc, _TOP_KEYS, source)
    model = parse_fingerprint(_required(doc, "model", source), f"{source}: model")
    heads = _list(_required(doc, "heads", source), f"{source}: heads")
    if not heads:
        raise PearError(f"{source}: the heads list is empty; there is nothing to apply")
    bound = max_coefficient()
    parsed = [_parse_head(h, f"{source}: heads[{i}]", bound) for i, h in enumerate(heads)]  # ranges: validate()
    calibration = _object(doc.get("calibration", {}), f"{source}: calibration")
    metrics = _object(doc.get("metrics", {}), f"{source}: metrics")
    try:
        return Coefficients(model, parsed, calibration, metrics)
    except PearError as exc:
        raise PearError(f"{source}: {exc}") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")
