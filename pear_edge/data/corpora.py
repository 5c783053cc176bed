"""Where real text for the RAG proxy comes from, as lists of `textqa.Passage`:

- `builtin_passages()`: FOLDOC (Free On-line Dictionary of Computing) and the Jargon File, real
  encyclopedic prose about people, companies, languages and machines, with dates and numbers. They come from
  Debian's `dict-foldoc` and `dict-jargon` packages (dictd format), which `scripts/setup.sh` unpacks into
  `~/.cache/pear-edge/corpora/` (no root install, no daemon); an installed copy in /usr/share/dictd works too.
- `folder_passages(DIR)`: the user's own .txt/.md files, chunked like `pear-edge rag index` chunks them.
- `index_passages(DB)`: the chunks of an existing `pear-edge rag` index.
- `corpus_passages(SPEC)`: one of the above from a command-line value.

Embeddings (all-MiniLM-L6-v2, for topical distractors) are cached by content hash.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
from pathlib import Path

import numpy as np

from pear_edge.base.errors import PearError
from pear_edge.runtime.models import cache_dir
from pear_edge.data.textqa import Passage

BUILTIN = "builtin"
DICT_NAMES = ("foldoc", "jargon")
DICT_PACKAGES = ("dict-foldoc", "dict-jargon")
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
PASSAGE_WORDS = (40, 100)  # passage length range in words (NQ-open passages are ~100 words; shorter trains faster)
MAX_PASSAGES = 4000  # a seeded sample of a larger corpus: plenty of questions, embedded in ~1-2 min on 2 cores
TOPIC_TOKENS = 64  # word pieces embedded per passage for topical distractors: the title and opening say the topic


def dict_dirs() -> list[Path]:
    return [cache_dir() / "corpora" / "usr" / "share" / "dictd", Path("/usr/share/dictd")]


def _b64(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64[ch]
    return value


def read_dictd(index: Path, data: Path) -> list[tuple[str, str]]:
    """(headword, entry body) for each distinct entry of a dictd database (.index + .dict.dz)."""
    raw = gzip.open(data).read() if data.suffix == ".dz" else data.read_bytes()
    entries, seen = [], set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-database"):
            continue
        offset, size = _b64(parts[1]), _b64(parts[2])
        if offset in seen:
            continue
        seen.add(offset)
        entries.append((parts[0], raw[offset : offset + size].decode("utf-8", errors="replace")))
    return entries


_BRACES = re.compile(r"\{([^{}]*?)(?:\s*\((?:https?|ftp)://[^)]*\))?\}")
_URL = re.compile(r"\(?(?:https?|ftp)://\S+\)?")
_TAG = re.compile(r"^\s*(?:<[^>]{1,40}>\s*)+")
_DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)")
_REF = re.compile(r"\[[^\]]{0,300}\]")


def clean_entry(body: str) -> tuple[str, str]:
    """A dictd entry -> (title, plain prose): the first line is the headword; cross-reference braces,
    category tags, URLs, bibliography brackets and date stamps go."""
    lines = body.strip("\n").splitlines()
    if not lines:
        return "", ""
    title = lines[0].strip()
    text = " ".join(line.strip() for line in lines[1:])
    text = _BRACES.sub(r"\1", text)
    text = _URL.sub("", _REF.sub("", _DATE.sub("", text)))
    text = _TAG.sub("", text)
    text = re.sub(r"<[a-z][^>]{0,30}>", "", text)  # tags mid-text ("1. <language> ...")
    text = re.sub(r"\b\d\.\s+(?=[A-Z])", "", text)   # "1. " sense numbers
    return title, re.sub(r"\s+([.,;:])", r"\1", " ".join(text.split()))


def cut_words(text: str, words: int) -> str:
    """The first `words` words, ended at the last sentence end inside them if there is one."""
    parts = text.split()
    if len(parts) <= words:
        return text
    cut = " ".join(parts[:words])
    end = max(cut.rfind(". "), cut.rfind(".\" "))
    return cut[: end + 1] if end > len(cut) // 2 else cut


def builtin_passages(seed: int = 0) -> list[Passage]:
    """Passages from the Debian dict packages found in `dict_dirs()`, lengths varied in PASSAGE_WORDS."""
    found = []
    for name in DICT_NAMES:
        for folder in dict_dirs():
            index, data = folder / f"{name}.index", folder / f"{name}.dict.dz"
            if index.is_file() and data.is_file():
                found.append((index, data))
                break
    if not found:
        raise PearError("the built-in text corpus (Debian's dict-foldoc / dict-jargon) is not installed; run "
                        "scripts/setup.sh (or `make setup`), or calibrate on your own documents with --corpus DIR")
    rng = random.Random(f"builtin-corpus:{seed}")
    passages = []
    for index, data in found:
        for _, body in read_dictd(index, data):
            title, text = clean_entry(body)
            if len(text.split()) >= 30 and title:
                passages.append(Passage(title, cut_words(text, rng.randint(*PASSAGE_WORDS))))
    return passages


def folder_passages(folder: str | os.PathLike) -> list[Passage]:
    """The user's .txt/.md files under `folder`, chunked as `pear-edge rag index` chunks them; the title is
    the file's relative path without its suffix."""
    from pear_edge.rag.chunking import chunk_text
    from pear_edge.rag.documents import scan_folder
    from pear_edge.rag.embed import Embedder

    root = Path(folder)
    if not root.is_dir():
        raise PearError(f"--corpus {folder}: not a folder (give a folder of .txt/.md files or a rag index .db)")
    scan = scan_folder(root)
    tokenizer = Embedder().tokenizer
    passages = []
    for f in scan.files:
        title = Path(f.path).with_suffix("").as_posix().replace("/", " / ")
        passages += [Passage(title, c.text) for c in chunk_text(f.text, tokenizer, size=160, overlap=0)]
    if not passages:
        raise PearError(f"--corpus {folder}: no .txt/.md text found")
    return passages


