"""The torch tokenizer of a GGUF gives llama.cpp's token ids (pear_edge.runtime.llama_tokenizer).

Compared against llama.cpp itself, loaded with `vocab_only` (no weights, no forward): tiny SentencePiece
vocabularies written here, and (slow) the packaged Gemma-3-270M and SmolLM2 vocabularies, plus SmolLM2's
merges under each BPE pre-tokenizer family pear-edge rebuilds.
"""
from __future__ import annotations

import random

import gguf
import numpy as np
import pytest

from pear_edge.base.errors import PearError
from pear_edge.runtime.llama_tokenizer import (PRE_TOKENIZERS, TOKENIZER_BUILD, read_metadata, read_vocab, spm_merges,
                                       tokenizer_from_gguf, unsupported_reason)
from pear_edge.runtime.models import _gguf_cache_folder, default_gguf_path, gemma_gguf_path

llama_cpp = pytest.importorskip("llama_cpp")

RAG_PROMPT = ("Write a high-quality answer for the given question using only the provided search results.\n\n"
              "Document [1](Title: Paris) Paris is the capital and most populous city of France.\n"
              "Document [2](Title: Berlin) Berlin is the capital of Germany.\n\n"
              "Question: what is the capital of france?\nAnswer:")
TEXTS = [
    "The high mountains of the north are covered with snow for most of the year, and few people live there.",
    RAG_PROMPT,
    "In 2023, 1234567 people paid $3.14159 each; 0.5% of 10,000 = 50. ²³ ½ ① ٣٤",
    "def foo(x):\n    return [i ** 2 for i in range(x)]  # squares\n\tprint('done')\n",
    "  leading spaces   and    runs\n\n\n of newlines \t\t tabs   ",
    "ok" + " " * 45 + "x" + "\n" * 40 + "y",
    " x \n y\u00a0z\u3000w\r\n\r\nend \n\n  \n",
    "Café naïve 東京 😀 Ωμέγα — “quotes” 😶\u200d🌫️ 🦙🦙 កាន់តែពិសេសអាច ?我想在apple工作1314151天～ нещо",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "<table><tr><td>x</td></tr></table> a<b>c</b>",
    "", " ", "a",
]


def llama_ids(llm, text: str, add_special: bool, special: bool = False) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=add_special, special=special)


def assert_same_ids(tok, llm, texts) -> None:
    """Same ids with and without the model's BOS/EOS; decoding the ids gives the text back."""
    for text in texts:
        for add_special in (True, False):
            assert tok(text, add_special_tokens=add_special)["input_ids"] == llama_ids(llm, text, add_special), \
                (text, add_special)


def assert_round_trip(tok, texts) -> None:
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text, text


