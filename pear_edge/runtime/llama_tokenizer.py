"""A Hugging Face tokenizer built from a GGUF's own vocabulary that gives llama.cpp's token ids.

Why: transformers' GGUF tokenizer conversion (`transformers/integrations/ggml.py`) does not reproduce
llama.cpp for the packaged models. For Gemma-3 (`GGUFGemmaConverter`) it builds a *Unigram* model scored
with `tokenizer.ggml.scores`; those scores are SentencePiece-BPE merge priorities (minus the merge rank:
the longer the piece, the lower), not unigram log-probabilities, so the Viterbi search prefers short
pieces ("high" -> "▁h" + "igh", 300 tokens where llama.cpp has 189), and it rewrites the user-defined
whitespace tokens to "▁" runs. For SmolLM2 (`GGUFLlamaConverter`, byte-level BPE) it adds a BOS the GGUF
says not to add (`tokenizer.ggml.add_bos_token` = false) and drops the digit split of the `smollm`
pre-tokenizer. A torch calibration on those ids trains on sequences llama.cpp never produces.

What llama.cpp does (`llama-vocab.cpp`, `llama_vocab::impl::tokenize`) and how it is rebuilt here:

- Control and unknown tokens are cut out of the text first when it parses special tokens, user-defined
  tokens always: added tokens (special / not special) matched on the raw text. Hugging Face tokenizers
  always parse special tokens, which is llama.cpp's `special=True`; plain text is tokenized alike either way.
- SPM (`tokenizer.ggml.model` "llama", e.g. Gemma): per text piece, a " " prefix when
  `add_space_prefix`, spaces -> "▁", split into characters, then repeatedly merge the adjacent pair whose
  concatenation is a token with the highest score (leftmost on ties); characters left unmerged and not in
  the vocabulary become `<0xXX>` byte tokens. That is a BPE model whose merges are every split (a, b) of
  every token t with a and b tokens, ranked by t's score, with byte fallback.
- BPE (`tokenizer.ggml.model` "gpt2", e.g. SmolLM2): the regex splits named by `tokenizer.ggml.pre`,
  byte-level symbols, the GGUF's merges in file order: the same Hugging Face BPE with those splits.
- BOS/EOS: `tokenizer.ggml.add_bos_token` / `add_eos_token`, defaulting as llama.cpp does.

Other vocabularies (WordPiece, T5's Unigram, RWKV, an unlisted pre-tokenizer) are not rebuilt:
`tokenizer_from_gguf` returns None and the caller keeps transformers' conversion.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pear_edge.base.errors import PearError

TOKENIZER_BUILD = 2
"""Version of the GGUF -> torch tokenizer build, part of the model cache key (pear_edge.runtime.models): bump it
whenever the tokenizer built for a GGUF changes, so a cached model folder never serves an older one.
1 was transformers' own conversion."""

SPM, BPE = "llama", "gpt2"  # tokenizer.ggml.model values rebuilt here
SPACE = "▁"  # SentencePiece's visible space

# gguf.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_TYPES = (CONTROL, UNKNOWN)  # cut out of the text only when special tokens are parsed
CUT_OUT_TYPES = (CONTROL, UNKNOWN, USER_DEFINED)  # never reached by merging in Hugging Face's pipeline

# llama.cpp's defaults when the GGUF has no such key: SPM ids and flags, BPE flags.
SPM_DEFAULT_IDS = {"bos": 1, "eos": 2, "unk": 0}
SPM_DEFAULT_FLAGS = {"add_bos": True, "add_eos": False, "add_space_prefix": True}
BPE_DEFAULT_FLAGS = {"add_bos": False, "add_eos": False, "add_space_prefix": False}
ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
           "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}
FLAG_KEYS = {"add_bos": "tokenizer.ggml.add_bos_token", "add_eos": "tokenizer.ggml.add_eos_token",
             "add_space_prefix": "tokenizer.ggml.add_space_prefix"}

# llama.cpp's pre-tokenizer regexes (llm_tokenizer_bpe), applied in turn, each splitting every piece into
# its matches and the text between them.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp BPE pre-tokenizer: its regexes, whether a whole pre-token in the vocabulary skips the
    merges (`ignore_merges`), and whether a BOS is added when the GGUF does not say."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


PRE_TOKENIZERS = {
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo"), PreTokenizer((GPT2_REGEX,))),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell"), PreTokenizer((r"\p{N}", GPT2_REGEX))),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe"), PreTokenizer((LLAMA3_REGEX,), True, True)),
    **dict.fromkeys(("qwen2", "stablelm2"), PreTokenizer((QWEN2_REGEX,))),
}
"""`tokenizer.ggml.pre` values rebuilt for BPE vocabularies, named as in llama.cpp's llama-vocab.cpp (every
name matched llama.cpp 0.3.36 on SmolLM2's vocabulary; tests/test_llama_tokenizer.py checks one per regex)."""


