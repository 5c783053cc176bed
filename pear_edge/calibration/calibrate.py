"""Calibration = detect suppression heads, then train their coefficients (or, by `recipe`, the other foldable
edits of pear_edge.calibration.recipes). One settings object carries every knob, so the CLI, the Python API and the sweep
all run the same code."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from pear_edge.arch.registry import check_q_temperatures
from pear_edge.edits.coefficients import Coefficients
from pear_edge.calibration.detect import HeadScores, detect
from pear_edge import results
from pear_edge.base.errors import PearError
from pear_edge.calibration.positional import SCALES as POSITIONAL_SCALES
from pear_edge.data.prompts import AUTO, FORMAT_CHOICES
from pear_edge.calibration.recipes import BUDGETS, DEFAULT_RECIPE, RECIPES
from pear_edge.data.textqa import GOLD_SLOTS
import time

from pear_edge.calibration.options import given
from pear_edge.calibration.positional import (check_ranges, default_ranges, positional_channel_scores,
                                              search_positional)
from pear_edge.calibration.rag_proxy import ValidationFileProxy
from pear_edge.calibration.train import (TrainSettings, check_prompt_settings, held_out_record, make_proxy,
                                         prompt_format_record, train_coefficients)
from pear_edge.data.templates import resolve_template
from pear_edge.edits.coefficients import qk_factor_map
from pear_edge.edits.heads import scale_qk_channels
from pear_edge.runtime.precision import weights_dtype


@dataclass
class CalibrationSettings:
    """Field defaults are the paper's detection knobs with a fast training run on the copy proxy;
    DEFAULTS below (the recipe `calibrate` uses) is the one chosen by the validation search.
    top_k = 0 trains every head."""

    method: str = "attribution"
    lengths: tuple[int, ...] = (15, 25, 50)
    positions: str = "last"
    detect_batch: int = 20
    gradient_batches: int = 8
    top_k: int = 8
    select: str = "score"
    max_per_layer: int | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0
    recipe: str = DEFAULT_RECIPE
    budget: str = "full"  # recipes.BUDGETS: fewer, larger training steps (applied by from_args / with_budget)
    # The positional recipes (Yu et al.; pear_edge.calibration.positional): a given channel, or the top candidates of the
    # detection over random-token sequences of positional_length; every candidate x scale x layer range
    # (first, last; () = positional.DEFAULT_RANGES) scored on held-out proxy batches or a validation MDQA file.
    positional_channel: int | None = None
    positional_candidates: int = 3
    positional_scales: tuple[float, ...] = POSITIONAL_SCALES
    positional_layers: tuple[tuple[int, int], ...] = ()
    positional_length: int = 256
    positional_validation: str | None = None

    def __post_init__(self) -> None:
        """Lists (variants files, JSON) become the tuples the CLI gives."""
        self.positional_scales = tuple(float(x) for x in self.positional_scales)
        self.positional_layers = tuple(tuple(r) for r in self.positional_layers)

    @classmethod
    def from_args(cls, args, base: "CalibrationSettings | None" = None) -> "CalibrationSettings":
        """`base` (default: DEFAULTS) with every option given on the command line applied on top
        (`pear_edge.calibration.options`); --corpus without --proxy means the cloze proxy."""
        overrides = given(args)
        if "corpus" in overrides:
            overrides.setdefault("proxy", "cloze")
        base = base or DEFAULTS
        proxy = overrides.get("proxy")
        if proxy in PROXY_SETTINGS and base.train.proxy != proxy:
            base = with_overrides(base, PROXY_SETTINGS[proxy])  # that proxy's validated settings, then the flags
        if "budget" in overrides:
            base = with_budget(base, overrides["budget"])  # the budget's knobs, then the user's other flags
        return with_overrides(base, overrides, getattr(args, "seed", base.seed))

    def check(self) -> None:
        if self.budget not in BUDGETS:
            raise PearError(f"unknown budget {self.budget!r}; choose one of {', '.join(BUDGETS)}")
        if self.recipe not in RECIPES:
            raise PearError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if not self.positional_scales or not all(math.isfinite(x) for x in self.positional_scales):
            raise PearError(f"--positional-scales must be finite numbers (got {list(self.positional_scales)})")
        if any(len(r) != 2 or not 0 <= r[0] <= r[1] for r in self.positional_layers):
            raise PearError(f"--positional-layers must be ranges FIRST-LAST with 0 <= FIRST <= LAST "
                            f"(got {list(self.positional_layers)})")
        for name, value, low in (("positional-candidates", self.positional_candidates, 1),
                                 ("positional-length", self.positional_length, 8),
                                 ("positional-channel", self.positional_channel or 0, 0)):
            if value < low:
                raise PearError(f"--{name} must be at least {low} (got {value})")
        if self.train.corpus is not None and self.train.proxy != "cloze":
            raise PearError(f"--corpus goes with the cloze proxy, not --proxy {self.train.proxy}")
        if self.train.gold not in GOLD_SLOTS:  # the Python API and variants files; the CLI has choices
            raise PearError(f"unknown gold placement {self.train.gold!r}; choose one of {', '.join(GOLD_SLOTS)}")
        if self.train.gold != "uniform" and self.train.proxy != "cloze":
            raise PearError(f"--gold goes with the cloze proxy, not --proxy {self.train.proxy}")
        if self.train.prompt_format not in FORMAT_CHOICES:
            raise PearError(f"--prompt-format must be one of {', '.join(FORMAT_CHOICES)} "
                            f"(got {self.train.prompt_format!r})")
        if self.train.prompt_format != AUTO and self.train.proxy == "copy":
            raise PearError("--prompt-format goes with the mdqa, passage and cloze proxies; "
                            "the copy proxy has no prompt")
        check_prompt_settings(self.train)
        if self.top_k < 0:
            raise PearError(f"--top-k must be 0 (every head) or more (got {self.top_k})")
        for name, value in (("steps", self.train.steps), ("batch", self.train.batch),
                            ("guard-batch", self.train.guard_batch),
                            ("detect-batch", self.detect_batch), ("n", self.train.n)):
            if value < 1:
                raise PearError(f"--{name} must be at least 1 (got {value})")
        if self.train.micro_batch < 0:
            raise PearError(f"--micro-batch must be 0 (the whole batch) or more (got {self.train.micro_batch})")
        if not self.train.lr > 0:
            raise PearError(f"--lr must be positive (got {self.train.lr})")
        for name, value in (("pull", self.train.pull), ("guard", self.train.guard)):
            if not value >= 0:  # also refuses NaN
                raise PearError(f"--{name} must be 0 (off) or positive (got {value})")

    def as_record(self) -> dict:
        return dataclasses.asdict(self)

    def comparable(self) -> dict:
        """The settings that decide what is computed: as_record() without the execution-only fields
        (EXECUTION_FIELDS change memory and time, not the result beyond float rounding)."""
        record = self.as_record()
        record["train"] = {k: v for k, v in record["train"].items() if k not in EXECUTION_FIELDS}
        return record


EXECUTION_FIELDS = ("micro_batch", "checkpoint")


# Validated settings of each RAG-shaped proxy (eval/lab/variants/; docs/results.md). Both re-weight every head (one scalar each, free in sign and size) held near 1 by an L2 pull and by
# the language-model loss on natural text (guard); the paper's recipe (copy proxy, top-K suppressors) did not
# raise RAG accuracy on SmolLM2-135M. Choosing `--proxy X` (or --corpus: cloze) on a profile with another
# proxy starts from PROXY_SETTINGS[X], then applies the user's other flags.
# - passage: copy the gold passage out of ten invented documents (one template) - "all-free-p1-g3";
# - cloze: questions generated from real text (the built-in corpus or --corpus), answer-span target, 3-10
#   documents with retrieved distractors - "cloze-all-free-p1-g6-30x4" (eval/lab/variants/realtext-smollm2.json).
PROXY_SETTINGS = {
    "passage": {"proxy": "passage", "steps": 40, "batch": 8, "lr": 0.02, "guard": 3.0},
    "cloze": {"proxy": "cloze", "steps": 30, "batch": 4, "lr": 0.025, "guard": 6.0},
}
def with_budget(base: "CalibrationSettings", budget: str) -> "CalibrationSettings":
    """`base` with BUDGETS[budget] applied (recorded as settings.budget; an unknown name is refused by `check`):
    steps x b.steps and gradient_batches x b.steps (rounded, >= 1), lr / b.steps (4 decimals), batch and
    guard_batch x b.per_step (rounded, >= 1)."""
    b = BUDGETS.get(budget, BUDGETS["full"])
    if b.name == "full":
        return with_overrides(base, {"budget": budget})
    return with_overrides(base, {"budget": budget, "steps": max(1, round(base.train.steps * b.steps)),
                                 "lr": round(base.train.lr / b.steps, 4),
                                 "gradient_batches": max(1, round(base.gradient_batches * b.steps)),
                                 "batch": max(1, round(base.train.batch * b.per_step)),
                                 "guard_batch": max(1, round(base.train.guard_batch * b.per_step))})


def with_overrides(base: CalibrationSettings, overrides: dict, seed: int | None = None) -> CalibrationSettings:
    """`base` with `overrides` ({field: value} of CalibrationSettings or its TrainSettings), checked; one seed
    for detection and training. Used by the CLI (`from_args`), the variants files and the Python API."""
    train_fields = {f.name for f in dataclasses.fields(TrainSettings)}
    top_fields = {f.name for f in dataclasses.fields(CalibrationSettings)} - {"train"}
    unknown = set(overrides) - train_fields - top_fields
    if unknown:
        raise PearError(f"unknown settings {sorted(unknown)}; use fields of CalibrationSettings/TrainSettings")
    seed = base.seed if seed is None else seed
    train = dataclasses.replace(base.train, seed=seed, **{k: v for k, v in overrides.items() if k in train_fields})
    top = {k: (tuple(v) if k == "lengths" else v) for k, v in overrides.items() if k in top_fields}
    settings = dataclasses.replace(base, train=train, seed=seed, **top)
    settings.check()
    return settings


_COMMON = CalibrationSettings(method="gradient", top_k=0, gradient_batches=2,
                              train=TrainSettings(constraint="none", pull=0.1, pool=2000, micro_batch=1))
# What `calibrate` uses on the default model: the cloze recipe, chosen on the NQ-open validation half over the
# passage recipe (docs/results.md); `--proxy passage` gives the previous default.
DEFAULTS = with_overrides(_COMMON, PROXY_SETTINGS["cloze"])
# Per-model calibration profiles: the settings `pear-edge calibrate --model NAME` uses unless options
# override them. Gemma-3-270M (a base model without a chat template: the cloze proxy prompts it in the
# completion format) uses the same cloze recipe: chosen on the NQ-open validation half over the per-channel
# recipe (seal-c) by a rule written before any Gemma result (docs/experiments/; docs/results.md).
PROFILES: dict[str, CalibrationSettings] = {"default": DEFAULTS, "gemma3-270m": DEFAULTS}


def profile_for(model: str) -> CalibrationSettings:
    return PROFILES.get(model, DEFAULTS)


# Fields that do not change what a recipe computes when the recipe does not use them.
_POSITIONAL_FIELDS = ("positional_channel", "positional_candidates", "positional_scales", "positional_layers",
                      "positional_length", "positional_validation")


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def unvalidated_reason(weights_sha256: str, settings: CalibrationSettings) -> str | None:
    """None when `settings` are a validated recipe for the model with these weights (measured.json), else one
    sentence saying why not: no recipe measured on this model, its measured recipe without an established gain,
    or which settings differ from the measured one (execution-only fields and unused positional fields do not
    count)."""
    entry = results.model_entry(weights_sha256)
    if entry is None:
        return ("no recipe has been measured on real passages for this model, so these coefficients may not "
                "help it; measure them before deploying (`pear-edge eval --task mdqa --data YOUR.jsonl --base "
                "BASE --pear PATCHED`)")
    evidence = entry.get("doc", "docs/results.md")
    if not entry["validated"]:
        return (f"the recipe measured on this model has no established gain on real passages ({evidence}); "
                f"measure before deploying")
    measured, given = _flat(PROFILES[entry["profile"]].comparable()), _flat(settings.comparable())
    unused = () if RECIPES[settings.recipe].positional else _POSITIONAL_FIELDS
    differ = sorted(k for k in measured.keys() | given.keys()
                    if measured.get(k) != given.get(k) and k not in unused)
    if not differ:
        return None
    return (f"these settings differ from the measured recipe for this model ({', '.join(differ)}; measured: "
            f"{evidence}), so its gain is not established for them; measure before deploying")


def detect_heads(loaded, settings: CalibrationSettings, progress: bool = True, proxy=None) -> HeadScores:
    if settings.method == "gradient" and proxy is None:
        proxy = make_proxy(loaded, settings.train)
    return detect(loaded, settings.method, settings.lengths, settings.detect_batch, settings.seed,
                  settings.positions, progress, proxy=proxy, gradient_batches=settings.gradient_batches,
                  micro_batch=settings.train.micro_batch)


def detection_fused(settings: CalibrationSettings) -> bool:
    """True when detection selects nothing: every head is trained (top_k 0, no per-layer cap) and the scores
    are gradients, so they only order and record the heads. The heads' scores then come from the first
    training step's gradient (the same quantity, d(proxy loss)/d(head scale) at scale 1, on that step's
    batch) instead of separate detection batches - the coefficients are the same, detection's time is saved."""
    return settings.method == "gradient" and not settings.top_k and settings.max_per_layer is None


