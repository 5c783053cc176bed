"""The answers cache (`eval --answers-cache DIR`): each side's answers kept across runs, so that a run of the same
base model against a new PEAR model on the same examples answers only the PEAR side.

A side is one model answering one way. Its file, DIR/<sha256 of its key>.json, holds its key (what decides its
answers besides the question: see `side_key`), what its backend describes itself as and the calibration record it
carries (so that a side answered wholly from the cache is never loaded, yet reports and warns as if it had been),
and its answers, each under the sha256 of the question: the call and its arguments (greedy answer: max tokens,
batch size where torch batches, the prompt text; NLL: the passage text). Correctness is not stored but scored
afresh against each example's gold answers, as in an uncached run; timing is not stored either (an answer from
the cache has none).

A run reads its sides' files, answers only what they lack, and merges what it answered into them once a side is
done, every KEEP_EVERY_S seconds while it answers, and on the way out of an interrupted run (re-read just before
the atomic write: runs filling one side at once, like parallel shards, keep each other's answers but for a rare
race, which costs answering again). So a run stopped half way, by a signal or a killed job, is answered again only
from its last kept answer on. A file that cannot be read as its side's is ignored with one warning line and
rewritten.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from pear_edge.base.errors import PearError

from pear_edge.eval.backends import Backend
from pear_edge.eval.shards import read_document, write_document

FORMAT = "pear-edge/eval-answers"
VERSION = 1
"""Bumped whenever the way an answer is produced changes (prompt rendering, stops, decoding): older files miss."""
KEEP_EVERY_S = 60.0
"""While a side answers, its new answers are merged into its file at most this often (seconds)."""

RUNTIMES = {"llamacpp": ("llama-cpp-python",), "onnx": ("onnxruntime", "onnxruntime-gpu", "optimum", "transformers"),
            "torch": ("torch", "transformers")}
"""The packages whose version can change a backend kind's answers."""


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions(kind: str) -> dict[str, str | None]:
    """pear-edge's version and those of the packages that run `kind` (None: not installed)."""
    return {name: installed_version(name) for name in ("pear-edge", *RUNTIMES[kind])}


def thread_setting(threads: int | None, cpus: int | None) -> int | str:
    """--threads as part of a key; without it, the runtime's default on this machine's `cpus` cores. A different
    thread count can change float summation order, and with it a rare answer."""
    return threads if threads else f"default on {cpus} cores"


def side_key(kind: str, model: str, model_sha256: str, prompt_format: str, threads: int | str,
             runtime: dict[str, str | None], coefficients_sha256: str | None = None, mode: str = "plain"
             ) -> dict[str, Any]:
    """What decides a side's answers besides the question: the backend kind, the model as given (what its
    report names) and the sha256 of what it holds (a GGUF file, an ONNX or Hugging Face folder), for torch the
    coefficients file's sha256 and how they apply (plain, hooked, folded), the prompt format asked for (auto
    resolves from the model), the thread setting and the runtime's versions."""
    return {"kind": kind, "model": model, "model_sha256": model_sha256, "mode": mode,
            "coefficients_sha256": coefficients_sha256, "prompt_format": prompt_format, "threads": threads,
            "runtime": runtime}


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def side_file(key: dict[str, Any]) -> str:
    return f"{_sha256_json(key)}.json"


def side_path(folder: str | Path, key: dict[str, Any]) -> Path:
    return Path(folder) / side_file(key)


def ask_key(call: str, *args: Any) -> str:
    """The name of one question to a side: the call and its arguments ("generate", max tokens, prompt)."""
    return _sha256_json([call, *args])


OUTPUT, NLL = frozenset({"output"}), frozenset({"nll", "tokens"})
"""The two shapes of an answer: {"output": text}, {"nll": summed NLL, "tokens": predicted tokens}."""


def answer_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if set(value) == OUTPUT:
        return isinstance(value["output"], str)
    nll, tokens = value.get("nll"), value.get("tokens")
    return (set(value) == NLL and isinstance(nll, (int, float)) and not isinstance(nll, bool) and math.isfinite(nll)
            and isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 1)


@dataclass
class Side:
    """One side's answers by ask_key; `backend` (its describe()) and `calibration` (its calibration record) are
    None until its backend has been opened once."""

    key: dict[str, Any]
    backend: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "key": self.key, "backend": self.backend,
                "calibration": self.calibration, "answers": self.answers}


def side_from(doc: dict[str, Any], key: dict[str, Any]) -> Side:
    """The Side of an answers document; ValueError unless it is well formed and of the side `key`."""
    if doc["key"] != key:
        raise ValueError("written for another side")
    backend, calibration, answers = doc["backend"], doc["calibration"], doc["answers"]
    if not (isinstance(backend, dict) and isinstance(calibration, dict) and isinstance(answers, dict)
            and all(answer_ok(v) for v in answers.values())):
        raise ValueError("malformed backend, calibration or answers")
    return Side(key, backend, calibration, answers)


def parse_side(path: Path, key: dict[str, Any]) -> Side:
    """The answers file at `path`, read strictly: PearError naming it on anything but a file of the side `key`."""
    return read_document(path, "answers cache file", FORMAT, VERSION, lambda doc: side_from(doc, key))


