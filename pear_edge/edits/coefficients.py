"""The one coefficients type that flows detect -> train -> fold -> export -> eval.

It carries every weight edit a recipe makes, each an explicit transformation of named weights:

  heads            W_o[:, h*d:(h+1)*d] *= c             one scalar per head (PEAR; SEAL-H-like)
  o_proj_channels  W_o[:, j] *= s_j                      one scalar per o_proj input channel (SEAL-C)
  qk_channels      W_q[:, ch] *= s; W_k[:, ch] *= s      one hidden channel as an input of the queries
                                                         and keys of a layer range (Yu et al. 2024)
  q_temperatures   W_q[rows of head h, :] *= tau          one attention temperature per head: its logits
                   (and those rows of the bias)          q.k times tau (tau > 1 sharpens its softmax)

File format (JSON, versioned): see README "Coefficients file". Version 1 holds head scales only and is
still what head-only coefficients are written as (older readers keep working); version 2 adds o_proj
channel and q/k channel scales, and is still what coefficients without temperatures are written as;
version 3 adds the attention temperatures. A file names the model it belongs to through a fingerprint;
applying it to a model with another head layout is always refused, and to other weights of the same layout only when their
per-layer o_proj norms differ by more than a tolerance (the same model in another quantization
passes, a different model does not).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pear_edge import results
from pear_edge.base.atomic import write_text_atomic
from pear_edge.base.inputs import read_text
from pear_edge.base.errors import PearError
from pear_edge.arch.layout import HeadLayout

import numpy as np

PEAR_COEFFICIENTS = "pear.coefficients"  # the GGUF metadata key that carries a patched file's coefficients JSON
FORMAT = "pear-edge/coefficients"
VERSION = 3          # the newest version this pear-edge writes and reads
HEADS_ONLY_VERSION = 1  # head scales only: written as version 1, byte for byte what version-1 writers wrote
CHANNELS_VERSION = 2    # no temperatures: written as version 2, byte for byte what version-2 writers wrote
VERSIONS = (1, 2, 3)
MAX_TEMPERATURE = 10.0
"""Largest attention temperature accepted (read or trained): a head's logits times 10 already make its softmax
nearly one-hot. Temperatures must also be > 0 (a zero or negative one is no temperature)."""
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
    def from_o_proj_weights(cls, layout: HeadLayout, weights: Iterable[np.ndarray], weights_sha256: str = "",
                            name: str = "") -> "ModelFingerprint":
        """Fingerprint from per-layer o_proj weights laid out (out, in) — usable from torch, GGUF or ONNX.
        `weights` is read once, in layer order (a generator keeps one layer in memory)."""
        norms: list[float] = []
        sketch: list[float] = []
        for layer, w in enumerate(weights):
            norms.append(float(np.linalg.norm(np.asarray(w, dtype=np.float64))))
            sketch.extend(o_proj_sketch(w, layer))
        return cls(layout, weights_sha256, tuple(norms), name, tuple(sketch))

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


@dataclass(frozen=True)
class ChannelScales:
    """SEAL-C: one scale per o_proj input channel of one layer (the concatenated heads' outputs,
    num_heads * head_dim wide): W_o[:, j] *= scales[j]."""

    layer: int
    scales: tuple[float, ...]


@dataclass(frozen=True)
class QKChannelScale:
    """Yu et al. (arXiv 2406.02536): hidden channel `channel` scaled by `scale` as an input of the queries and
    keys of layers first_layer..last_layer (inclusive): W_q[:, channel] *= scale; W_k[:, channel] *= scale
    (input columns of the q/k projections; the norm weight is left alone, so values are unchanged)."""

    channel: int
    scale: float
    first_layer: int
    last_layer: int

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.last_layer + 1)


@dataclass(frozen=True)
class QTemperature:
    """An attention temperature: head `head` of layer `layer` has its query rows of W_q (and of its bias)
    multiplied by tau, so its attention logits q.k are multiplied by tau (exact under RoPE, a rotation
    applied after the projection, and under GQA, where only the queries change)."""

    layer: int
    head: int
    tau: float


EDIT_KINDS = ("heads", "o_proj_channels", "qk_channels", "q_temperatures")


def qk_factor_map(edits: Iterable[QKChannelScale]) -> dict[int, dict[int, float]]:
    """[QKChannelScale] -> {layer: {hidden channel: scale}}, layers in order (what hooks and folds take)."""
    out: dict[int, dict[int, float]] = {}
    for q in edits:
        for layer in q.layers:
            out.setdefault(layer, {})[q.channel] = q.scale
    return dict(sorted(out.items()))


@dataclass
class Coefficients:
    model: ModelFingerprint
    heads: list[HeadCoefficient]
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    o_proj_channels: list[ChannelScales] = field(default_factory=list)
    qk_channels: list[QKChannelScale] = field(default_factory=list)
    q_temperatures: list[QTemperature] = field(default_factory=list)

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
        width = self.model.num_heads * self.model.head_dim
        layers: set[int] = set()
        for c in self.o_proj_channels:
            if not 0 <= c.layer < self.model.num_layers:
                raise PearError(f"o_proj channel scales of layer {c.layer} are outside the model's "
                                f"{self.model.num_layers} layers")
            if c.layer in layers:
                raise PearError(f"o_proj channel scales of layer {c.layer} appear twice in the coefficients")
            layers.add(c.layer)
            if len(c.scales) != width:
                raise PearError(f"o_proj channel scales of layer {c.layer} have {len(c.scales)} values; the model's "
                                f"o_proj input is {width} wide (heads x head_dim)")
            if not all(math.isfinite(x) for x in c.scales):
                raise PearError(f"o_proj channel scales of layer {c.layer} must be finite")
        taken: set[tuple[int, int]] = set()
        for q in self.qk_channels:
            if not 0 <= q.channel < self.model.hidden_size:
                raise PearError(f"q/k channel {q.channel} is outside the model's hidden size {self.model.hidden_size}")
            if not 0 <= q.first_layer <= q.last_layer < self.model.num_layers:
                raise PearError(f"q/k channel {q.channel} layers {q.first_layer}..{q.last_layer} are not a range "
                                f"inside the model's {self.model.num_layers} layers")
            if not math.isfinite(q.scale):
                raise PearError(f"q/k channel {q.channel} scale is {q.scale}; it must be finite")
            pairs = {(layer, q.channel) for layer in q.layers}
            if pairs & taken:
                raise PearError(f"q/k channel {q.channel} is scaled twice in layer {min(pairs & taken)[0]}")
            taken |= pairs
        tempered: set[tuple[int, int]] = set()
        for t in self.q_temperatures:
            key = (t.layer, t.head)
            if key in tempered:
                raise PearError(f"attention temperature of L{t.layer}H{t.head} appears twice in the coefficients")
            tempered.add(key)
            if not (0 <= t.layer < self.model.num_layers and 0 <= t.head < self.model.num_heads):
                raise PearError(f"attention temperature of L{t.layer}H{t.head} is outside the model's "
                                f"{self.model.num_layers} layers x {self.model.num_heads} heads")
            if not (math.isfinite(t.tau) and 0 < t.tau <= MAX_TEMPERATURE):
                raise PearError(f"attention temperature of L{t.layer}H{t.head} is {t.tau:g}; it must be above 0 and "
                                f"at most {MAX_TEMPERATURE:g}")

    @property
    def version(self) -> int:
        """The file version these coefficients are written as: 1 for head scales only, 2 with o_proj or q/k
        channel scales, 3 with attention temperatures."""
        if self.q_temperatures:
            return VERSION
        return CHANNELS_VERSION if self.o_proj_channels or self.qk_channels else HEADS_ONLY_VERSION

    def edit_counts(self) -> dict[str, int]:
        """How many edits of each kind (EDIT_KINDS): heads, layers with o_proj channel scales, (layer, channel)
        pairs with a q/k scale, and heads with an attention temperature."""
        return {"heads": len(self.heads), "o_proj_channels": len(self.o_proj_channels),
                "qk_channels": sum(len(q.layers) for q in self.qk_channels),
                "q_temperatures": len(self.q_temperatures)}

    def is_empty(self) -> bool:
        return not any(self.edit_counts().values())

    def as_dict(self) -> dict[tuple[int, int], float]:
        """The head scales {(layer, head): c} (the other edit kinds: o_proj_factors, qk_factors)."""
        return {(h.layer, h.head): h.coefficient for h in self.heads}

    def o_proj_factors(self, dtype=np.float32) -> dict[int, np.ndarray]:
        """layer -> factor of each o_proj input column (num_heads * head_dim): the head scales times the
        channel scales, multiplied in float64 and rounded once to `dtype`. Every consumer scales W_o's input
        columns by exactly these numbers (torch and ONNX fp32 weights: float32, as torch multiplies an fp32
        tensor by a Python float; GGUF block scales: float64, then fp16); layers without edits are absent."""
        d, width = self.model.head_dim, self.model.num_heads * self.model.head_dim
        factors: dict[int, np.ndarray] = {}
        for h in self.heads:
            factors.setdefault(h.layer, np.ones(width))[h.head * d:(h.head + 1) * d] *= h.coefficient
        for c in self.o_proj_channels:
            factors.setdefault(c.layer, np.ones(width))[:] *= np.asarray(c.scales, dtype=np.float64)
        return {layer: f.astype(dtype) for layer, f in sorted(factors.items())}

    def qk_factors(self) -> dict[int, dict[int, float]]:
        """layer -> {hidden channel: scale} of the q/k input-channel edits."""
        return qk_factor_map(self.qk_channels)

    def q_factors(self) -> dict[int, dict[int, float]]:
        """layer -> {head: tau} of the attention temperatures, layers and heads in order."""
        out: dict[int, dict[int, float]] = {}
        for t in sorted(self.q_temperatures, key=lambda t: (t.layer, t.head)):
            out.setdefault(t.layer, {})[t.head] = t.tau
        return out

    def describe_edits(self) -> str:
        """'8 head scales, o_proj channel scales on 2 layers, q/k channel 17 x -0.5 on layers 10..25'."""
        parts = []
        if self.heads:
            parts.append(f"{len(self.heads)} head scale{'s' * (len(self.heads) != 1)}")
        if self.o_proj_channels:
            parts.append(f"o_proj channel scales on {len(self.o_proj_channels)} layer"
                         f"{'s' * (len(self.o_proj_channels) != 1)}")
        parts += [f"q/k channel {q.channel} x {q.scale:g} on layers {q.first_layer}..{q.last_layer}"
                  for q in self.qk_channels]
        if self.q_temperatures:
            parts.append(f"{len(self.q_temperatures)} attention temperature{'s' * (len(self.q_temperatures) != 1)}")
        return ", ".join(parts) or "no edits"

    def summary(self, listed: int = 12) -> str:
        """One line: every head coefficient when there are few, else the range and the furthest from 1;
        then the other edit kinds."""
        others = []
        if self.o_proj_channels:
            values = np.concatenate([np.asarray(c.scales) for c in self.o_proj_channels])
            others.append(f"o_proj channel scales on {len(self.o_proj_channels)} layers, {values.min():.3f} .. "
                          f"{values.max():.3f} (median {float(np.median(values)):.3f})")
        others += [f"q/k channel {q.channel} x {q.scale:g} on layers {q.first_layer}..{q.last_layer}"
                   for q in self.qk_channels]
        if self.q_temperatures:
            taus = [t.tau for t in self.q_temperatures]
            others.append(f"attention temperatures on {len(taus)} heads, {min(taus):.3f} .. {max(taus):.3f}")
        if not self.heads:
            return "; ".join(others) or "no edits"
        heads = sorted(self.heads, key=lambda h: -abs(h.coefficient - 1))
        text = lambda hs: ", ".join(f"L{h.layer}H{h.head}={h.coefficient:.3f}" for h in hs)  # noqa: E731
        if len(heads) <= listed:
            line = f"{len(heads)} coefficients: {text(heads)}"
        else:
            values = sorted(h.coefficient for h in heads)
            line = (f"{len(heads)} coefficients, {values[0]:.3f} .. {values[-1]:.3f} (median "
                    f"{values[len(values) // 2]:.3f}); furthest from 1: {text(heads[:listed])}")
        return "; ".join([line, *others])

    def by_layer(self) -> dict[int, list[HeadCoefficient]]:
        out: dict[int, list[HeadCoefficient]] = {}
        for h in sorted(self.heads, key=lambda x: (x.layer, x.head)):
            out.setdefault(h.layer, []).append(h)
        return out

    def to_json(self) -> str:
        """Version 1 (the layout head-only files always had) or, with other edit kinds, version 2: the same
        keys plus `o_proj_channels` and `qk_channels`, both always present; with attention temperatures,
        version 3: those keys plus `q_temperatures`."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "model": _fingerprint_dict(self.model),
            "heads": [asdict(h) for h in self.heads],
        }
        if self.version >= 2:
            doc["o_proj_channels"] = [{"layer": c.layer, "scales": list(c.scales)} for c in self.o_proj_channels]
            doc["qk_channels"] = [asdict(q) for q in self.qk_channels]
        if self.version >= 3:
            doc["q_temperatures"] = [asdict(t) for t in self.q_temperatures]
        doc["calibration"] = self.calibration
        doc["metrics"] = self.metrics
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
        """A coefficients file, or a shipped one by name (see `coefficients_path`)."""
        path = coefficients_path(path)
        return cls.from_json(read_text(path, "coefficients file"), source=str(path))

    @classmethod
    def identity(cls, model: ModelFingerprint, heads: Iterable[tuple[int, int]]) -> "Coefficients":
        return cls(model, [HeadCoefficient(l, h, 1.0) for l, h in heads])


