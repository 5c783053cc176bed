"""Benchmark: what `pear-edge calibrate` costs on this machine — wall time, peak RSS and the held-out proxy
loss it reaches — for one or more recipes, each run in a fresh process (so peak memory is its own).

    python -m pear_edge.eval.lab.bench_calibrate [--model default] [--run LABEL="CALIBRATE FLAGS" ...] [-o DIR]
    python -m pear_edge.eval.lab.bench_calibrate --scaling [--models default,shape=llama-3.2-1b] [--lengths 256,512,...] [--dtypes float32,bfloat16] [-o DIR]

Default runs: the model's profile as `pear-edge calibrate` uses it ("default"), and the same with
`--checkpoint on`. Each row splits the wall time into loading the model, building the proxy, head detection and
training (which includes the held-out evaluation after it); the rest is the held-out evaluation before
training, the plot and writing. Every run writes its coefficients into DIR (default: a temporary folder), so a
run can be scored afterwards (`pear-edge eval`). Printed: one row per run, the ratios to the first run, and the
machine.
Targets live here, not in timed tests (the default recipe in <= 300 s and <= 3 GiB on 2 CPU cores).
On a GPU: `--run "cuda=--device cuda"`; each row then also shows torch's peak GPU memory (`calibration.cost`).
`--ranks N` in a run's flags runs it data-parallel in N processes under torchrun (`--run "dp2=--ranks 2"`), and
every row says how far its coefficients are from the first run's (the same seed: float rounding only).

`--scaling` measures how one training step grows (to predict a bigger model): for each model, prompt
length, batch, micro-batch and checkpointing, a fresh process loads the model, makes every head's scale
trainable (the training path, heads.scale_heads) and runs forward + backward of a tail loss (the proxies'
shape: logits of the last 8 tokens) on random tokens — 1 warm-up and 2 timed steps; seconds per step (median)
and the process's peak RSS. Printed: the rows, and per model a least-squares quadratic of time and memory
against prompt tokens (batch 1), so a user can extrapolate to their prompt lengths and, by the parameters
outside the embedding, to other models. `--dtypes float32,bfloat16` repeats the cases with the frozen weights in
each dtype; a model `shape=NAME` is a randomly initialised model of the real config in shapes/NAME.json (e.g.
Llama-3.2-1B's), whose weights do not ship here.
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

    model: str  # a SPEC, or SHAPE_PREFIX + a file of shapes/: a randomly initialised model of a real config
    length: int
    batch: int = 1
    micro: int = 1
    checkpoint: bool = False
    dtype: str = "float32"  # the frozen weights' (pear_edge.runtime.precision.DTYPES)

    def text(self) -> str:
        return f"{self.model}:{self.length}:{self.batch}:{self.micro}:{int(self.checkpoint)}:{self.dtype}"

    @classmethod
    def parse(cls, text: str) -> "StepCase":
        model, length, batch, micro, checkpoint, dtype = text.rsplit(":", 5)
        return cls(model, int(length), int(batch), int(micro), checkpoint == "1", dtype)


SHAPE_PREFIX = "shape="
SHAPES = Path(__file__).with_name("shapes")


def shape_model(name: str, dtype):
    """A randomly initialised model of the config in shapes/NAME.json, built directly in `dtype` (no weights
    exist here: its step time and memory are those of the real model's shape)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = SHAPES / f"{name}.json"
    if not path.is_file():
        raise PearError(f"no shape {name!r}; choose one of {', '.join(sorted(p.stem for p in SHAPES.glob('*.json')))}")
    config = json.loads(path.read_text(encoding="utf-8"))["config"]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=dtype)
    model.eval()
    return model.requires_grad_(False)


