"""Atomic writes: what a failed or killed writer leaves, and the failpoints that kill it;
the content hash of a folder."""

import os
import signal
import subprocess
import sys

import pytest

from recaption import io


def test_a_failed_block_keeps_the_old_output_and_leaves_no_temporary(tmp_path):
    io.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("new")
        raise RuntimeError
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_next_write_removes_what_killed_writers_left(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid no longer runs
    file = tmp_path / f"{io.TEMP_PREFIX}{gone.pid}-0a1b2c3d-report.json"
    file.write_text("half written")
    folder = tmp_path / f"{io.TEMP_PREFIX}{gone.pid}-0a1b2c3d-model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"half")
    running = tmp_path / f"{io.TEMP_PREFIX}{os.getpid()}-0a1b2c3d-other.json"
    running.write_text("a live writer's")
    io.write_json(tmp_path / "metrics.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "metrics.json"])


def test_a_directory_output_is_replaced_whole(tmp_path):
    with io.atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("2")
    with io.atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("3")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failpoint_kills_the_process_there_and_the_trace_names_each_one(tmp_path):
    script = "from recaption import io; io.write_text('a.txt', 'x'); io.write_text('b.txt', 'y')"
    env = {**os.environ, io.TRACE_ENV: str(tmp_path / "trace.tsv")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={
        **env, io.KILL_AT_ENV: "before-rename:b.txt"})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "a.txt").read_text() == "x" and not (tmp_path / "b.txt").exists()
    assert [line.split("\t")[1] for line in (tmp_path / "trace.tsv").read_text().splitlines()] == [
        "before-rename:a.txt", "after-rename:a.txt", "before-rename:b.txt"
    ]  # fmt: skip
    leftover = [p.name for p in tmp_path.iterdir() if p.name.startswith(io.TEMP_PREFIX)]
    assert len(leftover) == 1 and leftover[0].endswith("-b.txt")  # killed mid-write...
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "trace.tsv"]  # ...gone


def test_tree_hash_covers_paths_and_bytes_but_not_hidden_files_or_the_card(tmp_path):
    """Known answer: sha256 of "a.txt\\0<sha256 a>\\nlineage.json\\0...\\nsub/b.txt\\0...\\n"."""
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "a.txt").write_text("a")
    (model / "sub" / "b.txt").write_text("b")
    (model / io.LINEAGE_NAME).write_text("{}")
    known = "94f0604266a87f6647d2a35696fb11c58181bb2c7b80f33194343d4e04404a21"
    assert io.tree_hash(model) == known
    (model / io.CARD_NAME).write_text("a card, written from the lineage")
    (model / f"{io.TEMP_PREFIX}1-0a1b2c3d-x").write_text("a killed writer's leftover")
    assert io.tree_hash(model) == known
    (model / io.LINEAGE_NAME).unlink()  # no longer a model folder: its README.md counts
    assert io.tree_hash(model) == "8090116fadf62d63197b2a7cd56bd826d59bf74b1455825613596e91b6f5f9db"
    assert io.tree_hash(model / "a.txt") == io.sha256_bytes(b"a")
