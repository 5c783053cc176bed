"""Calibration variants: where they are defined, and the one loop that calibrates and scores them.

Variants are JSON files in `eval/lab/variants/` ({name: overrides of CalibrationSettings/TrainSettings}); a
name means one set of settings across all files (a clash is refused). `run_variants` calibrates each
variant and scores it against the unpatched model on validation sets with a pluggable scorer:

- `TorchScorer` (`pear-edge search`): hooked coefficients, QA prompts decoded in greedy batches (GPU if any);
- `LlamaCppScorer` (`pear-edge sweep`): the model's GGUF patched with `patch-gguf`, one prompt at a time.

Base results, detections and every finished variant are cached as JSON in the output folder, so an
interrupted run resumes where it stopped; the report (sweep.json/.md/.png) is rewritten after each variant.
Validation sets never include a test split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

from pear_edge.base.atomic import report_folder, write_text_atomic
from pear_edge.calibration.calibrate import CalibrationSettings, detect_heads, with_overrides
from pear_edge.calibration.calibrate import run_recipe
from pear_edge.calibration.recipes import RECIPES
from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError

from pear_edge.eval.harness import EvalResults, ExampleResult, PassageResult, evaluate, paired_compare
from pear_edge.data.tasks import counterfactual_records, kv_examples, mdqa_examples, parse_kv, pydoc_passages
from pear_edge.data.templates import preset

VARIANTS_DIR = Path(__file__).with_name("variants")
DEFAULT_SET = "sweep-smollm2"


# --------------------------------------------------------------------------- definitions

def variant_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(VARIANTS_DIR.glob("*.json"))}


def _read_variants(path: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PearError(f"cannot read variants file {path}: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise PearError(f"{path}: a variants file is a JSON object {{name: {{setting: value}}}}")
    return doc


def all_variants() -> dict[str, dict[str, Any]]:
    """Every bundled variant by name; the same name in two files must mean the same settings."""
    out: dict[str, dict[str, Any]] = {}
    for path in variant_files().values():
        for name, overrides in _read_variants(path).items():
            if name in out and out[name] != overrides:
                raise PearError(f"variant {name!r} has different settings in two files of {VARIANTS_DIR}")
            out[name] = overrides
    return out


def load_variants(source: str | None = None, only: str | None = None) -> dict[str, dict[str, Any]]:
    """`source`: a bundled set name (a file stem in eval/lab/variants/) or a JSON file; `only`: comma-separated names."""
    source = source or DEFAULT_SET
    files = variant_files()
    variants = _read_variants(files[source] if source in files else Path(source))
    bundled = all_variants()
    clash = [n for n, v in variants.items() if n in bundled and bundled[n] != v]
    if clash:
        raise PearError(f"variant names {clash} mean other settings in {VARIANTS_DIR}; rename them")
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        missing = [n for n in names if n not in variants]
        if missing:
            raise PearError(f"unknown variants {missing}; known: {', '.join(variants)}")
        variants = {n: variants[n] for n in names}
    return variants


def settings_from(overrides: dict[str, Any], seed: int = 0) -> CalibrationSettings:
    """The plain field defaults of CalibrationSettings (not the chosen recipe, so a variant means the same
    whatever the default becomes) with `overrides`."""
    return with_overrides(CalibrationSettings(), overrides, seed)


def detection_key(settings: CalibrationSettings) -> str:
    """What detection depends on: variants that differ only in training share one detection run."""
    key = {k: v for k, v in dataclasses.asdict(settings).items()
           if k in ("method", "lengths", "positions", "detect_batch", "gradient_batches", "seed")}
    if settings.method == "gradient":
        key |= {"proxy": settings.train.proxy, "batch": settings.train.batch, "n": settings.train.n,
                "pool": settings.train.pool, "corpus": settings.train.corpus}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- validation data

def validation_sets(records: int, num_docs: int, positions: tuple[int, ...], kv_records: int, kv_pairs: int,
                    passages: int, seed: int = 0, real: str | None = None, real_records: int = 0) -> dict[str, list]:
    """Counterfactual MDQA (validation split), KV, perplexity; with `real` (an NQ-open oracle JSONL) also
    real questions from its *validation* half, random distractors, both instruction wordings."""
    from pear_edge.data.kv import generate_kv

    mdqa = counterfactual_records(records, "validation", num_docs, seed)
    kv = [parse_kv(r) for r in generate_kv(kv_records, kv_pairs, seed=seed + 1)]
    kv_positions = tuple(sorted({0, kv_pairs // 2, kv_pairs - 1}))
    sets = {"counterfactual": mdqa_examples(mdqa, num_docs, positions, seed),
            "kv": kv_examples(kv, kv_positions), "perplexity": pydoc_passages(passages, seed=seed)}
    if real and real_records:
        from pear_edge.eval.realqa import real_examples

        for task, template in (("nq", "litm-short"), ("nq-plain", "litm-plain")):
            sets[task] = real_examples(real, "validation", real_records, num_docs, positions, "random",
                                       preset(template), seed)
    return sets


# --------------------------------------------------------------------------- scorers

class Scorer(Protocol):
    label: str

    def base(self, sets: dict[str, list]) -> dict[str, EvalResults]: ...

    def pear(self, coeffs: Coefficients, sets: dict[str, list], folder: Path) -> dict[str, EvalResults]: ...


class TorchScorer:
    """Hooked coefficients on the loaded model; QA prompts in greedy batches."""

    def __init__(self, loaded, batch: int = 64):
        from pear_edge.eval.backends import TorchBackend

        self.loaded, self.batch, self.backend = loaded, batch, TorchBackend(loaded)
        self.label = f"torch ({loaded.model.device})"

    def base(self, sets):
        return {task: evaluate(self.backend, ex, task, progress=False, batch=self.batch) for task, ex in sets.items()}

    def pear(self, coeffs, sets, folder):
        from pear_edge.edits.heads import apply_coefficients

        with apply_coefficients(self.loaded.adapter, coeffs):
            return self.base(sets)


class LlamaCppScorer:
    """The model's GGUF, patched in place for each variant, in llama.cpp one prompt at a time."""

    label = "llama.cpp"

    def __init__(self, gguf: Path, threads: int | None = None, progress: bool = True):
        self.gguf, self.threads, self.progress = gguf, threads, progress

    def _evaluate(self, gguf: Path, sets):
        from pear_edge.eval.backends import LlamaCppBackend

        backend = LlamaCppBackend(gguf, n_threads=self.threads)
        try:
            return {task: evaluate(backend, ex, task, progress=self.progress) for task, ex in sets.items()}
        finally:
            backend.close()

    def base(self, sets):
        return self._evaluate(self.gguf, sets)

    def pear(self, coeffs, sets, folder):
        from pear_edge.converters.gguf_patch import patch_gguf

        patched = folder / f"{self.gguf.stem}-pear.gguf"
        patch_gguf(self.gguf, coeffs, patched, progress=False)
        try:
            return self._evaluate(patched, sets)
        finally:
            patched.unlink()  # 100 MB each; coeffs.json reproduces it with `pear-edge patch-gguf`


