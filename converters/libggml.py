"""ctypes access to the quantizer inside llama-cpp-python's bundled libggml.

Requantizing with llama.cpp's own C code (not a Python re-implementation) guarantees the bytes are
what llama.cpp itself would have written for these values.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from pear_edge.base.errors import PearError

# Types ggml can quantize without an importance matrix (ggml_quantize_chunk would abort otherwise).
QUANTIZABLE = {GGMLQuantizationType[n] for n in (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
            fn = lib.ggml_quantize_chunk
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_void_p]
        return lib
    raise PearError(f"no libggml with ggml_quantize_chunk found in {lib_dir}; reinstall llama-cpp-python")


def quantize_blocks(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Quantize float rows of whole blocks with ggml_quantize_chunk; returns (rows, bytes) uint8."""
    if qtype not in QUANTIZABLE:
        raise PearError(f"requantizing to {qtype.name} is not supported")
    block, type_size = GGML_QUANT_SIZES[qtype]
    src = np.ascontiguousarray(values, dtype=np.float32)
    rows, width = src.reshape(-1, src.shape[-1]).shape
    if width % block:
        raise PearError(f"{qtype.name} rows must be a multiple of {block} values, got {width}")
    dst = np.zeros((rows, width // block * type_size), dtype=np.uint8)
    written = _lib().ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, rows, width, None)
    if written != dst.nbytes:
        raise PearError(f"ggml_quantize_chunk wrote {written} bytes, expected {dst.nbytes}")
    return dst
