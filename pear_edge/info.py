"""`pear-edge info`: a human summary of any file pear-edge reads or writes."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import PearError


def describe_coefficients(doc: dict) -> str:
    m = doc["model"]
    lines = [f"PEAR coefficients v{doc['version']} for {m.get('name') or m['model_type']} "
             f"({m['model_type']}, {m['num_layers']} layers x {m['num_heads']} heads x {m['head_dim']})",
             f"weights sha256 {m.get('weights_sha256', '')[:16]}…"]
    for h in doc["heads"]:
        score = "" if h.get("score") is None else f"  score {h['score']:+.4f}"
        lines.append(f"  L{h['layer']:>2}H{h['head']:<2} coefficient {h['coefficient']:.4f}{score}")
    summary = proxy_summary(doc.get("metrics", {}))
    if summary:
        lines.append(summary)
    return "\n".join(lines)


def proxy_summary(metrics: dict) -> str:
    """'held-out copy proxy: copy_loss 4.12 -> 3.80, copy_accuracy 31.0% -> 35.2%' (empty if absent)."""
    proxy = metrics.get("held_out_proxy")
    if not proxy:
        return ""
    before, after = proxy["before"], proxy["after"]
    parts = [f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before if k in after]
    return f"held-out {proxy.get('proxy', 'copy')} proxy: " + ", ".join(parts)


def describe_head_scores(doc: dict) -> str:
    s = doc.get("settings", {})
    lines = [f"head scores ({s.get('method')}, lengths {s.get('lengths')}, positions {s.get('positions')}) "
             f"for {doc['model'].get('name') or doc['model']['model_type']}"]
    lines += [f"  L{r['layer']:>2}H{r['head']:<2} {r['score']:+.4f}" for r in doc["ranking"][:10]]
    return "\n".join(lines)


def describe(path: Path) -> str:
    if not path.exists():
        raise PearError(f"{path} not found")
    if path.is_dir():
        from .fold import COEFFICIENTS_FILENAME

        if not (path / "config.json").is_file():
            raise PearError(f"{path} is not a model folder (no config.json)")
        config = json.loads((path / "config.json").read_text())
        text = f"Hugging Face model folder: {config.get('model_type')} ({', '.join(config.get('architectures', []))})"
        if (path / "model.onnx").is_file():
            from .converters.onnx_graph import describe_export

            text = describe_export(path)
        coeffs = path / COEFFICIENTS_FILENAME
        if coeffs.is_file():
            text += "\nPEAR-patched with:\n" + describe_coefficients(json.loads(coeffs.read_text()))
        else:
            text += "\nnot PEAR-patched"
        return text
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PearError(f"{path}: invalid JSON ({exc})") from None
        kind = doc.get("format") if isinstance(doc, dict) else None
        if kind == "pear-edge/coefficients":
            return describe_coefficients(doc)
        if kind == "pear-edge/head-scores":
            return describe_head_scores(doc)
        raise PearError(f"{path}: not a pear-edge JSON file")
    if path.suffix.lower() == ".gguf":
        from .converters.gguf_layout import describe_gguf

        return describe_gguf(path, describe_coefficients)
    raise PearError(f"{path}: unknown file type (expected .json, a model folder, or .gguf)")
