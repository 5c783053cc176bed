"""Benchmark: what `pear-edge calibrate` costs on this machine — wall time, peak RSS and the held-out proxy
loss it reaches — for one or more recipes, each run in a fresh process (so peak memory is its own).

    python -m pear_edge.eval.lab.bench_calibrate [--model default] [--run LABEL="CALIBRATE FLAGS" ...] [-o DIR]
    python -m pear_edge.eval.lab.bench_calibrate --scaling [--models default,gemma3-270m] [--lengths 256,512,...] [-o DIR]

Default runs: the model's profile as `pear-edge calibrate` uses it ("default"), and the same with
`--checkpoint on`. Each row splits the wall time into loading the model, building the proxy, head detection and
training (which includes the held-out evaluation after it); the rest is the held-out evaluation before
training, the plot and writing. Every run writes its coefficients into DIR (default: a temporary folder), so a
run can be scored afterwards (`pear-edge eval`). Printed: one row per run, the ratios to the first run, and the
machine.
Targets live here, not in timed tests (the default recipe in <= 300 s and <= 3 GiB on 2 CPU cores).
On a GPU: `--run "cuda=--device cuda"`; each row then also shows torch's peak GPU memory (`calibration.cost`).

`--scaling` measures how one training step grows (to predict a bigger model): for each model, prompt
length, batch, micro-batch and checkpointing, a fresh process loads the model, makes every head's scale
trainable (the training path, heads.scale_heads) and runs forward + backward of a tail loss (the proxies'
shape: logits of the last 8 tokens) on random tokens — 1 warm-up and 2 timed steps; seconds per step (median)
and the process's peak RSS. Printed: the rows, and per model a least-squares quadratic of time and memory
against prompt tokens (batch 1), so a user can extrapolate to their prompt lengths and, by the parameters
outside the embedding, to other models.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pear_edge.base.errors import PearError
from pear_edge.runtime.timing import calibration_phases

TARGET_SECONDS, TARGET_GIB = 300.0, 3.0
DEFAULT_RUNS = ("default=", "checkpoint=--checkpoint on")
SCALING_MODELS = ("default", "gemma3-270m")
SCALING_LENGTHS = (256, 512, 1024, 2048)
SCALING_BATCH = 4  # batch rows: this many prompts of the second length, micro-batched by 1 and whole
TAIL = 8  # tokens whose logits the step's loss reads (the proxies' answer span is a few tokens)
TIMED_STEPS = 2


@dataclasses.dataclass(frozen=True)
class StepCase:
    """One scaling measurement: `batch` prompts of `length` random tokens, backpropagated `micro` at a time."""

    model: str
    length: int
    batch: int = 1
    micro: int = 1
    checkpoint: bool = False

    def text(self) -> str:
        return f"{self.model}:{self.length}:{self.batch}:{self.micro}:{int(self.checkpoint)}"

    @classmethod
    def parse(cls, text: str) -> "StepCase":
        model, length, batch, micro, checkpoint = text.rsplit(":", 4)
        return cls(model, int(length), int(batch), int(micro), checkpoint == "1")


def scaling_cases(models: list[str], lengths: list[int]) -> list[StepCase]:
    """Per model: every length at batch 1, the longest with checkpointing; for the first model also a batch of
    SCALING_BATCH at the second length, micro-batched (the default) and whole (what micro-batching saves)."""
    cases = []
    for i, model in enumerate(models):
        cases += [StepCase(model, n) for n in lengths]
        cases.append(StepCase(model, lengths[-1], checkpoint=True))
        if i == 0 and len(lengths) > 1:
            cases += [StepCase(model, lengths[1], SCALING_BATCH, 1), StepCase(model, lengths[1], SCALING_BATCH,
                                                                              SCALING_BATCH)]
    return cases


def time_step(case: StepCase) -> dict:
    """In this process: load case.model, train every head's scale for 1 + TIMED_STEPS steps -> timings."""
    import statistics

    import torch

    from pear_edge.edits.heads import scale_heads
    from pear_edge.runtime.models import load_model
    from pear_edge.calibration.proxy import backward_in_parts, tail_logits
    from pear_edge.calibration.train import checkpointed_layers

    loaded = load_model(case.model)
    model, adapter = loaded.model, loaded.adapter
    keys = [(layer, head) for layer in range(adapter.num_layers) for head in range(adapter.num_heads)]
    values = torch.nn.Parameter(torch.ones(len(keys)))
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.config.get_text_config().vocab_size, len(loaded.tokenizer))
    ids = torch.randint(vocab // 4, vocab // 2, (case.batch, case.length), generator=gen)  # ordinary tokens
    parts = [(ids[i : i + case.micro], ids[i : i + case.micro].shape[0] / case.batch)
             for i in range(0, case.batch, case.micro)]

    def loss(part: torch.Tensor) -> torch.Tensor:
        logits = tail_logits(model, part, TAIL + 1)[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 part[:, -TAIL:].reshape(-1))

    recompute = checkpointed_layers(adapter.layers) if case.checkpoint else contextlib.nullcontext()
    seconds = []
    with scale_heads(adapter, heads=keys, values=values), recompute, torch.enable_grad():
        for _ in range(1 + TIMED_STEPS):
            values.grad = None
            start = time.perf_counter()
            backward_in_parts(loss, parts)
            seconds.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    embeddings = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None}
    return {"step_seconds": round(statistics.median(seconds[1:]), 3), "params": params,
            "params_non_embedding": params - sum(embeddings.values()),
            "layers": adapter.num_layers, "heads": len(keys), "torch_threads": torch.get_num_threads()}


