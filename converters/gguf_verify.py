"""`pear-edge verify FILE.gguf`: does llama.cpp running the patched GGUF compute what torch computes
with the folded model? Same token ids through both, logits_all, then max |Δlogit| and top-1 agreement.
With --base, also base GGUF vs unpatched torch (the quantization floor to compare against) and base
vs patched GGUF next to unpatched vs folded torch (the change the patch was meant to make)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pear_edge.atomic import write_text_atomic
from pear_edge.coefficients import Coefficients
from pear_edge.errors import PearError
from pear_edge.fold import fold_model
from pear_edge.llamacpp import open_gguf
from pear_edge.models import load_model
from pear_edge.prompts import Document, mdqa_prompt

from .cli import read_prompts
from .gguf_layout import pear_metadata, read_gguf

DEFAULT_PROMPTS = (
    mdqa_prompt("Who wrote the novel mentioned in the second document?", [
        Document("Lighthouses", "The Bell Rock lighthouse stands off the coast of Angus, Scotland."),
        Document("A novel", "Kidnapped was written by Robert Louis Stevenson and published in 1886."),
        Document("Rivers", "The river Tay is the longest river in Scotland."),
    ]),
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Copy this list exactly: apple, tractor, violet, seven, harbour. Copy: apple, tractor,",
)


def coefficients_for(patched: Path, reader, explicit: str | None) -> Coefficients:
    if explicit:
        return Coefficients.load(explicit)
    meta = pear_metadata(reader)
    if "pear.coefficients" not in meta:
        raise PearError(f"{patched} has no pear.coefficients metadata; pass --coefficients")
    return Coefficients.from_json(str(meta["pear.coefficients"]), source=f"{patched} pear.coefficients")


def gguf_logits(path: Path, token_lists: list[list[int]]) -> list[np.ndarray]:
    llm = open_gguf(path, n_ctx=max(map(len, token_lists)) + 8, logits_all=True)
    out = []
    for ids in token_lists:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[:len(ids)], dtype=np.float32))
    llm.close()
    return out


def torch_logits(model: torch.nn.Module, token_lists: list[list[int]]) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in token_lists]


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """max |Δlogit| and top-1 agreement over every position of every prompt."""
    vocab = min(a[0].shape[-1], b[0].shape[-1])
    x = np.concatenate([m[:, :vocab] for m in a])
    y = np.concatenate([m[:, :vocab] for m in b])
    return {"max_abs_logit_diff": float(np.abs(x - y).max()),
            "mean_abs_logit_diff": float(np.abs(x - y).mean()),
            "top1_agreement": float((x.argmax(-1) == y.argmax(-1)).mean()),
            "positions": int(x.shape[0])}


def verify_gguf(patched: str | Path, model: str, coefficients: str | None = None, base: str | None = None,
                prompts: str | None = None) -> dict:
    patched = Path(patched)
    reader = read_gguf(patched)
    coeffs = coefficients_for(patched, reader, coefficients)
    del reader
    if base:
        base_reader = read_gguf(base)
        if pear_metadata(base_reader):
            raise PearError(f"--base {base} is itself PEAR-patched; pass the original GGUF")
        del base_reader
    texts = read_prompts(prompts, DEFAULT_PROMPTS)
    loaded = load_model(model)
    tokens = [loaded.tokenizer(t)["input_ids"] for t in texts]
    results: dict[str, dict] = {}
    unpatched_torch = torch_logits(loaded.model, tokens) if base else None
    fold_model(loaded, coeffs)
    folded_torch = torch_logits(loaded.model, tokens)
    patched_gguf = gguf_logits(patched, tokens)
    results["patched GGUF vs folded torch"] = compare(patched_gguf, folded_torch)
    if base:
        base_gguf = gguf_logits(Path(base), tokens)
        results["base GGUF vs unpatched torch"] = compare(base_gguf, unpatched_torch)
        results["base GGUF vs patched GGUF"] = compare(base_gguf, patched_gguf)
        results["unpatched torch vs folded torch"] = compare(unpatched_torch, folded_torch)
    return {"patched": str(patched), "base": base, "model": model, "heads": len(coeffs.heads),
            "prompts": len(texts), "comparisons": results}


def format_table(report: dict) -> str:
    rows = [f"{'comparison':<34} {'max|Δlogit|':>12} {'mean|Δlogit|':>13} {'top-1 agree':>12}"]
    for name, r in report["comparisons"].items():
        rows.append(f"{name:<34} {r['max_abs_logit_diff']:>12.4f} {r['mean_abs_logit_diff']:>13.4f} "
                    f"{r['top1_agreement']:>11.1%}")
    rows.append(f"({report['prompts']} prompts, {next(iter(report['comparisons'].values()))['positions']} positions, "
                f"{report['heads']} patched heads)")
    return "\n".join(rows)


def plot_report(report: dict, png: Path) -> Path:
    """Bar chart of mean |Δlogit| and top-1 agreement per comparison, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pear_edge.atomic import atomic_file

    names = list(report["comparisons"])
    rows = [report["comparisons"][n] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 1.8))
    ax1.barh(names, [r["mean_abs_logit_diff"] for r in rows], color="tab:blue")
    ax1.set_xlabel("mean |Δlogit|")
    ax2.barh(names, [100 * r["top1_agreement"] for r in rows], color="tab:green")
    ax2.set_xlabel("top-1 agreement (%)")
    ax2.set_xlim(0, 100)
    ax2.set_yticks([])
    fig.suptitle(f"{Path(report['patched']).name}: {report['heads']} heads, {rows[0]['positions']} positions")
    fig.tight_layout()
    with atomic_file(png, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


def run_verify(args) -> int:
    report = verify_gguf(args.patched, args.model, args.coefficients, args.base, args.prompts)
    print(format_table(report))
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
        png = plot_report(report, Path(args.output).with_suffix(".png"))
        print(f"wrote {args.output} and {png}")
    return 0
