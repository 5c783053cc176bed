"""Speed and memory of base vs patched models, measured interleaved (A B A B ...) in one run.

Each measurement is a fresh process (`speed_worker`): it reports its tokens/s (and, on a GPU, the
device memory it added), and the parent reads that process's peak RSS from os.wait4, so peak memory
is per measurement and per backend. Ratios patched/base are taken per round (neighbouring
measurements share the machine's load) and summarised as median and IQR; a ratio whose IQR is too wide
(`ratio_is_measured`) is reported as too noisy to measure, not as a number.

Device (`resolve_device`): cpu, or cuda — llama.cpp with every layer offloaded (a CUDA build of
llama-cpp-python), onnxruntime's CUDA execution provider (onnxruntime-gpu), torch on the GPU. Each
backend is probed in a child process first, so this process never creates a CUDA context.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from pear_edge.base.atomic import report_folder, write_text_atomic
from pear_edge.runtime.device import cuda_requested, environment
from pear_edge.base.errors import PearError
from pear_edge.base.inputs import check_regular_file

from pear_edge.eval.backends import infer_kind
from pear_edge.eval.metrics import median_iqr

METRICS = ("prefill_tps", "decode_tps", "peak_rss_mib")
DEVICE_METRIC = "peak_device_mib"  # GPU memory the worker added (cuda only)
# prompt tokens, decoded tokens and timed passes per measurement (median) when not given: a GPU runs
# the small default model so fast that one short pass is mostly launch jitter.
DEVICE_DEFAULTS = {"cpu": {"prompt_tokens": 256, "gen_tokens": 64, "repeats": 1},
                   "cuda": {"prompt_tokens": 1024, "gen_tokens": 128, "repeats": 5}}
MODEL_SUFFIXES = (".onnx", ".onnx_data", ".data", ".safetensors")
NOISE_LIMIT = 0.10  # widest IQR half-width, relative to the median, of a ratio still reported as a number
TOO_NOISY = "too noisy to measure here"


def ratio_is_measured(median: float, q1: float, q3: float) -> bool:
    """Whether a per-round ratio is a measurement: its IQR lies within ±NOISE_LIMIT of the median.

    The rule: patching changes block scales only, so the differences worth reporting are small; when the
    middle half of the rounds spreads wider than ±NOISE_LIMIT around the median, the machine's load, not the
    model, sets the ratio, and its median resolves nothing of that size. Fewer rounds widen the IQR, so a
    short run on a busy machine is refused rather than reported. A ratio that is not finite and positive is
    never a measurement.
    """
    if not all(math.isfinite(v) for v in (median, q1, q3)) or median <= 0:
        return False
    return (q3 - q1) / 2 <= NOISE_LIMIT * median


def format_ratio(m: dict[str, Any]) -> tuple[str, str]:
    """(median, IQR) cells of a summary metric: numbers, or TOO_NOISY with the spread that made it so."""
    spread = f"[{m['ratio_q1']:.3f}, {m['ratio_q3']:.3f}]"
    if not m.get("ratio_measured", ratio_is_measured(m["ratio_median"], m["ratio_q1"], m["ratio_q3"])):
        return TOO_NOISY, spread
    return f"{m['ratio_median']:.3f}", spread


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
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in MODEL_SUFFIXES)


def tensor_bytes(path: str | Path) -> int | None:
    """GGUF tensor data only: equal for base and patched when the quant types match (the patched
    file is a little larger overall because it carries pear.* metadata)."""
    if Path(path).suffix.lower() != ".gguf":
        return None
    from gguf import GGUFReader

    return int(sum(t.n_bytes for t in GGUFReader(str(path)).tensors))


def _run_worker(args: list[str], what: str) -> tuple[dict[str, Any], Any]:
    """Run `speed_worker ARGS` in a fresh process: its last JSON line and its resource usage."""
    # stderr goes to a file (not a second pipe that could fill up while we read stdout); the child
    # is reaped with wait4 ourselves, because Popen.wait() would discard its resource usage.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pear_edge.eval.speed_worker", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise PearError(f"{what} failed: {last}")
    return json.loads(stdout.strip().splitlines()[-1]), usage


def measure_once(kind: str, path: str, prompt_tokens: int, gen_tokens: int, threads: int | None,
                 device: str = "cpu", repeats: int = 1) -> dict[str, float]:
    spec = {"kind": kind, "path": str(path), "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "threads": threads, "device": device, "repeats": repeats}
    result, usage = _run_worker([json.dumps(spec)], f"speed measurement of {path}")
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def cuda_problem(kind: str) -> str | None:
    """Why backend KIND cannot run on the GPU here (asked in a child process), or None."""
    return _run_worker(["--probe", kind], f"probing {kind} for CUDA")[0]["problem"]


def resolve_device(requested: str, kinds: Sequence[str]) -> str:
    """--device auto|cpu|cuda -> cpu or cuda for backends KINDS. cuda is refused with one line when no
    GPU is visible or a backend cannot use it; auto then measures on the CPU, saying why in a note."""
    if not cuda_requested(requested):
        return "cpu"
    problems = [problem for kind in dict.fromkeys(kinds) if (problem := cuda_problem(kind))]
    if not problems:
        return "cuda"
    if requested == "cuda":
        raise PearError("--device cuda: " + "; ".join(problems) + "; use --device cpu")
    print(f"pear-edge: note: a GPU is visible, but {'; '.join(problems)}: measuring on the CPU", file=sys.stderr)
    return "cpu"


@dataclass
class SpeedReport:
    settings: dict[str, Any]
    pairs: list[Pair]
    samples: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # label -> base/pear -> rounds

    @property
    def device(self) -> str:
        return self.settings.get("device", "cpu")

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS + ((DEVICE_METRIC,) if self.device == "cuda" else ())

    def summary(self, label: str) -> dict[str, Any]:
        pair = next(p for p in self.pairs if p.label == label)
        base, pear = self.samples[label]["base"], self.samples[label]["pear"]
        out: dict[str, Any] = {"kind": pair.kind, "base_bytes": model_bytes(pair.base),
                               "pear_bytes": model_bytes(pair.pear),
                               "base_tensor_bytes": tensor_bytes(pair.base), "pear_tensor_bytes": tensor_bytes(pair.pear)}
        for metric in self.metrics:
            ratios = [p[metric] / b[metric] for b, p in zip(base, pear)]
            med, q1, q3 = median_iqr(ratios)
            out[metric] = {"ratio_median": med, "ratio_q1": q1, "ratio_q3": q3,
                           "ratio_measured": ratio_is_measured(med, q1, q3),
                           "base_median": median_iqr([b[metric] for b in base])[0],
                           "pear_median": median_iqr([p[metric] for p in pear])[0], "ratios": ratios}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"format": "pear-edge/speed", "version": 2, "settings": self.settings,
                "pairs": [asdict(p) for p in self.pairs], "samples": self.samples,
                "summary": {p.label: self.summary(p.label) for p in self.pairs}}


def measure_pairs(pairs: Sequence[Pair], rounds: int = 6, prompt_tokens: int | None = None,
                  gen_tokens: int | None = None, threads: int | None = None, progress: bool = True,
                  device: str = "cpu", repeats: int | None = None) -> SpeedReport:
    """Rounds of base, patched, base, patched ... for every pair; the order flips each round.
    `device`: cpu or cuda, as `resolve_device` gave it; unset sizes take DEVICE_DEFAULTS[device]."""
    if device not in DEVICE_DEFAULTS:
        raise PearError(f"measure on cpu or cuda, not {device!r} (resolve --device with resolve_device)")
    defaults = DEVICE_DEFAULTS[device]
    prompt_tokens = prompt_tokens or defaults["prompt_tokens"]
    gen_tokens = gen_tokens or defaults["gen_tokens"]
    repeats = repeats or defaults["repeats"]
    if rounds < 2:
        raise PearError("use at least 2 rounds so that a spread can be reported")
    if min(prompt_tokens, gen_tokens, repeats) < 1:
        raise PearError("prompt tokens, decoded tokens and repeats must be at least 1")
    for pair in pairs:
        for path in (pair.base, pair.pear):
            if not Path(path).is_dir():
                check_regular_file(path, "model")
            if infer_kind(path) != pair.kind:
                raise PearError(f"{path} is not a {pair.kind} model")
    report = SpeedReport({"rounds": rounds, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                          "threads": threads, "device": device, "repeats": repeats, "environment": environment()},
                         list(pairs), {p.label: {"base": [], "pear": []} for p in pairs})
    steps = [(r, p, which) for r in range(rounds) for p in pairs
             for which in (("base", "pear") if r % 2 == 0 else ("pear", "base"))]
    for _, pair, which in tqdm(steps, desc="speed", unit="run", disable=not progress):
        path = pair.base if which == "base" else pair.pear
        report.samples[pair.label][which].append(measure_once(pair.kind, path, prompt_tokens, gen_tokens, threads,
                                                              device, repeats))
    return report


def device_description(settings: dict[str, Any]) -> str:
    """'the CPU (AMD EPYC 7B13, 2 cores)' or 'the GPU (GPU 0: NVIDIA H100 ...)' from a report's settings."""
    env = settings.get("environment", {})
    if settings.get("device", "cpu") != "cuda":
        return f"the CPU ({env['machine']})" if env.get("machine") else "the CPU"
    from pear_edge.runtime.device import Gpu

    gpus = [Gpu(**g).describe() for g in env.get("gpus", [])]
    return f"the GPU ({'; '.join(gpus) or 'unknown'})"


