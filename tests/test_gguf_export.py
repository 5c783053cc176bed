"""`pear-edge export gguf` on a tiny llama (real SmolLM2 tokenizer, random weights): llama.cpp's own
converter + quantizer produce files llama.cpp loads, stamped with pear.* metadata, whose logits match
torch running the folded model."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pear_edge.base.atomic import MARKER
from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.converters.gguf_layout import pear_metadata, read_gguf
from pear_edge.converters.gguf_verify import gguf_logits
from pear_edge.converters.verify import compare, torch_logits
from pear_edge.edits.fold import fold_model
from pear_edge.runtime.models import _gguf_cache_folder, default_gguf_path, load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    cache = _gguf_cache_folder(default_gguf_path())
    if not (cache / "tokenizer.json").is_file():
        load_model("default")                      # builds the cache folder once
    for name in TOKENIZER_FILES:
        shutil.copy(cache / name, folder / name)
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  initializer_range=0.2, tie_word_embeddings=True,
                                  bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_export_f16_q8_0_loads_and_matches_torch(tmp_path, tiny_hf, capsys):
    loaded = load_model(str(tiny_hf))
    coeffs = Coefficients(loaded.fingerprint(), [HeadCoefficient(0, 1, 0.25), HeadCoefficient(1, 3, -0.5)])
    coeffs.save(tmp_path / "c.json")
    out = tmp_path / "gguf"
    assert main(["-q", "export", "gguf", "--model", str(tiny_hf), "--coefficients", str(tmp_path / "c.json"),
                 "--quant", "f16,q8_0", "-o", str(out)]) == 0
    files = sorted(out.glob("*.gguf"))
    assert (out / MARKER).is_file()  # written by pear-edge: `--force` may replace it
    assert [f.name for f in files] == ["tiny-llama0-pear-F16.gguf", "tiny-llama0-pear-Q8_0.gguf"]

    prompts = ("The capital of France is", "one two three four")
    tokens = [loaded.tokenizer(t)["input_ids"] for t in prompts]
    unpatched = torch_logits(loaded.model, tokens)
    fold_model(loaded, coeffs)
    folded = torch_logits(loaded.model, tokens)
    measured = {}
    for f, tol in zip(files, (0.02, 0.1)):
        meta = pear_metadata(read_gguf(f))
        assert Coefficients.from_json(meta["pear.coefficients"]).as_dict() == coeffs.as_dict()
        got = gguf_logits(f, tokens)
        scale = np.abs(np.concatenate(folded)).max()
        vs_folded = measured[f] = compare(f.name, got, folded)
        assert vs_folded.max_abs_logit_diff < tol * scale, f.name
        assert vs_folded.top1_agreement >= 0.9
        # the folded heads matter: the file is closer to folded than to unpatched torch
        assert vs_folded.mean_abs_logit_diff < compare(f.name, got, unpatched).mean_abs_logit_diff
    # `pear-edge verify` on the same files: PASS (exit 0) within the tolerance, FAIL (exit 2, one line) beyond it.
    # Random tiny weights give far larger logits than a trained model, so the thresholds are set just above what
    # was measured on the same prompts (the default policy is sized for real models; tests/test_verify.py).
    capsys.readouterr()
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    f16 = measured[files[0]]
    assert main(["-q", "verify", str(files[0]), "--model", str(tiny_hf), "--prompts", str(tmp_path / "prompts.txt"),
                 "--max-logit-diff", str(1.01 * f16.max_abs_logit_diff + 1e-6),
                 "--min-top1", str(max(0.0, f16.top1_agreement - 0.01))]) == 0
    assert "PASS: GGUF vs folded torch within the fp16 tolerance" in capsys.readouterr().out
    assert main(["-q", "verify", str(files[1]), "--model", str(tiny_hf), "--max-logit-diff", "1e-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error: verify FAILED: GGUF vs folded torch: max |Δlogit|") and "\n" not in err


def test_export_unknown_quant_leaves_nothing(tmp_path, tiny_hf, capsys):
    out = tmp_path / "gguf"
    assert main(["export", "gguf", "--model", str(tiny_hf), "--coefficients", "x.json", "--quant", "q9_9",
                 "-o", str(out)]) == 2
    assert "unknown quantization q9_9" in capsys.readouterr().err
    assert not out.exists()


def _llamacpp_tokens(path) -> str:
    """Tokenize a chat prompt in a child process: a broken vocabulary aborts llama.cpp, not the tests."""
    import subprocess
    import sys

    code = ("import sys; from llama_cpp import Llama; m = Llama(sys.argv[1], n_ctx=256, verbose=False); "
            "print(m.tokenize('<|im_start|>user\\nWhat year, 1887 or 1888?<|im_end|>'.encode(), add_bos=False, "
            "special=True)); print(m.detokenize(m.tokenize(b'Kalu Tibo from Lomere', add_bos=False)).decode())")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300).stdout


@pytest.mark.slow
def test_export_from_the_shipped_gguf_keeps_its_tokenizer(tmp_path):
    out = tmp_path / "gguf"
    assert main(["-q", "export", "gguf", "--model", "default", "--quant", "q8_0", "-o", str(out)]) == 0
    exported = next(out.glob("*.gguf"))
    shipped = read_gguf(default_gguf_path())
    ours = read_gguf(exported)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == shipped.fields[key].contents(), key
    expected = _llamacpp_tokens(default_gguf_path())
    assert "Kalu Tibo from Lomere" in expected
    assert _llamacpp_tokens(exported) == expected
