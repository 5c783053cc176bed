"""The layout of a safetensors file, read from its header without reading a tensor.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}}, then the tensors' bytes (offsets
count from the end of the header). `read_weight_file` checks that the tensors tile the data area exactly.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from pear_edge.base.errors import PearError

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: its bytes are [begin, end) of the file (absolute offsets)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class WeightFile:
    """A safetensors file's layout: the header is bytes [0, data_start); `entries` in byte order."""

    path: Path
    data_start: int
    entries: tuple[TensorEntry, ...]


def _bad(path: Path, why: str) -> PearError:
    return PearError(f"{path} is not a readable safetensors file ({why})")


def _entry(path: Path, name: str, info: object, data_start: int) -> TensorEntry:
    """One header entry, checked: a known dtype, a shape of non-negative ints, offsets that hold it exactly."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"tensor {name!r} has no dtype/shape/data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPES:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    ints = lambda v: isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)  # noqa: E731
    if not ints(shape) or not ints(offsets) or len(offsets) != 2:
        raise _bad(path, f"tensor {name!r} has a malformed shape or data_offsets")
    size = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != size:
        raise _bad(path, f"tensor {name!r} of shape {shape} {dtype} spans {offsets[1] - offsets[0]} bytes, not {size}")
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_weight_file(path: Path) -> WeightFile:
    """Parse and check a safetensors header: tensors tile the data area exactly, to the end of the file
    (a truncated or padded file is refused, as safetensors refuses it)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > min(MAX_HEADER, size - 8):
                raise _bad(path, f"header length {n} does not fit the file's {size} bytes")
            header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"header is not JSON: {exc}") from None
    except OSError as exc:
        raise PearError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    entries = sorted((_entry(path, name, info, 8 + n) for name, info in header.items() if name != "__metadata__"),
                     key=lambda e: (e.begin, e.end))
    position = 8 + n
    for e in entries:
        if e.begin != position:
            raise _bad(path, f"tensor {e.name!r} starts at byte {e.begin}, not {position} (overlap or hole)")
        position = e.end
    if position != size:
        raise _bad(path, f"the tensors end at byte {position} but the file has {size} bytes (truncated?)")
    return WeightFile(path, 8 + n, tuple(entries))
