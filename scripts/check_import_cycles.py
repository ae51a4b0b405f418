#!/usr/bin/env python3
"""Find import cycles between the modules of a package; exit 1 if there is any.

Every import counts, wherever it is written: at module level, inside a function or
method, and under ``if TYPE_CHECKING:``. A deferred or type-only import still ties two
modules together for a reader, and it is how most cycles hide, so none is exempt.

An edge A -> B means module A imports module B. ``from pkg import name`` makes an edge
to ``pkg.name`` when that is a module of the package, otherwise to ``pkg``; a package's
``__init__`` is the module named by the package. Each cycle is printed as a chain,
``a -> b -> c -> a``, one per strongly connected component (the shortest cycle through
the component's first module, then the component's other members, so every module
that takes part is named).

Usage: ``python scripts/check_import_cycles.py [PACKAGE_DIR ...]`` (default: trimta).
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir``, by dotted name."""
    root = package_dir.parent
    names: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The package modules ``module`` imports, each with the line of its first import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        # The longest prefix of `name` that is a module of the package.
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in known:
                if candidate != module:
                    found.setdefault(candidate, line)
                return
            parts.pop()

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                if full in known:
                    add(full, node.lineno)
                else:
                    add(base, node.lineno)
    return found


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """The shortest chain start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt not in within:
                continue
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [*reversed(chain), start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start} is in a component but on no cycle")


def main(argv: list[str]) -> int:
    package_dirs = [Path(arg) for arg in argv] or [Path(__file__).resolve().parent.parent / "trimta"]
    known: dict[str, Path] = {}
    for package_dir in package_dirs:
        known.update(module_names(package_dir))
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    components = strongly_connected(graph)
    for component in components:
        members = set(component)
        chain = shortest_cycle(graph, component[0], members)
        links = []
        for a, b in zip(chain, chain[1:]):
            links.append(f"{a} ({known[a].name}:{graph[a][b]})")
        print("import cycle: " + " -> ".join(chain))
        print("    first imports: " + ", ".join(links))
        others = sorted(members - set(chain))
        if others:
            print("    also in this cycle: " + ", ".join(others))
    if components:
        print(f"{len(components)} import cycle(s) in {', '.join(str(p) for p in package_dirs)}")
        return 1
    print(f"no import cycles among {len(known)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
