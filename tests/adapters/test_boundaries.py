"""The adapter boundary: each adapter imports llmbrick's public API only, and no other adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"
NAMES = ["llmbrick_sse", "llmbrick_websocket", "llmbrick_grpc"]


def imported_modules(package: Path) -> list[tuple[str, str]]:
    found = []
    for path in package.rglob("*.py"):
        if "_generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path.name, node.module))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_an_adapter_imports_no_other_adapter_and_only_the_public_core(name: str) -> None:
    modules = imported_modules(ADAPTERS / name)
    assert modules, "the scan found no imports at all"
    for filename, module in modules:
        top = module.split(".")[0]
        assert top not in set(NAMES) - {name}, f"{name}/{filename} imports {module}"
        assert module == "llmbrick" or not module.startswith("llmbrick."), (
            f"{name}/{filename} imports {module}: adapters use `from llmbrick import ...`"
        )
