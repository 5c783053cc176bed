"""Speed and memory of base vs patched models, measured interleaved (A B A B ...) in one run.

Each measurement is a fresh process (`speed_worker`): it reports its tokens/s, and the parent reads
that process's peak RSS from os.wait4, so peak memory is per measurement and per backend. Ratios
patched/base are taken per round (neighbouring measurements share the machine's load) and
summarised as median and IQR.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from pear_edge.atomic import report_folder, write_text_atomic
from pear_edge.errors import PearError

from .backends import infer_kind
from .metrics import median_iqr

METRICS = ("prefill_tps", "decode_tps", "peak_rss_mib")


@dataclass(frozen=True)
class Pair:
    """A base model and its patched twin on one backend (same quant type)."""
    label: str
    kind: str
    base: str
    pear: str


def model_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in (".onnx", ".onnx_data", ".data"))


def tensor_bytes(path: str | Path) -> int | None:
    """GGUF tensor data only: equal for base and patched when the quant types match (the patched
    file is a little larger overall because it carries pear.* metadata)."""
    if Path(path).suffix.lower() != ".gguf":
        return None
    from gguf import GGUFReader

    return int(sum(t.n_bytes for t in GGUFReader(str(path)).tensors))


def measure_once(kind: str, path: str, prompt_tokens: int, gen_tokens: int, threads: int | None) -> dict[str, float]:
    spec = {"kind": kind, "path": str(path), "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "threads": threads}
    # stderr goes to a file (not a second pipe that could fill up while we read stdout); the child
    # is reaped with wait4 ourselves, because Popen.wait() would discard its resource usage.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pear_edge.eval.speed_worker", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise PearError(f"speed measurement of {path} failed: {last}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


@dataclass
class SpeedReport:
    settings: dict[str, Any]
    pairs: list[Pair]
    samples: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # label -> base/pear -> rounds

    def summary(self, label: str) -> dict[str, Any]:
        pair = next(p for p in self.pairs if p.label == label)
        base, pear = self.samples[label]["base"], self.samples[label]["pear"]
        out: dict[str, Any] = {"kind": pair.kind, "base_bytes": model_bytes(pair.base),
                               "pear_bytes": model_bytes(pair.pear),
                               "base_tensor_bytes": tensor_bytes(pair.base), "pear_tensor_bytes": tensor_bytes(pair.pear)}
        for metric in METRICS:
            ratios = [p[metric] / b[metric] for b, p in zip(base, pear)]
            med, q1, q3 = median_iqr(ratios)
            out[metric] = {"ratio_median": med, "ratio_q1": q1, "ratio_q3": q3,
                           "base_median": median_iqr([b[metric] for b in base])[0],
                           "pear_median": median_iqr([p[metric] for p in pear])[0], "ratios": ratios}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"format": "pear-edge/speed", "version": 1, "settings": self.settings,
                "pairs": [asdict(p) for p in self.pairs], "samples": self.samples,
                "summary": {p.label: self.summary(p.label) for p in self.pairs}}


def measure_pairs(pairs: Sequence[Pair], rounds: int = 6, prompt_tokens: int = 256, gen_tokens: int = 64,
                  threads: int | None = None, progress: bool = True) -> SpeedReport:
    """Rounds of base, patched, base, patched ... for every pair; the order flips each round."""
    if rounds < 2:
        raise PearError("use at least 2 rounds so that a spread can be reported")
    for pair in pairs:
        for path in (pair.base, pair.pear):
            if not Path(path).exists():
                raise PearError(f"model {path} not found")
            if infer_kind(path) != pair.kind:
                raise PearError(f"{path} is not a {pair.kind} model")
    report = SpeedReport({"rounds": rounds, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                          "threads": threads}, list(pairs),
                         {p.label: {"base": [], "pear": []} for p in pairs})
    steps = [(r, p, which) for r in range(rounds) for p in pairs
             for which in (("base", "pear") if r % 2 == 0 else ("pear", "base"))]
    for _, pair, which in tqdm(steps, desc="speed", unit="run", disable=not progress):
        path = pair.base if which == "base" else pair.pear
        report.samples[pair.label][which].append(measure_once(pair.kind, path, prompt_tokens, gen_tokens, threads))
    return report


def speed_markdown(report: SpeedReport) -> str:
    s = report.settings
    lines = [f"{s['rounds']} interleaved rounds, prompt {s['prompt_tokens']} tokens, {s['gen_tokens']} decoded "
             f"tokens; ratios are patched/base per round, median [IQR].", "",
             "| backend | metric | base (median) | patched (median) | ratio median | IQR |", "|---|---|---|---|---|---|"]
    for pair in report.pairs:
        summ = report.summary(pair.label)
        for metric in METRICS:
            m = summ[metric]
            lines.append(f"| {pair.label} | {metric} | {m['base_median']:.1f} | {m['pear_median']:.1f} "
                         f"| {m['ratio_median']:.3f} | [{m['ratio_q1']:.3f}, {m['ratio_q3']:.3f}] |")
        lines.append(f"| {pair.label} | file bytes | {summ['base_bytes']} | {summ['pear_bytes']} "
                     f"| {summ['pear_bytes'] / summ['base_bytes']:.4f} | |")
        if summ["base_tensor_bytes"] is not None:
            lines.append(f"| {pair.label} | tensor data bytes | {summ['base_tensor_bytes']} | "
                         f"{summ['pear_tensor_bytes']} | {summ['pear_tensor_bytes'] / summ['base_tensor_bytes']:.4f} | |")
    return "\n".join(lines) + "\n"


def plot_speed(report: SpeedReport, path: Path) -> Path:
    """Box plot of per-round patched/base ratios, one box per backend and metric."""
    from pear_edge.plots import pyplot, save_png

    labels, data = [], []
    for pair in report.pairs:
        summ = report.summary(pair.label)
        for metric in METRICS:
            labels.append(f"{pair.label}\n{metric.replace('_', ' ')}")
            data.append(summ[metric]["ratios"])
    fig, ax = pyplot().subplots(figsize=(max(5, 1.6 * len(labels)), 4))
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_ylabel("patched / base (per round)")
    ax.set_title("PEAR-patched vs base: speed and peak memory")
    fig.tight_layout()
    return save_png(fig, path)


def write_speed_report(report: SpeedReport, outdir: str | Path) -> list[Path]:
    out = report_folder(outdir)
    return [write_text_atomic(out / "speed.json", json.dumps(report.as_dict(), indent=2) + "\n"),
            write_text_atomic(out / "speed.md", speed_markdown(report)), plot_speed(report, out / "speed.png")]
