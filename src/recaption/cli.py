"""`recap`: one command per pipeline stage, plus helpers for people.

Each stage command is what dvc.yaml runs; errors the user can fix (params,
inputs) are printed as one clear message with exit status 2, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from recaption import paths

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Recaption a text-to-image dataset and prove the gain.",
)
ParamsOption = typer.Option(paths.PARAMS, "--params", "-p", help="params file to read.")
OutOption = typer.Option(Path("generated.png"), "--out", help="PNG path (n > 1: a stem)")
ModelOption = typer.Option(paths.GENERATOR, "--model", help="a saved generator pipeline")
GeneratorArgument = typer.Argument(paths.GENERATOR, help="a generator folder")
UpsamplerOption = typer.Option(paths.UPSAMPLER, "--upsampler", help="a saved upsampler")
CheckpointArgument = typer.Argument(..., help="a pickled checkpoint, or a model folder with one")
ProfilesArgument = typer.Argument(..., help="params profiles, merged in this order")


def _relaunch() -> None:
    """Hand a training stage to $RECAP_LAUNCHER, if one is set (see recaption.parallel)."""
    from recaption import parallel
    from recaption.errors import UserError

    command = parallel.launch_command(sys.argv[1:])
    try:
        parallel.relaunch(sys.argv[1:])
    except FileNotFoundError:
        raise UserError(
            f"{parallel.LAUNCHER_ENV} names {command[0]!r}, which is not on PATH "
            f"(pip install accelerate, or unset {parallel.LAUNCHER_ENV} to train in one process)"
        ) from None


def _run(stage: Callable[[Path], object], params: Path, trains: bool = False) -> None:
    """Run a stage; a training stage (`trains`) first hands itself to $RECAP_LAUNCHER if
    one is set (data-parallel training; see recaption.parallel)."""
    from recaption.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if trains:
            _relaunch()
        stage(params)
    except (UserError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


@app.command()
def ingest(params: Path = ParamsOption) -> None:
    """Build data/dataset/ (the synthetic world or a real source) and data/rejects.parquet."""
    from recaption.stages import ingest as stage

    _run(stage.main, params)


@app.command()
def prompts(params: Path = ParamsOption) -> None:
    """Write the evaluation prompt suite (GenEval categories) to data/prompts/."""
    from recaption.stages import prompts as stage

    _run(stage.main, params)


@app.command()
def sample(params: Path = ParamsOption) -> None:
    """Pick the captioner-tuning subset, its two parts and the held-out split."""
    from recaption.stages import sample as stage

    _run(stage.main, params)


@app.command()
def annotate(params: Path = ParamsOption) -> None:
    """Write the short and descriptive caption sets for the subset."""
    from recaption.stages import annotate as stage

    _run(stage.main, params)


@app.command("clip-pretrain")
def clip_pretrain(params: Path = ParamsOption) -> None:
    """Train the CLIP (clip.pretrained: none) or fetch a pretrained one into models/clip/."""
    from recaption.stages import clip_pretrain as stage

    _run(stage.main, params, trains=True)


@app.command()
def embed(params: Path = ParamsOption) -> None:
    """Cache CLIP embeddings of every image and prompt in data/embeddings/."""
    from recaption.stages import embed as stage

    _run(stage.main, params)


@app.command("embed-probe")
def embed_probe(params: Path = ParamsOption) -> None:
    """Measure with linear probes what the cached embeddings carry (reports/embed.json)."""
    from recaption.stages import embed_probe as stage

    _run(stage.main, params)


def _captioner_command(stage: str, help_text: str) -> None:
    def command(params: Path = ParamsOption) -> None:
        from recaption.stages import captioner

        _run(lambda p: captioner.main(stage, p), params, trains=True)

    command.__doc__ = help_text
    app.command(f"captioner-{stage}")(command)


_captioner_command(
    "pretrain", "Train the captioner on ground-truth captions (models/captioner/pretrain/)."
)
_captioner_command(
    "stage1", "Tune the captioner on the short caption set (models/captioner/stage1/)."
)
_captioner_command("stage2", "Tune it on the descriptive caption set (models/captioner/stage2/).")


@app.command()
def recaption(params: Path = ParamsOption) -> None:
    """Caption every image with the tuned captioners: data/captions/synthetic.parquet."""
    from recaption.stages import recaption as stage

    _run(stage.main, params)


@app.command("caption-report")
def caption_report(params: Path = ParamsOption) -> None:
    """Score ground-truth and synthetic captions on the held-out split (reports/captions.*)."""
    from recaption.stages import caption_report as stage

    _run(stage.main, params)


@app.command()
def upsample(params: Path = ParamsOption) -> None:
    """Train the upsampler (or load an instruction-tuned LM), rewrite the prompt suite and
    measure faithfulness on held-out short captions."""
    from recaption.stages import upsample as stage

    _run(stage.main, params, trains=True)


@app.command("upsample-captions")
def upsample_captions(params: Path = ParamsOption) -> None:
    """Rewrite every image's ground-truth caption with the upsampler, when
    blend.use_upsampled is true: data/captions/upsampled.parquet."""
    from recaption.stages import upsample_captions as stage

    _run(stage.main, params)


@app.command()
def blend(params: Path = ParamsOption) -> None:
    """Relabel every image with a synthetic or ground-truth caption: data/relabeled/."""
    from recaption.stages import blend as stage

    _run(stage.main, params)


@app.command("train-autoencoder")
def train_autoencoder(params: Path = ParamsOption) -> None:
    """Train the generator's autoencoder: models/autoencoder/, reports/autoencoder.json."""
    from recaption.stages import train_autoencoder as stage

    _run(stage.main, params, trains=True)


