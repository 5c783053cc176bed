"""`pear-edge eval`: base vs PEAR on a task -> results.json, report.md, accuracy_by_position.png;
`pear-edge eval make-data` writes the built-in data sets as JSONL; `pear-edge eval speed` measures
patched/base speed and memory ratios (interleaved runs, one process per measurement); `pear-edge eval tradeoff`
draws calibration cost against gain from saved reports."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

from pear_edge.base.errors import PearError
from pear_edge.base.inputs import content_sha256
from pear_edge.calibration.options import int_list, template_spec
from pear_edge.data.prompts import FORMAT_CHOICES, format_mismatch
from pear_edge.data.templates import DEFAULT_TEMPLATE, load_template, preset_names, template_mismatch, template_record

from pear_edge.eval.answers import cached_backend, load_side, runtime_versions, save_side, side_key, thread_setting
from pear_edge.eval.realqa import DISTRACTORS, HALVES
from pear_edge.eval.shards import (SHARD_FILE, SIDES, merge_shards, open_shard, parse_shard, parse_shard_file,
                                   run_identity, save_shard, shard_indices)

TASKS = ("mdqa", "counterfactual", "kv", "perplexity")
DEFAULT_NUM_DOCS = 10  # generated counterfactual prompts


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="evaluate base vs PEAR (accuracy by gold position, Δ with CI and p-value)",
                       description="Run base and PEAR models on a task and compare them on the same examples. "
                                   "Subcommands: make-data, speed, tradeoff.")
    p.add_argument("--task", choices=TASKS, help="mdqa (your NQ-open JSONL), counterfactual, kv, perplexity")
    p.add_argument("--data", help="JSONL in the lost-in-the-middle format (required for mdqa; optional for "
                                  "counterfactual/kv, which are generated when omitted)")
    p.add_argument("--base", action="append", default=[], help="base model: .gguf, ONNX folder, HF folder or SPEC "
                                                                 "(repeat --base/--pear for several backends)")
    p.add_argument("--pear", action="append", default=[], help="PEAR-patched counterpart of the matching --base")
    p.add_argument("--model", help="torch: SPEC of the base model, run plain and hooked with --coefficients")
    p.add_argument("--coefficients", help="torch: coefficients JSON applied to --model")
    p.add_argument("--fold", action="store_true", help="torch: fold coefficients into a copy instead of hooking")
    p.add_argument("--backend", choices=("torch", "llamacpp", "onnx"),
                   help="force the backend (default: from each path: .gguf -> llamacpp, ONNX folder -> onnx)")
    p.add_argument("--num-docs", type=int, help="documents per MDQA prompt; more than a record holds are topped up "
                   "with other records' gold passages (default: as many as each record of --data holds, else "
                   f"{DEFAULT_NUM_DOCS})")
    p.add_argument("--positions", type=int_list, help="gold positions, 0-based (default: first, middle, last)")
    p.add_argument("--distractors", choices=("own", "others"), default="own",
                   help="MDQA distractors: the record's own non-gold ctxs, or other records' gold passages")
    p.add_argument("--template", type=template_spec, default=DEFAULT_TEMPLATE,
                   help="MDQA prompt template: a JSON file or a preset (" + ", ".join(preset_names()) + "; "
                        "litm-plain is lost-in-the-middle's without 'Answer with a short phrase.'; default: "
                        "%(default)s)")
    p.add_argument("--prompt-format", choices=FORMAT_CHOICES, default="auto",
                   help="how prompts reach each model: chat = its chat template; completion = the plain prompt "
                        "ending in its answer cue, answer up to a newline (base models); auto = chat when the "
                        "model has a chat template, else completion (default: %(default)s)")
    p.add_argument("--num-pairs", type=int, help="kv: pairs per prompt (default: all in the file / 12 generated)")
    p.add_argument("--count", type=int, default=50, help="generated examples when --data is omitted")
    p.add_argument("--split", default="test", help="counterfactual split when generating (train/validation/test)")
    p.add_argument("--passages", type=int, default=16, help="perplexity: pydoc passages (default: %(default)s)")
    p.add_argument("--limit", type=int, help="use only the first N records")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per answer (default: %(default)s)")
    p.add_argument("--threads", type=int, help="threads per model: llama.cpp threads, onnxruntime intra-op threads "
                   "(not spinning), torch threads (default: each runtime's own, about all cores)")
    p.add_argument("--batch", type=int, default=1,
                   help="torch: answer this many prompts at once (left-padded greedy batches; default: %(default)s)")
    p.add_argument("--shard", type=_shard_option, metavar="I/N",
                   help="answer only shard I of N (example k goes to shard k mod N + 1) into OUTDIR/shard.json; "
                        "a rerun reuses its finished sides; join the N folders with `eval merge`")
    p.add_argument("--answers-cache", metavar="DIR",
                   help="keep each side's answers in DIR and reuse them in later runs (e.g. the base side when only "
                        "the PEAR model changed); a model, prompt format, thread count, runtime version or prompt "
                        "that differs is answered afresh (default: off)")
    p.add_argument("-o", "--output", help="output folder")
    p.set_defaults(func=cmd_eval)
    eval_sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")

    m = eval_sub.add_parser("merge", help="join the shard folders of one `eval --shard I/N` run into its report",
                            description="Check that the folders hold all N shards of one run (same settings, "
                                        "models and examples, each once, each finished), then write the report "
                                        "a single run writes: results.json, report.md, accuracy_by_position.png.")
    m.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="the -o folders of `eval --shard I/N`")
    m.add_argument("-o", "--output", required=True, help="output folder (results.json, report.md, plot)")
    m.set_defaults(func=cmd_merge)

    u = eval_sub.add_parser("publish", help="copy a report into docs/: outcomes and scores kept, answers and machine "
                                            "paths dropped; prints each run's numbers for measured.json",
                            description="Write REPORT_DIR's results.json with each side reduced to its scores, the "
                                        "0/1 outcome and id of every example (perplexity: each passage's NLL) and "
                                        "file names instead of paths, with its report.md and plot, into a new or "
                                        "empty folder; print each run's claim numbers (n, %%, Δ, CI, p, gap) as JSON.")
    u.add_argument("report", metavar="REPORT_DIR", help="an `eval` or `eval merge` output folder")
    u.add_argument("-o", "--output", required=True, help="a new or empty folder, e.g. under docs/experiments/")
    u.set_defaults(func=cmd_publish)

    d = eval_sub.add_parser("make-data", help="write the built-in counterfactual or KV data set, or a real-text "
                                              "NQ half with distractors, as JSONL")
    d.add_argument("--task", choices=("counterfactual", "kv", "nq", "corpus"), required=True)
    d.add_argument("--corpus", help="corpus: questions generated from the held-out files of this folder or rag "
                                    "index (to measure `calibrate --corpus` on its own material)")
    d.add_argument("--source", help="nq: NQ-open oracle JSONL(.gz) with gold passages "
                                    "(e.g. ../shared/data/nq-open-dev.jsonl.gz)")
    d.add_argument("--half", choices=HALVES, default="test",
                   help="nq: fixed half by question hash: validation (choose recipes) or test (claims)")
    d.add_argument("--distractors", choices=DISTRACTORS, default="random",
                   help="nq: random other gold passages, or topical ones nearest to the question (MiniLM); "
                        "corpus: random passages, or those nearest to the gold one")
    d.add_argument("--num-docs", type=int, default=10, help="nq, corpus: documents per prompt (default: %(default)s)")
    d.add_argument("--count", type=int, help="records (default: 200; nq: the whole half)")
    d.add_argument("--split", default="test", help="counterfactual: train, validation or test (disjoint entities)")
    d.add_argument("--num-distractors", type=int, default=9, help="counterfactual: distractor documents per record")
    d.add_argument("--num-pairs", type=int, default=12, help="kv: pairs per record (default: %(default)s)")
    d.add_argument("--key-style", choices=("hex", "word"), default="hex", help="kv: hex strings or invented words")
    d.add_argument("--key-length", type=int, default=6, help="kv: characters per hex key (default: %(default)s)")
    d.add_argument("--value-length", type=int, default=6, help="kv: characters per hex value (default: %(default)s)")
    d.add_argument("-o", "--output", required=True, help="output .jsonl")
    d.set_defaults(func=cmd_make_data)

    s = eval_sub.add_parser("speed", help="patched/base prefill, decode and peak-memory ratios (interleaved runs, "
                                          "CPU or GPU)")
    s.add_argument("--base", action="append", default=[],
                   help="base .gguf, ONNX folder or Hugging Face folder (torch) (repeatable)")
    s.add_argument("--pear", action="append", default=[], help="patched counterpart of the matching --base")
    s.add_argument("--rounds", type=int, default=6, help="base/patched rounds (default: %(default)s)")
    add_speed_options(s)
    s.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    s.add_argument("-o", "--output", required=True, help="output folder (speed.json, speed.md, speed.png)")
    s.set_defaults(func=cmd_speed)

    t = eval_sub.add_parser("tradeoff", help="calibration cost against gain from saved eval reports: one table, one "
                                             "plot (e.g. --budget fast vs full)")
    t.add_argument("--point", action="append", default=[], metavar="LABEL=SECONDS[:GIB]=REPORT[#RUN],...",
                   help="one way of calibrating: its wall seconds (and peak GiB), then the eval reports "
                        "(results.json or its folder; #RUN picks a run, default 0) that measured it (repeatable)")
    t.add_argument("--bound", type=float, default=2.0, help="perplexity bound in %% drawn and flagged "
                                                            "(default: %(default)s)")
    t.add_argument("--time-target", type=float, help="a wall-time target in seconds, drawn as a vertical line")
    t.add_argument("-o", "--output", required=True, help="output folder (tradeoff.md, tradeoff.png, tradeoff.json)")
    t.set_defaults(func=cmd_tradeoff)

    from pear_edge.eval.demo import add_demo_command

    add_demo_command(sub)

    w = sub.add_parser("sweep", help="calibrate variants and score each on validation RAG data in llama.cpp",
                       description="For each variant: calibrate, patch the model's GGUF, and compare it with the "
                                   "unpatched GGUF on counterfactual MDQA + KV retrieval (validation split) and "
                                   "perplexity on shipped text. Resumes an interrupted sweep.")
    _add_variant_options(w, "'default', 'gemma3-270m' or a .gguf file", records=24, kv_records=12, passages=8)
    w.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    w.add_argument("-o", "--output", required=True, help="output folder (sweep.json/.md/.png, one folder per variant)")
    w.set_defaults(func=cmd_sweep)

    q = sub.add_parser("search", help="shortlist calibration variants in torch (batched decoding, GPU if present)",
                       description="Like sweep, but trains and scores every variant in torch with batched greedy "
                                   "decoding on the validation sets: many more variants per hour, on a GPU "
                                   "especially. Confirm the best with `sweep` (llama.cpp).")
    _add_variant_options(q, "'default', 'gemma3-270m', a .gguf file or an HF folder", records=100, kv_records=32,
                         passages=16)
    q.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, ...")
    q.add_argument("-o", "--output", required=True, help="output folder (sweep.json/.md/.png, coefficients)")
    q.set_defaults(func=cmd_search)


def add_speed_options(p) -> None:
    """What `eval speed` and `python -m pear_edge.eval.lab.bench_speed` share: the device and the run sizes."""
    from pear_edge.eval.speed import DEVICE_DEFAULTS

    cpu, gpu = DEVICE_DEFAULTS["cpu"], DEVICE_DEFAULTS["cuda"]
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): the GPU when nvidia-smi lists one and every backend can use it "
                        "(llama.cpp CUDA build, onnxruntime-gpu, torch with CUDA), else the CPU; cuda: refuse "
                        "to run without")
    p.add_argument("--prompt-tokens", type=int, help=f"prompt length (default: {cpu['prompt_tokens']} on the CPU, "
                                                     f"{gpu['prompt_tokens']} on a GPU)")
    p.add_argument("--gen-tokens", type=int, help=f"decoded tokens (default: {cpu['gen_tokens']} on the CPU, "
                                                  f"{gpu['gen_tokens']} on a GPU)")
    p.add_argument("--repeats", type=int, help=f"timed passes per run, median reported (default: {cpu['repeats']} "
                                               f"on the CPU, {gpu['repeats']} on a GPU)")


def _add_variant_options(p, model_help: str, records: int, kv_records: int, passages: int) -> None:
    """What `sweep` and `search` share: the model, the variants, and the size of the validation sets."""
    p.add_argument("--model", default="default", help=model_help)
    p.add_argument("--variants", help="a bundled variant set (a file name in eval/lab/variants/ without .json, e.g. "
                                      "sweep-smollm2, search-smollm2, realtext-smollm2) or a JSON file "
                                      "{name: {setting: value}} (default: sweep-smollm2)")
    p.add_argument("--only", help="comma-separated variant names to run")
    p.add_argument("--records", type=int, default=records, help="validation MDQA records (default: %(default)s)")
    p.add_argument("--num-docs", type=int, default=10)
    p.add_argument("--positions", type=int_list, default=(0, 4, 9))
    p.add_argument("--kv-records", type=int, default=kv_records)
    p.add_argument("--kv-pairs", type=int, default=8)
    p.add_argument("--passages", type=int, default=passages, help="pydoc passages for the perplexity guard")
    p.add_argument("--real", help="NQ-open oracle JSONL(.gz) (e.g. ../shared/data/nq-open-dev.jsonl.gz): also score "
                                  "real questions from its validation half, random distractors, both wordings")
    p.add_argument("--real-records", type=int, default=40, help="real validation questions (default: %(default)s)")


def _shard_option(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pairs(args) -> list[tuple[str, str]]:
    if len(args.base) != len(args.pear):
        raise PearError(f"give one --pear per --base (got {len(args.base)} --base and {len(args.pear)} --pear)")
    return list(zip(args.base, args.pear))


def build_examples(args) -> tuple[list, int]:
    """The examples `args` ask for, and the documents per MDQA prompt: --num-docs, else as many as the records
    of --data hold (the fewest of them), else ten."""
    from pear_edge.data import tasks
    from pear_edge.data.kv import generate_kv
    from pear_edge.data.tasks import default_positions, documents_per_record, parse_kv

    num_docs = DEFAULT_NUM_DOCS if args.num_docs is None else args.num_docs
    if args.task == "perplexity":
        return tasks.pydoc_passages(args.passages, seed=args.seed), num_docs
    if args.task == "kv":
        if args.data:
            records = tasks.load_kv(args.data)
        else:
            records = [parse_kv(r) for r in generate_kv(args.count, args.num_pairs or 12, seed=args.seed)]
        slots = args.num_pairs or len(records[0].pairs)
        return tasks.kv_examples(records, args.positions or default_positions(slots), args.num_pairs,
                                 args.limit), num_docs
    if args.data:
        records = tasks.load_mdqa(args.data)
        if args.num_docs is None:
            num_docs = documents_per_record(records[:args.limit] if args.limit else records)
    elif args.task == "counterfactual":
        records = tasks.counterfactual_records(args.count, args.split, num_docs, args.seed)
    else:
        raise PearError("--task mdqa needs --data FILE.jsonl (NQ-open / lost-in-the-middle format)")
    return tasks.mdqa_examples(records, num_docs, args.positions or default_positions(num_docs), args.seed,
                               args.distractors, args.limit, template=load_template(args.template)), num_docs


def cmd_eval(args) -> int:
    from pear_edge.base.atomic import Kind, check_output
    from pear_edge.edits.coefficients import Coefficients

    from pear_edge.eval.backends import TorchBackend, check_backend_input, infer_kind, open_backend
    from pear_edge.eval.harness import paired_run
    from pear_edge.eval.report import Run

    if not args.task or not args.output:
        raise PearError("pear-edge eval needs --task and -o OUTDIR (or a subcommand: make-data, speed)")
    pairs = _pairs(args)
    if bool(args.model) != bool(args.coefficients):
        raise PearError("--model and --coefficients go together (torch, hooked PEAR)")
    if not pairs and not args.model:
        raise PearError("give --base BASE --pear PATCHED, or --model SPEC --coefficients C")
    inputs = [x for pair in pairs for x in pair] + [args.data, args.coefficients]
    check_output(args.output, *inputs, kind=Kind.REPORTS)
    cache = None if args.answers_cache is None else check_output(args.answers_cache, *inputs, args.model,
                                                                  kind=Kind.REPORTS)
    examples, num_docs = build_examples(args)
    template = load_template(args.template)
    paths = {spec: check_backend_input(spec, args.backend) for pair in pairs for spec in pair}
    settings = {"task": args.task, "data": args.data, "num_docs": num_docs, "seed": args.seed,
                "distractors": args.distractors, "template": template_record(template), "limit": args.limit,
                "prompt_format": args.prompt_format, "examples": len(examples)}
    shard = _open_shard(args, settings, pairs, examples) if args.shard else None
    if shard:
        examples = [examples[k] for k in shard_indices(len(examples), shard.index, shard.count)]
    progress = not args.quiet
    runs = []

    def run(label, open_base, open_pear, keys):
        """Base vs PEAR; `keys`: each side's answers-cache key (None without --answers-cache)."""
        j = len(runs)
        opened, kept = {}, set()

        def opener(side, open_real):
            def open_side():
                backend = opened[side] = cached_backend(keys[side]["kind"], open_real, load_side(cache, keys[side]),
                                                        keep=_keeper(cache, f"{label} {SIDES[side]}"))
                return warn_format(backend, template)
            return open_side if cache else lambda: warn_format(open_real(), template)

        def record(side, results):
            if shard:  # a shard keeps each side as soon as it is done
                shard.record(j, label, side, results)
                save_shard(args.output, shard)
            if cache:
                _keep_answers(cache, f"{label} {SIDES[side]}", opened[side])
                kept.add(side)

        try:
            base, pear, comparison = paired_run(opener(0, open_base), opener(1, open_pear), examples, args.task,
                                                args.max_tokens, progress, settings, batch=args.batch,
                                                seed=args.seed, done=shard.cached(j, label) if shard else (None, None),
                                                on_result=record if shard or cache else None)
        except KeyboardInterrupt:  # Ctrl-C or a signal: what was answered is whole, keep it for the next run
            for side, backend in opened.items():
                if backend.answered and side not in kept:
                    _keep_answers(cache, f"{label} {SIDES[side]}", backend)
            raise
        runs.append(Run(label, base, pear, comparison))
        if not shard:
            _print_comparison(label, comparison)

    if args.model:
        from pear_edge.runtime.models import load_model

        coeffs = Coefficients.load(args.coefficients)
        loaded = load_model(args.model)
        mode = "folded" if args.fold else "hooked"
        pear_loaded = load_model(args.model) if args.fold else loaded
        fmt = args.prompt_format
        path = check_backend_input(args.model, "torch") if cache else None
        run(f"torch:{loaded.name} {mode}", lambda: TorchBackend(loaded, prompt_format=fmt, threads=args.threads),
            lambda: TorchBackend(pear_loaded, coeffs, fold=args.fold, prompt_format=fmt, threads=args.threads),
            (_side_key(args, cache, args.model, "torch", path),
             _side_key(args, cache, args.model, "torch", path, args.coefficients, mode)))
    base_names = Counter(Path(b).name for b, _ in pairs)
    for base, pear in pairs:
        kind = args.backend
        # one base against several PEAR files: each run is named by both, or the report cannot tell them apart
        against = f" vs {Path(pear).name}" if base_names[Path(base).name] > 1 else ""
        run(f"{kind or infer_kind(base)}:{Path(base).name}{against}",
            lambda: open_backend(base, kind, threads=args.threads, prompt_format=args.prompt_format),
            lambda: open_backend(pear, kind, threads=args.threads, prompt_format=args.prompt_format),
            tuple(_side_key(args, cache, spec, kind or infer_kind(spec), paths[spec]) for spec in (base, pear)))
    if shard:
        print(f"wrote shard {shard.index}/{shard.count} ({len(examples)} of {settings['examples']} examples) to "
              f"{save_shard(args.output, shard)}")
        return 0
    _write_runs(args.output, runs, settings)
    return 0


