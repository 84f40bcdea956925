"""The evaluation on a real source: no world work, a pretrained evaluation CLIP, a prompt
file of one's own (drawn as written and upsampled), FID/KID on CLIP features, and reports
that say what was left out."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from recaption import lineage, paths, prompt_file
from recaption.errors import UserError
from recaption.models import clip as clip_lib
from recaption.models import generator as gen_lib
from recaption.models import upsampler as up_lib
from recaption.models.captioner import Decoding
from recaption.models.tokenizer import train_tokenizer
from recaption.params import load_params
from recaption.stages import eval_models, evaluate, ingest, sample
from test_devices import with_cuda

from conftest import distinct_png

DATA = Path(__file__).parent / "data"
PROMPTS_CSV = (
    "prompt,category\n"
    "a red apple on a table,Food & Beverage\n"
    "a bowl of soup,Food & Beverage\n"
    "a dog in the park,Animals\n"
)
PROMPTS = ["a red apple on a table", "a bowl of soup", "a dog in the park"]
EVALUATE = {
    "images_per_prompt": 2, "heldout_prompts": 3, "steps": 2, "batch_size": 8,
    "chunk_size": 16, "grid_prompts": 2, "noise_guard": False,
    "clip": {"model": str(DATA / "tiny-clip-16.json"), "pretrained": "eval-clip.safetensors"},
}  # fmt: skip


def write_real(project, upsample: dict | None = None, **evaluate_overrides) -> None:
    """A folder source of 24 images with captions; evaluate set up for a real source."""
    raw = project.root / "raw"
    raw.mkdir(exist_ok=True)
    lines = ["file,caption"]
    for i in range(24):
        (raw / f"img{i:02d}.png").write_bytes(distinct_png(i, size=16))
        lines.append(f"img{i:02d}.png,a photo of thing {i}")
    (raw / "captions.csv").write_text("\n".join(lines) + "\n")
    project.write_params(
        data={"source": "folder", "path": "raw"},
        sample={"size": 8, "heldout_size": 10},
        evaluate={**EVALUATE, **evaluate_overrides},
        upsample=upsample or {},
    )


@pytest.fixture
def real(project):
    write_real(project)
    donor = clip_lib.create(str(DATA / "tiny-clip-16.json"), None, seed=5)
    state = {k: v.contiguous() for k, v in donor.model.state_dict().items()}
    save_file(state, project.root / "eval-clip.safetensors")
    ingest.main()
    sample.main()
    return project


def test_the_oracle_stage_on_a_real_source_writes_only_why_it_did_nothing(real):
    report = eval_models.oracle_main()
    reason = report["skipped"]
    assert "data.source is 'folder'" in reason and "built-in world" in reason
    saved = {p: p.read_bytes() for p in (paths.ORACLE_REPORT, paths.ORACLE / "lineage.json")}
    assert json.loads(saved[paths.ORACLE / "lineage.json"])["skipped"] == reason
    assert (paths.DVCLIVE / "oracle" / "skipped.json").is_file()  # a DVC output, made
    assert not list(paths.ORACLE.glob("*.safetensors"))
    eval_models.oracle_main()
    assert {p: p.read_bytes() for p in saved} == saved  # deterministic


def test_a_real_source_needs_a_pretrained_evaluation_clip(real):
    write_real(real, clip={"pretrained": "none"})
    with pytest.raises(eval_models.EvalClipError, match="Set evaluate.clip.pretrained to an"):
        eval_models.eval_clip_main()
    assert not paths.EVAL_CLIP.exists()


def test_the_pretrained_evaluation_clip_is_saved_as_loaded(real):
    report = eval_models.eval_clip_main()
    assert report["pretrained"] == "eval-clip.safetensors" and "skipped" in report
    state = clip_lib.load(paths.EVAL_CLIP).model.state_dict()
    donor = clip_lib.create(str(DATA / "tiny-clip-16.json"), None, seed=5).model.state_dict()
    assert all(torch.equal(state[k], donor[k]) for k in donor)


def tiny_generator() -> None:
    tokenizer = train_tokenizer(["a photo of a red apple", "a dog in a park"] * 5, 120, wrap=True)
    gen_lib.create_builtin(DATA / "tiny-unet-16.json", tokenizer, 16, 0).save_pretrained(
        paths.GENERATOR
    )


def tiny_upsampler() -> None:
    """A built-in upsampler in models/upsampler, trained a few steps to add ", in soft
    light" to each prompt (untrained, it writes bytes that decode to nothing readable)."""
    pairs = [(p, f"{p}, in soft light") for p in PROMPTS]
    texts = sorted({t for pair in pairs for t in pair})
    decoding = Decoding(max_new_tokens=12)
    model = up_lib.create(str(DATA / "tiny-gpt2.json"), texts, 300, 0, 20, decoding)
    config = up_lib.UpsampleTrainConfig(steps=100, batch_size=3, lr=3e-3, warmup_steps=2,
                                        weight_decay=0.0, grad_clip=1.0, max_tokens=16,
                                        precision="fp32", seed=0)  # fmt: skip
    up_lib.train(model, pairs, config)
    model.save(paths.UPSAMPLER)


