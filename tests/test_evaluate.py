"""The evaluation: GenEval rules, the oracle detector, CLIP-score conventions, summaries."""

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from recaption.metrics import clip_score, evaluation_page, evaluation_summary, fact_scores, geneval
from recaption.metrics.noise_guard import NoiseError
from recaption.models import clip as clip_lib
from recaption.models import oracle as oracle_lib
from recaption.models.training import Checkpoints
from recaption.params import ParamsError, load_params
from recaption.stages import eval_models, evaluate
from recaption.world import (
    CATEGORIES,
    POSITIONS,
    Scene,
    SceneObject,
    SceneText,
    WorldConfig,
    make_example,
)


def scene(*objects, text=None, background="white"):
    objs = tuple(SceneObject(s, c, "small", p) for s, c, p in objects)
    return Scene(background, objs, 0, text)


def demand(*objects, relation=None):
    return {
        "objects": [{"shape": s, "colour": c, "count": n} for s, c, n in objects],
        "relation": relation,
    }


def judge(sc, d, category):
    return geneval.follows(oracle_lib.scene_detection(sc), d, category)


def test_counting_needs_the_exact_count():
    three = scene(("square", "blue", "top left"), ("square", "blue", "top"),
                  ("square", "blue", "right"))  # fmt: skip
    assert judge(three, demand(("square", "blue", 3)), "counting")
    assert not judge(three, demand(("square", "blue", 2)), "counting")
    assert not judge(three, demand(("square", "red", 3)), "counting")


def test_presence_and_colour_rules():
    sc = scene(("circle", "red", "left"), ("star", "green", "bottom"))
    assert judge(sc, demand(("circle", None, 1)), "single_object")
    assert judge(sc, demand(("circle", None, 1), ("star", None, 1)), "two_objects")
    assert not judge(sc, demand(("circle", None, 1), ("cross", None, 1)), "two_objects")
    assert judge(sc, demand(("circle", "red", 1)), "colors")
    assert not judge(sc, demand(("circle", "green", 1)), "colors")
    assert judge(sc, demand(("circle", "red", 1), ("star", "green", 1)), "color_attr")
    assert not judge(sc, demand(("circle", "green", 1), ("star", "red", 1)), "color_attr")


def row_and_col(name: str) -> tuple[int, int]:
    """A position's grid cell read off its words, not the world's table."""
    row = 0 if "top" in name else 2 if "bottom" in name else 1
    col = 0 if "left" in name else 2 if "right" in name else 1
    return row, col


# axis 0 compares rows, 1 columns; sign -1: the first object's index is the smaller.
@pytest.mark.parametrize(
    "relation, axis, sign",
    [("left of", 1, -1), ("right of", 1, 1), ("above", 0, -1), ("below", 0, 1)],
)
def test_position_is_judged_by_grid_cells(relation, axis, sign):
    # Every ordered pair of the 9 cells: off the diagonal, a row/column mix-up shows.
    assert len(POSITIONS) == 9
    for a in POSITIONS:
        for b in POSITIONS:
            if a == b:
                continue
            sc = scene(("circle", "red", a), ("star", "blue", b))
            d = demand(("circle", "red", 1), ("star", "blue", 1), relation=relation)
            holds = sign * (row_and_col(a)[axis] - row_and_col(b)[axis]) > 0
            assert judge(sc, d, "position") is holds, (a, relation, b)


def test_a_glyph_is_not_an_object():
    sc = scene(("circle", "red", "left"), text=SceneText("A", "right", "black"))
    detection = oracle_lib.scene_detection(sc)
    assert detection["glyph"] == [1, 2]
    assert len(detection["objects"]) == 1


@pytest.fixture(scope="module")
def renders():
    cfg = WorldConfig(image_size=16)
    examples = [make_example(3, i, cfg) for i in range(40)]
    images = torch.from_numpy(np.stack([np.asarray(e.image) for e in examples]))
    return [e.scene for e in examples], images.permute(0, 3, 1, 2).contiguous()


