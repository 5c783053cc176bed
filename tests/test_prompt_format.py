"""Prompt formats (pear_edge.data.prompts): chat models keep exactly the prompts they had; a model without a chat
template gets plain completion prompts in the RAG proxies, the coefficients record, the eval backends
(torch and llama.cpp) and `rag ask`."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pear_edge.calibration.calibrate import CalibrationSettings, calibrate, with_overrides
from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.base.errors import PearError
from pear_edge.eval.backends import LlamaCppBackend, TorchBackend
from pear_edge.eval.harness import evaluate
from pear_edge.data.tasks import counterfactual_records, mdqa_examples
from pear_edge.runtime.models import _gguf_cache_folder, default_gguf_path, gemma_gguf_path, load_model, wrap_model
from pear_edge.data.prompts import (answer_ids, choose_format, completion_prompt, end_answer, format_mismatch, gguf_format,
                               kv_prompt, mdqa_prompt, prompt_ids, Document, tokenizer_format, user_messages)
from pear_edge.calibration.rag_proxy import ClozeProxy, MDQAProxy, RAGProxy

QUESTION = mdqa_prompt("Who built the Salbe tower?", [Document("Salbe", "Salbe Society built the Salbe tower."),
                                                      Document("Niho", "Dintor Niho was a painter.")])


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The default model's tokenizer (SmolLM2-135M-Instruct, with its chat template), without the model."""
    folder = _gguf_cache_folder(default_gguf_path())
    if not (folder / "config.json").is_file():
        return load_model("default").tokenizer
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def plain_tokenizer(chat_tokenizer):
    """The same tokenizer as a base model's: no chat template."""
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = None
    return tok


def tiny_lm(tokenizer, name: str = "tiny-base"):
    """A tiny random llama over the tokenizer's vocabulary (fast; what it answers does not matter)."""
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return wrap_model(AutoModelForCausalLM.from_config(config, attn_implementation="eager"), tokenizer, name)


def test_completion_prompts_cues_and_stops():
    assert completion_prompt(QUESTION) == QUESTION and QUESTION.endswith("\nAnswer:")  # already ends in its cue
    assert completion_prompt(kv_prompt([("a", "b")], "a")).endswith('Key: "a"\nCorresponding value:')
    assert completion_prompt("Name a colour.  ") == "Name a colour.\nAnswer:"
    assert end_answer(" Paris\nQuestion: next", "completion") == "Paris"
    assert end_answer(" Paris\nQuestion: next", "chat") == "Paris\nQuestion: next"  # chat ends at end of turn


def test_format_choice_and_refusals():
    assert choose_format("auto", True, "m") == "chat" and choose_format("auto", False, "m") == "completion"
    assert choose_format("completion", True, "m") == "completion"
    with pytest.raises(PearError, match="m has no chat template; use --prompt-format completion"):
        choose_format("chat", False, "m")
    with pytest.raises(PearError, match="prompt format must be one of auto, chat, completion"):
        choose_format("instruct", True, "m")
    assert gguf_format({"tokenizer.chat_template": "{{ x }}"}) == "chat"
    assert gguf_format({"general.name": "gemma"}) == "completion" and gguf_format(None) == "completion"
    with pytest.raises(PearError, match="--prompt-format goes with the mdqa, passage and cloze proxies"):
        with_overrides(CalibrationSettings(), {"prompt_format": "completion"})  # the copy proxy has no prompt
    with pytest.raises(PearError, match="--prompt-format must be one of"):
        with_overrides(CalibrationSettings(), {"proxy": "mdqa", "prompt_format": "raw"})


def test_mismatch_warning_names_both_formats():
    assert format_mismatch({}, "completion", "m") is None  # nothing recorded (copy proxy, older files)
    assert format_mismatch({"prompt_format": "chat"}, "chat", "m") is None
    message = format_mismatch({"prompt_format": "chat"}, "completion", "pear.gguf")
    assert message.startswith("pear.gguf: the coefficients were calibrated on chat prompts") and "completion" in message


