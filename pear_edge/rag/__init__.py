"""Local RAG demo: index a folder of text files into an on-disk vector index, retrieve chunks and answer
with a base and a PEAR-patched GGUF side by side (CLI and a small local web page)."""