# --------------------------------------------------------------------------- the loop

def results_from_dict(doc: dict) -> EvalResults:
    """Inverse of EvalResults.as_dict (for the JSON caches)."""
    items = [PassageResult(**i) if "nll" in i else ExampleResult(**{**i, "answers": tuple(i["answers"])})
             for i in doc["items"]]
    return EvalResults(doc["task"], doc["backend"], items, doc.get("settings", {}))


def _cached(path: Path, compute) -> dict[str, EvalResults]:
    if path.is_file():
        return {task: results_from_dict(d) for task, d in json.loads(path.read_text()).items()}
    results = compute()
    write_text_atomic(path, json.dumps({t: r.as_dict() for t, r in results.items()}, allow_nan=False))
    return results


def _detection(loaded, settings: CalibrationSettings, folder: Path, progress: bool, proxy=None):
    from pear_edge.calibration.detect import HeadScores

    path = folder / (detection_key(settings) + ".json")
    if path.is_file():
        return HeadScores.load(path)
    scores = detect_heads(loaded, settings, progress, proxy=proxy)
    scores.save(path, top_k=settings.top_k)
    return scores


def variant_row(name: str, overrides: dict, coeffs: Coefficients, base: dict, pear: dict, seconds: float) -> dict:
    row: dict[str, Any] = {"variant": name, "settings": overrides, "calibrate_seconds": round(seconds, 1),
                           "coefficients": {f"L{h.layer}H{h.head}": round(h.coefficient, 3) for h in coeffs.heads},
                           "edits": coeffs.describe_edits(),
                           "held_out_proxy": coeffs.metrics.get("held_out_proxy")}
    for task in base:
        cmp = paired_compare(base[task], pear[task])
        row[task] = {**dataclasses.asdict(cmp.overall),
                     "by_position": {str(k): dataclasses.asdict(v) for k, v in cmp.by_position.items()},
                     "position_gap": cmp.as_dict()["position_gap"]}
    return row


