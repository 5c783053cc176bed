"""`pear-edge verify`: does an exported model (a GGUF in llama.cpp, an ONNX folder in onnxruntime)
compute what torch computes with the same coefficients folded in?

The same token ids go through the export and through torch; every position's logits are compared
(max and mean |Δlogit|, top-1 agreement). With --base, the unpatched export is also compared with the
unpatched torch model (the format's own error floor) and with the patched export (the size of the
patch's effect, which should dwarf the export error). Each format plugs in an `ExportRunner` (its
logits, optionally a greedy continuation through its KV-cache path); everything else is here.

The coefficients may carry every edit kind of pear_edge.edits.coefficients (head scales, o_proj channel scales,
q/k channel scales, attention temperatures); torch folds them all through pear_edge.edits.fold, so the comparison
checks each edit the export holds, and the report counts them by kind (`edits`).

Tolerance policy (one for both formats): the first comparison, export vs folded torch, passes when
    max |Δlogit| <= max_abs_logit_diff   and   top-1 agreement >= min_top1_agreement
with thresholds chosen by the export's weight kind (TOLERANCES; `--max-logit-diff`/`--min-top1`
override them). Measured on SmolLM2-135M (docs/gguf.md, docs/onnx.md): fp32 ONNX 8e-5 / 100 %,
F16 GGUF 0.15 / 100 %, Q8_0 GGUF 2.8 / 95.6 %, patched Q4_1 GGUF 2.6 / 95.1 %, Q4_K_M GGUF 12.5 / 81.9 %;
onnxruntime's int8 (19.2 / 59 %) and int4 (19.5 / 67 %) exports FAIL it, as they should: they do not
compute what the model computes.

Contract: `pear-edge verify` prints the table (and writes -o JSON + PNG), then exits 0 on PASS, or 2
with one line `pear-edge: error: verify FAILED: ...` naming the comparison and the threshold it missed.
A vocabulary-size mismatch between the export and torch is an error, never trimmed away.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from pear_edge.base.atomic import write_text_atomic
from pear_edge.edits.coefficients import Coefficients
from pear_edge.base.errors import PearError
from pear_edge.data.prompts import Document, mdqa_prompt

GREEDY_TOKENS = 16
BUILTIN_PROMPTS = (
    mdqa_prompt("Who wrote the novel mentioned in the second document?", [
        Document("Lighthouses", "The Bell Rock lighthouse stands off the coast of Angus, Scotland."),
        Document("A novel", "Kidnapped was written by Robert Louis Stevenson and published in 1886."),
        Document("Rivers", "The river Tay is the longest river in Scotland."),
    ]),
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Copy this list exactly: apple, tractor, violet, seven, harbour. Copy: apple, tractor,",
)


@dataclass(frozen=True)
class Tolerance:
    """Thresholds the export-vs-folded-torch comparison must meet."""

    max_abs_logit_diff: float
    min_top1_agreement: float


# Weight kind of the export -> tolerance. fp32 is kernel-order noise only; below it the thresholds sit
# above what a sound export of SmolLM2-135M measures (module docstring), so a FAIL means a broken export
# or a quantization that changes the model's predictions.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-3, 0.99),
    "fp16": Tolerance(0.5, 0.98),
    "8-bit": Tolerance(5.0, 0.90),
    "low-bit": Tolerance(15.0, 0.80),
}


def tolerances_help(field: str) -> str:
    """'fp32 0.001, fp16 0.5, ...' for one Tolerance field: the CLI's help, from the policy itself."""
    return ", ".join(f"{kind} {getattr(t, field):g}" for kind, t in TOLERANCES.items())


def tolerance_for(kind: str, max_abs_logit_diff: float | None = None,
                  min_top1_agreement: float | None = None) -> Tolerance:
    """The policy's thresholds for a weight kind, with either one overridden (CLI --max-logit-diff/--min-top1)."""
    base = TOLERANCES[kind]
    return Tolerance(base.max_abs_logit_diff if max_abs_logit_diff is None else max_abs_logit_diff,
                     base.min_top1_agreement if min_top1_agreement is None else min_top1_agreement)


