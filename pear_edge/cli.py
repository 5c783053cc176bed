"""`pear-edge` command line. Every command exits 0 on success, or prints one line
`pear-edge: error: ...` to stderr and exits 2 on bad input."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import sys
import time
from pathlib import Path

from .errors import PearError
from .options import add_options

# Modules contributing subcommands through add_commands(subparsers).
COMMAND_MODULES: list[str] = ["pear_edge.converters.cli", "pear_edge.rag.cli", "pear_edge.eval.cli"]


def _add_model(p: argparse.ArgumentParser, device: bool = False) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m', a Hugging Face folder or a .gguf file")
    if device:
        p.add_argument("--device", default="cpu",
                       help="torch device for detection and training: cpu (default), cuda, auto (a GPU if any)")


def add_force_option(p: argparse.ArgumentParser) -> None:
    """--force: replace an output folder that pear-edge wrote earlier (never any other folder)."""
    p.add_argument("--force", action="store_true",
                   help="replace the output folder if pear-edge wrote it earlier (other folders are never replaced)")


def add_calibrate_options(p: argparse.ArgumentParser, corpus: bool = True) -> None:
    """`calibrate`'s options (also behind `pear-edge rag calibrate`, which sets the corpus itself)."""
    _add_model(p, device=True)
    add_options(p, ("recipe", "proxy", "detection", "training"), skip=() if corpus else ("corpus",))
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="also answer N validation MDQA records (x3 gold positions) with base and PEAR in torch "
                        "and warn if PEAR is worse (slow: ~4 s per answer on 2 cores; default: off)")
    p.add_argument("-o", "--output", required=True, help="coefficients JSON")
    p.set_defaults(func=cmd_calibrate)


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors in the one-line format of every other error (exit 2), with a pointer to --help."""

    def error(self, message: str):
        self.exit(2, f"pear-edge: error: {message} (see: {self.prog} --help)\n")


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

    p = sub.add_parser("profiles", help="show the calibration settings used by default for each model")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("info", help="describe a coefficients/head-scores JSON, a model folder or a GGUF")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def _progress(args) -> bool:
    return not args.quiet


def _settings(args):
    """The model's calibration profile, with every option given on the command line applied on top."""
    from .calibrate import CalibrationSettings, profile_for

    return CalibrationSettings.from_args(args, base=profile_for(args.model))


def cmd_profiles(args) -> int:
    import dataclasses

    from .calibrate import PROFILES

    for name, profile in PROFILES.items():
        print(f"{name}: {json.dumps(dataclasses.asdict(profile))}")
    return 0


def cmd_detect(args) -> int:
    from .atomic import check_output_path
    from .calibrate import detect_heads
    from .models import load_model, resolve_spec

    source = resolve_spec(args.model)
    for path in (args.output, Path(args.output).with_suffix(".png")):
        check_output_path(path, source)
    settings = _settings(args)
    loaded = load_model(args.model, device=args.device)
    scores = detect_heads(loaded, settings, progress=_progress(args))
    written = scores.save(args.output, top_k=args.plot_top)
    top = ", ".join(f"L{l}H{h} {s:+.3f}" for l, h, s in scores.top(5))
    print(f"top suppressors: {top}")
    print("wrote " + ", ".join(map(str, written)))
    return 0


def cmd_train(args) -> int:
    from .atomic import check_output_path
    from .calibrate import train_from_scores
    from .detect import HeadScores
    from .models import load_model, resolve_spec

    check_output_path(args.output, resolve_spec(args.model), args.heads)
    scores = HeadScores.load(args.heads)
    loaded = load_model(args.model, device=args.device)
    _note_caveat(loaded)
    scores.model.check_matches(loaded.fingerprint(), what=args.model)
    settings = _settings(args)
    unvalidated = _warn_unvalidated(loaded, settings)
    coeffs = train_from_scores(loaded, scores, settings, progress=_progress(args))
    coeffs.calibration["validated"] = unvalidated is None
    coeffs.save(args.output)
    _print_summary(coeffs)
    print(f"wrote {args.output}")
    return 0


def cmd_calibrate(args) -> int:
    from .atomic import check_output_path
    from .calibrate import calibrate
    from .models import load_model, resolve_spec
    from .proxy import model_device
    from .timing import cost_summary, run_cost

    start = time.perf_counter()
    source = resolve_spec(args.model)
    corpus = getattr(args, "corpus", None)
    inputs = (source, *(p for p in (corpus if corpus != "builtin" else None,
                                    getattr(args, "positional_validation", None)) if p))
    out = check_output_path(args.output, *inputs)
    heads_path = out.with_name(out.stem + ".heads.json")
    for path in (heads_path, heads_path.with_suffix(".png")):
        check_output_path(path, *inputs)
    settings = _settings(args)
    loaded = load_model(args.model, device=args.device)
    load_seconds = round(time.perf_counter() - start, 1)
    _note_caveat(loaded)
    _warn_unvalidated(loaded, settings)  # run_recipe records it as calibration.validated
    written = []  # the head scores of the learned recipes, saved as soon as they exist
    coeffs = calibrate(loaded, settings, progress=_progress(args),
                       on_scores=lambda scores: written.extend(scores.save(heads_path, top_k=settings.top_k)))
    if args.validate:
        from pear_edge.eval.validate import validate_coefficients

        coeffs.metrics["validation"] = validate_coefficients(loaded, coeffs, args.validate, seed=args.seed,
                                                             progress=_progress(args))
    coeffs.calibration["cost"] = {**run_cost(start, model_device(loaded.model)), "load_seconds": load_seconds}
    coeffs.calibration["wall_seconds"] = coeffs.calibration["cost"]["wall_seconds"]
    coeffs.save(out)
    _print_summary(coeffs)
    also = f" and {heads_path} (+ .png)" if written else ""
    print(f"wrote {out}{also} in {cost_summary(coeffs.calibration['cost'])}{_phases(coeffs.calibration)}")
    return 0


