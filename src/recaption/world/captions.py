"""Three caption styles for one scene.

- alt_text: what scraped web alt-text looks like (often off topic or partial);
- short_caption: names the main subject only;
- descriptive_caption: every object, count, position, the background and any glyph.

Only `alt_text` off-topic strings are unrelated to the image; every other
caption states only true facts about the scene.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .config import ALT_KINDS, validate_alt_mix
from .phrases import (
    capitalise,
    glyph_phrase,
    group_count,
    groups,
    join_list,
    noun,
    position_list,
    position_phrase,
    with_article,
)
from .scene import Scene, SceneObject, pick
from .vocab import NUMBER_WORDS, SHAPE_PLURALS

# Off-topic alt-text: file names, shop and SEO boilerplate. None of these may use a
# vocabulary word (tests parse them and expect no facts).
_OFF_TOPIC: tuple[Callable[[np.random.Generator], str], ...] = (
    lambda r: f"IMG_{int(r.integers(1000, 10000))}.jpg",
    lambda r: f"DSC{int(r.integers(0, 100000)):05d}",
    lambda r: f"DSC_{int(r.integers(0, 10000)):04d}.JPG",
    lambda r: f"Untitled design ({int(r.integers(1, 20))})",
    lambda r: f"free shipping on orders over ${pick(r, (25, 35, 50, 75, 99))}",
    lambda r: pick(r, ("wallpaper hd download", "4k wallpaper free download")),
    lambda r: (
        f"screenshot 20{int(r.integers(15, 25))}-{int(r.integers(1, 13)):02d}-"
        f"{int(r.integers(1, 29)):02d}"
    ),
    lambda r: f"product_{int(r.integers(100, 1000))}.png",
    lambda r: pick(
        r,
        (
            "click to enlarge",
            "best price guaranteed",
            "new arrivals",
            "stock photo royalty free",
            "image",
            "photo",
            "thumbnail",
        ),
    ),
    lambda r: f"sale {pick(r, (10, 20, 30, 50))}% off everything",
)


def _finish(rng: np.random.Generator, text: str) -> str:
    """Alt-text is written carelessly: random capitalisation and trailing period."""
    if rng.random() < 0.5:
        text = capitalise(text)
    return text + "." if rng.random() < 0.3 else text


def _partial(scene: Scene, rng: np.random.Generator) -> str:
    """True but incomplete: one attribute, one minor object, or a vague word."""
    main = scene.main_object
    n_main = group_count(scene, main.colour, main.shape)
    options = [
        SHAPE_PLURALS[main.shape] if n_main > 1 else pick(rng, (main.shape, f"a {main.shape}")),
        pick(rng, (f"{main.colour} thing", f"something {main.colour}", main.colour)),
        pick(rng, ("shapes", "geometric shapes", "colorful shapes"))
        if len(scene.objects) > 1
        else pick(rng, ("a shape", "a geometric shape")),
        f"{scene.background} background",
    ]
    others = [o for i, o in enumerate(scene.objects) if i != scene.main]
    if others:
        other = pick(rng, others)
        options.append(with_article(noun(other.colour, other.shape, pick(rng, (None, "small")))))
    if scene.text is not None:
        options.append(
            pick(
                rng,
                (
                    f"{scene.text.kind} {scene.text.glyph}",
                    glyph_phrase(scene.text.kind, scene.text.glyph),
                ),
            )
        )
    return pick(rng, options)


def _main_phrase(scene: Scene, rng: np.random.Generator) -> str:
    """'three blue squares' when the main subject repeats, else 'a (large) red circle'."""
    main = scene.main_object
    n = group_count(scene, main.colour, main.shape)
    if n > 1:
        return noun(main.colour, main.shape, count=n)
    return with_article(noun(main.colour, main.shape, pick(rng, (None, main.size))))


def _good(scene: Scene, rng: np.random.Generator) -> str:
    """A decent one-sentence description of the main content."""
    main = scene.main_object
    subject = _main_phrase(scene, rng)
    options = [
        f"{subject} on a {scene.background} background",
        f"an image of {subject} on a {scene.background} background",
        f"a picture showing {subject}",
    ]
    if group_count(scene, main.colour, main.shape) == 1:
        options.append(f"{subject} {position_phrase(rng, main.position)}")
    if scene.text is not None:
        options.append(f"{subject} and {glyph_phrase(scene.text.kind, scene.text.glyph)}")
    return pick(rng, options)


def sample_alt_kind(rng: np.random.Generator, mix: Mapping[str, float]) -> str:
    """Draw an alt-text kind with the probabilities in `mix`."""
    u, total = rng.random(), 0.0
    for kind in ALT_KINDS:
        total += mix.get(kind, 0.0)
        if u < total:
            return kind
    # Rounding can leave u just above the sum; fall back to the last kind that has mass.
    return [k for k in ALT_KINDS if mix.get(k, 0.0) > 0][-1]


def alt_text(scene: Scene, rng: np.random.Generator, mix: Mapping[str, float]) -> tuple[str, str]:
    """Imitate scraped web alt-text for `scene`.

    Args:
        mix: probability of each kind: "off_topic" (unrelated file names and SEO
            phrases), "partial" (true but incomplete), "good" (one decent sentence).

    Returns:
        (text, kind).
    """
    validate_alt_mix(mix)
    kind = sample_alt_kind(rng, mix)
    if kind == "off_topic":
        text = pick(rng, _OFF_TOPIC)(rng)
    elif kind == "partial":
        text = _partial(scene, rng)
    else:
        text = _good(scene, rng)
    return _finish(rng, text), kind


def short_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Name the main subject only: 'a large red circle', 'a picture of a red circle'."""
    main = scene.main_object
    bare = noun(main.colour, main.shape)
    sized = noun(main.colour, main.shape, main.size)
    template = pick(
        rng,
        (
            "{a_sized}",
            "a picture of {a_bare}",
            "{bare}",
            "{a_bare}",
            "an image of {a_sized}",
            "a photo of {a_bare}",
        ),
    )
    return template.format(a_sized=with_article(sized), a_bare=with_article(bare), bare=bare)


