"""One speed measurement in a fresh process, so the parent can read this process's own peak RSS
(os.wait4) and no allocator, page-cache or GPU state leaks between base and patched runs.

    python -m pear_edge.eval.speed_worker '{"kind": "llamacpp", "path": "m.gguf", "prompt_tokens": 256,
                                            "gen_tokens": 64, "threads": null, "device": "cpu", "repeats": 1}'
    python -m pear_edge.eval.speed_worker --probe llamacpp      # can this backend run on the GPU here?

Prints one JSON line: prefill and decode tokens/s (the median over `repeats` timed passes after a
warm-up), load seconds and, on a GPU, `peak_device_mib` (pear_edge.runtime.device.PeakDeviceMemory: sampled
before loading and after the warm-up and every timed pass, never inside one). `--probe` prints
{"problem": null} or {"problem": "why not"} for the GPU (`cuda_problem`).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Callable

import numpy as np

from pear_edge.runtime.device import cuda_problem


def _prompt_ids(tokenize, count: int) -> list[int]:
    """A realistic, fixed prompt: Python docs text, repeated until `count` tokens."""
    from pydoc_data.topics import topics

    ids = tokenize(topics["assignment"] + "\n" + topics["if"])
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


def _rates(prompt_tokens: int, gen_tokens: int, passes: list[tuple[float, float]]) -> dict[str, float]:
    """Median tokens/s over timed passes of (prefill seconds, decode seconds)."""
    return {"prefill_tps": statistics.median(prompt_tokens / p for p, _ in passes),
            "decode_tps": statistics.median(gen_tokens / d for _, d in passes)}


def measure_llamacpp(spec: dict, checkpoint: Callable[[], None]) -> dict:
    from pear_edge.runtime.llamacpp import ALL_LAYERS, open_gguf

    start = time.perf_counter()
    llm = open_gguf(spec["path"], n_ctx=spec["prompt_tokens"] + spec["gen_tokens"] + 8, n_threads=spec.get("threads"),
                    n_gpu_layers=ALL_LAYERS if spec.get("device") == "cuda" else 0)
    load = time.perf_counter() - start
    ids = _prompt_ids(lambda t: llm.tokenize(t.encode(), add_bos=False, special=False), spec["prompt_tokens"])
    llm.eval(ids[:16])  # warm-up: first-touch of weights and buffers
    checkpoint()
    passes = []
    for _ in range(spec.get("repeats", 1)):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)  # reads the logits back, so a GPU has finished when this returns
        prefill = time.perf_counter() - start
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        for _ in range(spec["gen_tokens"]):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        passes.append((prefill, time.perf_counter() - start))
        checkpoint()
    return {**_rates(len(ids), spec["gen_tokens"], passes), "load_s": load}


def measure_hf(spec: dict, checkpoint: Callable[[], None]) -> dict:
    """onnxruntime (or torch) through generate(); the Stopwatch's first tick splits prefill and decode."""
    import torch

    from pear_edge.runtime.timing import Stopwatch

    from pear_edge.eval.backends import open_backend

    start = time.perf_counter()
    backend = open_backend(spec["path"], kind=spec["kind"], device=spec.get("device", "cpu"))
    load = time.perf_counter() - start
    ids = _prompt_ids(lambda t: backend.tokenizer(t, add_special_tokens=False)["input_ids"], spec["prompt_tokens"])
    input_ids = torch.tensor([ids], device=backend.model.device)
    watch = Stopwatch()

    def run(new_tokens: int) -> None:
        watch.restart()
        with torch.inference_mode():
            backend.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=backend.stop_ids[0], logits_processor=watch.logits_processor())
        watch.stop()

    run(2)  # warm-up
    checkpoint()
    passes = []
    for _ in range(spec.get("repeats", 1)):
        run(spec["gen_tokens"] + 1)
        passes.append((watch.first_token_s, watch.seconds - watch.first_token_s))
        checkpoint()
    return {**_rates(len(ids), spec["gen_tokens"], passes), "load_s": load}





def main(argv: list[str]) -> int:
    if argv[:1] == ["--probe"]:
        print(json.dumps({"problem": cuda_problem(argv[1])}))
        return 0
    spec = json.loads(argv[0])
    memory = None
    if spec.get("device") == "cuda":
        from pear_edge.runtime.device import PeakDeviceMemory

        memory = PeakDeviceMemory()  # before anything in this process touches the GPU
    measure = measure_llamacpp if spec["kind"] == "llamacpp" else measure_hf
    result = measure(spec, memory.sample if memory else lambda: None)
    if memory:
        result["peak_device_mib"] = memory.added_mib
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
