"""Reading a GGUF safely (one-line errors), its head layout and fingerprint, and rewriting it raw.

The rewrite copies the header, every key/value and every tensor-info record byte for byte, appends new
keys, re-pads to the file's alignment and copies the tensor data section, swapping in replacement
bytes for chosen tensors. Tensor-info offsets are relative to the data section, so they stay valid:
tensor set, order, types, shapes and all other bytes are identical by construction.
"""
from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, MODEL_TENSOR, TENSOR_NAMES, GGUFReader, GGUFValueType, Keys
from gguf.quants import dequantize

from pear_edge.edits.coefficients import PEAR_COEFFICIENTS, ModelFingerprint
from pear_edge.base.errors import PearError
from pear_edge.base.inputs import check_regular_file
from pear_edge.arch.layout import HeadLayout
from pear_edge.arch.registry import caveat_note, model_type_for_gguf_arch

# The pear.* keys `patch-gguf`/`export gguf` append (gguf-py has no constants for them: they are ours).
PEAR_PREFIX = "pear."
PEAR_VERSION = "pear.version"
PEAR_TOOL = "pear.tool"
PEAR_SOURCE_SHA256 = "pear.source_sha256"
PEAR_REPORT = "pear.report"                  # per-tensor patch method and error, JSON
READER_VERSION_FIELD = "GGUF.version"        # a pseudo-key GGUFReader adds for the header's version
ATTN_OUTPUT = TENSOR_NAMES[MODEL_TENSOR.ATTN_OUT]  # "blk.{bid}.attn_output": the heads' output projection
ATTN_Q = TENSOR_NAMES[MODEL_TENSOR.ATTN_Q]           # "blk.{bid}.attn_q": queries, input = hidden channels
ATTN_K = TENSOR_NAMES[MODEL_TENSOR.ATTN_K]           # "blk.{bid}.attn_k": keys
ATTN_QKV = TENSOR_NAMES[MODEL_TENSOR.ATTN_QKV]       # "blk.{bid}.attn_qkv": q, k, v fused (not patchable here)
HEADER_BYTES = 24          # magic, version (u32), tensor count (u64), kv count (u64)
COPY_CHUNK = 64 << 20


def read_gguf(path: str | Path) -> GGUFReader:
    """Open a GGUF, refusing corrupt, truncated or big-endian files with one line."""
    p = check_regular_file(path, "GGUF file")
    try:
        reader = GGUFReader(str(p))
    except Exception as exc:  # gguf-py raises ValueError/struct.error/IndexError/... on bad files
        raise PearError(f"{p} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    if reader.byte_order != "I":
        raise PearError(f"{p} is a big-endian GGUF; pear-edge patches little-endian files only")
    size = p.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=reader.data_offset)
    if end > size:
        raise PearError(f"{p} is truncated: tensor data ends at byte {end} but the file has {size}")
    _check_tensor_infos(reader, p)
    return reader


def _check_tensor_infos(reader: GGUFReader, p: Path) -> None:
    """Every tensor-info record, before any tensor data is read: a known type, positive dimensions whose
    row length is a whole number of the type's blocks, its byte count, and an aligned data range inside
    the data section that overlaps no other tensor."""
    previous_end, previous = reader.data_offset, None
    for t in sorted(reader.tensors, key=lambda t: t.data_offset):
        dims = [int(d) for d in t.shape]
        if t.tensor_type not in GGML_QUANT_SIZES or not dims or min(dims) < 1:
            raise PearError(f"{p}: tensor {t.name!r} has an invalid type or shape ({t.tensor_type}, {dims})")
        block, type_size = GGML_QUANT_SIZES[t.tensor_type]
        if dims[0] % block or t.n_bytes != int(np.prod(dims, dtype=object)) // block * type_size:
            raise PearError(f"{p}: tensor {t.name!r} of type {t.tensor_type.name} has shape {dims}, inconsistent "
                            f"with its block size {block}; the file is damaged")
        if (t.data_offset - reader.data_offset) % reader.alignment:
            raise PearError(f"{p}: tensor {t.name!r} data is not aligned to {reader.alignment} bytes; "
                            f"the file is damaged")
        if t.data_offset < previous_end:
            raise PearError(f"{p}: tensor {t.name!r} overlaps {previous or 'the header'}; the file is damaged")
        previous_end, previous = t.data_offset + t.n_bytes, repr(t.name)


