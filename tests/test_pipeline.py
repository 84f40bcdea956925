"""`dvc repro` end to end in a temporary git repository, and which stages an edit makes stale."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_repo import finished_copy, read_reads, reads_env, run, stale, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_repro) -> Path:
    return tiny_repro.path


def test_repro_runs_every_stage_and_leaves_nothing_stale(repo):
    for path in (
        "data/dataset",
        "data/rejects.parquet",
        "data/prompts/suite.parquet",
        "data/subset/splits.parquet",
        "data/annotations/short.parquet",
        "data/annotations/descriptive.parquet",
        "reports/ingest.json",
        "models/captioner/stage2/model.safetensors",
        "data/captions/synthetic.parquet",
        "data/captions/tags.parquet",
        "reports/captions.json",
        "reports/captions.html",
        "data/relabeled/captions.parquet",
        "reports/blend.json",
        "models/autoencoder/config.json",
        "reports/autoencoder.json",
        "reports/autoencoder.png",
        "data/latents/part-00000.parquet",
        "models/generator/model_index.json",
        "models/generator/vae/config.json",
        "models/eval/oracle/oracle.safetensors",
        "models/eval/clip/open_clip_model.safetensors",
        "data/evaluation/samples.parquet",
        "reports/plots/prompt_following_short.csv",
        "reports/plots/fact_accuracy_short.csv",
        "reports/plots/clip_score.csv",
        "reports/grids/counting.png",
        "reports/grids/heldout.png",
        "reports/index.html",
        "models/upsampler/upsampler.json",
        "data/upsampled/prompts.parquet",
        "reports/upsample.json",
    ):
        assert (repo / path).exists(), path
    assert stale(repo) == set()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {
        "ingest",
        "prompts",
        "sample",
        "annotate",
        "clip_pretrain",
        "embed",
        "embed_probe",
        "captioner_pretrain",
        "captioner_stage1",
        "captioner_stage2",
        "recaption",
        "caption_report",
        "upsample",
        "upsample_captions",
        "blend",
        "train_autoencoder",
        "encode_latents",
        "train_generator",
        "oracle",
        "eval_clip",
        "evaluate",
    }
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    categories = {"single_object", "two_objects", "counting", "colors", "position", "color_attr"}
    for phrasing in ("short", "descriptive", "upsampled"):
        assert set(metrics["prompt_following"][phrasing]) == {"overall", *categories}
        assert set(metrics["fact_accuracy"][phrasing]) == {"overall", "ci95", *categories}
    assert set(metrics["fact_accuracy_heldout"]) == {"descriptive"}
    assert set(metrics["clip_score"]["heldout"]) == {"ground_truth", "short", "descriptive"}
    assert metrics["images"] == 3 * 6 * 3 + 3 * 3  # suite in 3 phrasings, 3 held-out in 3
    trained_on = json.loads((repo / "models/generator/lineage.json").read_text())
    blend = json.loads((repo / "reports/blend.json").read_text())
    assert trained_on["caption_version"] == blend["caption_version"]
    assert metrics["generator"]["caption_version"] == blend["caption_version"]
    for folder in ("clip", "captioner/pretrain", "captioner/stage1", "captioner/stage2",
                   "upsampler", "autoencoder", "generator", "eval/oracle",
                   "eval/clip"):  # fmt: skip
        card = (repo / "models" / folder / "README.md").read_text()
        assert card.startswith("# ") and "## Params" in card, folder
    assert (repo / "models/upsampler/README.md").read_text().startswith("# Upsampler")
    card = (repo / "models/generator/README.md").read_text()
    assert f"**Caption version:** `{blend['caption_version']}`" in card
    assert not (repo / "data/.work/evaluate").exists()
    assert not (repo / "data/.work/train_generator").exists()  # checkpoints cleared
    # Dotted, so the run cache sees sample.size (dvc.yaml's sample stage says why).
    assert set(lock["stages"]["sample"]["params"]["params.yaml"]) == {
        "seed", "sample.size", "sample.overlap", "sample.heldout_size", "sample.stratify",
    }  # fmt: skip


def would_run(repo: Path) -> set[str]:
    """The stages `dvc status` reports plus every stage below them in `dvc dag`.

    dvc status names only stages whose own deps changed; a stage below one is stale
    through that stage's outputs, which change only once it reruns.
    """
    edges = [
        tuple(part.strip().strip('";') for part in line.split("->"))
        for line in run(["dvc", "dag", "--dot"], repo).splitlines()
        if "->" in line
    ]
    todo, seen = list(stale(repo)), set()
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.add(stage)
            todo += [dst for src, dst in edges if src == stage]
    return seen


def test_sample_edit_makes_exactly_sample_and_what_is_below_it_stale(repo):
    write_params(repo, sample={"size": 12})
    # dvc status names the stage whose params changed; annotate is stale through its output.
    assert stale(repo) == {"sample"}
    # The CLIP trains on the subset's annotations, and embed probes the held-out split.
    # The autoencoder trains on every image outside the held-out split too.
    assert would_run(repo) == {"sample", "annotate", "clip_pretrain", "embed", "embed_probe",
                               "upsample", "upsample_captions", "train_autoencoder",
                               "encode_latents", *CAPTIONER_AND_BELOW}  # fmt: skip
    run(["dvc", "repro", "--single-item", "sample"], repo)
    assert stale(repo) == {
        "annotate", "clip_pretrain", "embed_probe", "captioner_pretrain", "caption_report",
        "upsample",  # it trains on the subset's pairs
        "train_autoencoder",  # it trains on every image outside the held-out split
        "train_generator",  # so does it
        "evaluate",  # it draws held-out captions
    }  # fmt: skip
    # Back to the old size: sample writes its old bytes again, and so nothing is stale.
    write_params(repo)
    run(["dvc", "repro", "--single-item", "sample"], repo)
    assert stale(repo) == set()


CAPTIONER_AND_BELOW = {
    "captioner_pretrain", "captioner_stage1", "captioner_stage2", "recaption", "caption_report",
    "blend", "train_generator", "evaluate",
}  # fmt: skip


def test_a_stage2_edit_retrains_only_stage2_and_recaptions(repo):
    write_params(repo, captioner={"stage2": {"lr": 0.002}})
    assert stale(repo) == {"captioner_stage2"}
    assert would_run(repo) == {
        "captioner_stage2", "recaption", "caption_report", "blend", "train_generator", "evaluate"
    }  # fmt: skip
    write_params(repo, recaption={"descriptive": {"max_new_tokens": 9}})
    assert would_run(repo) == {
        "recaption", "caption_report", "blend", "train_generator", "evaluate"
    }  # fmt: skip
    write_params(repo, blend={"synthetic_ratio": 0.8})
    assert would_run(repo) == {"blend", "train_generator", "evaluate"}
    # Relabeling with upsampled captions first rewrites the ground truth, which the
    # caption report then scores beside the other caption sets.
    write_params(repo, blend={"use_upsampled": True})
    assert would_run(repo) == {
        "upsample_captions", "caption_report", "blend", "train_generator", "evaluate"
    }  # fmt: skip
    # Another generator seed trains another generator on the same caption version.
    write_params(repo, generator={"seed": 1})
    assert would_run(repo) == {"train_generator", "evaluate"}
    # Sampling more images per prompt reruns the evaluation only, never its models.
    write_params(repo, evaluate={"images_per_prompt": 2})
    assert would_run(repo) == {"evaluate"}


def test_prompts_edit_touches_only_prompts(repo):
    write_params(repo, prompts={"seed": 99})
    assert stale(repo) == {"prompts"}
    # embed reruns for the prompt embeddings, finds every image shard unchanged, and so
    # leaves its image output as it was: nothing below it runs but the evaluation.
    ran = {
        line.split("'")[1]
        for line in run(["dvc", "repro"], repo).splitlines()
        if line.startswith("Running stage")
    }
    assert ran == {"prompts", "embed", "upsample", "evaluate"}  # the suite's readers
    assert stale(repo) == set()


def test_a_typo_in_params_fails_before_any_work(repo):
    write_params(repo, sample={"size": 12, "overlapp": 0.5})
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        ["recap", "sample"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": env_path},
    )
    assert proc.returncode == 2
    assert "sample.overlapp: unknown key; did you mean 'overlap'?" in proc.stderr


# Keys a stage reads that its dvc.yaml params leave out on purpose: none can change the
# stage's outputs, so editing one reruns nothing (the second test below checks the bytes).
UNDECLARED = {
    "engine": "where the per-image stages run: both engines write the same bytes",
    "ray": "the cluster of engine: ray",
    "evaluate.noise_guard": "a gate: a run it lets through writes what it would have anyway",
    "evaluate.oracle": "in evaluate's resume fingerprint; it reaches evaluate's bytes only "
    "through models/eval/oracle, a dep",
    "evaluate.clip": "likewise, through models/eval/clip",
}


def covered(key: str, listed) -> bool:
    """Whether `key` or a section above it is in `listed` (a DVC params section covers
    every key under it)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in listed for i in range(1, len(parts) + 1))


