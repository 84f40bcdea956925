"""CLIP creation, training, pretrained loading, and the content-addressed embed stage."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from open_clip import ClipLoss
from safetensors.torch import save_file

from recaption import datasets, embed, io, paths, streaming
from recaption.datasets import load_rows, read_splits
from recaption.errors import UserError
from recaption.models import captioner, oracle
from recaption.models import clip as clip_lib
from recaption.models.clip_train import CaptionLoss, ClipTrainConfig, SceneLoss, train_clip
from recaption.models.training import Checkpoints
from recaption.parallel import Parallel
from recaption.params import load_params
from recaption.stages import annotate, clip_pretrain, embed_probe, ingest, prompts, sample
from recaption.stages import embed as embed_stage
from recaption.synthetic import world_config
from recaption.world.negatives import swap_word

TINY_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TRAIN = {"steps": 3, "batch_size": 16, "warmup_steps": 1, "eval_every": 2}


@pytest.fixture
def arch(project):
    path = project.root / "tiny-clip.json"
    path.write_text(json.dumps(TINY_ARCH))
    project.write_params(
        clip={"model": str(path), "train": TRAIN},
        embed={"num_workers": 0, "batch_size": 8, "probe_train_size": 20},
    )
    return path


def clip_data() -> tuple[torch.Tensor, list[list[str]]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 16, 16), generator=gen, dtype=torch.uint8)
    return images, [[f"image number {i}", f"picture {i}"] for i in range(32)]


def clip_config(**overrides) -> ClipTrainConfig:
    fields = dict(steps=40, batch_size=32, lr=2e-3, warmup_steps=5, weight_decay=0.1,
                  grad_clip=1.0, eval_every=100, seed=0, precision="fp32")  # fmt: skip
    return ClipTrainConfig(**{**fields, **overrides})


def contrastive_loss(clip, images, texts) -> float:
    clip.model.eval()
    with torch.no_grad():
        img, txt, scale = clip.model(clip.normalise(images), clip.tokenizer(texts))
        return ClipLoss()(img, txt, scale).item()


def test_training_lowers_the_contrastive_loss(arch):
    clip = clip_lib.create(str(arch), None, seed=0)
    images, captions = clip_data()
    texts = [c[0] for c in captions]
    before = contrastive_loss(clip, images, texts)
    train_clip(clip, images, [[t] for t in texts], clip_config())
    assert contrastive_loss(clip, images, texts) < 0.7 * before  # from ln(32) = 3.47 at chance


DECODER = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 96}


def caption_loss_of(clip, captions, folder: Path, seed=0) -> CaptionLoss:
    """A fresh decoder over the tiny CLIP's pooled vector and 2x2 cells."""
    texts = sorted({t for c in captions for t in c})
    spec = folder / "decoder.json"
    spec.write_text(json.dumps(DECODER))
    decoder = captioner.create(str(spec), texts, 300, clip_lib.feature_layout(clip, 2), 2, 64, seed)
    return CaptionLoss(decoder, 1.0, grid=2)


def written_loss(clip, captioning: CaptionLoss, images, texts) -> float:
    """The decoder's loss at writing each image's caption from the image's features."""
    d = captioning.decoder.eval()
    with torch.no_grad():
        feats = clip_lib.features(clip, clip.normalise(images), captioning.grid)
        ids, mask = d.pad(d.tokenize(texts, 32))
        return d.loss(feats, ids, mask).item()


def test_the_captioning_loss_trains_the_decoder_and_the_tower_under_it(arch):
    images, _ = clip_data()
    # Captions that only the pixels tell apart: the decoder must read them off the tower.
    captions = [["bright" if i % 2 else "dark"] for i in range(32)]
    images[::2] //= 4
    clip = clip_lib.create(str(arch), None, seed=0)
    captioning = caption_loss_of(clip, captions, arch.parent)
    texts = [c[0] for c in captions]
    before = written_loss(clip, captioning, images, texts)
    train_clip(clip, images, captions, clip_config(steps=60, lr=4e-3), captioning=captioning)
    after = written_loss(clip, captioning, images, texts)
    swapped = [{"bright": "dark", "dark": "bright"}[t] for t in texts]
    assert after < 0.5 * before
    assert after < written_loss(clip, captioning, images, swapped) - 0.5  # it reads the image
    # Against contrastive training alone from the same start, unclipped (a clip by the
    # global norm would couple them anyway): the caption's gradient reaches the tower.
    unclipped = clip_config(grad_clip=1e9)
    ours = clip_lib.create(str(arch), None, seed=0)
    train_clip(
        ours, images, captions, unclipped, captioning=caption_loss_of(ours, captions, arch.parent)
    )
    alone = clip_lib.create(str(arch), None, seed=0)
    train_clip(alone, images, captions, unclipped)
    theirs = alone.model.visual.state_dict()
    assert any(not torch.allclose(v, theirs[k]) for k, v in ours.model.visual.state_dict().items())


