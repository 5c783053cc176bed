"""A generation check for `pear-edge calibrate --validate N`: the proxy loss can improve while greedy
answers get worse (measured on SmolLM2-135M, README "Making PEAR help"), so this runs base and hooked
PEAR in torch on N validation-split counterfactual records and reports the paired difference, prompting in
the format the calibration recorded (the model's own, auto, when none was recorded)."""
from __future__ import annotations

import dataclasses

from pear_edge.data.prompts import AUTO, recorded_format

from pear_edge.eval.backends import TorchBackend
from pear_edge.eval.harness import paired_run
from pear_edge.data.tasks import counterfactual_records, mdqa_examples


def validate_coefficients(loaded, coefficients, records: int, num_docs: int = 10,
                          positions: tuple[int, ...] = (0, 4, 9), seed: int = 0, progress: bool = True) -> dict:
    examples = mdqa_examples(counterfactual_records(records, "validation", num_docs, seed), num_docs, positions, seed)
    prompt_format = recorded_format(coefficients.calibration) or AUTO
    _, _, comparison = paired_run(lambda: TorchBackend(loaded, prompt_format=prompt_format),
                                  lambda: TorchBackend(loaded, coefficients, prompt_format=prompt_format), examples,
                                  "validation", progress=progress)
    return {"task": "counterfactual MDQA, validation split", "num_docs": num_docs,
            **dataclasses.asdict(comparison.overall)}