def train_every_head(loaded, settings: CalibrationSettings, progress: bool = True, proxy=None,
                     on_scores=None) -> Coefficients:
    """Detection fused into training (detection_fused): train every head, score each by the first step's
    gradient (summed over a head's channels for seal-c), then hand the scores to `on_scores(HeadScores)`."""
    adapter = loaded.adapter
    heads = [(l, h, 0.0) for l in range(adapter.num_layers) for h in range(adapter.num_heads)]
    per_channel = RECIPES[settings.recipe].learned == "channel"
    proxy = proxy or make_proxy(loaded, settings.train)
    first = []
    coeffs = train_coefficients(loaded, heads, settings.train, progress, proxy=proxy, per_channel=per_channel,
                                on_first_gradient=first.append, temperatures=RECIPES[settings.recipe].temperature)
    grad = first[0].sum(dim=-1) if per_channel else first[0]
    scores = HeadScores(grad.cpu().view(adapter.num_layers, adapter.num_heads), loaded.fingerprint(),
                        {"method": "gradient", **proxy.describe(), "batches": 1, "seed": settings.train.seed,
                         "from": "the first training step"})
    if on_scores is not None:
        on_scores(scores)
    coeffs.heads = [dataclasses.replace(c, score=float(scores.scores[c.layer, c.head])) for c in coeffs.heads]
    return _with_calibration_record(coeffs, scores, settings, proxy)


