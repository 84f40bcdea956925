"""A scene record as plain text: what a language model reads to write an image's captions.

It is the input the method's language model receives "describing the image"
(US 2025/0259423 A1, claim 8), not a caption: a fixed, terse listing of the scene
in reading order, every fact a caption may state and nothing phrased. Objects of
one colour and shape are grouped, with their count, so a count is stated once:

    background gray. red circle x2: top left large main, center small. letter K: top right.
"""

from __future__ import annotations

from .scene import Scene, SceneObject


def describe_scene(scene: Scene) -> str:
    """The scene as one line of text (see the module docstring); the same scene, the same
    text."""
    groups: dict[tuple[str, str], list[str]] = {}
    for obj in scene.objects:  # reading order
        groups.setdefault((obj.colour, obj.shape), []).append(
            _placed(obj, obj is scene.main_object)
        )
    parts = [f"background {scene.background}"]
    for (colour, shape), placed in groups.items():
        count = f" x{len(placed)}" if len(placed) > 1 else ""
        parts.append(f"{colour} {shape}{count}: {', '.join(placed)}")
    if scene.text is not None:
        parts.append(f"{scene.text.kind} {scene.text.glyph}: {scene.text.position}")
    return ". ".join(parts) + "."


def _placed(obj: SceneObject, main: bool) -> str:
    return f"{obj.position} {obj.size}" + (" main" if main else "")
