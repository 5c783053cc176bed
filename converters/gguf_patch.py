"""`pear-edge patch-gguf`: fold coefficients into an existing GGUF without re-converting it.

Every edit kind of the coefficients (pear_edge.edits.fold's transformations, on GGUF tensors):
  head scales and o_proj channel scales -> columns of blk.N.attn_output.weight (Coefficients.o_proj_factors);
  q/k channel scales                    -> column `channel` of blk.N.attn_q.weight and blk.N.attn_k.weight;
  attention temperatures                -> head h's rows of blk.N.attn_q.weight (and of attn_q.bias).
Only those columns (rows) change (see gguf_quant for how, per type: head scales on whole blocks and whole rows
stay exact block-scale edits; factors that differ inside a block are requantized with llama.cpp's quantizer);
every other byte of tensor data is copied. The output records pear.* metadata: format version, coefficients
JSON, the source file's sha256 and a per-tensor report of method and error.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pear_edge import __version__
from pear_edge.base.atomic import atomic_file, check_output_path
from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError
from pear_edge.arch.registry import check_q_temperatures
from pear_edge.base.inputs import file_sha256

from pear_edge.converters.gguf_layout import (PEAR_COEFFICIENTS, PEAR_REPORT, PEAR_SOURCE_SHA256, PEAR_TOOL, PEAR_VERSION,
                          attn_output_tensors, gguf_fingerprint, head_layout, pear_metadata, q_tensors, qk_tensors,
                          read_gguf, tensor_bytes, write_gguf_copy)
from pear_edge.converters.gguf_quant import check_supported, scale_columns, scale_rows

PEAR_GGUF_VERSION = 1


def pear_kv(coefficients: Coefficients, source_sha256: str, tool: str, report: dict) -> dict[str, str | int]:
    return {
        PEAR_VERSION: PEAR_GGUF_VERSION,
        PEAR_TOOL: f"pear-edge {__version__} {tool}",
        PEAR_COEFFICIENTS: coefficients.to_json(),
        PEAR_SOURCE_SHA256: source_sha256,
        PEAR_REPORT: json.dumps(report, allow_nan=False),
    }


def refuse_patched(reader, path: Path) -> None:
    if pear_metadata(reader):
        raise PearError(f"{path} is already PEAR-patched (it has pear.* metadata); patch the original GGUF")


def patch_gguf(source: str | Path, coefficients: Coefficients, output: str | Path, progress: bool = True) -> dict:
    """Write `output`: `source` with every edit of `coefficients` folded into its attn_output (and attn_q/attn_k)
    tensors. Returns the report (a tensor edited twice, by q/k channel scales then temperatures, reports
    both methods and the larger error)."""
    src, out = Path(source), check_output_path(output, source)
    reader = read_gguf(src)
    refuse_patched(reader, src)
    heads = head_layout(reader, str(src))
    fingerprint = gguf_fingerprint(reader, src.name)
    if fingerprint.layout.counts() != coefficients.model.layout.counts():  # another model: layers it lacks
        coefficients.model.check_matches(fingerprint, what=str(src))
    tensors = attn_output_tensors(reader, heads, str(src))
    o_proj = coefficients.o_proj_factors(np.float64)  # GGUF scales are fp16: round once, from the exact product
    qk = coefficients.qk_factors()
    q_k = qk_tensors(reader, heads, list(qk), str(src)) if qk else {}
    temperatures = coefficients.q_factors()
    if temperatures:
        check_q_temperatures(heads.model_type)
    queries = q_tensors(reader, heads, list(temperatures), str(src)) if temperatures else {}
    jobs = []  # (tensor, scaler, column or row factors, what the report says was edited)
    head_lists = {layer: [h.head for h in hcs] for layer, hcs in coefficients.by_layer().items()}
    channel_layers = {c.layer for c in coefficients.o_proj_channels}
    for layer, factors in o_proj.items():
        jobs.append((tensors[layer], scale_columns, factors, {"heads": head_lists.get(layer, []),
                                                               "channel_scales": layer in channel_layers}))
    for layer, channels in qk.items():
        for t in q_k[layer]:
            factors = np.ones(heads.hidden_size)
            factors[list(channels)] = list(channels.values())
            jobs.append((t, scale_columns, factors, {"qk_channels": sorted(channels)}))
    for layer, taus in temperatures.items():
        weight, bias = queries[layer]
        factors = np.ones(heads.num_heads * heads.head_dim)
        for head, tau in taus.items():
            factors[head * heads.head_dim:(head + 1) * heads.head_dim] = tau
        edits = {"q_temperatures": sorted(taus)}
        jobs.append((weight, scale_rows, factors, edits))
        if bias is not None:  # one row of values: its elements are the query rows
            jobs.append((bias, scale_columns, factors, edits))
    for t, _, _, _ in jobs:
        check_supported(t.tensor_type, t.name)
    match = coefficients.model.check_matches(fingerprint, what=str(src))

    replacements, per_tensor = {}, {}
    for t, scale, factors, edits in tqdm(jobs, desc="patching tensors", unit="tensor", disable=not progress):
        scaled = scale(replacements.get(t.name, tensor_bytes(t)), t.tensor_type, factors, t.name)
        replacements[t.name] = scaled.raw
        entry = {"type": t.tensor_type.name, "method": scaled.method, **edits,
                 "max_rel_error": scaled.max_rel_error, "rms_rel_error": scaled.rms_rel_error,
                 "requantized_blocks": scaled.requantized_blocks}
        per_tensor[t.name] = _merged(per_tensor[t.name], entry) if t.name in per_tensor else entry
    report = {
        "match": match,
        "edits": coefficients.edit_counts(),
        "methods": dict(Counter(v["method"] for v in per_tensor.values())),
        "max_rel_error": max((v["max_rel_error"] for v in per_tensor.values()), default=0.0),
        "max_rms_rel_error": max((v["rms_rel_error"] for v in per_tensor.values()), default=0.0),
        "tensors": per_tensor,
    }
    kv = pear_kv(coefficients, file_sha256(src), "patch-gguf", report)
    with atomic_file(out, ".gguf") as tmp:
        write_gguf_copy(reader, tmp, replacements, kv)
    return report


def _merged(first: dict, second: dict) -> dict:
    """One report entry for a tensor edited twice: both edits and methods, the larger errors, all blocks."""
    methods = first["method"] if first["method"] == second["method"] else f"{first['method']}+{second['method']}"
    return {**first, **second, "method": methods,
            **{k: max(first[k], second[k]) for k in ("max_rel_error", "rms_rel_error")},
            "requantized_blocks": first["requantized_blocks"] + second["requantized_blocks"]}


def add_pear_metadata(source: Path, output: Path, coefficients: Coefficients, source_sha256: str, tool: str,
                      report: dict) -> None:
    """Copy a GGUF adding pear.* keys only (used for files produced by `export gguf`)."""
    reader = read_gguf(source)
    refuse_patched(reader, source)
    write_gguf_copy(reader, output, {}, pear_kv(coefficients, source_sha256, tool, report))
