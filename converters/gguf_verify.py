"""GGUF files for `pear-edge verify` (converters/verify.py): logits from llama.cpp (`logits_all`), the
coefficients stored in the file's pear.* metadata (required: an unpatched GGUF names no model to fold),
and the weight kind of its tensors for the tolerance."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGMLQuantizationType as Q

from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError
from pear_edge.runtime.llamacpp import open_gguf

from pear_edge.converters.gguf_layout import PEAR_COEFFICIENTS, head_layout, pear_metadata, read_gguf

# GGML storage types -> verify's weight kinds (converters/verify.py TOLERANCES); all others are "low-bit".
WEIGHT_KINDS = {Q.F32: "fp32", Q.F16: "fp16", Q.BF16: "fp16", Q.Q8_0: "8-bit", Q.Q8_1: "8-bit", Q.Q8_K: "8-bit"}


def gguf_logits(path: Path, token_lists: Sequence[Sequence[int]], n_ctx: int | None = None) -> list[np.ndarray]:
    """llama.cpp's logits (positions, vocab) for each token list, one fresh evaluation each."""
    llm = open_gguf(path, n_ctx=n_ctx or max(map(len, token_lists)) + 8, logits_all=True)
    try:
        out = []
        for ids in token_lists:
            llm.reset()
            llm.eval(list(ids))
            out.append(np.array(llm.scores[:len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


class GgufRunner:
    label = "GGUF"

    def __init__(self, path: Path, n_ctx: int):
        self.path, self.n_ctx = path, n_ctx

    def logits(self, token_lists):
        return gguf_logits(self.path, token_lists, self.n_ctx)

    def greedy(self, ids, pad_token_id):
        return None  # llama.cpp's generation path is exercised by `pear-edge eval` / `rag ask`


class GgufFormat:
    label = "GGUF"

    def __init__(self) -> None:
        self._readers: dict[Path, object] = {}

    def _read(self, path: Path):
        """Each file parsed once (gguf-py reads a 49k-token vocabulary for seconds)."""
        if path not in self._readers:
            self._readers[path] = read_gguf(path)
        return self._readers[path]

    def weight_kind(self, path: Path) -> str:
        """Kind of the most common storage type among the 2-D weight tensors."""
        types = Counter(t.tensor_type for t in self._read(path).tensors if len(t.shape) >= 2)
        return WEIGHT_KINDS.get(types.most_common(1)[0][0], "low-bit") if types else "fp32"

    def layout(self, path: Path) -> tuple[int, int, int, int]:
        return head_layout(self._read(path), str(path)).counts()

    def is_patched(self, path: Path) -> bool:
        return bool(pear_metadata(self._read(path)))

    def stored_coefficients(self, path: Path) -> Coefficients:
        meta = pear_metadata(self._read(path))
        if PEAR_COEFFICIENTS not in meta:
            raise PearError(f"{path} has no {PEAR_COEFFICIENTS} metadata; pass --coefficients")
        return Coefficients.from_json(str(meta[PEAR_COEFFICIENTS]), source=f"{path} {PEAR_COEFFICIENTS}")

    def open(self, path: Path, max_tokens: int) -> GgufRunner:
        return GgufRunner(path, max_tokens)
