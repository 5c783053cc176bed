"""One speed measurement in a fresh process, so the parent can read this process's own peak RSS
(os.wait4) and no allocator or page-cache state leaks between base and patched runs.

    python -m pear_edge.eval.speed_worker '{"kind": "llamacpp", "path": "m.gguf", "prompt_tokens": 256, ...}'

Prints one JSON line: prefill and decode tokens/s, load seconds.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def _prompt_ids(tokenize, count: int) -> list[int]:
    """A realistic, fixed prompt: Python docs text, repeated until `count` tokens."""
    from pydoc_data.topics import topics

    ids = tokenize(topics["assignment"] + "\n" + topics["if"])
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


def measure_llamacpp(spec: dict) -> dict:
    from pear_edge.llamacpp import open_gguf

    start = time.perf_counter()
    llm = open_gguf(spec["path"], n_ctx=spec["prompt_tokens"] + spec["gen_tokens"] + 8, n_threads=spec.get("threads"))
    load = time.perf_counter() - start
    ids = _prompt_ids(lambda t: llm.tokenize(t.encode(), add_bos=False, special=False), spec["prompt_tokens"])
    llm.eval(ids[:16])  # warm-up: first-touch of weights and buffers
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(spec["gen_tokens"]):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode = time.perf_counter() - start
    return {"prefill_tps": len(ids) / prefill, "decode_tps": spec["gen_tokens"] / decode, "load_s": load}


def measure_hf(spec: dict) -> dict:
    """onnxruntime (or torch) through generate(); the Stopwatch's first tick splits prefill and decode."""
    import torch

    from pear_edge.timing import Stopwatch

    from .backends import open_backend

    start = time.perf_counter()
    backend = open_backend(spec["path"], kind=spec["kind"])
    load = time.perf_counter() - start
    ids = _prompt_ids(lambda t: backend.tokenizer(t, add_special_tokens=False)["input_ids"], spec["prompt_tokens"])
    input_ids = torch.tensor([ids])
    watch = Stopwatch()

    def run(new_tokens: int) -> None:
        watch.restart()
        with torch.inference_mode():
            backend.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=backend.stop_ids[0], logits_processor=watch.logits_processor())
        watch.stop()

    run(2)  # warm-up
    run(spec["gen_tokens"] + 1)
    return {"prefill_tps": len(ids) / watch.first_token_s,
            "decode_tps": spec["gen_tokens"] / (watch.seconds - watch.first_token_s), "load_s": load}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    result = measure_llamacpp(spec) if spec["kind"] == "llamacpp" else measure_hf(spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
