"""Opening GGUF files in llama.cpp (llama-cpp-python) with settings every caller shares."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import PearError
from .timing import Stopwatch, Timing


ALL_LAYERS = -1  # n_gpu_layers: offload every layer (llama-cpp-python's -1)


def open_gguf(path: str | Path, n_ctx: int = 4096, logits_all: bool = False, n_threads: int | None = None,
              n_gpu_layers: int = 0):
    """Load a GGUF into llama.cpp; one-line PearError if llama.cpp refuses it. `n_gpu_layers`: layers
    offloaded to the GPU (ALL_LAYERS with a CUDA build of llama-cpp-python; 0, the CPU, otherwise)."""
    import llama_cpp

    p = Path(path)
    if not p.is_file():
        raise PearError(f"GGUF file {p} not found")
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


def timed_chat(llm, messages: list[dict[str, str]], max_tokens: int = 64,
               on_piece: Callable[[str], None] | None = None, deadline: float | None = None) -> tuple[str, Timing]:
    """`chat_stream` timed with a Stopwatch (one tick per streamed piece): the answer, stripped, and its
    Timing. `on_piece` sees every piece as it arrives; the stream stops early once time.monotonic()
    passes `deadline`. Prompt tokens are those llama.cpp evaluated, less the answer's."""
    pieces: list[str] = []
    watch = Stopwatch()
    for piece in chat_stream(llm, messages, max_tokens):
        watch.tick()
        pieces.append(piece)
        if on_piece is not None:
            on_piece(piece)
        if deadline is not None and time.monotonic() > deadline:
            break
    watch.stop()
    text = "".join(pieces)
    out_tokens = len(llm.tokenize(text.encode(), add_bos=False, special=False)) if text else 0
    return text.strip(), watch.timing(max(0, llm.n_tokens - out_tokens), out_tokens)
