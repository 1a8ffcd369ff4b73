"""The adapter boundary: each adapter imports llmbrick's public API only, and no other adapter.

``llmbrick_http`` is not a transport but the HTTP host the HTTP transports share
(app policy, request context, uvicorn limits): they may import it; it imports none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"
NAMES = ["llmbrick_sse", "llmbrick_websocket", "llmbrick_grpc", "llmbrick_http"]
SHARED = {"llmbrick_http"}


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
        allowed = SHARED - {name} if name not in SHARED else set()
        assert top not in set(NAMES) - {name} - allowed, f"{name}/{filename} imports {module}"
        private = any(part.startswith("_") for part in module.split(".")[1:])
        assert not (module.startswith("llmbrick.") and private), (
            f"{name}/{filename} imports {module}: adapters use llmbrick's public modules only"
        )
