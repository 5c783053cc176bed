"""An eval report made fit for docs/: each side keeps what the results page and measured.json read (scores, the
0/1 outcome of every example with its id, perplexity's per-passage NLL) and loses the answers, timings and
machine paths; and the numbers of a measured.json claim read from each run.

    doc = published(json.loads(Path("out/run/results.json").read_text()))
    claim_numbers(doc, run=0, source="docs/experiments/x/results.json")  # n, base_pct, delta_pt, ci_pt, p, ...
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from pear_edge.base.atomic import atomic_file
from pear_edge.base.errors import PearError
from pear_edge.eval.report import REPORT_FORMAT

SIDE_KEYS = ("task", "backend", "settings", "metric", "score", "by_position")
PATH_KEYS = ("data", "source", "coefficients", "file")  # settings and backend values that name a file
COPIED = ("report.md", "accuracy_by_position.png")


def _file_names(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: Path(v).name if k in PATH_KEYS and isinstance(v, str) else v for k, v in entry.items()}


def published_side(side: dict[str, Any]) -> dict[str, Any]:
    """One side of a run: SIDE_KEYS (file names instead of paths), then `correct` ("0110…") and `ids` for QA,
    `values` [{id, nll, tokens}] for perplexity."""
    out = {k: side[k] for k in SIDE_KEYS if k in side}
    out["backend"] = _file_names(side.get("backend", {}))
    out["settings"] = _file_names(side.get("settings", {}))
    items = side.get("items")
    if items is None:  # already published
        return {**out, **{k: side[k] for k in ("correct", "ids", "values") if k in side}}
    if side.get("metric") == "perplexity":
        out["values"] = [{"id": i["id"], "nll": i["nll"], "tokens": i["tokens"]} for i in items]
    else:
        out["correct"] = "".join("1" if i["correct"] else "0" for i in items)
        out["ids"] = [i["id"] for i in items]
    return out


def published(doc: dict[str, Any]) -> dict[str, Any]:
    """The whole report, every side published (the input is not changed)."""
    if doc.get("format") != REPORT_FORMAT or not isinstance(doc.get("runs"), list):
        raise PearError(f"not a pear-edge eval report (format {doc.get('format')!r}); give an `eval` output folder")
    out = copy.deepcopy(doc)
    out["settings"] = _file_names(out.get("settings", {}))
    for run in out["runs"]:
        run["base"], run["pear"] = published_side(run["base"]), published_side(run["pear"])
    return out


def claim_numbers(doc: dict[str, Any], run: int, source: str) -> dict[str, Any]:
    """The measured numbers of run `run` as a measured.json claim holds them (accuracy in percent and points,
    perplexity as values and per cent); the claim's words (model, task, backend, ...) are the author's."""
    comparison = doc["runs"][run]["comparison"]
    o = comparison["overall"]
    numbers: dict[str, Any] = {"metric": o["metric"], "n": o["n"]}
    if o["metric"] == "perplexity":
        numbers.update(base_value=round(o["base"], 2), pear_value=round(o["pear"], 2), delta_pt=round(o["delta"], 2),
                       ci_pt=[round(o["ci_low"], 2), round(o["ci_high"], 2)],
                       delta_pct=round(100 * o["delta"] / o["base"], 2))
    else:
        gap = comparison.get("position_gap")
        numbers.update(base_pct=round(100 * o["base"], 2), pear_pct=round(100 * o["pear"], 2),
                       delta_pt=round(100 * o["delta"], 2), ci_pt=[round(100 * o["ci_low"], 2),
                                                                   round(100 * o["ci_high"], 2)])
        numbers["gap_pt"] = [round(100 * gap["base"], 1), round(100 * gap["pear"], 1)] if gap else None
        by = comparison.get("by_position") or {}
        numbers["by_position"] = {k: round(100 * by[k]["delta"], 1) for k in sorted(by, key=int)} or None
    numbers.update(p=float(f"{o['p_value']:.3g}"), source=source, run=run)
    return numbers


def copy_companions(report: Path, folder: Path) -> list[Path]:
    """report.md and the position plot, where the report has them."""
    copied = []
    for name in COPIED:
        if (report / name).is_file():
            with atomic_file(folder / name) as tmp:
                shutil.copyfile(report / name, tmp)
            copied.append(folder / name)
    return copied
