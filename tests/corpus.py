"""A tiny real corpus for the RAG tests: three Python-docs topics that ship with the interpreter."""
from pathlib import Path

import pydoc_data.topics

TOPICS = ("try", "for", "with")


def write_topics(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOPICS:
        (folder / f"{name}.txt").write_text(pydoc_data.topics.topics[name][:1200])
    return folder
