"""Backends with one interface, so the same prompts run on torch, llama.cpp and onnxruntime:

    generate(prompt, max_tokens) -> str        greedy answer to the user text `prompt`, in prompt_format
    nll(text) -> (summed NLL, predicted tokens)
    last_timing                                 tokens and seconds of the latest generate() (pear_edge.runtime.timing)
    prompt_format                               chat (the model's chat template) or completion (plain text
                                                ending in a cue, answer up to a newline): pear_edge.data.prompts;
                                                auto-detected from the tokenizer / GGUF metadata unless given
    calibration_record()                        the calibration record of coefficients the model carries

torch runs an HF model as is, hooked with `apply_coefficients` (every edit of a coefficients file), or folded in place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pear_edge.base.errors import PearError
from pear_edge.data.prompts import AUTO, CHAT, COMPLETION_STOPS, end_answer, prompt_ids, tokenizer_format
from pear_edge.runtime.timing import Stopwatch, Timing

KINDS = ("torch", "llamacpp", "onnx")


class Backend:
    kind = "?"
    prompt_format = CHAT

    def __init__(self, name: str, source: str):
        self.name, self.source = name, source
        self.last_timing: Timing | None = None

    def generate(self, prompt: str, max_tokens: int = 32) -> str:
        raise NotImplementedError

    def nll(self, text: str) -> tuple[float, int]:
        raise NotImplementedError

    def calibration_record(self) -> dict[str, Any]:
        """The `calibration` of the coefficients this model runs with ({} for an unpatched model)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "source": self.source, "prompt_format": self.prompt_format}

    def close(self) -> None:
        pass


def _nll_from_logits(logits: np.ndarray, ids: list[int]) -> tuple[float, int]:
    """Summed NLL of ids[1:] given logits rows 0..n-2 (row i predicts token i+1)."""
    x = logits[: len(ids) - 1].astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=1))
    picked = x[np.arange(len(ids) - 1), ids[1:]]
    return float((logz - picked).sum()), len(ids) - 1


def _text_ids(tokenize, text: str, limit: int) -> list[int]:
    ids = list(tokenize(text))
    if len(ids) < 2:
        raise PearError("perplexity needs a passage of at least two tokens")
    if len(ids) > limit:
        raise PearError(f"passage has {len(ids)} tokens, more than the {limit}-token window; use shorter passages")
    return ids


class _HFGenerating(Backend):
    """Shared by torch and onnxruntime: transformers' generate() with a clock on every decoding step."""

    def __init__(self, model, tokenizer, name: str, source: str, prompt_format: str = AUTO):
        super().__init__(name, source)
        self.model, self.tokenizer = model, tokenizer
        self.prompt_format = tokenizer_format(tokenizer, prompt_format, name)
        self.stop_ids = _stop_ids(model, tokenizer)

    def _forward_context(self):
        import contextlib
        return contextlib.nullcontext()

    def _stop_strings(self) -> dict[str, Any]:
        """generate() arguments that end a completion answer at its stop strings (chat: end of turn only)."""
        if self.prompt_format == CHAT:
            return {}
        return {"stop_strings": list(COMPLETION_STOPS), "tokenizer": self.tokenizer}

    def generate(self, prompt, max_tokens=32):
        import torch

        input_ids = torch.tensor([prompt_ids(self.tokenizer, prompt, self.prompt_format)], device=self.model.device)
        watch = Stopwatch()
        with torch.inference_mode(), self._forward_context():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[0],
                                      logits_processor=watch.logits_processor(), **self._stop_strings())
        watch.stop()
        new = out[0, input_ids.shape[1]:].tolist()
        while new and new[-1] in self.stop_ids:
            new.pop()
        self.last_timing = watch.timing(input_ids.shape[1], len(new))
        return end_answer(self.tokenizer.decode(new, skip_special_tokens=True), self.prompt_format)

    def nll(self, text):
        import torch

        ids = _text_ids(lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"], text, 4096)
        with torch.inference_mode(), self._forward_context():
            input_ids = torch.tensor([ids], device=self.model.device)
            logits = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0]
        return _nll_from_logits(logits.float().cpu().numpy(), ids)


def _stop_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end_turn is not None:
        ids.append(end_turn)
    if not ids:
        raise PearError("the tokenizer defines no end-of-sequence token; cannot tell when an answer ends")
    return list(dict.fromkeys(ids))