def _group_phrase(rng: np.random.Generator, objs: list[SceneObject]) -> str:
    """One (colour, shape) group with its count, sizes and positions."""
    first = objs[0]
    if len(objs) == 1:
        return f"{with_article(noun(first.colour, first.shape, first.size))} " + position_phrase(
            rng, first.position
        )
    sizes = {o.size for o in objs}
    if len(sizes) == 1:
        head = noun(first.colour, first.shape, first.size, count=len(objs))
        return f"{head} {position_list(rng, [o.position for o in objs])}"
    # Mixed sizes: the large main object plus small copies. The colon starts a new
    # clause, whose positions the parser attaches back to this group.
    large = [o for o in objs if o.size == "large"][0]
    small = [o.position for o in objs if o.size == "small"]
    small_part = (
        f"a small one {position_list(rng, small)}"
        if len(small) == 1
        else f"{NUMBER_WORDS[len(small)]} small ones {position_list(rng, small)}"
    )
    head = noun(first.colour, first.shape, count=len(objs))
    return f"{head}: a large one {position_phrase(rng, large.position)} and {small_part}"


def _there_is(rng: np.random.Generator, objs: list[SceneObject]) -> str:
    """A sentence for one group, sometimes with the position first."""
    obj = objs[0]
    if len(objs) == 1 and rng.random() < 0.5:
        where = capitalise(position_phrase(rng, obj.position))
        return f"{where} there is {with_article(noun(obj.colour, obj.shape, obj.size))}."
    verb = "There is" if len(objs) == 1 else "There are"
    return f"{verb} {_group_phrase(rng, objs)}."


def _text_sentence(scene: Scene, rng: np.random.Generator) -> str:
    text = scene.text
    if text is None:
        return ""
    glyph = glyph_phrase(text.kind, text.glyph)
    where = position_phrase(rng, text.position)
    return pick(
        rng,
        (
            f"{capitalise(glyph)} is written in {text.colour} {where}.",
            f"There is also {glyph} in {text.colour} {where}.",
            f"{capitalise(where)} is {glyph}.",
            f"{capitalise(glyph)} appears {where}.",
        ),
    )


def descriptive_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Describe every object (count, size, colour, position), the background and any glyph."""
    parts = groups(scene)
    phrases = [_group_phrase(rng, g) for g in parts]
    # After a "...: a large one ... and small ones ..." clause the next object needs a
    # comma, or the parser would give it the dangling positions.
    listed = join_list(phrases, comma=any(":" in p for p in phrases[:-1]))
    bg = scene.background
    style = int(rng.integers(5))
    if style == 0:
        body = f"{capitalise(listed)}, on a {bg} background."
    elif style == 1:
        body = f"On a {bg} background, {listed}."
    elif style == 2:
        body = f"{capitalise(listed)}. The background is {bg}."
    elif style == 3:
        body = f"The background is {bg}. " + " ".join(_there_is(rng, g) for g in parts)
    else:
        body = f"An image with a {bg} background showing {listed}."
    text = _text_sentence(scene, rng)
    return f"{body} {text}" if text else body
