"""`pear-edge` command line. Every command exits 0 on success, or prints one line
`pear-edge: error: ...` to stderr and exits 2 on bad input."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from pear_edge.base import atomic
from pear_edge.base.chatter import release_stderr
from pear_edge.base.errors import PearError
from pear_edge.calibration.options import add_options
from pear_edge.cli.commands import (ArgumentParser, Interrupted, _add_model, add_calibrate_options, add_force_option,
                                    cmd_average, cmd_fold, cmd_info, cmd_profiles, cmd_detect, cmd_train,
                                    ignore_interrupt_signals, signals_as_interrupts)
from pear_edge.converters import cli as converters_cli
from pear_edge.eval import cli as eval_cli
from pear_edge.rag import cli as rag_cli

# Modules contributing subcommands through add_commands(subparsers).
COMMAND_MODULES = (converters_cli, rag_cli, eval_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="pear-edge",
        description="PEAR for edge LLMs: find the attention heads that suppress copying from context, "
                    "re-weight them with one scalar each, and fold the scalars into the weights "
                    "(zero inference cost) for torch, llama.cpp and onnxruntime.",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("detect", help="score every head as a copy suppressor -> heads.json + heatmap PNG")
    _add_model(p, device=True)
    add_options(p, ("proxy", "detection"))
    p.add_argument("--plot-top", type=int, default=12, help="heads to outline in the heatmap")
    p.add_argument("-o", "--output", required=True, help="head scores JSON (a .png heatmap is written beside it)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("train", help="train one scalar per top-K head from heads.json -> coeffs.json")
    _add_model(p, device=True)
    p.add_argument("--heads", required=True, help="head scores JSON from `pear-edge detect`")
    add_options(p, ("proxy", "training"))
    p.add_argument("-o", "--output", required=True, help="coefficients JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="detect + train in one go -> coeffs.json (+ heads JSON/PNG beside it); "
                                         "--recipe pear (default), seal-c, positional, positional+pear, ...")
    add_calibrate_options(p)

    p = sub.add_parser("fold", help="fold coefficients into o_proj weights -> Hugging Face folder")
    _add_model(p)
    p.add_argument("--coefficients", required=True, help="coefficients JSON")
    p.add_argument("-o", "--output", required=True, help="output folder (safetensors + tokenizer + coefficients)")
    add_force_option(p)
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("average", help="the mean of coefficient files for one model (e.g. calibrations with other "
                                       "seeds) -> coeffs.json: each edit averaged, a missing one counting as 1")
    p.add_argument("files", nargs="+", metavar="COEFFS", help="coefficients JSON files, or shipped names (default, ...)")
    p.add_argument("-o", "--output", required=True, help="coefficients JSON")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("profiles", help="show the calibration settings used by default for each model")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("info", help="describe a coefficients/head-scores JSON, a model folder or a GGUF")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)

    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; `argv` None: pear-edge is the program (its own command line, its own signals)."""
    atomic.WRITTEN.clear()
    with signals_as_interrupts(restore=argv is not None):
        try:
            try:
                return _run(argv)
            finally:
                ignore_interrupt_signals()  # the command has ended: nothing may cut its one line short
        except BrokenPipeError:  # `pear-edge info F | head -1`: end quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        except PearError as exc:
            return _say(f"pear-edge: error: {exc}", 2)
        except OSError as exc:  # an environment problem nobody turned into a PearError: still one line
            where = f" ({exc.filename})" if exc.filename else ""
            return _say(f"pear-edge: error: {exc.strerror or exc}{where}", 2)
        except RecursionError:
            return _say("pear-edge: error: input nested too deeply to read", 2)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            left = (f"{len(atomic.WRITTEN)} output(s) were complete before it, the last {atomic.WRITTEN[-1]}"
                    if atomic.WRITTEN else "no output was written")
            return _say(f"pear-edge: interrupted ({signal.Signals(signum).name}); {left}", 128 + signum)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else 2
    code = args.func(args)
    sys.stdout.flush()  # a reader that went away is noticed here, inside main's handlers
    return code


def _say(line: str, code: int) -> int:
    """The failed or interrupted command's one line on stderr (library chatter held back is dropped)."""
    release_stderr()
    print(line, file=sys.stderr)
    return code
