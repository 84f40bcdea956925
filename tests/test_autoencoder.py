"""The autoencoder, its latent cache, and the generator in its latent space."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recaption import io, latents, paths, streaming
from recaption.models import autoencoder as ae_lib
from recaption.models import generator as gen_lib
from recaption.models.generator_train import train_generator
from recaption.models.training import Checkpoints
from recaption.stages import train_autoencoder as stage
from test_generator import config, dataset, pixels

from conftest import encode, write_dataset

TINY_KL = Path(__file__).parent / "data" / "tiny-kl-16.json"
TINY_UNET = Path(__file__).parent / "data" / "tiny-unet-16.json"


def ae_config(**overrides) -> ae_lib.AutoencoderTrainConfig:
    fields = dict(steps=80, batch_size=8, lr=3e-3, warmup_steps=5, weight_decay=0.0,
                  kl_weight=1e-4, grad_clip=1.0, precision="fp32", seed=0,
                  log_every=20)  # fmt: skip
    return ae_lib.AutoencoderTrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def trained() -> ae_lib.AutoencoderKL:
    images, _ = dataset()
    vae = ae_lib.create_builtin(TINY_KL, 16, seed=0)
    ae_lib.train_autoencoder(vae, images, ae_config())
    return vae


def l1(vae, images) -> float:
    return (ae_lib.reconstruct(vae, images).float() - images.float()).abs().mean().item() / 255


def test_training_lowers_the_reconstruction_error_and_sets_unit_variance_latents(trained):
    images, _ = dataset()
    fresh = ae_lib.create_builtin(TINY_KL, 16, seed=0)
    assert l1(trained, images) < 0.5 * l1(fresh, images)
    scaled = ae_lib.encode(trained, images) * trained.config.scaling_factor
    assert scaled.shape == (8, 4, 8, 8)
    assert scaled.std().item() == pytest.approx(1.0, rel=0.05)


def test_a_saved_autoencoder_loads_and_reconstructs_the_same(trained, tmp_path):
    images, _ = dataset()
    trained.save_pretrained(tmp_path / "ae", safe_serialization=True)
    assert not list((tmp_path / "ae").glob("*.bin"))
    loaded = ae_lib.load(tmp_path / "ae")
    assert torch.equal(ae_lib.reconstruct(loaded, images), ae_lib.reconstruct(trained, images))
    with pytest.raises(ae_lib.AutoencoderError, match="config.json is missing"):
        ae_lib.load(tmp_path)


class Crash(Exception):
    pass


@pytest.mark.parametrize("streamed", [False, True])
def test_a_killed_autoencoder_training_resumes_to_the_same_weights(tmp_path, streamed):
    images, _ = dataset()
    if streamed:  # 8 images in shards of 3, batches of 6: a resumed step starts mid-epoch
        keys = write_dataset(tmp_path / "dataset", images, shard_size=3)
        index = streaming.shard_index(tmp_path / "dataset", keys)
        images = streaming.ImageStream(index, 16, 6, seed=0, buffer=3, workers=2)
    config = ae_config(steps=12, log_every=1, edge_weight=2.0, batch_size=6)
    clean = ae_lib.create_builtin(TINY_KL, 16, seed=0)
    clean_result = ae_lib.train_autoencoder(clean, images, config)

    def crash_at_9(step, metrics):
        if step >= 9:
            raise Crash

    folder = Checkpoints(tmp_path / "ck", every=4)
    with pytest.raises(Crash):
        ae_lib.train_autoencoder(ae_lib.create_builtin(TINY_KL, 16, seed=0), images, config,
                                 crash_at_9, checkpoints=folder)  # fmt: skip
    resumed = ae_lib.create_builtin(TINY_KL, 16, seed=1)  # the checkpoint's weights replace these
    result = ae_lib.train_autoencoder(resumed, images, config, checkpoints=folder)
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert result["l1"] == clean_result["l1"]
    assert result["scaling_factor"] == clean_result["scaling_factor"]


def test_edge_weights_are_one_on_flat_ground_and_grow_at_an_outline():
    x = torch.full((1, 3, 9, 9), -1.0)  # black
    assert torch.equal(ae_lib.edge_weights(x, 10.0), torch.ones(1, 1, 9, 9))
    x[:, :, 4, 4] = 1.0  # one white pixel: brightness 2 above its neighbours
    w = ae_lib.edge_weights(x, 10.0)[0, 0]
    # At the pixel: |1 - (1 - 8) / 9| = 16/9; the 3x3 max spreads the largest distance
    # in reach, so the ring two pixels out sees the pixel's neighbours' 2/9 only.
    assert w[4, 4].item() == pytest.approx(1 + 10 * 16 / 9)
    assert w[4, 6].item() == pytest.approx(1 + 10 * 2 / 9)
    assert w[0, 0].item() == 1.0
    assert torch.equal(ae_lib.edge_weights(x, 0.0), torch.ones(1, 1, 9, 9))


def test_edge_weighting_keeps_a_small_object_the_plain_l1_blurs():
    images, _ = dataset()
    errors = {}
    for edge in (0.0, 20.0):
        vae = ae_lib.create_builtin(TINY_KL, 16, seed=0)
        ae_lib.train_autoencoder(vae, images, ae_config(edge_weight=edge))
        recon = ae_lib.reconstruct(vae, images).float()
        mask = ae_lib.edge_weights(ae_lib.to_unit(images), 1.0) > 1.05  # near outlines
        errors[edge] = ((recon - images.float()).abs().mean(1, keepdim=True)[mask]).mean()
    assert errors[20.0] < errors[0.0]


def test_latents_are_cached_and_a_rerun_encodes_only_new_pixels(trained, tmp_path):
    images, _ = dataset()
    keys = write_dataset(tmp_path / "dataset", images)
    out = tmp_path / "latents"
    first = latents.update(trained, "ae-1", tmp_path / "dataset", out, 16)
    assert (first.images, first.encoded, first.reused, first.shards_written) == (8, 8, 0, 3)
    expected = ae_lib.encode(trained, images)
    assert torch.allclose(latents.read(out, keys), expected, atol=1e-6)
    assert torch.equal(latents.read(out, keys[::-1]), latents.read(out, keys).flip(0))
    # Beside each latent, its image's edge map on the latent grid (what the generator's
    # edge-weighted loss reads), so training on the cache needs no pixels.
    assert torch.equal(latents.read(out, keys, edges=True), ae_lib.pooled_edges(images, 8))
    assert latents.row_bytes(out) == 4 * (4 + 1) * 8 * 8
    stamps = {p: p.stat().st_mtime_ns for p in out.glob(io.SHARD_GLOB)}

    again = latents.update(trained, "ae-1", tmp_path / "dataset", out, 16)
    assert (again.encoded, again.reused, again.shards_written) == (0, 8, 0)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob(io.SHARD_GLOB)}

    # Two new images (a third shard grows, a fourth appears): only they are encoded.
    new = images[:2].clone()
    new[:, :, 0, 0] = 7
    grown = torch.cat([images, new])
    keys = write_dataset(tmp_path / "dataset", grown)
    more = latents.update(trained, "ae-1", tmp_path / "dataset", out, 16)
    assert (more.images, more.encoded, more.reused) == (10, 2, 8)
    assert torch.allclose(latents.read(out, keys), ae_lib.encode(trained, grown), atol=1e-6)
    assert torch.equal(latents.read(out, keys, edges=True), ae_lib.pooled_edges(grown, 8))

    # Another autoencoder: nothing is reused.
    other = latents.update(trained, "ae-2", tmp_path / "dataset", out, 16)
    assert (other.encoded, other.reused) == (10, 0)
    with pytest.raises(KeyError, match="no cached latent"):
        latents.read(out, ["nope"])


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_latents_stream_each_once_an_epoch_with_their_edge_maps(trained, tmp_path,
                                                                      workers):  # fmt: skip
    images, _ = dataset()
    keys = write_dataset(tmp_path / "dataset", images, shard_size=3)
    latents.update(trained, "ae-1", tmp_path / "dataset", tmp_path / "latents", 16)
    chosen = keys[1:]  # the training keys: not every cached row
    held = latents.read(tmp_path / "latents", chosen)
    edges = latents.read(tmp_path / "latents", chosen, edges=True)
    index = streaming.shard_index(tmp_path / "latents", chosen)
    stream = streaming.LatentStream(index, 0.5, 3, seed=1, buffer=2, workers=workers)
    seen = []
    for step in range(2):  # an epoch: 7 rows, 2 whole batches of 3
        idx, (z, e) = stream.batch(step)
        assert z.shape == (3, 4, 8, 8) and e.shape == (3, 1, 8, 8)
        assert torch.equal(z, held[idx] * 0.5) and torch.equal(e, edges[idx])
        seen += idx
    assert len(seen) == len(set(seen)) == 6 and seen == stream.epoch_order(0)[:6]


def test_a_latent_streams_batches_are_weighed_by_their_own_edge_maps(trained, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    from recaption.models import generator_train
    from recaption.models.tokenizer import train_tokenizer

    images, captions = dataset()
    keys = write_dataset(tmp_path / "dataset", images, shard_size=3)
    latents.update(trained, "ae-1", tmp_path / "dataset", tmp_path / "latents", 16)
    edges = latents.read(tmp_path / "latents", keys, edges=True)
    index = streaming.shard_index(tmp_path / "latents", keys)
    stream = streaming.LatentStream(index, 1.0, 4, seed=1, buffer=2, workers=0)
    order = stream.epoch_order(0)
    seen = []
    forward = generator_train.Denoiser.forward

    def spy(self, x0, t, noise, captions, weights=None):
        seen.append(weights)
        return forward(self, x0, t, noise, captions, weights)

    monkeypatch.setattr(generator_train.Denoiser, "forward", spy)
    tok = train_tokenizer(captions * 3, 200, wrap=True)
    pipe = gen_lib.create_builtin(TINY_UNET, tok, 16, 0, trained)
    train_generator(pipe, stream, lambda epoch: captions, config(steps=2, batch_size=4,
                                                                 edge_weight=5.0))  # fmt: skip
    assert len(seen) == 2  # one forward per step
    for step, weights in enumerate(seen):
        assert torch.equal(weights, 1 + 5.0 * edges[order[4 * step : 4 * step + 4]])


def test_the_generator_trains_and_draws_in_the_latent_space(trained):
    images, captions = dataset()
    from recaption.models.tokenizer import train_tokenizer

    tok = train_tokenizer(captions * 3, 200, wrap=True)
    pipe = gen_lib.create_builtin(TINY_UNET, tok, 16, 0, trained)
    assert (pipe.unet.config.sample_size, pipe.unet.config.in_channels) == (8, 4)
    assert pipe.image_size == 16
    data = ae_lib.encode(trained, images) * trained.config.scaling_factor
    vae_before = {n: p.clone() for n, p in trained.named_parameters()}
    metrics = train_generator(pipe, data, lambda epoch: captions, config(steps=20))
    assert metrics["loss"] < 1.0
    assert all(torch.equal(p, vae_before[n]) for n, p in trained.named_parameters())
    drawn = pixels(pipe(["red on the left"], num_inference_steps=3, seed=[0]))
    assert drawn.shape == (1, 16, 16, 3) and drawn.dtype == np.uint8
    with pytest.raises(gen_lib.GeneratorError, match="not a multiple"):
        gen_lib.create_builtin(TINY_UNET, tok, 15, 0, trained)


def test_a_patch_pipeline_denoises_patches_and_saves_its_patch_size(tmp_path):
    import json

    from recaption.models.tokenizer import train_tokenizer

    spec = {**json.loads(TINY_UNET.read_text()), "patch_size": 2}
    (tmp_path / "patch.json").write_text(json.dumps(spec))
    images, captions = dataset()
    tok = train_tokenizer(captions * 3, 200, wrap=True)
    pipe = gen_lib.create_builtin(tmp_path / "patch.json", tok, 16, 0)
    unet = pipe.unet.config
    assert (pipe.patch_size, unet.sample_size, unet.in_channels) == (2, 8, 12)
    x = images.float() / 127.5 - 1
    assert torch.equal(pipe.to_images(pipe.to_model_space(x)), x)  # lossless
    train_generator(pipe, images, lambda epoch: captions, config(steps=10))
    pipe.save_pretrained(tmp_path / "saved")
    loaded = gen_lib.load(tmp_path / "saved")
    assert loaded.patch_size == 2 and loaded.image_size == 16
    drawn = [pixels(p(["red on the left"], num_inference_steps=3, seed=[0]))
             for p in (pipe, loaded)]  # fmt: skip
    assert drawn[0].shape == (1, 16, 16, 3)
    assert np.array_equal(*drawn)


def test_two_accumulated_micro_batches_train_what_the_whole_batch_does():
    images, _ = dataset()
    whole, halves = (ae_lib.create_builtin(TINY_KL, 16, seed=0) for _ in range(2))
    ae_lib.train_autoencoder(whole, images, ae_config(steps=4))
    ae_lib.train_autoencoder(halves, images, ae_config(steps=4, grad_accumulation=2))
    b = halves.state_dict()
    # The same rows and noise, the float sums in another order. Adam turns the float noise
    # of a gradient that is zero in exact arithmetic (an attention key's bias) into steps
    # of up to lr: hence the absolute tolerance, far below the weights' scale.
    for name, a in whole.state_dict().items():
        torch.testing.assert_close(a, b[name], rtol=1e-4, atol=1e-4, msg=name)


def test_without_an_autoencoder_the_stage_writes_every_output_dvc_declares(project):
    """autoencoder.model: none (the default, and any saved pipeline): DVC fails a stage
    that leaves a declared output unwritten."""
    assert stage.main() == {"autoencoder": "none"}
    for path in (paths.AUTOENCODER / "lineage.json", paths.AUTOENCODER_REPORT,
                 paths.AUTOENCODER_FIGURE, paths.DVCLIVE / "train_autoencoder"):  # fmt: skip
        assert path.exists(), path
    assert not ae_lib.is_trained(paths.AUTOENCODER)


def test_the_corpus_adds_fresh_renders_of_its_own_seed_after_the_dataset_images(project):
    from recaption.params import load_params
    from recaption.synthetic import world_config
    from recaption.world import make_example

    images, _ = dataset()  # 16 px, as the project's data.image_size
    rows = [{"image": encode(Image.fromarray(i.permute(1, 2, 0).numpy()))} for i in images[:3]]
    project.write_params(autoencoder={"corpus": 4, "corpus_seed": 11})
    params = load_params()
    out = stage.training_images(params, rows)
    assert out.shape == (7, 3, 16, 16) and torch.equal(out[:3], images[:3])
    for i in range(4):
        fresh = make_example(11, i, world_config(params)).image
        assert torch.equal(out[3 + i], torch.from_numpy(np.array(fresh)).permute(2, 0, 1))
    project.write_params(data={"source": "folder"}, autoencoder={"corpus": 4, "corpus_seed": 7})
    params = load_params()  # real data: no world renders, so the seed cannot clash either
    assert stage.corpus_size(params) == 0 and len(stage.training_images(params, rows)) == 3


def test_an_autoencoder_corpus_seed_equal_to_the_dataset_or_the_evaluation_is_refused(project):
    from recaption.params import ParamsError, load_params

    for seed in (7, 99):  # the project's seed, then evaluate.seed
        project.write_params(evaluate={"seed": 99}, autoencoder={"corpus": 5, "corpus_seed": seed})
        with pytest.raises(ParamsError, match="autoencoder.corpus_seed .* must differ"):
            load_params()


def test_the_stage_streams_the_same_images_it_would_hold(project, tmp_path, monkeypatch):
    from recaption import datasets
    from recaption.params import load_params
    from recaption.stages import ingest, prompts, sample

    ingest.main()
    prompts.main()
    sample.main()  # the splits
    project.write_params(autoencoder={"corpus": 5, "corpus_seed": 11, "batch_size": 4})
    keys, held = stage._split()
    assert held and not {r["key"] for r in held} & set(keys)
    images = stage.training_data(load_params(), keys, tmp_path / "scratch")
    assert torch.is_tensor(images) and len(images) == len(keys) + 5
    project.write_params(autoencoder={"corpus": 5, "corpus_seed": 11, "batch_size": 4},
                         data={"stream": {"memory_gb": 1e-6, "workers": 0}})  # fmt: skip
    refuse = lambda *a, **k: pytest.fail("the training images were held")  # noqa: E731
    monkeypatch.setattr(datasets, "images_tensor", refuse)
    stream = stage.training_data(load_params(), keys, tmp_path / "scratch")
    assert isinstance(stream, streaming.ImageStream) and len(stream) == len(images)
    seen = []
    for step in range(len(stream) // 4):  # one epoch: the dataset's images and the corpus's
        idx, (batch,) = stream.batch(step)
        assert torch.equal(batch, images[idx])
        seen += idx
    assert len(set(seen)) == len(seen) and max(seen) >= len(keys) > min(seen)


def test_without_an_autoencoder_no_other_key_changes_what_the_stage_writes(project):
    """With model none the other autoencoder keys mean nothing: editing one must not
    change the folder train_generator depends on (so nothing downstream reruns)."""
    stage.main()
    before = (paths.AUTOENCODER / "lineage.json").read_bytes()
    project.write_params(autoencoder={"steps": 7, "corpus": 100, "edge_weight": 3.0})
    stage.main()
    assert (paths.AUTOENCODER / "lineage.json").read_bytes() == before