def run_variants(loaded, variants: dict[str, dict], outdir: Path, sets: dict[str, list], scorer: Scorer,
                 seed: int = 0, progress: bool = True) -> list[dict]:
    """Calibrate every variant on `loaded`, score it with `scorer` against the base; resumable."""
    report_folder(outdir)  # new, or one pear-edge wrote earlier (resume); never a folder of the user's
    start = time.perf_counter()
    base = _cached(outdir / "base-results.json", lambda: scorer.base(sets))
    print("base: " + ", ".join(f"{t} {r.score:.4g}" for t, r in base.items())
          + f" ({time.perf_counter() - start:.0f}s)", flush=True)
    rows = []
    for name, overrides in variants.items():
        folder = outdir / name
        row_path = folder / "row.json"
        if row_path.is_file():
            rows.append(json.loads(row_path.read_text()))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        settings = settings_from(overrides, seed)
        start = time.perf_counter()
        cached = None if RECIPES[settings.recipe].positional else (  # detection under a q/k edit: not shared
            lambda lm, s, p, proxy=None: _detection(lm, s, outdir / "detections", p, proxy))
        coeffs = run_recipe(loaded, settings, progress, detect=cached)
        seconds = time.perf_counter() - start
        coeffs.save(folder / "coeffs.json")
        row = variant_row(name, overrides, coeffs, base, scorer.pear(coeffs, sets, folder), seconds)
        write_text_atomic(row_path, json.dumps(row, indent=2))
        rows.append(row)
        write_variants_report(outdir, rows, scorer.label)  # after every variant: an interruption keeps what it found
        print(summary_line(row), f"({seconds:.0f}s)", flush=True)
    write_variants_report(outdir, rows, scorer.label)
    return rows


# --------------------------------------------------------------------------- report

QA_TASKS = ("nq", "nq-plain", "counterfactual", "kv")  # accuracy columns, in report order when present


def summary_line(row: dict) -> str:
    parts = [row["variant"]]
    for task in (*QA_TASKS, "perplexity"):
        r = row.get(task)
        if r:
            unit, scale = ("", 1) if task == "perplexity" else (" pt", 100)
            parts.append(f"{task} Δ {scale * r['delta']:+.2f}{unit} [{scale * r['ci_low']:+.2f}, "
                         f"{scale * r['ci_high']:+.2f}] p={r['p_value']:.3g}")
    return " | ".join(parts)


def variants_markdown(rows: list[dict]) -> str:
    tasks = [t for t in QA_TASKS if t in rows[0]]
    head = ("| variant | " + " | ".join(f"{t} base → PEAR (n) | Δ [95% CI], p | gap base → PEAR" for t in tasks)
            + " | perplexity Δ % | calibrate s |\n|---|" + "---|---|---|" * len(tasks) + "---|---|\n")
    lines = []
    for r in rows:
        cells = []
        for t in tasks:
            m, gap = r[t], r[t].get("position_gap")
            cells += [f"{m['base']:.1%} → {m['pear']:.1%} ({m['n']})",
                      f"{100 * m['delta']:+.1f} pt [{100 * m['ci_low']:+.1f}, {100 * m['ci_high']:+.1f}], "
                      f"p={m['p_value']:.3g}",
                      f"{100 * gap['base']:.1f} → {100 * gap['pear']:.1f}" if gap else "–"]
        p = r["perplexity"]
        lines.append(f"| {r['variant']} | " + " | ".join(cells)
                     + f" | {100 * p['delta'] / p['base']:+.2f} % | {r['calibrate_seconds']:.0f} |")
    return head + "\n".join(lines) + "\n"


def plot_variants(rows: list[dict], path: Path, scorer: str) -> Path:
    from pear_edge.base.plots import pyplot, save_png

    plt = pyplot()
    tasks = [t for t in QA_TASKS if t in rows[0]]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.8))
    for offset, task in enumerate(tasks):
        y = [i + 0.15 * offset for i in range(len(rows))]
        d = [100 * r[task]["delta"] for r in rows]
        lo = [100 * (r[task]["delta"] - r[task]["ci_low"]) for r in rows]
        hi = [100 * (r[task]["ci_high"] - r[task]["delta"]) for r in rows]
        ax.errorbar(d, y, xerr=[lo, hi], fmt="o", color=f"C{offset}", label=f"{task} (validation)", capsize=3)
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(rows)), [r["variant"] for r in rows])
    ax.set_xlabel(f"PEAR − base accuracy (points, 95% bootstrap CI), {scorer}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def write_variants_report(outdir: Path, rows: list[dict], scorer: str) -> list[Path]:
    if not rows:
        return []
    return [write_text_atomic(outdir / "sweep.json", json.dumps(rows, indent=2)),
            write_text_atomic(outdir / "sweep.md", variants_markdown(rows)),
            plot_variants(rows, outdir / "sweep.png", scorer)]