@dataclass(frozen=True)
class Comparison:
    """Logits a vs b over every position of every prompt; `per_prompt_max_abs`: max |Δ| per prompt."""

    name: str
    prompts: int
    positions: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    per_prompt_max_abs: list[float] = field(default_factory=list)


def compare(name: str, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Comparison:
    """a, b: per prompt, logits (positions, vocab). Different vocabulary sizes are refused."""
    if a[0].shape[-1] != b[0].shape[-1]:
        raise PearError(f"{name}: the logits have {a[0].shape[-1]} and {b[0].shape[-1]} vocabulary entries; "
                        "the export and --model do not share a vocabulary (pass the export's own base model)")
    x, y = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    diff = np.abs(x - y)
    return Comparison(name, len(a), int(x.shape[0]), float(diff.max()), float(diff.mean()),
                      float((x.argmax(-1) == y.argmax(-1)).mean()),
                      [float(np.abs(p - q).max()) for p, q in zip(a, b)])


def torch_logits(model, token_lists: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Logits (positions, vocab) per prompt from a transformers model (torch or onnxruntime), one unbatched
    forward pass each."""
    import torch

    with torch.no_grad():
        out = []
        for ids in token_lists:
            x = torch.tensor([list(ids)])
            out.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy())
        return out


def hf_greedy(model, ids: Sequence[int], pad_token_id: int, tokens: int = GREEDY_TOKENS) -> list[int]:
    """Greedy continuation through transformers' generate() (KV cache), for torch and onnxruntime models."""
    import torch

    x = torch.tensor([list(ids)])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=tokens,
                             do_sample=False, pad_token_id=pad_token_id)
    return out[0, x.shape[1]:].tolist()


def read_prompts(path: str | None, builtin: Sequence[str] = BUILTIN_PROMPTS) -> list[str]:
    """`verify --prompts`: one prompt per non-empty line, `\\n` for a newline inside a prompt;
    `builtin` when no file is given."""
    from pear_edge.base.inputs import read_text

    if path is None:
        return list(builtin)
    prompts = [line.replace("\\n", "\n") for line in read_text(path, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise PearError(f"prompts file {path} has no non-empty line")
    return prompts


class ExportRunner(Protocol):
    """One export opened in its runtime (see gguf_verify.GgufRunner, onnx_verify.OnnxRunner)."""

    label: str   # "GGUF" / "ONNX", used in comparison names

    def logits(self, token_lists: Sequence[Sequence[int]]) -> list[np.ndarray]: ...

    def greedy(self, ids: Sequence[int], pad_token_id: int) -> list[int] | None: ...


class ExportFormat(Protocol):
    """What the core needs to know about one format's files."""

    label: str

    def weight_kind(self, path: Path) -> str: ...               # a TOLERANCES key

    def layout(self, path: Path) -> tuple[int, int, int, int]: ...  # layers, heads, head_dim, hidden

    def is_patched(self, path: Path) -> bool: ...

    def stored_coefficients(self, path: Path) -> Coefficients | None: ...  # None: compare with unpatched torch

    def open(self, path: Path, max_tokens: int) -> ExportRunner: ...


@dataclass
class VerifyReport:
    patched: str
    base: str | None
    model: str
    weights: str
    heads: int
    prompts: int
    tolerance: Tolerance
    comparisons: list[Comparison]
    greedy: dict | None = None
    fingerprint_match: str = "base"
    edits: dict[str, int] = field(default_factory=dict)  # Coefficients.edit_counts() of what torch folded

    @property
    def checked(self) -> Comparison:
        """The comparison the tolerance judges: the export against torch with the same coefficients."""
        return self.comparisons[0]

    def failures(self) -> list[str]:
        c, t = self.checked, self.tolerance
        out = []
        if not c.max_abs_logit_diff <= t.max_abs_logit_diff:  # "not <=": NaN fails
            out.append(f"max |Δlogit| {c.max_abs_logit_diff:.3g} > {t.max_abs_logit_diff:g}")
        if not c.top1_agreement >= t.min_top1_agreement:
            out.append(f"top-1 agreement {c.top1_agreement:.1%} < {t.min_top1_agreement:.0%}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def verdict(self) -> str:
        t = self.tolerance
        limits = f"{self.weights} tolerance: max |Δlogit| <= {t.max_abs_logit_diff:g}, top-1 >= {t.min_top1_agreement:.0%}"
        if self.ok:
            return f"PASS: {self.checked.name} within the {limits}"
        return f"verify FAILED: {self.checked.name}: {'; '.join(self.failures())} ({limits}; " \
               "override with --max-logit-diff/--min-top1)"

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "verdict": self.verdict()}


def edits_of(coeffs: Coefficients) -> tuple:
    """What a coefficients file does to the weights (head, o_proj channel and q/k channel scales, attention
    temperatures), without its scores and records."""
    return (sorted((h.layer, h.head, h.coefficient) for h in coeffs.heads),
            sorted((c.layer, tuple(c.scales)) for c in coeffs.o_proj_channels),
            sorted((q.channel, q.scale, q.first_layer, q.last_layer) for q in coeffs.qk_channels),
            sorted((t.layer, t.head, t.tau) for t in coeffs.q_temperatures))


def check_same_edits(stored: Coefficients | None, given: Coefficients, patched: Path, source: str) -> None:
    """--coefficients must be what was folded into the export: a file that carries others FAILs."""
    if stored is not None and edits_of(stored) != edits_of(given):
        raise PearError(f"FAIL: {patched} carries other coefficients than {source} ({stored.describe_edits()} "
                        f"folded in, {given.describe_edits()} given); verify the file with the coefficients "
                        f"it was patched with, or without --coefficients to use its own")


def verify_export(fmt: ExportFormat, patched: str | Path, model: str = "default", coefficients: str | None = None,
                  base: str | None = None, prompts: Sequence[str] = BUILTIN_PROMPTS,
                  max_abs_logit_diff: float | None = None, min_top1_agreement: float | None = None) -> VerifyReport:
    """Run `patched` (and `base`, an unpatched export of the same model) in its runtime and torch `model`
    with the coefficients (`coefficients` file, else those stored in the export) folded in."""
    from pear_edge.edits.fold import fold_model
    from pear_edge.runtime.models import load_model

    patched = Path(patched)
    base_path = Path(base) if base else None
    kind = fmt.weight_kind(patched)
    tolerance = tolerance_for(kind, max_abs_logit_diff, min_top1_agreement)
    coeffs = Coefficients.load(coefficients) if coefficients else fmt.stored_coefficients(patched)
    if coefficients and fmt.is_patched(patched):
        check_same_edits(fmt.stored_coefficients(patched), coeffs, patched, coefficients)
    if base_path is not None and fmt.is_patched(base_path):
        raise PearError(f"--base {base} is itself PEAR-patched; pass the original (unpatched) {fmt.label}")
    loaded = load_model(model)
    expected = loaded.fingerprint().layout.counts()
    for path in filter(None, (patched, base_path)):
        if fmt.layout(path) != expected:
            raise PearError(f"{path} has layers/heads/head_dim/hidden {fmt.layout(path)}, but --model {model} has "
                            f"{expected}; pass its base model")
    tokens = [loaded.tokenizer(p)["input_ids"] for p in prompts]
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    unpatched_torch = torch_logits(loaded.model, tokens) if base_path is not None else None
    report = VerifyReport(str(patched), base, model, kind, len(coeffs.heads) if coeffs else 0, len(prompts),
                          tolerance, [])
    if coeffs is not None:  # every edit kind (head, o_proj and q/k channel scales, temperatures) folded the one way
        report.fingerprint_match = fold_model(loaded, coeffs)
        report.edits = coeffs.edit_counts()
    reference = "folded torch" if coeffs is not None else "unpatched torch"
    runner = fmt.open(patched, max(map(len, tokens)) + GREEDY_TOKENS + 8)
    exported, folded_torch = runner.logits(tokens), torch_logits(loaded.model, tokens)
    report.comparisons.append(compare(f"{fmt.label} vs {reference}", exported, folded_torch))
    export_greedy = runner.greedy(tokens[0], pad)
    if export_greedy is not None:
        torch_greedy = hf_greedy(loaded.model, tokens[0], pad)
        report.greedy = {"tokens": GREEDY_TOKENS, "identical": export_greedy == torch_greedy,
                         "torch": loaded.tokenizer.decode(torch_greedy),
                         fmt.label.lower(): loaded.tokenizer.decode(export_greedy)}
    if base_path is not None:
        base_logits = fmt.open(base_path, max(map(len, tokens)) + 8).logits(tokens)
        report.comparisons += [
            compare(f"base {fmt.label} vs unpatched torch", base_logits, unpatched_torch),
            compare(f"patched vs base {fmt.label} (patch effect)", exported, base_logits),
            compare("unpatched vs folded torch (intended effect)", unpatched_torch, folded_torch),
        ]
    return report


EDIT_LABELS = {"heads": "patched heads", "o_proj_channels": "layers of o_proj channel scales",
               "qk_channels": "q/k channel scales", "q_temperatures": "attention temperatures"}


def describe_edits(report: VerifyReport) -> str:
    """'3 patched heads' (as always for head scales only), or every edit kind the coefficients carry."""
    counts = report.edits or {"heads": report.heads}
    return ", ".join(f"{n} {EDIT_LABELS[k]}" for k, n in counts.items() if n) or "0 patched heads"


def format_table(report: VerifyReport) -> str:
    lines = [f"{report.patched}: {report.weights} weights, {describe_edits(report)}, {report.prompts} prompts, "
             f"{report.checked.positions} positions",
             f"{'comparison':<44} {'max|Δlogit|':>12} {'mean|Δlogit|':>13} {'top-1 agree':>12}"]
    for c in report.comparisons:
        lines.append(f"{c.name:<44} {c.max_abs_logit_diff:>12.3e} {c.mean_abs_logit_diff:>13.3e} "
                     f"{c.top1_agreement:>11.1%}")
    if report.greedy is not None:
        g = report.greedy
        lines.append(f"greedy {g['tokens']} tokens on prompt 1: {'identical' if g['identical'] else 'DIFFERENT'}")
    lines.append(report.verdict())
    return "\n".join(lines)


def plot_report(report: VerifyReport, path: Path) -> Path:
    """Per-prompt max |Δlogit| of each comparison, log scale, with the tolerance: export error vs the patch's
    own effect. Written atomically."""
    from pear_edge.base.plots import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(7.5, 3.8))
    for c in report.comparisons:
        values = [max(v, 1e-9) for v in c.per_prompt_max_abs]
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{c.name} (top-1 {c.top1_agreement:.0%})")
    ax.axhline(report.tolerance.max_abs_logit_diff, color="gray", linestyle="--",
               label=f"{report.weights} tolerance")
    ax.set(yscale="log", xlabel="prompt", ylabel="max |Δlogit|",
           title=f"{Path(report.patched).name} ({report.weights} weights, {describe_edits(report)}): "
                 f"{'PASS' if report.ok else 'FAIL'}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def run_verify(fmt: ExportFormat, patched: str | Path, *, model: str = "default", coefficients: str | None = None,
               base: str | None = None, prompts: str | None = None, output: str | None = None,
               max_abs_logit_diff: float | None = None, min_top1_agreement: float | None = None) -> int:
    """The `verify` command: table on stdout, -o JSON + PNG, then 0 on PASS; a FAIL raises PearError
    (one line, exit 2) after the report is written."""
    report = verify_export(fmt, patched, model, coefficients, base, read_prompts(prompts),
                           max_abs_logit_diff, min_top1_agreement)
    print(format_table(report))
    if output:
        write_text_atomic(output, json.dumps(report.as_dict(), indent=2) + "\n")
        png = plot_report(report, Path(output).with_suffix(".png"))
        print(f"wrote {output} and {png}")
    if not report.ok:
        raise PearError(report.verdict())
    return 0
