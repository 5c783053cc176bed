"""The core commands (detect, train, calibrate, fold, profiles, info) and what every command line shares:
the one-line usage error, the model and --force options, signals as interrupts."""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from pear_edge.base.errors import PearError
from pear_edge.calibration.options import add_options, on_off


def _add_model(p: argparse.ArgumentParser, device: bool = False) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m', a Hugging Face folder or a .gguf file")
    if device:
        p.add_argument("--device", default="cpu",
                       help="torch device for detection and training: cpu (default), cuda, auto (a GPU if any); "
                            "under torchrun each rank takes cuda:LOCAL_RANK")
        p.add_argument("--dtype", default="auto",
                       help="precision of the frozen weights during detection and training: auto, float32 (fp32), "
                            "bfloat16 (bf16) or float16 (fp16); the coefficients stay fp32 and fold into the "
                            "original weights. auto = bf16 on a GPU that runs it, else fp32 (default: %(default)s)")
        p.add_argument("--shard-weights", type=on_off, default=False, metavar="on|off",
                       help="under torchrun: each rank holds 1/N of the frozen weights (FSDP), for a model that "
                            "does not fit one device or one machine (default: off, every rank holds them all)")


def _load(args):
    """The model of --model on this rank's --device, its frozen weights in --dtype."""
    from pear_edge.runtime.distributed import rank_device, shard_weights
    from pear_edge.runtime.models import load_model
    from pear_edge.runtime.precision import resolve_dtype

    device = rank_device(args.device)
    loaded = load_model(args.model, dtype=resolve_dtype(args.dtype, device), device=device)
    if args.shard_weights:
        shard_weights(loaded)
    return loaded


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


def _progress(args) -> bool:
    from pear_edge.runtime.distributed import is_main

    return not args.quiet and is_main()


def _settings(args):
    """The model's calibration profile, with every option given on the command line applied on top."""
    from pear_edge.calibration.calibrate import CalibrationSettings, profile_for

    return CalibrationSettings.from_args(args, base=profile_for(args.model))


def cmd_profiles(args) -> int:
    import dataclasses

    from pear_edge.calibration.calibrate import PROFILES

    for name, profile in PROFILES.items():
        print(f"{name}: {json.dumps(dataclasses.asdict(profile))}")
    return 0


def cmd_detect(args) -> int:
    from pear_edge.runtime.distributed import is_main, process_group
    from pear_edge.base.atomic import check_output_path
    from pear_edge.calibration.calibrate import detect_heads
    from pear_edge.runtime.models import resolve_spec

    source = resolve_spec(args.model)
    for path in (args.output, Path(args.output).with_suffix(".png")):
        check_output_path(path, source)
    settings = _settings(args)
    with process_group(args.device):
        scores = detect_heads(_load(args), settings, progress=_progress(args))
    if not is_main():
        return 0
    written = scores.save(args.output, top_k=args.plot_top)
    top = ", ".join(f"L{l}H{h} {s:+.3f}" for l, h, s in scores.top(5))
    print(f"top suppressors: {top}")
    print("wrote " + ", ".join(map(str, written)))
    return 0


def cmd_train(args) -> int:
    from pear_edge.runtime.distributed import is_main, process_group
    from pear_edge.base.atomic import check_output_path
    from pear_edge.calibration.calibrate import train_from_scores
    from pear_edge.calibration.detect import HeadScores
    from pear_edge.runtime.models import resolve_spec

    check_output_path(args.output, resolve_spec(args.model), args.heads)
    scores = HeadScores.load(args.heads)
    settings = _settings(args)
    with process_group(args.device):
        loaded = _load(args)
        scores.model.check_matches(loaded.fingerprint(), what=args.model)
        unvalidated = None
        if is_main():
            _note_caveat(loaded)
            unvalidated = _warn_unvalidated(loaded, settings)
        coeffs = train_from_scores(loaded, scores, settings, progress=_progress(args))
    if not is_main():
        return 0
    coeffs.calibration["validated"] = unvalidated is None
    coeffs.save(args.output)
    _print_summary(coeffs)
    print(f"wrote {args.output}")
    return 0


