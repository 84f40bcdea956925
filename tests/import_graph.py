"""Who imports whom in a package's source, read with `ast` (nothing is imported).

Shared by test_code_deps (each stage's import closure) and test_layers (which
imports cross from the library into the pipeline).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


def module_file(name: str, src: Path) -> Path | None:
    """The file that defines module `name` under `src` (a package's __init__.py), or None."""
    base = src.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def imports(
    tree: ast.AST, module: str, is_package: bool = False, runtime_only: bool = False
) -> Iterator[tuple[int, str]]:
    """(line, module name) of every import in `tree`, anywhere in it (functions too, and
    under `if TYPE_CHECKING:` unless `runtime_only`: those never run).

    `from a import b` yields both `a` and `a.b`: b may be a submodule; a caller keeps
    only the names that resolve to a file. Relative imports are made absolute
    against `module` (itself, when `is_package`: the tree is its __init__.py).
    """
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def imported_names(
    tree: ast.AST, module: str, is_package: bool = False, runtime_only: bool = False
) -> set[str]:
    """Every module name `tree` may import (see `imports`)."""
    return {name for _, name in imports(tree, module, is_package, runtime_only)}