def test_a_perfect_prediction_decodes_to_the_scene(renders):
    scenes, _ = renders
    targets = oracle_lib.stack_targets(scenes)
    pred = {**targets, "colour": targets["colour"].clamp(min=0)}
    assert oracle_lib.detections(pred) == [oracle_lib.scene_detection(s) for s in scenes]
    assert set(oracle_lib.accuracy(pred, targets).values()) == {1.0}


def test_accuracy_counts_each_kind_of_error(renders):
    scenes, _ = renders
    targets = oracle_lib.stack_targets(scenes)
    pred = {**targets, "colour": targets["colour"].clamp(min=0).clone()}
    objects = (targets["content"] > 0) & (targets["content"] != oracle_lib.GLYPH)
    image, cell = map(int, objects.nonzero()[0])
    pred["colour"][image, cell] = (pred["colour"][image, cell] + 1) % 8
    acc = oracle_lib.accuracy(pred, targets)
    assert acc["colour"] == pytest.approx(1 - 1 / int(objects.sum()))
    assert acc["scene"] == pytest.approx(1 - 1 / len(scenes))
    assert acc["shape"] == acc["count"] == acc["background"] == 1.0


def test_oracle_saves_and_loads_the_same_weights(tmp_path, renders):
    _, images = renders
    torch.manual_seed(0)
    model = oracle_lib.Oracle(oracle_lib.OracleConfig(input_size=24, widths=(4, 8, 8), hidden=8))
    oracle_lib.save(model, tmp_path / "o")
    again = oracle_lib.load(tmp_path / "o")
    with torch.no_grad():
        a, b = model.eval()(images), again(images)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "o" / oracle_lib.CONFIG_NAME).read_text())
    config["colours"] = config["colours"][::-1]
    (tmp_path / "o" / oracle_lib.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(oracle_lib.OracleError, match="another world vocabulary"):
        oracle_lib.load(tmp_path / "o")


class Crash(Exception):
    pass


def oracle_config(**overrides) -> oracle_lib.OracleTrainConfig:
    fields = dict(steps=60, batch_size=20, lr=3e-3, noise=0.06, seed=0, warmup_steps=5,
                  weight_decay=1e-4, grad_clip=math.inf)  # fmt: skip
    return oracle_lib.OracleTrainConfig(**{**fields, **overrides})


def small_oracle(seed: int = 0) -> oracle_lib.Oracle:
    torch.manual_seed(seed)
    return oracle_lib.Oracle(oracle_lib.OracleConfig(input_size=24, widths=(8, 16, 16), hidden=32))


def test_oracle_training_lowers_the_loss(renders):
    scenes, images = renders
    targets = oracle_lib.stack_targets(scenes)
    model = small_oracle()

    def held_loss() -> float:
        with torch.no_grad():
            return oracle_lib._loss(model.eval()(images), targets).item()

    before = held_loss()
    oracle_lib.train_oracle(model, images, targets, oracle_config())
    assert held_loss() < 0.5 * before


def test_a_killed_oracle_training_resumes_to_the_same_weights(renders, tmp_path):
    scenes, images = renders
    targets = oracle_lib.stack_targets(scenes)
    config = oracle_config(steps=12, batch_size=8)
    clean = small_oracle()
    oracle_lib.train_oracle(clean, images, targets, config)

    def crash(step, metrics):  # the first log is at the last step, after the step-8 checkpoint
        raise Crash

    folder = Checkpoints(tmp_path / "ck", every=4)
    with pytest.raises(Crash):
        oracle_lib.train_oracle(small_oracle(), images, targets, config, crash,
                                checkpoints=folder)  # fmt: skip
    assert json.loads((folder.folder / "state.json").read_text())["step"] == 8
    resumed = small_oracle(seed=1)  # other weights: the checkpoint's must replace them
    oracle_lib.train_oracle(resumed, images, targets, config, checkpoints=folder)
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # BatchNorm statistics included


def test_the_oracle_stage_refuses_a_weak_oracle(project):
    project.write_params(
        evaluate={"oracle": {"train_size": 100, "heldout_size": 50, "steps": 2, "batch_size": 16}}
    )
    with pytest.raises(eval_models.OracleAccuracyError, match="evaluate.oracle.min_accuracy"):
        eval_models.oracle_main()
    report = json.loads((project.root / "reports/oracle.json").read_text())
    assert set(report["accuracy"]) >= {"shape", "colour", "position", "count", "background"}
    assert not (project.root / "models/eval/oracle").exists()


def test_fresh_renders_must_not_be_the_dataset(project):
    project.write_params(evaluate={"seed": 7})  # the tiny project's `seed`
    with pytest.raises(ParamsError, match="evaluate.seed must differ from seed"):
        load_params()


def test_clip_score_conventions():
    cos = np.array([-0.2, 0.3])
    assert clip_score.clip_scores(cos) == {"clipscore": pytest.approx(0.375), "cos100": 5.0}


# A stub CLIP whose embeddings are set by hand, so the cosines are known. An image's
# embedding is its top-left pixel as the model sees it: with mean 51/255 and std 1/255,
# pixel value 51 + x reads as x.
IMAGE_EMBEDDINGS = [(3, 4, 0), (0, -6, 8), (7, 0, 24)]  # norms 5, 10, 25
PROMPT_EMBEDDINGS = {  # norms 10, 2, 5
    "a red circle": (8, 6, 0),
    "a blue square": (0, 0, 2),
    "two green stars": (0, 3, -4),
}


class StubClipModel:
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, 4, 4) -> (B, 3)
        assert images.shape[1:] == (3, 4, 4)  # resized to the model's input size
        return images[:, :, 0, 0]

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 3)
        return torch.tensor(list(PROMPT_EMBEDDINGS.values()), dtype=torch.float32)[ids]


