"""The core is pure (DESIGN.md §2): no I/O, clock, threads or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import raftsql.raft

FORBIDDEN = {"asyncio", "time", "os", "socket", "threading", "aiohttp", "subprocess", "select",
             "apsw", "orjson"}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_nothing_impure() -> None:
    """Nothing of the package's but itself, either: raft/ is the ground floor."""
    root = Path(raftsql.raft.__file__).parent
    for path in root.glob("*.py"):
        assert not imported(path) & FORBIDDEN, path.name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raftsql"):
                assert node.module.startswith("raftsql.raft"), (path.name, node.module)


def test_randomness_is_only_the_injected_generator() -> None:
    src = (Path(raftsql.raft.__file__).parent / "core.py").read_text()
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id == "random"]
    assert [c.attr for c in calls] == ["Random"]  # the type annotation only
