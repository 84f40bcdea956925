"""Each real source format, read from tiny data made here, and its structural errors."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.params import Columns
from recaption.sources import SourceError, read_source

from conftest import distinct_png

COLS = Columns()


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_folder_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.png").write_bytes(distinct_png(1))
    (tmp_path / "sub" / "a.png").write_bytes(distinct_png(2))
    (tmp_path / "captions.csv").write_text(
        "file,caption,short,photographer\nb.png,second,,x\nsub/a.png,first,a thing,y\n"
    )
    records = list(read_source("folder", tmp_path, COLS))
    assert [r.key for r in records] == ["b", "sub/a"]  # ordered by key
    assert records[1].caption == "first" and records[1].short == "a thing"
    assert records[0].short is None
    assert records[0].meta["photographer"] == "x"
    assert records[1].data == distinct_png(2)


def test_folder_jsonl_and_unlisted_and_missing(tmp_path):
    (tmp_path / "a.png").write_bytes(distinct_png(1))
    (tmp_path / "stray.jpg").write_bytes(distinct_png(2))
    lines = [{"file": "a.png", "caption": "one"}, {"file": "gone.png", "caption": "two"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = {r.key: r for r in read_source("folder", tmp_path, COLS, "caps.jsonl")}
    assert records["a"].reject is None
    assert records["gone"].reject[0] == "missing_file"
    assert records["stray"].reject[0] == "missing_caption"


def test_folder_symlink_outside_is_refused(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(distinct_png(3))
    root = tmp_path / "data"
    root.mkdir()
    (root / "link.png").symlink_to(outside)
    (root / "captions.csv").write_text("file,caption\nlink.png,hi\n../secret.png,hi\n")
    records = list(read_source("folder", root, COLS))
    assert [r.reject[0] for r in records] == ["outside_root", "outside_root"]
    assert all(r.data is None for r in records)


def test_folder_missing_caption_column(tmp_path):
    (tmp_path / "captions.csv").write_text("file,text\na.png,hi\n")
    with pytest.raises(SourceError, match="missing column.*caption"):
        list(read_source("folder", tmp_path, COLS))


def test_parquet_bytes_and_struct_columns(tmp_path):
    pq.write_table(
        pa.table(
            {
                "image": [distinct_png(1), distinct_png(2)],
                "caption": ["one", "two"],
                "url": ["http://a", "http://b"],
            }
        ),
        tmp_path / "x.parquet",
    )
    records = list(read_source("parquet", tmp_path / "x.parquet", COLS))
    assert [r.key for r in records] == ["x/00000000", "x/00000001"]
    assert records[1].meta == {"url": "http://b"}
    struct = pa.array([{"bytes": distinct_png(3), "path": "p.png"}])
    pq.write_table(
        pa.table({"img": struct, "text": ["three"], "id": ["k3"]}), tmp_path / "y.parquet"
    )
    cols = Columns(image="img", caption="text", key="id")
    (record,) = read_source("parquet", tmp_path / "y.parquet", cols)
    assert (record.key, record.caption, record.data) == ("k3", "three", distinct_png(3))


def test_parquet_wrong_types_and_missing_columns(tmp_path):
    pq.write_table(pa.table({"image": [1, 2], "caption": ["a", "b"]}), tmp_path / "a.parquet")
    with pytest.raises(SourceError, match="'image' has type int64"):
        list(read_source("parquet", tmp_path / "a.parquet", COLS))
    pq.write_table(pa.table({"image": [b"x"], "caption": [3]}), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match="'caption' has type int64"):
        list(read_source("parquet", tmp_path / "b.parquet", COLS))
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "c.parquet")
    with pytest.raises(SourceError, match="no column 'caption'"):
        list(read_source("parquet", tmp_path / "c.parquet", COLS))


def test_webdataset_shards(tmp_path):
    write_tar(
        tmp_path / "00000.tar",
        {
            "000000001.jpg": distinct_png(1),
            "000000001.txt": b"a caption",
            "000000001.json": json.dumps({"url": "http://x", "caption": "a caption"}).encode(),
            "000000002.png": distinct_png(2),
            "000000002.json": json.dumps({"caption": "from json", "short": "s"}).encode(),
            "000000003.txt": b"no image",
        },
    )
    records = list(read_source("webdataset", tmp_path, COLS))
    assert [r.key for r in records] == ["000000001", "000000002", "000000003"]
    assert records[0].caption == b"a caption" and records[0].meta == {"url": "http://x"}
    assert records[1].caption == "from json" and records[1].short == "s"
    assert records[2].reject[0] == "missing_file"


def test_webdataset_unsafe_members_are_rejected_not_extracted(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name in ("/etc/evil.jpg", "../up.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    records = list(read_source("webdataset", tmp_path / "bad.tar", COLS))
    assert [r.reject[0] for r in records] == ["unsafe_member"] * 3
    assert not (tmp_path.parent / "up.jpg").exists()


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_source("folder", tmp_path / "nope", COLS)