def _side_key(args, cache: Path | None, spec: str, kind: str, path: Path, coefficients: str | None = None,
              mode: str = "plain") -> dict | None:
    """The answers-cache key of the side that answers with model `spec` (at `path`), or None without a cache."""
    if cache is None:
        return None
    return side_key(kind, spec, content_sha256(path), args.prompt_format, thread_setting(args.threads, os.cpu_count()),
                    runtime_versions(kind), content_sha256(coefficients) if coefficients else None, mode)


def _keeper(folder: Path, side: str):
    """keep(answers) for a side while it answers: merged into `folder`, or, if that fails, one warning and no
    further tries (the side is saved once more when done, which warns again if it still cannot)."""
    failed = False

    def keep(answers) -> None:
        nonlocal failed
        if failed:
            return
        try:
            save_side(folder, answers)
        except PearError as exc:
            failed = True
            print(f"pear-edge: warning: {exc}; {side}'s answers are kept only once it is done", file=sys.stderr)
    return keep


def _keep_answers(folder: Path, side: str, backend) -> None:
    """Say what the answers cache gave `side` (a CachedBackend that has answered), and add what it answered.
    A cache that cannot be written costs the next run its reuse, not this run its report."""
    print(f"pear-edge: note: answers cache: {side}: {backend.reused} answer(s) reused, {backend.answered} new",
          file=sys.stderr)
    if backend.answered:
        try:
            save_side(folder, backend.side)
        except PearError as exc:
            print(f"pear-edge: warning: {exc}; {side}'s answers are not cached", file=sys.stderr)


