"""Benchmark: patched/base prefill and decode speed and peak memory of the default model, measured side
by side (interleaved runs, one process each, `eval.speed`) and printed as ratios — on the GPU when one is
present and every backend asked for can use it (`--device`), else on the CPU.

    python -m pear_edge.eval.lab.bench_speed [--formats gguf,Q4_K_M,Q8_0,onnx-int8,torch] [--device auto|cpu|cuda]
                                         [--coefficients C.json | --pear PATCHED.gguf] [--rounds 8] [-o DIR]

Formats (each measured as a base/patched pair, all interleaved in one run):
  gguf              the base GGUF as it is (default: the packaged SmolLM2-135M-Instruct Q4_1) and its patched
                    twin (`pear-edge patch-gguf`'s code, or --pear)
  Q4_K_M, Q8_0, ... both of those requantized with llama.cpp's own quantizer (any `export gguf --quant` type)
  onnx-fp32, onnx-int8, onnx-int4   `pear-edge export onnx` of the base and the folded model
  torch             the base and the folded model as Hugging Face folders, run by torch (fp32)
Coefficients: --coefficients (default: the shipped default, pear_edge/results/coefficients/smollm2-135m.coeffs.json,
found from this file, not from the working directory); --pear replaces the patched GGUF only.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pear_edge.base.errors import PearError
from pear_edge.results import shipped_coefficients

SHIPPED_COEFFICIENTS = shipped_coefficients("default")
AS_IS = "gguf"
ONNX_FORMATS = {"onnx-fp32": "none", "onnx-int8": "int8", "onnx-int4": "int4"}
TORCH = "torch"
DEFAULT_FORMATS = AS_IS


def default_coefficients() -> Path:
    """The shipped SmolLM2-135M coefficients (package data, pear_edge.results)."""
    if SHIPPED_COEFFICIENTS is None:
        raise PearError("no --pear or --coefficients given, and the shipped default coefficients are missing from "
                        "this installation; pass --coefficients C.json")
    return SHIPPED_COEFFICIENTS


def parse_formats(text: str) -> list[str]:
    """'gguf,Q4_K_M,onnx-int8' -> ['gguf', 'q4_k_m', 'onnx-int8'] (GGUF quant types in lower case)."""
    from pear_edge.converters.gguf_export import QUANT_FTYPES

    formats = list(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    known = (AS_IS, *QUANT_FTYPES, *ONNX_FORMATS, TORCH)
    bad = [f for f in formats if f not in known]
    if bad or not formats:
        raise PearError(f"unknown format {', '.join(bad) or repr(text)}; choose from {AS_IS}, a llama.cpp type "
                        f"({', '.join(q.upper() for q in QUANT_FTYPES)}), {', '.join(ONNX_FORMATS)} or {TORCH}")
    return formats


def format_kind(fmt: str) -> str:
    return "onnx" if fmt in ONNX_FORMATS else TORCH if fmt == TORCH else "llamacpp"


def prepare_pairs(formats: list[str], base: Path, pear: Path | None, coefficients: Path | None, work: Path,
                  progress: bool = True):
    """Build every base/patched model the formats need inside `work`; one Pair per format."""
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.converters.gguf_export import quantize
    from pear_edge.converters.onnx_export import export_onnx

    from pear_edge.eval.speed import Pair

    def say(text: str) -> None:
        if progress:
            print(f"bench_speed: {text}", file=sys.stderr, flush=True)

    pairs = []
    if pear is None and any(format_kind(f) == "llamacpp" for f in formats):
        say(f"patching {base.name} with {coefficients.name}")
        pear = _patch(base, Coefficients.load(coefficients), work / "pear.gguf")
    for fmt in formats:
        kind = format_kind(fmt)
        if fmt == AS_IS:
            pairs.append(Pair(f"llamacpp:{base.stem}", kind, str(base), str(pear)))
        elif kind == "llamacpp":
            say(f"requantizing base and patched to {fmt.upper()} (llama.cpp's quantizer)")
            files = [work / f"{name}-{fmt.upper()}.gguf" for name in ("base", "pear")]
            for src, dst in zip((base, pear), files):
                quantize(src, dst, fmt, allow_requantize=True)
            pairs.append(Pair(f"llamacpp:{fmt.upper()}", kind, *map(str, files)))
        elif kind == "onnx":
            say(f"exporting base and folded model to ONNX ({ONNX_FORMATS[fmt]})")
            folders = [export_onnx(str(base), c, work / f"{name}-{fmt}", ONNX_FORMATS[fmt], progress=False)[0]
                       for name, c in (("base", None), ("pear", coefficients))]
            pairs.append(Pair(f"onnx:{ONNX_FORMATS[fmt]}", kind, *map(str, folders)))
        else:
            say("saving base and folded model as Hugging Face folders (torch, fp32)")
            folders = [_hf_folder(base, c, work / f"{name}-hf") for name, c in (("base", None), ("pear", coefficients))]
            pairs.append(Pair("torch:fp32", kind, *map(str, folders)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    from pear_edge.cli.commands import ArgumentParser  # usage errors as one `pear-edge: error:` line, exit 2

    from pear_edge.eval.cli import add_speed_options

    parser = ArgumentParser(prog="python -m pear_edge.eval.lab.bench_speed", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help="comma-separated (default: %(default)s)")
    parser.add_argument("--base", help="base GGUF (default: the packaged SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--pear", help="patched GGUF (default: patch --base with --coefficients)")
    parser.add_argument("--coefficients", help="folded into every patched model except --pear "
                                               "(default: the shipped default coefficients)")
    parser.add_argument("--rounds", type=int, default=8)
    add_speed_options(parser)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress")
    parser.add_argument("-o", "--output", help="also write speed.json/md/png here")
    args = parser.parse_args(argv)
    try:
        from pear_edge.base.atomic import Kind, check_output
        from pear_edge.runtime.models import default_gguf_path

        from pear_edge.eval.speed import measure_pairs, resolve_device, speed_markdown, write_speed_report

        formats = parse_formats(args.formats)
        base = Path(args.base) if args.base else default_gguf_path()
        pear = Path(args.pear) if args.pear else None
        only_gguf_with_pear = pear is not None and all(format_kind(f) == "llamacpp" for f in formats)
        coefficients = Path(args.coefficients) if args.coefficients else None
        if coefficients is None and not only_gguf_with_pear:
            coefficients = default_coefficients()
        for path in (base, pear, coefficients):
            if path is not None and not path.is_file():
                raise PearError(f"{path} not found")
        if args.output:
            check_output(args.output, base, pear, coefficients, kind=Kind.REPORTS)
        device = resolve_device(args.device, [format_kind(f) for f in formats])  # before any model is built
        with tempfile.TemporaryDirectory(prefix="pear-bench-") as tmp:
            pairs = prepare_pairs(formats, base, pear, coefficients, Path(tmp), progress=not args.quiet)
            report = measure_pairs(pairs, args.rounds, args.prompt_tokens, args.gen_tokens, args.threads,
                                   progress=not args.quiet, device=device, repeats=args.repeats)
            print(speed_markdown(report))
            if args.output:
                write_speed_report(report, args.output)
    except PearError as exc:
        print(f"pear-edge: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _patch(base: Path, coefficients, out: Path) -> Path:
    from pear_edge.converters.gguf_patch import patch_gguf

    patch_gguf(base, coefficients, out, progress=False)
    return out


def _hf_folder(base: Path, coefficients: Path | None, out: Path) -> Path:
    """The model of `base` as a Hugging Face folder, folded with `coefficients` when given."""
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.edits.fold import fold_model, save_model_folder
    from pear_edge.runtime.models import load_model

    loaded = load_model(str(base))
    coeffs = Coefficients.load(coefficients) if coefficients else None
    if coeffs is not None:
        fold_model(loaded, coeffs)
    return save_model_folder(loaded, coeffs, out)


if __name__ == "__main__":
    sys.exit(main())
