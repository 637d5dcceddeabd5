"""fnnet's import graph, by levels: ``python docs/import_graph.py [--check | --jobs]``.

Each module is listed at its level (1 + the highest level of what it imports; level 0
imports nothing of fnnet's) with the fnnet modules it imports when it is imported,
``if TYPE_CHECKING:`` blocks included. An import inside a function runs late and is
not an edge.

``--check`` exits 1 on a circle; on an upward import: a module that takes a name from the
``__init__`` of a package it lives in (``from . import __version__``), rather than from
the module that defines it; or on a private import: a module that imports another
package's private module (``fnnet.train`` importing ``fnnet.layers._layer``), other than
through a public door (:data:`DOORS`: ``fnnet.runner`` for the runner). ``--jobs``
prints a table of every module with its one job (the first sentence of its docstring).
``docs/build.md`` shows both outputs;
tests/test_docs.py keeps them equal.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fnnet"


def modules(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    """``{dotted name: file}`` of a package's Python modules (fnnet's Pythran sources excluded)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        if path.name.endswith("_pythran.py"):
            continue
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run at import: the module's, and those of its ``if`` blocks."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend(node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    return out


def _bound(path: pathlib.Path) -> set[str]:
    """The names a package's ``__init__`` binds itself (a name it imports from a submodule
    shadows that submodule: ``from .layers import dense`` is the function)."""
    names = set()
    for node in _top_level(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def edges(known: dict[str, pathlib.Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's fnnet imports, and the upward imports found."""
    graph, upward = {}, []
    bound = {name: _bound(path) for name, path in known.items() if path.name == "__init__.py"}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _top_level(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base not in known:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known and alias.name not in bound.get(base, ()):  # a submodule: the edge goes to it
                        deps.add(sub)
                    else:
                        deps.add(base)
                        if known[base].name == "__init__.py" and name != base and name.startswith(base + "."):
                            upward.append(f"{name} takes {alias.name} from {base}/__init__.py")
        deps.discard(name)
        graph[name] = deps
    return graph, upward


def levels(graph: dict[str, set[str]]) -> tuple[dict[str, int], list[str]]:
    """Each module's level, and the modules on a circle or above one (empty when there is none)."""
    level: dict[str, int] = {}
    todo = dict(graph)
    while todo:
        ready = [m for m, deps in todo.items() if all(d in level for d in deps)]
        if not ready:
            return level, sorted(todo)
        for m in ready:
            level[m] = 1 + max((level[d] for d in graph[m]), default=-1)
            del todo[m]
    return level, []


def render(graph: dict[str, set[str]], level: dict[str, int]) -> str:
    lines = []
    for n in range(max(level.values()) + 1):
        lines.append(f"level {n}")
        for m in sorted(k for k, v in level.items() if v == n):
            deps = ", ".join(sorted(graph[m]))
            lines.append(f"  {m}" + (f"  <- {deps}" if deps else ""))
    return "\n".join(lines)


DOORS = {"fnnet.runner"}
"""Public modules whose job is to re-export another package's private modules."""


def private_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"importer -> imported"`` for each import of a private module (a name segment
    with a leading underscore) by a module outside the package that owns it."""
    out = []
    for importer, deps in sorted(graph.items()):
        for dep in sorted(deps):
            parts = dep.split(".")
            k = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
            owner = ".".join(parts[:k]) if k else ""
            if owner and importer != owner and not importer.startswith(owner + ".") and importer not in DOORS:
                out.append(f"{importer} -> {dep}")
    return out


def jobs(known: dict[str, pathlib.Path]) -> str:
    """A markdown table: each module and the first sentence of its docstring."""
    rows = ["| module | its job |", "|---|---|"]
    for name, path in known.items():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        first = first.split(". ")[0].rstrip(".").replace("|", "\\|")
        rows.append(f"| `{name}` | {first or '(no docstring)'} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if "--jobs" in argv:
        print(jobs(modules()))
        return 0
    graph, upward = edges(modules())
    level, circle = levels(graph)
    if circle:
        print("a circle among (or below): " + ", ".join(circle))
    for line in upward:
        print("upward import: " + line)
    private = private_imports(graph)
    for line in private:
        print("private import: " + line)
    if not circle:
        print(render(graph, level))
    return 1 if "--check" in argv and (circle or upward or private) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
