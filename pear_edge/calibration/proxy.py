"""Proxy tasks that calibration trains on. Each proxy samples batches, scores a loss, and evaluates
fixed held-out batches; detection and training work with any of them.

copy (the paper): n random token ids repeated once, no BOS and no prompt. Loss is cross-entropy on the
copy: the targets are tokens n+1 .. 2n-1 (token n, the first repeated one, cannot be predicted since
nothing says a copy starts). The RAG-shaped proxy lives in rag_proxy.py.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def special_token_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for idx, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    return ids


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def tail_logits(model: torch.nn.Module, input_ids: torch.Tensor, keep: int, **kwargs) -> torch.Tensor:
    """Logits of the last `keep` positions only: the LM head over a 49k vocabulary at every position
    is a large share of a small model's forward pass, and proxy losses only need the tail.
    Inputs move to the model's device (batches are built on the CPU). No KV cache is kept (one pass)."""
    device = model_device(model)
    input_ids = input_ids.to(device)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(input_ids=input_ids, logits_to_keep=keep, use_cache=False, **kwargs).logits
    return model(input_ids=input_ids, use_cache=False, **kwargs).logits[:, -keep:]


Part = tuple[object, float]
"""A slice of a batch and its weight: the share of the batch's loss terms it holds."""


def row_parts(rows: torch.Tensor, micro: int) -> list[tuple[torch.Tensor, float]]:
    """Equal-weight row slices of a (batch, ...) tensor whose loss is a mean over equal-length rows;
    micro = 0: the whole batch."""
    size = rows.shape[0]
    if not micro or micro >= size:
        return [(rows, 1.0)]
    return [(rows[i : i + micro], min(micro, size - i) / size) for i in range(0, size, micro)]


def backward_in_parts(loss_fn, parts: list[Part], scale: float = 1.0) -> float:
    """Backpropagate scale * (the batch's loss) one part at a time and return the batch's loss.

    A batch loss that is a mean over its terms equals sum(weight_i * loss(part_i)) with weight_i the part's
    share of the terms, so the accumulated gradient is the batch's own (up to float summation order), while
    only one part's activations are alive at a time: peak memory is one part's, not the batch's."""
    total = 0.0
    for part, weight in parts:
        loss = loss_fn(part) * weight
        (loss * scale).backward()
        total += float(loss.detach())
    return total


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
        tokens = tokens.to(model_device(model))
        logits = model(input_ids=tokens).logits
        losses.append(float(copy_loss(logits, tokens)))
        pred, target = copy_logits_targets(logits, tokens)
        hits += int((pred.argmax(-1) == target).sum())
        count += target.numel()
    return {"copy_loss": sum(losses) / len(losses), "copy_accuracy": hits / count}


def held_out_batches(vocab: ProxyVocab, n: int, batch: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [proxy_batch(vocab, n, batch, gen) for _ in range(count)]


class CopyProxy:
    """The paper's random-token copy task as a proxy object."""

    name = "copy"

    def __init__(self, loaded, n: int = 50, batch: int = 20):
        self.vocab, self.n, self.batch = ProxyVocab.from_model(loaded), n, batch

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input_ids": proxy_batch(self.vocab, self.n, self.batch, generator)}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["input_ids"].to(model_device(model))
        n = tokens.shape[1] // 2
        tail = tail_logits(model, tokens, n)  # positions n .. 2n-1, the copy half
        return F.cross_entropy(tail[:, :-1].reshape(-1, tail.shape[-1]).float(), tokens[:, n + 1 :].reshape(-1))

    def parts(self, batch: dict[str, torch.Tensor], micro: int) -> list[Part]:
        return [({"input_ids": rows}, w) for rows, w in row_parts(batch["input_ids"], micro)]

    def held_out(self, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
        return [{"input_ids": t} for t in held_out_batches(self.vocab, self.n, self.batch, count, seed)]

    def evaluate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        return evaluate_copy(model, [b["input_ids"] for b in batches])

    def describe(self) -> dict:
        return {"proxy": self.name, "n": self.n, "batch": self.batch}
