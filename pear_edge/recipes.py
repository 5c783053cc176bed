"""Recipes: which foldable edits `pear-edge calibrate --recipe NAME` makes, and the one runner that makes them.

Every recipe ends in one Coefficients file (pear_edge.coefficients) that every consumer applies the same
way (fold, hooks, patch-gguf, patch-onnx, export, verify). The recipes are data (RECIPES); `run_recipe`
reads two facts from them:

  positional  Yu et al. (arXiv 2406.02536): detect the positional hidden channel, search a scale and a layer
              range for it on validation data (pear_edge.positional); the edit stays hooked for what follows;
  learned     o_proj input scales trained on the proxy, LLM frozen (pear_edge.train): "head" = one per head
              (PEAR; close to SEAL-H), "channel" = one per channel of each head's output (SEAL-C), None.
"""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    positional: bool = False
    learned: str | None = None   # "head" | "channel" | None
    help: str
    # what was measured on the default model (SmolLM2-135M, NQ-open test half etc.; README "Peer methods side
    # by side"), said after every calibration with this recipe; "" = nothing beyond the proxy's own note
    measured: str = ""


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(name="pear", learned="head",
           help="one learned scale per head, folded into W_o's head columns (the default; close to SEAL-H)"),
    Recipe(name="seal-c", learned="channel",
           help="one learned scale per o_proj input channel (SEAL-C, arXiv 2501.15225), folded into W_o's columns",
           measured="seal-c on SmolLM2-135M (llama.cpp Q4_1): real NQ passages -1.7 pt vs base and -8.3 pt vs the "
                    "default pear recipe (n=120, p=0.03; Q4_K_M -6.7 pt vs pear); counterfactual documents "
                    "+20.0 pt, KV lookup +7.3 pt, perplexity -1.3 % (46 passages): better for verbatim lookup, "
                    "worse for real-text QA; NQ validation half -4.4 pt vs pear (n=90) (README 'Peer methods')"),
    Recipe(name="positional", positional=True,
           help="Yu et al. (arXiv 2406.02536): the positional hidden channel scaled as a q/k input "
                "(W_q[:, ch] *= s, W_k[:, ch] *= s), channel, s and layers searched on validation data",
           measured="positional on SmolLM2-135M (llama.cpp Q4_1): real NQ passages -0.8 pt (n=120, p=1.0), "
                    "Q4_K_M +2.5 pt (-7.5 pt vs pear), counterfactual -10.0 pt (p=0.01), perplexity +1.9 % (46 "
                    "passages) (README 'Peer methods')"),
    Recipe(name="positional+pear", positional=True, learned="head",
           help="the positional edit, then head scales detected and trained with it in place",
           measured="positional+pear on SmolLM2-135M (llama.cpp Q4_1): real NQ passages +6.7 pt, level with pear "
                    "alone (n=120; Q4_K_M +0.8 pt vs pear; NQ validation half -3.3 pt vs pear, n=90), position gap "
                    "wider, perplexity +2.5 % (46 passages), over the +2 % bound (README 'Peer methods')"),
    Recipe(name="positional+seal-c", positional=True, learned="channel",
           help="the positional edit, then channel scales trained with it in place",
           measured="positional+seal-c on SmolLM2-135M (llama.cpp Q4_1): real NQ passages +5.8 pt (n=120, "
                    "p=0.21), -0.8 pt vs pear and +7.5 pt vs seal-c (p=0.035; Q4_K_M -3.3 pt vs pear), position "
                    "gap wider; KV lookup +14.6 pt vs pear (p=0.01); counterfactual -16.7 pt vs seal-c; "
                    "perplexity +1.6 % (46 passages) (README 'Peer methods')"),
)}
DEFAULT_RECIPE = "pear"

@dataclass(frozen=True, kw_only=True)
class Budget:
    """How a calibration budget changes a recipe's training (issue 14; `calibrate.with_budget`): `steps` is
    the fraction of the recipe's training steps kept (and of its detection batches, used only when heads are
    selected), the learning rate is divided by it (AdamW moves each coefficient about lr per step, so the
    path, steps x lr, is as long), and `per_step` is the fraction of the prompts and guard windows each step
    reads. The proxy, the guard's weight and the fold are unchanged. What each budget costs in gain is
    measured in README "Calibration cost"."""
    name: str
    steps: float
    per_step: float = 1.0
    help: str


BUDGETS: dict[str, Budget] = {b.name: b for b in (
    Budget(name="full", steps=1.0, help="the recipe as validated"),
    Budget(name="fast", steps=1 / 3, help="a third of the steps at three times the learning rate"),
    Budget(name="lean", steps=0.6, per_step=0.5,
           help="60 % of the steps at 1/0.6 times the learning rate, each step on half the prompts and guard windows"),
)}


def budget_help() -> str:
    return "; ".join(f"{b.name} = {b.help}" for b in BUDGETS.values())


def recipe_help() -> str:
    return "; ".join(f"{r.name} = {r.help}" for r in RECIPES.values())


