"""Prompt builders shared by the eval harness and the RAG demo, so both ask the model the same way
(the lost-in-the-middle multi-document QA prompt)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MDQA_INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant). Answer with a short phrase."
)
# Instruction wordings: "short" is lost-in-the-middle's (and `pear-edge rag`'s); "plain" drops the
# short-phrase request, so a gain measured on both does not hang on one template.
WORDINGS = {"short": MDQA_INSTRUCTION, "plain": MDQA_INSTRUCTION.rsplit(" Answer with", 1)[0]}


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def format_documents(documents: Sequence[Document]) -> str:
    return "\n".join(f"Document [{i}](Title: {d.title}) {d.text}" for i, d in enumerate(documents, 1))


def mdqa_prompt(question: str, documents: Sequence[Document], wording: str = "short") -> str:
    return f"{WORDINGS[wording]}\n\n{format_documents(documents)}\n\nQuestion: {question}\nAnswer:"


def user_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


KV_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below."


def kv_prompt(pairs: Sequence[tuple[str, str]], key: str) -> str:
    """Lost-in-the-middle key-value retrieval prompt: a JSON object, then the key to look up."""
    import json

    body = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    return f"{KV_INSTRUCTION}\n\nJSON data:\n{body}\n\nKey: {json.dumps(key)}\nCorresponding value:"
