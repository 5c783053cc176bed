"""Split text into overlapping chunks measured in the embedding model's own word pieces.

Tokens, not characters: all-MiniLM-L6-v2 silently truncates its input at 256 word pieces, and the
characters-per-token ratio swings between prose and code, so only a token budget guarantees that every
chunk is embedded whole. Chunks are verbatim slices of the source, cut between the tokenizer's words (never
inside one, unless one word alone is longer than MAX_CHUNK_CHARS), so a citation points at real text.
"""
from __future__ import annotations

from dataclasses import dataclass

CHUNK_TOKENS = 200
OVERLAP_TOKENS = 40
MAX_CHUNK_CHARS = 2000  # a chunk shown, embedded and prompted with stays small whatever the text


@dataclass(frozen=True)
class Chunk:
    number: int
    start: int  # character offsets into the source text
    end: int
    text: str


def chunk_text(text: str, tokenizer, size: int = CHUNK_TOKENS, overlap: int = OVERLAP_TOKENS) -> list[Chunk]:
    """Windows of `size` word pieces, each starting `size - overlap` pieces after the previous one."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got overlap={overlap}, size={size}")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                         truncation=False, verbose=False)
    offsets, words = encoding["offset_mapping"], encoding.word_ids()
    if not offsets:
        return []
    chunks: list[Chunk] = []
    step, cut_until = size - overlap, 0
    for first in range(0, len(offsets), step):
        last = min(first + size, len(offsets)) - 1
        while first > 0 and words[first - 1] == words[first]:  # widen to whole words: a few pieces at most
            first -= 1
        while last + 1 < len(offsets) and words[last + 1] == words[last]:
            last += 1
        start, end = offsets[first][0], offsets[last][1]
        if end - start <= MAX_CHUNK_CHARS:
            spans = [(start, end)]
        else:  # a "word" of thousands of characters (a minified line, a base64 blob): cut it, each slice once
            spans = [(a, min(a + MAX_CHUNK_CHARS, end)) for a in range(start, end, MAX_CHUNK_CHARS)
                     if min(a + MAX_CHUNK_CHARS, end) > cut_until]
            cut_until = max(cut_until, end)
        for a, b in spans:
            piece = text[a:b].strip()
            if piece:
                chunks.append(Chunk(len(chunks), a, b, piece))
        if last == len(offsets) - 1:
            break
    return chunks

