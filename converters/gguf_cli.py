"""GGUF commands: `export gguf`, `patch-gguf`, and `verify` for .gguf files."""
from __future__ import annotations

from pathlib import Path

from pear_edge.cli.commands import add_force_option


def cmd_export(args) -> int:
    from pear_edge.converters.gguf_export import export_gguf, parse_quants

    quants = parse_quants(args.quant)
    for path in export_gguf(args.model, args.coefficients, quants, args.output, progress=not args.quiet,
                            replace=args.force):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_patch(args) -> int:
    from pear_edge.base.atomic import check_output_path
    from pear_edge.edits.coefficients import Coefficients

    from pear_edge.converters.gguf_patch import patch_gguf

    check_output_path(args.output, args.input, args.coefficients)
    coeffs = Coefficients.load(args.coefficients)
    report = patch_gguf(args.input, coeffs, args.output, progress=not args.quiet)
    methods = ", ".join(f"{m} x{n}" for m, n in report["methods"].items())
    print(f"patched {coeffs.describe_edits()} in {len(report['tensors'])} tensors ({methods}; "
          f"{report['match']} model match); max relative error {report['max_rel_error']:.2e}, "
          f"max RMS relative error {report['max_rms_rel_error']:.2e}")
    print(f"wrote {Path(args.output)}")
    return 0


def add_export_parser(export_sub) -> None:
    p = export_sub.add_parser("gguf", help="fold, convert with llama.cpp's converter, quantize -> GGUF files")
    p.add_argument("--model", default="default", help="SPEC of the base model (see `calibrate --model`)")
    p.add_argument("--coefficients", help="coefficients JSON (omit to export the unpatched base model, "
                                           "the fair baseline for each quantization type)")
    p.add_argument("--quant", default="f16,q8_0,q4_k_m",
                   help="comma-separated llama.cpp types: f32,f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,q2_k,"
                        "q3_k_s/m/l,q4_k_s/m,q5_k_s/m,q6_k (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="output folder (one .gguf per quantization)")
    add_force_option(p)
    p.set_defaults(func=cmd_export)


def add_commands(sub) -> None:
    p = sub.add_parser("patch-gguf", help="fold coefficients into an existing GGUF (edits only the attn_output "
                                          "columns, and attn_q/attn_k columns, the coefficients name)")
    p.add_argument("input", help="unpatched .gguf file")
    p.add_argument("--coefficients", required=True, help="coefficients JSON for this model")
    p.add_argument("-o", "--output", required=True, help="patched .gguf file")
    p.set_defaults(func=cmd_patch)


def verify_format():
    from pear_edge.converters.gguf_verify import GgufFormat

    return GgufFormat()
