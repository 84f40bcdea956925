"""A synthetic text-to-image world where every caption can be checked exactly.

Images are rendered from known scenes (coloured shapes on a 3x3 grid, a
background, sometimes a letter or digit), so alt-text, short and descriptive
captions, and a GenEval-style prompt suite, can all be scored against the
truth with `parse_caption` and `scene_facts`.
"""

from .captions import alt_text, descriptive_caption, sample_alt_kind, short_caption
from .config import ALT_KINDS, DEFAULT_ALT_MIX, WorldConfig
from .example import Example, example_rng, make_example
from .parse import Fact, fact_phrase, parse_caption, parse_spans, scene_facts
from .prompts import CATEGORIES, RELATIONS, Prompt, prompt_suite, scene_prompt
from .render import render
from .scene import Scene, SceneObject, SceneText, sample_scene
from .twins import twin_example, twin_scene
from .vocab import (
    BACKGROUNDS,
    COLOUR_NAMES,
    COLOURS,
    DIGITS,
    LETTERS,
    PATTERN_BACKGROUNDS,
    POSITION_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    SOLID_BACKGROUNDS,
)

__all__ = [
    "ALT_KINDS",
    "BACKGROUNDS",
    "CATEGORIES",
    "COLOURS",
    "COLOUR_NAMES",
    "DEFAULT_ALT_MIX",
    "DIGITS",
    "Example",
    "Fact",
    "LETTERS",
    "PATTERN_BACKGROUNDS",
    "POSITIONS",
    "POSITION_NAMES",
    "Prompt",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SOLID_BACKGROUNDS",
    "Scene",
    "SceneObject",
    "SceneText",
    "WorldConfig",
    "alt_text",
    "descriptive_caption",
    "example_rng",
    "fact_phrase",
    "make_example",
    "parse_caption",
    "parse_spans",
    "prompt_suite",
    "scene_prompt",
    "render",
    "sample_alt_kind",
    "sample_scene",
    "scene_facts",
    "short_caption",
    "twin_example",
    "twin_scene",
]
