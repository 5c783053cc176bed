"""Benchmark: patched/base prefill and decode speed and peak RSS of the default model in llama.cpp,
measured side by side (interleaved runs, one process each) and printed as ratios.

    python -m pear_edge.eval.bench_speed [--coefficients C.json | --pear PATCHED.gguf] [--rounds 8]

Without --pear, the default GGUF is patched with `pear-edge patch-gguf`'s code into a temporary file,
with --coefficients (default: the shipped docs/results/smollm2-135m.coeffs.json of this repository,
found from this file, not from the working directory).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pear_edge.errors import PearError

SHIPPED_COEFFICIENTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "smollm2-135m.coeffs.json"


def default_coefficients() -> Path:
    """The shipped SmolLM2-135M coefficients (present in a source checkout, not in an installed wheel)."""
    if not SHIPPED_COEFFICIENTS.is_file():
        raise PearError(f"no --pear or --coefficients given, and the shipped {SHIPPED_COEFFICIENTS.name} is not "
                        "beside this installation; pass --coefficients C.json")
    return SHIPPED_COEFFICIENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="base GGUF (default: the packaged SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--pear", help="patched GGUF (default: patch --base with --coefficients)")
    parser.add_argument("--coefficients", help="used when --pear is omitted "
                                               "(default: the shipped docs/results/smollm2-135m.coeffs.json)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-o", "--output", help="also write speed.json/md/png here")
    args = parser.parse_args(argv)
    try:
        from pear_edge.models import default_gguf_path

        from .speed import Pair, measure_pairs, speed_markdown, write_speed_report

        base = Path(args.base) if args.base else default_gguf_path()
        with tempfile.TemporaryDirectory(prefix="pear-bench-") as tmp:
            pear = Path(args.pear) if args.pear else _patch(base, args.coefficients or default_coefficients(),
                                                             Path(tmp) / "pear.gguf")
            report = measure_pairs([Pair("llamacpp", "llamacpp", str(base), str(pear))], args.rounds,
                                   args.prompt_tokens, args.gen_tokens, args.threads)
            print(speed_markdown(report))
            if args.output:
                write_speed_report(report, args.output)
    except PearError as exc:
        print(f"bench_speed: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _patch(base: Path, coefficients: str | Path, out: Path) -> Path:
    from pear_edge.coefficients import Coefficients
    from pear_edge.converters.gguf_patch import patch_gguf

    patch_gguf(base, Coefficients.load(coefficients), out, progress=False)
    return out


if __name__ == "__main__":
    sys.exit(main())
