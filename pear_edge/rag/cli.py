"""`pear-edge rag ...`: index a folder, ask questions (base vs PEAR side by side), serve a local web page."""
from __future__ import annotations

import argparse
from pathlib import Path

from pear_edge.cli.commands import add_force_option
from pear_edge.base.errors import PearError
from pear_edge.calibration.options import template_spec
from pear_edge.data.prompts import FORMAT_CHOICES
from pear_edge.data.templates import DEFAULT_TEMPLATE, preset_names


MAX_INDEX_K = 4096  # sqlite-vec answers at most this many neighbours


def port_number(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 (any free one) to 65535, got {port}")
    return port


def add_commands(subparsers) -> None:
    rag = subparsers.add_parser("rag", help="local RAG demo: index text files, answer with base vs PEAR GGUFs")
    sub = rag.add_subparsers(dest="rag_command", metavar="RAG_COMMAND", required=True)

    p = sub.add_parser("index", help="index (or incrementally update) a folder of .txt/.md files")
    p.add_argument("docs_dir", help="folder of .txt/.md files (searched recursively; hidden folders ignored)")
    p.add_argument("--db", required=True, help="index file (SQLite + sqlite-vec); created if missing")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("ask", help="answer a question from the index, streaming; --compare adds a second model")
    p.add_argument("question")
    _add_answer_options(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("serve", help="local web page with the same ask / compare flow (127.0.0.1 only)")
    _add_answer_options(p)
    p.add_argument("--port", type=port_number, default=8765,
                   help="port on 127.0.0.1 (default: %(default)s; 0 = any free)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("calibrate", help="calibrate PEAR on this index's own chunks (cloze questions, topical "
                                         "distractors) -> coeffs.json for patch-gguf")
    p.add_argument("--db", required=True, help="index file built by `pear-edge rag index`")
    from pear_edge.cli.commands import add_calibrate_options

    add_calibrate_options(p, corpus=False)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("pydoc-corpus", help="write Python's bundled docs as one .txt per topic/module (demo corpus)")
    p.add_argument("output", help="new folder to create")
    add_force_option(p)
    p.set_defaults(func=cmd_pydoc_corpus)


def _add_answer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="index file built by `pear-edge rag index`")
    p.add_argument("--model", default=None, help="GGUF to answer with, e.g. a PEAR-patched one "
                                                 "(default: the packaged SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--compare", default=None, metavar="BASE_GGUF",
                   help="also answer with this GGUF (e.g. the unpatched one) and show both side by side")
    p.add_argument("-k", type=int, default=5, help="chunks to retrieve (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=96, help="answer length cap (default: %(default)s)")
    p.add_argument("--n-ctx", type=int, default=4096, help="llama.cpp context size (default: %(default)s)")
    p.add_argument("--prompt-format", choices=FORMAT_CHOICES, default="auto",
                   help="chat = the GGUF's chat template; completion = the plain prompt ending in 'Answer:', answer "
                        "up to a newline (base models); auto = chat when the GGUF has a chat template, else "
                        "completion (default: %(default)s)")
    p.add_argument("--template", type=template_spec, default=DEFAULT_TEMPLATE,
                   help="prompt template: a JSON file or a preset (" + ", ".join(preset_names()) + "); `rag "
                        "calibrate --template` with the same one tunes to it (default: %(default)s)")


def cmd_index(args) -> int:
    from pear_edge.base.atomic import check_output_path
    from pear_edge.rag.embed import Embedder
    from pear_edge.rag.index import update_index

    check_output_path(args.db, args.docs_dir)
    report = update_index(args.docs_dir, args.db, Embedder(), progress=not args.quiet)
    for note in report.skipped:
        print(f"skipped {note}")
    print(f"{args.db}: {report.summary()}")
    return 0


def cmd_calibrate(args) -> int:
    """`calibrate` on the index's chunks, prompting with the template `rag ask` answers with (--template, by
    default the same default) unless a family is asked for (--template-family, --exclude-template)."""
    from pear_edge.cli.commands import cmd_calibrate as calibrate

    args.corpus = args.db
    if not any(hasattr(args, name) for name in ("template", "template_family", "exclude_template")):
        args.template = DEFAULT_TEMPLATE
    return calibrate(args)


def check_answer_options(args) -> None:
    """-k, --max-tokens and --n-ctx are positive (llama.cpp reads max_tokens <= 0 as "no limit")."""
    for name, value in (("-k", args.k), ("--max-tokens", args.max_tokens), ("--n-ctx", args.n_ctx)):
        if value < 1:
            raise PearError(f"{name} must be at least 1, got {value}")
    if args.k > MAX_INDEX_K:
        raise PearError(f"-k must be at most {MAX_INDEX_K} (the vector index's limit), got {args.k}")


def cmd_ask(args) -> int:
    from pear_edge.rag.answer import ask_cli, check_question

    check_question(args.question)  # before seconds of model loading
    check_answer_options(args)
    return ask_cli(args)


def cmd_serve(args) -> int:
    from pear_edge.rag.server import serve_forever

    check_answer_options(args)
    return serve_forever(args)


def cmd_pydoc_corpus(args) -> int:
    from pear_edge.rag.pydoc_corpus import write_pydoc_corpus

    count = write_pydoc_corpus(args.output, replace=args.force)
    print(f"wrote {count} files to {Path(args.output)}")
    return 0