def test_clip_cosines_pair_each_image_with_its_own_prompt():
    prompts = list(PROMPT_EMBEDDINGS)
    clip = clip_lib.Clip(
        StubClipModel(),
        {"vision_cfg": {"image_size": 4}},
        {"mean": [51 / 255] * 3, "std": [1 / 255] * 3},
        lambda texts: torch.tensor([prompts.index(t) for t in texts]),
    )
    # Solid 6x6 images, one per prompt, in the prompts' order: (B, 3, 6, 6) uint8
    pixels = torch.tensor(IMAGE_EMBEDDINGS) + 51
    images = pixels.to(torch.uint8).view(3, 3, 1, 1).expand(3, 3, 6, 6)
    cos = evaluate.clip_cosines(clip, images, prompts)
    # Unit vectors: image (.6, .8, 0), (0, -.6, .8), (.28, 0, .96); prompt (.8, .6, 0),
    # (0, 0, 1), (0, .6, -.8). Each image with its own prompt: .96, .8, -.768. Any other
    # pairing differs (image 0 with prompt 1 is 0, image 1 with prompt 2 is -1), and so do
    # raw dot products (48 for the first pair).
    assert cos == pytest.approx([0.96, 0.8, -0.768], abs=1e-5)
    # CLIPScore clamps at 0: 2.5 * (.96 + .8 + 0) / 3 = 4.4 / 3 = 1.4667;
    # 100 * cos does not: 100 * (.96 + .8 - .768) / 3 = 99.2 / 3 = 33.067.
    assert clip_score.clip_scores(cos) == {"clipscore": 1.4667, "cos100": 33.067}


def test_overall_prompt_following_is_the_mean_over_categories():
    rows = [
        # 3 counting images, 1 right; 1 colors image, right: images 2/4, categories 2/3.
        *[{"set": "suite", "phrasing": "short", "category": "counting", "follows": f, "cos": 0.1}
          for f in (True, False, False)],
        {"set": "suite", "phrasing": "short", "category": "colors", "follows": True, "cos": 0.1},
        {"set": "heldout", "phrasing": "ground_truth", "category": "heldout", "follows": None,
         "cos": 0.5},
    ]  # fmt: skip
    summary = evaluation_summary.summarise(pa.Table.from_pylist(rows))
    assert summary["prompt_following"] == {
        "short": {"overall": pytest.approx((1 / 3 + 1) / 2, abs=1e-4), "counting": 0.3333,
                  "colors": 1.0}
    }  # fmt: skip
    assert summary["clip_score"]["heldout"]["ground_truth"]["cos100"] == 50.0
    assert summary["images"] == 5


