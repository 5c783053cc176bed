"""CLI wiring for the converters: `export gguf|onnx`, `patch-gguf`, `patch-onnx`, `verify`.

Each format module contributes:
    add_export_parser(export_subparsers)   -> `pear-edge export <format> ...`
    add_commands(subparsers)               -> its patch-* command
    verify(args) -> int                    -> `pear-edge verify` for files of that format
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from pear_edge.errors import PearError

FORMAT_MODULES = {"gguf": "pear_edge.converters.gguf_cli", "onnx": "pear_edge.converters.onnx_cli"}


def _format_of(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".gguf":
        return "gguf"
    if path.is_dir() and any(path.glob("*.onnx")):
        return "onnx"
    raise PearError(f"{path} is neither a .gguf file nor a folder with an ONNX model")


def read_prompts(path: str | None, builtin: Sequence[str]) -> list[str]:
    """`verify --prompts`: one prompt per non-empty line, `\\n` for a newline inside a prompt;
    `builtin` when no file is given."""
    from pear_edge.inputs import read_text

    if path is None:
        return list(builtin)
    prompts = [line.replace("\\n", "\n") for line in read_text(path, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise PearError(f"prompts file {path} has no non-empty line")
    return prompts


def cmd_verify(args) -> int:
    from pear_edge.atomic import check_output_path

    fmt = _format_of(Path(args.patched))
    if args.output:  # the JSON report and its .png plot, checked before any work
        for path in (args.output, Path(args.output).with_suffix(".png")):
            check_output_path(path, args.patched, args.base, args.coefficients, args.prompts)
    return importlib.import_module(FORMAT_MODULES[fmt]).verify(args)


def add_commands(sub) -> None:
    modules = [importlib.import_module(m) for m in FORMAT_MODULES.values()]
    export = sub.add_parser("export", help="fold coefficients and export to GGUF (llama.cpp) or ONNX (onnxruntime)")
    export_sub = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for module in modules:
        module.add_export_parser(export_sub)
        module.add_commands(sub)
    p = sub.add_parser("verify", help="compare a patched GGUF/ONNX model with torch running the folded model")
    p.add_argument("patched", help="patched .gguf file or ONNX folder")
    p.add_argument("--model", default="default", help="SPEC of the base model (see `calibrate --model`)")
    p.add_argument("--coefficients", help="coefficients JSON (default: read from the patched file)")
    p.add_argument("--base", help="unpatched .gguf/ONNX folder, to show what the patch changed")
    p.add_argument("--prompts", help="text file, one prompt per line (default: built-in prompts)")
    p.add_argument("-o", "--output", help="write the report as JSON here")
    p.set_defaults(func=cmd_verify)
