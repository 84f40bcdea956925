"""pyproject.toml declares every third-party package the code imports."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "recaption"


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them: `PyYAML` == `pyyaml`, `a_b` == `a-b`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(root: Path) -> dict[str, set[str]]:
    """Top-level module -> files under `root` importing it, anywhere in the file; the
    standard library, relative imports and `recaption` itself left out."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top != "recaption":
                    found.setdefault(top, set()).add(path.relative_to(root.parent).as_posix())
    return found


def declared_distributions() -> set[str]:
    """Names in [project] dependencies and every optional-dependencies group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        requirements += group
    return {normalise(re.match(r"[A-Za-z0-9._-]+", r.strip()).group()) for r in requirements}


def test_every_imported_package_is_declared():
    declared = declared_distributions()
    providers = packages_distributions()
    undeclared = {}
    for module, files in third_party_imports(PACKAGE).items():
        # A module not installed here (an optional extra) is looked up by its own name.
        dists = {normalise(d) for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(files)
    lines = [
        f"{module} (distribution {'/'.join(providers.get(module, [module]))}): {', '.join(files)}"
        for module, files in sorted(undeclared.items())
    ]
    assert not lines, "imported but not declared in pyproject.toml:\n" + "\n".join(lines)


def test_import_scan_finds_lazy_imports_and_skips_the_standard_library(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import os\nimport numpy.linalg\nfrom . import b\nfrom recaption import io\n"
        "def f():\n    from PIL import Image\n"
    )
    assert third_party_imports(tmp_path / "pkg") == {"numpy": {"pkg/a.py"}, "PIL": {"pkg/a.py"}}