@pytest.fixture
def with_prompt_file(real):
    """The real project with a prompt file, the evaluation models, a generator and an
    upsampler that rewrites in batches of two."""
    (real.root / "prompts.csv").write_text(PROMPTS_CSV)
    write_real(real, {"generate_batch_size": 2, "device": "cpu"}, prompts_file="prompts.csv")
    eval_models.oracle_main()
    eval_models.eval_clip_main()
    tiny_generator()
    tiny_upsampler()
    return real


def test_evaluate_on_a_real_source_with_a_prompt_file(with_prompt_file):
    params = load_params()
    model = up_lib.load(paths.UPSAMPLER)
    rewrites = model.rewrite(PROMPTS, None, params.upsample.generate_batch_size, params.seed)
    assert all(rewrites) and not set(rewrites) & set(PROMPTS)  # the phrasings differ
    metrics = evaluate.main()
    # 3 prompts x 2 phrasings x 2 images, and 3 held-out ground truths
    assert metrics["images"] == 3 * 2 * 2 + 3
    by_category = metrics["clip_score_by_category"]
    assert set(by_category) == {"as_written", "upsampled"}
    assert all(set(v) == {"Food & Beverage", "Animals"} for v in by_category.values())
    assert set(metrics["clip_score"]) == {"prompts", "heldout"}
    assert set(metrics["clip_score"]["prompts"]) == {"as_written", "upsampled"}
    for key in evaluate.WORLD_ONLY:
        assert key not in metrics
    assert set(metrics["not_measured"]) == {"prompt_following (GenEval)", "fact_accuracy"}
    distance = metrics["image_distance"]
    assert set(distance) == {"prompts", "heldout"}
    for phrasing in ("as_written", "upsampled"):
        assert distance["prompts"][phrasing]["reference_images"] == 10  # the held-out split
        assert distance["prompts"][phrasing]["images"] == 3 * 2
        assert distance["prompts"][phrasing]["fid_clip"] >= 0
    assert metrics["prompts_file"]["path"] == "prompts.csv"
    assert metrics["prompts_file"]["upsampler"] == lineage.tree_hash(paths.UPSAMPLER)
    page = paths.INDEX_HTML.read_text()
    assert "Not measured" in page and "Food &amp; Beverage" in page and "fid_clip" in page
    assert "upsampled clipscore" in page and "prompts: upsampled" in page
    assert (paths.GRIDS / "Food_Beverage.png").is_file()
    plot = (paths.EVAL_PLOTS / "clip_score.csv").read_text()
    assert "prompts as_written," in plot and "prompts upsampled," in plot
    assert metrics == json.loads(paths.METRICS.read_text())
    # What was drawn: each prompt as written and as the upsampler rewrote it, on one noise.
    rows = [r for r in pq.read_table(paths.EVAL_SAMPLES).to_pylist() if r["set"] == "prompts"]
    drawn = {r["key"]: r for r in rows}
    for n, (prompt, rewrite) in enumerate(zip(PROMPTS, rewrites, strict=True)):
        for i in range(2):
            written = drawn[f"prompts/{n:05d}/as_written/{i}"]
            upsampled = drawn[f"prompts/{n:05d}/upsampled/{i}"]
            assert (written["prompt"], upsampled["prompt"]) == (prompt, rewrite)
            assert written["seed"] == upsampled["seed"]
            assert written["category"] == upsampled["category"]