def _with_calibration_record(coeffs: Coefficients, scores: HeadScores, settings: CalibrationSettings,
                             proxy) -> Coefficients:
    coeffs.calibration = {**settings.as_record(), "detection": scores.settings,
                          "train_seconds": coeffs.calibration.get("train_seconds"),
                          "loss_curve": coeffs.calibration.get("loss_curve"),
                          "guard_curve": coeffs.calibration.get("guard_curve"),
                          "weights_dtype": coeffs.calibration.get("weights_dtype"),
                          **prompt_format_record(proxy)}
    return coeffs


def train_from_scores(loaded, scores: HeadScores, settings: CalibrationSettings,
                      progress: bool = True, proxy=None) -> Coefficients:
    """Train the top heads' scales: one per head, or per channel for the recipes that learn channels (seal-c);
    with their attention temperatures for the recipes that learn those too (pear+temperature)."""
    heads = scores.top(settings.top_k or scores.scores.numel(), settings.max_per_layer, by=settings.select)
    per_channel = RECIPES[settings.recipe].learned == "channel"
    proxy = proxy or make_proxy(loaded, settings.train)
    coeffs = train_coefficients(loaded, heads, settings.train, progress, proxy=proxy, per_channel=per_channel,
                                temperatures=RECIPES[settings.recipe].temperature)
    return _with_calibration_record(coeffs, scores, settings, proxy)


