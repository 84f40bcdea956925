"""The generator pipeline: save/load, sampling, training with EMA, checkpoints that resume."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recaption.models import generator as gen_lib
from recaption.models.generator_train import (
    GeneratorTrainConfig,
    denoising_loss,
    to_model_space,
    train_generator,
)
from recaption.models.tokenizer import train_tokenizer
from recaption.models.training import EMA
from recaption.params import load_params
from recaption.stages import train_generator as stage

TINY = str(Path(__file__).parent / "data" / "tiny-unet-16.json")
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 50), "black": (0, 0, 0)}


def dataset() -> tuple[torch.Tensor, list[str]]:
    """Eight 16 px images: a colour filling the left or right half, and captions saying so."""
    images, captions = [], []
    for name, rgb in COLOURS.items():
        for side in ("left", "right"):
            img = torch.full((3, 16, 16), 255, dtype=torch.uint8)
            cols = slice(0, 8) if side == "left" else slice(8, 16)
            img[:, :, cols] = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)
            images.append(img)
            captions.append(f"{name} on the {side}")
    return torch.stack(images), captions


def tiny_pipeline(seed: int = 0) -> gen_lib.GeneratorPipeline:
    _, captions = dataset()
    tok = train_tokenizer(captions * 3, 200, wrap=True)
    return gen_lib.create_builtin(TINY, tok, 16, seed)


def config(**overrides) -> GeneratorTrainConfig:
    fields = dict(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, weight_decay=0.0,
                  grad_clip=1.0, cond_dropout=0.1, ema_decay=0.9, checkpoint_every=0,
                  train_text_encoder=True, precision="fp32", seed=0, log_every=10)  # fmt: skip
    return GeneratorTrainConfig(**{**fields, **overrides})


def fixed_loss(pipe, images, captions) -> float:
    with torch.no_grad():
        return denoising_loss(pipe, to_model_space(pipe, images), captions,
                              torch.Generator().manual_seed(123)).item()  # fmt: skip


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i) for i in images])


def test_training_lowers_the_denoising_loss_and_leaves_ema_weights(tmp_path):
    images, captions = dataset()
    pipe = tiny_pipeline()
    before = fixed_loss(pipe, images, captions)
    logged = []
    result = train_generator(pipe, images, lambda epoch: captions, config(),
                             log_step=lambda s, m: logged.append((s, m["loss"])))  # fmt: skip
    assert fixed_loss(pipe, images, captions) < 0.6 * before
    assert [s for s, _ in logged] == [10, 20, 30, 40, 50, 60]
    assert result["images_per_s"] > 0


def test_ema_of_a_short_run_is_not_pulled_toward_the_initialisation():
    weight = torch.nn.Parameter(torch.zeros(4))  # the initialisation
    ema = EMA({"w": weight}, decay=0.995)
    with torch.no_grad():
        weight.fill_(1.0)  # where training took it
    for step in range(50):
        ema.update({"w": weight}, step)
    # A fixed 0.995 from the first step would leave 0.995**50 = 78 % of the initialisation.
    assert ema.shadow["w"].min().item() > 1 - 1e-6
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.995


def test_short_training_saves_weights_far_from_the_initialisation():
    images, captions = dataset()
    pipe = tiny_pipeline()
    start = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    before = fixed_loss(pipe, images, captions)
    train_generator(pipe, images, lambda epoch: captions, config(steps=30, ema_decay=0.995))
    # The saved (EMA) weights carry the training: the loss falls as it does without EMA.
    assert fixed_loss(pipe, images, captions) < 0.8 * before
    moved = [(p.detach() - start[n]).norm() / start[n].norm().clamp_min(1e-6)
             for n, p in pipe.unet.named_parameters() if n.endswith("weight")]  # fmt: skip
    assert float(torch.stack(moved).median()) > 0.01


def test_a_saved_pipeline_loads_samples_the_same_and_fine_tunes(tmp_path):
    images, captions = dataset()
    pipe = tiny_pipeline()
    train_generator(pipe, images, lambda epoch: captions, config(steps=10))
    pipe.save_pretrained(tmp_path / "gen")
    files = {p.name for p in (tmp_path / "gen").rglob("*") if p.is_file()}
    assert "diffusion_pytorch_model.safetensors" in files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".ckpt", ".pkl")) for f in files)
    loaded = gen_lib.load(tmp_path / "gen")
    a = pixels(pipe(["red on the left"], num_inference_steps=4, seed=3))
    assert np.array_equal(a, pixels(loaded(["red on the left"], num_inference_steps=4, seed=3)))
    assert not np.array_equal(a, pixels(loaded(["red on the left"], num_inference_steps=4, seed=4)))
    before = fixed_loss(loaded, images, captions)
    train_generator(loaded, images, lambda epoch: captions, config(steps=30, lr=1e-3))
    assert fixed_loss(loaded, images, captions) < before


def test_a_pipeline_loaded_in_bf16_holds_bf16_weights_and_draws_under_autocast(tmp_path):
    from recaption import precision

    tiny_pipeline().save_pretrained(tmp_path / "gen")
    loaded = gen_lib.load(tmp_path / "gen", precision.weights_dtype("bf16"))
    assert {p.dtype for p in loaded.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.text_encoder.parameters()} == {torch.bfloat16}
    with precision.autocast("bf16"):
        (image,) = loaded(["red on the left"], num_inference_steps=2, seed=3)
    assert image.size == (16, 16)


class Crash(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    images, captions = dataset()
    cfg = config(steps=20, checkpoint_every=5, log_every=1)
    clean, clean_log = tiny_pipeline(), []
    clean_result = train_generator(
        clean, images, lambda e: captions, cfg, tmp_path / "a", lambda *s: clean_log.append(s)
    )

    def crash_at_13(step, metrics):
        if step >= 13:
            raise Crash

    crashed = tiny_pipeline()
    with pytest.raises(Crash):
        train_generator(crashed, images, lambda e: captions, config(
            steps=20, checkpoint_every=5, log_every=1), tmp_path / "b", crash_at_13)  # fmt: skip
    assert load_file(tmp_path / "b" / "ema.safetensors")  # the step-10 checkpoint is there
    resumed, resumed_log = tiny_pipeline(), []  # a fresh process: weights from the checkpoint
    result = train_generator(
        resumed, images, lambda e: captions, cfg, tmp_path / "b", lambda *s: resumed_log.append(s)
    )
    assert result["resumed_from"] == 10
    for (name, a), b in zip(clean.unet.named_parameters(), resumed.unet.parameters(), strict=True):
        assert torch.equal(a, b), name
    # What it logs and reports is what the uninterrupted run logged and reported.
    assert resumed_log == clean_log and [s for s, _ in clean_log] == list(range(1, 21))
    assert result["loss"] == clean_result["loss"]


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    with pytest.raises(gen_lib.GeneratorError, match="model_index.json"):
        gen_lib.load(tmp_path)


def test_same_precision_gives_the_same_bytes_another_gives_other_bytes():
    """What "byte-identical" means: the same params, inputs and precision on the same class
    of hardware give the same weights; another precision gives other (valid) weights."""
    images, captions = dataset()

    def trained(compute: str) -> dict[str, torch.Tensor]:
        pipe = tiny_pipeline()
        train_generator(pipe, images, lambda epoch: captions, config(steps=4, precision=compute))
        return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}

    fp32 = trained("fp32")
    assert all(torch.equal(fp32[n], p) for n, p in trained("fp32").items())
    bf16 = trained("bf16")
    assert not all(torch.equal(fp32[n], p) for n, p in bf16.items())


def test_min_snr_weights_damp_only_the_low_noise_steps():
    from recaption.models.generator_train import min_snr_weights, noise_schedule

    pipe = tiny_pipeline()
    t = torch.arange(pipe.scheduler.config.num_train_timesteps)
    weights = min_snr_weights(noise_schedule(pipe), t, gamma=5.0)
    alphas = pipe.scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    assert torch.all(weights[snr <= 5] == 1.0)  # noisy steps keep their weight
    assert torch.all(weights[snr > 5] < 1.0) and weights[0] < 0.1  # easy ones are damped
    images, captions = dataset()
    trained = train_generator(tiny_pipeline(), images, lambda e: captions, config(steps=5))
    weighted = train_generator(tiny_pipeline(), images, lambda e: captions,
                               config(steps=5, snr_gamma=5.0))  # fmt: skip
    assert trained["loss"] != weighted["loss"]  # the weighting reaches the training loss


def test_coordinate_channels_tell_the_unet_where_it_is_and_survive_a_save(tmp_path):
    import json

    spec = {**json.loads(Path(TINY).read_text()), "coord_channels": True}
    (tmp_path / "coords.json").write_text(json.dumps(spec))
    images, captions = dataset()
    tok = train_tokenizer(captions * 3, 200, wrap=True)
    pipe = gen_lib.create_builtin(tmp_path / "coords.json", tok, 16, 0)
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (5, 3)
    x = torch.zeros(2, 3, 16, 16)
    fed = pipe.unet_input(x)
    assert fed.shape == (2, 5, 16, 16) and torch.equal(fed[:, :3], x)
    y, x_ = fed[0, 3], fed[0, 4]  # rows run top to bottom, columns left to right
    assert (y[0, 0], x_[0, 0], y[-1, -1], x_[-1, -1]) == (-1, -1, 1, 1)
    assert torch.equal(y[:, 0], y[:, 5]) and torch.equal(x_[0], x_[7])
    train_generator(pipe, images, lambda epoch: captions, config(steps=10))
    pipe.save_pretrained(tmp_path / "saved")
    loaded = gen_lib.load(tmp_path / "saved")
    assert loaded.coord_channels and not tiny_pipeline().coord_channels
    drawn = [pixels(p(["red on the left"], num_inference_steps=3, seed=[0]))
             for p in (pipe, loaded)]  # fmt: skip
    assert drawn[0].shape == (1, 16, 16, 3) and np.array_equal(*drawn)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_the_loss_targets_what_the_scheduler_says_the_unet_predicts(kind):
    """Stable Diffusion 2.x predicts the velocity: trained on the noise it would learn the
    wrong thing. The target is worked out by hand here from the scheduler's alphas."""
    from diffusers import DDIMScheduler

    from recaption.models.generator_train import Denoiser

    images, captions = dataset()
    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=kind)
    x0 = to_model_space(pipe, images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 14, 28, 42, 56, 70, 84, 99])  # the tiny scheduler has 100 steps
    a = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0,
              "sample": x0}[kind]  # fmt: skip
    with torch.no_grad():
        noisy = pipe.scheduler.add_noise(x0, noise, t)
        pred = pipe.unet(noisy, t, encoder_hidden_states=pipe.encode_prompts(captions)).sample
        loss = Denoiser(pipe)(x0, t, noise, captions)
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, target), rtol=1e-5)
    others = [v for k, v in {"epsilon": noise, "sample": x0}.items() if k != kind]
    assert all(not torch.allclose(loss, torch.nn.functional.mse_loss(pred, o)) for o in others)