def world_renders(n: int, size: int = 16, seed: int = 11):
    """`n` renders of the default world at `size` px, their captions and scenes."""
    cfg = world_config(load_params())
    pixels, captions, _, scenes = clip_pretrain.corpus_pairs(cfg, n, seed=seed, size=size)
    return pixels, captions, scenes


def scene_loss_of(clip, scenes, weight=1.0, seed=0) -> SceneLoss:
    """A fresh scene head over the tiny CLIP's pooled vector and 2x2 cells."""
    pooled, cells, cell_dim = clip_lib.feature_layout(clip, 2)
    return SceneLoss.create(pooled + cells * cell_dim, scenes, weight, grid=2, seed=seed)


def scene_loss_value(clip, scene: SceneLoss, images, rows) -> torch.Tensor:
    feats = clip_lib.features(clip, clip.normalise(images[rows]), scene.grid)
    return scene.loss(feats, rows)


def test_the_scene_loss_reads_only_the_scenes_it_is_given(project, arch):
    pixels, _, scenes = world_renders(4)
    clip = clip_lib.create(str(arch), None, seed=0)
    scene = scene_loss_of(clip, [None, *scenes[1:]])
    assert (scene.targets["content"][0] == -100).all() and scene.targets["background"][0] == -100
    told = oracle.scene_targets(scenes[2])
    assert scene.targets["content"][2].tolist() == told["content"].tolist()
    assert scene.targets["colour"][2].tolist() == told["colour"].tolist()
    assert scene.targets["background"][2] == told["background"]
    # A batch of images with no scene gives nothing to learn; one that holds some, their mean.
    untold = scene_loss_value(clip, scene, pixels, [0])
    untold.backward()
    assert untold.item() == 0 and all(not p.grad.any() for p in scene.head.parameters())
    with torch.no_grad():
        feats = clip_lib.features(clip, clip.normalise(pixels), 2)
        assert torch.allclose(scene.loss(feats[:2], [0, 1]), scene.loss(feats[1:2], [1]))
        assert scene.loss(feats[1:2], [1]) > 1.0  # an untrained head: far from the scene


def test_the_scene_loss_teaches_the_tower_what_each_cell_holds(project, arch):
    pixels, captions, scenes = world_renders(32)
    clip = clip_lib.create(str(arch), None, seed=0)
    scene = scene_loss_of(clip, scenes)
    rows = list(range(32))
    with torch.no_grad():
        before = scene_loss_value(clip, scene, pixels, rows).item()
    train_clip(clip, pixels, captions, clip_config(steps=60, lr=4e-3), scene=scene)
    with torch.no_grad():
        after = scene_loss_value(clip, scene, pixels, rows).item()
    assert after < 0.5 * before
    # Against contrastive training alone from the same start, unclipped: the scene's
    # gradient reaches the tower, not only the head.
    unclipped = clip_config(grad_clip=1e9)
    ours = clip_lib.create(str(arch), None, seed=0)
    train_clip(ours, pixels, captions, unclipped, scene=scene_loss_of(ours, scenes))
    alone = clip_lib.create(str(arch), None, seed=0)
    train_clip(alone, pixels, captions, unclipped)
    theirs = alone.model.visual.state_dict()
    assert any(not torch.allclose(v, theirs[k]) for k, v in ours.model.visual.state_dict().items())


def test_the_scene_loss_with_several_processes_is_refused_naming_the_setting(project, arch):
    pixels, captions, scenes = world_renders(4)
    clip = clip_lib.create(str(arch), None, seed=0)
    with pytest.raises(ValueError, match="one process only.*scene_loss: 0"):
        train_clip(clip, pixels, captions, clip_config(), par=Parallel(world=2),
                   scene=scene_loss_of(clip, scenes))  # fmt: skip


def test_features_are_the_pooled_embedding_then_normalised_cells(arch):
    clip = clip_lib.create(str(arch), None, seed=0)
    pooled_dim, cells, cell_dim = clip_lib.feature_layout(clip, 2)
    x = clip.normalise(clip_data()[0][:3])
    feats = clip_lib.features(clip, x, 2)
    assert (pooled_dim, cells) == (32, 4) and feats.shape == (3, 32 + 4 * cell_dim)
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(clip.model.encode_image(x), dim=-1)
    assert torch.allclose(feats[:, :32], pooled, atol=1e-5)
    norms = feats[:, 32:].reshape(3, 4, cell_dim).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


