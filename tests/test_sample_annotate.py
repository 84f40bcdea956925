"""sample and annotate stages on a tiny dataset, each annotation source, and their errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import paths
from recaption.annotations import AnnotationError
from recaption.sampling import SampleError
from recaption.stages import annotate, ingest, sample

from conftest import distinct_png


def real_dataset(project, n=40, with_columns=True):
    """A parquet source with optional short/descriptive columns, ingested."""
    data = {
        "image": [distinct_png(i) for i in range(n)],
        "caption": [f"alt {i}" for i in range(n)],
        "shape": ["round" if i % 4 else "square" for i in range(n)],
    }
    if with_columns:
        data["short"] = [f"short {i}" for i in range(n)]
        data["descriptive"] = [f"a long description of image {i}" for i in range(n)]
    pq.write_table(pa.table(data), project.root / "src.parquet")
    project.write_params(
        data={"source": "parquet", "path": "src.parquet"}, annotate={"source": "column"}
    )
    ingest.main()


def test_sample_stage_writes_every_key_once(project):
    ingest.main()
    split = sample.main()
    table = pq.read_table(paths.SPLITS)
    assert table.column("key").to_pylist() == [f"{i:08d}" for i in range(60)]
    assert split.summary() == {
        "dataset": 60,
        "first": 10,
        "second": 10,
        "both": 5,
        "subset": 15,
        "heldout": 8,
    }
    report = json.loads(paths.SAMPLE_REPORT.read_text())
    assert report["subset"] == 15 and report["stratify"] is None


def test_sample_stratified_by_meta_field(project):
    real_dataset(project)
    project.write_params(
        data={"source": "parquet", "path": "src.parquet"},
        sample={"size": 8, "heldout_size": 0, "stratify": "shape"},
    )
    split = sample.main()
    shapes = {f"src/{i:08d}": ("round" if i % 4 else "square") for i in range(40)}
    first = [k for k, f in zip(split.keys, split.first, strict=True) if f]
    assert sum(shapes[k] == "square" for k in first) == 2  # a quarter of 8


def test_sample_unknown_stratum_and_too_small(project):
    ingest.main()
    project.write_params(sample={"stratify": "no_such_field"})
    with pytest.raises(SampleError, match="no_such_field"):
        sample.main()
    project.write_params(sample={"size": 40})
    with pytest.raises(SampleError, match="lower sample.size"):
        sample.main()


def test_annotate_synthetic_references(project):
    ingest.main()
    sample.main()
    report = annotate.main()
    short = pq.read_table(paths.SHORT).to_pylist()
    descriptive = pq.read_table(paths.DESCRIPTIVE).to_pylist()
    splits = pq.read_table(paths.SPLITS).to_pylist()
    assert [r["key"] for r in short] == [s["key"] for s in splits if s["first"]]
    assert [r["key"] for r in descriptive] == [s["key"] for s in splits if s["second"]]
    assert report["descriptive"]["mean_words"] > report["short"]["mean_words"]


def test_annotate_synthetic_needs_the_synthetic_world(project):
    real_dataset(project)
    sample.main()
    project.write_params(data={"source": "parquet", "path": "src.parquet"})
    with pytest.raises(AnnotationError, match="use 'column' or 'file'"):
        annotate.main()


def test_annotate_from_columns(project):
    real_dataset(project)
    sample.main()
    annotate.main()
    short = pq.read_table(paths.SHORT).to_pylist()
    assert all(r["caption"] == "short " + str(int(r["key"][-8:])) for r in short)


def test_annotate_column_missing_values_are_counted(project):
    real_dataset(project, with_columns=False)
    sample.main()
    with pytest.raises(AnnotationError, match=r"10 of 10 subset keys have no caption"):
        annotate.main()


def test_annotate_from_user_files_and_missing_keys(project):
    real_dataset(project, with_columns=False)
    sample.main()
    splits = pq.read_table(paths.SPLITS).to_pylist()
    keys = [s["key"] for s in splits]
    pq.write_table(
        pa.table({"key": keys, "caption": [f"s {k}" for k in keys]}), project.root / "short.parquet"
    )
    lines = "key,caption\n" + "".join(f"{k},d {k}\n" for k in keys[:10])
    (project.root / "desc.csv").write_text(lines)
    project.write_params(
        data={"source": "parquet", "path": "src.parquet"},
        annotate={"source": "file", "short_file": "short.parquet", "descriptive_file": "desc.csv"},
    )
    second = [s["key"] for s in splits if s["second"]]
    missing = [k for k in second if k not in keys[:10]]
    with pytest.raises(AnnotationError) as err:
        annotate.main()
    assert f"{len(missing)} of 10 subset keys have no caption" in str(err.value)
    assert repr(sorted(missing)[0]) in str(err.value)
    (project.root / "desc.csv").write_text("key,caption\n" + "".join(f"{k},d {k}\n" for k in keys))
    annotate.main()
    assert pq.read_table(paths.DESCRIPTIVE).column("caption").to_pylist()[0].startswith("d ")
