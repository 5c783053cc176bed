"""Yu et al. (arXiv 2406.02536, code: PositionalHidden/PositionalHidden): find the "positional" hidden channel
and choose how to scale it as an input of the queries and keys.

Detection (`positional_channel_scores`): random-token sequences (the copy proxy's vocabulary, no BOS); the
input of each layer's q/k projection — the hidden state after the layer's input norm — averaged over the
sequences at each position; per layer and channel, the Spearman correlation of that average with the
position (the first SKIP_POSITIONS dropped); a channel's score is the mean over layers of |rho|. A channel
that rises or falls with position in every layer scores near 1, an ordinary channel near 0. (The official
search averages over samples too, then keeps channels whose cubic fit is monotonic in > L/4 layers and ranks
them by smoothness; Spearman is the rank-based, fit-free version of "monotonic in position".)

Search (`search_positional`): like the official code, the top candidate channels are tried on validation
data — here every candidate x scale x layer range, scored by a loss with the edit hooked
(`heads.scale_qk_channels`): the recipe's held-out proxy batches, or a validation MDQA file. The best edit
is kept if it lowers that loss; it is folded as W_q[:, ch] *= s; W_k[:, ch] *= s (Coefficients.qk_channels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from pear_edge.edits.coefficients import QKChannelScale, qk_factor_map
from pear_edge.base.errors import PearError
from pear_edge.edits.heads import scale_qk_channels
from pear_edge.calibration.proxy import ProxyVocab, model_device

SCALES = (0.5, 0.0, -0.5, -1.0)          # the paper's candidate factors (its configs mostly use -1)
SKIP_POSITIONS = 1                       # position 0 of a sequence is an attention sink, not a trend
# Layer ranges tried by default, as fractions of depth: every layer, the official config's middle-to-late
# block (llama-2-7b: layers 10..25 of 32), and the second half.
DEFAULT_RANGES = ((0.0, 1.0), (10 / 32, 26 / 32), (0.5, 1.0))


@dataclass
class PositionalScores:
    """rho: (num_layers, hidden) Spearman correlation of each channel's mean value with position;
    scores: (hidden,) mean over layers of |rho|."""

    rho: torch.Tensor
    length: int
    sequences: int

    @property
    def scores(self) -> torch.Tensor:
        return self.rho.abs().mean(0)

    def top(self, k: int) -> list[tuple[int, float]]:
        values, index = self.scores.topk(min(k, self.scores.numel()))
        return [(int(i), float(v)) for i, v in zip(index, values)]


def spearman_with_position(x: torch.Tensor) -> torch.Tensor:
    """x: (positions, channels) -> (channels,) Spearman correlation of each column with its row index
    (ties broken by order; a constant column gives 0)."""
    ranks = x.argsort(0).argsort(0).to(torch.float64)
    pos = torch.arange(x.shape[0], dtype=torch.float64, device=x.device)[:, None]
    a, b = ranks - ranks.mean(0), pos - pos.mean()
    denom = (a.pow(2).sum(0) * b.pow(2).sum()).sqrt()
    varying = x.amax(0) > x.amin(0)
    return torch.where(varying & (denom > 0), (a * b).sum(0) / denom.clamp(min=1e-300), torch.zeros_like(denom))


@torch.no_grad()
def positional_channel_scores(loaded, length: int = 256, sequences: int = 16, seed: int = 0, batch: int = 8,
                              progress: bool = True) -> PositionalScores:
    """Score every hidden channel by how monotonically its post-norm value changes with position."""
    if length < SKIP_POSITIONS + 3:
        raise PearError(f"positional detection needs sequences of at least {SKIP_POSITIONS + 3} tokens")
    model, adapter = loaded.model, loaded.adapter
    vocab = ProxyVocab.from_model(loaded)
    gen = torch.Generator().manual_seed(seed + 40_000)
    sums: list[torch.Tensor | None] = [None] * adapter.num_layers
    handles = []

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0].detach().to(torch.float64).sum(0)          # (positions, hidden)
            sums[layer] = x if sums[layer] is None else sums[layer] + x
        return hook

    try:
        for layer in range(adapter.num_layers):
            module = adapter.qk_projs[layer][0]
            handles.append(module.register_forward_pre_hook(make_hook(layer)))
        done = 0
        with tqdm(total=sequences, desc="detect (positional channel)", disable=not progress, unit="seq") as bar:
            while done < sequences:
                rows = min(batch, sequences - done)
                ids = vocab.ids[torch.randint(len(vocab.ids), (rows, length), generator=gen)]
                model(input_ids=ids.to(model_device(model)), use_cache=False)
                done += rows
                bar.update(rows)
    finally:
        for handle in handles:
            handle.remove()
    rho = torch.stack([spearman_with_position((s / sequences)[SKIP_POSITIONS:]).cpu() for s in sums])
    return PositionalScores(rho.to(torch.float32), length, sequences)


def default_ranges(num_layers: int) -> list[tuple[int, int]]:
    """DEFAULT_RANGES as (first, last) layer indices (inclusive), duplicates dropped."""
    out = []
    for a, b in DEFAULT_RANGES:
        first = min(int(round(a * num_layers)), num_layers - 1)
        last = max(first, min(int(round(b * num_layers)) - 1, num_layers - 1))
        out.append((first, last))
    return list(dict.fromkeys(out))


def check_ranges(ranges: Sequence[tuple[int, int]], num_layers: int) -> list[tuple[int, int]]:
    bad = [r for r in ranges if not 0 <= r[0] <= r[1] < num_layers]
    if bad:
        raise PearError(f"--positional-layers {', '.join(f'{a}-{b}' for a, b in bad)} are not ranges inside "
                        f"the model's layers 0-{num_layers - 1}")
    return list(dict.fromkeys(tuple(r) for r in ranges))


def search_positional(loaded, score: Callable[[], float], channels: Sequence[int], scales: Sequence[float],
                      ranges: Sequence[tuple[int, int]], progress: bool = True) -> tuple[QKChannelScale | None, dict]:
    """Try every channel x scale x layer range with the edit hooked; `score()` is a loss (lower is better)
    measured on the model as it is at the call. Returns the best edit, or None if none beats the unedited
    model, and a record of every score."""
    baseline = score()
    grid = [(c, s, r) for c in channels for s in scales for r in ranges]
    tried, best, best_loss = [], None, baseline
    for channel, scale, (first, last) in tqdm(grid, desc="search positional scale", disable=not progress):
        edit = QKChannelScale(channel, float(scale), first, last)
        with scale_qk_channels(loaded.adapter, qk_factor_map([edit])):
            loss = score()
        tried.append({"channel": channel, "scale": float(scale), "first_layer": first, "last_layer": last,
                      "loss": round(loss, 6)})
        if loss < best_loss:
            best, best_loss = len(tried) - 1, loss
    record = {"baseline_loss": round(baseline, 6), "tried": tried, "chosen": None if best is None else tried[best]}
    return (None if best is None else QKChannelScale(**{k: v for k, v in tried[best].items() if k != "loss"})), record