def _phases(calibration: dict) -> str:
    """'; of which load 3 s, proxy 20 s, detect 15 s, train 250 s' (the phases the run recorded)."""
    from .timing import calibration_phases

    parts = [f"{name} {value:.0f} s" for name, value in calibration_phases(calibration).items() if value is not None]
    return f"; of which {', '.join(parts)}" if parts else ""


def _warn_unvalidated(loaded, settings) -> str | None:
    """Why these settings are not a recipe measured on this model (calibrate.unvalidated_reason), said as
    one `pear-edge: warning:` line before training. run_recipe records calibration.validated; `train`, which
    does not go through it, records it from the returned reason."""
    from .calibrate import unvalidated_reason

    reason = unvalidated_reason(loaded.fingerprint().weights_sha256, settings)
    if reason:
        print(f"pear-edge: warning: unvalidated: {reason}", file=sys.stderr)
    return reason


def _note_caveat(loaded) -> None:
    """The registry's caveat for this model family, if any, as one `pear-edge: note:` line on stderr."""
    from .registry import caveat_note

    note = caveat_note(loaded.adapter.model_type)
    if note:
        print(note, file=sys.stderr)


def _print_summary(coeffs) -> None:
    from .calibrate import BUDGET_NOTES, GOLD_NOTES, MEASURED, PROXY_NOTES
    from .info import proxy_summary
    from .recipes import RECIPES

    recipe = RECIPES.get(str(coeffs.calibration.get("recipe")))
    # what was measured on this very model says so; else a recipe measured on its own (on SmolLM2), else the
    # proxy's note (measured with head scales on SmolLM2)
    model = MEASURED.get(coeffs.model.weights_sha256)
    measured = (model.note if model else "") or (recipe.measured if recipe else "")
    train = coeffs.calibration.get("train", {})
    notes = (measured or PROXY_NOTES.get(str(train.get("proxy"))), GOLD_NOTES.get(str(train.get("gold"))),
             BUDGET_NOTES.get(str(coeffs.calibration.get("budget"))))
    for note in filter(None, notes):
        print(f"pear-edge: note: {note}", file=sys.stderr)

    summary = proxy_summary(coeffs.metrics)
    if summary:
        print(summary)
    validation = coeffs.metrics.get("validation")
    if validation:
        print(f"validation MDQA (torch, n={validation['n']}): base {validation['base']:.1%} -> PEAR "
              f"{validation['pear']:.1%} (Δ {100 * validation['delta']:+.1f} pt, McNemar p={validation['p_value']:.3g})")
        if validation["delta"] < 0:
            print("pear-edge: warning: these coefficients LOWER validation accuracy; do not deploy them",
                  file=sys.stderr)
    if coeffs.metrics.get("held_out_proxy", {}).get("improved") is False:
        print("pear-edge: warning: these coefficients made the held-out proxy loss WORSE; they are likely to hurt "
              "RAG accuracy (the file records this as metrics.held_out_proxy.improved = false)", file=sys.stderr)
    print(coeffs.summary())


def cmd_fold(args) -> int:
    from .atomic import Kind, check_output
    from .coefficients import Coefficients
    from .fold import check_not_patched, fold_model, save_folded
    from .models import load_model, resolve_spec

    source = resolve_spec(args.model)
    check_output(args.output, source, args.coefficients, kind=Kind.FOLDER, replace=args.force)
    check_not_patched(source)
    coeffs = Coefficients.load(args.coefficients)
    loaded = load_model(args.model)
    match = fold_model(loaded, coeffs)
    out = save_folded(loaded, coeffs, args.output, replace=args.force)
    print(f"folded {coeffs.describe_edits()} ({match} model match) -> {out}")
    return 0


def cmd_info(args) -> int:
    from .info import describe

    print(describe(Path(args.file)))
    return 0


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised like Ctrl-C so that every temporary output is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


INTERRUPT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def signals_as_interrupts():
    """While running a command, SIGTERM and SIGHUP interrupt it like Ctrl-C; further ones are ignored
    so that the clean-up itself is not interrupted. The previous handlers are restored afterwards."""
    def handler(signum, frame):
        for sig in (*INTERRUPT_SIGNALS, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {}
    try:
        for sig in (*INTERRUPT_SIGNALS, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
        for sig in INTERRUPT_SIGNALS:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread (a server's worker): signals stay with the main thread
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: a handler installed outside Python, which cannot be restored
                signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with signals_as_interrupts():
            return args.func(args)
    except PearError as exc:
        print(f"pear-edge: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an environment problem nobody turned into a PearError: still one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pear-edge: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except RecursionError:
        print("pear-edge: error: input nested too deeply to read", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"pear-edge: interrupted ({signal.Signals(signum).name}); no output was written", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
