"""Retrieve chunks, build the multi-document QA prompt and stream answers from one or two GGUFs."""
from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pear_edge.base.errors import PearError
from pear_edge.data.prompts import AUTO, Document, format_mismatch, mdqa_prompt
from pear_edge.data.templates import Template, load_template, resolve_template, template_mismatch
from pear_edge.runtime.timing import Timing
from pear_edge.rag.embed import Embedder
from pear_edge.rag.index import Hit, RagIndex


@dataclass
class Answer:
    label: str
    text: str = ""
    timing: Timing = Timing(0, 0, 0.0, 0.0)

    def as_dict(self) -> dict:
        """The server's `done` event (the page reads first_token_s, total_s and tokens)."""
        return {"label": self.label, "text": self.text, "first_token_s": round(self.timing.first_token_s, 3),
                "total_s": round(self.timing.seconds, 3), "tokens": self.timing.output_tokens}


class Answerer:
    """The index, the embedder and the loaded GGUFs, kept open between questions (CLI and server).
    `prompt_format`: auto (each GGUF's chat template if it has one, else a plain completion prompt), chat or
    completion (pear_edge.data.prompts); `template`: the prompt's layout (default: the default preset). A
    patched GGUF calibrated in another format or on another template gets one warning line for each."""

    def __init__(self, db: str | Path, model: str | Path | None, compare: str | Path | None = None,
                 n_ctx: int = 4096, prompt_format: str = AUTO, template: Template | None = None):
        from pear_edge.runtime.llamacpp import open_gguf
        from pear_edge.runtime.models import default_gguf_path

        self.index = RagIndex(db)  # first: a missing index fails before seconds of model loading
        self.embedder = Embedder()
        self.prompt_format = prompt_format
        self.template = template or resolve_template(None)
        paths = [Path(model) if model else default_gguf_path()] + ([Path(compare)] if compare else [])
        self.models = [(model_label(p, llm), llm) for p in paths for llm in [open_gguf(p, n_ctx=n_ctx)]]
        for label, llm in self.models:
            warn_format(label, llm, self.format_of(llm, label), self.template)

    def format_of(self, llm, label: str = "the GGUF") -> str:
        """The prompt format this answerer uses for one of its GGUFs."""
        from pear_edge.runtime.llamacpp import prompt_format_of

        return prompt_format_of(llm, self.prompt_format, label)

    def retrieve(self, question: str, k: int) -> list[Hit]:
        check_question(question)
        return self.index.search(self.embedder.embed([question])[0], k)

    def stream(self, llm, label: str, question: str, hits: list[Hit], max_tokens: int,
               on_piece: Callable[[str], None], deadline: float | None = None) -> Answer:
        """Stream one model's answer (at most `max_tokens`, and stopping at time.monotonic() `deadline`)."""
        from pear_edge.runtime.llamacpp import timed_answer

        if max_tokens < 1:
            raise PearError(f"max_tokens must be at least 1, got {max_tokens}")  # llama.cpp: <= 0 is unlimited
        try:
            text, timing = timed_answer(llm, answer_prompt(question, hits, self.template), self.format_of(llm, label),
                                        max_tokens,
                                        on_piece, deadline)
        except ValueError as exc:  # llama.cpp: the prompt does not fit the context
            raise PearError(f"{label}: {exc}; lower -k or raise --n-ctx") from None
        return Answer(label, text, timing)


def check_question(question: str) -> None:
    if not question.strip():
        raise PearError("the question is empty; ask something")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach argv as lone surrogates
        raise PearError("the question is not UTF-8 text; ask in UTF-8") from None


def model_label(path: Path, llm) -> str:
    """'PEAR' for a GGUF with pear.* metadata (written by `pear-edge patch-gguf`), else 'base'."""
    kind = "PEAR" if any(key.startswith("pear.") for key in (llm.metadata or {})) else "base"
    return f"{kind}: {path.name}"


def warn_format(label: str, llm, used: str, template: Template | None = None) -> None:
    """One `pear-edge: warning:` line on stderr for each way a patched GGUF's coefficients were calibrated on
    other prompts: another format than `used`, another template than `template` (default: the default one)."""
    from pear_edge.runtime.llamacpp import recorded_calibration

    record = recorded_calibration(llm)
    for message in (format_mismatch(record, used, label),
                    template_mismatch(record, template or resolve_template(None), label)):
        if message:
            print(f"pear-edge: warning: {message}", file=sys.stderr)


def answer_prompt(question: str, hits: list[Hit], template: Template | None = None) -> str:
    """The multi-document QA prompt over the retrieved chunks (their citations as titles) in `template`,
    before the prompt format turns it into chat messages or a completion prompt."""
    documents = [Document(title=hit.cite, text=hit.text) for hit in hits]
    return mdqa_prompt(question, documents, template)


def format_sources(hits: list[Hit]) -> Iterator[str]:
    for i, hit in enumerate(hits, 1):
        yield f"[{i}] {hit.cite}  (similarity {hit.score:.3f})"


def side_by_side(answers: list[Answer], width: int) -> str:
    col = max(20, (width - 3 * (len(answers) - 1)) // len(answers))
    columns = [[a.label[:col], "-" * min(col, len(a.label)), *textwrap.wrap(a.text or "(no answer)", col), "",
                *textwrap.wrap(a.timing.describe(), col)] for a in answers]
    rows = max(len(c) for c in columns)
    return "\n".join(" | ".join(c[i].ljust(col) if i < len(c) else " " * col for c in columns).rstrip()
                     for i in range(rows))


def ask_cli(args) -> int:
    answerer = Answerer(args.db, args.model, args.compare, n_ctx=args.n_ctx, prompt_format=args.prompt_format,
                        template=load_template(args.template))
    hits = answerer.retrieve(args.question, args.k)
    print("retrieved:")
    for line in format_sources(hits):
        print("  " + line)
    answers = []
    for label, llm in answerer.models:
        print(f"\n== {label} ==")
        answers.append(answerer.stream(llm, label, args.question, hits, args.max_tokens,
                                       lambda piece: print(piece, end="", flush=True)))
        print(f"\n({answers[-1].timing.describe()})")
    if len(answers) > 1:
        print("\n" + side_by_side(answers, shutil.get_terminal_size((100, 20)).columns))
    sys.stdout.flush()
    return 0