class Crash(Exception):
    pass


@pytest.mark.parametrize("extra", [None, "captioned", "scene"])
def test_a_killed_clip_training_resumes_to_the_same_weights_and_metrics(arch, tmp_path, extra):
    images, captions = clip_data()
    held = (images[:8], [c[0] for c in captions[:8]])
    config = clip_config(steps=9, batch_size=8, eval_every=3)
    clean = clip_lib.create(str(arch), None, seed=0)
    captioned = extra == "captioned"
    _, _, scenes = world_renders(len(images)) if extra == "scene" else (None, None, None)

    def captioning(seed=0):
        return caption_loss_of(clean, captions, tmp_path, seed=seed) if captioned else None

    def scene(seed=0):
        return scene_loss_of(clean, scenes, seed=seed) if scenes else None

    clean_cap, clean_scene = captioning(), scene()
    clean_metrics = train_clip(clean, images, captions, config, held, negative=swap_word,
                               captioning=clean_cap, scene=clean_scene)  # fmt: skip

    def crash_at_6(step, metrics):
        if step >= 6:
            raise Crash

    folder = Checkpoints(tmp_path / "ck", every=4)
    with pytest.raises(Crash):
        train_clip(clip_lib.create(str(arch), None, seed=0), images, captions, config, held,
                   crash_at_6, negative=swap_word, checkpoints=folder,
                   captioning=captioning(), scene=scene())  # fmt: skip
    resumed = clip_lib.create(str(arch), None, seed=1)  # the checkpoint's weights replace these
    resumed_cap, resumed_scene = captioning(seed=1), scene(seed=1)
    metrics = train_clip(resumed, images, captions, config, held, negative=swap_word,
                         checkpoints=folder, captioning=resumed_cap,
                         scene=resumed_scene)  # fmt: skip
    for (name, a), b in zip(
        clean.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    if captioned:  # the decoder resumes too: its weights are the loop's like the tower's
        theirs = resumed_cap.decoder.state_dict()
        for name, a in clean_cap.decoder.state_dict().items():
            assert torch.equal(a, theirs[name]), name
    if scenes:  # so does the scene head
        for name, a in clean_scene.head.state_dict().items():
            assert torch.equal(a, resumed_scene.head.state_dict()[name]), name
    assert metrics == clean_metrics


def test_save_and_load_give_the_same_model(arch, tmp_path):
    clip = clip_lib.create(str(arch), None, seed=3)
    clip_lib.save(clip, tmp_path / "clip")
    again = clip_lib.load(tmp_path / "clip")
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(clip.model.encode_image(x), again.model.encode_image(x))
    clip_lib.save(again, tmp_path / "clip2")
    assert clip_lib.fingerprint(tmp_path / "clip") == clip_lib.fingerprint(tmp_path / "clip2")


def test_pickled_checkpoints_and_unknown_architectures_are_refused(arch, tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not even a pickle")
    with pytest.raises(clip_lib.ClipError, match="run code when unpickled"):
        clip_lib.create(str(arch), str(tmp_path / "weights.pt"))
    with pytest.raises(clip_lib.ClipError, match="unknown open_clip architecture"):
        clip_lib.create("ViT-Nonexistent-7", None)


def prepare(project):
    ingest.main()
    prompts.main()
    sample.main()
    annotate.main()


def test_pretrained_local_checkpoint_is_loaded_by_the_stage(project, arch):
    prepare(project)
    donor = clip_lib.create(str(arch), None, seed=42)
    state = {k: v.contiguous() for k, v in donor.model.state_dict().items()}
    save_file(state, project.root / "donor.safetensors")
    project.write_params(clip={"model": str(arch), "pretrained": "donor.safetensors"})
    metrics = clip_pretrain.main()
    assert set(metrics) == {"i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5"}
    loaded = clip_lib.load(paths.CLIP)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    lineage = json.loads((paths.CLIP / "lineage.json").read_text())
    assert lineage["params"]["clip"]["pretrained"] == "donor.safetensors"


class CountingForward:
    """Wraps embed._forward to count the images that go through the model."""

    def __init__(self, monkeypatch):
        self.images = 0
        self.inner = embed._forward
        monkeypatch.setattr(embed, "_forward", self)

    def __call__(self, clip, batch, device, grid):
        self.images += len(batch)
        return self.inner(clip, batch, device, grid)


def test_embed_computes_only_new_images_and_all_after_a_clip_change(project, arch, monkeypatch):
    prepare(project)
    clip_pretrain.main()
    counter = CountingForward(monkeypatch)
    report = embed_stage.main()
    assert counter.images == report["computed"] == 60 and report["reused"] == 0
    first = embed.read_dir(paths.IMAGE_EMBEDDINGS)
    assert first.keys == [f"{i:08d}" for i in range(60)]
    assert first.vectors.dtype == np.float16 and first.vectors.shape == (60, 32)
    assert first.grid.shape == (60, 16 * 32)  # 4 x 4 cells of the 32-wide ViT tokens
    norms = np.linalg.norm(first.vectors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    stamp = [p.stat().st_mtime_ns for p in sorted(paths.IMAGE_EMBEDDINGS.iterdir())]

    # The dataset grows by 7 images: exactly 7 go through the model, and only the
    # last shard (10 -> 17 rows) is rewritten.
    project.write_params(
        data={"synthetic": {"num_images": 67}},
        clip={"model": str(arch), "train": TRAIN},
        embed={"num_workers": 0, "batch_size": 8, "probe_train_size": 20},
    )
    ingest.main()
    counter.images = 0
    report = embed_stage.main()
    assert counter.images == report["computed"] == 7 and report["reused"] == 60
    assert report["shards_written"] == 1
    assert [p.stat().st_mtime_ns for p in sorted(paths.IMAGE_EMBEDDINGS.iterdir())][:2] == stamp[:2]
    grown = embed.read_dir(paths.IMAGE_EMBEDDINGS)
    assert grown.keys[:60] == first.keys
    assert np.array_equal(grown.vectors[:60], first.vectors)
    assert np.array_equal(grown.grid[:60], first.grid)

    # A different CLIP: every image is embedded again.
    project.write_params(
        data={"synthetic": {"num_images": 67}},
        clip={"model": str(arch), "train": {**TRAIN, "steps": 4}},
        embed={"num_workers": 0, "batch_size": 8, "probe_train_size": 20},
    )
    clip_pretrain.main()
    counter.images = 0
    report = embed_stage.main()
    assert counter.images == 67 and report["reused"] == 0


def test_probe_reports_each_attribute(project, arch):
    prepare(project)
    clip_pretrain.main()
    embed_stage.main()
    report = embed_probe.main()
    assert report["grid_dim"] > 0  # "probe" reads the grid cells too, the other does not
    for name in ("probe", "probe_pooled_only"):
        assert set(report[name]) == {"colour", "shape", "position", "background", "count",
                                     "text"}  # fmt: skip
    # Only the images with a glyph are probed for it.
    rows = report["probe_rows"]
    assert rows["text"]["test"] < rows["shape"]["test"] and rows["text"]["train"] < rows[
        "shape"]["train"]  # fmt: skip


def scenes_by_key() -> dict[str, dict]:
    return {r["key"]: json.loads(r["meta"])["scene"] for r in load_rows(paths.DATASET, ["meta"])}


def group_size(scene: dict) -> int:
    """How many objects of a scene (its JSON) share the main object's colour and shape."""
    main = scene["objects"][scene["main"]]
    return sum((o["colour"], o["shape"]) == (main["colour"], main["shape"])
               for o in scene["objects"])  # fmt: skip


def label_features(keys: list[str]) -> np.ndarray:
    """(N, F) one-hot of each image's main colour, shape and position, its background, the
    number of objects like its main one and its glyph ("" for none), read from the
    dataset's scenes (not through the probe's own labelling)."""
    scenes = scenes_by_key()
    mains = [scenes[k]["objects"][scenes[k]["main"]] for k in keys]
    counts = [group_size(scenes[k]) for k in keys]
    glyphs = [(scenes[k]["text"] or {}).get("glyph", "") for k in keys]
    columns = [[m["colour"] for m in mains], [m["shape"] for m in mains],
               [m["position"] for m in mains], [scenes[k]["background"] for k in keys],
               counts, glyphs]  # fmt: skip
    onehots = []
    for values in columns:
        names = sorted(set(values))
        onehots.append(np.eye(len(names), dtype=np.float32)[[names.index(v) for v in values]])
    onehots[-1] *= 10  # a glyph seen once in training is read from its own column alone
    return np.concatenate(onehots, axis=1)


def test_probe_reads_what_the_features_carry_and_nothing_from_shuffled_ones(project, monkeypatch):
    project.write_params(
        data={"synthetic": {"num_images": 400}},
        sample={"heldout_size": 100},
        embed={"probe_train_size": 300},  # every image not held out
    )
    prepare(project)
    keys = [r["key"] for r in load_rows(paths.DATASET, [])]
    carrying = label_features(keys)
    # Unrelated features: the carrying ones shuffled across images, and enough noise for a
    # probe to fit its 300 training images perfectly; only held-out scores stay at chance.
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((len(keys), 400)).astype(np.float32)
    shuffled = np.concatenate([carrying[rng.permutation(len(keys))], noise], axis=1)
    reports = {}
    for name, vectors in (("carrying", carrying), ("shuffled", shuffled)):
        shutil.rmtree(paths.IMAGE_EMBEDDINGS, ignore_errors=True)
        paths.IMAGE_EMBEDDINGS.mkdir(parents=True)
        for shard, rows in enumerate((slice(0, 250), slice(250, None))):  # the probe's keys
            fake = embed.Embeddings(keys[rows], [""] * len(keys[rows]), "fake", vectors[rows])
            io.write_shard(paths.IMAGE_EMBEDDINGS, shard, embed.to_table(fake))  # span both
        reports[name] = embed_probe.main()["probe"]
    # A glyph is read right where the training images show it at all: 36 glyphs, about
    # 30 training images with one.
    heldout = read_splits(paths.SPLITS)["heldout"]
    scenes = scenes_by_key()
    glyph = {k: s["text"]["glyph"] for k, s in scenes.items() if s["text"]}
    seen = {g for k, g in glyph.items() if k not in heldout}
    tested = [g for k, g in glyph.items() if k in heldout]
    assert 0 < sum(g in seen for g in tested) < len(tested)  # the case is a real one
    assert reports["carrying"].pop("text") == round(sum(g in seen for g in tested) / len(tested), 4)
    assert reports["carrying"] == dict.fromkeys(reports["carrying"], 1.0)
    # At chance: 6 to 9 values each, so about 0.1 to 0.2 on 100 held-out images; a count is
    # mostly 1, so there chance is the share of the commonest count.
    counts = [group_size(scenes[k]) for k in heldout]
    commonest = max(counts.count(c) for c in set(counts)) / len(counts)
    assert reports["shuffled"].pop("count") <= commonest + 0.1, commonest
    assert all(acc < 0.4 for acc in reports["shuffled"].values()), reports["shuffled"]


def test_an_embedding_folder_reads_on_demand_what_read_dir_holds(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    keys = [f"{i:04d}" for i in range(30)]
    whole = embed.Embeddings(keys, keys, "fp", rng.standard_normal((30, 4)).astype(np.float16),
                             rng.standard_normal((30, 6)).astype(np.float16))  # fmt: skip
    for shard, rows in enumerate((slice(0, 12), slice(12, 24), slice(24, 30))):
        part = embed.Embeddings(keys[rows], keys[rows], "fp", whole.vectors[rows], whole.grid[rows])
        io.write_shard(tmp_path, shard, embed.to_table(part))
    reads, real = [], embed.read
    monkeypatch.setattr(embed, "read", lambda path: reads.append(path) or real(path))
    folder = embed.EmbeddingFolder(tmp_path)
    assert (folder.keys, folder.clip, folder.widths()) == (keys, "fp", (4, 6))
    wanted = ["0025", "0003", "0013", "0004", "0029"]  # shards 2, 0, 1, 0, 2
    assert np.array_equal(folder.features_of(wanted), whole.features_of(wanted))
    assert np.array_equal(folder.vectors_of(wanted), whole.vectors[[25, 3, 13, 4, 29]])
    assert len(reads) == 3 + 3  # each shard once per call, whatever the keys' order
    with pytest.raises(KeyError, match="1 keys have no cached embedding"):
        folder.features_of(["0001", "9999"])


def test_prompt_embeddings_cover_both_phrasings(project, arch):
    prepare(project)
    clip_pretrain.main()
    embed_stage.main()
    table = pq.read_table(paths.PROMPT_EMBEDDINGS)
    assert table.column_names == ["id", "kind", "text", "clip", "embedding"]
    assert table.num_rows == 2 * 18  # 6 categories x 3 prompts, two phrasings each


def test_out_of_memory_halves_the_batch_and_gives_the_same_vectors(arch, monkeypatch, caplog):
    clip = clip_lib.create(str(arch), None, seed=0)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (3, 16, 16), generator=gen, dtype=torch.uint8) for _ in range(10)]
    expected = embed.embed_images(clip, data, batch_size=8, num_workers=0)
    inner = embed._forward

    def tight(clip, batch, device, grid):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return inner(clip, batch, device, grid)

    monkeypatch.setattr(embed, "_forward", tight)
    with caplog.at_level(logging.WARNING):
        got = embed.embed_images(clip, data, batch_size=8, num_workers=0)
    # Smaller batches may change the last bit of a float16 (the kernels differ), no more.
    assert np.allclose(got.astype(np.float32), expected.astype(np.float32), atol=2e-3)
    assert "batch size halved to 2" in caplog.text


def test_a_killed_embed_resumes_from_its_finished_shards(project, arch, monkeypatch):
    prepare(project)
    clip_pretrain.main()
    second = paths.IMAGE_EMBEDDINGS / "part-00001.parquet"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "recap"), "embed"],
        cwd=project.root,
        capture_output=True,
        env={**os.environ, "RECAPTION_KILL_AT": f"after-rename:{second.as_posix()}"},
    )
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in sorted(paths.IMAGE_EMBEDDINGS.iterdir())] == [
        "part-00000.parquet", "part-00001.parquet"
    ]  # fmt: skip
    counter = CountingForward(monkeypatch)
    result = embed_stage.main()
    assert counter.images == result["computed"] == 10  # only the unfinished shard's images
    assert result["reused"] == 50 and result["shards_written"] == 1
    resumed = [p.read_bytes() for p in sorted(paths.IMAGE_EMBEDDINGS.iterdir())]
    shutil.rmtree(paths.IMAGE_EMBEDDINGS)
    embed_stage.main()  # uninterrupted, from nothing
    assert [p.read_bytes() for p in sorted(paths.IMAGE_EMBEDDINGS.iterdir())] == resumed