def run_step(case: StepCase, threads: int | None) -> dict:
    """time_step in a child process; its peak RSS from os.wait4."""
    cmd = [sys.executable, "-m", "pear_edge.eval.lab.bench_calibrate", "--step", case.text()]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise PearError(f"scaling step {case.text()} failed (exit {code}); see the messages above")
    return {**dataclasses.asdict(case), **json.loads(out.strip().splitlines()[-1]),
            "peak_rss_gib": round(usage.ru_maxrss / 1024 / 1024, 3)}


def fit_quadratic(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x + c x^2 -> (a, b, c) (attention's cost grows with the square of the length);
    fewer than 3 points: the line through them (c = 0)."""
    import numpy as np

    degree = min(2, len(xs) - 1)
    coeffs = np.polynomial.polynomial.polyfit(np.asarray(xs, float), np.asarray(ys, float), degree)
    return tuple(float(c) for c in (*coeffs, 0.0, 0.0)[:3])


def scaling_markdown(rows: list[dict], machine: str) -> str:
    lines = [f"One training step (forward + backward, every head's scale trainable, tail loss) on {machine}, "
             f"{rows[0]['torch_threads']} torch threads; median of {TIMED_STEPS} steps after a warm-up; each row a "
             "fresh process.", "",
             "| model | params (M; without embeddings) | prompt tokens | batch / micro-batch | checkpoint | "
             "s per step | s per 1k tokens | peak RSS GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['params'] / 1e6:.0f} ({r['params_non_embedding'] / 1e6:.0f})"
        lines.append(f"| {r['model']} | {size} | {r['length']} | {r['batch']} / {r['micro']} | "
                     f"{'on' if r['checkpoint'] else 'off'} | {r['step_seconds']:.2f} | "
                     f"{r['step_seconds'] * 1000 / (r['length'] * r['batch']):.2f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "Fitted on the batch-1 rows without checkpointing (least squares, L = prompt tokens / 1000):", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        plain = [r for r in rows if r["model"] == model and r["batch"] == 1 and not r["checkpoint"]]
        if len(plain) < 2:
            continue
        xs = [r["length"] / 1000 for r in plain]
        t = fit_quadratic(xs, [r["step_seconds"] for r in plain])
        m = fit_quadratic(xs, [r["peak_rss_gib"] for r in plain])
        size = f"{plain[0]['params'] / 1e6:.0f} M parameters, {plain[0]['params_non_embedding'] / 1e6:.0f} M " \
               "without embeddings"
        lines.append(f"- {model} ({size}): s per step ≈ {t[0]:.2f} + {t[1]:.2f} L + {t[2]:.2f} L²; "
                     f"peak RSS GiB ≈ {m[0]:.2f} + {m[1]:.2f} L + {m[2]:.2f} L²")
    return "\n".join(lines) + "\n"


def scaling(models: list[str], lengths: list[int], threads: int | None, folder: Path | None) -> int:
    from pear_edge.base.atomic import write_text_atomic
    from pear_edge.runtime.device import machine

    cases = scaling_cases(models, lengths)
    rows = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.model}: {case.batch} x {case.length} tokens, micro-batch {case.micro}, "
              f"checkpoint {'on' if case.checkpoint else 'off'}", file=sys.stderr, flush=True)
        rows.append(run_step(case, threads))
        print(f"  {rows[-1]['step_seconds']:.2f} s per step, {rows[-1]['peak_rss_gib']:.2f} GiB", file=sys.stderr)
    text = scaling_markdown(rows, machine())
    print(text)
    if folder is not None:
        write_text_atomic(folder / "scaling.json", json.dumps(rows, indent=2) + "\n")
        write_text_atomic(folder / "scaling.md", text)
    return 0


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
            "phases": calibration_phases(calibration),
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
             "| run | flags | device | steps x batch | wall s (x first) | load / proxy / detect / train s | "
             "peak RSS GiB (x first) | peak GPU GiB | "
             f"held-out proxy {first['held_out']['metric']} before -> after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["wall_seconds"] <= TARGET_SECONDS and r["peak_rss_gib"] <= TARGET_GIB else " (over target)"
        gpu = f"{r['peak_device_gib']:.2f}" if r.get("peak_device_gib") is not None else "-"
        lines.append(f"| {r['label']}{ok} | `{r['flags'] or '(profile)'}` | {r.get('device', 'cpu')} | "
                     f"{r['steps']} x {r['batch']} | "
                     f"{r['wall_seconds']:.0f} ({r['wall_seconds'] / first['wall_seconds']:.2f}) | "
                     f"{' / '.join('-' if v is None else f'{v:.0f}' for v in r.get('phases', {}).values()) or '-'} | "
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
    parser.add_argument("--scaling", action="store_true", help="time and memory of one training step against "
                                                               "model, prompt length, batch, checkpointing")
    parser.add_argument("--models", default=",".join(SCALING_MODELS), help="--scaling: models (comma-separated)")
    parser.add_argument("--lengths", default=",".join(map(str, SCALING_LENGTHS)),
                        help="--scaling: prompt lengths in tokens (comma-separated, increasing)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # the child of --scaling: MODEL:LENGTH:BATCH:MICRO:CKPT
    args = parser.parse_args(argv)
    try:
        from pear_edge.base.atomic import report_folder, write_text_atomic

        if args.step:
            print(json.dumps(time_step(StepCase.parse(args.step))))
            return 0
        if args.scaling:
            models = [m for m in args.models.split(",") if m]
            try:
                lengths = [int(n) for n in args.lengths.split(",") if n]
            except ValueError:
                raise PearError(f"--lengths wants whole numbers, got {args.lengths!r}") from None
            if not models or not lengths or lengths != sorted(set(lengths)) or lengths[0] < TAIL + 2:
                raise PearError(f"--scaling wants models and increasing lengths of at least {TAIL + 2} tokens "
                                f"(got {args.models!r}, {args.lengths!r})")
            return scaling(models, lengths, args.threads, report_folder(args.output) if args.output else None)

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