@dataclass
class GGUFVocab:
    """The tokenizer.* metadata of a GGUF."""

    model: str
    pre: str
    tokens: list[str]
    types: np.ndarray
    scores: np.ndarray | None
    merges: list[str] | None
    ids: dict[str, int | None]  # bos, eos, unk, pad
    flags: dict[str, bool]  # add_bos, add_eos, add_space_prefix
    chat_template: str | None


# --- reading the metadata --------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
STRING_TYPE, ARRAY_TYPE = 8, 9  # gguf.GGUFValueType
SCALAR_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
                 11: "<i8", 12: "<f8"}


class _KVReader:
    """Sequential reader of a GGUF's key/value section (little-endian GGUF v2/v3). gguf-py's GGUFReader
    also indexes every tensor and every vocabulary string as a numpy view: ~17 s for Gemma's 262 144
    tokens on a loaded machine, against ~0.3 s here."""

    def __init__(self, buffer) -> None:
        self.buf = buffer
        self.pos = 0

    def unpack(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        (size,) = self.unpack("<Q")
        start, self.pos = self.pos, self.pos + size
        return bytes(self.buf[start:self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == STRING_TYPE:
            return self.string()
        if kind == ARRAY_TYPE:
            item, count = self.unpack("<IQ")
            if item == STRING_TYPE:
                return [self.string() for _ in range(count)]
            dtype = np.dtype(SCALAR_DTYPES[item])
            array = np.frombuffer(self.buf, dtype, count, self.pos).copy()
            self.pos += count * dtype.itemsize
            return array
        dtype = np.dtype(SCALAR_DTYPES[kind])
        self.pos += dtype.itemsize
        return np.frombuffer(self.buf, dtype, 1, self.pos - dtype.itemsize)[0].item()


def read_metadata(path: Path, prefix: str = "tokenizer.") -> dict[str, object]:
    """The GGUF's key/value pairs whose key starts with `prefix`."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        reader = _KVReader(mm)
        try:
            if bytes(mm[:len(GGUF_MAGIC)]) != GGUF_MAGIC:
                raise ValueError("no GGUF magic")
            reader.pos = len(GGUF_MAGIC)
            _version, _n_tensors, n_kv = reader.unpack("<IQQ")
            found = {}
            for _ in range(n_kv):
                key = reader.string()
                value = reader.value(reader.unpack("<I")[0])
                if key.startswith(prefix):
                    found[key] = value
        except (ValueError, KeyError, struct.error, IndexError) as exc:
            raise PearError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    return found


def read_vocab(path: Path) -> GGUFVocab:
    """The GGUF's vocabulary with llama.cpp's defaults filled in."""
    meta = read_metadata(path)
    if "tokenizer.ggml.tokens" not in meta:
        raise PearError(f"{path} has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    tokens = meta["tokenizer.ggml.tokens"]
    model = str(meta.get("tokenizer.ggml.model", ""))
    flag_defaults = SPM_DEFAULT_FLAGS if model == SPM else BPE_DEFAULT_FLAGS
    pre = str(meta.get("tokenizer.ggml.pre", ""))
    if model == BPE and pre in PRE_TOKENIZERS:
        flag_defaults = {**flag_defaults, "add_bos": PRE_TOKENIZERS[pre].add_bos}
    id_defaults = SPM_DEFAULT_IDS if model == SPM else {}
    ids = {name: meta.get(key, id_defaults.get(name)) for name, key in ID_KEYS.items()}
    ids = {name: (int(i) if i is not None and 0 <= int(i) < len(tokens) else None) for name, i in ids.items()}
    flags = {name: bool(meta.get(FLAG_KEYS[name], default)) for name, default in flag_defaults.items()}
    types = meta.get("tokenizer.ggml.token_type")
    return GGUFVocab(model=model, pre=pre, tokens=tokens,
                     types=np.full(len(tokens), NORMAL) if types is None else np.asarray(types),
                     scores=meta.get("tokenizer.ggml.scores"), merges=meta.get("tokenizer.ggml.merges"),
                     ids=ids, flags=flags, chat_template=meta.get("tokenizer.chat_template"))


# --- building the tokenizer -------------------------------------------------------------------------------

def spm_merges(tokens: list[str], scores: np.ndarray, types: np.ndarray) -> list[tuple[str, str]]:
    """Every split (a, b) of every mergeable token t with a and b in the vocabulary, ranked as llama.cpp's
    SPM tokenizer picks merges: t's score, highest first (both then take the leftmost pair). The splits of
    one token, equal for llama.cpp, get consecutive ranks here (token id, then split point); on random,
    not BPE-consistent vocabularies that still gave llama.cpp's ids (tests/test_llama_tokenizer.py)."""
    index = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for i, token in enumerate(tokens):
        if types[i] in CUT_OUT_TYPES:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in index and right in index:
                ranked.append((-float(scores[i]), i, cut, left, right))
    ranked.sort(key=lambda r: r[:3])
    return [(left, right) for *_, left, right in ranked]


def _byte_level_merges(merges: list[str]) -> list[tuple[str, str]]:
    """GGUF merges are "left right" strings; llama.cpp splits at the first space after the first character."""
    pairs = []
    for merge in merges:
        cut = merge.find(" ", 1)
        pairs.append((merge[:cut], merge[cut + 1:]) if cut > 0 else (merge, ""))
    return pairs


def _spm_tokenizer(vocab: GGUFVocab):
    from tokenizers import Tokenizer, decoders, models, normalizers

    unk = vocab.tokens[vocab.ids["unk"]] if vocab.ids["unk"] is not None else None
    model = models.BPE({t: i for i, t in enumerate(vocab.tokens)},
                       spm_merges(vocab.tokens, vocab.scores, vocab.types),
                       unk_token=unk, fuse_unk=False, byte_fallback=True)
    tokenizer = Tokenizer(model)
    steps = [normalizers.Prepend(SPACE)] if vocab.flags["add_space_prefix"] else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    strip = [decoders.Strip(" ", 1, 0)] if vocab.flags["add_space_prefix"] else []
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                           *strip])
    return tokenizer


def _bpe_tokenizer(vocab: GGUFVocab):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = PRE_TOKENIZERS[vocab.pre]
    model = models.BPE({t: i for i, t in enumerate(vocab.tokens)}, _byte_level_merges(vocab.merges),
                       ignore_merges=pre.ignore_merges)
    tokenizer = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in pre.regexes]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def unsupported_reason(vocab: GGUFVocab) -> str | None:
    """Why this vocabulary is not rebuilt here (None: it is)."""
    if len(set(vocab.tokens)) != len(vocab.tokens):
        return "its vocabulary has duplicate tokens"
    if vocab.model == SPM:
        return None if vocab.scores is not None else "its SentencePiece vocabulary has no scores"
    if vocab.model == BPE:
        if vocab.merges is None:
            return "its BPE vocabulary has no merges"
        return None if vocab.pre in PRE_TOKENIZERS else f"llama.cpp pre-tokenizer {vocab.pre!r} is not rebuilt"
    return f"tokenizer model {vocab.model!r} is not rebuilt"