def _open_shard(args, settings: dict, pairs: list[tuple[str, str]], examples):
    """The shard this `eval --shard I/N` fills in -o (its earlier file when it is of the same run)."""
    index, count = args.shard
    if index > len(examples):
        raise PearError(f"--shard {index}/{count}: the run has only {len(examples)} examples; use N <= "
                        f"{len(examples)}")
    answering = {"model": args.model, "coefficients": args.coefficients, "fold": args.fold,
                 "pairs": [list(p) for p in pairs], "backend": args.backend, "max_tokens": args.max_tokens,
                 "batch": args.batch}
    shard, reused = open_shard(Path(args.output), index, count,
                               run_identity(settings, answering, [e.id for e in examples], count))
    if reused:
        print(f"pear-edge: note: shard {index}/{count}: reusing {reused} finished side(s) from "
              f"{Path(args.output)}", file=sys.stderr)
    return shard


def _write_runs(output: str, runs: list, settings: dict) -> None:
    """The gains kept across runs, printed, and the report written: what `eval` and `eval merge` end with."""
    from pear_edge.eval.report import gains_kept, write_report

    for kept in (k for k in gains_kept(runs) if k.label != k.reference):
        share = "" if kept.share is None else f" ({kept.share:.0%} of it)"
        print(f"{kept.label}: Δ {100 * kept.delta:+.1f} pt vs {kept.reference}{share}, difference "
              f"{100 * kept.difference:+.1f} pt [{100 * kept.ci_low:+.1f}, {100 * kept.ci_high:+.1f}]")
    written = write_report(output, runs, {"settings": settings})
    print("wrote " + ", ".join(map(str, written)))


