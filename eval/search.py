"""Shortlist calibration variants fast: train each in torch and score it by batched greedy decoding on
the validation sets, paired against the unpatched model (GPU when there is one).

`pear-edge sweep` scores every variant in llama.cpp one prompt at a time (~3 s per 10-document prompt
on 2 CPU cores); this decodes whole batches, so a GPU tries dozens of settings in minutes. It reads
validation data only and writes the sweep's report format; the claims people rely on still come from
llama.cpp on the test split (`pear-edge sweep`, `pear-edge eval`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pear_edge.calibrate import detect_heads, train_from_scores
from pear_edge.heads import scale_heads

from .backends import TorchBackend
from .harness import EvalResults, evaluate
from .sweep import _row, detection_key, settings_from, summary_line, write_sweep_report


def score(loaded, sets: dict[str, list], batch: int = 64) -> dict[str, EvalResults]:
    """Every validation task in torch (QA prompts in greedy batches), as EvalResults for `paired_compare`."""
    backend = TorchBackend(loaded)
    return {task: evaluate(backend, examples, task, progress=False, batch=batch) for task, examples in sets.items()}


def run_search(loaded, variants: dict[str, dict[str, Any]], outdir: Path, sets: dict[str, list], seed: int = 0,
               progress: bool = True) -> list[dict]:
    """Calibrate and score each variant on `loaded` (already on its device); rows as in the sweep."""
    outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = score(loaded, sets)
    print(f"base scored in {time.perf_counter() - start:.1f}s: "
          + ", ".join(f"{t} {r.score:.4g}" for t, r in base.items()), flush=True)
    detections: dict[str, Any] = {}
    rows = []
    for name, overrides in tqdm(variants.items(), desc="search", disable=not progress):
        settings = settings_from(overrides, seed)
        start = time.perf_counter()
        key = detection_key(settings)
        if key not in detections:
            detections[key] = detect_heads(loaded, settings, progress=False)
        coeffs = train_from_scores(loaded, detections[key], settings, progress=False)
        seconds = time.perf_counter() - start
        with scale_heads(loaded.adapter, coeffs.as_dict()):
            pear = score(loaded, sets)
        row = _row(name, overrides, coeffs, base, pear, seconds)
        rows.append(row)
        coeffs.save(outdir / f"{name}.coeffs.json")
        write_sweep_report(outdir, rows)  # after every variant: an interrupted search keeps what it found
        print(summary_line(row), f"({seconds:.0f}s)", flush=True)
    return rows
