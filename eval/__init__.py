"""Evaluation harness: RAG tasks x backends, paired statistics, speed ratios."""
