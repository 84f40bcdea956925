"""Caption quality: exact fact scores against the synthetic world, and BLEU-4 / CIDEr-D.

Attribute scores need no references: a synthetic scene is the truth, so a caption's
facts (`recaption.world.parse_caption`) are checked against `scene_facts(scene)`.
BLEU-4 and CIDEr-D compare against reference captions, as captioning papers report.

Conventions, shared by every function here:
- inputs are parallel sequences (caption i describes scene i / has references i);
  a length mismatch or an empty corpus raises ValueError;
- a ratio whose denominator is zero (no facts of a kind stated, say) is None,
  not 0.0, so "undefined" is never mistaken for "all wrong";
- text is tokenised by `tokens`: lowercase, runs of letters and digits.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from recaption.world import Scene, parse_caption, scene_facts

FACT_KINDS: tuple[str, ...] = ("object", "count", "position", "background", "text")
MAX_N = 4  # BLEU-4 and CIDEr-D both use 1..4-grams
CIDER_SIGMA = 6.0  # coco-caption's length-penalty width

# Letters and digits of any script; `_` and punctuation split words.
_WORD = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    """Lowercase words and numbers of `text`: 'IMG_0042.jpg' -> ['img', '0042', 'jpg']."""
    return _WORD.findall(text.lower())


def scene_from_meta(meta: str | dict[str, Any]) -> Scene:
    """The scene of one synthetic dataset row, from its `meta` JSON (string or parsed)."""
    d = json.loads(meta) if isinstance(meta, str) else meta
    return Scene.from_dict(d["scene"])


def _check_parallel(a: Sequence[Any], b: Sequence[Any], names: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} must have the same length, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError(f"{names} are empty; a metric of no captions is undefined")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


# --- facts against the scene ------------------------------------------------------------


def attribute_scores(captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, Any]:
    """Micro-averaged fact precision and recall, and CHAIR object hallucination.

    Returns:
        {"precision": true stated facts / stated facts,
         "recall": true facts stated / true facts of the scenes,
         "hallucination": CHAIR_i, stated objects absent from their scene / stated objects,
         "hallucination_captions": CHAIR_s, captions with an absent object / captions,
         "by_kind": {kind: {"precision", "recall"}} for kind in FACT_KINDS,
         "n_captions": int}.
        Micro-averaging pools facts over all captions, so a long caption weighs more.
        Any ratio with a zero denominator is None (e.g. precision when nothing is stated).
    """
    _check_parallel(captions, scenes, "captions and scenes")
    stated, true, hit = Counter(), Counter(), Counter()  # per fact kind
    objects_stated = objects_absent = captions_hallucinating = 0
    for caption, scene in zip(captions, scenes, strict=True):
        said, truth = parse_caption(caption), scene_facts(scene)
        stated.update(f[0] for f in said)
        true.update(f[0] for f in truth)
        hit.update(f[0] for f in said & truth)
        absent = [f for f in said if f[0] == "object" and f not in truth]
        objects_stated += sum(1 for f in said if f[0] == "object")
        objects_absent += len(absent)
        captions_hallucinating += bool(absent)
    total = sum(hit.values())
    return {
        "precision": _ratio(total, sum(stated.values())),
        "recall": _ratio(total, sum(true.values())),
        "hallucination": _ratio(objects_absent, objects_stated),
        "hallucination_captions": _ratio(captions_hallucinating, len(captions)),
        "by_kind": {
            k: {"precision": _ratio(hit[k], stated[k]), "recall": _ratio(hit[k], true[k])}
            for k in FACT_KINDS
        },
        "n_captions": len(captions),
    }


def main_subject_accuracy(captions: Sequence[str], scenes: Sequence[Scene]) -> float:
    """Share of captions that name their scene's main object by colour and shape."""
    _check_parallel(captions, scenes, "captions and scenes")
    named = 0
    for caption, scene in zip(captions, scenes, strict=True):
        main = scene.main_object
        named += ("object", main.colour, main.shape) in parse_caption(caption)
    return named / len(captions)


def mean_words(captions: Sequence[str]) -> float:
    """Mean number of `tokens` per caption."""
    if not captions:
        raise ValueError("captions are empty; a metric of no captions is undefined")
    return sum(len(tokens(c)) for c in captions) / len(captions)


def vocabulary(captions: Sequence[str]) -> int:
    """Distinct `tokens` over all captions: how varied a caption set's wording is."""
    return len({t for c in captions for t in tokens(c)})