def test_a_new_embedding_procedure_recomputes_everything(project, arch, monkeypatch):
    prepare(project)
    clip_pretrain.main()
    embed_stage.main()
    monkeypatch.setattr(embed, "PROCEDURE_VERSION", embed.PROCEDURE_VERSION + 1)
    counter = CountingForward(monkeypatch)
    report = embed_stage.main()
    assert counter.images == report["computed"] == 60 and report["reused"] == 0


def test_annotated_images_are_repeated_in_clip_training(project, arch):
    prepare(project)
    project.write_params(clip={"model": str(arch), "train": {**TRAIN, "annotated_repeat": 3}})
    keys, captions = clip_pretrain.training_pairs(load_params())
    short = set(pq.read_table(paths.SHORT).column("key").to_pylist())
    descriptive = set(pq.read_table(paths.DESCRIPTIVE).column("key").to_pylist())
    splits = pq.read_table(paths.SPLITS).to_pylist()
    heldout = {r["key"] for r in splits if r["heldout"]}
    assert len(short | descriptive) == 15  # two parts of 10 sharing 5
    assert len(keys) == (60 - len(heldout)) + 2 * 15
    for key, caps in zip(keys, captions, strict=True):
        assert keys.count(key) == (3 if key in short | descriptive else 1)
        assert len(caps) == 1 + (key in short) + (key in descriptive)


