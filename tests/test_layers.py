"""The library and the pipeline stay apart, and stages never import stages.

As open_clip keeps `open_clip` (the models) apart from `open_clip_train` (the
trainer), `recaption` has two layers, told apart by module:

- the pipeline, the modules named in `PIPELINE` (params, paths, the stages, the
  dvclive helpers, the stages' checkpoint folders, the runner and engine,
  comparisons, audit, lineage and cards, the CLI): it reads params.yaml, knows the
  repository's paths, talks to DVC;
- the library, every other module (world, sources, models, metrics, io, images,
  precision, checkpoints, datasets, parallel, ...): plain arguments in, values out.

The rules:

1. A library module imports no pipeline module, and nothing of dvc or dvclive.
2. A stage module (recaption/stages/*.py, not its __init__) imports no other stage
   module: what two stages share lives in the pipeline or the library.

Every import counts, wherever it stands: at the top, inside a function, under
`if TYPE_CHECKING:`. A new module is library until it is added to `PIPELINE`, so
one that reads params.yaml or logs to dvclive fails here until it is placed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from import_graph import imports, module_file

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "recaption"
# Modules and packages directly under recaption/ that make up the pipeline.
PIPELINE = frozenset({
    "__main__", "audit", "blend_params", "budget", "cards", "clean", "cli", "compare", "embed",
    "engine", "experiments", "ladder", "latent_space", "lineage", "live", "params", "paths",
    "resume",
    "profiles", "runner", "stages", "synthetic", "upsampler_fit",
})  # fmt: skip
STAGES = "stages"
# Third-party packages only the pipeline may import.
PIPELINE_ONLY = frozenset({"dvc", "dvclive"})


def modules(src: Path, package: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every module of `package` under `src`."""
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def in_pipeline(module: str, pipeline: frozenset[str]) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in pipeline


def is_stage(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 2 and parts[1] == STAGES


def crossings(
    src: Path = SRC, package: str = PACKAGE, pipeline: frozenset[str] = PIPELINE
) -> list[str]:
    """One line per import that breaks a rule: `file:line: what crosses`."""
    found: dict[str, None] = {}  # ordered, without repeats
    for module, path in modules(src, package):
        tree = ast.parse(path.read_text(), str(path))
        library = not in_pipeline(module, pipeline)
        for line, name in sorted(set(imports(tree, module, path.name == "__init__.py"))):
            where = f"{path.relative_to(src).as_posix()}:{line}"
            top = name.split(".")[0]
            ours = top == package and module_file(name, src) is not None
            if library and top in PIPELINE_ONLY:
                found[f"{where}: library module {module} imports {top}"] = None
            elif library and ours and in_pipeline(name, pipeline):
                found[f"{where}: library module {module} imports pipeline module {name}"] = None
            elif is_stage(module) and ours and is_stage(name) and name != module:
                found[f"{where}: stage {module} imports stage {name}"] = None
    return list(found)


def test_library_and_pipeline_stay_apart():
    found = crossings()
    assert not found, "imports that cross the layers (see tests/test_layers.py):\n" + (
        "\n".join(found)
    )


def test_every_pipeline_name_is_a_module():
    """A renamed or removed module must leave PIPELINE too, or its successor is library."""
    missing = sorted(n for n in PIPELINE if module_file(f"{PACKAGE}.{n}", SRC) is None)
    assert not missing, f"PIPELINE names no module of {PACKAGE}: {missing}"


def test_the_checker_flags_each_kind_of_crossing(tmp_path):
    """Known answer on a tiny package: a lazy import of params from the library, dvclive
    in a model, one stage importing another relatively; the allowed ones pass."""
    files = {
        "pkg/__init__.py": "",
        "pkg/params.py": "from pkg import io\n",  # pipeline -> library: allowed
        "pkg/io.py": "import json\n\ndef f():\n    from pkg import params\n",
        "pkg/models/__init__.py": "",
        "pkg/models/net.py": "from pkg import io\nfrom dvclive import Live\n",
        "pkg/stages/__init__.py": "",
        "pkg/stages/a.py": "from pkg import params\nfrom pkg.models import net\nfrom . import b\n",
        "pkg/stages/b.py": "from pkg.stages import __doc__\n",  # the package, no stage
        "pkg/cli.py": "from pkg.stages import a, b\n",  # the CLI runs stages: allowed
    }
    for rel_path, text in files.items():
        (tmp_path / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel_path).write_text(text)

    found = crossings(tmp_path, "pkg", frozenset({"params", "stages", "cli"}))

    assert found == [
        "pkg/io.py:4: library module pkg.io imports pipeline module pkg.params",
        "pkg/models/net.py:2: library module pkg.models.net imports dvclive",
        "pkg/stages/a.py:3: stage pkg.stages.a imports stage pkg.stages.b",
    ]
