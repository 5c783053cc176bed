"""ONNX export folders for `pear-edge verify` (converters/verify.py): logits and a greedy continuation
(the KV-cache path) through `ORTModelForCausalLM`, the way users load an export; the coefficients
folded into it (`pear_coefficients.json`; none: compare with the unpatched torch model); the weight
kind read from the graph's ops for the tolerance."""
from __future__ import annotations

from pathlib import Path

from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import COEFFICIENTS_FILENAME

from pear_edge.converters.onnx_graph import graph_only, model_path, read_layout, weight_format
from pear_edge.converters.verify import hf_greedy, torch_logits

# onnx_graph.weight_format -> verify's weight kinds (converters/verify.py TOLERANCES).
WEIGHT_KINDS = {"fp32": "fp32", "fp16": "fp16", "int8": "8-bit", "int4": "low-bit"}


def load_ort(folder: Path):
    from optimum.onnxruntime import ORTModelForCausalLM

    model_path(folder)
    try:
        return ORTModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise PearError(f"onnxruntime cannot load {folder}: {str(exc).splitlines()[0]}") from None


class OnnxRunner:
    label = "ONNX"

    def __init__(self, folder: Path):
        self.model = load_ort(folder)

    def logits(self, token_lists):
        return torch_logits(self.model, token_lists)

    def greedy(self, ids, pad_token_id):
        return hf_greedy(self.model, ids, pad_token_id)


class OnnxFormat:
    label = "ONNX"

    def weight_kind(self, path: Path) -> str:
        return WEIGHT_KINDS[weight_format(graph_only(path))]

    def layout(self, path: Path) -> tuple[int, int, int, int]:
        return read_layout(path).counts()

    def is_patched(self, path: Path) -> bool:
        return (path / COEFFICIENTS_FILENAME).is_file()

    def stored_coefficients(self, path: Path) -> Coefficients | None:
        return Coefficients.load(path / COEFFICIENTS_FILENAME) if self.is_patched(path) else None

    def open(self, path: Path, max_tokens: int) -> OnnxRunner:
        return OnnxRunner(path)
