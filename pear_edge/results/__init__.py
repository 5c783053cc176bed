"""What was measured, as package data: `measured.json` (each claim with its n, CI, p, position gap and the
results file that holds it; the notes `calibrate` and `info` print, built from those claims) and the shipped
coefficients (`coefficients/*.coeffs.json`, usable after `pip install` by name: `--coefficients default`).

Nothing here imports the rest of the package: every layer may read it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MEASURED_FILE = HERE / "measured.json"
COEFFICIENTS_DIR = HERE / "coefficients"
SUFFIX = ".coeffs.json"
# Short names a user types for the shipped files: the model spec's default coefficients.
ALIASES = {"default": "smollm2-135m", "gemma3-270m": "gemma3-270m"}


def shipped_names() -> list[str]:
    """Every name `--coefficients` accepts for a shipped file (aliases first, then the file stems)."""
    stems = sorted(p.name[: -len(SUFFIX)] for p in COEFFICIENTS_DIR.glob("*" + SUFFIX))
    return list(ALIASES) + [s for s in stems if s not in ALIASES]


def shipped_coefficients(name: str) -> Path | None:
    """The shipped coefficients file called `name` (an alias such as "default" or a file stem such as
    "smollm2-135m-seal-c"), or None when no shipped file has that name."""
    path = COEFFICIENTS_DIR / (ALIASES.get(name, name) + SUFFIX)
    return path if "/" not in name and name and path.is_file() else None


@lru_cache(maxsize=1)
def measured() -> dict[str, Any]:
    """measured.json: {"claims": {id: claim}, "notes": {kind: {name: note}}}."""
    return json.loads(MEASURED_FILE.read_text(encoding="utf-8"))


def _signed(x: float) -> str:
    return f"{x:+.1f}".replace("-", "\u2212")


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}" if p < 0.01 else f"p={p:.2f}"


def claim_text(claim_id: str) -> str:
    """One claim in words: 'TASK, BACKEND: BASE -> PEAR %: DELTA pt, 95 % CI [LOW, HIGH], P, n=N, position gap
    BASE_GAP -> PEAR_GAP pt', every number read from measured.json."""
    c = measured()["claims"][claim_id]
    if c.get("metric") == "perplexity" and {"base_value", "pear_value", "delta_pct"} <= set(c):
        return (f"{c['task']}, {c['backend']}: {c['base_value']:.2f} -> {c['pear_value']:.2f} "
                f"({_signed(c['delta_pct'])} %, {_p(c['p'])}, n={c['n']})")
    parts = [f"{_signed(c['delta_pt'])} pt"]
    if c.get("ci_pt"):
        parts.append(f"95 % CI [{_signed(c['ci_pt'][0])}, {_signed(c['ci_pt'][1])}]")
    if c.get("p") is not None:
        parts.append(_p(c["p"]))
    parts.append(f"n={c['n']}")
    if c.get("gap_pt"):
        parts.append(f"position gap {c['gap_pt'][0]:.1f} -> {c['gap_pt'][1]:.1f} pt")
    levels = f"{c['base_pct']:.1f} -> {c['pear_pct']:.1f} %: " if c.get("base_pct") is not None else ""
    return f"{c['task']}, {c['backend']}: {levels}{', '.join(parts)}"


def note(kind: str, name: str) -> str | None:
    """The note measured.json keeps for a proxy, budget, gold placement, recipe or model (`kind`), with
    its claims in words, or None when nothing was measured for it."""
    entry = measured().get("notes", {}).get(kind, {}).get(name)
    if entry is None:
        return None
    claims = "; ".join(claim_text(c) for c in entry.get("claims", ()))
    where = f" ({entry['doc']})" if entry.get("doc") else " (docs/results.md)"
    return entry["text"] + (f": {claims}" if claims else "") + where


def model_entry(weights_sha256: str) -> dict[str, Any] | None:
    """The measured model whose fp32 weights have this sha256 ({"profile", "validated", "text", ...})."""
    for name, entry in measured().get("notes", {}).get("model", {}).items():
        if entry.get("weights_sha256") == weights_sha256:
            return {"name": name, **entry}
    return None
