"""Head interventions: context-managed forward pre-hooks on each layer's o_proj input.

The o_proj input is the concatenation of the heads' outputs (before W_O), so editing a head's slice
there is exactly "the head's output after its W_O slice". Hooks are removed on exit, leaving the
model untouched.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import torch

from .registry import ArchAdapter

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
    training and inference share this one path."""
    if coefficients is not None:
        heads = list(coefficients)
        device = adapter.o_projs[0].weight.device
        values = torch.tensor([coefficients[h] for h in heads], dtype=torch.float32, device=device)
    assert heads is not None and values is not None

    def make_edit(idx: torch.Tensor, pos: torch.Tensor) -> HeadEdit:
        def edit(x: torch.Tensor) -> torch.Tensor:
            scale = torch.ones(adapter.num_heads, dtype=values.dtype, device=values.device).index_put((idx,), values[pos])
            return x * scale.to(x.dtype)[:, None]
        return edit

    edits = {layer: make_edit(idx.to(values.device), pos.to(values.device))
             for layer, (idx, pos) in _layer_positions(heads).items()}
    with edit_heads(adapter, edits):
        yield
