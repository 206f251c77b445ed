"""Personas for persona-driven prompt writing (PersonaHub-style).

SAO has the model write its own training prompts. Asked plainly, a model writes the same
few prompts over and over; asked to write as "a nurse in their fifties from Lagos who is
settling a bet with a friend", it writes prompts from all over the space of users. The
persona set is built by sampling combinations of shipped attribute lists (hand-written,
plain English) without replacement, and dropping personas whose descriptions are near
copies of one already kept, so every persona pushes the prompt writer somewhere new.
Everything is deterministic under the seed.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from math import prod
from typing import Any

from convergence.society.sao.similarity import jaccard, shingles

ROLES: tuple[str, ...] = (
    "nurse", "software developer", "farmer", "high school teacher", "truck driver", "chef", "accountant",
    "electrician", "graduate student", "librarian", "small business owner", "police officer", "pharmacist",
    "journalist", "carpenter", "social worker", "fisherman", "architect", "barista", "lawyer", "data analyst",
    "session musician", "firefighter", "veterinarian", "stay-at-home parent", "taxi driver", "museum curator",
    "plumber", "translator", "dentist", "real estate agent", "factory worker", "airline pilot",
    "marketing manager", "tailor", "park ranger", "bank teller", "game designer", "construction worker",
    "hairdresser", "midwife", "car mechanic", "wedding photographer", "hospital administrator",
    "warehouse worker", "beekeeper", "night-shift security guard", "call-centre agent", "pastry baker",
    "youth football coach", "civil servant", "retail cashier",
)
"""Occupations across walks of life."""

DOMAINS: tuple[str, ...] = (
    "astronomy", "personal finance", "home cooking", "gardening", "football", "classical music",
    "Python programming", "world history", "nutrition", "photography", "chess", "car repair", "birdwatching",
    "climate science", "tenancy law", "video games", "knitting", "mental health", "home renovation", "poetry",
    "cryptocurrency", "hiking", "linguistics", "parenting", "jazz", "statistics", "medieval architecture",
    "film history", "strength training", "basketball", "wine", "urban planning", "philosophy", "chemistry",
    "fashion design", "mythology", "machine learning", "tax rules", "first aid", "electronics",
)
"""Subjects a persona knows more or less about."""

EXPERTISE: tuple[str, ...] = ("complete novice", "beginner", "intermediate learner", "seasoned hobbyist", "expert")
"""How much the persona knows about its domain, least to most."""

AGES: tuple[str, ...] = (
    "in their early twenties", "in their late twenties", "in their thirties", "in their forties",
    "in their fifties", "in their sixties or older",
)
"""Age bands, written as they read in a sentence."""

REGIONS: tuple[str, ...] = (
    "Lagos", "São Paulo", "rural Iowa", "Mumbai", "Tokyo", "Berlin", "Cairo", "Mexico City", "Jakarta",
    "Nairobi", "Manila", "Toronto", "the Scottish Highlands", "Buenos Aires", "Seoul", "Istanbul", "Hanoi",
    "Dhaka", "Sydney", "Lima", "Warsaw", "Casablanca", "Auckland", "Reykjavik", "rural Punjab",
    "coastal Norway", "the Texas Panhandle", "Johannesburg", "a mountain village in Peru", "Marseille",
)
"""Cities and regions all over the world."""

GOALS: tuple[str, ...] = (
    "planning a trip", "studying for an exam", "settling a bet with a friend", "writing a wedding speech",
    "preparing for a job interview", "helping a child with homework", "fixing something at home",
    "deciding on a big purchase", "writing a report for work", "starting a small business",
    "trying to understand a news story", "picking up a new hobby", "planning a family dinner",
    "preparing a presentation", "drafting a complaint letter", "choosing a university course",
    "training for a marathon", "looking after an ageing parent", "chasing down a stubborn bug",
    "making sense of a letter from the doctor",
)
"""What the persona is trying to get done (gerund phrases)."""

TONES: tuple[str, ...] = (
    "curious", "blunt", "formal", "casual", "anxious", "playful", "skeptical", "impatient", "polite",
    "enthusiastic",
)
"""How the persona writes."""

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "role": ROLES, "domain": DOMAINS, "expertise": EXPERTISE, "age": AGES, "region": REGIONS,
    "goal": GOALS, "tone": TONES,
}
"""Attribute name -> its values, in the order a persona stores them."""

MAX_PERSONAS = 100_000
"""Largest set ``build_personas`` makes: the lists are meant for thousands, and memory grows with n."""

NEIGHBOURHOOD = 3
"""Near duplicates are looked for among personas differing in at most this many attributes."""
EXACT_THRESHOLD = 0.85
"""At or above this threshold the neighbourhood search misses nothing: personas differing in 2
attributes can reach 0.92 (two age bands, two tones), in 3 about 0.86, but in 4 or more no pair
found by a hill-climbing search over the lists reached 0.78 (tests/test_sao_parts.py checks a sample).
Below it every pair is compared, which is exact but quadratic."""

_TEMPLATES = (
    "{Role} {age} from {region}, {level} in {domain}, {goal}; writes in {tone} tone.",
    "From {region}, {role} {age} who is {level} in {domain} is {goal} and writes in {tone} tone.",
    "{Level} in {domain}: {role} from {region}, {age}, currently {goal}, with {tone} way of writing.",
)


def _a(phrase: str) -> str:
    """The phrase with its indefinite article: 'an expert', 'a nurse'."""
    return ("an " if phrase[0].lower() in "aeio" else "a ") + phrase


def _cap(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:]


@dataclass(frozen=True, slots=True)
class Persona:
    attributes: dict[str, str]
    """Attribute name -> value, one per ``ATTRIBUTES`` entry. Treat as read-only: personas are hashed."""

    def __hash__(self) -> int:
        return hash(frozenset(self.attributes.items()))

    @classmethod
    def from_dict(cls, attributes: dict[str, str]) -> Persona:
        """A persona from every ``ATTRIBUTES`` entry (extra keys dropped; a missing one raises KeyError)."""
        return cls({name: attributes[name] for name in ATTRIBUTES})

    def as_dict(self) -> dict[str, str]:
        return dict(self.attributes)

    def get(self, name: str) -> str:
        return self.attributes[name]

    @property
    def text(self) -> str:
        """A one-sentence description; the sentence frame is picked from the attributes (deterministic)."""
        d = self.attributes
        key = "|".join(d[name] for name in ATTRIBUTES)
        template = _TEMPLATES[zlib.crc32(key.encode()) % len(_TEMPLATES)]
        role, level = _a(d["role"]), _a(d["expertise"])
        return template.format(role=role, Role=_cap(role), level=level, Level=_cap(level), age=d["age"],
                               region=d["region"], domain=d["domain"], goal=d["goal"], tone=_a(d["tone"]))


def combinations_count() -> int:
    """How many distinct attribute combinations the lists can produce."""
    return prod(len(values) for values in ATTRIBUTES.values())


def _decode(index: int) -> tuple[int, ...]:
    """Mixed-radix digits of ``index``: one value index per attribute."""
    digits = []
    for values in ATTRIBUTES.values():
        index, digit = divmod(index, len(values))
        digits.append(digit)
    return tuple(digits)


def _neighbour_keys(digits: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Keys (``NEIGHBOURHOOD`` digits masked): two combinations share one iff they differ in at most that many."""
    return [tuple(-1 if m in masked else d for m, d in enumerate(digits))
            for masked in combinations(range(len(digits)), NEIGHBOURHOOD)]