def coefficients_path(spec: str | Path) -> Path:
    """A coefficients file's path, or a shipped file's by name (`default`, `gemma3-270m`, `smollm2-135m-seal-c`,
    …: pear_edge.results) when no file of that name exists."""
    shipped = None if Path(spec).exists() else results.shipped_coefficients(str(spec))
    return Path(shipped or spec)


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
_CHANNEL_KEYS = {"layer", "scales"}
_QK_KEYS = {"channel", "scale", "first_layer", "last_layer"}
_TEMPERATURE_KEYS = {"layer", "head", "tau"}
_TOP_KEYS = {"format", "version", "model", "heads", "calibration", "metrics"}
_V2_KEYS = {"o_proj_channels", "qk_channels"}  # required from version 2
_V3_KEYS = {"q_temperatures"}                  # required from version 3


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


def _bounded_scale(value: Any, where: str, bound: float) -> float:
    x = _number(value, where)
    if abs(x) > bound:
        raise PearError(f"{where} is {x:g}, beyond ±{bound:g}; if this is intended, set PEAR_EDGE_MAX_COEFFICIENT")
    return x


def _parse_channels(c: Any, where: str, bound: float) -> ChannelScales:
    c = _object(c, where)
    _no_unknown_keys(c, _CHANNEL_KEYS, where)
    layer = _integer(_required(c, "layer", where), f"{where}.layer", 0, MAX_DIMENSION)
    items = _list(_required(c, "scales", where), f"{where}.scales")
    if len(items) > MAX_DIMENSION:
        raise PearError(f"{where}.scales has {len(items)} values; at most {MAX_DIMENSION}")
    scales = tuple(_bounded_scale(x, f"{where}.scales[{i}]", bound) for i, x in enumerate(items))
    return ChannelScales(layer, scales)