def lock_outs(repo: Path, stage: str) -> list[dict]:
    """The outputs dvc.lock records for `stage`, with their hashes."""
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"]


def test_every_params_key_a_stage_reads_is_declared_in_dvc_yaml(tiny_repro, tmp_path):
    reads = tiny_repro.reads  # logged by the tiny run, stage by stage (conftest.tiny_repro)
    # With blend.use_upsampled off, as in the tiny run, upsample_captions writes an empty
    # table and reads nothing else: run it once more, on.
    repo = finished_copy(tiny_repro, tmp_path / "run")
    write_params(repo, blend={"use_upsampled": True})
    log = tmp_path / "reads.tsv"
    run(["dvc", "repro", "--force", "--single-item", "upsample_captions"], repo, **reads_env(log))
    more = read_reads(log)
    assert set(more) == {"upsample_captions"}
    assert len(more["upsample_captions"]) > len(reads["upsample_captions"])
    reads = {**reads, **more}

    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert set(reads) == set(stages)  # every stage ran under the hook
    undeclared = {
        stage: sorted(
            key
            for key in reads[stage]
            if not covered(key, spec.get("params", [])) and not covered(key, UNDECLARED)
        )
        for stage, spec in stages.items()
    }
    assert undeclared == {stage: [] for stage in stages}