def speed_markdown(report: SpeedReport) -> str:
    s = report.settings
    repeats = s.get("repeats", 1)
    passes = f" (median of {repeats} timed passes per run)" if repeats > 1 else ""
    lines = [f"{s['rounds']} interleaved rounds on {device_description(s)}, prompt {s['prompt_tokens']} tokens, "
             f"{s['gen_tokens']} decoded tokens{passes}; ratios are patched/base per round, median [IQR]; "
             f"a ratio whose IQR spans more than ±{NOISE_LIMIT:.0%} of its median is {TOO_NOISY}."]
    runtimes = s.get("environment", {}).get("runtimes")
    if runtimes:
        lines.append("Runtimes: " + ", ".join(f"{k} {v}" for k, v in runtimes.items()) + ".")
    if report.device == "cuda":
        lines.append(f"{DEVICE_METRIC}: GPU memory each run added (nvidia-smi, sampled between timed passes).")
    lines += ["", "| backend | metric | base (median) | patched (median) | ratio median | IQR |", "|---|---|---|---|---|---|"]
    for pair in report.pairs:
        summ = report.summary(pair.label)
        for metric in report.metrics:
            m = summ[metric]
            ratio, spread = format_ratio(m)
            lines.append(f"| {pair.label} | {metric} | {m['base_median']:.1f} | {m['pear_median']:.1f} "
                         f"| {ratio} | {spread} |")
        lines.append(f"| {pair.label} | file bytes | {summ['base_bytes']} | {summ['pear_bytes']} "
                     f"| {summ['pear_bytes'] / summ['base_bytes']:.4f} | |")
        if summ["base_tensor_bytes"] is not None:
            lines.append(f"| {pair.label} | tensor data bytes | {summ['base_tensor_bytes']} | "
                         f"{summ['pear_tensor_bytes']} | {summ['pear_tensor_bytes'] / summ['base_tensor_bytes']:.4f} | |")
    return "\n".join(lines) + "\n"


def plot_speed(report: SpeedReport, path: Path) -> Path:
    """Box plot of per-round patched/base ratios, one box per backend and metric."""
    from pear_edge.base.plots import pyplot, save_png

    labels, data = [], []
    for pair in report.pairs:
        summ = report.summary(pair.label)
        for metric in report.metrics:
            labels.append(f"{pair.label}\n{metric.replace('_', ' ')}")
            data.append(summ[metric]["ratios"])
    fig, ax = pyplot().subplots(figsize=(max(5, 1.6 * len(labels)), 4))
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_ylabel("patched / base (per round)")
    ax.set_title(f"PEAR-patched vs base on {report.device}: speed and peak memory")
    fig.tight_layout()
    return save_png(fig, path)


def write_speed_report(report: SpeedReport, outdir: str | Path) -> list[Path]:
    out = report_folder(outdir)
    return [write_text_atomic(out / "speed.json", json.dumps(report.as_dict(), indent=2) + "\n"),
            write_text_atomic(out / "speed.md", speed_markdown(report)), plot_speed(report, out / "speed.png")]
