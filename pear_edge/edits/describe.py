"""Coefficients and their calibration metrics as text: what `info`, `info FILE.gguf` and `calibrate` print."""
from __future__ import annotations

import math

from pear_edge import results
from pear_edge.data.prompts import recorded_format
from pear_edge.data.templates import recorded_template


def template_note(record: dict) -> str:
    """'template litm-short' or 'template family generic (2 excluded)' (calibration.template)."""
    if "family" not in record:
        return f"template {record['name']}"
    excluded = record.get("excluded")
    held = f" ({len(excluded)} excluded)" if isinstance(excluded, list) and excluded else ""
    return f"template family {record['name']}{held}"


ONE_TEMPLATE = "one template"  # the template note's key for coefficients calibrated on a single template


def template_measured(calibration) -> str | None:
    """What was measured of the template or family the coefficients were calibrated on (measured.json's
    `template` notes: a family by name, any single template as ONE_TEMPLATE), or None."""
    record = recorded_template(calibration)
    if record is None:
        return None
    return results.note("template", record["name"] if "family" in record else ONE_TEMPLATE)


def describe_coefficients(coeffs) -> str:
    """Coefficients (already validated by the strict reader) as text."""
    m = coeffs.model
    recipe = coeffs.calibration.get("recipe") if isinstance(coeffs.calibration, dict) else None
    validated = coeffs.calibration.get("validated") if isinstance(coeffs.calibration, dict) else None
    notes = ([f"recipe {recipe}"] if isinstance(recipe, str) else []) + [
        f"calibrated on {fmt} prompts" for fmt in [recorded_format(coeffs.calibration)] if fmt] + [
        template_note(t) for t in [recorded_template(coeffs.calibration)] if t]
    lines = [f"PEAR coefficients v{coeffs.version} for {m.name or m.model_type} "
             f"({m.model_type}, {m.num_layers} layers x {m.num_heads} heads x {m.head_dim})",
             f"weights sha256 {m.weights_sha256[:16]}…",
             f"edits: {coeffs.describe_edits()}" + (f" ({', '.join(notes)})" if notes else "")]
    if validated is False:
        lines.append("UNVALIDATED: no established gain for this model with these settings")
    measured = results.model_entry(m.weights_sha256)
    if measured:
        lines.append(f"measured on this model: {results.note('model', measured['name'])}")
    for h in coeffs.heads:
        score = "" if h.score is None else f"  score {h.score:+.4f}"
        lines.append(f"  L{h.layer:>2}H{h.head:<2} coefficient {h.coefficient:.4f}{score}")
    for c in coeffs.o_proj_channels:
        lines.append(f"  L{c.layer:>2} o_proj channel scales {min(c.scales):.4f} .. {max(c.scales):.4f}, "
                     f"{sum(x != 1.0 for x in c.scales)} of {len(c.scales)} != 1")
    for q in coeffs.qk_channels:
        lines.append(f"  q/k input channel {q.channel} x {q.scale:g} on layers {q.first_layer}..{q.last_layer}")
    for t in sorted(coeffs.q_temperatures, key=lambda t: (t.layer, t.head)):
        lines.append(f"  L{t.layer:>2}H{t.head:<2} attention temperature {t.tau:.4f}")
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
