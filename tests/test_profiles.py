"""Params profiles: merged over params.yaml, validated before anything is written."""

import shutil
from pathlib import Path

import pytest
import yaml

from recaption import profiles
from recaption.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_a_profile_is_merged_key_by_key_over_params(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    profile = tmp_path / "p.yaml"
    profile.write_text("sample:\n  size: 12\ncompare:\n  variants: [ground-truth]\n")
    profiles.apply(params, profile)
    loaded = load_params(params)
    assert loaded.sample.size == 12 and loaded.sample.heldout_size == 500  # kept
    assert loaded.compare.variants == ["ground-truth"]  # a list is replaced whole


def test_a_profile_with_a_typo_is_refused_and_params_left_as_they_were(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_bytes()
    profile = tmp_path / "p.yaml"
    profile.write_text("sample:\n  sise: 12\n")
    with pytest.raises(ParamsError, match="sample.sise"):
        profiles.apply(params, profile)
    assert params.read_bytes() == before


def test_the_shipped_profiles_validate_over_the_default_params(tmp_path):
    for profile in sorted((ROOT / "configs/profiles").glob("*.yaml")):
        params = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", params)
        merged = profiles.apply(params, profile)
        assert merged == yaml.safe_load(params.read_text()), profile.name


def devices(tree: dict, where: str = "") -> dict[str, object]:
    """Every `device` key in a params mapping, by its dotted path."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= devices(value, f"{where}{key}.")
        elif key == "device":
            found[f"{where}{key}"] = value
    return found


def test_the_cuda_profile_puts_every_stage_that_has_a_device_on_the_gpu(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    merged = profiles.apply(params, ROOT / "configs/profiles/cuda.yaml")
    found = devices(merged)
    assert found and set(found.values()) == {"cuda"}, found