def cmd_calibrate(args) -> int:
    from pear_edge.runtime.distributed import barrier, is_main, process_group, world
    from pear_edge.base.atomic import check_output_path
    from pear_edge.calibration.calibrate import calibrate
    from pear_edge.runtime.models import resolve_spec
    from pear_edge.calibration.proxy import model_device
    from pear_edge.runtime.timing import cost_summary, run_cost

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
    with process_group(args.device):  # under torchrun: data-parallel over the ranks; rank 0 writes
        loaded = _load(args)
        load_seconds = round(time.perf_counter() - start, 1)
        if is_main():
            _note_caveat(loaded)
            _warn_unvalidated(loaded, settings)  # run_recipe records it as calibration.validated
        written = []  # the head scores of the learned recipes, saved as soon as they exist

        def save_scores(scores) -> None:
            if is_main():
                written.extend(scores.save(heads_path, top_k=settings.top_k))

        coeffs = calibrate(loaded, settings, progress=_progress(args), on_scores=save_scores)
        ranks = world()
        barrier()
    if not is_main():
        return 0
    if args.validate:
        from pear_edge.eval.validate import validate_coefficients

        coeffs.metrics["validation"] = validate_coefficients(loaded, coeffs, args.validate, seed=args.seed,
                                                             progress=_progress(args))
    coeffs.calibration["cost"] = {**run_cost(start, model_device(loaded.model)), "load_seconds": load_seconds,
                                  "ranks": ranks}
    coeffs.calibration["wall_seconds"] = coeffs.calibration["cost"]["wall_seconds"]
    coeffs.save(out)
    _print_summary(coeffs)
    also = f" and {heads_path} (+ .png)" if written else ""
    print(f"wrote {out}{also} in {cost_summary(coeffs.calibration['cost'])}{_phases(coeffs.calibration)}")
    return 0


def _phases(calibration: dict) -> str:
    """'; of which load 3 s, proxy 20 s, detect 15 s, train 250 s' (the phases the run recorded)."""
    from pear_edge.runtime.timing import calibration_phases

    parts = [f"{name} {value:.0f} s" for name, value in calibration_phases(calibration).items() if value is not None]
    return f"; of which {', '.join(parts)}" if parts else ""


def _warn_unvalidated(loaded, settings) -> str | None:
    """Why these settings are not a recipe measured on this model (calibrate.unvalidated_reason), said as
    one `pear-edge: warning:` line before training. run_recipe records calibration.validated; `train`, which
    does not go through it, records it from the returned reason."""
    from pear_edge.calibration.calibrate import unvalidated_reason

    reason = unvalidated_reason(loaded.fingerprint().weights_sha256, settings)
    if reason:
        print(f"pear-edge: warning: unvalidated: {reason}", file=sys.stderr)
    return reason


def _note_caveat(loaded) -> None:
    """The registry's caveat for this model family, if any, as one `pear-edge: note:` line on stderr."""
    from pear_edge.arch.registry import caveat_note

    note = caveat_note(loaded.adapter.model_type)
    if note:
        print(note, file=sys.stderr)


def _print_summary(coeffs) -> None:
    from pear_edge import results
    from pear_edge.calibration.recipes import DEFAULT_RECIPE
    from pear_edge.edits.describe import proxy_summary, template_measured

    # a model measured without an established gain says so first; else what was measured of the recipe (on
    # SmolLM2), else of the proxy (with head scales on SmolLM2); then the template's, gold placement's and
    # budget's notes
    model = results.model_entry(coeffs.model.weights_sha256)
    train, recipe = coeffs.calibration.get("train", {}), str(coeffs.calibration.get("recipe"))
    measured = ((results.note("model", model["name"]) if model and not model["validated"] else None)
                or (results.note("recipe", recipe) if recipe != DEFAULT_RECIPE else None)
                or results.note("proxy", str(train.get("proxy"))))
    notes = (measured, template_measured(coeffs.calibration), results.note("gold", str(train.get("gold"))),
             results.note("budget", str(coeffs.calibration.get("budget"))))
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


