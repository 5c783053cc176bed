"""Token-window chunking: size bound, real overlap, verbatim slices, full coverage."""
import pydoc_data.topics
import pytest

from pear_edge.rag.chunking import chunk_text
from pear_edge.rag.embed import MAX_TOKENS, Embedder


@pytest.fixture(scope="module")
def tokenizer():
    return Embedder().tokenizer


def test_chunks_are_verbatim_overlapping_and_cover_the_text(tokenizer):
    text = pydoc_data.topics.topics["try"]
    chunks = chunk_text(text, tokenizer, size=120, overlap=30)
    assert len(chunks) > 3
    assert [c.number for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.start:c.end].strip() == c.text
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "consecutive chunks must overlap"
        assert text[b.start:a.end].strip() and len(tokenizer(text[b.start:a.end], add_special_tokens=False)
                                                   ["input_ids"]) >= 25
    assert chunks[0].start == 0 and chunks[-1].end >= len(text.rstrip())


def test_default_chunks_fit_the_embedding_model(tokenizer):
    text = pydoc_data.topics.topics["typesseq"]
    lengths = [len(tokenizer(c.text)["input_ids"]) for c in chunk_text(text, tokenizer)]
    assert max(lengths) <= MAX_TOKENS  # nothing is silently truncated by the embedder
    assert min(lengths[:-1]) >= 150  # and the windows are not needlessly small


def test_short_and_empty_text(tokenizer):
    assert chunk_text("", tokenizer) == []
    [only] = chunk_text("  just one line  ", tokenizer)
    assert only.text == "just one line"
    with pytest.raises(ValueError):
        chunk_text("x", tokenizer, size=10, overlap=10)