@pytest.mark.parametrize("sampler", ["euler", "dpm"])
def test_the_training_loss_does_not_depend_on_the_sampler(sampler):
    """Training noises as the folder's forward process says (DDPM's, which DDIM shares): an
    Euler scheduler's own add_noise leaves the sample unscaled, for its sampler to scale."""
    from diffusers import DDIMScheduler

    from recaption.models.generator_train import Denoiser

    images, captions = dataset()
    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction"
    )
    x0 = to_model_space(pipe, images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 14, 28, 42, 56, 70, 84, 99])
    with torch.no_grad():
        ddim = Denoiser(pipe)(x0, t, noise, captions)
        pipe.set_scheduler(sampler)
        assert type(pipe.scheduler) is gen_lib.SCHEDULERS[sampler]
        assert torch.equal(Denoiser(pipe)(x0, t, noise, captions), ddim)


def test_an_euler_scheduler_draws_what_ddim_draws():
    """Euler-type schedulers start from noise of sigma ~ 14 and expect the pipeline to
    scale the UNet's input; skipping that draws saturated noise (mean difference from
    DDIM's images about 166 of 255 here, against about 51 with it)."""
    from diffusers import EulerDiscreteScheduler

    images, captions = dataset()
    pipe = tiny_pipeline()
    train_generator(pipe, images, lambda e: captions, config(steps=60))
    ddim = pixels(pipe(captions, num_inference_steps=20, seed=0)).astype(float)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    euler = pixels(pipe(captions, num_inference_steps=20, seed=0)).astype(float)
    assert np.abs(ddim - euler).mean() < 90


