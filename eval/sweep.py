"""Calibration sweep: calibrate variants, patch the model's GGUF with each, and score every variant
against the unpatched GGUF on *validation* data in llama.cpp (paired), plus perplexity on shipped text.

Validation uses the counterfactual generator's validation split (and synthetic KV retrieval); the
test split is kept for the final claim (`pear-edge eval --task counterfactual --split test`).
Each finished variant is saved, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import time
from pathlib import Path
from typing import Any

from pear_edge.atomic import atomic_file, write_text_atomic
from pear_edge.calibrate import CalibrationSettings, detect_heads, train_from_scores
from pear_edge.coefficients import Coefficients
from pear_edge.errors import PearError

from .backends import LlamaCppBackend
from .harness import EvalResults, evaluate, paired_compare
from .tasks import kv_examples, mdqa_examples, parse_kv, parse_mdqa, pydoc_passages

# Variants measured on the default model (README "Making PEAR help"): overrides of CalibrationSettings.
BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    # The default recipe (calibrate.DEFAULTS), chosen by `pear-edge search` (eval/variants/).
    "passage-all-free-p1-g3-40x8": {"method": "gradient", "top_k": 0, "gradient_batches": 2, "proxy": "passage",
                                    "constraint": "none", "pull": 0.1, "guard": 3.0, "steps": 40, "batch": 8,
                                    "lr": 0.02, "pool": 2000},
    "paper-copy-k12-free": {"method": "attribution", "top_k": 12, "constraint": "none", "steps": 60},
    "copy-k8-unit-120": {"method": "attribution", "top_k": 8, "constraint": "unit", "steps": 120},
    "copy-k8-unit-40x10": {"method": "attribution", "top_k": 8, "constraint": "unit", "steps": 40, "batch": 10,
                           "lr": 0.01},
    "mdqa-grad-k16-unit": {"method": "gradient", "proxy": "mdqa", "top_k": 16, "constraint": "unit",
                           "steps": 24, "batch": 4, "lr": 0.02},
    "passage-grad-abs16-free": {"method": "gradient", "proxy": "passage", "top_k": 16, "select": "abs",
                                "constraint": "none", "pull": 0.05, "steps": 24, "batch": 4, "lr": 0.02},
    "passage-grad-k16-unit": {"method": "gradient", "proxy": "passage", "top_k": 16, "constraint": "unit",
                              "steps": 24, "batch": 4, "lr": 0.02},
}


def settings_from(overrides: dict[str, Any], seed: int = 0) -> CalibrationSettings:
    """The plain field defaults of CalibrationSettings (not the chosen recipe, so a variant means the same
    whatever the default becomes) with `overrides`; training keys (steps, lr, ...) go to the train settings."""
    neutral = CalibrationSettings()
    train_fields = {f.name for f in dataclasses.fields(neutral.train)}
    top_fields = {f.name for f in dataclasses.fields(CalibrationSettings)} - {"train"}
    unknown = set(overrides) - train_fields - top_fields
    if unknown:
        raise PearError(f"unknown variant settings {sorted(unknown)}; use fields of CalibrationSettings/TrainSettings")
    train = dataclasses.replace(neutral.train, seed=seed, **{k: v for k, v in overrides.items() if k in train_fields})
    top = {k: (tuple(v) if k == "lengths" else v) for k, v in overrides.items() if k in top_fields}
    settings = dataclasses.replace(neutral, train=train, seed=seed, **top)
    settings.check()
    return settings


def validation_sets(records: int, num_docs: int, positions: tuple[int, ...], kv_records: int, kv_pairs: int,
                    passages: int, seed: int = 0, real: str | None = None, real_records: int = 0) -> dict[str, list]:
    """Counterfactual MDQA (validation split), KV, perplexity; with `real` (an NQ-open oracle JSONL) also
    real questions from its *validation* half, random distractors (`nq`), both instruction wordings."""
    from .counterfactual import generate_counterfactual
    from .kv import generate_kv

    mdqa = [parse_mdqa(r) for r in generate_counterfactual(records, "validation", seed, num_distractors=num_docs - 1)]
    kv = [parse_kv(r) for r in generate_kv(kv_records, kv_pairs, seed=seed + 1)]
    kv_positions = tuple(sorted({0, kv_pairs // 2, kv_pairs - 1}))
    sets = {"counterfactual": mdqa_examples(mdqa, num_docs, positions, seed),
            "kv": kv_examples(kv, kv_positions), "perplexity": pydoc_passages(passages, seed=seed)}
    if real and real_records:
        from .realqa import real_examples

        sets["nq"] = real_examples(real, "validation", real_records, num_docs, positions, "random", "short", seed)
        sets["nq-plain"] = real_examples(real, "validation", real_records, num_docs, positions, "random", "plain", seed)
    return sets


def _evaluate_all(gguf: Path, sets: dict[str, list], threads: int | None, progress: bool) -> dict[str, EvalResults]:
    backend = LlamaCppBackend(gguf, n_threads=threads)
    try:
        return {task: evaluate(backend, examples, task, progress=progress) for task, examples in sets.items()}
    finally:
        backend.close()


def _row(name: str, overrides: dict, coeffs: Coefficients, base: dict, pear: dict, seconds: float) -> dict:
    row: dict[str, Any] = {"variant": name, "settings": overrides, "calibrate_seconds": round(seconds, 1),
                           "coefficients": {f"L{h.layer}H{h.head}": round(h.coefficient, 3) for h in coeffs.heads},
                           "held_out_proxy": coeffs.metrics.get("held_out_proxy")}
    for task in base:
        cmp = paired_compare(base[task], pear[task])
        row[task] = {**dataclasses.asdict(cmp.overall),
                     "by_position": {str(k): dataclasses.asdict(v) for k, v in cmp.by_position.items()}}
    return row


def detection_key(settings: CalibrationSettings) -> str:
    """What detection depends on: variants that differ only in training share one detection run."""
    import hashlib

    key = {k: v for k, v in dataclasses.asdict(settings).items()
           if k in ("method", "lengths", "positions", "detect_batch", "gradient_batches", "seed")}
    if settings.method == "gradient":
        key |= {"proxy": settings.train.proxy, "batch": settings.train.batch, "n": settings.train.n,
                "pool": settings.train.pool, "corpus": settings.train.corpus}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _cached_detection(loaded, settings: CalibrationSettings, folder: Path, progress: bool):
    from pear_edge.detect import HeadScores

    path = folder / (detection_key(settings) + ".json")
    if path.is_file():
        return HeadScores.load(path)
    scores = detect_heads(loaded, settings, progress)
    scores.save(path, top_k=settings.top_k)
    return scores


def run_sweep(model: str, base_gguf: Path, variants: dict[str, dict], outdir: Path, sets: dict[str, list],
              seed: int = 0, threads: int | None = None, progress: bool = True) -> list[dict]:
    from pear_edge.converters.gguf_patch import patch_gguf
    from pear_edge.models import load_model

    outdir.mkdir(parents=True, exist_ok=True)
    base_cache = outdir / "base-results.pkl"
    if base_cache.is_file():
        base = pickle.loads(base_cache.read_bytes())
    else:
        base = _evaluate_all(base_gguf, sets, threads, progress)
        with atomic_file(base_cache) as tmp:
            tmp.write_bytes(pickle.dumps(base))
    loaded = None
    rows = []
    for name, overrides in variants.items():
        folder = outdir / name
        row_path = folder / "row.json"
        if row_path.is_file():
            rows.append(json.loads(row_path.read_text()))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        loaded = loaded or load_model(model)
        settings = settings_from(overrides, seed)
        start = time.perf_counter()
        scores = _cached_detection(loaded, settings, outdir / "detections", progress)
        coeffs = train_from_scores(loaded, scores, settings, progress)
        seconds = time.perf_counter() - start
        coeffs.save(folder / "coeffs.json")
        patched = folder / f"{base_gguf.stem}-pear.gguf"
        patch_gguf(base_gguf, coeffs, patched, progress=False)
        pear = _evaluate_all(patched, sets, threads, progress)
        patched.unlink()  # 100 MB each; coeffs.json reproduces it with `pear-edge patch-gguf`
        row = _row(name, overrides, coeffs, base, pear, seconds)
        write_text_atomic(row_path, json.dumps(row, indent=2))
        rows.append(row)
        print(summary_line(row), flush=True)
    write_sweep_report(outdir, rows)
    return rows


def summary_line(row: dict) -> str:
    parts = [row["variant"]]
    for task in ("counterfactual", "kv", "perplexity"):
        r = row.get(task)
        if r:
            unit = "" if task == "perplexity" else " pt"
            scale = 1 if task == "perplexity" else 100
            parts.append(f"{task} Δ {scale * r['delta']:+.2f}{unit} [{scale * r['ci_low']:+.2f}, "
                         f"{scale * r['ci_high']:+.2f}] p={r['p_value']:.3g}")
    return " | ".join(parts)


def sweep_markdown(rows: list[dict]) -> str:
    head = ("| variant | MDQA base → PEAR (n) | Δ [95% CI] | McNemar p | KV base → PEAR | Δ | perplexity Δ % "
            "| calibrate s |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        m, k, p = r["counterfactual"], r["kv"], r["perplexity"]
        lines.append(
            f"| {r['variant']} | {m['base']:.1%} → {m['pear']:.1%} ({m['n']}) | {100 * m['delta']:+.1f} pt "
            f"[{100 * m['ci_low']:+.1f}, {100 * m['ci_high']:+.1f}] | {m['p_value']:.3g} | {k['base']:.1%} → "
            f"{k['pear']:.1%} ({k['n']}) | {100 * k['delta']:+.1f} pt | {100 * p['delta'] / p['base']:+.2f} % "
            f"| {r['calibrate_seconds']:.0f} |")
    return head + "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.8))
    for offset, (task, color) in enumerate((("counterfactual", "tab:blue"), ("kv", "tab:orange"))):
        y = [i + 0.2 * offset for i in range(len(rows))]
        d = [100 * r[task]["delta"] for r in rows]
        lo = [100 * (r[task]["delta"] - r[task]["ci_low"]) for r in rows]
        hi = [100 * (r[task]["ci_high"] - r[task]["delta"]) for r in rows]
        ax.errorbar(d, y, xerr=[lo, hi], fmt="o", color=color, label=f"{task} (validation)", capsize=3)
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(rows)), names)
    ax.set_xlabel("PEAR − base accuracy (points, 95% bootstrap CI), llama.cpp")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_sweep_report(outdir: Path, rows: list[dict]) -> list[Path]:
    if not rows:
        return []
    return [write_text_atomic(outdir / "sweep.json", json.dumps(rows, indent=2)),
            write_text_atomic(outdir / "sweep.md", sweep_markdown(rows)),
            plot_sweep(rows, outdir / "sweep.png")]
