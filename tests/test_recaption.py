"""recaption: every image captioned from cached embeddings, in chunks that survive a kill."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recaption import embed, io, paths, runner
from recaption.metrics import tags
from recaption.models import captioner as cap
from recaption.models.captioner import Captioner, Decoding
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


def write_embeddings(n: int, changed: tuple[int, ...] = ()) -> list[str]:
    """Cached embeddings of images 0..n-1, as embed leaves them; an image's pixels (hash
    and vectors) depend on its index only, or on `changed` when listed there."""
    keys = [f"{i:08d}" for i in range(n)]
    versions = [int(i in changed) for i in range(n)]
    rows = [np.random.default_rng([i, v]).standard_normal(20) for i, v in enumerate(versions)]
    matrix = np.stack(rows).astype(np.float16)  # (n, 8 pooled + 12 grid)
    emb = embed.Embeddings(
        keys=keys,
        shas=[io.sha256_bytes(f"{k}:{v}".encode()) for k, v in zip(keys, versions, strict=True)],
        clip="clip-fp",
        vectors=matrix[:, :8],
        grid=matrix[:, 8:],
    )
    paths.IMAGE_EMBEDDINGS.mkdir(parents=True, exist_ok=True)
    io.write_shard(paths.IMAGE_EMBEDDINGS, 0, embed.to_table(emb))
    return keys


def save_captioners(seed: int = 0) -> None:
    """Tiny stage-1 and stage-2 captioners, as the captioner stages leave them."""
    for offset, stage_name in enumerate(("stage1", "stage2")):
        model = cap.create(
            TINY_LM, ["a red circle", "two blue squares"], 300, (8, 4, 3), 2, 16, seed + offset
        )
        model.save(paths.CAPTIONER / stage_name)


@pytest.fixture
def recaption_inputs(project):
    """Cached embeddings of 30 images and two tiny captioners, as the stages leave them."""
    keys = write_embeddings(30)
    save_captioners()
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
        "sha256",
        "short",
        "descriptive",
        "short_captioner",
        "descriptive_captioner",
        "recipe",
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


class CountingGenerate:
    """Counts the images each captioner decodes (rows of features through `generate`)."""

    def __init__(self, monkeypatch):
        self.rows, real = 0, Captioner.generate

        def counting(model, features, *args, **kwargs):
            self.rows += len(features)
            return real(model, features, *args, **kwargs)

        monkeypatch.setattr(Captioner, "generate", counting)


def outputs() -> tuple[bytes, bytes]:
    return paths.SYNTHETIC_CAPTIONS.read_bytes(), paths.CAPTION_TAGS.read_bytes()


DETERMINISTIC = {
    "batch_size": 4,
    "chunk_size": 8,
    "short": {"max_new_tokens": 6},
    "descriptive": {"strategy": "beam", "num_beams": 2, "max_new_tokens": 8},
}


def test_recaption_decodes_only_new_or_changed_images_and_writes_a_full_runs_bytes(
    recaption_inputs, project, monkeypatch
):
    project.write_params(recaption=DETERMINISTIC)
    counter = CountingGenerate(monkeypatch)
    first = stage.main()
    assert counter.rows == 2 * 30 and (first["decoded"], first["reused"]) == (30, 0)
    old = pq.read_table(paths.SYNTHETIC_CAPTIONS)

    # The dataset grows by 6 images and image 3's pixels change: 7 images are decoded.
    write_embeddings(36, changed=(3,))
    counter.rows = 0
    summary = stage.main()
    assert counter.rows == 2 * 7 and (summary["decoded"], summary["reused"]) == (7, 29)
    incremental = outputs()
    table = pq.read_table(paths.SYNTHETIC_CAPTIONS)
    unchanged = [i for i in range(30) if i != 3]
    assert table.take(unchanged).equals(old.take(unchanged))

    # From scratch on the grown dataset: the same bytes, captions and tags.
    paths.SYNTHETIC_CAPTIONS.unlink()
    paths.CAPTION_TAGS.unlink()
    counter.rows = 0
    stage.main()
    assert counter.rows == 2 * 36
    assert outputs() == incremental


def test_a_new_captioner_or_decoding_recaptions_every_image(recaption_inputs, project, monkeypatch):
    project.write_params(recaption=DETERMINISTIC)
    stage.main()
    counter = CountingGenerate(monkeypatch)
    save_captioners(seed=5)  # retrained captioners
    assert stage.main()["decoded"] == 30 and counter.rows == 2 * 30
    counter.rows = 0
    project.write_params(recaption={**DETERMINISTIC, "short": {"max_new_tokens": 5}})
    assert stage.main()["reused"] == 0 and counter.rows == 2 * 30
    counter.rows = 0
    assert stage.main()["decoded"] == 0 and counter.rows == 0  # nothing changed


def test_sampled_captions_are_never_reused(recaption_inputs, project):
    stage.main()  # the fixture samples the descriptive captions
    assert stage.main()["reused"] == 0


def test_a_captions_row_does_not_depend_on_its_batch():
    """The recipe leaves the batch out: greedy and beam rows decode independently."""
    model = cap.create(TINY_LM, ["a red circle", "two blue squares"], 300, (8, 4, 3), 2, 16, 0)
    features = torch.from_numpy(np.random.default_rng(0).standard_normal((40, 20))).float()
    for decoding in (Decoding(max_new_tokens=8), Decoding("beam", 8, num_beams=2)):
        for compute in ("fp32", "bf16"):
            whole = stage.caption_batches(model, features, decoding, 40, 0, compute)
            pieces = stage.caption_batches(model, features, decoding, 7, 0, compute)
            alone = stage.caption_batches(model, features[5:6], decoding, 1, 0, compute)
            assert pieces == whole and alone == whole[5:6]
