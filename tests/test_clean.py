from pathlib import Path

from recaption import clean

ROOT = Path(__file__).resolve().parents[1]

DVC_YAML = """
stages:
  a:
    cmd: recap a
    outs:
      - data/made
      - reports/a.json:
          cache: false
  b:
    cmd: recap b
    outs:
      - models/b
"""


def test_clean_removes_every_declared_output_and_the_work_and_keeps_the_inputs(tmp_path):
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    for name in ("data/made/x.parquet", "reports/a.json", "models/b/w.safetensors",
                 "data/.work/a/chunk", "data/raw/img.png", "reports/notes.md"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    listed = clean.clean(tmp_path, dry_run=True)
    assert {p.relative_to(tmp_path).as_posix() for p in listed} == {
        "data/made", "reports/a.json", "models/b", "data/.work"}  # fmt: skip
    assert all(p.exists() for p in listed)  # a dry run removes nothing
    assert clean.clean(tmp_path) == listed
    assert not any(p.exists() for p in listed)
    assert (tmp_path / "data/raw/img.png").exists() and (tmp_path / "reports/notes.md").exists()
    assert clean.clean(tmp_path) == []  # nothing left to remove


def test_the_pipeline_declares_its_outputs_and_none_is_an_input():
    outs = {p.relative_to(ROOT).as_posix() for p in clean.outputs(ROOT / "dvc.yaml")}
    assert {"data/dataset", "models/generator", "reports/metrics.json", "dvclive/oracle"} <= outs
    assert not any(o.startswith(("data/raw", "configs", "params.yaml", "src")) for o in outs)