def _contents(field, key: str):
    try:
        return field.contents()
    except (UnicodeDecodeError, ValueError, IndexError, TypeError) as exc:
        raise PearError(f"GGUF key {key!r} cannot be read ({type(exc).__name__}); the file is damaged") from None


def kv(reader: GGUFReader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else _contents(field, key)


def pear_metadata(reader: GGUFReader) -> dict[str, object]:
    return {k: _contents(f, k) for k, f in reader.fields.items() if k.startswith(PEAR_PREFIX)}


def _positive_int(value, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 < int(value) <= 1 << 20:
        raise PearError(f"{what} is {value!r}; expected a positive integer")
    return int(value)


def head_layout(reader: GGUFReader, name: str = "GGUF") -> HeadLayout:
    """The head layout from the GGUF's metadata (model_type: the registry's name for its architecture)."""
    arch = kv(reader, Keys.General.ARCHITECTURE)
    if not arch or not isinstance(arch, str):
        raise PearError(f"{name} has no {Keys.General.ARCHITECTURE} key; is it a model GGUF?")
    keys = {k.format(arch=arch): kv(reader, k.format(arch=arch))
            for k in (Keys.LLM.BLOCK_COUNT, Keys.Attention.HEAD_COUNT, Keys.LLM.EMBEDDING_LENGTH)}
    missing = [k for k, v in keys.items() if v is None]
    if missing:
        raise PearError(f"{name} ({arch}) lacks {', '.join(missing)} metadata")
    head_count = Keys.Attention.HEAD_COUNT.format(arch=arch)
    if isinstance(keys[head_count], list):
        raise PearError(f"{name} ({arch}) has a different head count per layer; not supported")
    layers, heads, hidden = (_positive_int(v, f"{name}: {k}") for k, v in keys.items())
    key_length = Keys.Attention.KEY_LENGTH.format(arch=arch)
    head_dim = _positive_int(kv(reader, key_length, hidden // heads or 1), f"{name}: {key_length}")
    return HeadLayout(model_type_for_gguf_arch(arch), layers, heads, head_dim, hidden)


def attn_output_tensors(reader: GGUFReader, heads: HeadLayout, name: str = "GGUF") -> dict[int, object]:
    """blk.N.attn_output.weight for every layer, checked against the head layout."""
    by_name = {t.name: t for t in reader.tensors}
    out = {}
    for layer in range(heads.num_layers):
        tensor_name = ATTN_OUTPUT.format(bid=layer) + ".weight"
        t = by_name.get(tensor_name)
        if t is None:
            raise PearError(f"{name} has no {tensor_name}; cannot locate the heads' output projection")
        if len(t.shape) != 2 or int(t.shape[0]) != heads.num_heads * heads.head_dim:
            raise PearError(f"{t.name} has shape {list(map(int, t.shape))}, expected "
                            f"[{heads.num_heads * heads.head_dim}, {heads.hidden_size}] (heads x head_dim first)")
        out[layer] = t
    return out


def qk_tensors(reader: GGUFReader, heads: HeadLayout, layers, name: str = "GGUF") -> dict[int, list]:
    """[blk.N.attn_q.weight, blk.N.attn_k.weight] for each of `layers`, checked to read the hidden channels
    along their rows (ggml ne0 = hidden)."""
    by_name = {t.name: t for t in reader.tensors}
    out = {}
    for layer in layers:
        found = []
        for template in (ATTN_Q, ATTN_K):
            tensor_name = template.format(bid=layer) + ".weight"
            t = by_name.get(tensor_name)
            if t is None:
                fused = ATTN_QKV.format(bid=layer) + ".weight" in by_name
                raise PearError(f"{name} has no {tensor_name}" + (
                    f" (its queries, keys and values are fused in {ATTN_QKV.format(bid=layer)}); patch-gguf edits q/k "
                    "channels and attention temperatures in separate attn_q/attn_k tensors only: use "
                    "`pear-edge export gguf`, which folds "
                    "before converting" if fused else "; cannot locate the queries and keys"))
            if len(t.shape) != 2 or int(t.shape[0]) != heads.hidden_size:
                raise PearError(f"{t.name} has shape {list(map(int, t.shape))}, expected [{heads.hidden_size}, ...] "
                                "(hidden channels first)")
            found.append(t)
        out[layer] = found
    return out


def q_tensors(reader: GGUFReader, heads: HeadLayout, layers, name: str = "GGUF") -> dict[int, tuple]:
    """(blk.N.attn_q.weight, blk.N.attn_q.bias or None) for each of `layers`, for the attention temperatures:
    the weight found and checked as `qk_tensors` does (a fused attn_qkv refused the same way), with one row per
    query output (ggml ne1 = heads x head_dim; llama.cpp's converter permutes rows only within a head, so a
    head's rows stay [h*d, (h+1)*d)), the bias (F32) one value per row."""
    by_name = {t.name: t for t in reader.tensors}
    found = qk_tensors(reader, heads, layers, name)
    out = {}
    for layer in layers:
        weight = found[layer][0]
        rows = heads.num_heads * heads.head_dim
        if int(weight.shape[1]) != rows:
            raise PearError(f"{weight.name} has shape {list(map(int, weight.shape))}, expected [{heads.hidden_size}, "
                            f"{rows}] (one row per query: heads x head_dim)")
        bias = by_name.get(ATTN_Q.format(bid=layer) + ".bias")
        if bias is not None and [int(x) for x in bias.shape] != [rows]:
            raise PearError(f"{bias.name} has shape {list(map(int, bias.shape))}, expected [{rows}]")
        out[layer] = (weight, bias)
    return out


def tensor_bytes(tensor) -> np.ndarray:
    """A tensor's raw bytes as (rows, row_bytes) uint8: one row per output feature."""
    return tensor.data.view(np.uint8).reshape(int(np.prod(tensor.shape[1:])), -1)


def gguf_fingerprint(reader: GGUFReader, name: str) -> ModelFingerprint:
    """Head layout + per-layer attn_output norms and sketches, comparable with pear_edge.runtime.models.fingerprint."""
    heads = head_layout(reader, name)
    tensors = attn_output_tensors(reader, heads, name)
    # attn_output dequantizes to (n_embd, n_head * head_dim): the (out, in) layout fingerprints use.
    weights = []
    for i in range(heads.num_layers):
        with np.errstate(all="ignore"):
            w = dequantize(tensors[i].data, tensors[i].tensor_type)
        if not np.isfinite(w).all():
            raise PearError(f"{name}: {tensors[i].name} holds NaN or infinite values; the file is damaged")
        weights.append(w)
    return ModelFingerprint.from_o_proj_weights(heads, weights, name=name)


def _encode_kv(key: str, value: str | int) -> bytes:
    kb = key.encode()
    head = struct.pack("<Q", len(kb)) + kb
    if isinstance(value, int):
        return head + struct.pack("<II", GGUFValueType.UINT32, value)
    vb = value.encode()
    return head + struct.pack("<IQ", GGUFValueType.STRING, len(vb)) + vb


def write_gguf_copy(reader: GGUFReader, output: Path, replacements: dict[str, np.ndarray],
                    extra_kv: dict[str, str | int]) -> None:
    """Write `reader`'s file to `output` with tensors' bytes replaced and keys appended."""
    mm = reader.data
    tensors = sorted(reader.tensors, key=lambda t: t.data_offset)
    if not tensors:
        raise PearError("GGUF has no tensors")
    info_start = min(t.field.offset for t in tensors)
    info_end = max(t.field.offset + sum(p.nbytes for p in t.field.parts) for t in tensors)
    align = reader.alignment
    if -(-info_end // align) * align != reader.data_offset:
        raise PearError("unexpected GGUF layout (tensor data does not follow the tensor infos); cannot rewrite")
    n_tensors, n_kv = struct.unpack_from("<QQ", mm[8:HEADER_BYTES].tobytes())
    new_kv = b"".join(_encode_kv(k, v) for k, v in extra_kv.items())
    with open(output, "wb") as fh:
        fh.write(mm[:8].tobytes() + struct.pack("<QQ", n_tensors, n_kv + len(extra_kv)))
        fh.write(memoryview(mm[HEADER_BYTES:info_start]))
        fh.write(new_kv)
        fh.write(memoryview(mm[info_start:info_end]))
        fh.write(b"\0" * (-fh.tell() % align))
        pos = reader.data_offset
        for t in tensors:
            if t.name not in replacements:
                continue
            new = np.ascontiguousarray(replacements[t.name]).view(np.uint8)
            if new.nbytes != t.n_bytes:
                raise PearError(f"replacement for {t.name} has {new.nbytes} bytes, expected {t.n_bytes}")
            _copy(fh, mm, pos, t.data_offset)
            fh.write(memoryview(new.reshape(-1)))
            pos = t.data_offset + t.n_bytes
        _copy(fh, mm, pos, len(mm))


def _copy(fh, mm: np.ndarray, start: int, stop: int) -> None:
    for a in range(start, stop, COPY_CHUNK):
        fh.write(memoryview(mm[a:min(stop, a + COPY_CHUNK)]))


def tensor_signature(reader: GGUFReader) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in reader.tensors]


def describe_gguf(path: Path) -> str:
    """`pear-edge info FILE.gguf`: architecture, head layout, tensor types and PEAR patch state."""
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.edits.describe import describe_coefficients

    reader = read_gguf(path)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    lines = [f"GGUF v{kv(reader, READER_VERSION_FIELD)}: {kv(reader, Keys.General.NAME, '?')} "
             f"(arch {kv(reader, Keys.General.ARCHITECTURE, '?')}), {len(reader.tensors)} tensors: "
             + ", ".join(f"{n} {k}" for k, n in types.most_common())]
    try:
        h = head_layout(reader, str(path))
        lines.append(h.describe())
        lines += filter(None, [caveat_note(h.model_type)])
    except PearError as exc:
        lines.append(str(exc))
    meta = pear_metadata(reader)
    if not meta:
        return "\n".join(lines + ["not PEAR-patched"])
    lines.append(f"PEAR-patched ({PEAR_VERSION} {meta.get(PEAR_VERSION)}, by {meta.get(PEAR_TOOL, '?')}), "
                 f"source sha256 {str(meta.get(PEAR_SOURCE_SHA256, ''))[:16]}…")
    lines += _describe_report(meta.get(PEAR_REPORT))
    if PEAR_COEFFICIENTS not in meta:
        raise PearError(f"{path} has pear.* metadata but no {PEAR_COEFFICIENTS}; the file is damaged")
    coeffs = Coefficients.from_json(str(meta[PEAR_COEFFICIENTS]), source=f"{path} {PEAR_COEFFICIENTS}")
    lines.append(describe_coefficients(coeffs))
    return "\n".join(lines)


def _describe_report(text) -> list[str]:
    """The pear.report line, if it is readable (it is informative only)."""
    try:
        report = json.loads(str(text or "{}"))
        methods = report.get("methods") if isinstance(report, dict) else None
        if not isinstance(methods, dict) or not methods:
            return []
        worst = report.get("max_rel_error", 0)
        worst = f"{worst:.2e}" if isinstance(worst, (int, float)) else "?"
        return ["patch methods: " + ", ".join(f"{k} x{v}" for k, v in methods.items())
                + f"; max relative error {worst}"]
    except (ValueError, RecursionError):
        return []
