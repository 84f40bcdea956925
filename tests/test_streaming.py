"""Training images streamed from shards: every image once an epoch, the right pixels,
a seeded order, a resumed stream that continues the interrupted one."""

import pytest
import torch

from recaption import datasets, paths, streaming
from recaption.models.autoencoder import pooled_edges
from recaption.models.generator_train import train_generator
from recaption.models.training import steps_per_epoch
from recaption.params import load_params
from recaption.stages import train_generator as stage
from test_generator import TINY, config, dataset, tiny_pipeline
from test_generator_sd import write_stage_inputs

from conftest import write_dataset

N, SIZE = 23, 8


@pytest.fixture
def shards(tmp_path):
    """23 distinct 8 px images in shards of 5 (the last holds 3)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    keys = write_dataset(tmp_path / "dataset", images, shard_size=5)
    return tmp_path / "dataset", keys, images


def stream(shards, keys=None, batch=4, buffer=6, workers=0, seed=3):
    folder, all_keys, _ = shards
    index = streaming.shard_index(folder, keys or all_keys)
    return streaming.ImageStream(index, SIZE, batch, seed, buffer, workers)


def epoch(s: streaming.ImageStream, e: int) -> list[tuple[list[int], torch.Tensor]]:
    per = steps_per_epoch(len(s), s.batch_size)
    return [s.batch(step) for step in range(e * per, (e + 1) * per)]


def test_worker_sequences_hold_every_training_image_once_per_epoch(shards):
    index = streaming.shard_index(shards[0], shards[1])
    for workers in (1, 2, 3):
        sequences = streaming.worker_sequences(index, 3, 0, 4, workers)
        assert sorted(i for seq in sequences for _, _, i in seq) == list(range(N))
    # Seeded: the same epoch twice alike, the next epoch another order.
    assert streaming.worker_sequences(index, 3, 0, 4, 2) == streaming.worker_sequences(
        index, 3, 0, 4, 2
    )
    assert streaming.worker_sequences(index, 3, 1, 4, 2) != streaming.worker_sequences(
        index, 3, 0, 4, 2
    )


def test_a_buffer_of_one_row_reads_each_shard_in_order():
    # With no room to shuffle, a worker's rows come in shard order: the buffer is what
    # mixes rows, the shard permutation what mixes shards.
    index = streaming.ShardIndex(("a", "b"), (((0, 0), (1, 1)), ((0, 2), (1, 3), (2, 4))))
    (seq,) = streaming.worker_sequences(index, 0, 0, 1, 1)
    shards = [s for s, _, _ in seq]
    assert shards == sorted(shards) or shards == sorted(shards, reverse=True)
    assert [r for s, r, _ in seq if s == 1] == [0, 1, 2]


def test_round_robin_takes_workers_in_turn_and_skips_the_exhausted():
    assert streaming.round_robin([2, 3, 1]) == [
        (0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (1, 2),
    ]  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_gives_each_image_at_most_once_with_its_own_pixels(shards, workers):
    _, _, images = shards
    s = stream(shards, workers=workers)
    batches = epoch(s, 0)
    seen = [i for idx, _ in batches for i in idx]
    assert len(seen) == len(set(seen)) == steps_per_epoch(N, 4) * 4  # 5 whole batches
    for idx, (pixels,) in batches:
        assert pixels.dtype == torch.uint8 and pixels.shape == (4, 3, SIZE, SIZE)
        assert torch.equal(pixels, images[idx])
    assert seen == s.epoch_order(0)[: len(seen)]


def test_the_order_is_seeded_and_differs_between_epochs(shards):
    first = [idx for idx, _ in epoch(stream(shards), 0)]
    assert first == [idx for idx, _ in epoch(stream(shards), 0)]
    s = stream(shards)
    epoch(s, 0)
    assert [idx for idx, _ in epoch(s, 1)] != first
    assert [idx for idx, _ in epoch(stream(shards, seed=4), 0)] != first


@pytest.mark.parametrize("step", [1, 3, 6])
def test_a_stream_opened_at_a_step_continues_as_the_uninterrupted_one(shards, step):
    # Two workers, so a resumed epoch may start mid-cycle (worker 1's turn).
    whole = stream(shards, batch=3, workers=2)
    expected = [whole.batch(k) for k in range(step + 3)][step:]
    resumed = stream(shards, batch=3, workers=2)
    got = [resumed.batch(k) for k in range(step, step + 3)]
    for (i, (a,)), (j, (b,)) in zip(expected, got, strict=True):
        assert i == j and torch.equal(a, b)


def test_only_the_training_keys_are_streamed(shards):
    folder, keys, images = shards
    chosen = keys[::2]
    s = stream(shards, keys=chosen, batch=3)
    for idx, (pixels,) in epoch(s, 0):
        assert torch.equal(pixels, images[[2 * i for i in idx]])
    with pytest.raises(KeyError, match="9999"):
        streaming.shard_index(folder, [*keys, "9999"])


def test_images_made_in_memory_join_the_datasets_in_one_order(shards, tmp_path):
    folder, keys, images = shards
    gen = torch.Generator().manual_seed(1)
    extra = torch.randint(0, 256, (7, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    corpus = streaming.write_images(tmp_path / "corpus", extra, shard_size=3)
    assert len(corpus.paths) == 3 and corpus.size == 7
    index = streaming.join(streaming.shard_index(folder, keys[:10]), corpus)
    every = torch.cat([images[:10], extra])  # the corpus's indices follow the dataset's
    s = streaming.ImageStream(index, SIZE, 4, seed=3, buffer=6, workers=0)
    for e in range(2):
        seen = []
        for idx, (pixels,) in epoch(s, e):
            assert torch.equal(pixels, every[idx])
            seen += idx
        assert len(seen) == len(set(seen)) == 16  # 4 whole batches of the 17
        assert any(i >= 10 for i in seen) and any(i < 10 for i in seen)


def test_a_streams_identity_changes_with_its_shards_bytes_and_its_order(shards, tmp_path):
    same = stream(shards).identity()
    assert same == stream(shards).identity()
    assert stream(shards, seed=4).identity() != same
    assert stream(shards, buffer=5).identity() != same
    assert stream(shards, keys=shards[1][:-1]).identity() != same
    other = write_dataset(tmp_path / "other", shards[2].flip(0), shard_size=5)  # same keys
    moved = streaming.ImageStream(streaming.shard_index(tmp_path / "other", other), SIZE, 4,
                                  3, 6, 0)  # fmt: skip
    assert moved.index.rows == stream(shards).index.rows and moved.identity() != same


def test_fits_in_memory_counts_uint8_pixels():
    assert datasets.fits_in_memory(10, 8, 10 * 3 * 64)
    assert not datasets.fits_in_memory(11, 8, 10 * 3 * 64)


class Crash(Exception):
    pass


def test_a_streamed_training_run_resumes_to_the_weights_of_the_uninterrupted_one(tmp_path):
    images, captions = dataset()
    keys = write_dataset(tmp_path / "dataset", images, shard_size=3)
    index = streaming.shard_index(tmp_path / "dataset", keys)

    def run(folder, log_step=None):
        pipe = tiny_pipeline()
        stream = streaming.ImageStream(index, 16, 4, seed=0, buffer=3, workers=2)
        cfg = config(steps=16, batch_size=4, checkpoint_every=5, edge_weight=5.0)
        train_generator(pipe, stream, lambda e: captions, cfg, folder, log_step)
        return pipe

    clean = run(tmp_path / "a")

    def crash_at_12(step, metrics):
        if step >= 12:
            raise Crash

    with pytest.raises(Crash):
        run(tmp_path / "b", crash_at_12)
    resumed = run(tmp_path / "b")  # from the step-10 checkpoint, mid-epoch, mid-cycle
    for (name, a), b in zip(clean.unet.named_parameters(), resumed.unet.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_batchs_edge_maps_are_those_of_its_images_among_all():
    images, _ = dataset()
    idx = [5, 0, 3]
    whole = pooled_edges(images, 8)[idx]
    assert torch.equal(pooled_edges(images[idx], 8), whole)
    assert torch.equal(pooled_edges(images, 8, chunk=3), pooled_edges(images, 8))


def test_the_stage_streams_images_that_do_not_fit_and_never_holds_them(project, monkeypatch):
    images, captions = dataset()
    write_stage_inputs(images, captions)
    # The default budget holds them; "never" holds any number.
    held = len(images) * 3 * 16 * 16
    assert not stage.streams(load_params(project.write_params()), held)
    never = project.write_params(data={"stream": {"mode": "never", "memory_gb": 1e-6}})
    assert not stage.streams(load_params(never), held)
    project.write_params(
        data={"stream": {"mode": "auto", "memory_gb": 1e-6, "buffer": 4, "workers": 0}},
        generator={"model": TINY, "steps": 6, "batch_size": 4, "checkpoint_every": 0,
                   "precision": "fp32", "device": "cpu"},
    )  # fmt: skip
    assert stage.streams(load_params(paths.PARAMS), held)
    refuse = lambda *a, **k: pytest.fail("the images were loaded into memory")  # noqa: E731
    monkeypatch.setattr(datasets, "images_tensor", refuse)
    metrics = stage.main()
    assert metrics["steps"] == 6 and metrics["loss"] > 0
    assert (paths.GENERATOR / "model_index.json").is_file()
