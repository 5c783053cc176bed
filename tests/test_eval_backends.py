"""Backends: torch hooked == folded on a tiny model; llama.cpp on the real default GGUF against torch
and through the CLI (a few examples), and one speed measurement's plumbing."""
import copy
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pear_edge.cli import build_parser, main
from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.converters.gguf_patch import patch_gguf
from pear_edge.eval.backends import LlamaCppBackend, TorchBackend, open_backend
from pear_edge.eval.cli import build_examples
from pear_edge.eval.harness import evaluate
from pear_edge.eval.speed import measure_once
from pear_edge.runtime.llamacpp import chat, open_gguf
from pear_edge.data.tasks import pydoc_passages
from pear_edge.runtime.models import default_gguf_path, load_model, wrap_model
from pear_edge.data.prompts import user_messages

PROMPT = "Name a colour."


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


def _tiny_chat_model(tokenizer):
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


@pytest.mark.slow
def test_torch_hooked_equals_folded_and_identity_is_a_no_op(default_model):
    tok = default_model.tokenizer
    plain = wrap_model(_tiny_chat_model(tok), tok, "tiny")
    folded = wrap_model(copy.deepcopy(plain.model), tok, "tiny")
    coeffs = Coefficients(plain.fingerprint(), [HeadCoefficient(0, 1, 0.2), HeadCoefficient(1, 3, 1.7)])
    text = pydoc_passages(1, chars=300)[0].text
    base, hooked = TorchBackend(plain), TorchBackend(plain, coeffs)
    fold = TorchBackend(folded, coeffs, fold=True)
    assert hooked.mode == "hooked" and fold.mode == "folded"
    nll_base, nll_hooked, nll_fold = base.nll(text), hooked.nll(text), fold.nll(text)
    assert nll_hooked[1] == nll_fold[1] == nll_base[1]
    assert nll_hooked[0] == pytest.approx(nll_fold[0], rel=1e-5)
    assert abs(nll_hooked[0] - nll_base[0]) > 1e-3          # the coefficients do change the model
    assert hooked.generate(PROMPT, 8) == fold.generate(PROMPT, 8)
    assert hooked.last_timing.output_tokens <= 8 and hooked.last_timing.prompt_tokens > 5
    identity = TorchBackend(plain, Coefficients.identity(plain.fingerprint(), [(0, 1)]))
    assert identity.nll(text)[0] == pytest.approx(nll_base[0], rel=1e-6)
    assert base.nll(text) == nll_base                      # hooks were removed after each call
    before = torch.get_num_threads()
    try:  # --threads 1 reaches torch (process-wide, like the OMP_NUM_THREADS it replaces)
        assert TorchBackend(plain, threads=1).nll(text)[0] == pytest.approx(nll_base[0], rel=1e-5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_backend_refusals(tmp_path):
    from pear_edge.base.errors import PearError

    with pytest.raises(PearError, match="only applies to the torch backend"):
        open_backend("x.gguf", coefficients=object())
    with pytest.raises(PearError, match="not a folder with an exported ONNX model"):
        open_backend(str(tmp_path), kind="onnx")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(PearError, match="llama.cpp cannot load"):
        open_backend(str(bad))


@pytest.mark.slow
def test_llamacpp_perplexity_agrees_with_torch_on_the_same_weights(default_model):
    passage = pydoc_passages(1, chars=800, seed=2)
    gguf = LlamaCppBackend(default_gguf_path(), n_ctx=512)
    try:
        lcpp = evaluate(gguf, passage, progress=False)
    finally:
        gguf.close()
    torch_res = evaluate(TorchBackend(default_model), passage, progress=False)
    assert lcpp.items[0].tokens == torch_res.items[0].tokens
    # torch runs the dequantized Q4_1 weights in fp32; llama.cpp the Q4_1 blocks themselves
    assert lcpp.score == pytest.approx(torch_res.score, rel=0.02)


@pytest.mark.slow
def test_eval_cli_on_llamacpp_base_vs_patched(default_model, tmp_path, capsys):
    coeffs = Coefficients(default_model.fingerprint(), [HeadCoefficient(3, 5, 0.5), HeadCoefficient(8, 2, 0.3)])
    pear = tmp_path / "pear.gguf"
    patch_gguf(default_gguf_path(), coeffs, pear, progress=False)
    coeffs.save(tmp_path / "c.json")
    out = tmp_path / "report"
    rc = main(["-q", "eval", "--task", "counterfactual", "--count", "1", "--num-docs", "3", "--positions", "0,2",
               "--max-tokens", "10", "--threads", "1", "--base", str(default_gguf_path()), "--pear", str(pear),
               "--model", "default", "--coefficients", str(tmp_path / "c.json"), "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "McNemar p=" in printed and " vs torch:" in printed
    doc = json.loads((out / "results.json").read_text())
    # the torch run (hooked, fp32) comes first and is the reference of the gain-kept table
    assert [r["label"].split(":")[0] for r in doc["runs"]] == ["torch", "llamacpp"]
    assert [k["reference"].split(":")[0] for k in doc["gain_kept"]] == ["torch", "torch"]
    assert (out / "report.md").read_text().startswith("### Gain kept in each run (reference: torch:")
    run = doc["runs"][1]
    assert run["label"].startswith("llamacpp:") and run["comparison"]["overall"]["n"] == 2
    assert set(run["comparison"]["by_position"]) == {"0", "2"}
    assert (out / "report.md").read_text().count("| 0 |") == 2
    assert (out / "accuracy_by_position.png").read_bytes()[:4] == b"\x89PNG"
    # same prompt, same path as the demo: the harness output equals a direct llama.cpp chat
    item = run["base"]["items"][0]
    args = build_parser().parse_args(["eval", "--task", "counterfactual", "--count", "1", "--num-docs", "3",
                                      "--positions", "0,2", "-o", "x"])
    prompt = build_examples(args)[0][0].prompt
    llm = open_gguf(default_gguf_path(), n_ctx=4096, n_threads=1)
    assert chat(llm, user_messages(prompt), 10).strip() == item["output"]


@pytest.mark.slow
def test_speed_measurement_reports_rates_and_child_peak_rss():
    result = measure_once("llamacpp", str(default_gguf_path()), prompt_tokens=32, gen_tokens=4, threads=1)
    assert result["prefill_tps"] > 0 and result["decode_tps"] > 0
    assert 50 < result["peak_rss_mib"] < 4096  # the worker's own peak, not this test process's


@pytest.mark.slow
def test_demo_first_answer_shows_both_models_on_one_test_question():
    from pear_edge.eval.demo import first_answer
    from pear_edge.eval.metrics import best_subspan_em
    from pear_edge.data.tasks import counterfactual_records, mdqa_examples

    example = mdqa_examples(counterfactual_records(1, "test", 3, 0), 3, (1,), 0)[0]
    text = first_answer(str(default_gguf_path()), str(default_gguf_path()), example, 12.3)
    head, _, table = text.partition("\n\n")
    assert head.startswith("One counterfactual question, 12 s after the start: Question: ") and "gold document 2" in head
    assert head.split(": ", 1)[1].split(" (gold")[0] in example.prompt
    rows = [r.split(" | ") for r in table.splitlines()[2:]]
    assert [r[0] for r in rows] == ["| base", "| PEAR"] and rows[0][1] == rows[1][1]  # same weights, same answer
    assert rows[0][2] == ("yes |" if best_subspan_em(rows[0][1], example.answers) else "no |")
