"""Make a plain-text "user corpus" from Debian's python3.11-doc (the reST sources of the Python
documentation), to measure `pear-edge calibrate --corpus` on material other than the built-in corpus.

    cd out && apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb pydoc-deb
    python scripts/pydocs_corpus.py out/pydoc-deb/usr/share/doc/python3.11/html/_sources out/pydocs

Writes one .txt per .rst.txt of the tutorial, howto, faq, reference and library sections, with reST
markup reduced to its text (roles, literals, links, directives and heading rules removed). Refuses an
existing output folder.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

SECTIONS = ("tutorial", "howto", "faq", "reference", "library")
_ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPH = re.compile(r"(?<!\w)\*{1,2}([^*\n]+)\*{1,2}(?!\w)")
_RULE = re.compile(r"^\s*([=\-~^\"'`#*+.:]){3,}\s*$")
_FIELD = re.compile(r"^\s*:[\w -]+:")


def plain(rst: str) -> str:
    out, skipping = [], False
    for line in rst.splitlines():
        if line.startswith(".. "):
            skipping = True  # a directive and its indented block (code, tables, index, notes' options)
            continue
        if skipping and (not line.strip() or line.startswith((" ", "\t"))):
            continue
        skipping = False
        if _RULE.match(line) or _FIELD.match(line):
            continue
        line = _LITERAL.sub(r"\1", _LINK.sub(r"\1", _ROLE.sub(r"\1", line)))
        out.append(_EMPH.sub(r"\1", line).replace("::", ":"))
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    if not src.is_dir() or dst.exists():
        print(f"pydocs_corpus: error: need an existing {src} and a new {dst}", file=sys.stderr)
        return 2
    count = 0
    for section in SECTIONS:
        for f in sorted((src / section).glob("*.rst.txt")):
            text = plain(f.read_text(encoding="utf-8"))
            if len(text.split()) < 100:
                continue
            target = dst / section / f.name.replace(".rst.txt", ".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            count += 1
    print(f"wrote {count} files to {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
