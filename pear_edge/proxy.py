"""The PEAR proxy task: n random token ids repeated once; the model must copy the second half.

No BOS and no prompt. Loss is cross-entropy on the copy: the targets are tokens n+1 .. 2n-1 of the
sequence (token n, the first repeated one, cannot be predicted since nothing says a copy starts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def special_token_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for idx, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    return ids


@dataclass(frozen=True)
class ProxyVocab:
    """Token ids the proxy draws from: the whole vocabulary minus special tokens."""

    ids: torch.Tensor

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int) -> "ProxyVocab":
        size = min(vocab_size, len(tokenizer))
        mask = torch.ones(size, dtype=torch.bool)
        for idx in special_token_ids(tokenizer):
            if idx < size:
                mask[idx] = False
        return cls(torch.nonzero(mask).squeeze(1))

    @classmethod
    def from_model(cls, loaded) -> "ProxyVocab":
        return cls.from_tokenizer(loaded.tokenizer, loaded.model.get_input_embeddings().weight.shape[0])


def proxy_batch(vocab: ProxyVocab, n: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 2n) token ids: n uniform random ids, then the same n again."""
    picks = torch.randint(len(vocab.ids), (batch, n), generator=generator)
    first = vocab.ids[picks]
    return torch.cat([first, first], dim=1)


def copy_logits_targets(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict copy tokens n+1..2n-1, and those targets."""
    n = tokens.shape[1] // 2
    return logits[:, n : 2 * n - 1], tokens[:, n + 1 :]


def copy_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    pred, target = copy_logits_targets(logits, tokens)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1))


@torch.no_grad()
def evaluate_copy(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, float]:
    """Mean copy loss and top-1 copy accuracy over fixed batches."""
    losses, hits, count = [], 0, 0
    for tokens in batches:
        logits = model(input_ids=tokens).logits
        losses.append(float(copy_loss(logits, tokens)))
        pred, target = copy_logits_targets(logits, tokens)
        hits += int((pred.argmax(-1) == target).sum())
        count += target.numel()
    return {"copy_loss": sum(losses) / len(losses), "copy_accuracy": hits / count}


def held_out_batches(vocab: ProxyVocab, n: int, batch: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [proxy_batch(vocab, n, batch, gen) for _ in range(count)]
