"""`pear-edge export onnx`: fold in PyTorch, export with optimum (KV cache), quantize with onnxruntime.
What the libraries print on the way is shown once each step has succeeded (see base/chatter.py).

The result is a folder that `optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(DIR)` loads:
model.onnx (+ model.onnx_data only past 2 GB), config.json, generation_config.json, the tokenizer,
and pear_coefficients.json when coefficients were folded in. Folding happens before quantization
because afterwards o_proj weights are integers (see `patch-onnx` for fp32 exports).
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from tqdm import tqdm

from pear_edge.base.atomic import Kind, atomic_dir, check_output, scratch_dir
from pear_edge.base.chatter import held_stderr
from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import COEFFICIENTS_FILENAME, check_not_patched, fold_model, save_model_folder

from pear_edge.converters.onnx_graph import MODEL_FILENAME
from pear_edge.converters.onnx_quantize import QUANTIZATIONS, quantize

ONNX_TASK = "text-generation-with-past"


def export_onnx(model_spec: str, coefficients: str | Path | None, output: str | Path,
                quantization: str = "none", progress: bool = True, replace: bool = False) -> tuple[Path, str]:
    """Export `model_spec` (folded with `coefficients` if given) to an ONNX folder at `output`
    (`replace`: --force).

    Returns the output folder and the fingerprint match kind ("base" without coefficients).
    """
    from pear_edge.runtime.models import load_model, resolve_spec

    if quantization not in QUANTIZATIONS:
        raise PearError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    source = resolve_spec(model_spec)
    out = check_output(output, source, coefficients, kind=Kind.FOLDER, replace=replace)
    coeffs = Coefficients.load(coefficients) if coefficients else None
    if coeffs is not None:
        check_not_patched(source)
    steps = ["load model", "fold coefficients", "save folded HF folder", "export ONNX (optimum)",
             f"quantize {quantization}", "write folder"]
    bar = tqdm(total=len(steps), disable=not progress, unit="step")

    def step(i: int) -> None:
        bar.update(0 if i == 0 else 1)
        bar.set_description(steps[i])

    with atomic_dir(out, replace=replace) as tmp, scratch_dir(out) as scratch:
        step(0)
        with held_stderr():
            loaded = load_model(model_spec)
        step(1)
        match = fold_model(loaded, coeffs) if coeffs is not None else "base"
        step(2)
        with held_stderr():
            hf_dir = save_model_folder(loaded, coeffs, Path(scratch) / "hf")
        del loaded
        step(3)
        onnx_dir = Path(scratch) / "onnx"
        with held_stderr():
            _optimum_export(hf_dir, onnx_dir)
        step(4)
        if quantization == "none":
            for item in onnx_dir.iterdir():
                shutil.move(str(item), tmp / item.name)
        else:
            with held_stderr():
                quantize(quantization, onnx_dir / MODEL_FILENAME, tmp / MODEL_FILENAME)
            for item in onnx_dir.iterdir():
                if not item.name.startswith(MODEL_FILENAME):
                    shutil.move(str(item), tmp / item.name)
        step(5)
        if coeffs is not None:
            coeffs.save(tmp / COEFFICIENTS_FILENAME)
        bar.update(1)
    bar.close()
    return out, match


def _optimum_export(hf_dir: Path, onnx_dir: Path) -> None:
    """fp32 export with KV cache inputs/outputs; our own `verify` replaces optimum's validation."""
    from optimum.exporters.onnx import main_export

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit tracer warnings about data-dependent Python branches
            main_export(str(hf_dir), output=onnx_dir, task=ONNX_TASK, device="cpu", library_name="transformers",
                        do_validation=False, local_files_only=True)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise PearError(f"optimum could not export this model to ONNX: {str(exc).splitlines()[0]}") from None
    if not (onnx_dir / MODEL_FILENAME).is_file():
        raise PearError(f"optimum wrote no {MODEL_FILENAME}; files: {sorted(p.name for p in onnx_dir.iterdir())}")