def scaling_cases(models: list[str], lengths: list[int], dtypes: tuple[str, ...] = ("float32",)) -> list[StepCase]:
    """Per model and dtype: every length at batch 1, the longest with checkpointing; for the first model and dtype
    also a batch of SCALING_BATCH at the second length, micro-batched (the default) and whole (what
    micro-batching saves)."""
    cases = []
    for i, model in enumerate(models):
        for j, dtype in enumerate(dtypes):
            cases += [StepCase(model, n, dtype=dtype) for n in lengths]
            cases.append(StepCase(model, lengths[-1], checkpoint=True, dtype=dtype))
            if i == j == 0 and len(lengths) > 1:
                cases += [StepCase(model, lengths[1], SCALING_BATCH, 1, dtype=dtype),
                          StepCase(model, lengths[1], SCALING_BATCH, SCALING_BATCH, dtype=dtype)]
    return cases


def time_step(case: StepCase) -> dict:
    """In this process: load case.model, train every head's scale for 1 + TIMED_STEPS steps -> timings."""
    import statistics

    import torch

    from pear_edge.arch.registry import ArchAdapter
    from pear_edge.edits.heads import scale_heads
    from pear_edge.runtime.models import load_model
    from pear_edge.runtime.precision import resolve_dtype
    from pear_edge.calibration.proxy import backward_in_parts, tail_logits
    from pear_edge.calibration.train import checkpointed_layers

    dtype = resolve_dtype(case.dtype, "cpu")
    if case.model.startswith(SHAPE_PREFIX):
        model = shape_model(case.model.removeprefix(SHAPE_PREFIX), dtype)
        adapter, vocab = ArchAdapter(model), model.config.vocab_size
    else:
        loaded = load_model(case.model, dtype=dtype)
        model, adapter = loaded.model, loaded.adapter
        vocab = min(model.config.get_text_config().vocab_size, len(loaded.tokenizer))
    keys = [(layer, head) for layer in range(adapter.num_layers) for head in range(adapter.num_heads)]
    values = torch.nn.Parameter(torch.ones(len(keys)))
    gen = torch.Generator().manual_seed(0)
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
             "| model | params (M; without embeddings) | weights | prompt tokens | batch / micro-batch | checkpoint | "
             "s per step | s per 1k tokens | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['params'] / 1e6:.0f} ({r['params_non_embedding'] / 1e6:.0f})"
        lines.append(f"| {r['model']} | {size} | {r.get('dtype', 'float32')} | {r['length']} | {r['batch']} / {r['micro']} | "
                     f"{'on' if r['checkpoint'] else 'off'} | {r['step_seconds']:.2f} | "
                     f"{r['step_seconds'] * 1000 / (r['length'] * r['batch']):.2f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "Fitted on the batch-1 rows without checkpointing (least squares, L = prompt tokens / 1000):", ""]
    for model, dtype in dict.fromkeys((r["model"], r.get("dtype", "float32")) for r in rows):
        plain = [r for r in rows if r["model"] == model and r.get("dtype", "float32") == dtype and r["batch"] == 1
                 and not r["checkpoint"]]
        if len(plain) < 2:
            continue
        xs = [r["length"] / 1000 for r in plain]
        t = fit_quadratic(xs, [r["step_seconds"] for r in plain])
        m = fit_quadratic(xs, [r["peak_rss_gib"] for r in plain])
        size = f"{plain[0]['params'] / 1e6:.0f} M parameters, {plain[0]['params_non_embedding'] / 1e6:.0f} M " \
               "without embeddings"
        lines.append(f"- {model}, {dtype} ({size}): s per step ≈ {t[0]:.2f} + {t[1]:.2f} L + {t[2]:.2f} L²; "
                     f"peak RSS GiB ≈ {m[0]:.2f} + {m[1]:.2f} L + {m[2]:.2f} L²")
    return "\n".join(lines) + "\n"


def scaling(models: list[str], lengths: list[int], threads: int | None, folder: Path | None,
            dtypes: tuple[str, ...] = ("float32",)) -> int:
    from pear_edge.base.atomic import write_text_atomic
    from pear_edge.runtime.device import machine

    cases = scaling_cases(models, lengths, dtypes)
    rows = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.model} ({case.dtype}): {case.batch} x {case.length} tokens, micro-batch {case.micro}, "
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


