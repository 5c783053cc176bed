"""CLI wiring for the converters: `export gguf|onnx`, `patch-gguf`, `patch-onnx`, `verify`.

Each format module contributes:
    add_export_parser(export_subparsers)   -> `pear-edge export <format> ...`
    add_commands(subparsers)               -> its patch-* command
    verify_format() -> ExportFormat        -> its files' plug-in for `pear-edge verify` (converters/verify.py)
"""
from __future__ import annotations

import importlib
from pathlib import Path

from pear_edge.base.errors import PearError
from pear_edge.base.inputs import check_regular_file

FORMAT_MODULES = {"gguf": "pear_edge.converters.gguf_cli", "onnx": "pear_edge.converters.onnx_cli"}


def _format_of(path: Path) -> str:
    if path.exists() and not path.is_dir():
        check_regular_file(path, "model")
    if path.is_file() and path.suffix.lower() == ".gguf":
        return "gguf"
    if path.is_dir() and any(path.glob("*.onnx")):
        return "onnx"
    raise PearError(f"{path} is neither a .gguf file nor a folder with an ONNX model")


def cmd_verify(args) -> int:
    from pear_edge.base.atomic import check_output_path

    from pear_edge.converters.verify import run_verify

    fmt = _format_of(Path(args.patched))
    if args.output:  # the JSON report and its .png plot, checked before any work
        for path in (args.output, Path(args.output).with_suffix(".png")):
            check_output_path(path, args.patched, args.base, args.coefficients, args.prompts)
    return run_verify(importlib.import_module(FORMAT_MODULES[fmt]).verify_format(), args.patched, model=args.model,
                      coefficients=args.coefficients, base=args.base, prompts=args.prompts, output=args.output,
                      max_abs_logit_diff=args.max_logit_diff, min_top1_agreement=args.min_top1)


def _bounded(low: float, high: float, what: str):
    """argparse type: a float in (low, high] (`low` itself allowed when it is 0)."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low < value <= high or value == low == 0) or math.isinf(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def add_commands(sub) -> None:
    from pear_edge.converters.verify import tolerances_help

    modules = [importlib.import_module(m) for m in FORMAT_MODULES.values()]
    export = sub.add_parser("export", help="fold coefficients and export to GGUF (llama.cpp) or ONNX (onnxruntime)")
    export_sub = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for module in modules:
        module.add_export_parser(export_sub)
        module.add_commands(sub)
    p = sub.add_parser("verify", help="compare a patched GGUF/ONNX model with torch running the folded model; "
                                      "exit 0 on PASS, 2 on FAIL (tolerance by weight kind, see docs/gguf.md)")
    p.add_argument("patched", help="patched .gguf file or ONNX folder")
    p.add_argument("--model", default="default", help="SPEC of the base model (see `calibrate --model`)")
    p.add_argument("--coefficients", help="coefficients JSON (default: read from the patched file)")
    p.add_argument("--base", help="unpatched .gguf/ONNX folder, to show what the patch changed")
    p.add_argument("--prompts", help="text file, one prompt per line (default: built-in prompts)")
    p.add_argument("--max-logit-diff", type=_bounded(0, float("inf"), "a number >= 0"), metavar="X",
                   help="largest max |Δlogit| that passes (default by weight kind: "
                        f"{tolerances_help('max_abs_logit_diff')})")
    p.add_argument("--min-top1", type=_bounded(0, 1, "a fraction between 0 and 1"), metavar="F",
                   help="smallest top-1 agreement that passes, 0..1 (default by weight kind: "
                        f"{tolerances_help('min_top1_agreement')})")
    p.add_argument("-o", "--output", help="write the report as JSON here (and a .png plot beside it)")
    p.set_defaults(func=cmd_verify)