@app.command("encode-latents")
def encode_latents(params: Path = ParamsOption) -> None:
    """Cache the autoencoder's latents of every dataset image: data/latents/."""
    from recaption.stages import train_autoencoder as stage

    _run(stage.encode_main, params)


@app.command("train-generator")
def train_generator(params: Path = ParamsOption) -> None:
    """Train the text-to-image generator on the blend: models/generator/."""
    from recaption.stages import train_generator as stage

    _run(stage.main, params, trains=True)


@app.command("train-oracle")
def train_oracle(params: Path = ParamsOption) -> None:
    """Train the oracle detector on fresh renders: models/eval/oracle/, reports/oracle.json."""
    from recaption.stages import eval_models as stage

    _run(stage.oracle_main, params, trains=True)


@app.command("eval-clip")
def eval_clip(params: Path = ParamsOption) -> None:
    """Train (or load) the evaluation CLIP: models/eval/clip/, reports/eval_clip.json."""
    from recaption.stages import eval_models as stage

    _run(stage.eval_clip_main, params, trains=True)


@app.command()
def evaluate(params: Path = ParamsOption) -> None:
    """Draw the generator on the evaluation prompts and score it: reports/metrics.json, ..."""
    from recaption.stages import evaluate as stage

    _run(stage.main, params)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="what to draw"),
    n: int = typer.Option(1, "--n", min=1, help="images to draw (a grid too when > 1)"),
    seed: int = typer.Option(0, "--seed", help="the same seed draws the same images"),
    steps: int = typer.Option(25, "--steps", min=1, help="denoising steps (DDIM)"),
    guidance: float = typer.Option(3.0, "--guidance", help="classifier-free guidance scale"),
    out: Path = OutOption,
    scale: int = typer.Option(4, "--scale", min=1, help="upscale factor (nearest) for viewing"),
    model: Path = ModelOption,
    upsample: bool = typer.Option(
        False, "--upsample", help="rewrite PROMPT as a descriptive caption first (printed)"
    ),
    upsampler: Path = UpsamplerOption,
    device: str = typer.Option(
        "auto", "--device", help="auto (cuda when there is one) | cpu | cuda"
    ),
) -> None:
    """Draw PROMPT with a trained generator and write PNGs."""
    from recaption import devices
    from recaption.generate import upsample_prompt, write_images

    def run(_: Path) -> None:
        where = devices.resolve(device, "--device")
        text = prompt
        if upsample:
            text = upsample_prompt(upsampler, prompt, where)
            typer.echo(f"upsampled: {text}")
        for path in write_images(model, text, n, seed, steps, guidance, out, scale, where):
            typer.echo(str(path))

    _run(run, paths.PARAMS)