class TorchBackend(_HFGenerating):
    """An HF model in torch: as is, hooked with coefficients (`apply_coefficients`), or folded in place."""

    kind = "torch"

    def __init__(self, loaded, coefficients=None, fold: bool = False, prompt_format: str = AUTO,
                 threads: int | None = None):
        """`threads`: torch's CPU threads, process-wide (None: leave torch's setting)."""
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        super().__init__(loaded.model, loaded.tokenizer, loaded.name, str(loaded.source), prompt_format)
        self.loaded, self.coefficients, self.mode = loaded, coefficients, "plain"
        if coefficients is not None:
            if fold:
                from pear_edge.edits.fold import fold_model
                fold_model(loaded, coefficients)
                self.mode = "folded"
            else:
                coefficients.model.check_matches(loaded.fingerprint(), what=str(loaded.source))
                self.mode = "hooked"

    def _forward_context(self):
        if self.mode != "hooked":
            return super()._forward_context()
        from pear_edge.edits.heads import apply_coefficients
        return apply_coefficients(self.loaded.adapter, self.coefficients)

    def calibration_record(self):
        if self.coefficients is not None:
            return self.coefficients.calibration
        return _folder_calibration(self.loaded.source)

    def describe(self):
        info = {**super().describe(), "mode": self.mode}
        if self.coefficients is not None:
            info["heads"] = len(self.coefficients.heads)
            info["edits"] = self.coefficients.edit_counts()
        return info

    def generate_batch(self, prompts: list[str], max_tokens: int = 32, batch: int = 16) -> list[str]:
        """Greedy answers to many prompts at once: left-padded batches, shortest prompts together (less
        padding); the same prompt format, stops and decoding as `generate` (a test checks they agree)."""
        import torch

        tok, model = self.tokenizer, self.model
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers = [""] * len(prompts)
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            ids = [prompt_ids(tok, prompts[i], self.prompt_format) for i in chunk]
            width = max(map(len, ids))
            input_ids = torch.full((len(ids), width), self.stop_ids[0], dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, seq in enumerate(ids):
                input_ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
            with torch.inference_mode(), self._forward_context():
                out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                     max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                                     eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[0], **self._stop_strings())
            for row, i in enumerate(chunk):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in self.stop_ids), len(new))
                answers[i] = end_answer(tok.decode(new[:cut], skip_special_tokens=True), self.prompt_format)
        return answers


class OnnxBackend(_HFGenerating):
    """An exported ONNX folder through optimum's ORTModelForCausalLM (onnxruntime: the CPU, or the CUDA
    execution provider of onnxruntime-gpu)."""

    kind = "onnx"
    PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

    def __init__(self, folder: str | Path, device: str = "cpu", prompt_format: str = AUTO, threads: int | None = None):
        """`threads`: onnxruntime's intra-op threads, not spinning between runs (None: its default, one per core,
        spinning — which steals a shared CPU from the jobs beside it)."""
        import onnxruntime
        from optimum.onnxruntime import ORTModelForCausalLM
        from transformers import AutoTokenizer

        path = Path(folder)
        if not path.is_dir() or not any(path.glob("*.onnx")):
            raise PearError(f"{path} is not a folder with an exported ONNX model (*.onnx)")
        provider = self.PROVIDERS[device]
        options = None  # None: optimum's default session
        if threads is not None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            model = ORTModelForCausalLM.from_pretrained(path, provider=provider, session_options=options)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # onnxruntime and optimum raise many types on broken folders
            raise PearError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        if model.providers[0] != provider:  # onnxruntime falls back to the CPU when CUDA libraries are missing
            raise PearError(f"onnxruntime runs {path} on {model.providers[0]}, not {provider} (are the CUDA "
                            "libraries of onnxruntime-gpu installed? `make setup-cuda`)")
        super().__init__(model, tokenizer, path.name, str(path), prompt_format)

    def calibration_record(self):
        return _folder_calibration(Path(self.source))


def _folder_calibration(folder: Path) -> dict[str, Any]:
    """The calibration record of the coefficients folded into an HF or ONNX folder (pear_coefficients.json,
    written by fold / export), or {} (none, or a packaged model / GGUF source)."""
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.edits.fold import COEFFICIENTS_FILENAME

    path = Path(folder) / COEFFICIENTS_FILENAME
    return Coefficients.load(path).calibration if Path(folder).is_dir() and path.is_file() else {}


