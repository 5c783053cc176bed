"""Reports people compare: results JSON, a Markdown table and PNG plots, each written atomically."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from pear_edge.base.atomic import report_folder, write_text_atomic

from pear_edge.eval.harness import Comparison, EvalResults, PairedResult
from pear_edge.eval.metrics import bootstrap_ci

REPORT_FORMAT = "pear-edge/eval"  # results.json's format field


@dataclass
class Run:
    """Base and PEAR results for one backend/quantization, with their paired comparison."""
    label: str
    base: EvalResults
    pear: EvalResults
    comparison: Comparison

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "comparison": self.comparison.as_dict(), "base": self.base.as_dict(),
                "pear": self.pear.as_dict()}


def gap_change(base: float, pear: float) -> str:
    """How the position gap moved, compared on the printed 0.1-pt grid (15.0 -> 15.0 is "unchanged")."""
    b, p = round(100 * base, 1), round(100 * pear, 1)
    return "narrower" if p < b else "unchanged" if p == b else "wider"


@dataclass(frozen=True)
class GainKept:
    """One run's PEAR gain set against the reference run's, on the same examples (how much of the
    fp32 gain a quantized format keeps). `share` = Δ / Δ_reference (None unless the reference gained);
    `difference` = Δ − Δ_reference with a paired bootstrap CI over the examples (both runs' base and PEAR
    answers to one example move together)."""
    label: str
    reference: str
    delta: float
    share: float | None
    difference: float
    ci_low: float
    ci_high: float


def reference_run(runs: Sequence[Run]) -> Run:
    """The run the others are measured against: the first torch run (fp32, hooked or folded), else the first."""
    return next((r for r in runs if r.label.startswith("torch:")), runs[0])


def gains_kept(runs: Sequence[Run], resamples: int = 10_000, seed: int = 0) -> list[GainKept]:
    """Each accuracy run's gain against the reference run's ([] for one run, perplexity, or runs over
    different examples)."""
    runs = [r for r in runs if r.comparison.overall.metric == "accuracy"]
    if len(runs) < 2:
        return []
    ref = reference_run(runs)
    ids = [i.id for i in ref.base.items]
    if any([i.id for i in r.base.items] != ids for r in runs):
        return []
    def gain(run: Run) -> list[float]:  # per example: +1 PEAR alone right, -1 base alone right, else 0
        return [float(p.correct) - float(b.correct) for b, p in zip(run.base.items, run.pear.items)]

    ref_gain, ref_delta = gain(ref), ref.comparison.overall.delta
    out = []
    for run in runs:
        delta = run.comparison.overall.delta
        low, high = bootstrap_ci([g - r for g, r in zip(gain(run), ref_gain)], resamples, seed)
        share = delta / ref_delta if ref_delta > 0 else None
        out.append(GainKept(run.label, ref.label, delta, share, delta - ref_delta, low, high))
    return out


def gains_kept_markdown(runs: Sequence[Run]) -> list[str]:
    kept = gains_kept(runs)
    if not kept:
        return []
    lines = [f"### Gain kept in each run (reference: {kept[0].reference})", "",
             "| run | PEAR Δ | share of the reference's Δ | Δ − reference Δ [95% CI] |", "|---|---|---|---|"]
    for k in kept:
        share = "—" if k.share is None else f"{k.share:.0%}"
        lines.append(f"| {k.label} | {100 * k.delta:+.1f} pt | {share} | {100 * k.difference:+.1f} pt "
                     f"[{100 * k.ci_low:+.1f}, {100 * k.ci_high:+.1f}] |")
    return lines + ["", "The share is a ratio of two noisy gains; the CI says whether a format's gain differs "
                        "from the reference's on these examples.", ""]


def _name(backend: dict[str, Any]) -> str:
    """The model file's name, not its absolute path: reports get committed and shared."""
    return Path(str(backend.get("source") or backend.get("name") or "?")).name


def _fmt(x: float, metric: str) -> str:
    return f"{x:.2f}" if metric == "perplexity" else f"{x:.1%}"


def _delta(x: float, metric: str) -> str:
    return f"{x:+.2f}" if metric == "perplexity" else f"{100 * x:+.1f} pt"


def _row(label: str, r: PairedResult) -> str:
    return (f"| {label} | {r.n} | {_fmt(r.base, r.metric)} | {_fmt(r.pear, r.metric)} | {_delta(r.delta, r.metric)} "
            f"| [{_delta(r.ci_low, r.metric)}, {_delta(r.ci_high, r.metric)}] | {r.base_only} / {r.pear_only} "
            f"| {r.p_value:.3g} |")


def markdown(runs: Sequence[Run]) -> str:
    lines = gains_kept_markdown(runs)
    for run in runs:
        metric = run.comparison.overall.metric
        wins = "passages base better / PEAR better" if metric == "perplexity" else "only base / only PEAR right"
        test = "sign test p" if metric == "perplexity" else "McNemar p"
        lines += [f"### {run.label} — {run.comparison.task} ({metric})", "",
                  f"base: `{_name(run.base.backend)}`  ", f"PEAR: `{_name(run.pear.backend)}`", "",
                  f"| gold position | n | base | PEAR | Δ | 95% CI | {wins} | {test} |",
                  "|---|---|---|---|---|---|---|---|",
                  _row("all", run.comparison.overall)]
        lines += [_row(str(pos), r) for pos, r in run.comparison.by_position.items()]
        gap = run.comparison.position_gap()
        if gap:
            lines += ["", f"position gap (best − worst gold position): base {100 * gap[0]:.1f} pt → PEAR "
                          f"{100 * gap[1]:.1f} pt ({gap_change(*gap)})"]
        lines.append("")
    return "\n".join(lines)


def plot_positions(runs: Sequence[Run], path: Path) -> Path | None:
    """Accuracy vs gold position: base dashed, PEAR solid, one colour per backend/quantization."""
    runs = [r for r in runs if r.comparison.by_position]
    if not runs:
        return None
    from pear_edge.base.plots import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    for i, run in enumerate(runs):
        colour = f"C{i}"
        pos = list(run.comparison.by_position)
        ax.plot(pos, [run.comparison.by_position[p].base for p in pos], "--o", color=colour, label=f"{run.label} base")
        ax.plot(pos, [run.comparison.by_position[p].pear for p in pos], "-s", color=colour, label=f"{run.label} PEAR")
    ax.set_xticks(sorted({p for run in runs for p in run.comparison.by_position}))
    ax.set_xlabel("gold position (0 = first)")
    ax.set_ylabel("accuracy (best-subspan EM)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{runs[0].comparison.task}: accuracy by gold position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def write_report(outdir: str | Path, runs: Sequence[Run], extra: dict[str, Any] | None = None) -> list[Path]:
    """results.json + report.md + accuracy_by_position.png (when there are positions)."""
    out = report_folder(outdir)
    kept = [asdict(k) for k in gains_kept(runs)]
    doc = {"format": REPORT_FORMAT, "version": 1, **(extra or {}), "runs": [r.as_dict() for r in runs],
           **({"gain_kept": kept} if kept else {})}
    written = [write_text_atomic(out / "results.json", json.dumps(doc, indent=2, allow_nan=False) + "\n"),
               write_text_atomic(out / "report.md", markdown(runs))]
    plot = plot_positions(runs, out / "accuracy_by_position.png")
    return written + ([plot] if plot else [])