@app.command("lineage")
def lineage_command(
    path: Path = GeneratorArgument,
    all_: bool = typer.Option(
        False,
        "--all",
        help="every commit and experiment: which caption version trained which generator",
    ),
    exp: str = typer.Option("", "--exp", help="one DVC experiment, by name"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Which captions trained a generator, link by link down to the dataset, checked
    against the files on disk (exit status 1 when a link changed since training)."""
    import json

    from recaption import audit

    def run(_: Path) -> None:
        if all_ or exp:
            rows = audit.history()
            if exp:
                rows = [r for r in rows if r["ref"] == f"exp {exp}"]
                if not rows:
                    raise audit.AuditError(f"no experiment named {exp!r} (see `dvc exp list`)")
            typer.echo(json.dumps(rows, indent=2) if as_json else audit.format_history(rows))
            return
        links = audit.chain(path)
        if as_json:
            typer.echo(json.dumps([link.to_dict() for link in links], indent=2))
        else:
            typer.echo(audit.format_chain(links))
        if any(link.status != "ok" for link in links):
            sys.exit(1)

    _run(run, paths.PARAMS)


@app.command()
def compare(
    seeds: int = typer.Option(
        None, "--seeds", min=1, help="instead of compare.seeds (a later run reuses these)"
    ),
) -> None:
    """The study's comparison: queue a DVC experiment per caption variant and generator
    seed (params: compare), run the queue, and write reports/compare.{md,json,png}."""
    from recaption import compare as compare_lib

    def run(_: Path) -> None:
        summary = compare_lib.run(".", seeds)
        typer.echo(f"{compare_lib.REPORT_MD}: {len(summary['experiments'])} experiments")
        for finding in summary["findings"]:
            typer.echo(f"  {finding['verdict']:<32} {finding['claim']}")

    _run(run, paths.PARAMS)


@app.command()
def ladder() -> None:
    """The ladder at the default budget: DVC experiments for a perfect captioner
    (reference-95), the pipeline's (descriptive-95) and none (ground-truth), read against
    chance; writes reports/ladder.{md,json} and reports/ladder/<rung>.png."""
    from recaption import ladder as ladder_lib

    def run(_: Path) -> None:
        summary = ladder_lib.run(".")
        typer.echo(f"{ladder_lib.REPORT_MD}: {len(summary['rungs'])} rungs")
        for target in summary["targets"]:
            typer.echo(f"  {ladder_lib.verdict(target['holds']):<12} {target['target']}")

    _run(run, paths.PARAMS)


@app.command()
def budget() -> None:
    """The annotation budget: a DVC experiment per `budget.sizes` value of sample.size and
    generator seed, each rerunning the subset's captions, the CLIP and captioner, the
    recaptioning, the generator and the evaluation; writes reports/budget.{md,json,png}."""
    from recaption import budget as budget_lib

    def run(_: Path) -> None:
        summary = budget_lib.run(".")
        typer.echo(f"{budget_lib.REPORT_MD}: {len(summary['experiments'])} experiments")

    _run(run, paths.PARAMS)


@app.command("convert-checkpoint")
def convert_checkpoint(
    path: Path = CheckpointArgument,
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="you trust this file: it is unpickled (weights_only) once"
    ),
) -> None:
    """Convert a trusted pickled checkpoint (.bin, .pt, ...) to safetensors beside it, the
    only format the pipeline loads; a model folder's weight files keep the names its
    library expects."""
    from recaption import checkpoints

    def run(_: Path) -> None:
        for written in checkpoints.convert(path, trust_pickle):
            typer.echo(str(written))

    _run(run, paths.PARAMS)


@app.command("clean")
def clean_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would go, remove nothing"),
) -> None:
    """Remove every output dvc.yaml declares, the resumable work and caches (make clean)."""
    from recaption import clean

    for path in clean.clean(Path.cwd(), dry_run):
        typer.echo(f"{'would remove' if dry_run else 'removed'} {path.relative_to(Path.cwd())}")
    typer.echo(f"kept: {', '.join(clean.KEPT)} (dvc checkout restores committed outputs)")


@app.command("apply-profile")
def apply_profile(
    profiles: list[Path] = ProfilesArgument,
    params: Path = ParamsOption,
) -> None:
    """Merge params profiles (configs/profiles/*.yaml) over params.yaml and write it back,
    validated (its comments are not kept; `git checkout params.yaml` undoes it)."""
    from recaption import profiles as profiles_lib

    def run(path: Path) -> None:
        profiles_lib.apply(path, *profiles)
        typer.echo(f"{path}: merged {', '.join(map(str, profiles))}")

    _run(run, params)


@app.command("check-params")
def check_params(params: Path = ParamsOption) -> None:
    """Validate params.yaml and print it with every default filled in."""
    import yaml

    from recaption.params import load_params

    _run(lambda p: typer.echo(yaml.safe_dump(load_params(p).model_dump(), sort_keys=False)), params)


if __name__ == "__main__":
    app()
