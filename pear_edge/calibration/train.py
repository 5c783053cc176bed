"""Train one fp32 scalar per selected head (PEAR) or per channel of each selected head's output (SEAL-C)
on a proxy loss, the LLM frozen; optionally, jointly, one attention temperature per selected head (its queries
times tau, clamped to TEMPERATURE_RANGE after each step; the pull leashes it to 1 too).

Constraints on the coefficients (measured on the default model, see README "Making PEAR help"):
  none  - the paper: unconstrained; coefficients can exceed 1 (amplify) or go negative;
  le1   - clamp to (-inf, 1] after each step: only weaken heads;
  unit  - clamp to [0, 1] after each step: only weaken, never flip a head's sign.
`pull` adds pull * sum((c - 1)^2) to the loss: an L2 leash towards the unmodified model.
`guard` adds guard * (language-model loss on natural text, guard.TextGuard): a leash on perplexity.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from pear_edge.arch.registry import check_q_temperatures
from pear_edge.edits.coefficients import MAX_TEMPERATURE, ChannelScales, Coefficients, HeadCoefficient, QTemperature
from pear_edge.base.errors import PearError
from pear_edge.calibration.guard import TextGuard
from pear_edge.edits.heads import scale_heads, scale_q_temperatures
from pear_edge.data.prompts import PROMPT_FORMAT_KEY
from pear_edge.data.template_family import DEFAULT_FAMILY, proxy_family
from pear_edge.data.templates import TEMPLATE_KEY, resolve_template
from pear_edge.calibration.proxy import backward_in_parts, model_device
from pear_edge.runtime.distributed import backward_shared, parts_per_rank
from pear_edge.runtime.precision import weights_dtype

CONSTRAINTS = {"none": (-math.inf, math.inf), "le1": (-math.inf, 1.0), "unit": (0.0, 1.0)}
TEMPERATURE_RANGE = (1 / MAX_TEMPERATURE, MAX_TEMPERATURE)  # where trained temperatures are clamped
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
    checkpoint: bool = False  # recompute each decoder layer in the backward pass (memory for time)
    micro_batch: int = 0  # backpropagate this many prompts at a time (0: the whole batch); same gradient
    prompt_format: str = "auto"  # RAG-shaped proxies: auto | chat | completion (pear_edge.data.prompts)
    gold: str = "uniform"  # cloze proxy: where the gold document goes (textqa.GOLD_SLOTS)
    # RAG-shaped proxies' prompts (pear_edge.data.templates, template_family): one template (file or preset), or
    # (cloze) a family to sample from without the excluded templates' parts; None: the proxy's default
    template: str | None = None
    template_family: str | None = None
    exclude_template: tuple[str, ...] = ()
    num_docs: tuple[int, int] | None = None  # documents per prompt LO..HI (None: cloze 3-10, mdqa/passage 10)

    def __post_init__(self) -> None:
        """Lists (variants files, JSON) become the tuples the CLI gives."""
        self.exclude_template = tuple(self.exclude_template)
        self.num_docs = tuple(self.num_docs) if self.num_docs is not None else None


def make_proxy(loaded, settings: TrainSettings):
    """The proxy task object named by settings.proxy (see proxy.CopyProxy, rag_proxy)."""
    if settings.proxy == "copy":
        from pear_edge.calibration.proxy import CopyProxy

        return CopyProxy(loaded, settings.n, settings.batch)
    if settings.proxy in ("mdqa", "passage"):
        from pear_edge.calibration.rag_proxy import MDQAProxy

        target = "answer" if settings.proxy == "mdqa" else "passage"
        template = resolve_template(settings.template)
        return MDQAProxy(loaded, batch=settings.batch, pool=settings.pool, seed=settings.seed, target=target,
                         prompt_format=settings.prompt_format, template=template,
                         **({"num_docs": settings.num_docs[0]} if settings.num_docs else {}))
    if settings.proxy == "cloze":
        from pear_edge.calibration.rag_proxy import ClozeProxy

        templates = proxy_family(settings.template, settings.template_family, settings.exclude_template,
                                 DEFAULT_FAMILY)
        return ClozeProxy(loaded, batch=settings.batch, pool=settings.pool, seed=settings.seed, corpus=settings.corpus,
                          prompt_format=settings.prompt_format, gold=settings.gold, templates=templates,
                          **({"num_docs": settings.num_docs} if settings.num_docs else {}))
    raise PearError(f"unknown proxy {settings.proxy!r}; choose one of {', '.join(PROXIES)}")


@contextlib.contextmanager
def checkpointed_layers(layers: list[torch.nn.Module]) -> Iterator[None]:
    """Gradient checkpointing per decoder layer, for the duration of the block: each layer's forward keeps
    only its inputs, and is run again during the backward pass. Activation memory drops from every layer's
    intermediates (~num_layers x) to one layer's plus the layer inputs; time grows by about one forward.
    Math is unchanged (same ops, same order). Forwards must not fill a KV cache (`use_cache=False`)."""
    for layer in layers:
        def forward(*args, _forward=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        layer.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)


def train_coefficients(loaded, heads: list[tuple[int, int, float]], settings: TrainSettings,
                       progress: bool = True, proxy=None, per_channel: bool = False,
                       on_first_gradient=None, temperatures: bool = False) -> Coefficients:
    """Return Coefficients for `heads` [(layer, head, score)], trained on the proxy task: one scale per head,
    or with `per_channel` one per channel of each head's output (head_dim each; written as o_proj channel
    scales, 1 for the unselected heads' channels). The same loop, constraints, pull and guard either way.
    With `temperatures`, one attention temperature per selected head is trained jointly (scale_q_temperatures;
    written as q_temperatures; families with a norm on the queries are refused before any work).
    `on_first_gradient(grad)` sees d(proxy loss)/d(scales) at scale 1 on the first step's batch (shape of the
    scales: (heads,) or (heads, head_dim); before the pull and the guard add theirs)."""
    if not heads:
        raise PearError("no heads selected to train")
    if settings.constraint not in CONSTRAINTS:
        raise PearError(f"unknown constraint {settings.constraint!r}; choose one of {', '.join(CONSTRAINTS)}")
    model, adapter = loaded.model, loaded.adapter
    if temperatures:
        check_q_temperatures(adapter.model_type)
    proxy = proxy or make_proxy(loaded, settings)
    keys = [(l, h) for l, h, _ in heads]
    held_out = proxy.held_out(settings.eval_batches, seed=settings.seed + 10_000)
    before = proxy.evaluate(model, held_out)

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    shape = (len(keys), adapter.head_dim) if per_channel else (len(keys),)
    values = torch.nn.Parameter(torch.ones(shape, dtype=torch.float32, device=model_device(model)))
    taus = torch.nn.Parameter(torch.ones(len(keys) if temperatures else 0, dtype=torch.float32,
                                         device=model_device(model)))
    params = [values, taus] if temperatures else [values]
    optim = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    low, high = CONSTRAINTS[settings.constraint]
    guard = TextGuard(loaded.tokenizer, settings.guard_batch) if settings.guard else None
    losses, guard_losses = [], []
    start = time.perf_counter()
    recompute = checkpointed_layers(adapter.layers) if settings.checkpoint else contextlib.nullcontext()
    micro = parts_per_rank(settings.batch, settings.micro_batch)
    guard_micro = parts_per_rank(settings.guard_batch, settings.micro_batch)
    tempered = scale_q_temperatures(adapter, heads=keys if temperatures else [], values=taus)
    with scale_heads(adapter, heads=keys, values=values), tempered, recompute, torch.enable_grad():
        bar = tqdm(range(settings.steps), desc=f"train ({proxy.name} proxy)", disable=not progress)
        for _ in bar:
            # objective = proxy loss + pull * sum((c - 1)^2) + guard * LM loss, backpropagated term by term
            # (and the batches part by part, settings.micro_batch): the same gradient, less memory.
            # Under torchrun every rank samples the same batch and backpropagates its share of the parts;
            # backward_shared sums the gradients over ranks (distributed.py).
            optim.zero_grad()
            batch = proxy.sample(gen)
            loss = backward_shared(lambda mine: backward_in_parts(lambda part: proxy.loss(model, part), mine),
                                   proxy.parts(batch, micro), params)
            if on_first_gradient is not None and not losses:
                on_first_gradient(values.grad.detach().clone())
            if settings.pull:
                (settings.pull * sum(((p - 1) ** 2).sum() for p in params)).backward()
            if guard is not None:
                windows = guard.sample(gen)
                guard_losses.append(backward_shared(
                    lambda mine: backward_in_parts(lambda part: guard.loss(model, part), mine, settings.guard),
                    guard.parts(windows, guard_micro), params))
            optim.step()
            with torch.no_grad():
                values.clamp_(low, high)
                taus.clamp_(*TEMPERATURE_RANGE)
            if not (torch.isfinite(values).all() and torch.isfinite(taus).all()):
                raise PearError("training diverged (non-finite coefficient); lower --lr")
            losses.append(loss)
            c = values.detach()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", cmin=f"{float(c.min()):.2f}", cmax=f"{float(c.max()):.2f}")
        after = proxy.evaluate(model, held_out)
    seconds = time.perf_counter() - start
    trained = values.detach().cpu().tolist()
    coeffs = [] if per_channel else [HeadCoefficient(l, h, float(c), float(s)) for (l, h, s), c in zip(heads, trained)]
    channels = channel_scales(keys, trained, adapter.num_heads, adapter.head_dim) if per_channel else []
    tempers = [QTemperature(l, h, float(t)) for (l, h), t in zip(keys, taus.detach().cpu().tolist())]
    calibration = {**settings.__dict__, "weights_dtype": weights_dtype(model), "train_seconds": round(seconds, 1),
                   "loss_curve": [round(x, 4) for x in losses],
                   "guard_curve": [round(x, 4) for x in guard_losses], **prompt_format_record(proxy)}
    metrics = {"held_out_proxy": held_out_record(proxy, before, after, len(held_out))}
    return Coefficients(loaded.fingerprint(), coeffs, calibration, metrics, o_proj_channels=channels,
                        q_temperatures=tempers)


def prompt_format_record(proxy) -> dict:
    """calibration.prompt_format and calibration.template: {"prompt_format": "chat" | "completion", "template":
    the template or family record} for a proxy that prompts the model (the RAG-shaped ones), {} for one that
    does not (copy: random tokens, no prompt)."""
    used = getattr(proxy, "prompt_format", None)
    template = getattr(proxy, "template_record", None)
    return {**({PROMPT_FORMAT_KEY: used} if used else {}), **({TEMPLATE_KEY: template} if template else {})}


def check_prompt_settings(settings: TrainSettings) -> None:
    """The template and document-count settings fit the proxy (PearError naming the flag otherwise)."""
    given = [f"--{name.replace('_', '-')}" for name in ("template", "template_family", "exclude_template", "num_docs")
             if getattr(settings, name)]
    if settings.proxy == "copy" and given:
        raise PearError(f"{given[0]} goes with the mdqa, passage and cloze proxies; the copy proxy has no prompt")
    if settings.template and (settings.template_family or settings.exclude_template):
        raise PearError("--template is one template; --template-family and --exclude-template choose a family "
                        "instead: give one or the other")
    if settings.proxy != "cloze" and (settings.template_family or settings.exclude_template):
        raise PearError(f"--template-family and --exclude-template go with the cloze proxy, not --proxy "
                        f"{settings.proxy}")
    if settings.num_docs is not None:
        low, high = settings.num_docs
        if not 1 <= low <= high:
            raise PearError(f"--num-docs must be N or LO-HI with 1 <= LO <= HI (got {low}-{high})")
        if settings.proxy != "cloze" and low != high:
            raise PearError(f"--num-docs for the {settings.proxy} proxy is one number, not a range")


def held_out_record(proxy, before: dict, after: dict, batches: int) -> dict:
    """metrics.held_out_proxy: the proxy's held-out scores before/after, and whether its loss improved."""
    loss_key = next(iter(before))  # each proxy reports its loss first
    return {"before": before, "after": after, **proxy.describe(), "batches": batches,
            "improved": after[loss_key] < before[loss_key]}


def channel_scales(keys: list[tuple[int, int]], trained: list[list[float]], num_heads: int,
                   head_dim: int) -> list[ChannelScales]:
    """Per-head channel vectors [(layer, head)] -> one o_proj channel vector per layer (1 elsewhere)."""
    by_layer: dict[int, list[float]] = {}
    for (layer, head), scales in zip(keys, trained):
        by_layer.setdefault(layer, [1.0] * (num_heads * head_dim))[head * head_dim:(head + 1) * head_dim] = scales
    return [ChannelScales(layer, tuple(float(x) for x in v)) for layer, v in sorted(by_layer.items())]