class LlamaCppBackend(Backend):
    """A GGUF in llama.cpp, through the same answer path as the RAG demo (`pear_edge.runtime.llamacpp.timed_answer`:
    the GGUF's chat template, or a plain completion for a GGUF without one)."""

    kind = "llamacpp"
    PPL_CONTEXT = 1024

    def __init__(self, path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
                 prompt_format: str = AUTO):
        from pear_edge.runtime.llamacpp import open_gguf, prompt_format_of

        self.path = Path(path)
        super().__init__(self.path.name, str(self.path))
        self.n_threads, self.n_gpu_layers = n_threads, n_gpu_layers
        self.llm = open_gguf(self.path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        self._scorer = None
        try:
            self.prompt_format = prompt_format_of(self.llm, prompt_format, self.path.name)
        except PearError:
            self.close()
            raise

    def generate(self, prompt, max_tokens=32):
        from pear_edge.runtime.llamacpp import timed_answer

        text, self.last_timing = timed_answer(self.llm, prompt, self.prompt_format, max_tokens)
        return text

    def calibration_record(self):
        from pear_edge.runtime.llamacpp import recorded_calibration

        return recorded_calibration(self.llm)

    def nll(self, text):
        from pear_edge.runtime.llamacpp import open_gguf

        if self._scorer is None:  # a second context that keeps logits for every position
            self._scorer = open_gguf(self.path, n_ctx=self.PPL_CONTEXT, logits_all=True, n_threads=self.n_threads,
                                     n_gpu_layers=self.n_gpu_layers)
        llm = self._scorer
        ids = _text_ids(lambda t: llm.tokenize(t.encode(), add_bos=False, special=False), text, self.PPL_CONTEXT)
        llm.reset()
        llm.eval(ids)
        return _nll_from_logits(np.asarray(llm.scores[: len(ids)]), ids)

    def close(self):
        for llm in (self.llm, self._scorer):
            if llm is not None:
                llm.close()


def infer_kind(spec: str) -> str:
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        return "llamacpp"
    if path.is_dir() and any(path.glob("*.onnx")):
        return "onnx"
    return "torch"


def check_backend_input(spec: str, kind: str | None = None) -> Path:
    """Cheap checks of a model before any evaluation starts (a damaged --pear file must not be found
    only after the whole base run): it exists, and a GGUF's header and tensor infos are valid. Returns
    the model's file or folder (SPEC resolved: `default` is the packaged GGUF)."""
    from pear_edge.runtime.models import resolve_spec

    kind = kind or infer_kind(spec)
    if kind == "onnx":
        if not Path(spec).is_dir() or not any(Path(spec).glob("*.onnx")):
            raise PearError(f"{spec} is not a folder with an ONNX model")
        return Path(spec)
    path = resolve_spec(spec)
    if kind == "llamacpp":
        from pear_edge.converters.gguf_layout import read_gguf

        if path.suffix.lower() != ".gguf":
            raise PearError(f"the llama.cpp backend needs a .gguf file, not {path}")
        read_gguf(path)
    return path


def open_backend(spec: str, kind: str | None = None, coefficients=None, fold: bool = False,
                 n_ctx: int = 4096, threads: int | None = None, device: str = "cpu",
                 prompt_format: str = AUTO) -> Backend:
    """Open SPEC (a .gguf, an ONNX folder, an HF folder or a packaged model name) on a backend.

    `coefficients` (a Coefficients) apply PEAR on the fly and exist only for torch; GGUF and ONNX
    models are patched ahead of time with `pear-edge patch-gguf` / `pear-edge export onnx`.
    `threads`: llama.cpp threads, onnxruntime intra-op threads or torch threads (None: the runtime's default; on
    a machine shared with other jobs, 1 avoids threads spinning against them).
    `device`: cpu or cuda (llama.cpp: every layer offloaded; onnxruntime: the CUDA execution provider;
    torch: the model moved to the GPU). `prompt_format`: auto (the model's chat template if it has one, else
    a plain completion prompt), chat or completion (pear_edge.data.prompts)."""
    from pear_edge.runtime.llamacpp import ALL_LAYERS

    kind = kind or infer_kind(spec)
    if kind not in KINDS:
        raise PearError(f"backend must be one of {', '.join(KINDS)}, not {kind!r}")
    if device not in ("cpu", "cuda"):
        raise PearError(f"backend device must be cpu or cuda, not {device!r}")
    if coefficients is not None and kind != "torch":
        raise PearError(f"--coefficients only applies to the torch backend; for {kind}, patch the model first "
                        "(`pear-edge patch-gguf` / `pear-edge export onnx`) and pass the patched file")
    if kind == "llamacpp":
        from pear_edge.runtime.models import resolve_spec

        path = resolve_spec(spec)
        if path.suffix.lower() != ".gguf":
            raise PearError(f"the llama.cpp backend needs a .gguf file, not {path}")
        return LlamaCppBackend(path, n_ctx=n_ctx, n_threads=threads,
                               n_gpu_layers=ALL_LAYERS if device == "cuda" else 0, prompt_format=prompt_format)
    if kind == "onnx":
        return OnnxBackend(spec, device, prompt_format, threads)
    from pear_edge.runtime.models import load_model

    return TorchBackend(load_model(spec, device=device), coefficients, fold=fold, prompt_format=prompt_format,
                        threads=threads)
