"""A guard for general ability during calibration: the language-model loss on natural English text,
added to the proxy loss so coefficients that help RAG but raise perplexity are pushed back.

The text is the docstrings of Python standard-library modules: it ships with every interpreter (no
download) and is disjoint from the perplexity check (`pydoc_data.topics`, the language reference).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from pear_edge.base.errors import PearError
from pear_edge.calibration.proxy import model_device, row_parts

GUARD_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.cookies", "imaplib", "inspect",
    "ipaddress", "json", "locale", "logging", "mailbox", "mimetypes", "optparse", "pickle", "pickletools",
    "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile",
)


def guard_text() -> str:
    docs = []
    for name in GUARD_MODULES:
        try:
            doc = importlib.import_module(name).__doc__
        except ImportError:  # a trimmed interpreter may lack a module; the rest is plenty
            continue
        if doc and len(doc.split()) >= 40:
            docs.append(doc.strip())
    return "\n\n".join(docs)


class TextGuard:
    """Random windows of `tokens` tokens from the guard text; loss = mean next-token cross-entropy."""

    def __init__(self, tokenizer, batch: int = 4, tokens: int = 256):
        ids = tokenizer(guard_text(), add_special_tokens=False)["input_ids"]
        if len(ids) < 4 * tokens:
            raise PearError(f"guard text has only {len(ids)} tokens; need at least {4 * tokens}")
        self.ids, self.batch, self.tokens = torch.tensor(ids), batch, tokens

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(len(self.ids) - self.tokens, (self.batch,), generator=generator)
        return torch.stack([self.ids[s : s + self.tokens] for s in starts.tolist()])

    def parts(self, windows: torch.Tensor, micro: int) -> list[tuple[torch.Tensor, float]]:
        return row_parts(windows, micro)  # equal-length windows: equal weights

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.to(model_device(model))
        logits = model(input_ids=windows, use_cache=False).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))