def test_without_a_prompt_file_evaluate_never_loads_the_upsampler(real, monkeypatch):
    def refuse(folder):
        raise AssertionError("the upsampler was loaded")

    monkeypatch.setattr(up_lib, "load", refuse)
    jobs = evaluate.make_jobs(load_params())
    assert jobs and {j.set for j in jobs} == {"heldout"}  # a real source: no suite either


def test_a_prompt_file_is_upsampled_on_upsample_device(real, monkeypatch):
    (real.root / "prompts.csv").write_text(PROMPTS_CSV)
    write_real(real, {"device": "cuda"}, prompts_file="prompts.csv")
    with_cuda(monkeypatch, False)
    with pytest.raises(UserError, match="upsample.device is 'cuda' but no CUDA device"):
        evaluate.make_jobs(load_params())


def test_a_prompt_file_reads_partiprompts_and_jsonl(tmp_path):
    tsv = tmp_path / "parti.tsv"
    tsv.write_text("Prompt\tCategory\tChallenge\nA cat\tAnimals\tBasic\nA car\t\tBasic\n")
    assert prompt_file.read_prompts(tsv) == [
        prompt_file.UserPrompt("A cat", "Animals"),
        prompt_file.UserPrompt("A car", prompt_file.UNCATEGORISED),
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a boat"}\n\n{"prompt": "a tree", "category": "plants"}\n')
    assert [p.category for p in prompt_file.read_prompts(jsonl)] == ["all", "plants"]


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("none.csv", None, "not found"),
        ("nocol.csv", "text,category\na cat,animals\n", "no 'prompt' column"),
        ("empty.csv", "prompt,category\n", "holds no prompts"),
        ("empty.jsonl", "\n", "holds no prompts"),
        ("blank.csv", "prompt\na cat\n  \n", "1 blank prompt"),
        ("p.txt", "a cat\n", "not .csv, .tsv or .jsonl"),
    ],
)
def test_a_bad_prompt_file_is_refused_with_the_reason(tmp_path, name, text, error):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(prompt_file.PromptFileError, match=error) as err:
        prompt_file.read_prompts(path)
    assert "evaluate.prompts_file" in str(err.value)


def test_the_caption_report_scores_each_caption_set_without_references(real):
    import pyarrow as pa

    from recaption import datasets, io
    from recaption.metrics.tags import TAG_SCHEMA, TAGS
    from recaption.stages import caption_report

    eval_models.eval_clip_main()
    keys = sorted(datasets.read_splits(paths.SPLITS)["heldout"])
    io.write_table(paths.SYNTHETIC_CAPTIONS, pa.table({
        "key": keys, "short": ["a thing"] * len(keys),
        "descriptive": [f"a thing of colour {i} on a plain background" for i in range(len(keys))],
    }))  # fmt: skip
    rows = [{"key": k, **dict.fromkeys(TAGS)} for k in keys]
    io.write_table(paths.CAPTION_TAGS, pa.Table.from_pylist(rows, schema=TAG_SCHEMA))
    io.write_table(
        paths.UPSAMPLED_CAPTIONS, pa.table({"key": keys, "upsampled": ["a long one"] * len(keys)})
    )
    report = caption_report.main()
    kinds = report["kinds"]
    assert set(kinds) == {"ground truth", "short", "descriptive", "upsampled"}
    assert kinds["short"]["vocabulary"] == 2 and kinds["upsampled"]["vocabulary"] == 3
    assert all(0 <= k["clipscore"] <= 2.5 for k in kinds.values())
    assert "bleu4" not in kinds["short"]  # a real source without reference columns
    assert "clipscore" in paths.CAPTIONS_HTML.read_text()