def _add_special_tokens(tokenizer, vocab: GGUFVocab) -> None:
    """Control/unknown tokens as special added tokens, user-defined ones as plain added tokens, all matched
    on the raw text (llama.cpp's tokenizer_st_partition)."""
    from tokenizers import AddedToken

    def added(kinds, special):
        return [AddedToken(vocab.tokens[i], special=special, normalized=False)
                for i in np.flatnonzero(np.isin(vocab.types, kinds))]

    tokenizer.add_special_tokens(added(SPECIAL_TYPES, True))
    tokenizer.add_tokens(added((USER_DEFINED,), False))


def _add_bos_eos(tokenizer, vocab: GGUFVocab) -> None:
    from tokenizers import processors

    ends = [(name, vocab.ids[name]) for name in ("bos", "eos") if vocab.flags[f"add_{name}"]]
    if any(i is None for _, i in ends):
        raise PearError("the GGUF asks for a BOS/EOS token it does not define")
    first = [vocab.tokens[vocab.ids["bos"]]] if vocab.flags["add_bos"] else []
    last = [vocab.tokens[vocab.ids["eos"]]] if vocab.flags["add_eos"] else []
    if first or last:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=[*first, "$A", *last], pair=[*first, "$A", *last, *first, "$B:1", *last],
            special_tokens=[(vocab.tokens[i], i) for _, i in ends])


def tokenizer_from_gguf(path: Path):
    """A transformers PreTrainedTokenizerFast giving llama.cpp's token ids for this GGUF (BOS/EOS as the
    GGUF says; special tokens parsed as with llama.cpp's `special=True`), or None when its vocabulary type
    is not rebuilt here (see `unsupported_reason`)."""
    from transformers import PreTrainedTokenizerFast

    vocab = read_vocab(path)
    if unsupported_reason(vocab):
        return None
    try:
        tokenizer = _spm_tokenizer(vocab) if vocab.model == SPM else _bpe_tokenizer(vocab)
        _add_special_tokens(tokenizer, vocab)
    except Exception as exc:  # tokenizers raises a bare Exception, e.g. for a merge of unknown tokens
        raise PearError(f"{path}: cannot build a tokenizer from its vocabulary ({exc})") from None
    _add_bos_eos(tokenizer, vocab)
    names = {f"{name}_token": vocab.tokens[i] for name, i in vocab.ids.items() if i is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **names)
    if vocab.chat_template:
        fast.chat_template = vocab.chat_template
    return fast
