"""Weight folding: every edit of a Coefficients file as an explicit, named transformation of weights.

    scale_o_proj_columns   W_o[:, j] *= f_j        f = head scales x o_proj channel scales
                                                   (Coefficients.o_proj_factors); GPT-2 Conv1D: rows
    scale_qk_input_channel W[rows, ch] *= s        rows = the queries and keys of a q/k projection
                                                   (ArchAdapter.qk_targets), ch = a hidden channel
    scale_q_rows           W[rows, :] *= tau,      rows = a head's queries of the query projection
                           b[rows] *= tau          (ArchAdapter.q_head_rows): its attention temperature

Each is exactly the hooked model (pear_edge.edits.heads.apply_coefficients: head outputs scaled before W_O; the
channel's contribution to queries and keys scaled; a head's queries scaled), with the same graph and the same
tensors, so inference costs nothing extra. Every other tensor (and every bias but the query rows' under a
temperature) stays bit-identical.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pear_edge.base.atomic import Kind, atomic_dir, check_output
from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError

COEFFICIENTS_FILENAME = "pear_coefficients.json"


def scale_o_proj_columns(weight: torch.Tensor, in_features_dim: int, factors: np.ndarray) -> None:
    """In place: multiply input feature j of an o_proj weight by factors[j].

    weight: (out, H*d) for nn.Linear (in_features_dim 1), (H*d, out) for Conv1D (in_features_dim 0);
    factors: (H*d,) float32 (Coefficients.o_proj_factors). A factor of exactly 1 leaves its column
    bit-identical."""
    f = torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32)).to(weight.device, weight.dtype)
    weight.mul_(f if in_features_dim == 1 else f[:, None])


def scale_qk_input_channel(weight: torch.Tensor, in_features_dim: int, rows: Sequence[int], channel: int,
                           scale: float) -> None:
    """In place: W[rows, channel] *= scale, the weight viewed (out, in).

    weight: (out, hidden) for nn.Linear, (hidden, out) for Conv1D; rows: the output features that are
    queries or keys (a fused q/k/v projection's values keep the channel); channel < hidden."""
    w = weight if in_features_dim == 1 else weight.T
    index = torch.as_tensor(list(rows), dtype=torch.long, device=weight.device)
    w[index, channel] *= torch.tensor(scale, dtype=torch.float32).to(weight.dtype)


def scale_q_rows(tensor: torch.Tensor, out_features_dim: int, rows: Sequence[int], taus: Sequence[float]) -> None:
    """In place: output feature rows[i] of a query projection's weight or bias multiplied by taus[i].

    tensor: the weight, (out, hidden) for nn.Linear (out_features_dim 0) or (hidden, out) for Conv1D
    (out_features_dim 1), or the bias, (out,) (out_features_dim 0); rows: output features (a head's query
    rows, ArchAdapter.q_head_rows; a fused projection's keys and values keep theirs); taus: one per row."""
    w = tensor if out_features_dim == 0 else tensor.T
    index = torch.as_tensor(list(rows), dtype=torch.long, device=tensor.device)
    factor = torch.tensor(list(taus), dtype=torch.float32).to(tensor.device, tensor.dtype)
    w[index] *= factor.view(-1, *([1] * (w.dim() - 1)))


def weight_edits(adapter, coefficients: Coefficients) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], None]]]:
    """Every edit of `coefficients` as (the adapter's parameter it edits: a weight, or the query bias under an
    attention temperature; an in-place transformation of a tensor of that parameter's shape and dtype), in the
    order the fold applies them. The parameter names the target only (it may live on the meta device); the
    transformation runs on whatever tensor holds its values."""
    dim = adapter.spec.in_features_dim
    edits = [(adapter.o_proj_weight(layer), partial(scale_o_proj_columns, in_features_dim=dim, factors=factors))
             for layer, factors in coefficients.o_proj_factors().items()]
    for layer, channels in coefficients.qk_factors().items():
        for module, rows in adapter.qk_targets(layer):
            edits += [(module.weight, partial(scale_qk_input_channel, in_features_dim=dim, rows=rows, channel=channel,
                                              scale=scale)) for channel, scale in channels.items()]
    for layer, taus in coefficients.q_factors().items():
        module = adapter.q_projection(layer)
        rows = [r for head in taus for r in adapter.q_head_rows(layer, head)]
        factors = [tau for tau in taus.values() for _ in range(adapter.head_dim)]
        edits.append((module.weight, partial(scale_q_rows, out_features_dim=1 - dim, rows=rows, taus=factors)))
        if getattr(module, "bias", None) is not None:
            edits.append((module.bias, partial(scale_q_rows, out_features_dim=0, rows=rows, taus=factors)))
    return edits


def fold_coefficients(model: torch.nn.Module, adapter, coefficients: Coefficients) -> None:
    """Fold every edit in place. The caller checks the fingerprint (see `fold_model`)."""
    with torch.no_grad():
        for weight, edit in weight_edits(adapter, coefficients):
            edit(weight)


def check_not_patched(source: Path) -> None:
    if source.is_dir() and (source / COEFFICIENTS_FILENAME).exists():
        raise PearError(f"{source} is already PEAR-patched ({COEFFICIENTS_FILENAME} present); fold into the base model")


def fold_model(loaded, coefficients: Coefficients) -> str:
    """Check that `coefficients` belong to `loaded`, then fold them in place. Returns the match kind.
    A loaded model is folded once: a second fold (even of the same file) is refused, because the
    weights it would be checked against are no longer the ones the coefficients were made for."""
    check_not_patched(loaded.source)
    if loaded.folded is not None:
        raise PearError(f"{loaded.name} in memory already has {loaded.folded.describe_edits()} folded in; "
                        "load the base model again to fold other coefficients")
    match = coefficients.model.check_matches(loaded.fingerprint(), what=str(loaded.source))
    fold_coefficients(loaded.model, loaded.adapter, coefficients)
    loaded.mark_folded(coefficients)
    return match


def save_folded(loaded, coefficients: Coefficients, output: str | Path, replace: bool = False) -> Path:
    """Save a folded model as a Hugging Face folder (safetensors, config, tokenizer, coefficients);
    `replace`: --force (see pear_edge.base.atomic)."""
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
