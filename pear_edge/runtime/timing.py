"""The one way pear-edge times a generation: a `Stopwatch` started just before it and ticked at every
produced token (a transformers decoding step, or a piece streamed by llama.cpp), reduced to a `Timing`.

Used by the eval backends (`last_timing`), the speed worker (prefill = start to first tick, decode =
first tick to the end) and the RAG answers (time to first token, tokens/s).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from pear_edge.runtime.device import machine, peak_torch_memory


@dataclass(frozen=True)
class Timing:
    """Tokens and wall-clock seconds of one generation.

    seconds: from the start to the last token; first_token_s: from the start to the first produced
    token (the prompt's prefill plus one decoding step)."""

    prompt_tokens: int
    output_tokens: int
    seconds: float
    first_token_s: float

    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        """'12 tokens in 0.80 s (first token 0.20 s, 15.0 tok/s)'."""
        return (f"{self.output_tokens} tokens in {self.seconds:.2f} s (first token {self.first_token_s:.2f} s, "
                f"{self.tokens_per_second():.1f} tok/s)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stopwatch:
    """perf_counter timestamps of one generation: `restart()` (or creation) before it, `tick()` at every
    produced token, `stop()` after it."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.ticks: list[float] = []
        self.begin = time.perf_counter()
        self.end: float | None = None

    def tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def stop(self) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Start to stop (to now while running)."""
        return (self.end if self.end is not None else time.perf_counter()) - self.begin

    @property
    def first_token_s(self) -> float:
        """Start to the first tick; the whole run if nothing was produced."""
        return self.ticks[0] - self.begin if self.ticks else self.seconds

    def timing(self, prompt_tokens: int, output_tokens: int) -> Timing:
        return Timing(prompt_tokens, output_tokens, self.seconds, self.first_token_s)

    def logits_processor(self):
        """A transformers LogitsProcessorList that ticks at every decoding step of generate()."""
        from transformers import LogitsProcessor, LogitsProcessorList

        watch = self

        class Tick(LogitsProcessor):
            def __call__(self, input_ids, scores):
                if scores.is_cuda:  # CUDA kernels run asynchronously: tick when this step's logits exist
                    import torch

                    torch.cuda.synchronize(scores.device)
                watch.tick()
                return scores

        return LogitsProcessorList([Tick()])





def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def run_cost(start: float, device: str = "cpu") -> dict[str, Any]:
    """What a run cost from `start` (a perf_counter value) to now: wall seconds, peak RSS, device, machine,
    torch threads; on a CUDA device also torch's peak GPU memory (`peak_device_mib`, allocated;
    `peak_device_reserved_mib`) and the GPU's name. Recorded in every coefficients file (`calibration.cost`)."""
    import torch


    return {"wall_seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": peak_rss_mib(),
            "device": str(device), "machine": machine(), "torch_threads": torch.get_num_threads(),
            **peak_torch_memory(device)}


def cost_summary(cost: dict[str, Any]) -> str:
    """One line for a `run_cost` record: "W s, peak RSS R GiB[, peak GPU memory …] (machine, T threads)"."""
    gpu = (f", peak GPU memory {cost['peak_device_mib'] / 1024:.2f} GiB on {cost['device_name']}"
           if "peak_device_mib" in cost else "")
    return (f"{cost['wall_seconds']:.0f} s, peak RSS {cost['peak_rss_mib'] / 1024:.2f} GiB{gpu} "
            f"({cost['machine']}, {cost['torch_threads']} threads)")


def calibration_phases(calibration: dict[str, Any]) -> dict[str, float | None]:
    """Where a calibration's wall time went, as recorded: {"load", "proxy", "detect", "train"} -> seconds (None
    where the run did not record it: e.g. no detection in a recipe without learned scales)."""
    return {"load": calibration.get("cost", {}).get("load_seconds"), "proxy": calibration.get("proxy_seconds"),
            "detect": calibration.get("detect_seconds"), "train": calibration.get("train_seconds")}