def _parse_qk(q: Any, where: str, bound: float) -> QKChannelScale:
    q = _object(q, where)
    _no_unknown_keys(q, _QK_KEYS, where)
    channel = _integer(_required(q, "channel", where), f"{where}.channel", 0, MAX_DIMENSION)
    scale = _bounded_scale(_required(q, "scale", where), f"{where}.scale", bound)
    first = _integer(_required(q, "first_layer", where), f"{where}.first_layer", 0, MAX_DIMENSION)
    last = _integer(_required(q, "last_layer", where), f"{where}.last_layer", 0, MAX_DIMENSION)
    return QKChannelScale(channel, scale, first, last)


def _parse_temperature(t: Any, where: str) -> QTemperature:
    t = _object(t, where)
    _no_unknown_keys(t, _TEMPERATURE_KEYS, where)
    layer = _integer(_required(t, "layer", where), f"{where}.layer", 0, MAX_DIMENSION)
    head = _integer(_required(t, "head", where), f"{where}.head", 0, MAX_DIMENSION)
    return QTemperature(layer, head, _number(_required(t, "tau", where), f"{where}.tau"))  # 0 < tau: validate()


def _check_version(doc: dict, source: str) -> int:
    version = _required(doc, "version", source)
    if isinstance(version, int) and not isinstance(version, bool) and version in VERSIONS:
        return version
    if isinstance(version, int) and not isinstance(version, bool):
        raise PearError(f"{source}: coefficients format version {version} is not supported "
                        f"(this pear-edge reads versions {', '.join(map(str, VERSIONS))})")
    raise PearError(f"{source}: field 'version' must be the integer {' or '.join(map(str, VERSIONS))}, not "
                    f"{_type(version)} {json.dumps(version)[:20]}")


