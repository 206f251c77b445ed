"""Text similarity for duplicate detection and diversity, with no model and no dependencies.

SAO keeps only prompts and personas that add something new: two near-identical prompts
teach the same preference twice and make the set look larger than it is. A Jaccard index
over character 3-grams of normalised text catches reworded copies (changed case, spacing,
punctuation, a swapped word) cheaply and deterministically, which is all a filter needs;
it is a surface measure and does not see paraphrases with different words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")
SHINGLE = 3
"""Characters per shingle."""
DIVERSITY_SAMPLE = 200
"""``diversity_score`` compares at most this many texts (evenly spaced), bounding its O(n^2) cost."""


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: "Hello,  World!" -> "hello world"."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def shingles(text: str) -> frozenset[str]:
    """Character 3-grams of the normalised text (a shorter non-empty text is its own shingle)."""
    norm = normalise(text)
    if len(norm) <= SHINGLE:
        return frozenset((norm,)) if norm else frozenset()
    return frozenset(norm[i : i + SHINGLE] for i in range(len(norm) - SHINGLE + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard index of two shingle sets; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two texts: 1.0 when their normalised forms are equal (both empty too)."""
    if normalise(a) == normalise(b):
        return 1.0
    return jaccard(shingles(a), shingles(b))


def _could_reach(a: frozenset[str], b: frozenset[str], threshold: float) -> bool:
    # Jaccard <= min/max of the set sizes: a cheap bound that skips most comparisons
    small, large = sorted((len(a), len(b)))
    return large == 0 or small >= threshold * large


def near_duplicates(texts: Sequence[str], threshold: float = 0.9) -> list[int]:
    """Indices of texts whose similarity to an EARLIER kept text is >= ``threshold``.

    The first occurrence is kept, so removing the returned indices leaves no near-duplicate pair
    among the kept texts (a text is compared with kept texts only, so chains do not cascade).
    """
    kept: list[frozenset[str]] = []
    kept_norm: set[str] = set()
    dups: list[int] = []
    for i, text in enumerate(texts):
        norm = normalise(text)
        sh = shingles(text)
        copy = norm in kept_norm and threshold <= 1.0
        if copy or any(_could_reach(sh, k, threshold) and jaccard(sh, k) >= threshold for k in kept):
            dups.append(i)
        else:
            kept.append(sh)
            kept_norm.add(norm)
    return dups


def is_near_duplicate(text: str, others: Iterable[str], threshold: float = 0.9) -> bool:
    """Whether ``text`` has similarity >= ``threshold`` to any of ``others``."""
    return any(similarity(text, other) >= threshold for other in others)


def diversity_score(texts: Sequence[str]) -> float:
    """1 - mean pairwise similarity, in [0, 1]: 0.0 for copies of one text, near 1 for unrelated texts.

    Fewer than 2 texts have no pairs and score 0.0 (a set of one is not diverse). Above
    ``DIVERSITY_SAMPLE`` texts, an evenly spaced (deterministic) sample of that many is scored.
    """
    if len(texts) < 2:
        return 0.0
    if len(texts) > DIVERSITY_SAMPLE:
        step = len(texts) / DIVERSITY_SAMPLE
        texts = [texts[int(i * step)] for i in range(DIVERSITY_SAMPLE)]
    sets = [shingles(t) for t in texts]
    norms = [normalise(t) for t in texts]
    total, pairs = 0.0, 0
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            total += 1.0 if norms[i] == norms[j] else jaccard(sets[i], sets[j])
            pairs += 1
    return max(0.0, min(1.0, 1.0 - total / pairs))


def distinct_ngrams(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n: distinct word n-grams / all word n-grams over the texts (normalised); 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = normalise(text).split()
        for i in range(len(words) - n + 1):
            seen.add(tuple(words[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0
