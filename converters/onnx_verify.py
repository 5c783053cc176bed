"""`pear-edge verify ONNX_DIR`: does onnxruntime compute what torch computes with the same coefficients?

We run the export through `ORTModelForCausalLM` (the way users load it) and torch with the
coefficients folded in, on the same token ids, and report the largest logit difference and how
often the top-1 token agrees; a short greedy generation also exercises the KV-cache path. With
--base, the unpatched export is compared with the unpatched torch model, and with the patched one
(the size of the patch's effect, which should dwarf the export error).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pear_edge.atomic import atomic_file, write_text_atomic
from pear_edge.coefficients import Coefficients
from pear_edge.errors import PearError
from pear_edge.fold import COEFFICIENTS_FILENAME, fold_model
from pear_edge.prompts import Document, mdqa_prompt

from .cli import read_prompts
from .onnx_graph import graph_only, model_path, read_layout, weight_format

FP32_TOLERANCE = 1e-3  # max |Δlogit| accepted for an unquantized fp32 export
GREEDY_TOKENS = 16
BUILTIN_PROMPTS = (
    mdqa_prompt("Who painted the ceiling of the Sistine Chapel?", [
        Document("Sistine Chapel", "The ceiling was painted by Michelangelo between 1508 and 1512."),
        Document("Raphael Rooms", "Raphael decorated the rooms of the Apostolic Palace."),
        Document("St. Peter's Basilica", "The dome was designed by Michelangelo and completed later."),
    ]),
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Local retrieval-augmented generation keeps documents on the device, so",
)


@dataclass
class Comparison:
    name: str
    prompts: int
    tokens: int
    max_abs_logit_diff: float
    top1_agreement: float
    per_prompt_max_abs: list[float]


def compare(name: str, a: list[np.ndarray], b: list[np.ndarray]) -> Comparison:
    diffs = [float(np.abs(x - y).max()) for x, y in zip(a, b)]
    agree = np.concatenate([x.argmax(-1) == y.argmax(-1) for x, y in zip(a, b)])
    return Comparison(name, len(a), int(agree.size), max(diffs), float(agree.mean()), diffs)


def torch_logits(model, ids: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy() for x in ids]


def greedy(model, ids: torch.Tensor, pad_token_id: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS,
                             do_sample=False, pad_token_id=pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def load_ort(folder: Path):
    from optimum.onnxruntime import ORTModelForCausalLM

    model_path(folder)
    try:
        return ORTModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise PearError(f"onnxruntime cannot load {folder}: {str(exc).splitlines()[0]}") from None


def resolve_coefficients(args, patched: Path) -> Coefficients | None:
    if args.coefficients:
        return Coefficients.load(args.coefficients)
    if (patched / COEFFICIENTS_FILENAME).is_file():
        return Coefficients.load(patched / COEFFICIENTS_FILENAME)
    return None  # an unpatched export: compare with the unpatched torch model


def run_verify(args) -> dict:
    from pear_edge.models import load_model

    patched = Path(args.patched)
    base = Path(args.base) if args.base else None
    quant = weight_format(graph_only(patched))
    coeffs = resolve_coefficients(args, patched)
    prompts = read_prompts(args.prompts, BUILTIN_PROMPTS)
    loaded = load_model(args.model)
    for folder in filter(None, (patched, base)):
        layout = read_layout(folder)
        if layout.tuple() != loaded.fingerprint().layout():
            raise PearError(f"{folder} is a {layout.model_type} with layers/heads/head_dim/hidden {layout.tuple()}, "
                            f"but --model {args.model} has {loaded.fingerprint().layout()}; pass its base model")
    ids = [loaded.tokenizer(p, return_tensors="pt").input_ids for p in prompts]
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    report: dict = {"patched": str(patched), "model": args.model, "weights": quant,
                    "heads": len(coeffs.heads) if coeffs else 0, "comparisons": []}
    if base is not None:
        base_torch = torch_logits(loaded.model, ids)
    if coeffs is not None:
        report["fingerprint_match"] = fold_model(loaded, coeffs)
    ort_model = load_ort(patched)
    ort_out = torch_logits(ort_model, ids)
    report["comparisons"].append(asdict(compare(
        f"ONNX vs torch {'folded' if coeffs else 'unpatched'}", ort_out, torch_logits(loaded.model, ids))))
    torch_tokens, ort_tokens = greedy(loaded.model, ids[0], pad), greedy(ort_model, ids[0], pad)
    report["greedy"] = {"tokens": GREEDY_TOKENS, "identical": torch_tokens == ort_tokens,
                        "torch": loaded.tokenizer.decode(torch_tokens), "onnx": loaded.tokenizer.decode(ort_tokens)}
    if base is not None:
        base_ort = torch_logits(load_ort(base), ids)
        report["comparisons"].append(asdict(compare("base ONNX vs torch unpatched", base_ort, base_torch)))
        report["comparisons"].append(asdict(compare("patched vs base ONNX (patch effect)", ort_out, base_ort)))
    first = report["comparisons"][0]
    report["tolerance"] = FP32_TOLERANCE if quant == "fp32" else None
    report["ok"] = quant != "fp32" or first["max_abs_logit_diff"] <= FP32_TOLERANCE
    return report


def format_table(report: dict) -> str:
    lines = [f"{report['patched']}: {report['weights']} weights, {report['heads']} patched heads",
             f"{'comparison':<38} {'prompts':>7} {'tokens':>6} {'max|Δlogit|':>12} {'top-1 agree':>11}"]
    for c in report["comparisons"]:
        lines.append(f"{c['name']:<38} {c['prompts']:>7} {c['tokens']:>6} {c['max_abs_logit_diff']:>12.3e} "
                     f"{c['top1_agreement']:>11.1%}")
    g = report["greedy"]
    lines.append(f"greedy {g['tokens']} tokens on prompt 1: {'identical' if g['identical'] else 'DIFFERENT'}")
    if report["tolerance"] is not None:
        verdict = "OK" if report["ok"] else "FAIL"
        lines.append(f"{verdict}: fp32 export max |Δlogit| {report['comparisons'][0]['max_abs_logit_diff']:.2e} "
                     f"(tolerance {report['tolerance']:.0e})")
    else:
        lines.append(f"{report['weights']} weights: differences come from quantization; compare top-1 agreement")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Per-prompt max |Δlogit| of each comparison, log scale: export error vs the patch's own effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for c in report["comparisons"]:
        values = [max(v, 1e-9) for v in c["per_prompt_max_abs"]]
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{c['name']} (top-1 {c['top1_agreement']:.0%})")
    if report["tolerance"] is not None:
        ax.axhline(report["tolerance"], color="gray", linestyle="--", label="fp32 tolerance")
    ax.set(yscale="log", xlabel="prompt", ylabel="max |Δlogit|", title=f"{Path(report['patched']).name} "
           f"({report['weights']} weights)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def verify(args) -> int:
    report = run_verify(args)
    print(format_table(report))
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
        png = Path(args.output).with_suffix(".png")
        plot(report, png)
        print(f"wrote {args.output} and {png}")
    return 0 if report["ok"] else 1
