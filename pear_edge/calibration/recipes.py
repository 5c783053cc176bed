"""Recipes: which foldable edits `pear-edge calibrate --recipe NAME` makes (the runner is calibrate.run_recipe).

Every recipe ends in one Coefficients file (pear_edge.edits.coefficients) that every consumer applies the same
way (fold, hooks, patch-gguf, patch-onnx, export, verify). The recipes are data (RECIPES); the runner
reads three facts from them:

  positional  Yu et al. (arXiv 2406.02536): detect the positional hidden channel, search a scale and a layer
              range for it on validation data (pear_edge.calibration.positional); the edit stays hooked for what follows;
  learned     o_proj input scales trained on the proxy, LLM frozen (pear_edge.calibration.train): "head" = one per head
              (PEAR; close to SEAL-H), "channel" = one per channel of each head's output (SEAL-C), None;
  temperature also train one attention temperature per selected head, jointly with the learned scales (its
              queries times tau, folded into W_q's query rows; refused for families with a norm on the queries).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    positional: bool = False
    learned: str | None = None   # "head" | "channel" | None
    temperature: bool = False    # also learn one attention temperature per selected head
    help: str
    paper: str                   # where the method comes from


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(name="pear", learned="head", paper="https://arxiv.org/abs/2409.19745",
           help="one learned scale per head, folded into W_o's head columns (the default; close to SEAL-H)"),
    Recipe(name="seal-c", learned="channel", paper="https://arxiv.org/abs/2501.15225",
           help="one learned scale per o_proj input channel (SEAL-C, arXiv 2501.15225), folded into W_o's columns"),
    Recipe(name="positional", positional=True, paper="https://arxiv.org/abs/2406.02536",
           help="Yu et al. (arXiv 2406.02536): the positional hidden channel scaled as a q/k input "
                "(W_q[:, ch] *= s, W_k[:, ch] *= s), channel, s and layers searched on validation data"),
    Recipe(name="positional+pear", positional=True, learned="head",
           paper="https://arxiv.org/abs/2406.02536 + https://arxiv.org/abs/2409.19745",
           help="the positional edit, then head scales detected and trained with it in place"),
    Recipe(name="positional+seal-c", positional=True, learned="channel",
           paper="https://arxiv.org/abs/2406.02536 + https://arxiv.org/abs/2501.15225",
           help="the positional edit, then channel scales trained with it in place"),
    Recipe(name="pear+temperature", learned="head", temperature=True,
           paper="https://arxiv.org/abs/2409.19745 + attention temperature (a per-head softmax scale on the "
                 "queries, as in Scalable-Softmax, https://arxiv.org/abs/2501.19399)",
           help="head scales and one attention temperature per head trained jointly: the head's query rows of W_q "
                "times tau, its attention logits times tau (not for models with a norm on the queries: qwen3, gemma3)"),
)}
DEFAULT_RECIPE = "pear"


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How a calibration budget changes a recipe's training (`calibrate.with_budget`): `steps` is
    the fraction of the recipe's training steps kept (and of its detection batches, used only when heads are
    selected), the learning rate is divided by it (AdamW moves each coefficient about lr per step, so the
    path, steps x lr, is as long), and `per_step` is the fraction of the prompts and guard windows each step
    reads. The proxy, the guard's weight and the fold are unchanged. What each budget costs in gain is
    measured in docs/results.md."""
    name: str
    steps: float
    per_step: float = 1.0
    help: str


BUDGETS: dict[str, Budget] = {b.name: b for b in (
    Budget(name="full", steps=1.0, help="the recipe as validated"),
    Budget(name="fast", steps=1 / 3, help="a third of the steps at three times the learning rate"),
    Budget(name="lean", steps=3 / 5, per_step=1 / 2,
           help="60 % of the steps at 1/0.6 times the learning rate, each step on half the prompts and guard windows"),
)}


def budget_help() -> str:
    return "; ".join(f"{b.name} = {b.help}" for b in BUDGETS.values())


def recipe_help() -> str:
    return "; ".join(f"{r.name} = {r.help}" for r in RECIPES.values())
