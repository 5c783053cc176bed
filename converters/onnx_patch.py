"""`pear-edge patch-onnx`: fold coefficients straight into an existing fp32/fp16 ONNX export.

ONNX MatMul computes X @ W with W stored (in, out), so head h of layer N owns rows
[h*d, (h+1)*d) of that layer's o_proj initializer; multiplying them by c (in fp32, like torch's
in-place fold) gives the same tensor `export onnx --coefficients` would have written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from pear_edge.atomic import Kind, atomic_dir, check_output
from pear_edge.coefficients import Coefficients
from pear_edge.fold import COEFFICIENTS_FILENAME, check_not_patched

from .onnx_graph import MODEL_FILENAME, OnnxExport, find_o_proj_weights, fingerprint, load_export
from .onnx_quantize import TWO_GB


def patch_export(export: OnnxExport, coefficients: Coefficients, progress: bool = True) -> str:
    """Check the coefficients belong to this export, then scale its o_proj rows in memory."""
    weights = find_o_proj_weights(export)
    match = coefficients.model.check_matches(fingerprint(export, weights), what=str(export.folder))
    by_name = {t.name: t for t in export.model.graph.initializer}
    d = export.layout.head_dim
    by_layer = coefficients.by_layer()
    for layer in tqdm(sorted(by_layer), desc="patch o_proj", disable=not progress, unit="layer"):
        tensor = by_name[weights[layer].initializer]
        original = numpy_helper.to_array(tensor)
        w = original.astype(np.float32)
        for hc in by_layer[layer]:
            w[hc.head * d:(hc.head + 1) * d, :] *= np.float32(hc.coefficient)
        tensor.CopyFrom(numpy_helper.from_array(w.astype(original.dtype), tensor.name))
    return match


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
