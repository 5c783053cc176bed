"""Running models: loading, devices, timing, the llama.cpp runner and the GGUF tokenizer."""
