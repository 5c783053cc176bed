"""`pear-edge info`: a human summary of any file pear-edge reads or writes, read with the same strict
readers the other commands use (an invalid file is reported as invalid, exit 2)."""
from __future__ import annotations

import math
from pathlib import Path

from .errors import PearError


def describe_coefficients(coeffs) -> str:
    """Coefficients (already validated by the strict reader) as text."""
    from .prompts import recorded_format

    m = coeffs.model
    recipe = coeffs.calibration.get("recipe") if isinstance(coeffs.calibration, dict) else None
    validated = coeffs.calibration.get("validated") if isinstance(coeffs.calibration, dict) else None
    notes = ([f"recipe {recipe}"] if isinstance(recipe, str) else []) + [
        f"calibrated on {fmt} prompts" for fmt in [recorded_format(coeffs.calibration)] if fmt]
    lines = [f"PEAR coefficients v{coeffs.version} for {m.name or m.model_type} "
             f"({m.model_type}, {m.num_layers} layers x {m.num_heads} heads x {m.head_dim})",
             f"weights sha256 {m.weights_sha256[:16]}…",
             f"edits: {coeffs.describe_edits()}" + (f" ({', '.join(notes)})" if notes else "")]
    if validated is False:
        lines.append("UNVALIDATED: no established gain for this model with these settings")
    for h in coeffs.heads:
        score = "" if h.score is None else f"  score {h.score:+.4f}"
        lines.append(f"  L{h.layer:>2}H{h.head:<2} coefficient {h.coefficient:.4f}{score}")
    for c in coeffs.o_proj_channels:
        lines.append(f"  L{c.layer:>2} o_proj channel scales {min(c.scales):.4f} .. {max(c.scales):.4f}, "
                     f"{sum(x != 1.0 for x in c.scales)} of {len(c.scales)} != 1")
    for q in coeffs.qk_channels:
        lines.append(f"  q/k input channel {q.channel} x {q.scale:g} on layers {q.first_layer}..{q.last_layer}")
    summary = proxy_summary(coeffs.metrics)
    if summary:
        lines.append(summary)
    return "\n".join(lines)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def proxy_summary(metrics: dict) -> str:
    """'held-out copy proxy: copy_loss 4.12 -> 3.80, copy_accuracy 31.0% -> 35.2%' (empty if absent or
    not in the expected shape: metrics are free-form)."""
    proxy = metrics.get("held_out_proxy") if isinstance(metrics, dict) else None
    if not isinstance(proxy, dict) or not isinstance(proxy.get("before"), dict) or not isinstance(proxy.get("after"), dict):
        return ""
    before, after = proxy["before"], proxy["after"]
    parts = [f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before
             if k in after and _is_number(before[k]) and _is_number(after[k])]
    return f"held-out {proxy.get('proxy', 'copy')} proxy: " + ", ".join(parts) if parts else ""


def describe_head_scores(scores) -> str:
    s = scores.settings
    lines = [f"head scores ({s.get('method')}, lengths {s.get('lengths')}, positions {s.get('positions')}) "
             f"for {scores.model.name or scores.model.model_type}"]
    lines += [f"  L{l:>2}H{h:<2} {v:+.4f}" for l, h, v in scores.ranking()[:10]]
    return "\n".join(lines)


def describe_json(path: Path) -> str:
    from .coefficients import FORMAT, Coefficients, parse_json_object
    from .inputs import read_text

    text = read_text(path, "JSON file")
    kind = parse_json_object(text, str(path), "pear-edge").get("format")
    if kind == FORMAT:
        return describe_coefficients(Coefficients.from_json(text, source=str(path)))
    if kind == "pear-edge/head-scores":
        from .detect import HeadScores

        return describe_head_scores(HeadScores.load(path))
    raise PearError(f"{path}: not a pear-edge JSON file (no known 'format' field)")


def describe_folder(path: Path) -> str:
    from .coefficients import Coefficients, parse_json_object
    from .fold import COEFFICIENTS_FILENAME
    from .inputs import read_text
    from .registry import caveat_note

    if not (path / "config.json").is_file():
        raise PearError(f"{path} is not a model folder (no config.json)")
    config = parse_json_object(read_text(path / "config.json", "model config"), str(path / "config.json"), "config")
    architectures = config.get("architectures") or []
    names = ", ".join(map(str, architectures)) if isinstance(architectures, list) else str(architectures)
    text = f"Hugging Face model folder: {config.get('model_type')} ({names})"
    if (path / "model.onnx").is_file():
        from .converters.onnx_graph import describe_export

        text = describe_export(path)
    text += "".join("\n" + note for note in filter(None, [caveat_note(str(config.get("model_type")))]))
    coeffs = path / COEFFICIENTS_FILENAME
    if coeffs.exists():
        return text + "\nPEAR-patched with:\n" + describe_coefficients(Coefficients.load(coeffs))
    return text + "\nnot PEAR-patched"


def describe(path: Path) -> str:
    if not path.exists():
        raise PearError(f"{path} not found")
    if path.is_dir():
        return describe_folder(path)
    if path.suffix.lower() == ".json":
        return describe_json(path)
    if path.suffix.lower() == ".gguf":
        from .converters.gguf_layout import describe_gguf

        return describe_gguf(path)
    raise PearError(f"{path}: unknown file type (expected .json, a model folder, or .gguf)")
