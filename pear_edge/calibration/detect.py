"""Suppression-head detection on the proxy task.

exact: the paper's method. For each head, replace its output at the predicting position(s) by its
    batch mean there and measure the change of (correct-token logit - mean logit). A positive score
    means the head *suppresses* copying. With positions="last" (the paper's single predicting position)
    only the last token's stream changes, so each ablation is a one-token forward over a cached prefix.
attribution: first-order estimate of the same quantity for every head from one backward pass:
    gradient x (batch mean - actual head output).
gradient: d(proxy loss)/d(head scale) at scale 1, for any proxy (copy or mdqa): positive means
    shrinking the head lowers the loss, i.e. the head works against the task.
exact and attribution scores are averaged over several sequence lengths n.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pear_edge.base.atomic import write_text_atomic
from pear_edge.edits.coefficients import ModelFingerprint
from pear_edge.base.errors import PearError
from pear_edge.edits.heads import edit_heads, scale_heads
from pear_edge.calibration.proxy import CopyProxy, ProxyVocab, backward_in_parts, model_device, proxy_batch
from pear_edge.runtime.distributed import backward_shared, parts_per_rank

METHODS = ("exact", "attribution", "gradient")
# What a score measures, by detection method: the heatmap's colour-bar label.
SCORE_MEANINGS = {
    "exact": "Δ(correct − mean logit) when mean-ablated",
    "attribution": "first-order estimate of Δ(correct − mean logit) when mean-ablated",
    "gradient": "d(proxy loss)/d(head scale) at scale 1",
}
POSITIONS = ("last", "copy")


def _margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """correct-token logit minus mean logit; logits (..., V), target (...)."""
    return logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - logits.mean(-1)


def _predicting_positions(n: int, positions: str) -> slice:
    """Positions in the (2n-1)-token input whose next token is a copy target."""
    return slice(2 * n - 2, 2 * n - 1) if positions == "last" else slice(n, 2 * n - 1)


@torch.no_grad()
def _capture_head_outputs(model, adapter, inputs: torch.Tensor, where: slice) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Clean run: per layer the o_proj input at `where` as (B, P, H, d), and the logits."""
    captured: list[torch.Tensor] = [None] * adapter.num_layers  # type: ignore[list-item]

    def make(layer: int):
        def edit(x):
            captured[layer] = x[:, where].clone()
            return x
        return edit

    with edit_heads(adapter, {l: make(l) for l in range(adapter.num_layers)}):
        logits = model(input_ids=inputs).logits
    return captured, logits


def _replace_each_head(mean: torch.Tensor, heads: int):
    """For a batch laid out as (sequence, copy j): set head j of copy j to its batch mean (H, d)."""
    def edit(x):
        x = x.clone()
        grid = x.view(-1, heads, *x.shape[1:])  # (B, copy, T, H, d)
        index = torch.arange(heads)
        grid[:, index, -1, index] = mean
        return x
    return edit


def _replace_head(head: int, mean: torch.Tensor, where: slice):
    def edit(x):
        x = x.clone()
        x[:, where, head] = mean[:, head]
        return x
    return edit


@torch.no_grad()
def _exact_one_length(model, adapter, tokens: torch.Tensor, positions: str, bar) -> torch.Tensor:
    n = tokens.shape[1] // 2
    inputs, where = tokens[:, :-1], _predicting_positions(n, positions)
    targets = tokens[:, 1:][:, where]
    captured, logits = _capture_head_outputs(model, adapter, inputs, where)
    clean = _margin(logits[:, where], targets).mean()
    means = [c.mean(0) for c in captured]  # (P, H, d) per layer
    scores = torch.zeros(adapter.num_layers, adapter.num_heads)
    if positions == "last":
        # One pass per layer ablates all its heads at once: copy j of each sequence ablates head j.
        heads = adapter.num_heads
        prefix = model(input_ids=inputs[:, :-1], use_cache=True).past_key_values
        prefix.batch_repeat_interleave(heads)
        prefix_len = inputs.shape[1] - 1
        last = inputs[:, -1:].repeat_interleave(heads, dim=0)
        for layer in range(adapter.num_layers):
            with edit_heads(adapter, {layer: _replace_each_head(means[layer][-1], heads)}):
                out = model(input_ids=last, past_key_values=prefix, use_cache=True).logits[:, -1]
            prefix.crop(prefix_len)
            margins = _margin(out, targets[:, -1].repeat_interleave(heads)).view(-1, heads)
            scores[layer] = margins.mean(0) - clean
            bar.update(heads)
    else:
        for layer in range(adapter.num_layers):
            for head in range(adapter.num_heads):
                with edit_heads(adapter, {layer: _replace_head(head, means[layer], where)}):
                    out = model(input_ids=inputs).logits
                scores[layer, head] = _margin(out[:, where], targets).mean() - clean
                bar.update(1)
    return scores


