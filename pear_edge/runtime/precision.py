"""The precision of the frozen weights during calibration (`--dtype`). The coefficients are always fp32
parameters, and the head scales multiply the heads' outputs in fp32 before the product is rounded to the
weights' dtype (pear_edge.edits.heads.scale_heads); folding always edits the original-precision weights.

    auto      bf16 on a GPU that runs it (torch.cuda.is_bf16_supported), and on a CPU with native bf16
              matrix instructions (AVX512-BF16 or AMX-BF16) when NATIVE_CPU_BF16 says so; else fp32
    float32   fp32 (4 bytes per parameter)
    bfloat16  bf16 (2 bytes per parameter); fp32's range, 8 bits of mantissa
    float16   fp16 (2 bytes per parameter); for GPUs without bf16
"""
from __future__ import annotations

from pathlib import Path

import torch

from pear_edge.base.errors import PearError
from pear_edge.runtime.device import cpuinfo
from pear_edge.runtime.safetensors_layout import DTYPES as STORED, read_weight_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
AUTO = "auto"
DTYPE_CHOICES = (AUTO, *DTYPES, *ALIASES)
# Whether `auto` picks bf16 on a CPU with native bf16: the measured choice (docs/results.md, "bf16").
NATIVE_CPU_BF16 = False
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_native_bf16() -> bool:
    return bool(set((cpuinfo("flags") or "").split()) & set(CPU_BF16_FLAGS))


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """--dtype NAME for a torch device (cpu, cuda, cuda:N)."""
    name = ALIASES.get(requested, requested)
    if name == AUTO:
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if NATIVE_CPU_BF16 and cpu_native_bf16() else torch.float32
    if name not in DTYPES:
        raise PearError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (got {requested!r})")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype).removeprefix("torch."))


def weights_dtype(model: torch.nn.Module) -> str:
    """The frozen weights' dtype, as recorded in a coefficients file (calibration.weights_dtype)."""
    return dtype_name(next(model.parameters()).dtype)


def safetensors_dtypes(folder: Path) -> set[torch.dtype]:
    """The floating dtypes of the tensors stored in a folder's safetensors files, from their headers (no tensor
    is read). Empty when the folder has none."""
    return {STORED[e.dtype] for path in sorted(Path(folder).glob("*.safetensors"))
            for e in read_weight_file(path).entries if STORED[e.dtype].is_floating_point}


def load_dtype(folder: Path, dtype: torch.dtype) -> torch.dtype:
    """The dtype to load a checkpoint in so that its fingerprint (sha256 of the fp32 weights) is the checkpoint's
    own: `dtype` when every weight is stored in it (fp32 of those values is exact), else fp32, cast to `dtype`
    after the fingerprint is taken."""
    if dtype == torch.float32:
        return dtype
    stored = safetensors_dtypes(folder)
    return dtype if stored and stored <= {dtype} else torch.float32
