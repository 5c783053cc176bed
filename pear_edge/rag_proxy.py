"""A RAG-shaped proxy: multi-document QA about invented facts (so only the context can answer),
in the model's chat template, with cross-entropy on the answer tokens only.

The paper's random-token copy task rewards heads that copy *any* earlier token; on SmolLM2-135M that
did not carry over to multi-document QA (see README "Making PEAR help"). This proxy asks for what RAG
needs: find the relevant passage among distractors and copy the answer span from it. Training data is
the counterfactual generator's *train* split; held-out batches come from its *validation* split, so
the test split stays untouched for the final claim.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from .errors import PearError
from .prompts import user_messages
from .proxy import tail_logits


class MDQAProxy:
    """target="answer": the answer span; target="passage": the gold passage itself (what a small model
    quoting its source should copy, and the style SmolLM2-135M answers in)."""

    def __init__(self, loaded, batch: int = 4, num_docs: int = 10, pool: int = 400, seed: int = 0,
                 target: str = "answer"):
        from pear_edge.eval.counterfactual import generate_counterfactual
        from pear_edge.eval.tasks import mdqa_examples, parse_mdqa

        tokenizer = loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise PearError("the mdqa proxy needs a tokenizer with a chat template; use --proxy copy")
        if target not in ("answer", "passage"):
            raise PearError(f"mdqa proxy target must be 'answer' or 'passage', not {target!r}")
        self.tokenizer, self.batch, self.num_docs, self.target = tokenizer, batch, num_docs, target
        self.name = "mdqa" if target == "answer" else "passage"
        self._examples = {}
        for split, count in (("train", pool), ("validation", max(32, pool // 8))):
            records = [parse_mdqa(r) for r in generate_counterfactual(count, split, seed, num_distractors=num_docs - 1)]
            # One example per record, gold at a seeded random position.
            rng = random.Random(f"mdqa-proxy:{split}:{seed}")
            examples = [e for record in records for e in mdqa_examples([record], num_docs, (rng.randrange(num_docs),))]
            targets = [e.answers[0] if target == "answer" else r.gold.text for e, r in zip(examples, records)]
            self._examples[split] = [self._encode(e.prompt, t) for e, t in zip(examples, targets)]

    def _encode(self, prompt: str, answer: str) -> tuple[list[int], int]:
        text = self.tokenizer.apply_chat_template(user_messages(prompt), add_generation_prompt=True, tokenize=False)
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return prompt_ids + answer_ids, len(prompt_ids)

    def _collate(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        """Left-padded, so every answer sits at the end and only the tail needs logits."""
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.zeros(len(items), width, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for row, (ids, start) in enumerate(items):
            pad = width - len(ids)
            input_ids[row, pad:] = torch.tensor(ids)
            mask[row, pad:] = 1
            labels[row, pad + start :] = torch.tensor(ids[start:])
        answer_span = max(len(ids) - start for ids, start in items)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "keep": answer_span + 1}

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        pool = self._examples["train"]
        picks = torch.randint(len(pool), (self.batch,), generator=generator).tolist()
        return self._collate([pool[i] for i in picks])

    @staticmethod
    def _logits_labels(model, batch):
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = batch["keep"]
        logits = tail_logits(model, batch["input_ids"], keep, attention_mask=mask, position_ids=positions)
        return logits[:, :-1], batch["labels"][:, -keep + 1 :].to(logits.device)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, labels = self._logits_labels(model, batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)

    def held_out(self, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
        pool = self._examples["validation"]
        size = min(len(pool), count * self.batch)
        return [self._collate(pool[i : i + self.batch]) for i in range(0, size, self.batch)]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Answer loss, and the share of answers whose every token is the argmax (greedy would copy it)."""
        total, tokens, exact, answers = 0.0, 0, 0, 0
        for batch in batches:
            logits, labels = self._logits_labels(model, batch)
            keep = labels != -100
            total += float(F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"))
            tokens += int(keep.sum())
            hit = (logits.argmax(-1) == labels) | ~keep
            exact += int(hit.all(-1).sum())
            answers += labels.shape[0]
        return {"answer_loss": total / tokens, "answer_exact": exact / answers}

    def describe(self) -> dict:
        return {"proxy": self.name, "batch": self.batch, "num_docs": self.num_docs, "target": self.target}