def test_a_prompt_files_clip_scores_are_kept_apart_per_phrasing_and_category():
    def user(phrasing, category, cos):
        return {"set": "prompts", "phrasing": phrasing, "category": category, "follows": None,
                "cos": cos}  # fmt: skip

    rows = [user("as_written", "animals", 0.2), user("as_written", "animals", 0.4),
            user("upsampled", "animals", 0.3), user("as_written", "food", -0.1),
            user("upsampled", "food", 0.1)]  # fmt: skip
    summary = evaluation_summary.summarise(pa.Table.from_pylist(rows))
    assert summary["clip_score_by_category"] == {
        "as_written": {"animals": {"clipscore": 0.75, "cos100": 30.0},
                       "food": {"clipscore": 0.0, "cos100": -10.0}},
        "upsampled": {"animals": {"clipscore": 0.75, "cos100": 30.0},
                      "food": {"clipscore": 0.25, "cos100": 10.0}},
    }  # fmt: skip
    metrics = {"generator": {"sha256": "g", "caption_version": "v"}, **summary}
    html = evaluation_page.render_index(metrics, {}, "grids")
    table = html[html.index("Your prompts, by category") :]
    assert ("<th>as_written clipscore</th><th>as_written cos100</th>"
            "<th>upsampled clipscore</th><th>upsampled cos100</th>") in table  # fmt: skip
    cells = "".join(f'<td class="num">{v}</td>' for v in ("0.000", "-10.000", "0.250", "10.000"))
    assert f"<tr><th>food</th>{cells}</tr>" in table  # each phrasing's figures on one row


def red_circle(colour="red"):
    """A detection of one circle of `colour` at the top left on white."""
    objects = [{"shape": "circle", "colour": colour, "row": 0, "col": 0}]
    return {"background": "white", "objects": objects, "glyph": None}


def sample(item, category, phrasing, detection, demands=None, set_="suite"):
    return {"set": set_, "item": item, "category": category, "phrasing": phrasing,
            "demands": json.dumps(demands) if demands else "",
            "detection": json.dumps(detection) if detection else None}  # fmt: skip


@pytest.fixture
def fact_summary():
    red, two = demand(("circle", "red", 1)), demand(("square", "blue", 2))
    one_square = {**red_circle(), "objects": [{"shape": "square", "colour": "blue", "row": 1,
                                                "col": 1}]}  # fmt: skip
    placed = [{"shape": "circle", "colour": "red", "count": 1, "positions": ["top left"]}]
    heldout = {"k1": {"objects": placed, "relation": None, "background": "white"}}
    rows = [
        sample("colors-000", "colors", "short", red_circle(), red),  # 2 facts of 2
        sample("colors-000", "colors", "short", red_circle(), red),
        sample("colors-001", "colors", "short", red_circle(), red),
        sample("colors-001", "colors", "short", red_circle("blue"), red),  # colour wrong: 1/2
        sample("counting-000", "counting", "short", one_square, two),  # count wrong: 2/3
        sample("counting-000", "counting", "short", one_square, two),
        sample("colors-000", "colors", "descriptive", None, red),  # no oracle: not scored
        sample("k1", "heldout", "descriptive", red_circle(), set_="heldout"),  # 4 facts of 4
        sample("k1", "heldout", "short", red_circle(), set_="heldout"),  # not scored
    ]
    scored = fact_scores.score_facts(pa.Table.from_pylist(rows), heldout)
    return scored, fact_scores.summarise_facts(scored)


def test_fact_accuracy_per_image(fact_summary):
    scored, _ = fact_summary
    assert scored.column("fact_accuracy").to_pylist() == pytest.approx(
        [1.0, 1.0, 1.0, 0.5, 2 / 3, 2 / 3, None, 1.0, None]
    )
    verdicts = json.loads(scored.column("facts")[3].as_py())
    assert verdicts == [{"kind": "object", "fact": "a circle", "holds": True},
                        {"kind": "colour", "fact": "a red circle", "holds": False}]  # fmt: skip


