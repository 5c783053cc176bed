"""Tiny random models built from configs: one per registry architecture, fast and offline."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pear_edge.runtime.models import wrap_model

VOCAB = 96

# Overrides giving each architecture 2-3 layers, 4 heads of width 8, and a small vocabulary.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, pad_token_id=0),
    "gemma2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, sliding_window=16),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32, max_position_embeddings=256),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256),
}


class TinyTokenizer:
    """Just what the proxy task needs: a length and the special ids."""

    all_special_ids = [0, 1, 2]
    added_tokens_decoder: dict = {}

    def __len__(self) -> int:
        return VOCAB


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **TINY_CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random biases so tests notice a fold that touches them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return wrap_model(model, TinyTokenizer(), name=f"tiny-{model_type}")


def word_tokenizer(chat_template: str | None = None):
    """A word-level fast tokenizer over the 96 ids ("w3" .. "w95", anything else <unk>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def save_tiny_llama(folder: Path, seed: int = 0, o_proj_scale: float = 1.0, model_type: str = "llama") -> Path:
    """tiny_model(model_type) + a word-level tokenizer over its 96 ids, as a loadable HF folder."""
    fast = word_tokenizer()
    model = tiny_model(model_type, seed=seed).model
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(o_proj_scale)
    model.config.update(dict(bos_token_id=1, eos_token_id=2, pad_token_id=2))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
