"""SAO's pure parts as a user sees them: the persona set is large, varied, free of near copies
and reproducible; the similarity measures rank copies, near copies and unrelated texts as a
reader would; the judge's verdict is read strictly and the swap rule keeps only verdicts that
hold in both orders; the Bradley-Terry ratings recover a known quality order from duels."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from convergence.core.sao_pair import Outcome
from convergence.society.sao.personas import (
    ATTRIBUTES,
    EXACT_THRESHOLD,
    NEIGHBOURHOOD,
    Persona,
    build_personas,
    combinations_count,
    persona_set_stats,
)
from convergence.society.sao.ratings import Duel, fit_bradley_terry, ratings, win_probability
from convergence.society.sao.similarity import (
    distinct_ngrams,
    diversity_score,
    is_near_duplicate,
    near_duplicates,
    similarity,
)
from convergence.society.sao.verdict import (
    JUDGE_INSTRUCTIONS,
    VERDICT_SCHEMA,
    combine,
    consistency_rate,
    judge_prompt,
    parse_continuation,
    parse_json_verdict,
    parse_verdict,
    swap,
)

# ---------------------------------------------------------------- similarity


def test_identical_texts_are_fully_similar_whatever_case_spacing_or_punctuation() -> None:
    assert similarity("Hello, world!", "hello   WORLD") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("", "something") == 0.0


def test_unrelated_texts_are_barely_similar_and_a_near_copy_is_very_similar() -> None:
    assert similarity("abcdefgh", "stuvwxyz") == 0.0
    assert similarity("The cat sat on the mat today", "Quantum chromodynamics lectures") < 0.1
    near = similarity("Plan a three day trip to Lisbon on a budget", "Plan a three-day trip to Lisbon on a budget!")
    assert near >= 0.9
    assert 0.0 <= similarity("apples and pears", "pears and apples") <= 1.0


def test_near_duplicates_reports_later_copies_and_keeps_the_first() -> None:
    texts = [
        "How do I fix a leaking kitchen tap?",
        "What is the capital of Australia?",
        "How do I fix a leaking kitchen tap??",
        "how do i FIX a leaking kitchen tap",
        "Write a haiku about autumn rain.",
    ]
    assert near_duplicates(texts) == [2, 3]
    assert near_duplicates(texts, threshold=1.01) == []  # nothing reaches an impossible threshold
    assert is_near_duplicate("What is the capital of  Australia", texts)
    assert not is_near_duplicate("Explain photosynthesis to a child", texts)


def test_diversity_is_zero_for_copies_and_high_for_varied_texts() -> None:
    assert diversity_score(["same text"] * 10) == 0.0
    assert diversity_score(["only one"]) == 0.0
    assert diversity_score([]) == 0.0
    varied = ["Explain black holes simply", "Best sourdough starter tips?", "Translate 'good morning' to Thai",
              "Why did the Roman empire fall", "Fix my python KeyError", "Knitting a scarf for beginners"]
    assert diversity_score(varied) > 0.8
    many = [f"prompt number {i} about topic {i * 7919 % 1000}" for i in range(1000)]
    started = time.perf_counter()
    assert 0.0 < diversity_score(many) < 1.0
    assert time.perf_counter() - started < 2.0  # sampled, not 500k pairs


def test_distinct_ngrams_counts_repeated_phrasing() -> None:
    assert distinct_ngrams(["a b c", "a b c"], n=2) == 0.5
    assert distinct_ngrams(["one two three", "four five six"], n=2) == 1.0
    assert distinct_ngrams(["single"], n=2) == 0.0
    with pytest.raises(ValueError):
        distinct_ngrams(["x"], n=0)


# ---------------------------------------------------------------- personas


def _max_pair_similarity(texts: list[str]) -> float:
    """Exact max Jaccard over all pairs, vectorised (shingle incidence matrix)."""
    from convergence.society.sao.similarity import shingles

    sets = [shingles(t) for t in texts]
    vocab = {s: i for i, s in enumerate(sorted(set().union(*sets)))}
    m = np.zeros((len(sets), len(vocab)), dtype=np.float32)
    for row, sh in enumerate(sets):
        m[row, [vocab[s] for s in sh]] = 1.0
    inter = m @ m.T
    sizes = m.sum(axis=1)
    jac = inter / (sizes[:, None] + sizes[None, :] - inter)
    np.fill_diagonal(jac, 0.0)
    return float(jac.max())


def test_default_persona_set_is_large_distinct_varied_and_fast() -> None:
    started = time.perf_counter()
    personas = build_personas()
    assert time.perf_counter() - started < 2.0
    assert len(personas) == 1000
    stats = persona_set_stats(personas)
    assert stats["count"] == 1000
    assert stats["distinct_texts"] == 1000
    assert len(set(personas)) == 1000
    # every attribute list is used broadly
    for name, values in ATTRIBUTES.items():
        assert stats["distinct_values"][name] >= min(len(values), 20), name
    assert _max_pair_similarity([p.text for p in personas]) < 0.9


def test_shipped_lists_are_large_and_varied() -> None:
    sizes = {name: len(set(values)) for name, values in ATTRIBUTES.items()}
    assert sizes["role"] >= 40 and sizes["domain"] >= 30 and sizes["region"] >= 20 and sizes["goal"] >= 15
    assert sizes["expertise"] >= 5 and sizes["age"] >= 6 and sizes["tone"] >= 8
    assert "settling a bet with a friend" in ATTRIBUTES["goal"]


def test_persona_text_is_one_natural_sentence_with_every_attribute_and_several_frames() -> None:
    personas = build_personas(300, seed=3)
    for p in personas:
        text = p.text
        assert text[0].isupper() and text.endswith(".") and text.count(".") == 1
        for value in p.as_dict().values():
            assert value in text
        assert " a a" not in text and " a e" not in text and " an n" not in text  # articles agree
    frames = {p.text.split(" ")[0] for p in personas}  # "A"/"An" vs "From" open different frames
    assert "From" in frames and len({p.text.count(":") for p in personas}) == 2
    nurse = Persona.from_dict({"role": "nurse", "domain": "astronomy", "expertise": "complete novice",
                               "age": "in their thirties", "region": "Lagos", "goal": "settling a bet with a friend",
                               "tone": "curious"})
    assert "nurse" in nurse.text and "Lagos" in nurse.text and nurse.get("tone") == "curious"


def test_personas_are_reproducible_under_a_seed_and_differ_across_seeds() -> None:
    a, b = build_personas(200, seed=7), build_personas(200, seed=7)
    assert [p.text for p in a] == [p.text for p in b]
    c = build_personas(200, seed=8)
    assert [p.text for p in a] != [p.text for p in c]
    assert len({p.text for p in a} & {p.text for p in c}) < 20


def test_larger_sets_and_stricter_thresholds_hold_no_near_duplicates() -> None:
    started = time.perf_counter()
    personas = build_personas(5000, seed=1)
    assert time.perf_counter() - started < 5.0
    assert len({p.text for p in personas}) == 5000
    sample = random.Random(0).sample(personas, 1500)
    assert _max_pair_similarity([p.text for p in sample]) < 0.9
    strict = build_personas(300, seed=2, similarity_threshold=0.7)  # below EXACT_THRESHOLD: all pairs compared
    assert _max_pair_similarity([p.text for p in strict]) < 0.7


def test_near_duplicate_personas_are_removed_when_the_lists_are_small(monkeypatch: pytest.MonkeyPatch) -> None:
    # with 3 values per attribute most draws are close neighbours, so removal must do real work
    import convergence.society.sao.personas as personas_module

    small = {name: values[:3] for name, values in ATTRIBUTES.items()}
    monkeypatch.setattr(personas_module, "ATTRIBUTES", small)
    unfiltered = build_personas(150, seed=0, similarity_threshold=1.01)
    assert _max_pair_similarity([p.text for p in unfiltered]) >= 0.9  # near copies exist to be removed
    filtered = build_personas(150, seed=0, similarity_threshold=0.9)
    assert len({p.text for p in filtered}) == 150
    assert _max_pair_similarity([p.text for p in filtered]) < 0.9
    with pytest.raises(ValueError, match="near duplicates"):
        build_personas(combinations_count(), seed=0)  # 2187 combinations, far fewer survive


def test_personas_differing_beyond_the_neighbourhood_never_reach_the_exact_threshold() -> None:
    # the assumption that lets build_personas compare only near neighbours, checked on random pairs
    rng = random.Random(0)
    names, lists = list(ATTRIBUTES), list(ATTRIBUTES.values())
    worst = 0.0
    for _ in range(3000):
        d = [rng.randrange(len(v)) for v in lists]
        e = list(d)
        for a in rng.sample(range(len(d)), NEIGHBOURHOOD + 1):
            e[a] = rng.choice([x for x in range(len(lists[a])) if x != d[a]])
        p = Persona({names[a]: lists[a][x] for a, x in enumerate(d)})
        q = Persona({names[a]: lists[a][x] for a, x in enumerate(e)})
        worst = max(worst, similarity(p.text, q.text))
    assert worst < EXACT_THRESHOLD


def test_impossible_persona_counts_raise_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot build"):
        build_personas(combinations_count() + 1)
    with pytest.raises(ValueError, match="cannot build"):
        build_personas(10**12)
    with pytest.raises(ValueError):
        build_personas(-1)
    assert build_personas(0) == []


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[A]]", "A"),
        ("Response B is clearer.\n[[B]]", "B"),
        ("[[tie]]", "tie"),
        ("[[TIE]]", "tie"),
        ("[[Tie]]", "tie"),
        ("[[ a ]]", "A"),
        ("Answer: [[B]]", "B"),
        ("First I thought [[A]], but on reflection [[B]].", "B"),  # the last one wins
        ("[[A]] because it is correct.", "A"),
        ("A", "A"),
        ("b", "B"),
        ("tie", "tie"),
        ("Verdict: A", "A"),
        ("Some reasoning.\n\nanswer = (b).\n\n", "B"),
        ("winner - tie", "tie"),
        ("Verdict:B", "B"),
    ],
)
def test_accepted_verdict_formats(text: str, expected: str) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n ",
        "Both are good.",
        "both",
        "[[C]]",
        "[[both]]",
        "[[A]] ... final: [[C]]",  # the last bracketed token is not a verdict
        "[[A]]\nB",  # the final line contradicts the bracketed verdict
        "A is better than B",
        "Verdict: A or B",
        "A\nsome trailing chatter",
        "verdicta",
        "[A]",
        "I pick Response A.",
    ],
)
def test_garbage_and_contradictions_give_no_verdict(text: str) -> None:
    assert parse_verdict(text) is None


def test_judge_prompt_is_a_completion_the_model_finishes_with_a_verdict() -> None:
    prompt = judge_prompt("What is 2+2?", "4", "five")
    assert prompt.startswith(JUDGE_INSTRUCTIONS)
    assert prompt.index("What is 2+2?") < prompt.index("### Response A\n4") < prompt.index("### Response B\nfive")
    assert prompt.endswith("[[")
    assert parse_verdict(prompt + "A]]") == "A"


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        ("A]]", "A"),
        ("B]] because B is right", "B"),
        ("tie]]", "tie"),
        (" b ]]", "B"),
        ("A", "A"),  # a stop sequence cut the brackets off
        ("A]]\n\n### Task\nAnother made-up example\nVerdict: [[B]]", "A"),  # only the model's first answer counts
        ("Both are good]]", None),
        ("C]]", None),
        ("", None),
        ("I think A]]", None),
    ],
)
def test_continuations_of_the_judge_prompt(continuation: str, expected: str | None) -> None:
    assert parse_continuation(continuation) == expected


def test_json_verdicts_follow_the_schema() -> None:
    assert VERDICT_SCHEMA["properties"]["verdict"]["enum"] == ["A", "B", "tie"]
    assert VERDICT_SCHEMA["required"] == ["verdict"]
    assert parse_json_verdict('{"verdict": "A"}') == "A"
    assert parse_json_verdict('{"verdict": "tie", "reason": "same"}') == "tie"
    for bad in ('{"verdict": "C"}', '{"winner": "A"}', '["A"]', "A", "", '{"verdict": 1}', "{not json"):
        assert parse_json_verdict(bad) is None, bad


def test_swap_maps_the_second_judgment_back_to_the_original_labels() -> None:
    assert swap("A") == "B" and swap("B") == "A" and swap("tie") == "tie"


@pytest.mark.parametrize(
    ("first", "second_mapped", "expected"),
    [
        ("A", "A", "A"),
        ("B", "B", "B"),
        ("tie", "tie", "tie"),
        ("A", "B", "inconsistent"),
        ("A", "tie", "inconsistent"),
        ("tie", "B", "inconsistent"),
        (None, "A", "unparseable"),
        ("B", None, "unparseable"),
        (None, None, "unparseable"),
    ],
)
def test_combine_keeps_only_verdicts_that_hold_in_both_orders(first: str | None, second_mapped: str | None,
                                                              expected: str) -> None:
    assert combine(first, second_mapped) == expected  # type: ignore[arg-type]


def test_position_biased_judge_is_inconsistent_after_the_swap() -> None:
    # a judge that always prefers whatever it sees first: "A" then "A" on the swapped order, i.e. B
    assert combine(parse_verdict("[[A]]"), swap("A")) == "inconsistent"
    # a judge that prefers the same response in both orders
    assert combine(parse_verdict("[[B]]"), swap(parse_continuation("A]]") or "tie")) == "B"


def test_consistency_rate_counts_agreement_among_parseable_pairs() -> None:
    outcomes: list[Outcome] = ["A", "B", "tie", "inconsistent", "unparseable", "unparseable"]
    assert consistency_rate(outcomes) == 0.75
    assert consistency_rate(["unparseable"]) is None
    assert consistency_rate([]) is None
    assert consistency_rate(["inconsistent", "inconsistent"]) == 0.0


# ---------------------------------------------------------------- ratings


def _duels(true: dict[str, float], per_pair: int, seed: int) -> list[Duel]:
    rng = np.random.default_rng(seed)
    names = sorted(true)
    out: list[Duel] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for _ in range(per_pair):
                out.append(Duel(a, b, "A" if rng.random() < win_probability(true[a], true[b]) else "B"))
    return out


def test_bradley_terry_recovers_a_known_quality_order() -> None:
    true = {"h1": 0.0, "h2": 1.4, "h3": 2.8, "h4": 4.2}  # each better by ~80% win odds
    fitted = fit_bradley_terry(_duels(true, per_pair=40, seed=0))
    assert sorted(fitted, key=fitted.__getitem__) == ["h1", "h2", "h3", "h4"]
    assert abs(sum(fitted.values())) < 1e-9  # centered
    rated = ratings(_duels(true, per_pair=40, seed=0))
    assert list(rated) == ["h4", "h3", "h2", "h1"]  # strongest first
    assert rated["h4"].preference > 0.8 and rated["h1"].preference < 0.2
    assert rated["h1"].duels == 120 and rated["h1"].wins + rated["h1"].losses + rated["h1"].ties == 120


def test_duel_order_and_side_do_not_change_the_ratings() -> None:
    duels = _duels({"x": 0.0, "y": 1.0, "z": -0.5}, per_pair=15, seed=3)
    base = fit_bradley_terry(duels)
    shuffled = list(duels)
    random.Random(1).shuffle(shuffled)
    flipped = [Duel(d.b, d.a, {"A": "B", "B": "A", "tie": "tie"}[d.outcome]) for d in duels]  # type: ignore[arg-type]
    for other in (fit_bradley_terry(shuffled), fit_bradley_terry(flipped)):
        assert other.keys() == base.keys()
        assert all(abs(other[k] - base[k]) < 1e-9 for k in base)


def test_all_wins_stays_finite_and_ties_give_equal_strengths() -> None:
    winner = fit_bradley_terry([Duel("w", "l", "A")] * 50)
    assert np.isfinite(list(winner.values())).all()
    assert winner["w"] > 0 > winner["l"]
    assert ratings([Duel("w", "l", "A")] * 50)["w"].wins == 50
    tied = fit_bradley_terry([Duel("p", "q", "tie")] * 10 + [Duel("q", "r", "tie")] * 4)
    assert all(abs(v) < 1e-6 for v in tied.values())
    even = ratings([Duel("p", "q", "A"), Duel("p", "q", "B")])
    assert abs(even["p"].strength - even["q"].strength) < 1e-9 and abs(even["p"].preference - 0.5) < 1e-9


def test_a_stronger_prior_pulls_ratings_together_and_edge_cases() -> None:
    duels = [Duel("a", "b", "A")] * 5
    weak, strong = fit_bradley_terry(duels, 0.5), fit_bradley_terry(duels, 20.0)
    assert weak["a"] - weak["b"] > strong["a"] - strong["b"] > 0
    assert fit_bradley_terry([]) == {} and ratings([]) == {}
    assert fit_bradley_terry([Duel("same", "same", "A")]) == {}  # a config against itself says nothing
    with pytest.raises(ValueError):
        fit_bradley_terry(duels, prior_strength=0.0)


def test_win_probability_is_symmetric() -> None:
    assert win_probability(0.3, 0.3) == 0.5
    assert abs(win_probability(1.0, -0.5) + win_probability(-0.5, 1.0) - 1.0) < 1e-12
    assert win_probability(2.0, 0.0) > 0.85