# --- n-gram metrics against references --------------------------------------------------


def _ngrams(words: Sequence[str], n_max: int = MAX_N) -> Counter:
    """Counts of every 1..n_max-gram of `words`, keyed by tuple."""
    return Counter(
        tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)
    )


def _check_references(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    _check_parallel(candidates, references, "candidates and references")
    if isinstance(references[0], str):
        # A bare string would silently be read as a list of one-letter references.
        raise TypeError("references must be a sequence of reference lists, one per candidate")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every candidate needs at least one reference")


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002), uniform weights.

    Clipped n-gram counts are pooled over the corpus before dividing, and the
    brevity penalty compares total candidate length with the summed length of each
    candidate's closest reference (ties go to the shorter, as in coco-caption).
    No smoothing: if some n has no match at all the score is 0.0.
    """
    _check_references(candidates, references)
    matched, possible = [0] * MAX_N, [0] * MAX_N
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        words = tokens(cand)
        ref_words = [tokens(r) for r in refs]
        # Clip each n-gram at its largest count in any single reference.
        max_ref = Counter()
        for r in ref_words:
            max_ref |= _ngrams(r)
        for gram, count in _ngrams(words).items():
            matched[len(gram) - 1] += min(count, max_ref[gram])
            possible[len(gram) - 1] += count
        cand_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matched, possible, strict=True)) / MAX_N
    brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def _tfidf(counts: Counter, doc_freq: Counter, log_docs: float) -> list[dict[tuple, float]]:
    """Per-n TF-IDF vectors, index n-1; n-grams unseen in the references get df 1."""
    vecs: list[dict[tuple, float]] = [{} for _ in range(MAX_N)]
    for gram, tf in counts.items():
        vecs[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
    return vecs


def _norm(vec: dict[tuple, float]) -> float:
    return math.sqrt(sum(v * v for v in vec.values()))


def _cider_sim(cand: list[dict], ref: list[dict], delta: int) -> float:
    """Mean over n of clipped cosine similarity times the Gaussian length penalty."""
    penalty = math.exp(-(delta**2) / (2 * CIDER_SIGMA**2))
    total = 0.0
    for c, r in zip(cand, ref, strict=True):
        # Clipping (the "-D"): a candidate cannot gain by repeating a reference n-gram.
        dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in c.items())
        denominator = _norm(c) * _norm(r)
        # coco-caption leaves the dot product undivided when a norm is 0; it is 0 then
        # unless every weight is 0, so this matches it.
        total += (dot / denominator if denominator else dot) * penalty
    return total / MAX_N


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (Vedantam et al. 2015), as computed by coco-caption.

    Document frequency counts, for each n-gram, the images whose references contain
    it, over the evaluated corpus only, so the score depends on the corpus it is
    computed on. Per image: 10 x the mean over references of the mean over n=1..4 of
    the clipped TF-IDF cosine times exp(-(len_cand - len_ref)^2 / (2 * 6^2)). Returns
    the mean over images. A candidate equal to its only reference scores 10.0 when
    it has at least 4 words and, for every n, an n-gram not found in every image's
    references (else that n's TF-IDF vector is all zero). Needs at least 2 images.
    """
    _check_references(candidates, references)
    if len(references) < 2:
        # IDF over one image is log(1) - log(1) = 0 for every reference n-gram, so
        # coco-caption returns 0 (or NaN); a forked variant's patch would not be comparable.
        raise ValueError("CIDEr-D needs at least 2 images: its IDF is computed on the corpus")
    ref_counts = [[_ngrams(tokens(r)) for r in refs] for refs in references]
    doc_freq = Counter(g for counts in ref_counts for g in set().union(*counts))
    log_docs = math.log(len(references))
    scores = []
    for cand, refs, counts in zip(candidates, references, ref_counts, strict=True):
        cand_vec, cand_len = _tfidf(_ngrams(tokens(cand)), doc_freq, log_docs), len(tokens(cand))
        # coco-caption measures length in bigrams; the difference of two lengths is the
        # same in words except when one caption is empty, and then the score is 0 anyway.
        sims = [
            _cider_sim(cand_vec, _tfidf(c, doc_freq, log_docs), cand_len - len(tokens(r)))
            for c, r in zip(counts, refs, strict=True)
        ]
        scores.append(10.0 * sum(sims) / len(sims))
    return sum(scores) / len(scores)