def test_keys_left_out_of_dvc_yaml_leave_the_outputs_bytes_unchanged(tiny_repro, tmp_path):
    """evaluate rerun with the undeclared keys it reads edited writes the same bytes.
    (engine: ray is tests/test_engine.py's; noise_guard on refuses the tiny generator.)"""
    edit = {"oracle": {"steps": 4}, "clip": {"steps": 4}}
    keys = {"evaluate.oracle.steps", "evaluate.clip.steps"}
    assert keys <= tiny_repro.reads["evaluate"]
    assert all(covered(key, UNDECLARED) for key in keys)
    repo = finished_copy(tiny_repro, tmp_path / "run")
    write_params(repo, evaluate=edit)
    assert "evaluate" not in stale(repo)  # oracle and eval_clip are, with their own keys
    out = run(["dvc", "repro", "--force", "--single-item", "evaluate"], repo)
    assert "Running stage 'evaluate'" in out
    assert lock_outs(repo, "evaluate") == lock_outs(tiny_repro.pristine, "evaluate")


def encoded(repo: Path, target: str, *flags: str) -> dict:
    """Run `dvc repro [flags] target`; what encode_latents logged it encoded and reused."""
    proc = run(["dvc", "repro", *flags, target], repo, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.findall(r"encode_latents: (\{.*\})", proc.stdout + proc.stderr)
    assert len(found) == 1, proc.stdout + proc.stderr
    return json.loads(found[0])


def test_latents_are_reused_and_a_new_autoencoder_reencodes(tiny_repro, tmp_path):
    repo = finished_copy(tiny_repro, tmp_path / "run")
    report = (repo / "reports/latents.json").read_bytes()
    n = json.loads(report)["images"]
    shards = {p.name: p.read_bytes() for p in (repo / "data/latents").iterdir()}
    assert n > 0 and shards
    again = encoded(repo, "encode_latents", "-f")
    assert (again["encoded"], again["reused"]) == (0, n)
    assert {p.name: p.read_bytes() for p in (repo / "data/latents").iterdir()} == shards
    assert (repo / "reports/latents.json").read_bytes() == report  # the output, not the run
    write_params(repo, autoencoder={"steps": 4})
    assert {"train_autoencoder", "encode_latents", "train_generator"} <= would_run(repo)
    other = encoded(repo, "encode_latents")
    assert (other["encoded"], other["reused"]) == (n, 0)


def test_recap_generate_draws_with_the_trained_generator(repo):
    out = run(["recap", "generate", "a red circle on the left", "--n", "2", "--steps", "2",
               "--out", "drawn/circle.png"], repo)  # fmt: skip
    written = [repo / line for line in out.split()]
    assert [p.name for p in written] == ["circle-0.png", "circle-1.png", "circle-grid.png"]
    assert all(p.is_file() for p in written)


def test_recap_generate_upsample_prints_the_rewritten_prompt_and_draws_it(repo):
    out = run(["recap", "generate", "a red circle", "--upsample", "--steps", "2",
               "--out", "drawn/up.png"], repo)  # fmt: skip
    first, path = out.splitlines()
    assert first.startswith("upsampled: ") and len(first) > len("upsampled: ")
    assert (repo / path).is_file()
    again = run(["recap", "generate", "a red circle", "--upsample", "--steps", "2",
                 "--out", "drawn/up.png"], repo)  # fmt: skip
    assert again.splitlines()[0] == first  # greedy: the same prompt, the same rewrite


@pytest.fixture(scope="module")
def experiments(tiny_repro, tmp_path_factory) -> Path:
    """A copy of the finished run, committed, then two experiments that differ only in
    blend.use_upsampled; the workspace holds the last one's outputs."""
    repo = finished_copy(tiny_repro, tmp_path_factory.mktemp("experiments") / "repo")
    # (two experiments that differ only in the ratio: tests/test_compare.py)
    run(["dvc", "exp", "run", "--name", "ratio-80", "-S", "blend.synthetic_ratio=0.8"], repo)
    run(["dvc", "exp", "run", "--name", "upsampled-80", "-S", "blend.synthetic_ratio=0.8",
         "-S", "blend.use_upsampled=true"], repo)  # fmt: skip
    return repo


def test_lineage_names_the_caption_version_of_each_experiment(experiments):
    repo = experiments
    rows = {r["ref"]: r for r in json.loads(run(["recap", "lineage", "--all", "--json"], repo))}
    a, b = rows["exp ratio-80"], rows["exp upsampled-80"]
    assert (a["synthetic_ratio"], a["use_upsampled"], b["use_upsampled"]) == (0.8, False, True)
    assert a["caption_version"] != b["caption_version"]  # the upsampled ground truth
    assert a["generator"] != b["generator"]
    assert a["captioner_stage2"] == b["captioner_stage2"]  # the captioner trained once
    one = json.loads(run(["recap", "lineage", "--exp", "ratio-80", "--json"], repo))
    assert one == [a]
    table = run(["recap", "lineage", "--all"], repo)
    assert "exp upsampled-80" in table and b["caption_version"][:12] in table


def test_lineage_checks_every_link_and_flags_an_edited_model(experiments, tmp_path):
    # A copy: the model edited below stays out of the other tests' experiments.
    repo = shutil.copytree(experiments, tmp_path / "repo", symlinks=True)
    links = json.loads(run(["recap", "lineage", "--json"], repo))
    names = [link["name"] for link in links]
    assert names[:3] == ["generator", "caption version", "synthetic captions"]
    assert {"captioner stage2", "captioner stage1", "captioner pretrain", "dataset"} <= set(names)
    assert all(link["status"] == "ok" for link in links), links
    version = json.loads((repo / "reports/blend.json").read_text())["caption_version"]
    assert links[1]["actual"] == links[1]["recorded"] == version
    # the last experiment's, in the workspace: upsampled ground truth at 0.8
    assert links[1]["params"]["synthetic_ratio"] == 0.8 and links[1]["params"]["use_upsampled"]
    assert names[3:5] == ["upsampled captions", "upsampler"]

    weights = repo / "models/captioner/stage1/model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")
    proc = subprocess.run(["recap", "lineage"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                               f"{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"})  # fmt: skip
    assert proc.returncode == 1
    assert "captioner stage1" in proc.stdout.split("flagged:")[1]
    assert "generator" not in proc.stdout.split("flagged:")[1]
