"""Calibration cost against benefit, from saved eval reports: `pear-edge eval tradeoff` (the trade-off curve).

Each point is one way of calibrating (a budget, a guard, a recipe): its cost (wall seconds, optionally peak
GiB) and the eval reports (`pear-edge eval ... -o DIR`, DIR/results.json) that measured its coefficients.
Reports are grouped into columns by what they measured — task, data, prompt template and the base model
file — so points measured on the same examples share a column and panel. Accuracy reports give the paired Δ in
points with its CI and McNemar p; perplexity reports the relative change in % with its CI, drawn against the
bound.

    pear-edge eval tradeoff -o OUT \\
        --point "full=810:2.62=out/full/results.json#0,out/full/results.json#1" \\
        --point "fast=268:2.3=out/fast/results.json"

writes OUT/tradeoff.md (one row per point, one column per measurement) and OUT/tradeoff.png (one panel per
column: seconds on x, Δ on y with CI bars).
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from pear_edge.base.atomic import report_folder, write_text_atomic
from pear_edge.base.errors import PearError


PANELS_PER_ROW = 4


@dataclass(frozen=True)
class Measure:
    column: str    # what was measured: task, data, base model
    metric: str    # accuracy | perplexity
    n: int
    delta: float   # points (accuracy) or % (perplexity)
    low: float
    high: float
    p: float


@dataclass(frozen=True)
class Point:
    label: str
    seconds: float
    gib: float | None
    measures: tuple[Measure, ...]
    files: tuple[Path, ...]  # the results.json files read (inputs: an output may not lie among them)


def _number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PearError(f"--point {spec!r}: {what} {text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise PearError(f"--point {spec!r}: {what} must be positive and finite (got {text})")
    return value


def report_file(ref: str) -> Path:
    """REPORT[#RUN] -> the results.json it names (REPORT may be the folder holding it)."""
    path = Path(ref.partition("#")[0])
    return path / "results.json" if path.is_dir() else path


def read_measure(ref: str) -> Measure:
    """REPORT[#RUN] (a results.json, or the folder holding it; RUN = index of the run, default 0) -> Measure."""
    file, run = report_file(ref), ref.partition("#")[2]
    try:
        doc = json.loads(file.read_text())
        runs = doc["runs"]
        index = int(run or 0)
        entry = runs[index]
        overall, base = entry["comparison"]["overall"], entry["base"]
    except OSError as exc:
        raise PearError(f"cannot read eval report {file}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise PearError(f"{ref}: not a pear-edge eval report with run {run or 0} (results.json of `pear-edge "
                        f"eval -o DIR`)") from None
    settings = base.get("settings") or {}
    data = Path(str(settings.get("data") or settings.get("split") or "")).name.removesuffix(".jsonl")
    template = settings.get("template")
    template_name = str(template.get("name") or "") if isinstance(template, dict) else ""
    column = (" ".join(x for x in (base.get("task", "?"), data, template_name) if x)
              + f" · {base['backend'].get('name', '?')}")
    perplexity = overall["metric"] == "perplexity"
    scale = 100.0 / overall["base"] if perplexity else 100.0  # perplexity: relative change in %; accuracy: pt
    delta, low, high = (overall[k] * scale for k in ("delta", "ci_low", "ci_high"))
    # a constant difference has a zero-width CI that rounding may put a hair beside its delta; anything more is a
    # damaged report, said rather than drawn
    slack = 1e-9 * max(1.0, abs(delta))
    if not low - slack <= delta <= high + slack:
        raise PearError(f"{ref}: run {run or 0}'s confidence interval [{low:+.3g}, {high:+.3g}] does not contain "
                        f"its difference {delta:+.3g}; the report is damaged")
    return Measure(column, "perplexity" if perplexity else "accuracy", overall["n"], delta, min(low, delta),
                   max(high, delta), overall["p_value"])


def parse_point(spec: str) -> Point:
    """'LABEL=SECONDS[:GIB]=REPORT[#RUN],REPORT[#RUN]...' -> Point."""
    parts = spec.split("=")
    if len(parts) != 3 or not parts[0].strip() or not parts[2].strip():
        raise PearError(f"--point {spec!r}: expected LABEL=SECONDS[:GIB]=REPORT[#RUN][,REPORT[#RUN]...]")
    label, cost, refs = parts
    seconds, _, gib = cost.partition(":")
    refs = [r.strip() for r in refs.split(",") if r.strip()]
    measures = tuple(read_measure(r) for r in refs)
    columns = [m.column for m in measures]
    if len(set(columns)) != len(columns):
        raise PearError(f"--point {spec!r}: two reports measure the same thing ({columns})")
    return Point(label.strip(), _number(seconds, "seconds", spec), _number(gib, "GiB", spec) if gib else None, measures,
                 tuple(report_file(r) for r in refs))


def columns_of(points: list[Point]) -> list[str]:
    seen: list[str] = []
    for point in points:
        seen += [m.column for m in point.measures if m.column not in seen]
    return seen


def markdown(points: list[Point], bound: float) -> str:
    columns = columns_of(points)
    lines = ["| point | wall s | peak GiB | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for point in points:
        by = {m.column: m for m in point.measures}
        cells = []
        for column in columns:
            m = by.get(column)
            if m is None:
                cells.append("—")
            elif m.metric == "perplexity":
                flag = " **over the bound**" if m.delta > bound else ""
                cells.append(f"{m.delta:+.1f} % [{m.low:+.1f}, {m.high:+.1f}] (n={m.n}){flag}")
            else:
                cells.append(f"{m.delta:+.1f} pt [{m.low:+.1f}, {m.high:+.1f}], p={m.p:.2g} (n={m.n})")
        gib = f"{point.gib:.2f}" if point.gib else "—"
        lines.append(f"| {point.label} | {point.seconds:.0f} | {gib} | " + " | ".join(cells) + " |")
    lines += ["", f"Accuracy: paired Δ (PEAR − base) in points, 95 % bootstrap CI, McNemar exact p. Perplexity: "
              f"relative change in %, 95 % bootstrap CI over passages; bound +{bound:g} %."]
    return "\n".join(lines) + "\n"


def plot(points: list[Point], bound: float, path: Path, time_target: float | None = None) -> Path:
    """One panel per column; points at equal cost are dodged sideways so their CI bars do not hide each other."""
    from pear_edge.base.plots import pyplot, save_png

    columns = columns_of(points)
    plt = pyplot()
    wide = min(len(columns), PANELS_PER_ROW)
    rows = math.ceil(len(columns) / wide)
    fig, axes = plt.subplots(rows, wide, figsize=(4.2 * wide, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    dodge = 0.006 * max(p.seconds for p in points)
    for ax, column in zip(axes.flat, columns):
        metric = "accuracy"
        for i, point in enumerate(points):
            m = next((m for m in point.measures if m.column == column), None)
            if m is None:
                continue
            metric = m.metric
            x = point.seconds + dodge * (i - (len(points) - 1) / 2)
            ax.errorbar([x], [m.delta], yerr=[[m.delta - m.low], [m.high - m.delta]], fmt="o",
                        color=f"C{i}", capsize=3, label=point.label)
        ax.axhline(0, color="grey", lw=0.8)
        if time_target:
            ax.axvline(time_target, color="black", ls=":", lw=0.8, label=f"target {time_target:g} s")
        if metric == "perplexity":
            ax.axhline(bound, color="red", ls="--", lw=0.8, label=f"bound +{bound:g} %")
        ax.set_xlabel("calibration wall time (s)")
        ax.set_ylabel("perplexity change (%)" if metric == "perplexity" else "accuracy Δ (pt), 95 % CI")
        ax.set_title(textwrap.fill(column, 48), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def write_tradeoff(outdir: str | Path, points: list[Point], bound: float = 2.0,
                   time_target: float | None = None) -> list[Path]:
    """OUT/tradeoff.md + OUT/tradeoff.png (+ tradeoff.json: the points as read)."""
    if not points:
        raise PearError("give at least one --point")
    out = report_folder(outdir)
    doc = {"format": "pear-edge/tradeoff", "version": 1, "bound_pct": bound, "time_target_s": time_target,
           "points": [{"label": p.label, "seconds": p.seconds, "gib": p.gib,
                       "measures": [asdict(m) for m in p.measures]} for p in points]}
    return [write_text_atomic(out / "tradeoff.json", json.dumps(doc, indent=2) + "\n"),
            write_text_atomic(out / "tradeoff.md", markdown(points, bound)),
            plot(points, bound, out / "tradeoff.png", time_target)]
