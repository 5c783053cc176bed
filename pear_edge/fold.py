"""Weight folding: multiply each selected head's o_proj input columns by its coefficient.

    W_o[:, h*d:(h+1)*d] *= c      (GPT-2 Conv1D: rows instead of columns)

This is exactly the hooked model (head output scaled by c before W_O), with the same graph and the
same tensors, so inference costs nothing extra. Biases and every other tensor stay bit-identical.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .atomic import Kind, atomic_dir, check_output
from .coefficients import Coefficients
from .errors import PearError

COEFFICIENTS_FILENAME = "pear_coefficients.json"


def fold_coefficients(model: torch.nn.Module, adapter, coefficients: Coefficients) -> None:
    """Fold in place. The caller checks the fingerprint (see `fold_model`)."""
    with torch.no_grad():
        for hc in coefficients.heads:
            weight = adapter.o_proj_weight(hc.layer)
            adapter.head_columns(weight, hc.head).mul_(hc.coefficient)


def check_not_patched(source: Path) -> None:
    if source.is_dir() and (source / COEFFICIENTS_FILENAME).exists():
        raise PearError(f"{source} is already PEAR-patched ({COEFFICIENTS_FILENAME} present); fold into the base model")


def fold_model(loaded, coefficients: Coefficients) -> str:
    """Check that `coefficients` belong to `loaded`, then fold them in place. Returns the match kind.
    A loaded model is folded once: a second fold (even of the same file) is refused, because the
    weights it would be checked against are no longer the ones the coefficients were made for."""
    check_not_patched(loaded.source)
    if loaded.folded is not None:
        raise PearError(f"{loaded.name} in memory already has {len(loaded.folded.heads)} coefficients folded in; "
                        "load the base model again to fold other coefficients")
    match = coefficients.model.check_matches(loaded.fingerprint(), what=str(loaded.source))
    fold_coefficients(loaded.model, loaded.adapter, coefficients)
    loaded.mark_folded(coefficients)
    return match


def save_folded(loaded, coefficients: Coefficients, output: str | Path, replace: bool = False) -> Path:
    """Save a folded model as a Hugging Face folder (safetensors, config, tokenizer, coefficients);
    `replace`: --force (see pear_edge.atomic)."""
    out = check_output(output, loaded.source, kind=Kind.FOLDER, replace=replace)
    with atomic_dir(out, replace=replace) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        coefficients.save(tmp / COEFFICIENTS_FILENAME)
    return out


def save_model_folder(loaded, coefficients: Coefficients | None, output: str | Path, replace: bool = False) -> Path:
    """The loaded model as a Hugging Face folder: folded (`save_folded`, after `fold_model`) when
    `coefficients` are given, else as it is (the base model of a comparison)."""
    if coefficients is not None:
        return save_folded(loaded, coefficients, output, replace=replace)
    out = check_output(output, loaded.source, kind=Kind.FOLDER, replace=replace)
    with atomic_dir(out, replace=replace) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
    return out
