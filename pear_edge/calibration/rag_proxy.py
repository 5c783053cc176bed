"""RAG-shaped proxies: multi-document QA in the model's prompt format (its chat template, or a plain completion
prompt for a base model without one: pear_edge.data.prompts), with cross-entropy on the answer tokens only (or on
the whole gold passage).

The paper's random-token copy task rewards heads that copy *any* earlier token; on SmolLM2-135M that
did not carry over to multi-document QA (see README "Making PEAR help"). These proxies ask for what RAG
needs: find the relevant passage among distractors and copy the answer span from it.

Two sources of examples, one proxy class:
- `mdqa` / `passage`: the counterfactual generator (invented people, one fixed document template), train
  split for training, validation split for held-out batches. On real passages it taught copying more
  than finding (README "Gains on real documents").
- `cloze`: questions generated from real text (textqa.py) — the built-in offline corpus or the user's
  own documents (`--corpus`) — with topical distractors retrieved by embedding similarity, 3–10
  documents (or --num-docs), one template per example sampled from a family (default: lost-in-the-middle's
  two wordings; --template-family, --template; pear_edge.data.template_family); passages split into train /
  held-out by title.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from pear_edge.base.errors import PearError
from pear_edge.data.corpora import corpus_passages, embed_passages
from pear_edge.data.counterfactual import generate_counterfactual
from pear_edge.data.prompts import AUTO, answer_ids, mdqa_prompt, prompt_ids, tokenizer_format
from pear_edge.data.tasks import default_positions, documents_per_record, load_mdqa, mdqa_examples, parse_mdqa
from pear_edge.data.template_family import DEFAULT_FAMILY, Family, family_record, load_family, single
from pear_edge.data.templates import Template, resolve_template
from pear_edge.data.textqa import qa_records, split_of
from pear_edge.calibration.proxy import tail_logits


class RAGProxy:
    """Prompt/target pairs per split ("train", "validation") -> batches, loss, held-out evaluation.
    `prompt_format`: auto (chat when the tokenizer has a chat template, else completion), chat or completion;
    the format used is `self.prompt_format`. `templates`: the template(s) the prompts were built with, recorded
    as `self.template_record` (templates.template_record / template_family.family_record)."""

    def __init__(self, tokenizer, examples: dict[str, list[tuple[str, str]]], batch: int, name: str,
                 info: dict | None = None, prompt_format: str = AUTO, templates: Family | None = None):
        self.prompt_format = tokenizer_format(tokenizer, prompt_format, f"the {name} proxy's model")
        self.template_record = family_record(templates) if templates else None
        self.tokenizer, self.batch, self.name, self.info = tokenizer, batch, name, info or {}
        self._examples = {split: [self._encode(p, t) for p, t in pairs] for split, pairs in examples.items()}
        train = self._examples["train"]
        self._by_length = sorted(range(len(train)), key=lambda i: len(train[i][0]))

    def _encode(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """(prompt ids + answer ids, where the answer starts): the loss is on the answer ids only."""
        start = prompt_ids(self.tokenizer, prompt, self.prompt_format)
        return start + answer_ids(self.tokenizer, answer, self.prompt_format), len(start)

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
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "keep": answer_span + 1,
                "items": items}

    def parts(self, batch: dict, micro: int) -> list[tuple[dict, float]]:
        """The batch as micro-batches of `micro` prompts (0: whole), each padded only to its own longest
        prompt, weighted by its share of the batch's answer tokens (the loss is a mean over them)."""
        items = batch["items"]
        if not micro or micro >= len(items):
            return [(batch, 1.0)]
        tokens = sum(len(ids) - start for ids, start in items)
        chunks = [items[i : i + micro] for i in range(0, len(items), micro)]
        return [(self._collate(c), sum(len(ids) - start for ids, start in c) / tokens) for c in chunks]

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`batch` random examples of similar length: a random window of the pool sorted by length, so
        left padding (compute spent on nothing) stays small when prompts hold 3 to 10 documents."""
        pool = self._examples["train"]
        window = min(len(pool), 8 * self.batch)
        start = int(torch.randint(len(pool) - window + 1, (1,), generator=generator))
        picks = torch.randperm(window, generator=generator)[: self.batch].tolist()
        return self._collate([pool[self._by_length[start + i]] for i in picks])

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
        """Answer loss, and the share of answers whose every token is the argmax (greedy would copy it).
        One prompt at a time, unpadded: held-out batches mix 3- and 10-document prompts, and a padded batch
        costs its longest prompt times its size (the same numbers, less time)."""
        total, tokens, exact, answers = 0.0, 0, 0, 0
        for batch, _ in (part for whole in batches for part in self.parts(whole, 1)):
            logits, labels = self._logits_labels(model, batch)
            keep = labels != -100
            total += float(F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"))
            tokens += int(keep.sum())
            hit = (logits.argmax(-1) == labels) | ~keep
            exact += int(hit.all(-1).sum())
            answers += labels.shape[0]
        return {"answer_loss": total / tokens, "answer_exact": exact / answers}

    def describe(self) -> dict:
        return {"proxy": self.name, "batch": self.batch, "prompt_format": self.prompt_format, **self.info}


def MDQAProxy(loaded, batch: int = 4, num_docs: int = 10, pool: int = 400, seed: int = 0,
              target: str = "answer", prompt_format: str = AUTO, template: Template | None = None) -> RAGProxy:
    """Counterfactual MDQA. target="answer": the answer span; target="passage": the gold passage itself
    (what a small model quoting its source should copy, and the style SmolLM2-135M answers in).
    `template`: the prompt layout (default: the default preset)."""
    template = template or resolve_template(None)
    if target not in ("answer", "passage"):
        raise PearError(f"mdqa proxy target must be 'answer' or 'passage', not {target!r}")
    examples = {}
    for split, count in (("train", pool), ("validation", max(32, pool // 8))):
        records = [parse_mdqa(r) for r in generate_counterfactual(count, split, seed, num_distractors=num_docs - 1)]
        rng = random.Random(f"mdqa-proxy:{split}:{seed}")  # one example per record, gold at a random position
        built = [e for record in records for e in mdqa_examples([record], num_docs, (rng.randrange(num_docs),),
                                                                         template=template)]
        examples[split] = [(e.prompt, e.answers[0] if target == "answer" else r.gold.text)
                           for e, r in zip(built, records)]
    name = "mdqa" if target == "answer" else "passage"
    return RAGProxy(loaded.tokenizer, examples, batch, name, {"num_docs": num_docs, "target": target,
                                                              "template": template.name},
                    prompt_format, single(template))


def ClozeProxy(loaded, batch: int = 4, pool: int = 2000, seed: int = 0, corpus: str | None = None,
               num_docs: tuple[int, int] = (3, 10), topical_share: float = 0.6,
               prompt_format: str = AUTO, gold: str = "uniform", templates: Family | None = None) -> RAGProxy:
    """Generated questions over real text (`corpus`: None/'builtin', a folder, or a rag index), the answer
    span as target. Held-out batches use passages whose title hashes to the held-out share. Each prompt's
    template is drawn from `templates` (default: the DEFAULT_FAMILY)."""
    templates = templates or load_family(DEFAULT_FAMILY)
    passages = corpus_passages(corpus, seed)
    vectors = embed_passages(passages)
    held = [split_of(p.title) == "held_out" for p in passages]
    examples = {}
    for split, count, keep in (("train", pool, False), ("validation", max(32, pool // 8), True)):
        index = [i for i, h in enumerate(held) if h == keep]
        if len(index) < num_docs[1] + 1:  # a small user corpus: share passages, never questions' order
            index = list(range(len(passages)))
        records = qa_records([passages[i] for i in index], vectors[index], count, seed=seed + (split == "validation"),
                             num_docs=num_docs, topical_share=topical_share, gold_slots=gold)
        rng = random.Random(f"cloze-proxy:{split}:{seed}")
        examples[split] = [(mdqa_prompt(r.question, r.documents, templates.sample(rng)), r.answer) for r in records]
    return RAGProxy(loaded.tokenizer, examples, batch, "cloze",
                    {"target": "answer", "corpus": corpus or "builtin", "passages": len(passages),
                     "num_docs": list(num_docs), "topical_share": topical_share, "gold": gold,
                     "train_examples": len(examples["train"]),
                     "templates": templates.name or templates.members[0].name}, prompt_format, templates)


def ValidationFileProxy(loaded, path: str, batch: int = 4, num_docs: int | None = None,
                        positions: tuple[int, ...] | None = None, limit: int = 32, prompt_format: str = AUTO,
                        template: Template | None = None) -> RAGProxy:
    """Answer loss on a validation MDQA file (NQ-open / lost-in-the-middle JSONL, e.g. `pear-edge eval make-data
    --half validation`), the gold at each of `positions` (default: first, middle, last) among `num_docs` documents
    (default: as many as the file's records hold): held-out data for choosing between edits
    (`calibrate --positional-validation`), never trained on."""
    template = template or resolve_template(None)
    records = load_mdqa(path)[:limit]
    num_docs = documents_per_record(records) if num_docs is None else num_docs  # 0 is refused by mdqa_examples
    positions = positions or default_positions(num_docs)
    built = mdqa_examples(records, num_docs, positions, template=template)
    examples = [(e.prompt, e.answers[0]) for e in built]
    return RAGProxy(loaded.tokenizer, {"train": examples, "validation": examples}, batch, "validation-file",
                    {"file": str(path), "examples": len(examples), "num_docs": num_docs, "positions": list(positions),
                     "template": template.name}, prompt_format, single(template))
