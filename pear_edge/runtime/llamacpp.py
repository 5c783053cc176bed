"""Opening GGUF files in llama.cpp (llama-cpp-python) with settings every caller shares."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from pear_edge.base.errors import PearError
from pear_edge.base.inputs import check_regular_file
from pear_edge.data.prompts import AUTO, CHAT, COMPLETION_STOPS, completion_prompt, gguf_format, user_messages
from pear_edge.runtime.timing import Stopwatch, Timing


ALL_LAYERS = -1  # n_gpu_layers: offload every layer (llama-cpp-python's -1)


def open_gguf(path: str | Path, n_ctx: int = 4096, logits_all: bool = False, n_threads: int | None = None,
              n_gpu_layers: int = 0):
    """Load a GGUF into llama.cpp; one-line PearError if llama.cpp refuses it. `n_gpu_layers`: layers
    offloaded to the GPU (ALL_LAYERS with a CUDA build of llama-cpp-python; 0, the CPU, otherwise)."""
    import llama_cpp

    p = check_regular_file(path, "GGUF file")
    threads = n_threads or max(1, os.cpu_count() or 1)
    try:
        return llama_cpp.Llama(str(p), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               logits_all=logits_all, verbose=False, seed=0, n_gpu_layers=n_gpu_layers)
    except (ValueError, RuntimeError, OSError) as exc:
        raise PearError(f"llama.cpp cannot load {p}: {exc}") from None


def chat_stream(llm, messages: list[dict[str, str]], max_tokens: int = 64) -> Iterator[str]:
    """Greedy chat completion with the GGUF's own chat template, streamed piece by piece."""
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                            top_k=1, stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield piece


def chat(llm, messages: list[dict[str, str]], max_tokens: int = 64) -> str:
    return "".join(chat_stream(llm, messages, max_tokens))


def completion_stream(llm, prompt: str, max_tokens: int = 64) -> Iterator[str]:
    """Greedy plain completion of `prompt` (no template; llama.cpp adds the GGUF's BOS), streamed piece by
    piece, ending before the first COMPLETION_STOPS string or at end of sequence."""
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1,
                                       stop=list(COMPLETION_STOPS), stream=True):
        piece = chunk["choices"][0]["text"]
        if piece:
            yield piece


def answer_stream(llm, text: str, prompt_format: str, max_tokens: int = 64) -> Iterator[str]:
    """The answer to the user text `text` in `prompt_format` (pear_edge.data.prompts), streamed."""
    if prompt_format == CHAT:
        return chat_stream(llm, user_messages(text), max_tokens)
    return completion_stream(llm, completion_prompt(text), max_tokens)


def prompt_format_of(llm, requested: str = AUTO, what: str = "the GGUF") -> str:
    """The prompt format for a loaded GGUF: `requested`, auto meaning chat when its metadata holds a
    `tokenizer.chat_template`, else completion."""
    return gguf_format(llm.metadata, requested, what)


def recorded_calibration(llm) -> dict:
    """The calibration record of the coefficients a PEAR-patched GGUF carries (`pear.coefficients`), or {}
    (an unpatched GGUF, or one whose record cannot be read: `pear-edge info` reports that)."""
    from pear_edge.edits.coefficients import PEAR_COEFFICIENTS

    text = (llm.metadata or {}).get(PEAR_COEFFICIENTS)
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    calibration = doc.get("calibration") if isinstance(doc, dict) else None
    return calibration if isinstance(calibration, dict) else {}


def timed_answer(llm, text: str, prompt_format: str, max_tokens: int = 64,
                 on_piece: Callable[[str], None] | None = None, deadline: float | None = None) -> tuple[str, Timing]:
    """`answer_stream` timed with a Stopwatch (one tick per streamed piece): the answer, stripped, and its
    Timing. `on_piece` sees every piece as it arrives; the stream stops early once time.monotonic()
    passes `deadline`. Prompt tokens are those llama.cpp evaluated, less the answer's."""
    pieces: list[str] = []
    watch = Stopwatch()
    for piece in answer_stream(llm, text, prompt_format, max_tokens):
        watch.tick()
        pieces.append(piece)
        if on_piece is not None:
            on_piece(piece)
        if deadline is not None and time.monotonic() > deadline:
            break
    watch.stop()
    answer = "".join(pieces)
    out_tokens = len(llm.tokenize(answer.encode(), add_bos=False, special=False)) if answer else 0
    return answer.strip(), watch.timing(max(0, llm.n_tokens - out_tokens), out_tokens)
