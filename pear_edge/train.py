"""Train one fp32 scalar per selected head on a proxy loss, the LLM frozen.

Constraints on the coefficients (measured on the default model, see README "Making PEAR help"):
  none  - the paper: unconstrained; coefficients can exceed 1 (amplify) or go negative;
  le1   - clamp to (-inf, 1] after each step: only weaken heads;
  unit  - clamp to [0, 1] after each step: only weaken, never flip a head's sign.
`pull` adds pull * sum((c - 1)^2) to the loss: an L2 leash towards the unmodified model.
`guard` adds guard * (language-model loss on natural text, guard.TextGuard): a leash on perplexity.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .coefficients import Coefficients, HeadCoefficient
from .errors import PearError
from .guard import TextGuard
from .heads import scale_heads
from .proxy import model_device

CONSTRAINTS = {"none": (-math.inf, math.inf), "le1": (-math.inf, 1.0), "unit": (0.0, 1.0)}
PROXIES = ("copy", "mdqa", "passage", "cloze")


@dataclass
class TrainSettings:
    steps: int = 40
    batch: int = 10
    n: int = 50
    lr: float = 1e-2
    weight_decay: float = 0.0
    constraint: str = "unit"
    pull: float = 0.0
    proxy: str = "copy"
    seed: int = 0
    eval_batches: int = 2
    pool: int = 400  # training examples the RAG-shaped proxies draw from
    guard: float = 0.0
    guard_batch: int = 4
    corpus: str | None = None  # cloze proxy: None = the built-in real-text corpus, or a folder / rag index


def make_proxy(loaded, settings: TrainSettings):
    """The proxy task object named by settings.proxy (see proxy.CopyProxy, rag_proxy)."""
    if settings.proxy == "copy":
        from .proxy import CopyProxy

        return CopyProxy(loaded, settings.n, settings.batch)
    if settings.proxy in ("mdqa", "passage"):
        from .rag_proxy import MDQAProxy

        target = "answer" if settings.proxy == "mdqa" else "passage"
        return MDQAProxy(loaded, batch=settings.batch, pool=settings.pool, seed=settings.seed, target=target)
    if settings.proxy == "cloze":
        from .rag_proxy import ClozeProxy

        return ClozeProxy(loaded, batch=settings.batch, pool=settings.pool, seed=settings.seed, corpus=settings.corpus)
    raise PearError(f"unknown proxy {settings.proxy!r}; choose one of {', '.join(PROXIES)}")


def train_coefficients(loaded, heads: list[tuple[int, int, float]], settings: TrainSettings,
                       progress: bool = True, proxy=None) -> Coefficients:
    """Return Coefficients for `heads` [(layer, head, score)], trained on the proxy task."""
    if not heads:
        raise PearError("no heads selected to train")
    if settings.constraint not in CONSTRAINTS:
        raise PearError(f"unknown constraint {settings.constraint!r}; choose one of {', '.join(CONSTRAINTS)}")
    model, adapter = loaded.model, loaded.adapter
    proxy = proxy or make_proxy(loaded, settings)
    keys = [(l, h) for l, h, _ in heads]
    held_out = proxy.held_out(settings.eval_batches, seed=settings.seed + 10_000)
    before = proxy.evaluate(model, held_out)

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    values = torch.nn.Parameter(torch.ones(len(keys), dtype=torch.float32, device=model_device(model)))
    optim = torch.optim.AdamW([values], lr=settings.lr, weight_decay=settings.weight_decay)
    low, high = CONSTRAINTS[settings.constraint]
    guard = TextGuard(loaded.tokenizer, settings.guard_batch) if settings.guard else None
    losses, guard_losses = [], []
    start = time.perf_counter()
    with scale_heads(adapter, heads=keys, values=values), torch.enable_grad():
        bar = tqdm(range(settings.steps), desc=f"train ({proxy.name} proxy)", disable=not progress)
        for _ in bar:
            loss = proxy.loss(model, proxy.sample(gen))
            objective = loss + settings.pull * ((values - 1) ** 2).sum() if settings.pull else loss
            if guard is not None:
                guard_loss = guard.loss(model, guard.sample(gen))
                objective = objective + settings.guard * guard_loss
                guard_losses.append(float(guard_loss.detach()))
            optim.zero_grad()
            objective.backward()
            optim.step()
            with torch.no_grad():
                values.clamp_(low, high)
            if not torch.isfinite(values).all():
                raise PearError("training diverged (non-finite coefficient); lower --lr")
            losses.append(float(loss.detach()))
            c = values.detach()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", cmin=f"{float(c.min()):.2f}", cmax=f"{float(c.max()):.2f}")
        after = proxy.evaluate(model, held_out)
    seconds = time.perf_counter() - start
    trained = values.detach().cpu().tolist()
    coeffs = [HeadCoefficient(l, h, float(c), float(s)) for (l, h, s), c in zip(heads, trained)]
    calibration = {**settings.__dict__, "train_seconds": round(seconds, 1), "loss_curve": [round(x, 4) for x in losses],
                   "guard_curve": [round(x, 4) for x in guard_losses]}
    loss_key = next(iter(before))  # each proxy reports its loss first
    metrics = {"held_out_proxy": {"before": before, "after": after, **proxy.describe(), "batches": len(held_out),
                                  "improved": after[loss_key] < before[loss_key]}}
    return Coefficients(loaded.fingerprint(), coeffs, calibration, metrics)