def test_fact_accuracy_summary_per_phrasing_and_category_with_intervals(fact_summary):
    _, summary = fact_summary
    # colors: prompts 1.0 and 0.75; counting: one prompt at 2/3; overall over categories.
    assert summary["fact_accuracy"] == {
        "short": {
            "overall": 0.7708, "colors": 0.875, "counting": 0.6667,
            "ci95": {"overall": [0.7083, 0.8333], "colors": [0.75, 1.0],
                     "counting": [0.6667, 0.6667]},
        }
    }  # fmt: skip
    assert summary["fact_accuracy_heldout"] == {
        "descriptive": {"overall": 1.0, "ci95": {"overall": [1.0, 1.0]}}
    }
    assert summary["fact_accuracy_by_kind"] == {
        "short": {"object": 1.0, "colour": 0.8333, "count": 0.0}
    }


def test_the_page_and_plots_show_fact_accuracy(fact_summary, tmp_path):
    _, summary = fact_summary
    chance = {"overall": 0.3, "colors": 0.4, "counting": 0.2}
    metrics = {"generator": {"sha256": "g", "caption_version": "v"}, "images": 9,
               "prompt_following": {}, "clip_score": {}, **summary,
               "fact_accuracy_chance": chance}  # fmt: skip
    html = evaluation_page.render_index(metrics, {}, "grids")
    assert "Fact accuracy" in html and "0.875 [0.750, 1.000]" in html
    assert "held-out descriptive" in html and "look like noise" not in html
    fact_scores.write_fact_plots(metrics, tmp_path)
    assert (tmp_path / "fact_accuracy_short.csv").read_text() == (
        "category,accuracy,ci95_low,ci95_high\ncolors,0.875,0.75,1.0\n"
        "counting,0.6667,0.6667,0.6667\n"
    )


def test_chance_fact_accuracy():
    suite = [{"category": "colors", "demands": json.dumps(demand(("circle", "red", 1)))},
             {"category": "colors", "demands": json.dumps(demand(("circle", "blue", 1)))},
             {"category": "two_objects",
              "demands": json.dumps(demand(("circle", None, 1), ("square", None, 1)))}]  # fmt: skip
    chance = fact_scores.chance_fact_accuracy([red_circle()], suite)
    assert chance == {"overall": 0.625, "colors": 0.75, "two_objects": 0.5}


def test_item_seeds_are_shared_by_phrasings_and_differ_by_item():
    assert evaluate.item_seed(1, "colors-000", 0) == evaluate.item_seed(1, "colors-000", 0)
    assert evaluate.item_seed(1, "colors-000", 1) == evaluate.item_seed(1, "colors-000", 0) + 1
    assert evaluate.item_seed(1, "colors-001", 0) != evaluate.item_seed(1, "colors-000", 0)
    assert evaluate.item_seed(2, "colors-000", 0) != evaluate.item_seed(1, "colors-000", 0)


def test_each_suite_prompt_is_drawn_as_written_described_and_upsampled(project):
    import pyarrow.parquet as pq

    from recaption import io, paths
    from recaption.stages import ingest, prompts, sample

    for module in (ingest, prompts, sample):
        module.main()
    suite = pq.read_table(paths.PROMPTS).to_pylist()
    without = evaluate.make_jobs(load_params())  # before the upsample stage: two phrasings
    assert {j.phrasing for j in without if j.set == "suite"} == {"short", "descriptive"}
    io.write_table(paths.UPSAMPLED_PROMPTS, pa.table({
        "id": [r["id"] for r in suite], "prompt": [r["prompt"] for r in suite],
        "upsampled": [f"upsampled {r['prompt']}" for r in suite],
    }))  # fmt: skip
    jobs = [j for j in evaluate.make_jobs(load_params()) if j.set == "suite"]
    by_phrasing = {p: [j for j in jobs if j.phrasing == p] for p in ("short", "upsampled")}
    assert len(by_phrasing["upsampled"]) == len(by_phrasing["short"]) == 2 * len(suite)  # 2 each
    for short, up in zip(by_phrasing["short"], by_phrasing["upsampled"], strict=True):
        assert up.prompt == f"upsampled {short.prompt}"
        assert (up.seed, up.demands, up.category) == (short.seed, short.demands, short.category)


