"""What import-linter cannot say (it does not look inside external packages): sessions and pull mode never import
``aiohttp.web``, the HTTP routing that belongs to ``sttgate.web`` (the layers themselves are pyproject.toml's
``[tool.importlinter]`` contracts, checked with ``lint-imports``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sttgate

SOURCE = Path(sttgate.__file__).parent


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["gateway", "pull"])
def test_no_http_routing_below_the_web_layer(package: str) -> None:
    offenders = {
        str(path.relative_to(SOURCE)): sorted(m for m in imported_modules(path) if m.startswith("aiohttp.web"))
        for path in sorted((SOURCE / package).rglob("*.py"))
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}
