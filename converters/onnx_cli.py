"""ONNX commands: `export onnx`, `patch-onnx`, and `verify` for ONNX folders."""
from __future__ import annotations

from pear_edge.cli.commands import add_force_option

from pear_edge.converters.onnx_quantize import QUANTIZATIONS


def add_export_parser(export_sub) -> None:
    p = export_sub.add_parser(
        "onnx", help="fold coefficients in torch, export with optimum (KV cache), quantize with onnxruntime")
    p.add_argument("--model", default="default", help="SPEC of the base model (see `calibrate --model`)")
    p.add_argument("--coefficients", help="coefficients JSON (omit to export the unpatched base model)")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                   help="none = fp32; int8 = dynamic per-channel MatMul; int4 = weight-only MatMulNBits")
    p.add_argument("-o", "--output", required=True, help="output folder (ORTModelForCausalLM.from_pretrained loads it)")
    add_force_option(p)
    p.set_defaults(func=cmd_export_onnx)


def add_commands(sub) -> None:
    p = sub.add_parser("patch-onnx", help="fold coefficients into an fp32/fp16 ONNX export's o_proj weights")
    p.add_argument("source", metavar="IN_DIR", help="unpatched, unquantized ONNX export folder")
    p.add_argument("--coefficients", required=True, help="coefficients JSON")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_force_option(p)
    p.set_defaults(func=cmd_patch_onnx)


def cmd_export_onnx(args) -> int:
    from pear_edge.converters.onnx_export import export_onnx

    out, match = export_onnx(args.model, args.coefficients, args.output, args.quantize, progress=not args.quiet,
                             replace=args.force)
    what = "base model (no coefficients)" if match == "base" else f"coefficients folded ({match} model match)"
    weights = "fp32" if args.quantize == "none" else args.quantize
    print(f"exported {what}, {weights} weights -> {out}")
    return 0


def cmd_patch_onnx(args) -> int:
    from pear_edge.converters.onnx_patch import patch_onnx_folder

    out, match = patch_onnx_folder(args.source, args.coefficients, args.output, progress=not args.quiet,
                                   replace=args.force)
    print(f"patched o_proj weights ({match} model match) -> {out}")
    return 0


def verify_format():
    from pear_edge.converters.onnx_verify import OnnxFormat

    return OnnxFormat()
