"""The transformers-only embedder reproduces sentence-transformers' all-MiniLM-L6-v2 output.

Reference numbers were printed by sentence-transformers 6.2.0 `SentenceTransformer(<package model folder>)
.encode([...])` on this machine (see docs/rag.md); our max abs difference from it was 0.0."""
import numpy as np
import pytest

from pear_edge.rag.embed import EMBEDDING_DIM, Embedder

ST_FIRST_SIX = [0.04937832, 0.03801681, -0.1290648, -0.01569209, 0.0264197, 0.00699465]
ST_COSINE = 0.06569858


@pytest.fixture(scope="module")
def vectors():
    return Embedder().embed(["How do I open a file?", "The with statement wraps a block."])


def test_matches_sentence_transformers(vectors):
    assert vectors.shape == (2, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[0, :6], ST_FIRST_SIX, atol=2e-6)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(ST_COSINE, abs=2e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_batching_does_not_change_vectors():
    embedder = Embedder(batch_size=1)
    texts = ["short", "a much longer sentence that needs padding when batched with a short one"]
    np.testing.assert_allclose(embedder.embed(texts), Embedder(batch_size=2).embed(texts), atol=1e-5)
