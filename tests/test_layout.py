"""The house (docs/design.md §7): each package imports only the packages it may, so imports
flow one way and no circle can form, TYPE_CHECKING imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import raftsql

ROOT = Path(raftsql.__file__).parent
ANYONE = {"", "errors"}  # raftsql itself (its version) and the error tree
MAY_IMPORT = {
    "errors": set(),
    "raft": set(),
    "storage": {"raft"},
    "transport": {"raft"},
    "node": {"raft", "storage", "transport"},
    "sql": {"node"},
    "kv": {"sql", "node"},
    "http": {"sql", "kv", "node"},
    "server": {"raft", "storage", "transport", "node", "sql", "kv", "http"},
    # nodes.py runs whole servers (server.py) and reads the API's words (http/respond.py)
    "simulation": {"raft", "storage", "transport", "node", "sql", "http", "server"},
    "client": set(),
    "shell": {"client"},
    "cli": {"server", "client", "shell"},
    "dbapi": {"client"},  # raftsql/dbapi.py: raftsql.client.dbapi under a short name
    "aio": {"client"},  # raftsql/aio.py: raftsql.client.aio likewise
    "": {"node", "cli", "client"},  # raftsql/__init__.py (Node and connect, lazily), __main__.py
}


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    name = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name not in (
        "__init__.py", "__main__.py") else ""
    return name


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "raftsql":
                out.add(parts[1] if len(parts) > 1 else "")
    return out


def test_packages_import_only_what_they_may() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        package = package_of(path)
        assert package in MAY_IMPORT, f"{path}: a package docs/design.md does not know"
        for target in imports_of(path) - {package} - ANYONE:
            if target not in MAY_IMPORT[package]:
                wrong.append(f"{path.relative_to(ROOT)} ({package}) imports {target}")
    assert not wrong, wrong

