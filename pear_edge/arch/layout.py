"""The one head-layout type: how a model's attention output splits into heads, whatever it is stored in
(a torch module, a coefficients fingerprint, a GGUF's metadata, an ONNX folder's config.json), and the
one table of config names each count goes by across Hugging Face model families."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pear_edge.base.errors import PearError

# Layout field -> the config.json names it has in the families of the registry (GPT-2 and BLOOM say n_*).
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
}


@dataclass(frozen=True)
class HeadLayout:
    """model_type (Hugging Face name), num_layers decoder blocks of num_heads heads, each head_dim wide,
    concatenated into the o_proj input (num_heads * head_dim) that projects to hidden_size."""

    model_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int

    def counts(self) -> tuple[int, int, int, int]:
        """(layers, heads, head_dim, hidden): what must agree for coefficients to apply (the model_type name
        may differ between formats of one model, e.g. a GGUF's arch)."""
        return (self.num_layers, self.num_heads, self.head_dim, self.hidden_size)

    def describe(self) -> str:
        return f"{self.num_layers} layers x {self.num_heads} heads x head_dim {self.head_dim}, hidden {self.hidden_size}"


def config_int(config: Mapping[str, Any], field: str, where: str = "config") -> int:
    """A layout count from a config dict under any of its CONFIG_ALIASES names."""
    for name in CONFIG_ALIASES[field]:
        if config.get(name) is not None:
            return int(config[name])
    raise PearError(f"{where} has none of {CONFIG_ALIASES[field]}")


def layout_from_config(model_type: str, config: Mapping[str, Any], where: str = "config",
                       num_layers: int | None = None) -> HeadLayout:
    """The head layout a (text) config describes; `num_layers` overrides the config's count (a torch
    model's actual blocks)."""
    heads = config_int(config, "num_heads", where)
    hidden = config_int(config, "hidden_size", where)
    layers = num_layers if num_layers is not None else config_int(config, "num_layers", where)
    return HeadLayout(model_type, layers, heads, int(config.get("head_dim") or hidden // heads), hidden)