def split_ranks(flags: list[str]) -> tuple[int, list[str]]:
    """A run's `--ranks N` (data-parallel over N processes with torchrun; not a calibrate flag) and its other flags."""
    if "--ranks" not in flags:
        return 1, flags
    i = flags.index("--ranks")
    try:
        ranks = int(flags[i + 1])
    except (IndexError, ValueError):
        raise PearError(f"--ranks wants a number of processes, got {flags[i + 1:i + 2]}") from None
    if ranks < 1:
        raise PearError(f"--ranks must be at least 1 (got {ranks})")
    return ranks, flags[:i] + flags[i + 2:]


def run_one(model: str, label: str, flags: list[str], folder: Path, threads: int | None) -> dict:
    """One calibration in a child process (with `--ranks N` in the flags: N processes under torchrun, each with
    cores / N threads unless --threads); peak RSS from os.wait4 (under torchrun: the largest process's), the rest
    from its output file."""
    out = folder / f"{label}.json"
    ranks, flags = split_ranks(flags)
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc-per-node", str(ranks)]
    cmd = [*launcher, "-m", "pear_edge.cli", "calibrate", "--model", model, "-o", str(out), *flags]
    threads = threads or (max(1, (os.cpu_count() or 1) // ranks) if ranks > 1 else None)
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
    return {"label": label, "flags": " ".join(flags), "coefficients": str(out), "ranks": ranks,
            "values": [h["coefficient"] for h in doc["heads"]] + [x for c in doc.get("o_proj_channels", [])
                                                                  for x in c["scales"]],
            "weights_dtype": calibration.get("weights_dtype", "float32"),
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
             "| run | flags | device | ranks | weights | steps x batch | wall s (x first) | load / proxy / detect / train s | "
             "peak RSS GiB (x first) | peak GPU GiB | "
             f"held-out proxy {first['held_out']['metric']} before -> after | max abs coefficient change vs first |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = first.get("values") and len(r.get("values", [])) == len(first["values"])
        change = f"{max(abs(a - b) for a, b in zip(r['values'], first['values'])):.2g}" if same else "-"
        ok = "" if r["wall_seconds"] <= TARGET_SECONDS and r["peak_rss_gib"] <= TARGET_GIB else " (over target)"
        gpu = f"{r['peak_device_gib']:.2f}" if r.get("peak_device_gib") is not None else "-"
        lines.append(f"| {r['label']}{ok} | `{r['flags'] or '(profile)'}` | {r.get('device', 'cpu')} | "
                     f"{r.get('ranks', 1)} | {r.get('weights_dtype', 'float32')} | {r['steps']} x {r['batch']} | "
                     f"{r['wall_seconds']:.0f} ({r['wall_seconds'] / first['wall_seconds']:.2f}) | "
                     f"{' / '.join('-' if v is None else f'{v:.0f}' for v in r.get('phases', {}).values()) or '-'} | "
                     f"{r['peak_rss_gib']:.2f} ({r['peak_rss_gib'] / max(first['peak_rss_gib'], 1e-9):.2f}) | {gpu} | "
                     f"{r['held_out']['before']:.3f} -> {r['held_out']['after']:.3f} | {change} |")
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
    parser.add_argument("--dtypes", default="float32", help="--scaling: frozen-weight dtypes (comma-separated: "
                                                             "float32, bfloat16, float16)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # the child of --scaling: MODEL:LENGTH:BATCH:MICRO:CKPT
    args = parser.parse_args(argv)
    try:
        from pear_edge.base.atomic import report_folder, write_text_atomic
        from pear_edge.runtime.precision import dtype_name, resolve_dtype

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
            dtypes = tuple(dtype_name(resolve_dtype(d, "cpu")) for d in args.dtypes.split(",") if d)
            return scaling(models, lengths, args.threads, report_folder(args.output) if args.output else None, dtypes)

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