def test_the_checkpoint_folder_changes_when_the_architecture_json_is_edited(project):
    arch = project.root / "unet.json"
    arch.write_text('{"unet": {"layers_per_block": 1}}')
    params = load_params(project.write_params(generator={"model": str(arch)}))
    first = stage.checkpoint_dir(params, "captions-1", {}, clean=False)
    assert stage.checkpoint_dir(params, "captions-1", {}, clean=False) == first
    arch.write_text('{"unet": {"layers_per_block": 2}}')  # same path, another model
    assert stage.checkpoint_dir(params, "captions-1", {}, clean=False) != first


def test_edge_loss_weights_are_one_on_flat_ground_and_high_around_an_object():
    from recaption.models.autoencoder import pooled_edges
    from recaption.models.generator_train import edge_loss_weights

    images = torch.full((2, 3, 16, 16), 200, dtype=torch.uint8)
    images[1, :, 6:10, 6:10] = 0  # a dark square in the second image
    weights = edge_loss_weights(pooled_edges(images, 8), 20.0)  # onto an 8x8 model space
    assert weights.shape == (2, 1, 8, 8)
    assert torch.allclose(weights[0], torch.ones(1, 8, 8))
    # Around the square's outline the weight rises; the corners, far from it, stay 1.
    assert weights[1, 0, 3, 3] > 5 and weights[1, 0, 0, 0].item() == pytest.approx(1.0, abs=1e-4)


