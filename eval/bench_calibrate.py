"""Benchmark: what `pear-edge calibrate` costs on this machine — wall time, peak RSS and the held-out proxy
loss it reaches — for one or more recipes, each run in a fresh process (so peak memory is its own).

    python -m pear_edge.eval.bench_calibrate [--model default] [--run LABEL="CALIBRATE FLAGS" ...] [-o DIR]

Default runs: the model's profile as `pear-edge calibrate` uses it ("default"), and the same with
`--checkpoint on`. Every run writes its coefficients into DIR (default: a temporary folder), so a run can be
scored afterwards (`pear-edge eval`). Printed: one row per run, the ratios to the first run, and the machine.
Targets live here, not in timed tests (issue 14: the default recipe in <= 300 s and <= 3 GiB on 2 CPU cores).
On a GPU: `--run "cuda=--device cuda"`; each row then also shows torch's peak GPU memory (`calibration.cost`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pear_edge.errors import PearError

TARGET_SECONDS, TARGET_GIB = 300.0, 3.0
DEFAULT_RUNS = ("default=", "checkpoint=--checkpoint on")


def parse_run(text: str) -> tuple[str, list[str]]:
    """'LABEL=--flag value ...' -> (label, flags)."""
    label, sep, flags = text.partition("=")
    if not sep or not label.strip() or not label.replace("-", "").replace("_", "").isalnum():
        raise PearError(f"--run wants LABEL=\"calibrate flags\" with a plain label, got {text!r}")
    return label.strip(), shlex.split(flags)


def run_one(model: str, label: str, flags: list[str], folder: Path, threads: int | None) -> dict:
    """One calibration in a child process; its own peak RSS from os.wait4, the rest from its output file."""
    out = folder / f"{label}.json"
    cmd = [sys.executable, "-m", "pear_edge.cli", "calibrate", "--model", model, "-o", str(out), *flags]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    with open(folder / f"{label}.log", "w", encoding="utf-8") as log:  # stdout; progress bars stay on stderr
        child = subprocess.Popen(cmd, env=env, stdout=log)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise PearError(f"run {label!r} failed (exit {code}); see {folder / (label + '.log')} and the messages above")
    doc = json.loads(out.read_text(encoding="utf-8"))
    calibration, proxy = doc["calibration"], doc["metrics"]["held_out_proxy"]
    loss_key = next(iter(proxy["before"]))
    cost = calibration["cost"]
    train = calibration.get("train", {})
    return {"label": label, "flags": " ".join(flags), "coefficients": str(out),
            "wall_seconds": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 1024 / 1024, 2),
            "train_seconds": calibration.get("train_seconds"), "steps": train.get("steps"),
            "batch": train.get("batch"), "checkpoint": train.get("checkpoint", False),
            "held_out": {"metric": loss_key, "before": proxy["before"][loss_key], "after": proxy["after"][loss_key]},
            "machine": cost["machine"], "torch_threads": cost["torch_threads"], "device": cost.get("device", "cpu"),
            "device_name": cost.get("device_name"),
            "peak_device_gib": round(cost["peak_device_mib"] / 1024, 2) if "peak_device_mib" in cost else None}


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    gpus = sorted({r["device_name"] for r in rows if r.get("device_name")})
    lines = [f"Calibration cost on {first['machine']}{''.join(f', {g}' for g in gpus)} ({first['torch_threads']} "
             f"torch threads); targets (2 CPU cores): <= {TARGET_SECONDS:.0f} s, <= {TARGET_GIB:.0f} GiB peak RSS.", "",
             "| run | flags | device | steps x batch | wall s (x first) | peak RSS GiB (x first) | peak GPU GiB | "
             f"held-out proxy {first['held_out']['metric']} before -> after |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["wall_seconds"] <= TARGET_SECONDS and r["peak_rss_gib"] <= TARGET_GIB else " (over target)"
        gpu = f"{r['peak_device_gib']:.2f}" if r.get("peak_device_gib") is not None else "-"
        lines.append(f"| {r['label']}{ok} | `{r['flags'] or '(profile)'}` | {r.get('device', 'cpu')} | "
                     f"{r['steps']} x {r['batch']} | "
                     f"{r['wall_seconds']:.0f} ({r['wall_seconds'] / first['wall_seconds']:.2f}) | "
                     f"{r['peak_rss_gib']:.2f} ({r['peak_rss_gib'] / max(first['peak_rss_gib'], 1e-9):.2f}) | {gpu} | "
                     f"{r['held_out']['before']:.3f} -> {r['held_out']['after']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--run", action="append", help="LABEL=\"calibrate flags\" (repeat; default: "
                                                       + ", ".join(DEFAULT_RUNS) + ")")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's own)")
    parser.add_argument("-o", "--output", help="folder for the runs' coefficients and bench.json/.md "
                                               "(default: a temporary folder, deleted)")
    args = parser.parse_args(argv)
    try:
        from pear_edge.atomic import report_folder, write_text_atomic

        runs = [parse_run(r) for r in (args.run or DEFAULT_RUNS)]
        labels = [label for label, _ in runs]
        if len(set(labels)) != len(labels):
            raise PearError(f"--run labels repeat: {labels}")
        with tempfile.TemporaryDirectory(prefix="pear-bench-calibrate-") as tmp:
            folder = report_folder(args.output) if args.output else Path(tmp)
            rows = []
            for i, (label, flags) in enumerate(runs, 1):
                print(f"[{i}/{len(runs)}] {label}: pear-edge calibrate --model {args.model} {' '.join(flags)}",
                      file=sys.stderr, flush=True)
                rows.append(run_one(args.model, label, flags, folder, args.threads))
                print(f"  {rows[-1]['wall_seconds']:.0f} s, {rows[-1]['peak_rss_gib']:.2f} GiB", file=sys.stderr)
            text = markdown(rows)
            print(text)
            if args.output:
                write_text_atomic(folder / "bench.json", json.dumps(rows, indent=2) + "\n")
                write_text_atomic(folder / "bench.md", text)
    except PearError as exc:
        print(f"pear-edge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