def test_batches_finishing_out_of_order_still_write_shards_in_order(project, arch, monkeypatch):
    """engine: ray hands batches back as they finish; shards are written in the local
    path's order (a shard rebuilt from an earlier shard's vectors reads them before that
    file is replaced), with the local path's bytes."""
    from recaption import engine, io

    settings = {"clip": {"model": str(arch), "train": TRAIN},
                "embed": {"num_workers": 0, "batch_size": 8, "probe_train_size": 20}}  # fmt: skip
    project.write_params(**settings)
    prepare(project)
    clip_pretrain.main()
    embed_stage.main()
    local = {p.name: p.read_bytes() for p in io.shard_paths(paths.IMAGE_EMBEDDINGS)}
    shutil.rmtree(paths.IMAGE_EMBEDDINGS)

    def last_first(worker, kwargs, units, params, desc, unit_name="unit"):
        instance = worker(**kwargs)
        for index in reversed(range(len(units))):
            yield index, instance(units[index])

    written, write_table = [], io.write_table

    def recording(path, table):
        written.append(Path(path).name)
        write_table(path, table)

    monkeypatch.setattr(engine, "map_units", last_first)
    monkeypatch.setattr(io, "write_table", recording)
    project.write_params(engine="ray", **settings)
    embed_stage.main()
    assert [n for n in written if n in local] == sorted(local)  # 3 shards, in order
    assert {p.name: p.read_bytes() for p in io.shard_paths(paths.IMAGE_EMBEDDINGS)} == local


def test_the_corpus_is_fresh_renders_with_a_caption_mix(project):
    from recaption.synthetic import world_config
    from recaption.world import make_example

    cfg = world_config(load_params())
    pixels, captions, twins, scenes = clip_pretrain.corpus_pairs(cfg, 5, seed=11, size=16)
    assert pixels.shape == (5, 3, 16, 16) and pixels.dtype == torch.uint8 and twins == []
    again, _, _, _ = clip_pretrain.corpus_pairs(cfg, 5, seed=11, size=16)
    other, _, _, _ = clip_pretrain.corpus_pairs(cfg, 5, seed=12, size=16)
    assert torch.equal(pixels, again) and not torch.equal(pixels, other)
    ex = make_example(11, 3, cfg)
    assert captions[3] == [ex.caption, ex.short, ex.descriptive] and scenes[3] == ex.scene
    assert torch.equal(pixels[3], torch.from_numpy(np.asarray(ex.image)).permute(2, 0, 1))


def test_corpus_twins_follow_the_renders_they_pair_with(project):
    from recaption.synthetic import world_config
    from recaption.world import twin_example

    cfg = world_config(load_params())
    plain, plain_captions, _, _ = clip_pretrain.corpus_pairs(cfg, 20, seed=11, size=16)
    pixels, captions, twins, scenes = clip_pretrain.corpus_pairs(
        cfg, 20, seed=11, size=16, twins=0.5
    )
    # The renders are the corpus without twins, byte for byte; the twins come after.
    assert torch.equal(pixels[:20], plain) and captions[:20] == plain_captions
    assert 3 < len(twins) < 17 and len(pixels) == len(captions) == 20 + len(twins)
    assert [t for _, t in twins] == list(range(20, 20 + len(twins)))
    for o, t in twins:
        ex = twin_example(11, o, cfg)
        assert captions[t] == [ex.caption, ex.short, ex.descriptive] and scenes[t] == ex.scene
        assert torch.equal(pixels[t], torch.from_numpy(np.asarray(ex.image)).permute(2, 0, 1))


def test_clip_pretrain_passes_the_corpus_twins_by_their_place_in_the_pairs(
    project, arch, monkeypatch
):
    prepare(project)
    train = {**TRAIN, "corpus": 12, "corpus_seed": 5, "twins": 0.5}
    project.write_params(clip={"model": str(arch), "train": train})
    seen = {}

    def spy(clip, images, captions, config, *args, twins=(), **kwargs):
        seen.update(n=len(images), captions=captions, twins=twins)
        return {}

    monkeypatch.setattr(clip_pretrain, "train_clip", spy)
    clip_pretrain.main()
    keys, _ = clip_pretrain.training_pairs(load_params())
    offset = len(keys)
    assert seen["twins"] and seen["n"] == offset + 12 + len(seen["twins"])
    for o, t in seen["twins"]:
        assert offset <= o < offset + 12 <= t
        assert seen["captions"][o] != seen["captions"][t]


def test_clip_pretrain_streams_the_images_it_would_hold(project, arch, monkeypatch, tmp_path):
    prepare(project)
    train = {**TRAIN, "corpus": 12, "corpus_seed": 5, "annotated_repeat": 2}
    project.write_params(clip={"model": str(arch), "train": train})
    keys, _ = clip_pretrain.training_pairs(load_params())
    extra = clip_pretrain.corpus_pairs(world_config(load_params()), 12, 5, 16)[0]
    held = clip_pretrain.training_images(load_params(), keys, extra, 16, tmp_path / "a")
    assert torch.is_tensor(held) and len(held) == len(keys) + 12 > len(set(keys)) + 12
    project.write_params(clip={"model": str(arch), "train": train},
                         data={"stream": {"memory_gb": 1e-6, "workers": 0}})  # fmt: skip
    stream = clip_pretrain.training_images(load_params(), keys, extra, 16, tmp_path / "b")
    assert isinstance(stream, streaming.ImageStream) and len(stream) == len(held)
    seen = []
    for step in range(len(stream) // 16):
        idx, (batch,) = stream.batch(step)
        assert torch.equal(batch, held[idx])  # a key given twice, and the corpus, alike
        seen += idx
    assert len(set(seen)) == len(seen) and max(seen) >= len(keys)
    # The stage trains on the stream, holding no more images than the held-out split.
    heldout = len(datasets.read_splits(paths.SPLITS)["heldout"])
    held_tensor = datasets.images_tensor

    def only_heldout(pngs, size):
        assert len(pngs) <= heldout, "the training images were held"
        return held_tensor(pngs, size)

    monkeypatch.setattr(datasets, "images_tensor", only_heldout)
    metrics = clip_pretrain.main()
    assert metrics["loss"] > 0 and (paths.CLIP / clip_lib.WEIGHTS_NAME).is_file()
    # Twins are trained in their originals' batches: a streamed order cannot.
    project.write_params(clip={"model": str(arch), "train": {**train, "twins": 0.5}},
                         data={"stream": {"memory_gb": 1e-6, "workers": 0}})  # fmt: skip
    with pytest.raises(UserError, match="clip.train.twins: 0"):
        clip_pretrain.main()


@pytest.mark.parametrize("seed_of", ["seed", "evaluate.seed"])
def test_a_corpus_seed_equal_to_the_dataset_or_the_evaluation_is_refused(project, seed_of):
    from recaption.params import ParamsError

    seed = 7 if seed_of == "seed" else 99
    project.write_params(evaluate={"seed": 99}, clip={"train": {"corpus": 10, "corpus_seed": seed}})
    with pytest.raises(ParamsError, match="corpus_seed .* must differ from seed and evaluate.seed"):
        load_params()
    project.write_params(evaluate={"seed": 99}, clip={"train": {"corpus": 0, "corpus_seed": seed}})
    load_params()  # no corpus, no clash


def test_clip_pretrain_trains_on_the_corpus_with_hard_negatives(project, arch, monkeypatch):
    prepare(project)
    train = {**TRAIN, "corpus": 12, "corpus_seed": 5, "hard_negatives": True}
    project.write_params(clip={"model": str(arch), "train": train})
    seen = {}

    def spy(clip, images, captions, config, *args, negative=None, **kwargs):
        seen.update(n=len(images), captions=captions, negative=negative)
        return {}

    monkeypatch.setattr(clip_pretrain, "train_clip", spy)
    clip_pretrain.main()
    keys, _ = clip_pretrain.training_pairs(load_params())
    assert seen["n"] == len(keys) + 12 and len(seen["captions"][-1]) == 3
    assert seen["negative"] is not None


def test_clip_pretrain_adds_a_captioning_loss_over_the_cached_features(project, arch, monkeypatch):
    prepare(project)
    decoder = project.root / "decoder.json"
    decoder.write_text(json.dumps(DECODER))
    train = {**TRAIN, "caption_loss": 0.5, "caption_decoder": str(decoder)}
    project.write_params(clip={"model": str(arch), "train": train}, embed={"grid": 2})
    seen = {}

    def spy(clip, images, captions, config, *args, captioning=None, **kwargs):
        seen.update(captioning=captioning, layout=clip_lib.feature_layout(clip, 2))
        return {}

    monkeypatch.setattr(clip_pretrain, "train_clip", spy)
    clip_pretrain.main()
    captioning = seen["captioning"]
    assert (captioning.weight, captioning.grid) == (0.5, 2)
    mapper = captioning.decoder.mapper.config
    assert (mapper.pooled_dim, mapper.grid_cells, mapper.cell_dim) == seen["layout"]
    assert captioning.decoder.lm.config.n_embd == DECODER["n_embd"]
    project.write_params(clip={"model": str(arch), "train": {**train, "caption_loss": 0.0}})
    clip_pretrain.main()
    assert seen["captioning"] is None


def test_clip_pretrain_tells_the_scene_loss_the_corpus_scenes_only(project, arch, monkeypatch):
    prepare(project)
    train = {**TRAIN, "corpus": 12, "corpus_seed": 5, "scene_loss": 0.5}
    project.write_params(clip={"model": str(arch), "train": train}, embed={"grid": 2})
    seen = {}

    def spy(clip, images, captions, config, *args, scene=None, **kwargs):
        seen.update(n=len(images), scene=scene, layout=clip_lib.feature_layout(clip, 2))
        return {}

    monkeypatch.setattr(clip_pretrain, "train_clip", spy)
    clip_pretrain.main()
    scene = seen["scene"]
    pooled, cells, cell_dim = seen["layout"]
    assert (scene.weight, scene.grid, scene.head.in_features) == (0.5, 2, pooled + cells * cell_dim)
    params = load_params()
    keys, _ = clip_pretrain.training_pairs(params)
    offset = len(keys)
    assert seen["n"] == offset + 12 == len(scene.targets["background"])
    # The dataset's own images are never told their scenes; the corpus renders are.
    assert (scene.targets["content"][:offset] == -100).all()
    assert (scene.targets["background"][:offset] == -100).all()
    _, _, _, corpus = clip_pretrain.corpus_pairs(world_config(params), 12, 5, 16)
    assert scene.targets["content"][offset:].tolist() == [
        oracle.scene_targets(s)["content"].tolist() for s in corpus
    ]
    project.write_params(clip={"model": str(arch), "train": {**train, "scene_loss": 0.0}})
    clip_pretrain.main()
    assert seen["scene"] is None


def test_real_data_trains_without_the_world_corpus(project):
    project.write_params(
        data={"source": "folder"}, clip={"train": {"corpus": 100, "corpus_seed": 7}}
    )
    params = load_params()  # the corpus seed equals the dataset's, but no corpus is rendered
    assert clip_pretrain.corpus_size(params) == 0
    project.write_params(clip={"train": {"corpus": 100}})
    assert clip_pretrain.corpus_size(load_params()) == 100
