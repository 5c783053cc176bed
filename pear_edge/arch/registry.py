"""Architecture registry: everything pear-edge must know about a model family, as keyword data.

For each Hugging Face `model_type` we record where the decoder blocks, the attention output projection
and the query/key projections live, which weight axis indexes a projection's input, how a fused q/k/v
projection lays out its outputs, the architecture name llama.cpp's GGUF files use, whether a norm on each
head's queries follows the query projection, and a caveat the user must hear when calibrating such a model. Code
elsewhere reads these fields; it never branches on the architecture name. Every field is read: `model_types`, `layers`,
`o_proj`, `qk_proj`, `qkv_fused`, `in_features_dim` by ArchAdapter (and the ONNX graph scopes), `gguf_arch`
by the GGUF readers, `q_norm` by `check_q_temperatures` (ArchAdapter, patch-gguf, patch-onnx), `caveat` by
`calibrate`/`train` (a `pear-edge: note:` line) and `info`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pear_edge.base.errors import PearError
from pear_edge.arch.layout import HeadLayout, layout_from_config


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """How one model family lays out attention heads at the output projection.

    model_types: Hugging Face config `model_type` names of the family.
    layers: attribute paths from the top model to the list of decoder blocks (the first that exists).
    o_proj: attribute path from a block to the attention output projection.
    qk_proj: attribute paths from a block to the modules that compute the queries and the keys (their input
        is the block's normalised hidden state); one path when q, k and v come from one fused projection.
    qkv_fused: how a fused projection's outputs are laid out (None: `qk_proj` are separate q and k modules,
        every output is a query or a key): "concat" = [all queries | all keys | all values] (keys and values
        have num_key_value_heads heads each); "per_head" = per head [query | key | value], head_dim each.
    in_features_dim: weight axis that indexes a projection's *input* (the concatenated heads for o_proj, the
        hidden channels for q/k): 1 for nn.Linear (weight is out x in), 0 for GPT-2's Conv1D (in x out).
    gguf_arch: `general.architecture` of the family's GGUF files (None: llama.cpp has no converter for it).
    q_norm: attribute path from a block to the RMSNorm applied to each head's queries after the projection
        (None: there is none). It undoes any scale of a head's query rows, and its one weight is shared by
        every head, so a per-head attention temperature cannot be folded there: such families refuse it.
    caveat: what a user calibrating this family must know, or None.
    """

    model_types: tuple[str, ...]
    layers: tuple[str, ...] = ("model.layers",)
    o_proj: str = "self_attn.o_proj"
    qk_proj: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")
    qkv_fused: str | None = None
    in_features_dim: int = 1
    gguf_arch: str | None
    q_norm: str | None = None
    caveat: str | None = None


GEMMA_POST_NORM = ("a post-attention RMSNorm follows o_proj: scaling every head of a layer by the same factor is "
                   "undone by the norm, so only the heads' relative coefficients within a layer matter")

REGISTRY: tuple[ArchSpec, ...] = (
    ArchSpec(model_types=("llama",), gguf_arch="llama"),
    ArchSpec(model_types=("mistral",), gguf_arch="llama"),
    ArchSpec(model_types=("qwen2",), gguf_arch="qwen2"),
    ArchSpec(model_types=("qwen3",), gguf_arch="qwen3", q_norm="self_attn.q_norm"),
    ArchSpec(model_types=("phi3",), qk_proj=("self_attn.qkv_proj",), qkv_fused="concat", gguf_arch="phi3"),
    ArchSpec(model_types=("gemma2",), gguf_arch="gemma2", caveat=GEMMA_POST_NORM),
    ArchSpec(model_types=("gemma3_text", "gemma3"),
             layers=("model.language_model.layers", "model.layers", "language_model.model.layers"),
             gguf_arch="gemma3", q_norm="self_attn.q_norm", caveat=GEMMA_POST_NORM),
    ArchSpec(model_types=("gpt2",), layers=("transformer.h",), o_proj="attn.c_proj", qk_proj=("attn.c_attn",),
             qkv_fused="concat", in_features_dim=0, gguf_arch="gpt2"),
    ArchSpec(model_types=("opt",), layers=("model.decoder.layers",), o_proj="self_attn.out_proj", gguf_arch=None),
    ArchSpec(model_types=("bloom",), layers=("transformer.h",), o_proj="self_attention.dense",
             qk_proj=("self_attention.query_key_value",), qkv_fused="per_head", gguf_arch="bloom"),
    ArchSpec(model_types=("gpt_neox",), layers=("gpt_neox.layers",), o_proj="attention.dense",
             qk_proj=("attention.query_key_value",), qkv_fused="per_head", gguf_arch="gptneox"),
)

_BY_TYPE = {t: spec for spec in REGISTRY for t in spec.model_types}
QKV_LAYOUTS = (None, "concat", "per_head")


def qk_output_rows(qkv_fused: str | None, out_features: int, num_heads: int, head_dim: int) -> list[int]:
    """Output features of a q/k projection that are queries or keys (ArchSpec.qkv_fused), in order.

    separate (None): all of them; "concat": [0, num_heads*head_dim + kv) of [q | k (kv) | v (kv)];
    "per_head": the first 2*head_dim of each head's 3*head_dim block [q | k | v]."""
    if qkv_fused is None:
        return list(range(out_features))
    q = num_heads * head_dim
    if qkv_fused == "concat":
        kv = (out_features - q) // 2
        if kv <= 0 or q + 2 * kv != out_features:
            raise PearError(f"fused q/k/v projection has {out_features} outputs; expected {q} queries + 2 x kv")
        return list(range(q + kv))
    if qkv_fused == "per_head":
        if out_features != 3 * q:
            raise PearError(f"fused per-head q/k/v projection has {out_features} outputs; expected 3 x {q}")
        return [h * 3 * head_dim + i for h in range(num_heads) for i in range(2 * head_dim)]
    raise PearError(f"unknown qkv_fused layout {qkv_fused!r}; known: {QKV_LAYOUTS}")


