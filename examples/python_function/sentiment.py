"""A small rule-based sentiment classifier whose knobs Convergence tunes.

A stand-in for any Python function you own: a retrieval step, a parser, a
ranking heuristic. Signature: ``fn(params, input) -> output``.
"""

from __future__ import annotations

POSITIVE = {"good", "great", "love", "excellent", "happy", "wonderful", "fine", "nice", "best", "enjoyed"}
NEGATIVE = {"bad", "terrible", "hate", "awful", "sad", "worst", "poor", "boring", "broken", "disappointing"}
NEGATORS = {"not", "never", "no", "hardly", "isn't", "wasn't", "don't", "didn't"}


def classify(params: dict, input: dict) -> str:
    words = [w.strip(".,!?").lower() for w in input["text"].split()]
    score = 0.0
    for i, w in enumerate(words):
        polarity = (w in POSITIVE) - (w in NEGATIVE)
        if not polarity:
            continue
        window = words[max(0, i - int(params["negation_window"])) : i]
        if params["handle_negation"] and any(n in NEGATORS for n in window):
            polarity = -polarity
        score += polarity * (params["negative_weight"] if polarity < 0 else 1.0)
    return "positive" if score > params["threshold"] else "negative"
