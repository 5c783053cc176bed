"""The package's layers, read from every import statement (module level and inside functions): no cycle between
files, the core never imports the converters, the harness, the lab or the command line, and the harness users
run never imports the lab."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the package it installs as (pyproject's package-dir)
PACKAGES = {"pear_edge": "pear_edge", "converters": "pear_edge.converters", "eval": "pear_edge.eval"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                # `import a.b.c` loads a, a.b and a.b.c: the deepest module of ours it names counts
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def is_cli(name: str) -> bool:
    return name == "pear_edge.cli" or name.startswith("pear_edge.cli.") or name.endswith(".cli")


def is_core(name: str) -> bool:
    outside = ("pear_edge.eval", "pear_edge.converters")
    return not is_cli(name) and not any(name == o or name.startswith(o + ".") for o in outside)


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_core_imports_neither_converters_nor_eval_nor_the_command_line():
    bad = sorted((a, b) for a, targets in import_graph().items() if is_core(a)
                 for b in targets if not is_core(b))
    assert bad == []


def test_the_harness_never_imports_the_lab_and_results_import_nothing_of_ours():
    graph = import_graph()
    lab = "pear_edge.eval.lab"
    harness = [a for a in graph if a.startswith("pear_edge.eval") and not a.startswith(lab) and not is_cli(a)]
    assert sorted((a, b) for a in harness for b in graph[a] if b.startswith(lab)) == []
    assert graph["pear_edge.results"] == set()


def test_the_checker_sees_a_cycle_and_a_core_import_of_eval():
    graph = {"pear_edge.a": {"pear_edge.b"}, "pear_edge.b": {"pear_edge.eval.x"}, "pear_edge.eval.x": {"pear_edge.a"}}
    assert cycles(graph) == [["pear_edge.a", "pear_edge.b", "pear_edge.eval.x"]]
    assert is_core("pear_edge.b") and not is_core("pear_edge.eval.x") and not is_core("pear_edge.rag.cli")