def build_personas(n: int = 1000, seed: int = 0, similarity_threshold: float = 0.9) -> list[Persona]:
    """``n`` distinct personas, no two with texts of similarity >= ``similarity_threshold``.

    Combinations are drawn without replacement with ``random.Random(seed)``; a persona whose text
    is a near duplicate of one already kept is skipped and another is drawn. Raises ValueError when
    ``n`` is more than the lists can produce (or than ``MAX_PERSONAS``).
    """
    total = combinations_count()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > min(total, MAX_PERSONAS):
        raise ValueError(f"cannot build {n} personas: the attribute lists give {total} combinations "
                         f"and at most {MAX_PERSONAS} personas are built")
    rng = random.Random(seed)
    names = list(ATTRIBUTES)
    value_lists = list(ATTRIBUTES.values())
    exact = similarity_threshold >= EXACT_THRESHOLD
    seen: set[int] = set()
    kept: list[Persona] = []
    kept_shingles: list[frozenset[str]] = []
    buckets: dict[tuple[int, ...], list[int]] = {}
    while len(kept) < n:
        if len(seen) == total:
            raise ValueError(f"cannot build {n} personas: only {len(kept)} remain after removing near duplicates "
                             f"at threshold {similarity_threshold}")
        index = rng.randrange(total)
        if index in seen:
            continue
        seen.add(index)
        digits = _decode(index)
        persona = Persona({names[a]: value_lists[a][d] for a, d in enumerate(digits)})
        sh = shingles(persona.text)
        keys = _neighbour_keys(digits) if exact else []
        candidates = {i for key in keys for i in buckets.get(key, ())} if exact else range(len(kept))
        if any(jaccard(sh, kept_shingles[i]) >= similarity_threshold for i in candidates):
            continue
        for key in keys:
            buckets.setdefault(key, []).append(len(kept))
        kept.append(persona)
        kept_shingles.append(sh)
    return kept


def persona_set_stats(personas: Sequence[Persona]) -> dict[str, Any]:
    """Size of a persona set: count, distinct texts, and distinct values per attribute."""
    return {
        "count": len(personas),
        "distinct_texts": len({p.text for p in personas}),
        "distinct_values": {name: len({p.get(name) for p in personas}) for name in ATTRIBUTES},
    }
