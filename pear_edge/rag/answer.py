"""Retrieve chunks, build the multi-document QA prompt and stream answers from one or two GGUFs."""
from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import PearError
from ..prompts import Document, mdqa_prompt, user_messages
from ..timing import Timing
from .embed import Embedder
from .index import Hit, RagIndex


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
    """The index, the embedder and the loaded GGUFs, kept open between questions (CLI and server)."""

    def __init__(self, db: str | Path, model: str | Path | None, compare: str | Path | None = None,
                 n_ctx: int = 4096):
        from ..llamacpp import open_gguf
        from ..models import default_gguf_path

        self.index = RagIndex(db)  # first: a missing index fails before seconds of model loading
        self.embedder = Embedder()
        paths = [Path(model) if model else default_gguf_path()] + ([Path(compare)] if compare else [])
        self.models = [(model_label(p, llm), llm) for p in paths for llm in [open_gguf(p, n_ctx=n_ctx)]]

    def retrieve(self, question: str, k: int) -> list[Hit]:
        check_question(question)
        return self.index.search(self.embedder.embed([question])[0], k)

    def stream(self, llm, label: str, question: str, hits: list[Hit], max_tokens: int,
               on_piece: Callable[[str], None], deadline: float | None = None) -> Answer:
        """Stream one model's answer (at most `max_tokens`, and stopping at time.monotonic() `deadline`)."""
        from ..llamacpp import timed_chat

        if max_tokens < 1:
            raise PearError(f"max_tokens must be at least 1, got {max_tokens}")  # llama.cpp: <= 0 is unlimited
        try:
            text, timing = timed_chat(llm, answer_messages(question, hits), max_tokens, on_piece, deadline)
        except ValueError as exc:  # llama.cpp: the prompt does not fit the context
            raise PearError(f"{label}: {exc}; lower -k or raise --n-ctx") from None
        return Answer(label, text, timing)


def check_question(question: str) -> None:
    if not question.strip():
        raise PearError("the question is empty; ask something")


def model_label(path: Path, llm) -> str:
    """'PEAR' for a GGUF with pear.* metadata (written by `pear-edge patch-gguf`), else 'base'."""
    kind = "PEAR" if any(key.startswith("pear.") for key in (llm.metadata or {})) else "base"
    return f"{kind}: {path.name}"


def answer_messages(question: str, hits: list[Hit]) -> list[dict[str, str]]:
    documents = [Document(title=hit.cite, text=hit.text) for hit in hits]
    return user_messages(mdqa_prompt(question, documents))


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
    answerer = Answerer(args.db, args.model, args.compare, n_ctx=args.n_ctx)
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