def _fold_streaming(source: Path, coeffs, args):
    """`fold` of a Hugging Face folder tensor by tensor (pear_edge.runtime.streaming); None, after a note, for
    a folder it cannot read that way (then the model is folded in memory)."""
    from pear_edge.runtime.streaming import NotStreamable, fold_folder

    try:
        streamed = fold_folder(source, coeffs, args.output, replace=args.force)
    except NotStreamable as why:
        print(f"pear-edge: note: folding in memory: {why}", file=sys.stderr)
        return None
    if streamed.left_out:
        print(f"pear-edge: note: not copied from {source}: {', '.join(streamed.left_out)}", file=sys.stderr)
    return streamed


def cmd_fold(args) -> int:
    from pear_edge.base.atomic import Kind, check_output
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.edits.fold import check_not_patched, fold_model, save_folded
    from pear_edge.runtime.models import load_model, resolve_spec

    source = resolve_spec(args.model)
    check_output(args.output, source, args.coefficients, kind=Kind.FOLDER, replace=args.force)
    check_not_patched(source)
    coeffs = Coefficients.load(args.coefficients)
    # a Hugging Face folder is folded tensor by tensor; a GGUF is dequantized in memory anyway
    streamed = _fold_streaming(source, coeffs, args) if source.is_dir() else None
    if streamed:
        match, out = streamed.match, streamed.output
    else:
        loaded = load_model(args.model)
        match = fold_model(loaded, coeffs)
        out = save_folded(loaded, coeffs, args.output, replace=args.force)
    print(f"folded {coeffs.describe_edits()} ({match} model match) -> {out}")
    return 0


def cmd_average(args) -> int:
    from pear_edge.base.atomic import check_output_path
    from pear_edge.base.inputs import file_sha256
    from pear_edge.edits.average import average_coefficients, describe_agreement, head_agreement
    from pear_edge.edits.coefficients import Coefficients, coefficients_path

    paths = [coefficients_path(f) for f in args.files]
    out = check_output_path(args.output, *paths)
    files, names = [Coefficients.load(p) for p in paths], [str(f) for f in args.files]
    coeffs = average_coefficients(files, names, [file_sha256(p) for p in paths])
    for agreement in head_agreement(files, names):
        print(describe_agreement(agreement))
    coeffs.save(out)
    print(coeffs.summary())
    print(f"wrote {out}: the mean of {len(files)} files ({coeffs.describe_edits()})")
    return 0


def cmd_info(args) -> int:
    from pear_edge.cli.info import describe

    print(describe(Path(args.file)))
    return 0


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM/SIGHUP, raised like Ctrl-C so that every temporary output is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


INTERRUPT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def ignore_interrupt_signals() -> None:
    """From here on SIGINT, SIGTERM and SIGHUP are ignored (in the main thread; elsewhere nothing changes)."""
    try:
        for sig in INTERRUPT_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


@contextlib.contextmanager
def signals_as_interrupts(restore: bool = True):
    """While running a command, the first SIGINT, SIGTERM or SIGHUP raises Interrupted and makes further ones
    ignored, so that a second Ctrl-C cannot cut the clean-up short. The previous handlers are restored
    afterwards, unless `restore` is False (pear-edge running as the program): then the signals stay ignored,
    since at exit Python gives them back their default action, and a late Ctrl-C would kill the process
    without a word (exit -2)."""
    def handler(signum, frame):
        ignore_interrupt_signals()
        raise Interrupted(signum)

    previous = {}
    try:
        for sig in INTERRUPT_SIGNALS:
            previous[sig] = signal.getsignal(sig)
        for sig in INTERRUPT_SIGNALS:
            if previous[sig] != signal.SIG_IGN:  # ignored when we started (nohup, a background job): stays so
                signal.signal(sig, handler)
    except ValueError:  # not the main thread (a server's worker): signals stay with the main thread
        previous = {}
    try:
        yield
    finally:
        if not restore:
            ignore_interrupt_signals()
        else:
            for sig, old in previous.items():
                if old is not None:  # None: a handler installed outside Python, which cannot be restored
                    signal.signal(sig, old)