def calibrate(loaded, settings: CalibrationSettings | None = None, progress: bool = True, proxy=None,
              on_scores=None) -> Coefficients:
    """The whole calibration for one model (default: its profile) by settings.recipe — for the default
    recipe, detect then train head scales (run_recipe)."""
    return run_recipe(loaded, settings or profile_for(loaded.name), progress, proxy=proxy, on_scores=on_scores)


def positional_step(loaded, settings, proxy, progress: bool = True) -> tuple[list, dict]:
    """The positional channel (given, or the top detected candidates) and its best q/k scale and layer range
    on validation data: the recipe's proxy (held-out batches other than those metrics report) or the
    `positional_validation` MDQA file. Returns ([QKChannelScale] (empty if nothing helped), record)."""

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
        scorer = ValidationFileProxy(loaded, settings.positional_validation, batch=settings.train.batch,
                                     prompt_format=settings.train.prompt_format,
                                     template=resolve_template(settings.train.template))
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
    trained (detection_fused), train and score the heads by the first step's gradient.
    Records seconds["detect_seconds"] (0 when fused)."""

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
    a recipe measured on this model, unvalidated_reason). `detect(loaded, settings, progress, proxy=)`
    replaces detect_heads (the variants' cache); `on_scores(HeadScores)` sees the head scores
    of the learned recipes (the CLI writes them beside the coefficients)."""

    recipe = RECIPES[settings.recipe]
    if recipe.temperature:  # before any work: families with a norm on the queries cannot fold temperatures
        check_q_temperatures(loaded.adapter.model_type)
    start = time.perf_counter()
    proxy = proxy or make_proxy(loaded, settings.train)
    seconds = {"proxy_seconds": round(time.perf_counter() - start, 1)}  # where the time goes
    held_out = proxy.held_out(settings.train.eval_batches, seed=settings.train.seed + 10_000)
    qk, positional = positional_step(loaded, settings, proxy, progress) if recipe.positional else ([], None)
    if recipe.positional and not qk and not recipe.learned:
        raise PearError(f"no positional edit lowered the validation loss (baseline {positional['baseline_loss']:.4g}, "
                        f"{len(positional['tried'])} tried); nothing to fold")
    with scale_qk_channels(loaded.adapter, qk_factor_map(qk)):
        if recipe.learned:
            learned = _learn(loaded, settings, progress, proxy, detect, on_scores, seconds)
            heads, channels, temperatures = learned.heads, learned.o_proj_channels, learned.q_temperatures
            calibration, metrics = learned.calibration, learned.metrics
        else:
            heads, channels, temperatures = [], [], []
            calibration = {**settings.as_record(), **prompt_format_record(proxy),
                           "weights_dtype": weights_dtype(loaded.model)}
            after = proxy.evaluate(loaded.model, held_out)
            metrics = {"held_out_proxy": held_out_record(proxy, after, after, len(held_out))}
    if qk:  # "before" is the unedited model, whatever the recipe did first
        after = metrics["held_out_proxy"]["after"]
        metrics["held_out_proxy"] = held_out_record(proxy, proxy.evaluate(loaded.model, held_out), after, len(held_out))
    if positional is not None:
        calibration["positional"] = positional
    calibration.update(seconds)
    calibration["validated"] = unvalidated_reason(loaded.fingerprint().weights_sha256, settings) is None
    return Coefficients(loaded.fingerprint(), heads, calibration, metrics, o_proj_channels=channels, qk_channels=qk,
                        q_temperatures=temperatures)