def vocab_only(path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def write_vocab_gguf(path, tokens, types, *, scores=None, merges=None, model="llama", pre="default",
                     add_bos=True, add_space_prefix=None, ids=(1, 2, 0)):
    """A GGUF with a vocabulary and just enough llama hyper-parameters for llama.cpp's vocab_only load."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    bos, eos, unk = ids
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if unk is not None:
        w.add_unk_token_id(unk)
    w.add_add_bos_token(add_bos)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


SPM_CHARS = list("▁abcdehilnorst.,")
SEPARATOR = "<sep>"  # a user-defined token


def tiny_spm(path, add_space_prefix: bool, add_bos: bool = True, seed: int = 0):
    """A SentencePiece vocabulary: control tokens, 256 byte tokens, a user-defined token, single characters
    and 300 random pieces with random (not BPE-consistent) scores."""
    rng = random.Random(seed)
    pieces = set()
    while len(pieces) < 300:
        pieces.add("".join(rng.choice(SPM_CHARS) for _ in range(rng.randint(2, 6))))
    pieces = SPM_CHARS + sorted(pieces, key=lambda _: rng.random())
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), SEPARATOR, *pieces]
    types = [2, 3, 3, *[6] * 256, 4, *[1] * len(pieces)]
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i) for i in range(len(pieces))]
    return write_vocab_gguf(path, tokens, types, scores=scores, add_bos=add_bos, add_space_prefix=add_space_prefix)


def random_texts(seed: int = 0, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdehilnorst., é\n") for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("add_space_prefix", [False, True])
def test_sentencepiece_vocab_gives_llamacpp_ids(tmp_path, add_space_prefix):
    path = tiny_spm(tmp_path / "spm.gguf", add_space_prefix)
    tok, llm = tokenizer_from_gguf(path), vocab_only(path)
    texts = random_texts() + ["hello there", " leading", "é à", f"x{SEPARATOR}y {SEPARATOR} z", SEPARATOR, "a  b"]
    assert_same_ids(tok, llm, texts)
    special = f"<s>hi{SEPARATOR}</s> there"  # control tokens in the text: llama.cpp's special=True
    assert tok(special)["input_ids"] == llama_ids(llm, special, True, special=True)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.unk_token == "<unk>"
    # with add_space_prefix, llama.cpp too puts a space after each user-defined token
    assert_round_trip(tok, [text for text in texts if not add_space_prefix or SEPARATOR not in text])


def test_bos_follows_the_gguf(tmp_path):
    path = tiny_spm(tmp_path / "spm.gguf", add_space_prefix=False, add_bos=False)
    tok, llm = tokenizer_from_gguf(path), vocab_only(path)
    assert tok("hello")["input_ids"] == llama_ids(llm, "hello", True)
    assert tok.bos_token_id not in tok("hello")["input_ids"]


def test_spm_merges_rank_by_the_merged_tokens_score():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = np.array([0, 0, 0, -5, -1, -2], dtype=np.float32)
    merges = spm_merges(tokens, scores, np.ones(len(tokens)))
    assert merges == [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]


def test_unsupported_vocabularies_are_left_to_transformers(tmp_path):
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "a", "##b"]
    path = write_vocab_gguf(tmp_path / "bert.gguf", tokens, [3, 3, 3, 2, 1, 1], model="bert", ids=(1, 2, 3))
    assert tokenizer_from_gguf(path) is None
    assert unsupported_reason(read_vocab(path)) == "tokenizer model 'bert' is not rebuilt"
    path = write_vocab_gguf(tmp_path / "bpe.gguf", ["a", "b", "ab"], [1, 1, 1], model="gpt2", pre="exotic",
                            merges=["a b"], add_bos=False, ids=(0, 0, None))
    assert unsupported_reason(read_vocab(path)) == "llama.cpp pre-tokenizer 'exotic' is not rebuilt"


def test_unreadable_gguf_or_vocabulary_is_one_pear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(PearError, match="not a readable GGUF"):
        read_metadata(bad)
    path = write_vocab_gguf(tmp_path / "bpe.gguf", ["a", "b", "ab"], [1, 1, 1], model="gpt2", pre="gpt-2",
                            merges=["a c"], add_bos=False, ids=(0, 0, None))
    with pytest.raises(PearError, match="cannot build a tokenizer from its vocabulary"):
        tokenizer_from_gguf(path)


def test_cache_key_names_the_tokenizer_build(tmp_path, monkeypatch):
    """A model folder cached with an earlier tokenizer build (transformers' own conversion) is not reused."""
    monkeypatch.setenv("PEAR_EDGE_CACHE", str(tmp_path))
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert TOKENIZER_BUILD >= 2
    assert _gguf_cache_folder(gguf_file).name.endswith(f"-tok{TOKENIZER_BUILD}")


@pytest.mark.slow
def test_gemma_tokenizer_gives_llamacpp_ids():
    """The bug: transformers' Unigram reading of Gemma's BPE scores gave "▁h" + "igh" and ~60 % more tokens."""
    path = gemma_gguf_path()
    tok, llm = tokenizer_from_gguf(path), vocab_only(path)
    assert tok.convert_ids_to_tokens(tok(" high", add_special_tokens=False)["input_ids"]) == ["▁high"]
    assert_same_ids(tok, llm, TEXTS + random_texts(1, 100))
    assert_round_trip(tok, TEXTS)
    chat = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert tok(chat)["input_ids"] == llama_ids(llm, chat, True, special=True)
    assert tok(RAG_PROMPT)["input_ids"][0] == tok.bos_token_id == 2  # add_bos_token = true


@pytest.mark.slow
def test_smollm2_tokenizer_gives_llamacpp_ids():
    """SmolLM2's GGUF adds no BOS (transformers' conversion added <|im_start|>) and splits digits."""
    path = default_gguf_path()
    tok, llm = tokenizer_from_gguf(path), vocab_only(path)
    assert_same_ids(tok, llm, TEXTS + random_texts(1, 100))
    assert_round_trip(tok, TEXTS)
    chat = tok.apply_chat_template([{"role": "user", "content": RAG_PROMPT}], add_generation_prompt=True,
                                   tokenize=False)
    assert tok(chat, add_special_tokens=False)["input_ids"] == llama_ids(llm, chat, False, special=True)
    assert tok("hello")["input_ids"] == tok("hello", add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_bpe_pre_tokenizers_give_llamacpp_ids(tmp_path, pre):
    """One name of each regex family in PRE_TOKENIZERS, on SmolLM2's byte-level vocabulary and merges."""
    assert pre in PRE_TOKENIZERS
    vocab = read_vocab(default_gguf_path())
    path = write_vocab_gguf(tmp_path / f"{pre}.gguf", vocab.tokens, vocab.types.tolist(), merges=vocab.merges,
                            model="gpt2", pre=pre, add_bos=False, ids=(vocab.ids["bos"], vocab.ids["eos"], None))
    assert_same_ids(tokenizer_from_gguf(path), vocab_only(path), TEXTS + random_texts(2, 100))
