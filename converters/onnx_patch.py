"""`pear-edge patch-onnx`: fold coefficients straight into an existing fp32/fp16 ONNX export.

ONNX MatMul computes X @ W with W stored (in, out), so input column j of a torch weight is row j of the
initializer: o_proj row j is multiplied by Coefficients.o_proj_factors (head h owns rows [h*d, (h+1)*d)),
row `ch` of a q/k projection, at its query/key outputs, by the q/k channel scale, and the columns of a head's
queries (registry.q_head_rows) of the query projection, and those entries of its bias, by the head's attention
temperature — in fp32, like torch's in-place fold (pear_edge.edits.fold), so the result is the tensor
`export onnx --coefficients` writes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from pear_edge.arch.registry import check_q_temperatures, q_head_rows
from pear_edge.base.atomic import Kind, atomic_dir, check_output
from pear_edge.edits.coefficients import Coefficients
from pear_edge.edits.fold import COEFFICIENTS_FILENAME, check_not_patched

from pear_edge.converters.onnx_graph import (MODEL_FILENAME, OnnxExport, find_o_proj_weights, find_q_bias,
                                             find_qk_weights, fingerprint, load_export)
from pear_edge.converters.onnx_quantize import TWO_GB


def patch_export(export: OnnxExport, coefficients: Coefficients, progress: bool = True) -> str:
    """Check the coefficients belong to this export, then apply every edit to its weights in memory."""
    weights = find_o_proj_weights(export)
    match = coefficients.model.check_matches(fingerprint(export, weights), what=str(export.folder))
    qk = coefficients.qk_factors()
    qk_weights = find_qk_weights(export, list(qk)) if qk else {}
    temperatures = coefficients.q_factors()
    if temperatures:
        check_q_temperatures(export.layout.model_type)
    q_weights = find_qk_weights(export, list(temperatures)) if temperatures else {}
    by_name = {t.name: t for t in export.model.graph.initializer}
    edits = [(weights[layer].initializer, lambda w, f=factors: w * f[:, None])
             for layer, factors in coefficients.o_proj_factors().items()]
    for layer, channels in qk.items():
        for qw in qk_weights[layer]:
            edits.append((qw.initializer, lambda w, c=channels, rows=list(qw.outputs): _scale_qk_rows(w, c, rows)))
    lay = export.layout
    for layer, taus in temperatures.items():
        qw = q_weights[layer][0]                       # the query (or fused q/k/v) projection
        outputs = int(by_name[qw.initializer].dims[1])
        columns = [c for head in taus for c in q_head_rows(export.spec.qkv_fused, outputs, lay.num_heads,
                                                             lay.head_dim, head)]
        factors = np.repeat(np.asarray(list(taus.values()), dtype=np.float32), lay.head_dim)
        edits.append((qw.initializer, lambda w, c=columns, f=factors: _scale_columns(w, c, f)))
        bias = find_q_bias(export, layer, outputs)
        if bias is not None:
            edits.append((bias, lambda b, c=columns, f=factors: _scale_columns(b, c, f)))
    for name, edit in tqdm(edits, desc="patch weights", disable=not progress, unit="tensor"):
        tensor = by_name[name]
        original = numpy_helper.to_array(tensor)
        w = edit(original.astype(np.float32))
        tensor.CopyFrom(numpy_helper.from_array(w.astype(original.dtype), tensor.name))
    return match


def _scale_qk_rows(w: np.ndarray, channels: dict[int, float], outputs: list[int]) -> np.ndarray:
    """w: (hidden, out) fp32; W[ch, outputs] *= s for each hidden channel ch (queries and keys only)."""
    for channel, scale in channels.items():
        w[channel, outputs] *= np.float32(scale)
    return w


def _scale_columns(w: np.ndarray, columns: list[int], factors: np.ndarray) -> np.ndarray:
    """w: (hidden, out) fp32 weight or (out,) bias; output features `columns` times `factors` (a temperature
    per query row)."""
    w[..., columns] *= factors
    return w


def patch_onnx_folder(source: str | Path, coefficients_path: str | Path, output: str | Path,
                      progress: bool = True, replace: bool = False) -> tuple[Path, str]:
    """Write `source` with the coefficients folded into its o_proj weights to the folder `output`
    (`replace`: --force)."""
    source = Path(source)
    out = check_output(output, source, coefficients_path, kind=Kind.FOLDER, replace=replace)
    coeffs = Coefficients.load(coefficients_path)
    check_not_patched(source)
    export = load_export(source)
    match = patch_export(export, coeffs, progress)
    with atomic_dir(out, replace=replace) as tmp:
        save_model(export.model, tmp / MODEL_FILENAME)
        skip = {MODEL_FILENAME, *export.external_files}
        for item in source.iterdir():
            if item.name in skip:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        coeffs.save(tmp / COEFFICIENTS_FILENAME)
    return out, match


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Single file unless protobuf's 2 GB limit forces external data (then model.onnx_data beside it)."""
    if model.ByteSize() < TWO_GB - (64 << 20):
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)