def positional_step(loaded, settings, proxy, progress: bool = True) -> tuple[list, dict]:
    """The positional channel (given, or the top detected candidates) and its best q/k scale and layer range
    on validation data: the recipe's proxy (held-out batches other than those metrics report) or the
    `positional_validation` MDQA file. Returns ([QKChannelScale] (empty if nothing helped), record)."""
    from .errors import PearError
    from .positional import check_ranges, default_ranges, positional_channel_scores, search_positional

    layers, hidden = loaded.adapter.num_layers, loaded.adapter.layout.hidden_size
    if settings.positional_channel is not None:
        if not 0 <= settings.positional_channel < hidden:
            raise PearError(f"--positional-channel {settings.positional_channel} is outside the hidden size {hidden}")
        candidates, detection = [settings.positional_channel], {"given": settings.positional_channel}
    else:
        found = positional_channel_scores(loaded, settings.positional_length, settings.detect_batch, settings.seed,
                                          progress=progress)
        top = found.top(settings.positional_candidates)
        candidates = [c for c, _ in top]
        detection = {"length": found.length, "sequences": found.sequences,
                     "top": [{"channel": c, "score": round(s, 4)} for c, s in top]}
    ranges = check_ranges(settings.positional_layers, layers) if settings.positional_layers else default_ranges(layers)
    if settings.positional_validation:
        from .rag_proxy import ValidationFileProxy

        scorer = ValidationFileProxy(loaded, settings.positional_validation, batch=settings.train.batch,
                                     prompt_format=settings.train.prompt_format)
        batches = scorer.held_out(10**6, seed=0)
    else:
        scorer, count = proxy, settings.train.eval_batches
        batches = proxy.held_out(2 * count, seed=settings.train.seed + 30_000)
        batches = batches[count:] or batches  # RAG proxies: past the batches metrics.held_out_proxy reports
    metric: list[str] = []

    def score() -> float:
        result = scorer.evaluate(loaded.model, batches)
        metric[:] = [next(iter(result))]  # each proxy reports its loss first
        return result[metric[0]]

    edit, record = search_positional(loaded, score, candidates, settings.positional_scales, ranges, progress)
    return ([edit] if edit else []), {"detection": detection, "scored_on": {**scorer.describe(), "metric": metric[0],
                                                                         "batches": len(batches)}, **record}


def _learn(loaded, settings, progress, proxy, detect, on_scores, seconds: dict):
    """The learned scales (head or channel): detect, then train the selected heads; or, when every head is
    trained (calibrate.detection_fused), train and score the heads by the first step's gradient.
    Records seconds["detect_seconds"] (0 when fused)."""
    from .calibrate import detect_heads, detection_fused, train_every_head, train_from_scores

    if detection_fused(settings):
        seconds["detect_seconds"] = 0.0
        return train_every_head(loaded, settings, progress, proxy=proxy, on_scores=on_scores)
    start = time.perf_counter()
    scores = (detect or detect_heads)(loaded, settings, progress, proxy=proxy)
    seconds["detect_seconds"] = round(time.perf_counter() - start, 1)
    if on_scores is not None:
        on_scores(scores)
    return train_from_scores(loaded, scores, settings, progress, proxy=proxy)


def run_recipe(loaded, settings, progress: bool = True, proxy=None, detect=None, on_scores=None):
    """Calibrate `loaded` by settings.recipe -> Coefficients (calibration.validated: whether these settings are
    a recipe measured on this model, calibrate.unvalidated_reason). `detect(loaded, settings, progress, proxy=)`
    replaces calibrate.detect_heads (the variants' cache); `on_scores(HeadScores)` sees the head scores
    of the learned recipes (the CLI writes them beside the coefficients)."""
    from .calibrate import unvalidated_reason
    from .coefficients import Coefficients, qk_factor_map
    from .errors import PearError
    from .heads import scale_qk_channels
    from .train import held_out_record, make_proxy, prompt_format_record

    recipe = RECIPES[settings.recipe]
    start = time.perf_counter()
    proxy = proxy or make_proxy(loaded, settings.train)
    seconds = {"proxy_seconds": round(time.perf_counter() - start, 1)}  # where the time goes (issue 14)
    held_out = proxy.held_out(settings.train.eval_batches, seed=settings.train.seed + 10_000)
    qk, positional = positional_step(loaded, settings, proxy, progress) if recipe.positional else ([], None)
    if recipe.positional and not qk and not recipe.learned:
        raise PearError(f"no positional edit lowered the validation loss (baseline {positional['baseline_loss']:.4g}, "
                        f"{len(positional['tried'])} tried); nothing to fold")
    with scale_qk_channels(loaded.adapter, qk_factor_map(qk)):
        if recipe.learned:
            learned = _learn(loaded, settings, progress, proxy, detect, on_scores, seconds)
            heads, channels = learned.heads, learned.o_proj_channels
            calibration, metrics = learned.calibration, learned.metrics
        else:
            heads, channels, calibration = [], [], {**settings.as_record(), **prompt_format_record(proxy)}
            after = proxy.evaluate(loaded.model, held_out)
            metrics = {"held_out_proxy": held_out_record(proxy, after, after, len(held_out))}
    if qk:  # "before" is the unedited model, whatever the recipe did first
        after = metrics["held_out_proxy"]["after"]
        metrics["held_out_proxy"] = held_out_record(proxy, proxy.evaluate(loaded.model, held_out), after, len(held_out))
    if positional is not None:
        calibration["positional"] = positional
    calibration.update(seconds)
    calibration["validated"] = unvalidated_reason(loaded.fingerprint().weights_sha256, settings) is None
    return Coefficients(loaded.fingerprint(), heads, calibration, metrics, o_proj_channels=channels, qk_channels=qk)