def load_side(folder: str | Path, key: dict[str, Any], warn: bool = True) -> Side:
    """The side `key`'s answers in `folder` (none yet: an empty Side). A file that cannot be read as that side's
    counts as none, after one `pear-edge: warning:` line when `warn`; `save_side` rewrites it."""
    path = side_path(folder, key)
    if not path.exists() and not path.is_symlink():
        return Side(key)
    try:
        return parse_side(path, key)
    except PearError as exc:
        if warn:
            print(f"pear-edge: warning: {' '.join(str(exc).split())}; ignoring it (rewritten with this run's "
                  "answers)", file=sys.stderr)
        return Side(key)


def save_side(folder: str | Path, side: Side) -> Path:
    """Merge `side` into its file in `folder`, created (and marked as pear-edge's) if need be; written atomically."""
    earlier = load_side(folder, side.key, warn=False)
    described = side if side.backend is not None else earlier
    merged = Side(side.key, described.backend, described.calibration, {**earlier.answers, **side.answers})
    return write_document(folder, side_file(side.key), merged.as_dict())


class CachedBackend(Backend):
    """A side's backend that answers from `side` where it can and opens the real one (`opener()`) for the rest,
    on the first question it lacks: a side whose answers are all cached is never loaded. What the real backend
    answers goes into `side` (save_side writes it); `reused` and `answered` count the two kinds of answer.
    `keep(side)`, if given, is called after a new answer when `keep_every_s` seconds have passed since the last
    call (or since this backend was made; default KEEP_EVERY_S), to write what the side has so far."""

    def __init__(self, opener: Callable[[], Backend], side: Side, keep: Callable[[Side], None] | None = None,
                 keep_every_s: float | None = None):
        self._opener, self.side = opener, side
        self._real: Backend | None = None
        self.last_timing = None
        self.reused = self.answered = 0
        self._keep, self._kept_at = keep, time.monotonic()
        self._keep_every_s = KEEP_EVERY_S if keep_every_s is None else keep_every_s

    def _answered(self, count: int) -> None:
        self.answered += count
        now = time.monotonic()
        if self._keep is not None and now - self._kept_at >= self._keep_every_s:
            self._keep(self.side)
            self._kept_at = now

    def _backend(self) -> Backend:
        if self._real is None:
            self._real = self._opener()
            self.side.backend, self.side.calibration = self._real.describe(), self._real.calibration_record()
        return self._real

    def _description(self) -> dict[str, Any]:
        if self._real is None and self.side.backend is not None:
            return self.side.backend
        return self._backend().describe()

    kind = property(lambda self: self._description()["kind"])
    name = property(lambda self: self._description()["name"])
    source = property(lambda self: self._description()["source"])
    prompt_format = property(lambda self: self._description()["prompt_format"])

    def describe(self) -> dict[str, Any]:
        return dict(self._description())

    def calibration_record(self) -> dict[str, Any]:
        if self._real is None and self.side.calibration is not None:
            return self.side.calibration
        return self._backend().calibration_record()

    def _ask(self, key: str, shape: frozenset, answer: Callable[[Backend], dict[str, Any]]) -> dict[str, Any]:
        cached = self.side.answers.get(key)
        if cached is not None and set(cached) == shape:
            self.reused += 1
            self.last_timing = None
            return cached
        real = self._backend()
        self.side.answers[key] = value = answer(real)
        self.last_timing = real.last_timing
        self._answered(1)
        return value

    def generate(self, prompt: str, max_tokens: int = 32) -> str:
        return self._ask(ask_key("generate", max_tokens, prompt), OUTPUT,
                         lambda real: {"output": real.generate(prompt, max_tokens)})["output"]

    def nll(self, text: str) -> tuple[float, int]:
        def answer(real: Backend) -> dict[str, Any]:
            nll, tokens = real.nll(text)
            return {"nll": nll, "tokens": tokens}

        value = self._ask(ask_key("nll", text), NLL, answer)
        return float(value["nll"]), int(value["tokens"])

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


class CachedBatchingBackend(CachedBackend):
    """A torch side: also greedy batches (`generate_batch`), whose answers are cached apart from one-at-a-time
    ones (left padding can change a rare answer), by batch size."""

    def generate_batch(self, prompts: list[str], max_tokens: int = 32, batch: int = 16) -> list[str]:
        keys = [ask_key("generate_batch", max_tokens, batch, p) for p in prompts]
        missing = [i for i, k in enumerate(keys) if set(self.side.answers.get(k) or ()) != OUTPUT]
        if missing:
            outputs = self._backend().generate_batch([prompts[i] for i in missing], max_tokens, batch)
            self.side.answers.update((keys[i], {"output": o}) for i, o in zip(missing, outputs))
        self.reused += len(prompts) - len(missing)
        if missing:
            self._answered(len(missing))
        return [self.side.answers[k]["output"] for k in keys]


def cached_backend(kind: str, opener: Callable[[], Backend], side: Side,
                   keep: Callable[[Side], None] | None = None) -> CachedBackend:
    """The cached side of a `kind` backend (torch batches: the harness batches a backend with generate_batch)."""
    return (CachedBatchingBackend if kind == "torch" else CachedBackend)(opener, side, keep)
