"""Shortlist calibration variants fast: train each in torch and score it by batched greedy decoding on
the validation sets, paired against the unpatched model (GPU when there is one).

`pear-edge sweep` scores every variant in llama.cpp one prompt at a time (~3 s per 10-document prompt
on 2 CPU cores); this decodes whole batches, so a GPU tries dozens of settings in minutes. It reads
validation data only and writes the sweep's report format; the claims people rely on still come from
llama.cpp on the test split (`pear-edge sweep`, `pear-edge eval`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pear_edge.calibrate import detect_heads, train_from_scores
from pear_edge.heads import scale_heads
from pear_edge.prompts import user_messages
from pear_edge.proxy import model_device

from .backends import TorchBackend, _stop_ids
from .harness import EvalResults, ExampleResult, evaluate
from .metrics import best_subspan_em
from .sweep import _row, detection_key, settings_from, summary_line, write_sweep_report
from .tasks import QAExample, TextExample


@torch.inference_mode()
def greedy_answers(loaded, examples: list[QAExample], max_tokens: int = 32, batch: int = 64) -> list[str]:
    """Greedy answers for chat prompts, left-padded batches (same template and stops as TorchBackend)."""
    model, tok = loaded.model, loaded.tokenizer
    stops = _stop_ids(model, tok)
    device = model_device(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))  # less padding
    answers: list[str] = [""] * len(examples)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        ids = [tok.apply_chat_template(user_messages(examples[i].prompt), add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for i in chunk]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), stops[0], dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_tokens,
                             do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=stops[0])
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            answers[i] = tok.decode(new[:cut], skip_special_tokens=True).strip()
    return answers


def score(loaded, sets: dict[str, list], batch: int = 64) -> dict[str, EvalResults]:
    """Every validation task in torch, as EvalResults so `paired_compare` and the sweep report apply."""
    results = {}
    for task, examples in sets.items():
        if isinstance(examples[0], TextExample):  # one forward per passage: nothing to batch
            results[task] = evaluate(TorchBackend(loaded), examples, task, progress=False)
            continue
        outputs = greedy_answers(loaded, examples, batch=batch)
        items = [ExampleResult(e.id, e.position, e.answers, o, best_subspan_em(o, e.answers))
                 for e, o in zip(examples, outputs)]
        results[task] = EvalResults(task, {"kind": "torch-batched", "name": loaded.name}, items)
    return results


def run_search(loaded, variants: dict[str, dict[str, Any]], outdir: Path, sets: dict[str, list], seed: int = 0,
               progress: bool = True) -> list[dict]:
    """Calibrate and score each variant on `loaded` (already on its device); rows as in the sweep."""
    outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = score(loaded, sets)
    print(f"base scored in {time.perf_counter() - start:.1f}s: "
          + ", ".join(f"{t} {r.score:.4g}" for t, r in base.items()), flush=True)
    detections: dict[str, Any] = {}
    rows = []
    for name, overrides in tqdm(variants.items(), desc="search", disable=not progress):
        settings = settings_from(overrides, seed)
        start = time.perf_counter()
        key = detection_key(settings)
        if key not in detections:
            detections[key] = detect_heads(loaded, settings, progress=False)
        coeffs = train_from_scores(loaded, detections[key], settings, progress=False)
        seconds = time.perf_counter() - start
        with scale_heads(loaded.adapter, coeffs.as_dict()):
            pear = score(loaded, sets)
        row = _row(name, overrides, coeffs, base, pear, seconds)
        rows.append(row)
        coeffs.save(outdir / f"{name}.coeffs.json")
        write_sweep_report(outdir, rows)  # after every variant: an interrupted search keeps what it found
        print(summary_line(row), f"({seconds:.0f}s)", flush=True)
    return rows