def test_the_chance_baseline_matches_the_worlds_odds(project):
    from recaption.stages import prompts

    project.write_params(data={"synthetic": {"min_objects": 1, "max_objects": 1}})
    prompts.main()
    chance = evaluate.chance_following(load_params(), scenes=3000)
    # One object per scene: a named shape is drawn 1 time in 6, a shape in a colour 1 in 48,
    # and two objects or a count of two or more never.
    assert chance["single_object"] == pytest.approx(1 / 6, abs=0.02)
    assert chance["colors"] == pytest.approx(1 / 48, abs=0.01)
    assert chance["two_objects"] == chance["counting"] == chance["position"] == 0.0


class Killed(Exception):
    pass


def test_evaluate_resumes_a_killed_run_and_writes_what_a_clean_run_writes(
    project, monkeypatch, caplog
):
    from pathlib import Path

    from recaption import paths
    from recaption.models import clip as clip_lib
    from recaption.models import generator as gen_lib
    from recaption.models.tokenizer import train_tokenizer
    from recaption.stages import ingest, prompts, sample

    data = Path(__file__).parent / "data"
    project.write_params(
        evaluate={"images_per_prompt": 1, "heldout_prompts": 2, "steps": 2, "batch_size": 8,
                  "chunk_size": 16, "grid_prompts": 2},
    )  # fmt: skip
    ingest.main(), prompts.main(), sample.main()
    tokenizer = train_tokenizer(["a photo of a red circle", "two blue squares"] * 5, 120, wrap=True)
    gen_lib.create_builtin(data / "tiny-unet-16.json", tokenizer, 16, 0).save_pretrained(
        paths.GENERATOR
    )
    torch.manual_seed(0)
    tiny = oracle_lib.OracleConfig(input_size=24, widths=(4, 8, 8), hidden=8)
    oracle_lib.save(oracle_lib.Oracle(tiny), paths.ORACLE)
    clip_lib.save(clip_lib.create(str(data / "tiny-clip-16.json"), None), paths.EVAL_CLIP)

    real, calls = gen_lib.GeneratorPipeline.__call__, {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 batches of 8 per chunk of 16: dies inside chunk 2
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gen_lib.GeneratorPipeline, "__call__", dying)
    with pytest.raises(Killed):
        evaluate.main()
    assert not paths.EVAL_SAMPLES.exists()
    calls["n"] = 100
    with caplog.at_level("INFO"), pytest.raises(NoiseError, match="look like noise"):
        evaluate.main()  # an untrained generator draws noise: no metric of it is written
    assert "evaluate: reused 1 finished chunks of 3" in caplog.text  # 3 * 6 * 2 + 2 * 3 = 42
    assert paths.EVAL_SAMPLES.exists() and not paths.METRICS.exists()
    project.write_params(
        evaluate={"images_per_prompt": 1, "heldout_prompts": 2, "steps": 2, "batch_size": 8,
                  "chunk_size": 16, "grid_prompts": 2, "noise_guard": False},
    )  # fmt: skip
    metrics = evaluate.main()
    assert metrics["images"] == 42
    assert metrics["noise_check"]["looks_like_noise"] is True
    assert "look like noise" in paths.INDEX_HTML.read_text()
    assert set(metrics["fact_accuracy"]["short"]["ci95"]) == {"overall", *CATEGORIES}
    assert set(metrics["fact_accuracy_heldout"]) == {"descriptive"}
    assert (paths.EVAL_PLOTS / "fact_accuracy_descriptive.csv").is_file()
    assert set(metrics["image_distance"]) == {"suite", "heldout"}  # the world's too
    assert "not_measured" not in metrics
    assert not evaluate.WORK_DIR.exists()
    resumed = paths.EVAL_SAMPLES.read_bytes()
    paths.EVAL_SAMPLES.unlink()
    evaluate.main()
    assert paths.EVAL_SAMPLES.read_bytes() == resumed
    assert (paths.GRIDS / "heldout.png").is_file() and paths.INDEX_HTML.is_file()
