"""Head interventions: context-managed forward pre-hooks on each layer's o_proj input, and forward hooks
on the q/k projections (q/k channel scales, attention temperatures).

The o_proj input is the concatenation of the heads' outputs (before W_O), so editing a head's slice
there is exactly "the head's output after its W_O slice". `apply_coefficients` applies every edit of a
Coefficients file this way (the hooked twin of pear_edge.edits.fold). Hooks are removed on exit, leaving the
model untouched.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import torch

from pear_edge.arch.registry import ArchAdapter

HeadEdit = Callable[[torch.Tensor], torch.Tensor]
"""Takes the o_proj input viewed as (..., num_heads, head_dim), returns a tensor of that shape."""


@contextlib.contextmanager
def edit_heads(adapter: ArchAdapter, edits: Mapping[int, HeadEdit]) -> Iterator[None]:
    """Apply `edits[layer]` to that layer's per-head o_proj input for the duration of the block."""
    handles = []
    heads, dim = adapter.num_heads, adapter.head_dim

    def make_hook(edit: HeadEdit):
        def hook(module, args, kwargs):
            x = args[0]
            shaped = x.reshape(*x.shape[:-1], heads, dim)
            return (edit(shaped).reshape(x.shape), *args[1:]), kwargs

        return hook

    try:
        for layer, edit in edits.items():
            handles.append(adapter.o_projs[layer].register_forward_pre_hook(make_hook(edit), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_positions(heads: list[tuple[int, int]]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (head indices, positions in `heads`)."""
    by_layer: dict[int, tuple[list[int], list[int]]] = {}
    for i, (layer, head) in enumerate(heads):
        idx, pos = by_layer.setdefault(layer, ([], []))
        idx.append(head)
        pos.append(i)
    return {layer: (torch.tensor(idx), torch.tensor(pos)) for layer, (idx, pos) in by_layer.items()}


@contextlib.contextmanager
def scale_heads(adapter: ArchAdapter, coefficients: Mapping[tuple[int, int], float] | None = None, *,
                heads: list[tuple[int, int]] | None = None, values: torch.Tensor | None = None) -> Iterator[None]:
    """Multiply selected heads' outputs by scalars: either a {(layer, head): c} mapping, or
    `heads` + a (possibly trainable) `values` tensor, read afresh at every forward pass so that
    training and inference share this one path.

    values: (len(heads),) one scale per head (PEAR), or (len(heads), head_dim) one scale per channel of
    each head's output, i.e. per o_proj input column (SEAL-C)."""
    if coefficients is not None:
        heads = list(coefficients)
        device = adapter.o_projs[0].weight.device
        values = torch.tensor([coefficients[h] for h in heads], dtype=torch.float32, device=device)
    assert heads is not None and values is not None
    if values.dim() not in (1, 2) or values.shape[0] != len(heads) or values.shape[1:] not in ((), (adapter.head_dim,)):
        raise ValueError(f"values must be ({len(heads)},) or ({len(heads)}, {adapter.head_dim}), "
                         f"not {tuple(values.shape)}")
    per_channel = values.dim() == 2

    def make_edit(idx: torch.Tensor, pos: torch.Tensor) -> HeadEdit:
        def edit(x: torch.Tensor) -> torch.Tensor:
            shape = (adapter.num_heads, *values.shape[1:])
            scale = torch.ones(shape, dtype=values.dtype, device=values.device).index_put((idx,), values[pos])
            scale = scale if per_channel else scale[:, None]
            return (x.to(scale.dtype) * scale).to(x.dtype)  # fp32 scales: a bf16 model sees 1.003, not 1.0
        return edit

    edits = {layer: make_edit(idx.to(values.device), pos.to(values.device))
             for layer, (idx, pos) in _layer_positions(heads).items()}
    with edit_heads(adapter, edits):
        yield


@contextlib.contextmanager
def scale_qk_channels(adapter: ArchAdapter, factors: Mapping[int, Mapping[int, float]]) -> Iterator[None]:
    """Scale hidden channels as inputs of the queries and keys: {layer: {channel: s}}. A forward hook on each
    q/k projection adds (s - 1) * x[..., channel] * W[rows, channel] to the query/key outputs `rows`
    (ArchAdapter.qk_targets) — the same linear map as folding W[rows, channel] *= s, values untouched."""
    handles = []

    def make_hook(channels: torch.Tensor, delta: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor):
        def hook(module, args, output):
            x = args[0]
            change = (x[..., channels] * delta.to(x.dtype)) @ columns.to(x.dtype)   # (..., len(rows))
            return output.index_add(-1, rows, change.to(output.dtype))
        return hook

    try:
        for layer, by_channel in factors.items():
            for module, rows in adapter.qk_targets(layer):
                weight = adapter.as_out_in(module.weight)                            # (out, hidden)
                device = weight.device
                channels = torch.tensor(list(by_channel), dtype=torch.long, device=device)
                delta = torch.tensor([s - 1.0 for s in by_channel.values()], dtype=torch.float32, device=device)
                row_index = torch.tensor(rows, dtype=torch.long, device=device)
                columns = weight.detach()[row_index][:, channels].T.clone()           # (channels, rows)
                handles.append(module.register_forward_hook(make_hook(channels, delta, columns, row_index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def scale_q_temperatures(adapter: ArchAdapter, temperatures: Mapping[tuple[int, int], float] | None = None, *,
                         heads: list[tuple[int, int]] | None = None,
                         values: torch.Tensor | None = None) -> Iterator[None]:
    """Multiply selected heads' queries by attention temperatures: a forward hook on each layer's query
    projection (ArchAdapter.q_projection) multiplies head h's output rows (ArchAdapter.q_head_rows) by tau_h,
    the same linear map as folding W_q[rows] *= tau (and the bias's rows); its attention logits are then
    tau_h times what they were. Either a {(layer, head): tau} mapping, or `heads` + a (possibly trainable)
    (len(heads),) `values` tensor, read afresh at every forward pass (as in `scale_heads`). Families with a
    norm on the queries are refused (registry.check_q_temperatures)."""
    if temperatures is not None:
        heads = list(temperatures)
        device = adapter.o_projs[0].weight.device
        values = torch.tensor([temperatures[h] for h in heads], dtype=torch.float32, device=device)
    assert heads is not None and values is not None
    if values.shape != (len(heads),):
        raise ValueError(f"values must be ({len(heads)},), not {tuple(values.shape)}")
    handles = []

    def make_hook(rows: torch.Tensor, pos: torch.Tensor, out_features: int):
        def hook(module, args, output):
            per_row = values[pos].repeat_interleave(rows.shape[1])                  # (heads here x head_dim,)
            factor = torch.ones(out_features, dtype=values.dtype, device=values.device).index_put(
                (rows.reshape(-1),), per_row)
            return (output.to(factor.dtype) * factor).to(output.dtype)
        return hook

    try:
        for layer, (idx, pos) in _layer_positions(heads).items():
            module = adapter.q_projection(layer)
            rows = torch.tensor([adapter.q_head_rows(layer, int(h)) for h in idx], dtype=torch.long,
                                device=values.device)                               # (heads here, head_dim)
            out_features = adapter.as_out_in(module.weight).shape[0]
            handles.append(module.register_forward_hook(make_hook(rows, pos.to(values.device), out_features)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def apply_coefficients(adapter: ArchAdapter, coefficients) -> Iterator[None]:
    """Every edit of a pear_edge.edits.coefficients.Coefficients, as hooks (the fold's hooked twin): o_proj input
    columns scaled by Coefficients.o_proj_factors (head scales x channel scales) through `scale_heads`, the
    q/k channel scales through `scale_qk_channels`, then the attention temperatures through
    `scale_q_temperatures`."""
    factors = coefficients.o_proj_factors()
    device = adapter.o_projs[0].weight.device
    keys = [(layer, head) for layer in factors for head in range(adapter.num_heads)]
    stack = [torch.from_numpy(f).view(adapter.num_heads, adapter.head_dim) for f in factors.values()]
    values = torch.cat(stack).to(device) if stack else torch.ones(0, adapter.head_dim, device=device)
    temperatures = {(t.layer, t.head): t.tau for t in coefficients.q_temperatures}
    with scale_heads(adapter, heads=keys, values=values), scale_qk_channels(adapter, coefficients.qk_factors()), \
            scale_q_temperatures(adapter, temperatures):
        yield
