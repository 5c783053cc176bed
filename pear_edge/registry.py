"""Architecture registry: everything pear-edge must know about a model family, as data.

For each Hugging Face `model_type` we record where the attention output projection lives, how its
input splits into heads, whether it has a bias (never scaled), the position-embedding kind and
caveats. Code elsewhere reads these records; it never branches on the architecture name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import PearError


@dataclass(frozen=True)
class ArchSpec:
    """How one model family lays out attention heads at the output projection.

    layers: attribute path from the top model to the list of decoder blocks.
    o_proj: attribute path from a block to the attention output projection.
    in_features_dim: weight axis that indexes the projection's *input* (the concatenated heads):
        1 for nn.Linear (weight is out x in), 0 for GPT-2's Conv1D (weight is in x out).
    """

    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    o_proj: str
    in_features_dim: int
    has_bias: bool
    position_embedding: str
    gguf_arch: str | None = None
    caveats: tuple[str, ...] = field(default_factory=tuple)


REGISTRY: tuple[ArchSpec, ...] = (
    ArchSpec(("llama",), ("model.layers",), "self_attn.o_proj", 1, False, "rope", "llama"),
    ArchSpec(("mistral",), ("model.layers",), "self_attn.o_proj", 1, False, "rope", "llama"),
    ArchSpec(("qwen2",), ("model.layers",), "self_attn.o_proj", 1, False, "rope", "qwen2"),
    ArchSpec(("qwen3",), ("model.layers",), "self_attn.o_proj", 1, False, "rope", "qwen3"),
    ArchSpec(("phi3",), ("model.layers",), "self_attn.o_proj", 1, False, "rope", "phi3"),
    ArchSpec(
        ("gemma2",), ("model.layers",), "self_attn.o_proj", 1, False, "rope", "gemma2",
        caveats=("post-attention RMSNorm follows o_proj: scaling every head of a layer by the same "
                 "factor is undone by the norm; only relative head weights matter",),
    ),
    ArchSpec(
        ("gemma3_text", "gemma3"),
        ("model.language_model.layers", "model.layers", "language_model.model.layers"),
        "self_attn.o_proj", 1, False, "rope", "gemma3",
        caveats=("post-attention RMSNorm follows o_proj: scaling every head of a layer by the same "
                 "factor is undone by the norm; only relative head weights matter",),
    ),
    ArchSpec(("gpt2",), ("transformer.h",), "attn.c_proj", 0, True, "learned", "gpt2",
             caveats=("Conv1D weight is stored (in, out): heads are rows, not columns",)),
    ArchSpec(("opt",), ("model.decoder.layers",), "self_attn.out_proj", 1, True, "learned", None),
    ArchSpec(("bloom",), ("transformer.h",), "self_attention.dense", 1, True, "alibi", "bloom"),
    ArchSpec(("gpt_neox",), ("gpt_neox.layers",), "attention.dense", 1, True, "rope", "gptneox",
             caveats=("rotary embedding covers only part of each head (rotary_pct)",)),
)

_BY_TYPE = {t: spec for spec in REGISTRY for t in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def spec_for(model_type: str) -> ArchSpec:
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise PearError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        ) from None


def _get_attr_path(root: object, path: str) -> object:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class HeadLayout:
    """Counts that identify a model's head layout (also part of the coefficients fingerprint)."""

    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int


class ArchAdapter:
    """Binds an ArchSpec to one loaded model: finds its o_proj modules and head layout."""

    def __init__(self, model: torch.nn.Module):
        config = model.config
        self.model_type = config.model_type
        self.spec = spec_for(self.model_type)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.layers = self._find_layers(model)
        num_heads = _first_attr(text_config, ("num_attention_heads", "n_head", "num_heads"))
        hidden = _first_attr(text_config, ("hidden_size", "n_embd", "d_model"))
        head_dim = getattr(text_config, "head_dim", None) or hidden // num_heads
        self.o_projs: list[torch.nn.Module] = [_get_attr_path(b, self.spec.o_proj) for b in self.layers]
        in_features = self.o_projs[0].weight.shape[self.spec.in_features_dim]
        if in_features != num_heads * head_dim:
            raise PearError(
                f"{self.model_type}: o_proj input width {in_features} != heads {num_heads} x head_dim "
                f"{head_dim}; this checkpoint does not match the registry entry"
            )
        self.layout = HeadLayout(len(self.layers), num_heads, head_dim, hidden)

    def _find_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        for path in self.spec.layers:
            try:
                return list(_get_attr_path(model, path))
            except AttributeError:
                continue
        raise PearError(f"{self.model_type}: cannot find decoder layers at {' or '.join(self.spec.layers)}")

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    @property
    def num_heads(self) -> int:
        return self.layout.num_heads

    @property
    def head_dim(self) -> int:
        return self.layout.head_dim

    def head_slice(self, head: int) -> slice:
        d = self.head_dim
        return slice(head * d, (head + 1) * d)

    def o_proj_weight(self, layer: int) -> torch.Tensor:
        return self.o_projs[layer].weight

    def head_columns(self, weight: torch.Tensor, head: int) -> torch.Tensor:
        """View of the weight entries that read head `head`'s output."""
        index = [slice(None), slice(None)]
        index[self.spec.in_features_dim] = self.head_slice(head)
        return weight[tuple(index)]


def _first_attr(config: object, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise PearError(f"config has none of {names}")