def parse_document(doc: dict, source: str) -> Coefficients:
    """Check a parsed coefficients document field by field: format, version, the model fingerprint, lists
    of distinct edits inside the model with finite, bounded values (version 1: a non-empty list of heads;
    version 2: also `o_proj_channels` and `qk_channels`; version 3: also `q_temperatures`, each above 0 and at
    most MAX_TEMPERATURE; at least one edit in all), and calibration/metrics objects. Raises PearError naming the
    first problem."""
    if doc.get("format") != FORMAT:
        raise PearError(f"{source}: not a pear-edge coefficients file (missing format={FORMAT!r})")
    version = _check_version(doc, source)
    _no_unknown_keys(doc, _TOP_KEYS | (_V2_KEYS if version >= 2 else set()) | (_V3_KEYS if version >= 3 else set()),
                     source)
    model = parse_fingerprint(_required(doc, "model", source), f"{source}: model")
    heads = _list(_required(doc, "heads", source), f"{source}: heads")
    bound = max_coefficient()
    parsed = [_parse_head(h, f"{source}: heads[{i}]", bound) for i, h in enumerate(heads)]  # ranges: validate()
    channels, qk = [], []
    if version >= 2:
        items = {key: _list(_required(doc, key, source), f"{source}: {key}") for key in sorted(_V2_KEYS)}
        channels = [_parse_channels(c, f"{source}: o_proj_channels[{i}]", bound)
                    for i, c in enumerate(items["o_proj_channels"])]
        qk = [_parse_qk(q, f"{source}: qk_channels[{i}]", bound) for i, q in enumerate(items["qk_channels"])]
    temperatures = []
    if version >= 3:
        items = _list(_required(doc, "q_temperatures", source), f"{source}: q_temperatures")
        temperatures = [_parse_temperature(t, f"{source}: q_temperatures[{i}]") for i, t in enumerate(items)]
    if not (parsed or channels or qk or temperatures):
        what = {1: "the heads list is empty", 2: "heads, o_proj_channels and qk_channels are all empty"}.get(
            version, "heads, o_proj_channels, qk_channels and q_temperatures are all empty")
        raise PearError(f"{source}: {what}; there is nothing to apply")
    calibration = _object(doc.get("calibration", {}), f"{source}: calibration")
    metrics = _object(doc.get("metrics", {}), f"{source}: metrics")
    try:
        return Coefficients(model, parsed, calibration, metrics, channels, qk, temperatures)
    except PearError as exc:
        raise PearError(f"{source}: {exc}") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")
