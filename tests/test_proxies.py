"""Proxy tasks: the copy proxy's tail-only logits and the RAG-shaped mdqa proxy on the real tokenizer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model

from pear_edge.runtime.models import load_model
from pear_edge.calibration.proxy import CopyProxy, copy_loss
from pear_edge.calibration.rag_proxy import MDQAProxy


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom"])
def test_copy_proxy_tail_logits_equal_full_forward(arch):
    lm = tiny_model(arch)
    proxy = CopyProxy(lm, n=10, batch=3)
    batch = proxy.sample(torch.Generator().manual_seed(0))
    full = copy_loss(lm.model(input_ids=batch["input_ids"]).logits, batch["input_ids"])
    assert torch.allclose(proxy.loss(lm.model, batch), full, atol=1e-6)


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


@pytest.mark.slow
def test_mdqa_proxy_targets_only_the_answer_and_matches_full_logits(default_model):
    proxy = MDQAProxy(default_model, batch=3, num_docs=3, pool=8)
    batch = proxy.sample(torch.Generator().manual_seed(0))
    tok = default_model.tokenizer
    for row in range(3):
        labels = batch["labels"][row]
        answer = tok.decode(labels[labels != -100])
        prompt = tok.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])
        assert answer and prompt.endswith(answer) and "Document [3]" in prompt
        assert batch["attention_mask"][row][-1] == 1  # left-padded: answers end every row
    # Loss from the tail-only logits equals the loss over a plain full forward of each unpadded row.
    expected = []
    for row in range(3):
        keep = batch["attention_mask"][row].bool()
        ids, labels = batch["input_ids"][row][keep][None], batch["labels"][row][keep][None]
        logits = default_model.model(input_ids=ids).logits
        expected.append(F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum"))
    tokens = int((batch["labels"] != -100).sum())
    assert torch.allclose(proxy.loss(default_model.model, batch), sum(expected) / tokens, atol=1e-4)
    # Micro-batches (each padded to its own longest prompt) weighted by their answer tokens: the same loss.
    parts = proxy.parts(batch, 2)
    assert [p["input_ids"].shape[0] for p, _ in parts] == [2, 1] and sum(w for _, w in parts) == pytest.approx(1)
    parted = sum(w * proxy.loss(default_model.model, p) for p, w in parts)
    assert torch.allclose(parted, sum(expected) / tokens, atol=1e-4)
    held_out = proxy.held_out(1, 0)
    held = proxy.evaluate(default_model.model, held_out)
    assert held["answer_loss"] > 0 and 0 <= held["answer_exact"] <= 1
    # evaluated prompt by prompt, unpadded: the padded batch's own answer loss
    logits, labels = proxy._logits_labels(default_model.model, held_out[0])
    with torch.no_grad():
        padded = F.cross_entropy(logits[labels != -100], labels[labels != -100])
    assert held["answer_loss"] == pytest.approx(float(padded), abs=1e-4)


@pytest.mark.slow
def test_passage_proxy_targets_the_gold_passage(default_model):
    proxy = MDQAProxy(default_model, batch=2, num_docs=3, pool=4, target="passage")
    batch = proxy.sample(torch.Generator().manual_seed(1))
    tok = default_model.tokenizer
    for row in range(2):
        labels = batch["labels"][row]
        passage = tok.decode(labels[labels != -100])
        assert " was a " in passage and " built the " in passage  # a whole counterfactual document
        assert passage in tok.decode(batch["input_ids"][row])
    assert proxy.name == "passage" and proxy.describe()["target"] == "passage"


@pytest.mark.slow
def test_cloze_proxy_on_a_user_corpus_targets_the_answer_span(default_model, tmp_path):
    """--corpus DIR: questions generated from the user's own files, answer span as target, never in a distractor."""
    from pear_edge.calibration.rag_proxy import ClozeProxy

    for i in range(30):
        (tmp_path / f"machine{i}.txt").write_text(
            f"The Model {i} calculator was designed by Engineer{i} Smith{i} at the Bureau{i} Works. "
            f"It was first sold in {1900 + 3 * i} and weighed {10 + i} kilograms.")
    proxy = ClozeProxy(default_model, batch=3, pool=12, corpus=str(tmp_path))
    assert proxy.name == "cloze" and proxy.describe()["corpus"] == str(tmp_path)
    tok = default_model.tokenizer
    batch = proxy.sample(torch.Generator().manual_seed(0))
    for row in range(3):
        labels = batch["labels"][row]
        answer = tok.decode(labels[labels != -100]).strip()
        prompt = tok.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])
        question = prompt.split("Question: ")[-1].split("\n")[0]
        assert answer and answer not in question and "Document [3]" in prompt
        documents = prompt.split("\n\nQuestion: ")[0]  # input_ids end with the answer itself
        texts = [doc.split(") ", 1)[1] for doc in documents.split("Document [")[1:]]  # without "N](Title: …) "
        assert sum(answer in text for text in texts) == 1  # only the gold passage holds it
    held = proxy.evaluate(default_model.model, proxy.held_out(1, 0))
    assert held["answer_loss"] > 0


@pytest.mark.slow
def test_prepare_fills_the_caches_the_first_calibration_reads():
    from pear_edge.data.corpora import TOPIC_TOKENS, corpus_passages
    from pear_edge.runtime.models import cache_dir
    from pear_edge.calibration.prepare import prepare

    lines = prepare(progress=False)
    assert lines[0].startswith("default model") and len(lines) == 2
    if "skipped" not in lines[1]:
        assert lines[1].startswith(f"built-in corpus embeddings ({len(corpus_passages(None))} passages)")
        assert any(p.name.endswith(f"-{TOPIC_TOKENS}.npy") for p in (cache_dir() / "embeddings").iterdir())
