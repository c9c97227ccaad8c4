"""The modules of cefmp4 import each other without a cycle (type-only imports included), and
core/ stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import cefmp4

PACKAGE = Path(cefmp4.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every cefmp4 module ``path`` imports, anywhere in the file (functions and
    ``if TYPE_CHECKING`` blocks too: a cycle hidden there is still a cycle of design)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "cefmp4.streams.supervisor" in graph
    assert "cefmp4.streams.supervisor" in graph["cefmp4.runtime.app"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# What core/ may use: values and pure functions. No event loop, no I/O client, no store.
_CORE_MAY_IMPORT = ("cefmp4.core", "cefmp4.checkpoint")
_IO_LIBRARIES = ("asyncio", "aiohttp", "aiobotocore", "botocore", "redis", "sqlite3",
                 "subprocess", "socket", "structlog", "watchfiles", "asyncinotify")


def test_core_is_pure() -> None:
    modules = set(import_graph())
    for path in (PACKAGE / "core").rglob("*.py"):
        mine = _imports(path, modules)
        assert all(m == "cefmp4" or m.startswith(_CORE_MAY_IMPORT) for m in mine), (path, mine)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in _IO_LIBRARIES], (path, names)
