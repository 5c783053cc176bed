"""A generation check for `pear-edge calibrate --validate N`: the proxy loss can improve while greedy
answers get worse (measured on SmolLM2-135M, README "Making PEAR help"), so this runs base and hooked
PEAR in torch on N validation-split counterfactual records and reports the paired difference."""
from __future__ import annotations

import dataclasses

from .backends import TorchBackend
from .counterfactual import generate_counterfactual
from .harness import evaluate, paired_compare
from .tasks import mdqa_examples, parse_mdqa


def validate_coefficients(loaded, coefficients, records: int, num_docs: int = 10,
                          positions: tuple[int, ...] = (0, 4, 9), seed: int = 0, progress: bool = True) -> dict:
    data = [parse_mdqa(r) for r in generate_counterfactual(records, "validation", seed, num_distractors=num_docs - 1)]
    examples = mdqa_examples(data, num_docs, positions, seed)
    base = evaluate(TorchBackend(loaded), examples, "validation", progress=progress)
    pear = evaluate(TorchBackend(loaded, coefficients), examples, "validation", progress=progress)
    return {"task": "counterfactual MDQA, validation split", "num_docs": num_docs,
            **dataclasses.asdict(paired_compare(base, pear).overall)}