def index_passages(db: str | os.PathLike) -> list[Passage]:
    """The chunks of an existing `pear-edge rag` index."""
    from pear_edge.rag.index import RagIndex

    index = RagIndex(db)
    try:
        return [Passage(Path(path).with_suffix("").as_posix(), text) for path, text in index.chunks()]
    finally:
        index.close()


def corpus_passages(spec: str | None, seed: int = 0, limit: int = MAX_PASSAGES) -> list[Passage]:
    """`builtin` (or None), a folder of documents, or a `pear-edge rag` index file; at most `limit`
    passages (a seeded sample, in corpus order)."""
    if spec in (None, "", BUILTIN):
        passages = builtin_passages(seed)
    elif Path(spec).is_dir():
        passages = folder_passages(spec)
    elif Path(spec).is_file():
        passages = index_passages(spec)
    else:
        raise PearError(f"--corpus {spec}: no such folder or rag index file")
    if len(passages) > limit:
        keep = sorted(random.Random(f"corpus-sample:{seed}").sample(range(len(passages)), limit))
        passages = [passages[i] for i in keep]
    return passages


def embed_passages(passages: list[Passage], progress: bool = True) -> np.ndarray:
    """Unit-length MiniLM embeddings of 'title. text' (first TOPIC_TOKENS word pieces), cached under the cache
    folder by content hash."""
    from pear_edge.rag.embed import Embedder

    digest = hashlib.sha256()
    for p in passages:
        digest.update(p.title.encode() + b"\0" + p.text.encode() + b"\1")
    path = cache_dir() / "embeddings" / f"{digest.hexdigest()[:24]}-{TOPIC_TOKENS}.npy"
    if path.is_file():
        vectors = np.load(path)
        if vectors.shape[0] == len(passages):
            return vectors
    vectors = Embedder().embed([f"{p.title}. {p.text}" for p in passages], TOPIC_TOKENS, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors
