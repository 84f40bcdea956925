"""The upsampler: faithfulness arithmetic, the built-in LM, a chat LM, and the stage."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recaption import datasets, lineage, paths
from recaption.metrics.upsampling import contradictions, faithfulness, stated_facts
from recaption.models import upsampler as up_lib
from recaption.models.captioner import Decoding
from recaption.models.training import Checkpoints
from recaption.params import load_params
from recaption.stages import annotate, ingest, prompts, sample
from recaption.stages import upsample as stage
from recaption.stages import upsample_captions as captions_stage
from recaption.world import WorldConfig, make_example
from recaption.world.parse import parse_caption
from test_captioner import assert_holds_saved_weights

from real_tiny import write_lm

TINY_LM = str(Path(__file__).parent / "data" / "tiny-gpt2.json")


def test_faithfulness_counts_kept_and_contradicted_facts():
    shorts = ["a red circle at the top", "two blue squares", "a green star"]
    rewrites = [
        "a red circle at the top of the image, beside a small yellow triangle",  # keeps both
        "three blue squares in a row",  # another count: contradicted, object kept
        "a large green star on the left",  # keeps it, adds a position
    ]
    report = faithfulness(shorts, rewrites)
    # facts: {object, position} + {object, count} + {object} = 5; kept 2 + 1 + 1
    assert report["facts_stated"] == 5 and report["kept"] == 0.8
    assert report["all_kept"] == round(2 / 3, 4) and report["contradicted"] == round(1 / 3, 4)
    assert report["mean_words_short"] == 4.0  # (6 + 3 + 3) / 3
    moved = contradictions(parse_caption("a red circle at the top"),
                           parse_caption("a red circle at the bottom"))  # fmt: skip
    assert moved == {("position", "red", "circle")}
    with pytest.raises(ValueError, match="2 short texts but 1"):
        faithfulness(shorts[:2], rewrites[:1])


def test_faithfulness_reads_bare_shapes_and_relations_that_prompts_state():
    prompt = "a photo of a red circle to the left of a blue square"
    assert stated_facts(prompt) == {
        ("object", "red", "circle"), ("object", "blue", "square"),
        ("relation", "red", "circle", "left of", "blue", "square"),
    }  # fmt: skip
    kept = "A red circle on the left and a blue square in the center."
    other_way = "A red circle on the right and a blue square in the center."
    unplaced = "A red circle and a blue square on a white background."
    report = faithfulness([prompt] * 3, [kept, other_way, unplaced])
    assert report["facts_stated"] == 9 and report["kept"] == round(7 / 9, 4)
    assert report["contradicted"] == round(1 / 3, 4)  # only the one placed the other way
    rewrites = ["A large red star and two small crosses.", "A large red star."]
    shapes = faithfulness(["a photo of a star and a cross"] * 2, rewrites)
    assert (shapes["facts_stated"], shapes["kept"], shapes["all_kept"]) == (4, 0.75, 0.5)


def world_pairs(n: int) -> list[tuple[str, str]]:
    cfg = WorldConfig()
    examples = [make_example(5, i, cfg) for i in range(n)]
    return [(e.short, e.descriptive) for e in examples]


def test_the_built_in_lm_learns_to_rewrite_and_batches_like_single_prompts():
    pairs = world_pairs(200)
    texts = sorted({t for p in pairs for t in p})
    model = up_lib.create(TINY_LM, texts, vocab_size=300, seed=0, max_source_tokens=20)
    assert model.builtin
    losses = []
    config = up_lib.UpsampleTrainConfig(steps=200, batch_size=16, lr=3e-3, warmup_steps=10,
                                        weight_decay=0.0, grad_clip=1.0, max_tokens=40,
                                        precision="fp32", seed=0)  # fmt: skip
    up_lib.train(model, pairs, config, lambda step, m: losses.append(m["loss"]))
    # from ln(vocab) = 5.7 at chance; each logged value is the mean of the last 50 steps
    assert losses[-1] < 0.75 * losses[0] and losses[-1] < 0.5 * math.log(len(model.tokenizer))
    shorts = [s for s, _ in pairs[:6]]
    decoding = Decoding(max_new_tokens=30)
    batched = model.rewrite(shorts, decoding, batch_size=6)
    single = [model.rewrite([s], decoding)[0] for s in shorts]
    assert batched == single  # left padding: every row continues its own prompt
    assert np.mean([len(b.split()) for b in batched]) > np.mean([len(s.split()) for s in shorts])


class Crash(Exception):
    pass


def test_a_killed_upsampler_training_resumes_to_the_same_weights(tmp_path):
    pairs = world_pairs(30)
    texts = sorted({t for p in pairs for t in p})
    create = lambda seed: up_lib.create(TINY_LM, texts, 300, seed, 20)  # noqa: E731
    config = up_lib.UpsampleTrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2,
                                        weight_decay=0.0, grad_clip=1.0, max_tokens=30,
                                        precision="fp32", seed=0)  # fmt: skip
    clean = create(0)
    up_lib.train(clean, pairs, config)

    def crash(step, metrics):  # the first log is at the last step, after the step-8 checkpoint
        raise Crash

    folder = Checkpoints(tmp_path / "ck", every=4)
    with pytest.raises(Crash):
        up_lib.train(create(0), pairs, config, crash, checkpoints=folder)
    resumed = create(1)  # other weights: the checkpoint's replace them
    up_lib.train(resumed, pairs, config, checkpoints=folder)
    for (name, a), b in zip(
        clean.lm.state_dict().items(), resumed.lm.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


TINY_UPSAMPLE = {"lm": TINY_LM, "vocab_size": 300, "steps": 4, "batch_size": 8,
                 "warmup_steps": 1, "heldout_prompts": 5, "max_source_tokens": 20,
                 "max_tokens": 30, "decoding": {"max_new_tokens": 12}}  # fmt: skip


def tiny_project(project, **upsample):
    project.write_params(upsample={**TINY_UPSAMPLE, **upsample})
    for module in (ingest, prompts, sample, annotate):
        module.main()


def test_the_stage_trains_rewrites_the_suite_and_reports_faithfulness(project):
    tiny_project(project)
    report = stage.main()
    assert report["builtin"] and report["training"]["steps"] == 4
    # overlap 0.5: 5 images have both a short and a descriptive caption; 10 a descriptive
    # one, each also paired with three suite-style prompts its scene satisfies
    assert report["training"]["pairs"] == 5 + 10 + 3 * 10
    params = load_params(paths.PARAMS)
    prompted = stage.training_pairs(params)[-30:]
    assert len({source for source, _ in prompted}) > 10  # distinct where a scene allows
    for source, descriptive in prompted:
        assert source.startswith("a photo of ")
        assert parse_caption(source) <= parse_caption(descriptive), source
    off = params.upsample.model_copy(update={"prompts_per_scene": 0})
    assert len(stage.training_pairs(params.model_copy(update={"upsample": off}))) == 5 + 10
    assert report["heldout"]["prompts"] == 5 and report["suite"]["prompts"] == 6 * 3
    assert set(report["heldout"]) >= {"kept", "contradicted", "mean_words_upsampled"}
    suite = pq.read_table(paths.UPSAMPLED_PROMPTS).to_pylist()
    assert len(suite) == 6 * 3 and all(isinstance(r["upsampled"], str) for r in suite)
    held = pq.read_table(paths.UPSAMPLED_HELDOUT)
    assert held.column_names == ["key", "short", "upsampled"] and held.num_rows == 5
    assert json.loads(paths.UPSAMPLE_REPORT.read_text()) == report
    loaded = up_lib.load(paths.UPSAMPLER)
    assert loaded.builtin and loaded.max_source_tokens == 20
    assert loaded.decoding.max_new_tokens == 12  # rewrites elsewhere decode as the stage did
    lineage = json.loads((paths.UPSAMPLER / "lineage.json").read_text())
    assert lineage["stage"] == "upsample" and set(lineage["inputs"]) == {
        "dataset", "short", "descriptive"
    }  # fmt: skip
    first = paths.UPSAMPLED_PROMPTS.read_bytes()
    stage.main()
    assert paths.UPSAMPLED_PROMPTS.read_bytes() == first  # seeded: the same bytes again


def test_an_instruction_lm_folder_is_driven_through_its_chat_template(project):
    write_lm(project.root / "chat-lm", ["a red circle on a white background"])
    tiny_project(project, lm="chat-lm")
    report = stage.main()
    assert not report["builtin"] and report["training"] == {}
    # dvclive/upsample is a DVC output: an LM used as it is still writes it, saying why
    assert (
        "used as it is"
        in json.loads((paths.DVCLIVE / "upsample" / "skipped.json").read_text())["skipped"]
    )
    model = up_lib.load(paths.UPSAMPLER)
    assert_holds_saved_weights(model.lm, project.root / "chat-lm")  # the folder's, untrained
    prompt = model.tokenizer.decode(model.prompt_ids("a red circle")).strip()
    assert prompt == f"<|system|>{up_lib.INSTRUCTION}\n<|user|>a red circle\n<|assistant|>"
    # A template without a system role gets the instruction in the user's message.
    model.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    )
    prompt = model.tokenizer.decode(model.prompt_ids("a red circle")).strip()
    assert prompt == f"<|user|>{up_lib.INSTRUCTION}\n\na red circle\n<|assistant|>"


class Killed(Exception):
    pass


def test_upsample_captions_rewrites_every_ground_truth_and_resumes(project, monkeypatch):
    tiny_project(project)
    assert captions_stage.main() == {"images": 0}  # blend.use_upsampled false: nothing to do
    assert pq.read_table(paths.UPSAMPLED_CAPTIONS).num_rows == 0
    stage.main()
    project.write_params(upsample={**TINY_UPSAMPLE, "chunk_size": 16, "generate_batch_size": 8},
                         blend={"use_upsampled": True})  # fmt: skip
    real, calls = captions_stage.rewrite_each, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # dies in the third of four chunks
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(captions_stage, "rewrite_each", dying)
    with pytest.raises(Killed):
        captions_stage.main()
    summary = captions_stage.main()
    assert (summary["chunks_reused"], summary["chunks_computed"]) == (2, 2)
    resumed = paths.UPSAMPLED_CAPTIONS.read_bytes()
    monkeypatch.setattr(captions_stage, "rewrite_each", real)
    paths.UPSAMPLED_CAPTIONS.unlink()
    captions_stage.main()
    assert paths.UPSAMPLED_CAPTIONS.read_bytes() == resumed
    table = pq.read_table(paths.UPSAMPLED_CAPTIONS).to_pylist()
    rows = datasets.load_rows(paths.DATASET, ["caption"])
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    assert [r["ground_truth"] for r in table] == [r["caption"] for r in rows]
    assert all(isinstance(r["upsampled"], str) for r in table)
    assert {r["upsampler"] for r in table} == {lineage.tree_hash(paths.UPSAMPLER)}


def test_a_rewrite_does_not_depend_on_the_texts_beside_it():
    """The recipe leaves the batch out: `rewrite_each` batches only prompts of one length."""
    texts = [
        "a red circle", "two blue squares on a white background", "a star",
        "three green crosses at the top left", "a red circle", "text K on stripes",
    ]  # fmt: skip
    model = up_lib.create(TINY_LM, texts, 300, 0, 20, Decoding(max_new_tokens=12))
    whole = captions_stage.rewrite_each(model, texts, 64, 0)
    assert captions_stage.rewrite_each(model, texts, 2, 0) == whole
    assert [captions_stage.rewrite_each(model, [t], 64, 0)[0] for t in texts] == whole
    assert whole[0] == whole[4] and len(set(whole)) > 1  # the same text, the same rewrite


class CountingRewrites:
    """Counts the texts the upsampler rewrites."""

    def __init__(self, monkeypatch):
        self.texts, real = 0, up_lib.Upsampler.rewrite

        def counting(model, texts, *args, **kwargs):
            self.texts += len(texts)
            return real(model, texts, *args, **kwargs)

        monkeypatch.setattr(up_lib.Upsampler, "rewrite", counting)


def test_upsample_captions_rewrites_only_new_ground_truths_and_writes_a_full_runs_bytes(
    project, monkeypatch
):
    tiny_project(project)
    stage.main()
    params = {"upsample": {**TINY_UPSAMPLE, "chunk_size": 16, "generate_batch_size": 8},
              "blend": {"use_upsampled": True}}  # fmt: skip
    project.write_params(**params)
    counter = CountingRewrites(monkeypatch)
    first = captions_stage.main()
    distinct = len(set(captions_stage.ground_truth().values()))
    assert (first["rewritten"], first["reused"]) == (60, 0) and counter.texts >= distinct
    old = pq.read_table(paths.UPSAMPLED_CAPTIONS)

    counter.texts = 0
    assert captions_stage.main()["rewritten"] == 0 and counter.texts == 0  # nothing changed

    # The dataset grows by 12 images: only their ground truths are rewritten.
    project.write_params(**params, data={"synthetic": {"num_images": 72}})
    ingest.main()
    truth = captions_stage.ground_truth()
    new = {truth[k] for k in list(truth)[60:]} - {truth[k] for k in list(truth)[:60]}
    summary = captions_stage.main()
    assert counter.texts == len(new) and summary["rewritten"] == sum(truth[k] in new for k in truth)
    incremental = paths.UPSAMPLED_CAPTIONS.read_bytes()
    assert pq.read_table(paths.UPSAMPLED_CAPTIONS).slice(0, 60).equals(old)

    # From scratch on the grown dataset: the same bytes.
    paths.UPSAMPLED_CAPTIONS.unlink()
    assert captions_stage.main()["rewritten"] == 72
    assert paths.UPSAMPLED_CAPTIONS.read_bytes() == incremental


def test_a_new_upsampler_or_sampling_rewrites_every_ground_truth(project):
    tiny_project(project)
    stage.main()
    project.write_params(upsample={**TINY_UPSAMPLE, "chunk_size": 16},
                         blend={"use_upsampled": True})  # fmt: skip
    captions_stage.main()
    project.write_params(upsample={**TINY_UPSAMPLE, "chunk_size": 16, "steps": 5},
                         blend={"use_upsampled": True})  # fmt: skip
    stage.main()  # retrained: another upsampler
    assert captions_stage.main()["reused"] == 0
    assert captions_stage.main()["reused"] == 60
    sampling = {**TINY_UPSAMPLE, "chunk_size": 16, "decoding": {"strategy": "sample",
                                                                "max_new_tokens": 12}}  # fmt: skip
    project.write_params(upsample=sampling, blend={"use_upsampled": True})
    stage.main()
    captions_stage.main()
    assert captions_stage.main()["reused"] == 0  # a drawn rewrite depends on its batch