def _attribution_one_length(model, adapter, tokens: torch.Tensor, positions: str) -> torch.Tensor:
    n = tokens.shape[1] // 2
    inputs, where = tokens[:, :-1], _predicting_positions(n, positions)
    targets = tokens[:, 1:][:, where]
    deltas: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []

    def make(layer: int):
        def edit(x):
            delta = torch.zeros_like(x, requires_grad=True)
            deltas.append(delta)
            seen.append(x.detach()[:, where])
            return x + delta
        return edit

    with torch.enable_grad(), edit_heads(adapter, {l: make(l) for l in range(adapter.num_layers)}):
        logits = model(input_ids=inputs).logits
        metric = _margin(logits[:, where], targets).mean()
        grads = torch.autograd.grad(metric, deltas)
    scores = torch.zeros(adapter.num_layers, adapter.num_heads)
    for layer, (grad, x) in enumerate(zip(grads, seen)):
        change = x.mean(0, keepdim=True) - x  # (B, P, H, d)
        scores[layer] = (grad[:, where] * change).sum(-1).sum(1).mean(0)
    return scores


@dataclass
class HeadScores:
    """Suppression score per head (layers x heads); higher = stronger suppressor."""

    scores: torch.Tensor
    model: ModelFingerprint
    settings: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[tuple[int, int, float]]:
        L, H = self.scores.shape
        flat = [(l, h, float(self.scores[l, h])) for l in range(L) for h in range(H)]
        return sorted(flat, key=lambda t: -t[2])

    def top(self, k: int, max_per_layer: int | None = None, by: str = "score") -> list[tuple[int, int, float]]:
        """The k heads with the highest score (suppressors), or with by="abs" the k largest in magnitude
        (suppressors to weaken and heads the proxy relies on, to strengthen)."""
        if by not in ("score", "abs"):
            raise PearError(f"head selection must be 'score' or 'abs', not {by!r}")
        ranking = self.ranking() if by == "score" else sorted(self.ranking(), key=lambda t: -abs(t[2]))
        chosen, per_layer = [], {}
        for l, h, s in ranking:
            if len(chosen) == k:
                break
            if max_per_layer is not None and per_layer.get(l, 0) >= max_per_layer:
                continue
            per_layer[l] = per_layer.get(l, 0) + 1
            chosen.append((l, h, s))
        return chosen

    def to_json(self) -> str:
        from pear_edge.edits.coefficients import _fingerprint_dict

        doc = {
            "format": "pear-edge/head-scores",
            "version": 1,
            "model": _fingerprint_dict(self.model),
            "settings": self.settings,
            "scores": [[round(float(v), 6) for v in row] for row in self.scores],
            "ranking": [{"layer": l, "head": h, "score": round(s, 6)} for l, h, s in self.ranking()],
        }
        return json.dumps(doc, indent=2)

    def save(self, path: str | Path, plot: bool = True, top_k: int = 0) -> list[Path]:
        path = Path(path)
        written = [write_text_atomic(path, self.to_json() + "\n")]
        if plot:
            written.append(save_heatmap(self, path.with_suffix(".png"), top_k))
        return written

    @classmethod
    def load(cls, path: str | Path) -> "HeadScores":
        """Read a head-scores file strictly (the fingerprint with the coefficients reader's rules)."""
        from pear_edge.edits.coefficients import parse_fingerprint, parse_json_object
        from pear_edge.base.inputs import read_text

        source = str(path)
        doc = parse_json_object(read_text(path, "head scores file"), source, "head-scores")
        if doc.get("format") != "pear-edge/head-scores":
            raise PearError(f"{source}: not a pear-edge head-scores file (missing format='pear-edge/head-scores')")
        model = parse_fingerprint(doc.get("model"), f"{source}: model")
        scores = doc.get("scores")
        shape = (model.num_layers, model.num_heads)
        if not (isinstance(scores, list) and len(scores) == shape[0]
                and all(isinstance(row, list) and len(row) == shape[1] for row in scores)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for row in scores for v in row)):
            raise PearError(f"{source}: 'scores' must be {shape[0]} x {shape[1]} finite numbers")
        settings = doc.get("settings", {})
        if not isinstance(settings, dict):
            raise PearError(f"{source}: 'settings' must be a JSON object")
        return cls(torch.tensor(scores, dtype=torch.float32), model, settings)