@pytest.mark.slow
def test_chat_path_gives_the_same_ids_as_before(chat_tokenizer):
    """The default model's prompts are token for token what the proxies and the torch backends built before
    prompt formats existed (the template rendered, then tokenized; apply_chat_template's own ids)."""
    tok = chat_tokenizer
    assert tokenizer_format(tok) == "chat"
    for text in (QUESTION, "Name a colour."):
        messages = user_messages(text)
        proxy_before = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                           add_special_tokens=False)["input_ids"]
        backend_before = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"][0].tolist()
        batch_before = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        assert prompt_ids(tok, text, "chat") == proxy_before == backend_before == batch_before
    assert answer_ids(tok, "Salbe Society", "chat") == tok("Salbe Society", add_special_tokens=False)["input_ids"]
    proxy = RAGProxy(tok, {"train": [(QUESTION, "Salbe Society")]}, 1, "mdqa")
    assert proxy.prompt_format == "chat"
    before = tok(tok.apply_chat_template(user_messages(QUESTION), add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False)["input_ids"]
    assert proxy._examples["train"][0] == (before + tok("Salbe Society", add_special_tokens=False)["input_ids"],
                                           len(before))


@pytest.mark.slow
def test_rag_proxies_use_the_completion_format_without_a_chat_template(plain_tokenizer):
    lm = tiny_lm(plain_tokenizer)
    proxy = MDQAProxy(lm, batch=2, num_docs=3, pool=4)
    assert proxy.prompt_format == "completion" and proxy.describe()["prompt_format"] == "completion"
    batch = proxy.sample(torch.Generator().manual_seed(0))
    tok = plain_tokenizer
    for row in range(2):
        keep = batch["attention_mask"][row].bool()
        ids, labels = batch["input_ids"][row][keep].tolist(), batch["labels"][row][keep]
        start = int((labels == -100).sum())
        prompt, answer = tok.decode(ids[:start], skip_special_tokens=True), tok.decode(labels[start:])
        assert prompt.startswith("Write a high-quality answer") and prompt.endswith("\nAnswer:")  # no template
        assert "Document [3]" in prompt and "user" not in tok.decode(ids[:start])
        assert answer.startswith(" ") and answer.strip() and ids[start:] == answer_ids(tok, answer[1:], "completion")
        assert prompt_ids(tok, prompt, "completion") == ids[:start]  # the plain text, nothing around it
    assert torch.isfinite(proxy.loss(lm.model, batch))
    assert "answer_loss" in proxy.evaluate(lm.model, proxy.held_out(1, 0))
    # The same tokenizer with its chat template: the chat format, unless completion is asked for.
    chat = MDQAProxy(tiny_lm(tok_with_template(tok)), batch=2, num_docs=3, pool=4)
    assert chat.prompt_format == "chat"
    assert MDQAProxy(tiny_lm(tok_with_template(tok)), batch=2, num_docs=3, pool=4,
                     prompt_format="completion").prompt_format == "completion"
    with pytest.raises(PearError, match="has no chat template"):
        MDQAProxy(lm, batch=2, num_docs=3, pool=4, prompt_format="chat")


def tok_with_template(tok):
    with_template = copy.deepcopy(tok)
    with_template.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    return with_template


@pytest.mark.slow
def test_cloze_proxy_builds_for_a_base_model(plain_tokenizer, tmp_path):
    """`calibrate --proxy cloze` on a model without a chat template (the packaged Gemma) builds its prompts."""
    for i in range(14):
        (tmp_path / f"machine{i}.txt").write_text(
            f"The Model {i} calculator was designed by Engineer{i} Smith{i} at the Bureau{i} Works. "
            f"It was first sold in {1900 + 3 * i} and weighed {10 + i} kilograms.")
    proxy = ClozeProxy(tiny_lm(plain_tokenizer), batch=2, pool=6, corpus=str(tmp_path))
    assert proxy.prompt_format == "completion"
    batch = proxy.sample(torch.Generator().manual_seed(0))
    labels = batch["labels"][0]
    assert plain_tokenizer.decode(labels[labels != -100]).startswith(" ")


@pytest.mark.slow
def test_calibration_records_the_prompt_format(plain_tokenizer, tmp_path):
    lm = tiny_lm(plain_tokenizer)
    settings = with_overrides(CalibrationSettings(), {"proxy": "mdqa", "pool": 4, "batch": 2, "steps": 1,
                                                      "lengths": (4,), "detect_batch": 2, "top_k": 2})
    coeffs = calibrate(lm, settings, progress=False)
    assert coeffs.calibration["prompt_format"] == "completion"  # what the proxy used
    assert coeffs.calibration["train"]["prompt_format"] == "auto"  # what was asked for
    assert coeffs.metrics["held_out_proxy"]["prompt_format"] == "completion"
    path = coeffs.save(tmp_path / "c.json")
    assert json.loads(path.read_text())["version"] == 1  # head scales only: still a version-1 file
    assert Coefficients.load(path).calibration["prompt_format"] == "completion"
    from pear_edge.cli.info import describe_coefficients

    assert "(recipe pear, calibrated on completion prompts, template litm-short)" in describe_coefficients(Coefficients.load(path))
    copy_proxy = calibrate(lm, with_overrides(CalibrationSettings(), {"steps": 1, "lengths": (4,), "detect_batch": 2,
                                                                      "n": 4, "batch": 2, "top_k": 2}), progress=False)
    assert "prompt_format" not in copy_proxy.calibration  # random tokens: no prompt, no format


class ScriptedHead(torch.nn.Module):
    """An LM head that answers a fixed token script, one token per decoding step."""

    def __init__(self, vocab: int, script: list[int]):
        super().__init__()
        self.vocab, self.script, self.calls = vocab, script, 0

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return logits


@pytest.mark.slow
def test_torch_backend_completion_stops_at_a_newline(plain_tokenizer, chat_tokenizer):
    script = plain_tokenizer(" Paris\n Berlin Rome Oslo", add_special_tokens=False)["input_ids"]
    answers = {}
    for name, tok in (("completion", plain_tokenizer), ("chat", chat_tokenizer)):
        lm = tiny_lm(tok)
        lm.model.lm_head = ScriptedHead(len(tok), script)
        backend = TorchBackend(lm)
        answers[name] = (backend.generate(QUESTION, 8), backend.last_timing.output_tokens, backend.prompt_format)
    assert answers["completion"] == ("Paris", 2, "completion")  # " Paris", "\n": stopped there
    assert answers["chat"][0].startswith("Paris\n Berlin") and answers["chat"][2] == "chat"  # as before


@pytest.mark.slow
def test_eval_harness_scores_a_model_without_a_chat_template(plain_tokenizer):
    lm = tiny_lm(plain_tokenizer)
    examples = mdqa_examples(counterfactual_records(2, "validation", 3, 0), 3, (0, 2), 0)
    backend = TorchBackend(lm)
    results = evaluate(backend, examples, "counterfactual", max_tokens=6, progress=False)
    assert len(results.items) == 4 and 0 <= results.score <= 1
    assert results.backend["prompt_format"] == "completion" and all("\n" not in i.output for i in results.items)
    batched = evaluate(backend, examples, "counterfactual", max_tokens=6, progress=False, batch=4)
    assert [i.output for i in batched.items] == [i.output for i in results.items]


@pytest.mark.slow
def test_eval_cli_warns_when_the_coefficients_were_calibrated_in_another_format(plain_tokenizer, tmp_path, capsys):
    folder = tmp_path / "base-model"
    lm = tiny_lm(plain_tokenizer)
    lm.model.save_pretrained(folder)
    plain_tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder))
    coeffs = Coefficients(loaded.fingerprint(), [HeadCoefficient(0, 1, 0.5)], {"prompt_format": "chat"})
    coeffs.save(tmp_path / "c.json")
    argv = ["-q", "eval", "--task", "counterfactual", "--count", "1", "--num-docs", "3", "--positions", "0",
            "--max-tokens", "4", "--model", str(folder), "--coefficients", str(tmp_path / "c.json")]
    assert main(argv + ["-o", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pear-edge: warning:")]
    assert len(warnings) == 1 and "calibrated on chat prompts" in warnings[0] and "completion format" in warnings[0]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["runs"][0]["pear"]["backend"]["prompt_format"] == "completion"
    assert main(argv + ["--prompt-format", "chat", "-o", str(tmp_path / "out2")]) == 2
    assert "has no chat template" in capsys.readouterr().err
    assert main(["-q", "calibrate", "--model", str(folder), "--proxy", "mdqa", "--prompt-format", "chat",
                 "-o", str(tmp_path / "c2.json")]) == 2
    assert capsys.readouterr().err.strip().endswith("has no chat template; use --prompt-format completion (or auto)")


@pytest.mark.slow
def test_llamacpp_completion_on_the_packaged_gemma():
    """Gemma-3-270M's GGUF has no tokenizer.chat_template: auto gives the completion format, answered with
    llama.cpp's plain completion (greedy, stop at a newline) - the same text a direct call gives."""
    from pear_edge.runtime.llamacpp import open_gguf

    example = mdqa_examples(counterfactual_records(1, "test", 3, 0), 3, (1,), 0)[0]
    backend = LlamaCppBackend(gemma_gguf_path(), n_ctx=1024, n_threads=1)
    try:
        assert backend.prompt_format == "completion"
        output = evaluate(backend, [example], max_tokens=8, progress=False).items[0].output
        assert "\n" not in output and backend.last_timing.prompt_tokens > 100
    finally:
        backend.close()
    llm = open_gguf(gemma_gguf_path(), n_ctx=1024, n_threads=1)
    direct = llm.create_completion(completion_prompt(example.prompt), max_tokens=8, temperature=0.0, top_k=1,
                                   stop=["\n"])["choices"][0]["text"]
    assert output == direct.strip()
    with pytest.raises(PearError, match="has no chat template"):
        LlamaCppBackend(gemma_gguf_path(), n_ctx=256, n_threads=1, prompt_format="chat")
    smollm = LlamaCppBackend(default_gguf_path(), n_ctx=256, n_threads=1)
    assert smollm.prompt_format == "chat"  # the default GGUF carries its template
    smollm.close()


class StandInGGUF:
    """What the rag answerer reads of a loaded GGUF: its metadata."""

    def __init__(self, metadata):
        self.metadata = metadata


def test_rag_warns_once_when_a_patched_gguf_was_calibrated_in_another_format(capsys):
    from pear_edge.runtime.llamacpp import prompt_format_of, recorded_calibration
    from pear_edge.rag.answer import answer_prompt, warn_format
    from pear_edge.rag.index import Hit

    patched = StandInGGUF({"pear.coefficients": json.dumps({"calibration": {"prompt_format": "chat"}})})
    assert recorded_calibration(patched) == {"prompt_format": "chat"}
    assert recorded_calibration(StandInGGUF({"pear.coefficients": "{broken"})) == {}
    assert prompt_format_of(patched) == "completion"  # no tokenizer.chat_template in its metadata
    warn_format("PEAR: x.gguf", patched, prompt_format_of(patched))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: warning: PEAR: x.gguf: the coefficients were calibrated")
    warn_format("PEAR: x.gguf", patched, "chat")
    assert capsys.readouterr().err == ""
    hits = [Hit(path="a.txt", number=0, text="Try handles exceptions.", score=0.9)]
    assert completion_prompt(answer_prompt("What handles exceptions?", hits)).endswith(
        "Question: What handles exceptions?\nAnswer:")