def q_head_rows(qkv_fused: str | None, out_features: int, num_heads: int, head_dim: int, head: int) -> list[int]:
    """Output features of the query projection (ArchSpec.qk_proj[0]) that are head `head`'s queries, in order.

    separate (None): [head*d, (head+1)*d) of q_proj's num_heads*d outputs; "concat": the same rows of
    [q | k | v]; "per_head": the first head_dim of head `head`'s [q | k | v] block of 3*head_dim."""
    if not 0 <= head < num_heads:
        raise PearError(f"head {head} is outside the {num_heads} query heads")
    if qkv_fused is None and out_features != num_heads * head_dim:
        raise PearError(f"query projection has {out_features} outputs; expected {num_heads} heads x {head_dim}")
    if qkv_fused is not None:
        qk_output_rows(qkv_fused, out_features, num_heads, head_dim)  # checks the fused layout
    start = head * (3 * head_dim if qkv_fused == "per_head" else head_dim)
    return list(range(start, start + head_dim))


def check_q_temperatures(model_type: str) -> None:
    """Raise PearError unless per-head attention temperatures (W_q's query rows of a head times tau) fold
    exactly into this family: a registered model_type without a norm on the heads' queries (ArchSpec.q_norm)."""
    spec = spec_for(model_type)
    if spec.q_norm:
        raise PearError(f"{model_type} normalises each head's queries after the projection ({spec.q_norm}, one "
                        f"weight shared by the heads), which undoes a scale of a head's query rows; attention "
                        f"temperatures cannot be folded into this model")


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def spec_for(model_type: str) -> ArchSpec:
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise PearError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        ) from None


def model_type_for_gguf_arch(arch: str) -> str:
    """The Hugging Face model_type of a GGUF `general.architecture` (the arch itself if unregistered)."""
    return next((s.model_types[0] for s in REGISTRY if s.gguf_arch == arch), arch)


def caveat_note(model_type: str) -> str | None:
    """'pear-edge: note: <model_type>: <caveat>' for a registered family with a caveat, else None."""
    spec = _BY_TYPE.get(model_type)
    return f"pear-edge: note: {model_type}: {spec.caveat}" if spec and spec.caveat else None


def _get_attr_path(root: object, path: str) -> object:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class ArchAdapter:
    """Binds an ArchSpec to one loaded model: finds its o_proj modules and head layout."""

    def __init__(self, model: torch.nn.Module):
        config = model.config
        self.model_type = config.model_type
        self.spec = spec_for(self.model_type)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.layers = self._find_layers(model)
        self.layout: HeadLayout = layout_from_config(self.model_type, text_config.to_dict(),
                                                     where=f"{self.model_type} config", num_layers=len(self.layers))
        self.o_projs: list[torch.nn.Module] = [_get_attr_path(b, self.spec.o_proj) for b in self.layers]
        self.qk_projs: list[tuple[torch.nn.Module, ...]] = [tuple(_get_attr_path(b, p) for p in self.spec.qk_proj)
                                                            for b in self.layers]
        in_features = self.o_projs[0].weight.shape[self.spec.in_features_dim]
        if in_features != self.layout.num_heads * self.layout.head_dim:
            raise PearError(
                f"{self.model_type}: o_proj input width {in_features} != heads {self.layout.num_heads} x head_dim "
                f"{self.layout.head_dim}; this checkpoint does not match the registry entry"
            )

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

    def as_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """A projection weight viewed (out, in), whatever its storage (Linear as is, Conv1D transposed)."""
        return weight if self.spec.in_features_dim == 1 else weight.T

    def q_projection(self, layer: int) -> torch.nn.Module:
        """The module computing `layer`'s queries (ArchSpec.qk_proj[0]: q_proj, or the fused q/k/v projection),
        for the attention temperatures; refused for families with a norm on the queries (check_q_temperatures)."""
        check_q_temperatures(self.model_type)
        return self.qk_projs[layer][0]

    def q_head_rows(self, layer: int, head: int) -> list[int]:
        """The output rows of `q_projection(layer)` that are head `head`'s queries (q_head_rows)."""
        out_features = self.as_out_in(self.q_projection(layer).weight).shape[0]
        return q_head_rows(self.spec.qkv_fused, out_features, self.num_heads, self.head_dim, head)

    def qk_targets(self, layer: int) -> list[tuple[torch.nn.Module, list[int]]]:
        """(module, its output rows that are queries or keys) for each q/k projection of `layer`
        (ArchSpec.qk_proj / qkv_fused); their input is the layer's normalised hidden state."""
        out = []
        for module in self.qk_projs[layer]:
            out_features = self.as_out_in(module.weight).shape[0]
            out.append((module, qk_output_rows(self.spec.qkv_fused, out_features, self.num_heads, self.head_dim)))
        return out