def test_uniform_weights_leave_the_loss_as_it_is_and_edge_weights_change_training():
    from recaption.models.autoencoder import pooled_edges
    from recaption.models.generator_train import Denoiser

    images, captions = dataset()
    pipe = tiny_pipeline()
    x0 = to_model_space(pipe, images)
    gen = torch.Generator().manual_seed(3)
    steps = pipe.scheduler.config.num_train_timesteps
    noise, t = torch.randn(x0.shape, generator=gen), torch.randint(0, steps, (8,), generator=gen)
    with torch.no_grad():
        plain = Denoiser(pipe)(x0, t, noise, captions)
        uniform = Denoiser(pipe)(x0, t, noise, captions, torch.full((8, 1, 16, 16), 3.0))
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-5)
    plain_run = train_generator(tiny_pipeline(), images, lambda e: captions, config(steps=5))
    edges = pooled_edges(images, pipe.unet.config.sample_size)
    edged = train_generator(tiny_pipeline(), images, lambda e: captions,
                            config(steps=5, edge_weight=20.0), edges=edges)  # fmt: skip
    assert edged["loss"] != plain_run["loss"]
    with pytest.raises(ValueError, match="edge maps"):
        train_generator(tiny_pipeline(), images, lambda e: captions,
                        config(steps=5, edge_weight=20.0))  # fmt: skip


def attention_kinds(pipe) -> set[str]:
    kinds = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    return kinds | {pipe.text_encoder.config._attn_implementation}


def test_bf16_on_a_cpu_gets_the_plain_attention_kernels_which_compute_the_same():
    images, captions = dataset()
    pipe = tiny_pipeline()
    x0 = to_model_space(pipe, images)
    t = torch.full((8,), 50)
    with torch.no_grad():
        fused = pipe.unet(x0, t, encoder_hidden_states=pipe.encode_prompts(captions)).sample
        gen_lib.choose_attention(pipe, "bf16", "cpu")
        assert attention_kinds(pipe) == {"AttnProcessor", "eager"}
        plain = pipe.unet(x0, t, encoder_hidden_states=pipe.encode_prompts(captions)).sample
    assert torch.allclose(plain, fused, atol=1e-5)  # the same attention, another kernel
    for compute, device in (("fp32", "cpu"), ("bf16", "cuda")):
        gen_lib.choose_attention(pipe, compute, device)
        assert attention_kinds(pipe) == {"AttnProcessor2_0", "sdpa"}


def test_a_bf16_training_run_hands_back_the_fused_kernels():
    images, captions = dataset()
    pipe = tiny_pipeline()
    train_generator(pipe, images, lambda e: captions, config(steps=2, precision="bf16"))
    assert attention_kinds(pipe) == {"AttnProcessor2_0", "sdpa"}