def cmd_merge(args) -> int:
    from pear_edge.base.atomic import Kind, check_output

    folders = [Path(f) for f in args.shards]
    check_output(args.output, *folders, kind=Kind.REPORTS)
    settings, runs = merge_shards([(f / SHARD_FILE, parse_shard_file(f / SHARD_FILE)) for f in folders])
    for run in runs:
        _print_comparison(run.label, run.comparison)
    _write_runs(args.output, runs, settings)
    return 0


def cmd_publish(args) -> int:
    from pear_edge.base.atomic import Kind, check_output, write_text_atomic
    from pear_edge.eval.publish import claim_numbers, copy_companions, published

    report, out = Path(args.report), Path(args.output)
    source = report / "results.json"
    check_output(out, report, kind=Kind.REPORTS)
    if out.exists() and any(out.iterdir()):
        raise PearError(f"output folder {out} is not empty; publish writes into a new or empty folder")
    if not source.is_file():
        raise PearError(f"{report} holds no results.json; give an `eval` or `eval merge` output folder")
    try:
        doc = published(json.loads(source.read_text(encoding="utf-8")))
        claims = [{"label": run["label"], **claim_numbers(doc, j, str(out / "results.json"))}
                  for j, run in enumerate(doc["runs"]) if run.get("comparison")]
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise PearError(f"{source} is not a readable eval report ({type(exc).__name__}: {exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(out / "results.json", text), *copy_companions(report, out)]
    for claim in claims:
        print(json.dumps(claim))
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


def warn_format(backend, template):
    """`backend`, after one `pear-edge: warning:` line on stderr for each way the coefficients it runs with
    were calibrated on other prompts: another prompt format than the one it is about to prompt in, another
    template than `template` (pear_edge.data.templates.template_mismatch)."""
    record = backend.calibration_record()
    for message in (format_mismatch(record, backend.prompt_format, backend.name),
                    template_mismatch(record, template, backend.name)):
        if message:
            print(f"pear-edge: warning: {message}", file=sys.stderr)
    return backend


def _print_comparison(label: str, cmp) -> None:
    o = cmp.overall
    if o.metric == "perplexity":
        print(f"{label}: perplexity base {o.base:.3f}, PEAR {o.pear:.3f}, Δ {o.delta:+.3f} "
              f"[{o.ci_low:+.3f}, {o.ci_high:+.3f}], sign test p={o.p_value:.3g} (n={o.n})")
        return
    print(f"{label}: accuracy base {o.base:.1%}, PEAR {o.pear:.1%}, Δ {100 * o.delta:+.1f} pt "
          f"[{100 * o.ci_low:+.1f}, {100 * o.ci_high:+.1f}], McNemar p={o.p_value:.3g} (n={o.n})")
    for pos, r in cmp.by_position.items():
        print(f"  gold @{pos}: base {r.base:.1%}  PEAR {r.pear:.1%}  Δ {100 * r.delta:+.1f} pt  p={r.p_value:.3g}")
    gap = cmp.position_gap()
    if gap:
        print(f"  position gap (best - worst): base {100 * gap[0]:.1f} pt -> PEAR {100 * gap[1]:.1f} pt")


def cmd_make_data(args) -> int:
    from pear_edge.base.atomic import check_output_path

    from pear_edge.data.counterfactual import generate_counterfactual
    from pear_edge.data.jsonl import write_jsonl
    from pear_edge.data.kv import generate_kv

    out = check_output_path(args.output, *[x for x in (args.source, args.corpus) if x])
    if args.task == "corpus":
        from pear_edge.eval.realqa import as_jsonl_records, corpus_records

        if not args.corpus:
            raise PearError("make-data --task corpus needs --corpus DIR|index.db")
        records = as_jsonl_records(corpus_records(args.corpus, args.count or 100, args.num_docs,
                                                  args.distractors, args.seed))
        write_jsonl(out, records)
        print(f"wrote {len(records)} questions about the held-out files of {args.corpus} ({args.distractors} "
              f"distractors, {args.num_docs} documents) to {out}")
        return 0
    if args.task == "nq":
        from pear_edge.eval.realqa import as_jsonl_records, load_half, with_distractors

        if not args.source:
            raise PearError("make-data --task nq needs --source NQ.jsonl(.gz) (records with gold passages)")
        records = as_jsonl_records(with_distractors(load_half(args.source, args.half), args.num_docs,
                                                    args.distractors, args.seed))
        records = records[: args.count] if args.count else records
        write_jsonl(out, records)
        print(f"wrote {len(records)} {args.half}-half records ({args.distractors} distractors, "
              f"{args.num_docs} documents) to {out}")
        return 0
    args.count = args.count or 200
    if args.task == "counterfactual":
        records = generate_counterfactual(args.count, args.split, args.seed, args.num_distractors)
    else:
        records = generate_kv(args.count, args.num_pairs, args.key_style, args.key_length, args.value_length,
                              args.seed)
    write_jsonl(out, list(records))
    print(f"wrote {args.count} {args.task} records to {out}")
    return 0


def cmd_speed(args) -> int:
    from pear_edge.base.atomic import Kind, check_output

    from pear_edge.eval.backends import infer_kind
    from pear_edge.eval.speed import Pair, measure_pairs, resolve_device, speed_markdown, write_speed_report

    pairs = _pairs(args)
    if not pairs:
        raise PearError("give --base BASE --pear PATCHED (a .gguf file, ONNX folder or Hugging Face folder each)")
    check_output(args.output, *[x for pair in pairs for x in pair], kind=Kind.REPORTS)
    specs = []
    for base, pear in pairs:
        kind = infer_kind(base)
        if kind == "torch" and not (Path(base) / "config.json").is_file():
            raise PearError(f"{base}: speed runs compare .gguf files, ONNX folders or Hugging Face model folders")
        specs.append(Pair(f"{kind}:{Path(base).name}", kind, base, pear))
    device = resolve_device(args.device, [p.kind for p in specs])
    report = measure_pairs(specs, args.rounds, args.prompt_tokens, args.gen_tokens, args.threads, not args.quiet,
                           device=device, repeats=args.repeats)
    print(speed_markdown(report))
    print("wrote " + ", ".join(map(str, write_speed_report(report, args.output))))
    return 0


def cmd_tradeoff(args) -> int:
    from pear_edge.base.atomic import Kind, check_output

    from pear_edge.eval.lab.tradeoff import markdown, parse_point, write_tradeoff

    if not (args.bound >= 0 and math.isfinite(args.bound)):
        raise PearError(f"--bound must be a finite percentage >= 0 (got {args.bound})")
    if args.time_target is not None and not (args.time_target > 0 and math.isfinite(args.time_target)):
        raise PearError(f"--time-target must be positive seconds (got {args.time_target})")
    points = [parse_point(spec) for spec in args.point]  # reads the reports only: a bad one is refused first
    check_output(args.output, *[f for p in points for f in p.files], kind=Kind.REPORTS)
    written = write_tradeoff(args.output, points, args.bound, args.time_target)
    print(markdown(points, args.bound), end="")
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _variant_run(args):
    """What `search` and `sweep` share: the variants and the validation sets."""
    from pear_edge.base.atomic import Kind, check_output

    from pear_edge.eval.lab.variants import load_variants, validation_sets

    check_output(args.output, args.variants, args.real, kind=Kind.REPORTS)  # before any model or data work
    variants = load_variants(args.variants, args.only)
    sets = validation_sets(args.records, args.num_docs, tuple(args.positions), args.kv_records, args.kv_pairs,
                           args.passages, seed=args.seed, real=args.real, real_records=args.real_records)
    return variants, sets


def cmd_search(args) -> int:
    from pear_edge.runtime.models import load_model

    from pear_edge.eval.lab.variants import TorchScorer, run_variants

    variants, sets = _variant_run(args)
    loaded = load_model(args.model, device=args.device)
    scorer = TorchScorer(loaded)
    rows = run_variants(loaded, variants, Path(args.output), sets, scorer, seed=args.seed, progress=not args.quiet)
    print(f"wrote {Path(args.output) / 'sweep.md'} ({len(rows)} variants, {scorer.label})")
    return 0


def cmd_sweep(args) -> int:
    from pear_edge.runtime.models import load_model, resolve_spec

    from pear_edge.eval.lab.variants import LlamaCppScorer, run_variants

    base = resolve_spec(args.model)
    if base.suffix.lower() != ".gguf":
        raise PearError("sweep patches the model's GGUF: give 'default', 'gemma3-270m' or a .gguf file "
                        "(export an HF folder with `pear-edge export gguf` first)")
    variants, sets = _variant_run(args)
    scorer = LlamaCppScorer(base, args.threads, progress=not args.quiet)
    rows = run_variants(load_model(args.model), variants, Path(args.output), sets, scorer, seed=args.seed,
                        progress=not args.quiet)
    print(f"wrote {Path(args.output) / 'sweep.md'} ({len(rows)} variants, {scorer.label})")
    return 0
