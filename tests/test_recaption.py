"""recaption: every image captioned from cached embeddings, in chunks that survive a kill."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption import embed, io, paths, runner
from recaption.metrics import tags
from recaption.models import captioner as cap
from recaption.models.captioner import Captioner
from recaption.params import Params
from recaption.stages import recaption as stage

TINY_LM = str(Path(__file__).parent / "data" / "tiny-gpt2.json")


class Killed(Exception):
    """Stands in for the process dying mid-chunk."""


def keys_table(keys: list[str]) -> pa.Table:
    return pa.table({"key": pa.array(keys, pa.string()), "n": pa.array([len(k) for k in keys])})


class KeysWorker:
    """A stage worker that records the chunks it computes and dies at one of them."""

    def __init__(self, calls: list[int] | None = None, dies_at: int | None = None):
        self.calls, self.dies_at = calls if calls is not None else [], dies_at

    def __call__(self, unit: dict) -> pa.Table:
        self.calls.append(unit["index"])
        if unit["index"] == self.dies_at:
            raise Killed
        return keys_table(unit["keys"])


def test_run_chunks_resumes_after_an_interruption_and_matches_a_clean_run(tmp_path):
    keys = [f"{i:04d}" for i in range(23)]
    params, calls = Params(), []
    work = tmp_path / "work"
    with pytest.raises(Killed):
        runner.run_chunks(keys, 5, work, "fp", KeysWorker, {"dies_at": 3}, params)
    assert len(list(work.iterdir())) == 3  # chunks 0-2 finished, nothing else
    run = runner.run_chunks(keys, 5, work, "fp", KeysWorker, {"calls": calls}, params)
    assert (run.reused, run.computed, calls) == (3, 2, [3, 4])
    clean = runner.run_chunks(keys, 5, tmp_path / "clean", "fp", KeysWorker, {}, params)
    assert run.table.equals(clean.table)


def test_a_new_fingerprint_recomputes_every_chunk(tmp_path):
    keys = [f"{i:04d}" for i in range(10)]
    runner.run_chunks(keys, 4, tmp_path, "old", KeysWorker, {}, Params())
    run = runner.run_chunks(keys, 4, tmp_path, "new", KeysWorker, {}, Params())
    assert (run.reused, run.computed) == (0, 3)
    assert len(list(tmp_path.iterdir())) == 3  # the old run's chunks are gone


@pytest.fixture
def recaption_inputs(project):
    """Cached embeddings of 30 images and two tiny captioners, as the stages leave them."""
    rng = np.random.default_rng(0)
    keys = [f"{i:08d}" for i in range(30)]
    emb = embed.Embeddings(
        keys=keys,
        shas=[io.sha256_bytes(k.encode()) for k in keys],
        clip="clip-fp",
        vectors=rng.standard_normal((30, 8)).astype(np.float16),
        grid=rng.standard_normal((30, 12)).astype(np.float16),
    )
    paths.IMAGE_EMBEDDINGS.mkdir(parents=True)
    io.write_shard(paths.IMAGE_EMBEDDINGS, 0, embed.to_table(emb))
    for seed, stage_name in enumerate(("stage1", "stage2")):
        model = cap.create(
            TINY_LM, ["a red circle", "two blue squares"], 300, (8, 4, 3), 2, 16, seed
        )
        model.save(paths.CAPTIONER / stage_name)
    project.write_params(
        recaption={
            "batch_size": 4,
            "chunk_size": 8,
            "short": {"max_new_tokens": 6},
            "descriptive": {"strategy": "sample", "max_new_tokens": 8},
        }
    )
    return keys


def test_recaption_resumes_a_killed_run_and_writes_what_a_clean_run_writes(
    recaption_inputs, project, monkeypatch
):
    real = Captioner.generate
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # 2 models x 2 batches per chunk: dies inside chunk 2
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Captioner, "generate", dying)
    with pytest.raises(Killed):
        stage.main()
    assert not paths.SYNTHETIC_CAPTIONS.exists()
    calls["n"] = 100
    summary = stage.main()
    assert (summary["chunks_reused"], summary["chunks_computed"]) == (2, 2)
    assert not stage.WORK_DIR.exists()  # cleared once the output is written
    resumed = paths.SYNTHETIC_CAPTIONS.read_bytes()
    paths.SYNTHETIC_CAPTIONS.unlink()
    stage.main()
    assert paths.SYNTHETIC_CAPTIONS.read_bytes() == resumed  # sampling included
    table = pq.read_table(paths.SYNTHETIC_CAPTIONS)
    assert table.column("key").to_pylist() == recaption_inputs
    assert set(table.column_names) == {
        "key",
        "short",
        "descriptive",
        "short_captioner",
        "descriptive_captioner",
    }
    assert set(table.column("short_captioner").to_pylist()) == {
        cap.fingerprint(paths.CAPTIONER / "stage1")
    }


def test_recaption_writes_the_tags_its_descriptive_captions_state(
    recaption_inputs, project, monkeypatch
):
    caption = 'A large red circle in the center. The letter "K" is on a gray background.'

    def fixed(self, features, *args, **kwargs):  # every image gets the same known caption
        return [caption] * len(features)

    monkeypatch.setattr(Captioner, "generate", fixed)
    stage.main()
    table = pq.read_table(paths.CAPTION_TAGS)
    assert table.schema.equals(tags.TAG_SCHEMA)
    assert table.column("key").to_pylist() == recaption_inputs  # every image, sorted by key
    assert table.slice(0, 1).drop(["key"]).to_pylist() == [
        {
            "main_shape": "circle",
            "main_colour": "red",
            "background": "gray",
            "colours": ["red"],
            "has_text": True,
            "text": "K",
        }
    ]
    written = paths.CAPTION_TAGS.read_bytes()
    stage.main()
    assert paths.CAPTION_TAGS.read_bytes() == written
