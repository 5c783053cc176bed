"""`pear-edge export gguf`: fold in PyTorch, convert with llama.cpp's own converter, quantize with
llama.cpp's own quantizer, stamp pear.* metadata on each file.

Steps: fold_model + save_model_folder (temp HF folder) -> convert_hf_to_gguf.py --outtype f32 (subprocess,
PYTHONPATH = the sdist's gguf-py) -> llama_model_quantize per requested type -> add pear.* keys.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from pear_edge.base.atomic import Kind, atomic_dir, check_output
from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import check_not_patched, fold_model, save_model_folder
from pear_edge.base.inputs import file_sha256
from pear_edge.runtime.models import load_model, resolve_spec

from pear_edge.converters.gguf_patch import add_pear_metadata
from pear_edge.converters.gguf_tokenizer import replace_tokenizer
from pear_edge.converters.llama_sources import CONVERTER, ensure_converter

QUANT_FTYPES = {
    "f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1",
    "q2_k": "MOSTLY_Q2_K", "q3_k_s": "MOSTLY_Q3_K_S", "q3_k_m": "MOSTLY_Q3_K_M", "q3_k_l": "MOSTLY_Q3_K_L",
    "q4_k_s": "MOSTLY_Q4_K_S", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_s": "MOSTLY_Q5_K_S", "q5_k_m": "MOSTLY_Q5_K_M",
    "q6_k": "MOSTLY_Q6_K",
}


def parse_quants(text: str) -> list[str]:
    quants = [q.strip().lower() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in QUANT_FTYPES]
    if bad or not quants:
        raise PearError(f"unknown quantization {', '.join(bad) or repr(text)}; "
                        f"choose from {', '.join(QUANT_FTYPES)}")
    return list(dict.fromkeys(quants))


def _drop_foreign_tokenizer_model(folder: Path) -> None:
    """A model loaded from GGUF is saved with the GGUF itself as `tokenizer.model`; the converter would
    try to parse it as sentencepiece. tokenizer.json holds the real vocabulary, so drop the impostor."""
    tm = folder / "tokenizer.model"
    if tm.is_file() and tm.open("rb").read(4) == b"GGUF":
        tm.unlink()


def convert_to_gguf(hf_folder: Path, outfile: Path) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py (f32) in a subprocess."""
    src = ensure_converter()
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(src / CONVERTER), str(hf_folder), "--outtype", "f32", "--outfile", str(outfile)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        raise PearError(f"llama.cpp's {CONVERTER} failed: {lines[-1]}")


def quantize(f32_gguf: Path, outfile: Path, quant: str, allow_requantize: bool = False) -> None:
    """llama.cpp's quantizer; `allow_requantize`: the input may itself be quantized (e.g. the shipped Q4_1)."""
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)  # llama.cpp logs every tensor at INFO; keep errors only
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{QUANT_FTYPES[quant]}")
    params.nthread = max(1, os.cpu_count() or 1)
    params.allow_requantize = allow_requantize
    rc = llama_cpp.llama_model_quantize(str(f32_gguf).encode(), str(outfile).encode(), params)
    if rc != 0 or not outfile.is_file():
        raise PearError(f"llama_model_quantize to {quant} failed (code {rc})")


def output_name(source: Path, quant: str, patched: bool = True) -> str:
    base = source.stem.split(".")[0] if source.is_file() else source.name
    return f"{base}-{'pear-' if patched else ''}{quant.upper()}.gguf"


def export_gguf(model: str, coefficients_path: str | None, quants: list[str], output: str | Path,
                progress: bool = True, replace: bool = False) -> list[Path]:
    """Write one pear-stamped GGUF per quantization into the folder `output` (written atomically;
    `replace`: --force). Without coefficients, export the base model the same way (the fair baseline
    for each quant type)."""
    source = resolve_spec(model)
    out = check_output(output, source, coefficients_path, kind=Kind.FOLDER, replace=replace)
    check_not_patched(source)
    coeffs = Coefficients.load(coefficients_path) if coefficients_path else None
    ensure_converter(progress)
    steps = tqdm(total=3 + len(quants), desc="export gguf", unit="step", disable=not progress)
    steps.set_postfix_str("fold")
    loaded = load_model(model)
    match = fold_model(loaded, coeffs) if coeffs else "base"
    source_sha = file_sha256(source) if source.is_file() else ""
    written = []
    with tempfile.TemporaryDirectory(prefix="pear-export-") as work, atomic_dir(out, replace=replace) as final:
        work = Path(work)
        save_model_folder(loaded, coeffs, work / "hf")
        _drop_foreign_tokenizer_model(work / "hf")
        del loaded
        steps.update()
        steps.set_postfix_str("convert (llama.cpp convert_hf_to_gguf.py)")
        f32 = work / "model-f32.gguf"
        convert_to_gguf(work / "hf", f32)
        if source.is_file() and source.suffix.lower() == ".gguf":
            replace_tokenizer(source, f32, work / "model-f32-tok.gguf")
            f32 = work / "model-f32-tok.gguf"
        steps.update()
        for quant in quants:
            steps.set_postfix_str(f"quantize {quant}")
            plain = work / f"{quant}.gguf"
            quantize(f32, plain, quant)
            name = output_name(source, quant, patched=coeffs is not None)
            if coeffs:
                add_pear_metadata(plain, final / name, coeffs, source_sha, f"export gguf {quant}",
                                  {"match": match, "quant": quant,
                                   "method": "fold in torch + convert_hf_to_gguf + llama_model_quantize"})
                plain.unlink()
            else:
                plain.replace(final / name)
            written.append(out / name)
            steps.update()
        steps.set_postfix_str("done")
        steps.update()
    steps.close()
    return written
