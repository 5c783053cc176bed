"""The Python API: run examples through a backend, then compare base and PEAR on the same examples.

    results = evaluate(backend, examples)            # QAExample -> accuracy, TextExample -> perplexity
    cmp = paired_compare(base_results, pear_results) # Δ, bootstrap 95% CI, exact McNemar p, per position
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from tqdm import tqdm

from pear_edge.base.errors import PearError

from pear_edge.eval.backends import Backend
from pear_edge.eval.metrics import best_subspan_em, bootstrap_ci, bootstrap_perplexity_delta, mcnemar_exact, sign_test
from pear_edge.data.tasks import QAExample, TextExample

DEFAULT_MAX_TOKENS = 32


@dataclass(frozen=True)
class ExampleResult:
    id: str
    position: int | None
    answers: tuple[str, ...]
    output: str
    correct: bool
    timing: dict[str, Any] | None = None


@dataclass(frozen=True)
class PassageResult:
    id: str
    nll: float
    tokens: int


@dataclass
class EvalResults:
    """What one backend did on one task; `items` are ExampleResult (QA) or PassageResult (perplexity)."""
    task: str
    backend: dict[str, Any]
    items: list
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return "perplexity" if self.items and isinstance(self.items[0], PassageResult) else "accuracy"

    @property
    def score(self) -> float:
        if self.metric == "perplexity":
            return math.exp(sum(i.nll for i in self.items) / sum(i.tokens for i in self.items))
        return sum(i.correct for i in self.items) / len(self.items)

    def by_position(self) -> dict[int, float]:
        groups: dict[int, list[bool]] = {}
        for item in self.items:
            if getattr(item, "position", None) is not None:
                groups.setdefault(item.position, []).append(item.correct)
        return {pos: sum(v) / len(v) for pos, v in sorted(groups.items())}

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "backend": self.backend, "settings": self.settings, "metric": self.metric,
                "score": self.score, "by_position": self.by_position(), "items": [asdict(i) for i in self.items]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "EvalResults":
        """The inverse of `as_dict` (score and by_position are recomputed from the items).
        Raises KeyError/TypeError/ValueError on a malformed document."""
        if doc["metric"] == "perplexity":
            items = [PassageResult(i["id"], float(i["nll"]), int(i["tokens"])) for i in doc["items"]]
        else:
            items = [ExampleResult(i["id"], i["position"], tuple(i["answers"]), i["output"], bool(i["correct"]),
                                   i.get("timing")) for i in doc["items"]]
        return cls(doc["task"], dict(doc["backend"]), items, dict(doc["settings"]))


def evaluate(backend: Backend, examples: Sequence[QAExample | TextExample], task: str = "",
             max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = True,
             settings: dict[str, Any] | None = None, batch: int = 1) -> EvalResults:
    """Greedy answers (in the backend's prompt format) scored by best-subspan EM, or per-passage NLL for
    TextExample. `batch` > 1 decodes QA prompts in batches where the backend can (torch: `generate_batch`;
    no per-answer timing then)."""
    if not examples:
        raise PearError("no examples to evaluate")
    kinds = {type(e) for e in examples}
    if len(kinds) != 1:
        raise PearError("mix of QA and perplexity examples; evaluate them separately")
    items: list = []
    desc = f"{task or 'eval'} [{backend.kind}:{backend.name}]"
    if batch > 1 and hasattr(backend, "generate_batch") and QAExample in kinds:
        outputs = []
        for start in tqdm(range(0, len(examples), 4 * batch), desc=desc, unit="chunk", disable=not progress,
                          leave=False):
            chunk = examples[start : start + 4 * batch]
            outputs += backend.generate_batch([e.prompt for e in chunk], max_tokens, batch)
        items = [ExampleResult(e.id, e.position, e.answers, o, best_subspan_em(o, e.answers))
                 for e, o in zip(examples, outputs)]
        return EvalResults(task, backend.describe(), items, {"max_tokens": max_tokens, "batch": batch,
                                                             **(settings or {})})
    for ex in tqdm(examples, desc=desc, unit="ex", disable=not progress, leave=False):
        if isinstance(ex, TextExample):
            nll, tokens = backend.nll(ex.text)
            if not math.isfinite(nll):
                raise PearError(f"{backend.name} gave a non-finite NLL on passage {ex.id}; the model is broken")
            items.append(PassageResult(ex.id, nll, tokens))
        else:
            output = backend.generate(ex.prompt, max_tokens)
            timing = backend.last_timing.as_dict() if backend.last_timing else None
            items.append(ExampleResult(ex.id, ex.position, ex.answers, output, best_subspan_em(output, ex.answers),
                                       timing))
    return EvalResults(task, backend.describe(), items, {"max_tokens": max_tokens, **(settings or {})})


@dataclass(frozen=True)
class PairedResult:
    """PEAR minus base on the same items. base_only / pear_only: items only that model got right
    (for perplexity: passages where that model had the lower NLL per token)."""
    metric: str
    n: int
    base: float
    pear: float
    delta: float
    ci_low: float
    ci_high: float
    base_only: int
    pear_only: int
    p_value: float


@dataclass(frozen=True)
class Comparison:
    task: str
    overall: PairedResult
    by_position: dict[int, PairedResult]

    def position_gap(self) -> tuple[float, float] | None:
        """(base, PEAR) best-minus-worst accuracy over gold positions; None with fewer than two positions."""
        if len(self.by_position) < 2:
            return None
        gap = lambda values: max(values) - min(values)  # noqa: E731
        return (gap([r.base for r in self.by_position.values()]), gap([r.pear for r in self.by_position.values()]))

    def as_dict(self) -> dict[str, Any]:
        gap = self.position_gap()
        return {"task": self.task, "overall": asdict(self.overall),
                "by_position": {str(k): asdict(v) for k, v in self.by_position.items()},
                "position_gap": {"base": gap[0], "pear": gap[1]} if gap else None}


def _paired_accuracy(base: list[ExampleResult], pear: list[ExampleResult], resamples: int, seed: int) -> PairedResult:
    b = [float(x.correct) for x in base]
    p = [float(x.correct) for x in pear]
    base_only = sum(1 for x, y in zip(b, p) if x > y)
    pear_only = sum(1 for x, y in zip(b, p) if y > x)
    lo, hi = bootstrap_ci([y - x for x, y in zip(b, p)], resamples, seed)
    n = len(b)
    return PairedResult("accuracy", n, sum(b) / n, sum(p) / n, (sum(p) - sum(b)) / n, lo, hi,
                        base_only, pear_only, mcnemar_exact(base_only, pear_only))


def _paired_perplexity(base: list[PassageResult], pear: list[PassageResult], resamples: int,
                       seed: int) -> PairedResult:
    tokens = [x.tokens for x in base]
    if tokens != [x.tokens for x in pear]:
        raise PearError("base and PEAR tokenised the passages differently; compare models with the same tokenizer")
    b_nll, p_nll = [x.nll for x in base], [x.nll for x in pear]
    total = sum(tokens)
    b_ppl, p_ppl = math.exp(sum(b_nll) / total), math.exp(sum(p_nll) / total)
    lo, hi = bootstrap_perplexity_delta(b_nll, p_nll, tokens, resamples, seed)
    base_better = sum(1 for x, y in zip(b_nll, p_nll) if x < y)
    pear_better = sum(1 for x, y in zip(b_nll, p_nll) if y < x)
    return PairedResult("perplexity", len(tokens), b_ppl, p_ppl, p_ppl - b_ppl, lo, hi, base_better, pear_better,
                        sign_test(base_better, pear_better))


def paired_compare(base: EvalResults, pear: EvalResults, resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Compare two runs over the same examples (same ids, same order), overall and per gold position."""
    if [i.id for i in base.items] != [i.id for i in pear.items]:
        raise PearError("base and PEAR results cover different examples; run both on the same data and settings")
    if base.metric == "perplexity":
        return Comparison(base.task, _paired_perplexity(base.items, pear.items, resamples, seed), {})
    overall = _paired_accuracy(base.items, pear.items, resamples, seed)
    positions = sorted({i.position for i in base.items if i.position is not None})
    per = {}
    for pos in positions:
        idx = [k for k, i in enumerate(base.items) if i.position == pos]
        per[pos] = _paired_accuracy([base.items[k] for k in idx], [pear.items[k] for k in idx], resamples, seed)
    return Comparison(base.task, overall, per)


def paired_run(open_base, open_pear, examples: Sequence[QAExample | TextExample], task: str = "",
               max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = True, settings: dict[str, Any] | None = None,
               batch: int = 1, seed: int = 0, done: Sequence[EvalResults | None] = (None, None),
               on_result: Callable[[int, EvalResults], None] | None = None
               ) -> tuple[EvalResults, EvalResults, Comparison]:
    """Base then PEAR on the same examples (each backend opened, used and closed in turn), and their paired
    comparison: the one "base vs PEAR over a task" loop behind eval, demo and calibrate --validate.
    `done`: (base, PEAR) results of an earlier run of the same examples, reused instead of opening that
    backend; `on_result(0 | 1, results)` is called as soon as each side's results exist (eval --shard)."""
    results = []
    for side, (opener, previous) in enumerate(zip((open_base, open_pear), done)):
        if previous is not None:
            results.append(previous)
            continue
        backend = opener()
        try:
            results.append(evaluate(backend, examples, task, max_tokens, progress, settings, batch))
        finally:
            backend.close()
        if on_result is not None:
            on_result(side, results[-1])
    return results[0], results[1], paired_compare(results[0], results[1], seed=seed)
