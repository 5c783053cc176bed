"""Evaluation harness: RAG tasks x backends, paired statistics, speed ratios.

    from pear_edge.eval import open_backend, evaluate, paired_compare
"""
from pear_edge.eval.backends import open_backend
from pear_edge.eval.harness import evaluate, paired_compare

__all__ = ["open_backend", "evaluate", "paired_compare"]
