"""Train one fp32 scalar per selected head on the proxy copy loss, the LLM frozen.

Constraints on the coefficients (measured on the default model, see README "Calibration"):
  none  - the paper: unconstrained; coefficients can exceed 1 (amplify) or go negative;
  le1   - clamp to (-inf, 1] after each step: only weaken heads;
  unit  - clamp to [0, 1] after each step: only weaken, never flip a head's sign.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .coefficients import Coefficients, HeadCoefficient
from .errors import PearError
from .heads import scale_heads
from .proxy import ProxyVocab, copy_loss, evaluate_copy, held_out_batches, proxy_batch

CONSTRAINTS = {"none": (-math.inf, math.inf), "le1": (-math.inf, 1.0), "unit": (0.0, 1.0)}


@dataclass
class TrainSettings:
    steps: int = 60
    batch: int = 20
    n: int = 50
    lr: float = 5e-3
    weight_decay: float = 0.0
    constraint: str = "unit"
    seed: int = 0
    eval_batches: int = 2


def train_coefficients(loaded, heads: list[tuple[int, int, float]], settings: TrainSettings,
                       progress: bool = True) -> Coefficients:
    """Return Coefficients for `heads` [(layer, head, score)], trained on the proxy task."""
    if not heads:
        raise PearError("no heads selected to train")
    if settings.constraint not in CONSTRAINTS:
        raise PearError(f"unknown constraint {settings.constraint!r}; choose one of {', '.join(CONSTRAINTS)}")
    model, adapter = loaded.model, loaded.adapter
    vocab = ProxyVocab.from_model(loaded)
    keys = [(l, h) for l, h, _ in heads]
    held_out = held_out_batches(vocab, settings.n, settings.batch, settings.eval_batches, seed=settings.seed + 10_000)
    before = evaluate_copy(model, held_out)

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    values = torch.nn.Parameter(torch.ones(len(keys), dtype=torch.float32))
    optim = torch.optim.AdamW([values], lr=settings.lr, weight_decay=settings.weight_decay)
    low, high = CONSTRAINTS[settings.constraint]
    losses = []
    start = time.perf_counter()
    with scale_heads(adapter, heads=keys, values=values), torch.enable_grad():
        bar = tqdm(range(settings.steps), desc="train", disable=not progress)
        for _ in bar:
            tokens = proxy_batch(vocab, settings.n, settings.batch, gen)
            loss = copy_loss(model(input_ids=tokens).logits, tokens)
            optim.zero_grad()
            loss.backward()
            optim.step()
            with torch.no_grad():
                values.clamp_(low, high)
            if not torch.isfinite(values).all():
                raise PearError("training diverged (non-finite coefficient); lower --lr")
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", cmin=f"{float(values.detach().min()):.2f}",
                            cmax=f"{float(values.detach().max()):.2f}")
        after = evaluate_copy(model, held_out)
    seconds = time.perf_counter() - start
    trained = values.detach().tolist()
    coeffs = [HeadCoefficient(l, h, float(c), float(s)) for (l, h, s), c in zip(heads, trained)]
    calibration = {**settings.__dict__, "train_seconds": round(seconds, 1), "loss_curve": [round(x, 4) for x in losses]}
    metrics = {"held_out_proxy": {"before": before, "after": after, "n": settings.n,
                                  "sequences": settings.batch * settings.eval_batches}}
    return Coefficients(loaded.fingerprint(), coeffs, calibration, metrics)
