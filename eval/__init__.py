"""Evaluation harness: RAG tasks x backends, paired statistics, speed ratios.

    from pear_edge.eval import open_backend, evaluate, paired_compare
"""
from .backends import open_backend
from .harness import evaluate, paired_compare

__all__ = ["open_backend", "evaluate", "paired_compare"]
