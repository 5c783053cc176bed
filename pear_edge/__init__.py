"""pear-edge: PEAR attention re-weighting for small edge LLMs."""
__version__ = "0.1.0"
