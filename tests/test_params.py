import re
from functools import reduce
from pathlib import Path

import pytest
import yaml

from recaption.params import Params, ParamsError, Section, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.sample.size > 0


def test_empty_file_gives_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("")
    assert load_params(tmp_path / "p.yaml") == Params()


def test_wrong_type_names_key_and_value():
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"image_size": "big"}})
    assert "data.image_size = 'big'" in str(err.value)
    assert "integer" in str(err.value)


def test_out_of_range_says_what_is_allowed():
    with pytest.raises(ParamsError) as err:
        parse_params({"sample": {"overlap": 1.5}})
    assert "sample.overlap = 1.5" in str(err.value)
    assert "less than or equal to 1" in str(err.value)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"imge_size": 32}})
    message = str(err.value)
    assert "data.imge_size: unknown key" in message
    assert "did you mean 'image_size'?" in message


def test_unknown_section_is_an_error():
    with pytest.raises(ParamsError, match="sampel: unknown key; did you mean 'sample'"):
        parse_params({"sampel": {"size": 3}})


def test_enum_lists_its_choices():
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"source": "s3"}})
    for choice in ("synthetic", "folder", "parquet", "webdataset"):
        assert choice in str(err.value)


def test_every_error_is_reported_at_once():
    with pytest.raises(ParamsError, match="2 invalid value"):
        parse_params({"seed": -1, "sample": {"size": 0}})


def test_cross_field_rules():
    with pytest.raises(ParamsError, match="must sum to 1"):
        parse_params({"data": {"synthetic": {"alt_text": {"off_topic": 0.9}}}})
    with pytest.raises(ParamsError, match="min_objects"):
        parse_params({"data": {"synthetic": {"min_objects": 3, "max_objects": 2}}})
    with pytest.raises(ParamsError, match="short_file and descriptive_file"):
        parse_params({"annotate": {"source": "file"}})
    with pytest.raises(ParamsError, match=r"generator.*batch_size \(64\) must be a multiple of "
                       r"grad_accumulation \(5\)"):  # fmt: skip
        parse_params({"generator": {"grad_accumulation": 5}})
    assert parse_params({"generator": {"grad_accumulation": 4}}).generator.grad_accumulation == 4


def test_not_a_mapping(tmp_path):
    (tmp_path / "p.yaml").write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(tmp_path / "p.yaml")


def test_yaml_object_tags_are_refused(tmp_path):
    (tmp_path / "p.yaml").write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "p.yaml")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("sample: &s {size: 10}\nannotate: *s\n", "aliases"),
        ("defaults: &d {size: 10}\nsample:\n  <<: *d\n", "aliases"),
        ("seed: 1\nseed: 2\n", "'seed' is given twice"),
        ("sample:\n  size: 10\n  size: 20\n", "'size' is given twice"),
    ],
)
def test_aliases_and_repeated_keys_are_refused(tmp_path, text, reason):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ParamsError, match=reason):
        load_params(tmp_path / "p.yaml")


def test_the_project_params_file_loads_under_the_strict_loader():
    assert load_params(ROOT / "params.yaml").evaluate.oracle.min_accuracy == 0.97


def test_union_values_give_one_message_naming_both_choices():
    with pytest.raises(ParamsError) as err:
        parse_params({"embed": {"num_workers": "many"}})
    message = str(err.value)
    assert "1 invalid value" in message
    assert "embed.num_workers = 'many'" in message and "'auto'" in message
    assert parse_params({"embed": {"num_workers": 3}}).embed.num_workers == 3


def test_a_stage_given_in_part_keeps_its_own_defaults():
    params = parse_params({"captioner": {"stage2": {"lr": 0.002}, "stage1": {"epochs": 3}},
                           "recaption": {"descriptive": {"strategy": "beam"}}})  # fmt: skip
    stage2 = params.captioner.stage2
    assert (stage2.steps, stage2.max_tokens, stage2.keep) == (1200, 80, "last")
    assert params.captioner.stage1.keep == "best"
    assert (params.captioner.stage1.steps, params.captioner.stage1.epochs) == (None, 3)
    assert params.captioner.stage1.max_tokens == 24
    assert params.recaption.descriptive.max_new_tokens == 80
    with pytest.raises(ParamsError, match="give exactly one of steps and epochs"):
        parse_params({"captioner": {"stage1": {"steps": 5, "epochs": 3}}})


def test_params_never_reach_a_shell():
    """dvc.yaml runs fixed commands: no stage interpolates params into its command line."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, spec in stages.items():
        assert re.fullmatch(r"recap [a-z][a-z0-9-]*", spec["cmd"]), (name, spec["cmd"])


def test_blend_synthetic_source_defaults_to_the_captioner_and_names_its_choices():
    assert Params().blend.synthetic_source == "captioner"
    assert load_params(ROOT / "params.yaml").blend.synthetic_source == "captioner"
    params = parse_params({"blend": {"synthetic_source": "reference"}})
    assert params.blend.synthetic_source == "reference"
    with pytest.raises(ParamsError) as err:
        parse_params({"blend": {"synthetic_source": "oracle"}})
    message = str(err.value)
    assert "blend.synthetic_source = 'oracle'" in message
    assert "'captioner'" in message and "'reference'" in message


def differences(models: dict, file: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings, or that one lacks."""
    out = []
    for key in sorted(models.keys() | file.keys(), key=str):
        dotted = f"{prefix}{key}"
        if key not in file:
            out.append(f"{dotted}: only in the models ({models[key]!r})")
        elif key not in models:
            out.append(f"{dotted}: only in params.yaml ({file[key]!r})")
        elif isinstance(models[key], dict) and isinstance(file[key], dict):
            out += differences(models[key], file[key], f"{dotted}.")
        elif models[key] != file[key]:
            out.append(f"{dotted}: models {models[key]!r}, params.yaml {file[key]!r}")
    return out


def test_the_models_defaults_are_the_values_of_params_yaml():
    """params.yaml restates every default: the typed models must agree with it, key by key."""
    defaults = Params().model_dump()
    for stage in ("pretrain", "stage1", "stage2"):
        # params.yaml gives each stage `steps`; `epochs`, the alternative, is unset
        assert defaults["captioner"][stage].pop("epochs") is None
    file = yaml.safe_load((ROOT / "params.yaml").read_text())
    diffs = differences(defaults, file)
    assert not diffs, "the models' defaults and params.yaml differ at:\n" + "\n".join(diffs)


def test_the_defaults_comparison_names_every_differing_key():
    models = {"a": {"b": 1, "c": 2}, "d": 3}
    file = {"a": {"b": 1, "c": 5}, "e": 4}
    assert differences(models, file) == [
        "a.c: models 2, params.yaml 5",
        "d: only in the models (3)",
        "e: only in params.yaml (4)",
    ]


def sections(model: type[Section] = Params, prefix: tuple = ()) -> list[tuple]:
    """The dotted path of every nested params section, e.g. ("captioner", "stage1")."""
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            out += [(*prefix, name), *sections(field.annotation, (*prefix, name))]
    return out


@pytest.mark.parametrize("path", sections(), ids=".".join)
def test_a_section_given_empty_keeps_every_default(path):
    """`stage1: {}` (or one given in part) must not fall back to another section's defaults."""
    raw = reduce(lambda inner, name: {name: inner}, reversed(path), {})
    assert parse_params(raw) == Params()
