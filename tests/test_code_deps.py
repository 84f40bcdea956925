"""dvc.yaml's source-file deps match the code each stage runs.

A stage's deps are listed by hand; this derives them: from the stage's `recap`
command to the module cli.py runs for it, then every module of the `recaption`
package that module imports, transitively. An edit to any of those files must
rerun the stage, so each must be a dep; a listed dep the stage never imports is
stale and reruns it for nothing.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.main import get_command_name

from recaption.cli import app

from import_graph import imported_names, module_file

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "recaption"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def closure(entries: set[str], package: str = PACKAGE, src: Path = SRC) -> set[Path]:
    """Files of `package` that importing `entries` runs: their imports, transitively, and
    the __init__.py of every package on the way (Python runs a parent before its child)."""
    files: set[Path] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name != package and not name.startswith(package + "."):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            path = module_file(prefix, src)
            if path is None or path in files:
                continue
            files.add(path)
            tree = ast.parse(path.read_text(), str(path))
            # What runs: an import under `if TYPE_CHECKING:` does not.
            todo.extend(imported_names(tree, prefix, path.name == "__init__.py", runtime_only=True))
    return files


def is_inert(path: Path) -> bool:
    """True when a module holds only a docstring, `__future__` imports and dunder constants
    (`__version__ = "0.1.0"`): no stage output can change with it, so no stage needs it as a
    dep. The package __init__.py files are such today; one that gains code is required."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and all(isinstance(t, ast.Name) and t.id.startswith("__") for t in node.targets)
        ):
            continue
        return False
    return True


def command_entries(command: str) -> set[str]:
    """The `recaption` modules `recap <command>` imports in its own body. cli.py imports each
    stage lazily, inside its command; cli.py itself and its module-level imports serve every
    command, so they are no stage's dep (an edit to a help text would rerun the pipeline)."""
    for info in app.registered_commands:
        if (info.name or get_command_name(info.callback.__name__)) == command:
            source = textwrap.dedent(inspect.getsource(info.callback))
            names = imported_names(ast.parse(source), f"{PACKAGE}.cli")
            return {n for n in names if n.startswith(PACKAGE + ".") and module_file(n, SRC)}
    raise AssertionError(f"dvc.yaml runs `recap {command}`, which cli.py does not define")


def stage_code(stage: dict) -> set[Path]:
    """The package files a dvc.yaml stage runs."""
    stage = stage.get("do", stage)  # a foreach stage's body
    program, command, *_ = stage["cmd"].split()
    assert program == "recap", f"{stage['cmd']!r}: expected a `recap <command>`"
    entries = command_entries(command)
    assert entries, f"`recap {command}` imports no recaption module in its body"
    return closure(entries)


def source_deps(stage: dict) -> list[Path]:
    """The stage's deps under src/recaption (files or folders)."""
    deps = [ROOT / d for d in stage.get("do", stage).get("deps", []) if isinstance(d, str)]
    return [d for d in deps if d.is_relative_to(SRC / PACKAGE)]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or path.is_relative_to(d) for d in deps)


def rel(paths) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in paths)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_lists_every_file_it_runs(name):
    stage = STAGES[name]
    deps = source_deps(stage)
    missing = [f for f in stage_code(stage) if not covered(f, deps) and not is_inert(f)]
    assert not missing, f"dvc.yaml stage {name!r} runs these files but lacks them in deps: " + (
        ", ".join(rel(missing))
    )


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_lists_no_file_it_never_runs(name):
    stage = STAGES[name]
    code = stage_code(stage)
    stale = [d for d in source_deps(stage) if not any(covered(f, [d]) for f in code)]
    assert not stale, f"dvc.yaml stage {name!r} lists deps it never imports: " + (
        ", ".join(rel(stale))
    )


def test_closure_follows_every_kind_of_import(tmp_path):
    """Known answer on a tiny package: relative, lazy and `from pkg import submodule`
    imports are followed; a name imported from a module is not taken for a file."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\nfrom pkg.sub import thing\n",
        "pkg/b.py": "def f():\n    import pkg.c\n",
        "pkg/c.py": "import os\n",
        "pkg/sub/__init__.py": "from .d import thing\n",
        "pkg/sub/d.py": "from ..e import name\nthing = 1\n",
        "pkg/e.py": "name = 2\n",
        "pkg/unused.py": "",
    }
    for rel_path, text in files.items():
        (tmp_path / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel_path).write_text(text)

    found = closure({"pkg.a"}, package="pkg", src=tmp_path)

    expected = set(files) - {"pkg/unused.py"}
    assert {p.relative_to(tmp_path).as_posix() for p in found} == expected


def test_imports_under_type_checking_are_not_run():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import recaption.a\n"
        "if TYPE_CHECKING:\n"
        "    from recaption import b\n"
        "else:\n"
        "    import recaption.c\n"
    )
    names = imported_names(tree, "recaption.m", runtime_only=True)
    assert {"recaption.a", "recaption.c"} <= names and not {"recaption", "recaption.b"} & names
    assert "recaption.b" in imported_names(tree, "recaption.m")  # the layer rule counts it


RUN_CACHE_BLIND = {"size", "nfiles"}  # keys DVC's run cache drops, at any depth
DVC = Path(sys.executable).parent / "dvc"


def _blind(value, path: str):
    """Dotted paths below `value` whose last key is one the run cache drops."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in RUN_CACHE_BLIND:
                yield f"{path}.{key}"
            yield from _blind(inner, f"{path}.{key}")


def test_no_stage_declares_a_params_section_whose_keys_the_run_cache_drops():
    """DVC hashes a stage's params for its run cache with every key named size or nfiles
    removed, at any depth (treeverse/dvc#10296). A section declared whole that holds
    one would let a changed value restore the outputs of another: declare such a key
    dotted, which the lock names in full."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = []
    for name, stage in STAGES.items():
        for entry in stage.get("params", []):
            assert isinstance(entry, str), f"{name}: params from another file: {entry}"
            value = params
            for part in entry.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            found += [f"{name}: {entry} holds {path}" for path in _blind(value, entry)]
    assert not found, "declare these dotted (see dvc.yaml's sample stage): " + "; ".join(found)


def test_a_dotted_size_param_reruns_a_stage_the_run_cache_has_seen(tmp_path):
    """The premise of the test above, on the installed DVC: changed back and forth, a
    dotted `size` reruns the stage each time; inside a section declared whole it is
    restored from the run cache with the other value's output."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def sh(*args: str) -> str:
        out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    sh("git", "init", "-q")
    sh(str(DVC), "init", "-q")
    script = "import yaml; p = yaml.safe_load(open('params.yaml'))['s']; "
    script += "open('out.txt', 'w').write(str(p['size']))"
    (tmp_path / "gen.py").write_text(script)
    stage = {"cmd": f"{sys.executable} gen.py", "deps": ["gen.py"], "outs": ["out.txt"]}
    for params, expect_rerun in ((["s.size"], True), (["s"], False)):
        (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"gen": {
            **stage, "params": params}}}))  # fmt: skip
        for size in (1, 2, 1):
            (tmp_path / "params.yaml").write_text(yaml.safe_dump({"s": {"size": size}}))
            sh(str(DVC), "repro", "-q")
        # Back at size 1 after 2: the run cache holds size 1's output either way; only a
        # key it cannot see restores size 2's.
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"s": {"size": 2}}))
        sh(str(DVC), "repro", "-q")
        assert (tmp_path / "out.txt").read_text() == ("2" if expect_rerun else "1")
