"""`pear-edge demo`, the project's main job on the embedded default model, offline:

a quick paired summary first (a few real NQ-open validation questions, base vs the shipped coefficients
patched into the shipped Q4_1 GGUF, by gold position, with one example: no calibration, the first result
within minutes) -> calibrate (the fast budget unless told otherwise) -> patch the shipped Q4_1 GGUF -> one
base-vs-PEAR answer side by side -> export base and PEAR at other quantizations and ONNX int8 (both on
request) -> evaluate base vs PEAR on each (counterfactual multi-document QA, test split; perplexity on
shipped text) -> speed/memory ratios (too noisy ones said so) -> one summary table and plots.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from pear_edge.base.atomic import Kind, check_output, report_folder, write_text_atomic
from pear_edge.base.errors import PearError
from pear_edge.results import shipped_coefficients
from pear_edge.calibration.options import int_list

from pear_edge.eval.backends import open_backend
from pear_edge.eval.harness import paired_run
from pear_edge.eval.report import Run, markdown, write_report
from pear_edge.eval.speed import Pair, measure_pairs, speed_markdown, write_speed_report
from pear_edge.data.tasks import counterfactual_records, mdqa_examples, pydoc_passages


def _step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def _pair_results(base_path: str, pear_path: str, label: str, sets: dict, progress: bool) -> list[Run]:
    runs = []
    for task, examples in sets.items():
        base, pear, comparison = paired_run(lambda: open_backend(base_path), lambda: open_backend(pear_path),
                                            examples, task, progress=progress)
        runs.append(Run(f"{label} · {task}", base, pear, comparison))
    return runs


def first_answer(base_path: str, pear_path: str, example, elapsed: float) -> str:
    """One test-split question (gold in the middle), base and PEAR (the calibrated coefficients) answers side
    by side in llama.cpp, as markdown."""
    from pear_edge.eval.harness import evaluate

    answers = []
    for path in (base_path, pear_path):
        backend = open_backend(path)
        try:
            answers.append(evaluate(backend, [example], "first answer", progress=False).items[0])
        finally:
            backend.close()
    lines = example.prompt.splitlines()
    question = next((l for l in reversed(lines) if l.startswith("Question:")), lines[-1]).strip()
    rows = "\n".join(f"| {name} | {item.output.strip().replace('|', '/').replace(chr(10), ' ')} | "
                      f"{'yes' if item.correct else 'no'} |" for name, item in zip(("base", "PEAR"), answers))
    return (f"One counterfactual question, {elapsed:.0f} s after the start: {question} (gold document {example.position + 1}; "
            f"accepted: {', '.join(example.answers)})\n\n| model | answer | correct |\n|---|---|---|\n{rows}\n")


SHIPPED_REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nq-open-dev.jsonl.gz"


def quick_examples(real: str | Path, records: int, num_docs: int, seed: int):
    """`records` validation-half NQ-open questions with random distractors, the gold first, in the middle
    and last: a handful of paired examples small enough for the first result."""
    from pear_edge.eval.realqa import real_examples

    positions = tuple(dict.fromkeys((0, num_docs // 2, num_docs - 1)))
    return real_examples(real, "validation", records, num_docs, positions, mode="random", seed=seed)


def quick_summary(run: Run, examples, elapsed: float) -> str:
    """The demo's first result as markdown: paired accuracy by gold position and one example (one where the
    models disagree when there is one)."""
    pairs = list(zip(examples, run.base.items, run.pear.items))
    example, base_item, pear_item = next((t for t in pairs if t[1].correct != t[2].correct), pairs[0])
    table = "\n".join(l for l in markdown([run]).splitlines() if not l.startswith("### ")).strip()
    lines = example.prompt.splitlines()
    question = next((l for l in reversed(lines) if l.startswith("Question:")), lines[-1]).strip()
    rows = "\n".join(f"| {name} | {item.output.strip().replace('|', '/').replace(chr(10), ' ')} | "
                      f"{'yes' if item.correct else 'no'} |" for name, item in (("base", base_item), ("PEAR", pear_item)))
    return (f"First result, {elapsed:.0f} s after the start: {run.label}\n\n{table}\n\n"
            f"Example: {question} (gold document {example.position + 1}; accepted: {', '.join(example.answers)})"
            f"\n\n| model | answer | correct |\n|---|---|---|\n{rows}\n")


def run_quick(outdir: Path, real: Path, records: int, num_docs: int, seed: int, start: float,
              progress: bool) -> str:
    """Base vs the shipped coefficients in the shipped Q4_1 GGUF (the existing patch path) on a few real
    validation questions; writes and returns the quick summary."""
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.converters.gguf_patch import patch_gguf
    from pear_edge.runtime.models import default_gguf_path

    examples = quick_examples(real, records, num_docs, seed)
    base = default_gguf_path()
    pear = outdir / "quick" / "SmolLM2-135M-Instruct-shipped-pear-Q4_1.gguf"
    pear.parent.mkdir(parents=True, exist_ok=True)
    patch_gguf(base, Coefficients.load(shipped_coefficients("default")), pear, progress=False)
    print(f"patched the shipped coefficients into {pear} ({time.perf_counter() - start:.0f} s); "
          f"{len(examples)} examples x base and PEAR", flush=True)
    label = f"llama.cpp Q4_1 · NQ-open validation, {records} questions x {num_docs} documents"
    base_res, pear_res, comparison = paired_run(lambda: open_backend(str(base)), lambda: open_backend(str(pear)),
                                                examples, "nq-open", progress=progress)
    text = quick_summary(Run(label, base_res, pear_res, comparison), examples, time.perf_counter() - start)
    write_text_atomic(outdir / "quick-summary.md", text)
    return text


def run_demo(outdir: Path, coefficients: str | None, quants: list[str], onnx: bool, records: int,
             num_docs: int, positions: tuple[int, ...], passages: int, speed_rounds: int, seed: int,
             progress: bool = True, budget: str = "fast", real: str | None = None, quick_records: int = 6,
             quick_docs: int = 5) -> Path:
    from pear_edge.calibration.calibrate import calibrate, profile_for, with_budget
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.converters.gguf_export import export_gguf
    from pear_edge.converters.gguf_patch import patch_gguf
    from pear_edge.runtime.models import default_gguf_path, load_model


    start = time.perf_counter()
    check_output(outdir, coefficients, kind=Kind.REPORTS)
    report_folder(outdir)  # the demo's own folder: its sub-folders below are replaced on a re-run
    base_q41 = default_gguf_path()
    coeffs_path = outdir / "coeffs.json"
    quick = ""
    if quick_records:
        _step(f"1/7 quick paired summary: {quick_records} NQ-open validation questions x 3 gold positions, "
              f"{quick_docs} documents, base vs the shipped coefficients (llama.cpp Q4_1, no calibration)")
        source = Path(real) if real else SHIPPED_REAL
        missing = [p for p in (None if real else source,) if p and not p.is_file()]
        if missing:  # an installed wheel ships neither: the demo goes on without its quick summary
            print(f"pear-edge: note: {', '.join(map(str, missing))} not beside this installation: no quick summary",
                  file=sys.stderr)
        else:
            quick = run_quick(outdir, source, quick_records, quick_docs, seed, start, progress)
            print(quick, flush=True)
    if coefficients:
        coeffs = Coefficients.load(coefficients)
        coeffs.save(coeffs_path)
    else:
        _step(f"2/7 calibrate PEAR on SmolLM2-135M-Instruct (the default recipe, {budget} budget)")
        from pear_edge.runtime.timing import cost_summary, run_cost

        calibration_start = time.perf_counter()
        coeffs = calibrate(load_model("default"), with_budget(profile_for("default"), budget), progress=progress)
        coeffs.calibration["cost"] = run_cost(calibration_start)  # as `pear-edge calibrate` records it
        coeffs.save(coeffs_path)
        print(f"calibrated in {cost_summary(coeffs.calibration['cost'])}")
    print(coeffs.summary())

    _step("3/7 patch the shipped Q4_1 GGUF in place (exact block-scale edits)")
    pairs = [("llama.cpp Q4_1 (as shipped)", str(base_q41), str(outdir / "SmolLM2-135M-Instruct-pear-Q4_1.gguf"))]
    patch_gguf(base_q41, coeffs, pairs[0][2], progress=progress)

    _step("4/7 one question, base and PEAR side by side (llama.cpp Q4_1)")
    middle = num_docs // 2
    example = mdqa_examples(counterfactual_records(1, "test", num_docs, seed), num_docs, (middle,), seed)[0]
    first = first_answer(pairs[0][1], pairs[0][2], example, time.perf_counter() - start)
    write_text_atomic(outdir / "first-answer.md", first)
    print(first, flush=True)

    if quants:
        _step(f"5/7 export base and PEAR GGUFs at {', '.join(quants)} (llama.cpp converter + quantize)")
        base_files = export_gguf("default", None, quants, outdir / "gguf-base", progress=progress, replace=True)
        pear_files = export_gguf("default", str(coeffs_path), quants, outdir / "gguf-pear", progress=progress,
                                 replace=True)
        pairs += [(f"llama.cpp {q.upper()}", str(b), str(p)) for q, b, p in zip(quants, base_files, pear_files)]
    if onnx:
        from pear_edge.converters.onnx_export import export_onnx

        _step("5/7 export base and PEAR ONNX int8 (optimum + onnxruntime)")
        export_onnx("default", None, outdir / "onnx-base-int8", "int8", progress=progress, replace=True)
        export_onnx("default", coeffs_path, outdir / "onnx-pear-int8", "int8", progress=progress,
                    replace=True)
        pairs.append(("onnxruntime int8", str(outdir / "onnx-base-int8"), str(outdir / "onnx-pear-int8")))

    _step(f"6/7 evaluate base vs PEAR: counterfactual MDQA (test split, {records} records x positions "
          f"{list(positions)}, {num_docs} documents) and perplexity on {passages} Python-docs passages")
    sets = {"counterfactual": mdqa_examples(counterfactual_records(records, "test", num_docs, seed), num_docs,
                                            positions, seed)}
    if passages:
        sets["perplexity"] = pydoc_passages(passages, seed=seed)
    runs = []
    for label, base, pear in pairs:
        runs += _pair_results(base, pear, label, sets, progress)
    written = write_report(outdir, runs, {"coefficients": str(coeffs_path)})

    _step("7/7 speed and memory, base vs PEAR interleaved (llama.cpp)")
    gguf_pairs = [Pair(label, "llamacpp", b, p) for label, b, p in pairs if b.endswith(".gguf")]
    speed = measure_pairs(gguf_pairs, rounds=speed_rounds, prompt_tokens=256, gen_tokens=32, progress=progress)
    written += write_speed_report(speed, outdir / "speed")

    summary = (f"# pear-edge demo\n\nCoefficients: `{coeffs_path}` ({len(coeffs.heads)} heads). "
               f"Wall time {time.perf_counter() - start:.0f} s.\n\n{quick}\n{first}\n## Accuracy (paired, base vs PEAR)\n\n"
               f"{markdown(runs)}\n## Speed and memory (PEAR / base)\n\n{speed_markdown(speed)}")
    path = write_text_atomic(outdir / "summary.md", summary)
    print("\n" + summary)
    print("wrote " + ", ".join(str(p) for p in [path, *written]))
    return path


def add_demo_command(sub) -> None:
    from pear_edge.calibration.recipes import BUDGETS

    p = sub.add_parser("demo", help="the whole pipeline on the embedded default model, offline (minutes)",
                       description="a quick paired summary on real questions (shipped coefficients) -> calibrate -> patch the shipped Q4_1 GGUF -> one answer, base and PEAR side by "
                                   "side -> export other quantizations (on request) -> evaluate base vs PEAR on "
                                   "each -> speed ratios -> summary table and plots.")
    p.add_argument("-o", "--output", default="out/demo", help="output folder (default: %(default)s)")
    p.add_argument("--coefficients", help="use these coefficients instead of calibrating")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="fast",
                   help="calibration budget (pear-edge calibrate --budget; default: %(default)s, a few minutes)")
    p.add_argument("--quants", default="", help="extra GGUF types to export and compare, comma-separated "
                                                 "(e.g. q8_0,q4_k_m; default: none, the shipped Q4_1 only)")
    p.add_argument("--onnx", action="store_true", help="also export and compare ONNX int8 (slow)")
    p.add_argument("--records", type=int, default=10, help="test-split MDQA records (x positions; default: %(default)s)")
    p.add_argument("--num-docs", type=int, default=10)
    p.add_argument("--positions", type=int_list, default=(0, 4, 9), help="gold positions (default: 0,4,9)")
    p.add_argument("--passages", type=int, default=4, help="perplexity passages (0 = skip)")
    p.add_argument("--speed-rounds", type=int, default=4)
    p.add_argument("--real", help="NQ-open oracle JSONL(.gz) for the quick summary (default: the shipped "
                                  "../shared/data/nq-open-dev.jsonl.gz, validation half)")
    p.add_argument("--quick-records", type=int, default=6,
                   help="questions in the quick summary, each at 3 gold positions (0 = skip; default: %(default)s)")
    p.add_argument("--quick-docs", type=int, default=5, help="documents per quick-summary prompt (default: %(default)s)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    if args.quick_records < 0 or args.quick_docs < 2:
        raise PearError("--quick-records must be at least 0 and --quick-docs at least 2")
    run_demo(Path(args.output), args.coefficients, quants, args.onnx, args.records, args.num_docs, args.positions,
             args.passages, args.speed_rounds, args.seed, progress=not args.quiet, budget=args.budget,
             real=args.real, quick_records=args.quick_records, quick_docs=args.quick_docs)
    return 0
