"""A real offline corpus for the demo: Python's own documentation as shipped with the interpreter.

topics/<name>.txt: one file per pydoc topic (`pydoc_data.topics`, the Language Reference sections that
`help('with')` shows); modules/<name>.txt: the docstrings of each pure-Python stdlib module and of its public
classes and functions, read from source with `ast` (nothing is imported, so nothing runs).
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

from pear_edge.base.atomic import Kind, atomic_dir, check_output

SKIPPED_MODULES = {"antigravity", "this"}


def topic_files() -> dict[str, str]:
    from pydoc_data.topics import topics

    return {f"topics/{name}.txt": text for name, text in sorted(topics.items())}


def module_files(min_chars: int = 300, max_chars: int = 6000) -> dict[str, str]:
    files = {}
    for name in sorted(sys.stdlib_module_names - SKIPPED_MODULES):
        text = _module_docs(name) if not name.startswith("_") else ""
        if len(text) >= min_chars:
            files[f"modules/{name}.txt"] = text[:max_chars]
    return files


def _module_docs(name: str) -> str:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    parts = [f"Module {name}\n\n{ast.get_docstring(tree) or ''}"]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(f"{name}.{node.name}: {doc}")
    return "\n\n".join(parts) if len(parts) > 1 or ast.get_docstring(tree) else ""


def write_pydoc_corpus(out_dir: str | Path, replace: bool = False) -> int:
    """Write the corpus folder atomically (`replace`: --force); returns the number of files."""
    out = check_output(out_dir, kind=Kind.FOLDER, replace=replace)
    files = {**topic_files(), **module_files()}
    with atomic_dir(out, replace=replace) as tmp:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return len(files)