def score_meaning(settings: dict) -> str:
    """What the scores in a head-scores file measure, from the method that actually made them."""
    return SCORE_MEANINGS.get(settings.get("method"), "suppression score (unknown method)")


def heatmap_title(scores: HeadScores) -> str:
    method = scores.settings.get("method", "?")
    proxy = f", {scores.settings['proxy']} proxy" if method == "gradient" and scores.settings.get("proxy") else ""
    return f"suppression score ({method}{proxy}, {scores.model.name or scores.model.model_type})"


def save_heatmap(scores: HeadScores, path: Path, top_k: int = 0) -> Path:
    """Scores (layers x heads) as a diverging heatmap, the top-k heads outlined, labelled by the method used."""
    from pear_edge.base.plots import pyplot, save_png

    plt = pyplot()
    data = scores.scores.numpy()
    L, H = data.shape
    bound = float(abs(data).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(4, H * 0.45 + 2), max(3, L * 0.22 + 1.5)))
    im = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(heatmap_title(scores))
    fig.colorbar(im, ax=ax, label=score_meaning(scores.settings))
    for l, h, _ in scores.top(top_k):
        ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def scale_gradient_scores(loaded, proxy, batches: int, seed: int = 0, progress: bool = True,
                          micro_batch: int = 0) -> torch.Tensor:
    """d(loss)/d(scale) of every head at scale 1, averaged over `batches` proxy batches (each backpropagated
    `micro_batch` prompts at a time, the same gradient: proxy.backward_in_parts)."""
    adapter = loaded.adapter
    heads = [(l, h) for l in range(adapter.num_layers) for h in range(adapter.num_heads)]
    values = torch.ones(len(heads), device=model_device(loaded.model), requires_grad=True)
    gen = torch.Generator().manual_seed(seed + 20_000)
    with scale_heads(adapter, heads=heads, values=values), torch.enable_grad():
        for _ in tqdm(range(batches), desc=f"detect (gradient, {proxy.name} proxy)", disable=not progress):
            batch = proxy.sample(gen)
            parts = proxy.parts(batch, parts_per_rank(proxy.batch, micro_batch))
            backward_shared(lambda mine: backward_in_parts(lambda part: proxy.loss(loaded.model, part), mine, 1 / batches),
                            parts, [values])
    return values.grad.detach().cpu().view(adapter.num_layers, adapter.num_heads)


def detect(loaded, method: str = "exact", lengths: tuple[int, ...] = (15, 25, 50), batch: int = 20,
           seed: int = 0, positions: str = "last", progress: bool = True, proxy=None,
           gradient_batches: int = 8, micro_batch: int = 0) -> HeadScores:
    """Score every head of `loaded` (a models.LoadedModel) as a suppressor; `proxy` is used by
    method="gradient" (default: the copy proxy with n = max(lengths))."""
    if method == "gradient":
        proxy = proxy or CopyProxy(loaded, max(lengths), batch)
        scores = scale_gradient_scores(loaded, proxy, gradient_batches, seed, progress, micro_batch)
        settings = {"method": method, **proxy.describe(), "batches": gradient_batches, "seed": seed}
        return HeadScores(scores, loaded.fingerprint(), settings)
    if method not in METHODS:
        raise PearError(f"unknown detection method {method!r}; choose one of {', '.join(METHODS)}")
    if positions not in POSITIONS:
        raise PearError(f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
    if not lengths or min(lengths) < 2:
        raise PearError("proxy lengths must be at least 2")
    model, adapter = loaded.model, loaded.adapter
    vocab = ProxyVocab.from_model(loaded)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(adapter.num_layers, adapter.num_heads)
    per_length = adapter.num_layers * adapter.num_heads if method == "exact" else 1
    with tqdm(total=per_length * len(lengths), desc=f"detect ({method})", disable=not progress,
              unit="head" if method == "exact" else "pass") as bar:
        for n in lengths:
            tokens = proxy_batch(vocab, n, batch, gen).to(model_device(model))
            if method == "exact":
                total += _exact_one_length(model, adapter, tokens, positions, bar).cpu()
            else:
                total += _attribution_one_length(model, adapter, tokens, positions).cpu()
                bar.update(1)
    settings = {"method": method, "lengths": list(lengths), "batch": batch, "seed": seed, "positions": positions}
    return HeadScores(total / len(lengths), loaded.fingerprint(), settings)
