"""Noisy LLM-like problems for ``search_quality.py --noisy``.

A configuration's quality is not observed directly. It is run on 30 test
cases, and each case call succeeds (1) or fails (0) with a probability

    logit p(config, j) = A0 + A1 * f(config) - d_j + c(config) * z_j

where ``f`` is a deterministic quality in [0, 1] (with interactions, a needle
or sparse tables, below), ``d_j`` is case j's difficulty (fixed per problem,
shared by every configuration, so results pair across configurations),
``z_j`` is d_j standardised and ``c`` an optional configuration x case
interaction (chain-of-thought helps on hard cases and costs on easy ones).
Each problem also has parameters that change nothing (irrelevant).

The *true* value of a configuration is ``mean_j p(config, j)`` (noise-free).
A case call is a fresh Bernoulli draw, reproducible per job seed: the
``random.Random`` stream is keyed by (job seed, configuration, case, k), where k
counts how many times this process already called that (configuration, case)
pair in the current job (:func:`reset` starts a job). A method that calls the
same pair again gets a new draw, as a re-run LLM call would.

Problems (every optimum is computed over the whole grid of relevant
parameters at import time):

* ``llm_noisy``: prompt style x model from a scored table (chain-of-thought
  best on the large model only), a temperature bump centred per model, a
  max_tokens knee per style, a style x case-difficulty interaction; two
  irrelevant parameters (presence_penalty, response_format).
* ``needle_noisy``: a broad hill (true value at most ~0.70) with a narrow
  needle (~0.84) on one of 6 templates, in temperature (step 0.01), top_p
  (step 0.01) and integer max_tokens (16..1024 step 16); two irrelevant
  parameters (frequency_penalty, integer beam_width).
* ``cats_noisy``: 24 prompts x 8 models x 6 system prompts x 4 stop
  sequences x 11 temperatures, additive main effects plus sparse prompt x
  model and system x prompt interactions; three irrelevant parameters
  (tool_format, language, integer n_retries).
* ``cells_noisy``: a large categorical space with few good cells: 40 prompts x
  12 models x 5 few-shot counts x 4 output formats (9,600 relevant cells),
  weak main effects (true value about 0.25-0.45) and 6 (prompt, model) cells
  that are good (up to ~0.85) only with their own few-shot count; the good
  cells' prompts and models have middling main effects, so marginals do not
  point at them. Two irrelevant parameters (seed_phrase, integer n_retries).
* ``heavy_noisy``: heavy-tailed case difficulty (Student t, 1.5 degrees of
  freedom, clipped at +-8: a few cases nearly always fail or always pass
  whatever the configuration, so they carry no signal, and the rest sit
  near the middle) on a retrieval-like space (top_k, chunk size,
  temperature, reranker, query rewrite) with a reranker x case-difficulty
  interaction; two irrelevant parameters (cache, log_level).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from statistics import NormalDist
from typing import Any

import numpy as np

N_CASES = 30
A0, A1 = -2.5, 4.5
"""logit link: f = 0 -> about 0.1 success, f = 1 -> about 0.85 (with the case difficulties below)."""
DIFFICULTY_SD = 1.0


def _difficulties(seed: int) -> np.ndarray:
    """30 case difficulties: normal quantiles (sd ``DIFFICULTY_SD``) in a fixed shuffled order."""
    d = [DIFFICULTY_SD * NormalDist().inv_cdf((j + 0.5) / N_CASES) for j in range(N_CASES)]
    random.Random(seed).shuffle(d)
    return np.asarray(d)


HEAVY_DF, HEAVY_CLIP = 1.5, 8.0


def _heavy_difficulties(seed: int) -> np.ndarray:
    """30 heavy-tailed case difficulties: Student t quantiles (``HEAVY_DF`` dof), clipped, fixed shuffled order."""
    from scipy.stats import t

    d = [float(np.clip(t.ppf((j + 0.5) / N_CASES, HEAVY_DF), -HEAVY_CLIP, HEAVY_CLIP)) for j in range(N_CASES)]
    random.Random(seed).shuffle(d)
    return np.asarray(d)


def _grid(spec: tuple[Any, ...]) -> list[Any]:
    """Every value of one parameter (the same grid the optimizers search)."""
    kind = spec[0]
    if kind in ("cat", "values"):
        return list(spec[1])
    if kind == "float":
        n = round((spec[2] - spec[1]) / spec[3])
        return [round(spec[1] + i * spec[3], 6) for i in range(n + 1)]
    return list(range(spec[1], spec[2] + 1, spec[3]))


@dataclass
class NoisyProblem:
    name: str
    space: dict[str, tuple[Any, ...]]
    """("cat", values) | ("float", low, high, step) | ("values", [ints]) | ("int", low, high, step)"""
    relevant: list[str]
    quality: Callable[[dict[str, Any]], float]
    """f(config) in [0, 1]."""
    case_gain: Callable[[dict[str, Any]], float] = lambda p: 0.0
    """c(config): the weight of the standardised case difficulty in the logit."""
    seed: int = 0
    difficulties: Callable[[int], np.ndarray] = _difficulties
    """the case difficulties d_j from the problem's seed."""
    difficulty: np.ndarray = field(init=False)
    optimum: float = field(init=False)
    optimum_config: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.difficulty = self.difficulties(self.seed)
        self._z = (self.difficulty - self.difficulty.mean()) / self.difficulty.std()
        self._cache: dict[str, np.ndarray] = {}

    def probs(self, params: dict[str, Any]) -> np.ndarray:
        """p(config, j) for the 30 cases."""
        key = config_key(params)
        p = self._cache.get(key)
        if p is None:
            logit = A0 + A1 * self.quality(params) - self.difficulty + self.case_gain(params) * self._z
            p = self._cache[key] = 1.0 / (1.0 + np.exp(-logit))
        return p

    def true_value(self, params: dict[str, Any]) -> float:
        return float(self.probs(params).mean())

    def find_optimum(self, candidates: list[dict[str, Any]]) -> None:
        """The best true value over ``candidates`` (relevant parameters only; the rest do not matter)."""
        filler = {k: _grid(v)[0] for k, v in self.space.items() if k not in self.relevant}
        best, best_cfg = -1.0, {}
        for c in candidates:
            cfg = {**filler, **c}
            logit = A0 + A1 * self.quality(cfg) - self.difficulty + self.case_gain(cfg) * self._z
            v = float((1.0 / (1.0 + np.exp(-logit))).mean())
            if v > best:
                best, best_cfg = v, cfg
        self.optimum, self.optimum_config = best, best_cfg


def config_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- reproducible Bernoulli draws

JOB_SEED = 0
_CALLS: dict[tuple[str, int], int] = {}


def reset(seed: int) -> None:
    """Start a job: its seed, and no (configuration, case) pair called yet."""
    global JOB_SEED
    JOB_SEED = seed
    _CALLS.clear()


def draw(problem: NoisyProblem, params: dict[str, Any], case: int) -> int:
    """One case call: 1 with probability p(config, case), a fresh draw on every call."""
    key = config_key(params)
    k = _CALLS.get((key, case), 0)
    _CALLS[(key, case)] = k + 1
    h = hashlib.blake2b(f"{JOB_SEED}|{problem.name}|{key}|{case}|{k}".encode(), digest_size=8).digest()
    return int(random.Random(int.from_bytes(h, "big")).random() < problem.probs(params)[case])


# --------------------------------------------------------------------------- llm_noisy

STYLES = ["bare", "qa", "few_shot", "instruct", "cot"]
MODELS = ["tiny", "small", "medium", "large"]
QUALITY = {  # style -> quality per model (tiny, small, medium, large)
    "bare": [0.20, 0.30, 0.40, 0.50],
    "qa": [0.30, 0.42, 0.52, 0.60],
    "few_shot": [0.45, 0.60, 0.72, 0.80],
    "instruct": [0.25, 0.45, 0.65, 0.85],
    "cot": [0.10, 0.25, 0.55, 1.00],
}
BEST_TEMP = {"tiny": 0.2, "small": 0.3, "medium": 0.5, "large": 0.7}
TOKENS_NEEDED = {"bare": 64, "qa": 64, "few_shot": 128, "instruct": 128, "cot": 512}
MAX_TOKENS = [32, 64, 128, 256, 512, 1024, 2048]
STYLE_CASE_GAIN = {"bare": -0.3, "qa": 0.0, "few_shot": 0.0, "instruct": 0.3, "cot": 0.6}
"""chain-of-thought gains on hard cases and loses on easy ones; bare the other way round."""


def llm_quality(p: dict[str, Any]) -> float:
    quality = QUALITY[p["style"]][MODELS.index(p["model"])]
    temp = 0.4 + 0.6 * math.exp(-(((p["temperature"] - BEST_TEMP[p["model"]]) / 0.25) ** 2))
    need, mt = TOKENS_NEEDED[p["style"]], p["max_tokens"]
    tokens = (mt / need) ** 1.5 if mt < need else 1.0 - 0.04 * math.log2(mt / need)
    return quality * temp * tokens


# --------------------------------------------------------------------------- needle_noisy

TEMPLATES = ["plain", "role", "json", "checklist", "socratic", "expert"]
TEMPLATE_W = {"plain": 0.70, "role": 0.80, "json": 0.75, "checklist": 0.85, "socratic": 0.90, "expert": 1.00}


def _needle_raw(p: dict[str, Any]) -> float:
    t, tp, mt = p["temperature"], p["top_p"], p["max_tokens"]
    broad = (
        math.exp(-(((t - 0.6) / 0.5) ** 2))
        * math.exp(-(((tp - 0.9) / 0.25) ** 2))
        * math.exp(-(((math.log2(mt) - 8.0) / 2.0) ** 2))
    )
    needle = 0.0
    if p["template"] == "expert":  # wider than search_quality's ``narrow`` needle, so a search can find it
        needle = math.exp(-(((t - 0.37) / 0.08) ** 2 + ((tp - 0.83) / 0.05) ** 2 + ((mt - 384) / 96) ** 2))
    return 0.6 * TEMPLATE_W[p["template"]] * broad + 0.4 * needle


def _needle_max() -> float:
    # the needle's neighbourhood holds the maximum (elsewhere the raw score is at most 0.6)
    return max(_needle_raw({"template": "expert", "temperature": round(0.01 * i, 2), "top_p": round(0.01 * j, 2),
                            "max_tokens": mt})
               for i in range(20, 60) for j in range(70, 101) for mt in range(256, 529, 16))


_NEEDLE_MAX = _needle_max()


def needle_quality(p: dict[str, Any]) -> float:
    return _needle_raw(p) / _NEEDLE_MAX


# --------------------------------------------------------------------------- cats_noisy

PROMPTS = [f"prompt_{i:02d}" for i in range(24)]
MODELS8 = ["m-a", "m-b", "m-c", "m-d", "m-e", "m-f", "m-g", "m-h"]
SYSTEMS = ["none", "helpful", "terse", "expert", "pirate", "careful"]
STOPS = ["none", "newline", "double_newline", "period"]
_r = random.Random(20240611)  # fixed tables (search_quality's many_cats): the same on every run and machine
PROMPT_Q = [_r.random() for _ in PROMPTS]
MODEL_Q = [_r.random() for _ in MODELS8]
AFFINITY = [[_r.random() ** 4 for _ in MODELS8] for _ in PROMPTS]  # sparse: few strong pairs
SYS_FIT = [[_r.random() ** 3 for _ in PROMPTS] for _ in SYSTEMS]
STOP_Q = [0.6, 1.0, 0.8, 0.3]
BEST_T8 = [_r.choice([0.0, 0.2, 0.4, 0.6]) for _ in MODELS8]


def _cats_raw(p: dict[str, Any]) -> float:
    i, j = PROMPTS.index(p["prompt"]), MODELS8.index(p["model"])
    s, k = SYSTEMS.index(p["system"]), STOPS.index(p["stop"])
    temp = 1.0 - abs(p["temperature"] - BEST_T8[j])
    return (0.20 * PROMPT_Q[i] + 0.15 * MODEL_Q[j] + 0.35 * AFFINITY[i][j]
            + 0.15 * SYS_FIT[s][i] + 0.05 * STOP_Q[k] + 0.10 * temp)


def _cats_max() -> float:
    # separable given (prompt, model): system, stop and temperature are maximised independently
    return max(0.20 * PROMPT_Q[i] + 0.15 * MODEL_Q[j] + 0.35 * AFFINITY[i][j]
               + 0.15 * max(SYS_FIT[s][i] for s in range(len(SYSTEMS))) + 0.05 + 0.10
               for i in range(len(PROMPTS)) for j in range(len(MODELS8)))


_CATS_MAX = _cats_max()


def cats_quality(p: dict[str, Any]) -> float:
    return _cats_raw(p) / _CATS_MAX


# --------------------------------------------------------------------------- cells_noisy

CELL_PROMPTS = [f"p{i:02d}" for i in range(40)]
CELL_MODELS = [f"model-{c}" for c in "abcdefghijkl"]
SHOTS = [0, 1, 2, 4, 8]
FORMATS = ["plain", "json", "markdown", "xml"]
_rc = random.Random(20261207)  # fixed tables: the same on every run and machine
CELL_PQ = [_rc.random() for _ in CELL_PROMPTS]
CELL_MQ = [_rc.random() for _ in CELL_MODELS]
FORMAT_Q = [0.9, 1.0, 0.95, 0.85]
GOOD_CELLS: dict[tuple[int, int], tuple[float, int]] = {}
"""(prompt, model) -> (strength, the few-shot count it needs): 6 of 480 cells, on middling prompts and models."""
_middling_p = sorted(range(len(CELL_PROMPTS)), key=lambda i: CELL_PQ[i])[12:28]
_middling_m = sorted(range(len(CELL_MODELS)), key=lambda j: CELL_MQ[j])[3:9]
while len(GOOD_CELLS) < 6:
    GOOD_CELLS.setdefault((_rc.choice(_middling_p), _rc.choice(_middling_m)),
                          (0.6 + 0.4 * _rc.random(), _rc.choice(SHOTS)))


def _cells_raw(p: dict[str, Any]) -> float:
    i, j = CELL_PROMPTS.index(p["prompt"]), CELL_MODELS.index(p["model"])
    base = 0.25 * CELL_PQ[i] + 0.25 * CELL_MQ[j]
    strength, shots = GOOD_CELLS.get((i, j), (0.0, 0))
    fit = 1.0 if p["shots"] == shots else 0.3  # a good cell needs its own number of examples
    return (base + 0.5 * strength * fit) * FORMAT_Q[FORMATS.index(p["format"])]


_CELLS_MAX = max(_cells_raw({"prompt": pr, "model": mo, "shots": s, "format": "json"})
                 for pr in CELL_PROMPTS for mo in CELL_MODELS for s in SHOTS)


def cells_quality(p: dict[str, Any]) -> float:
    return _cells_raw(p) / _CELLS_MAX


# --------------------------------------------------------------------------- heavy_noisy

RERANKERS = ["none", "bm25", "cross_encoder", "llm"]
RERANK_Q = {"none": 0.75, "bm25": 0.85, "cross_encoder": 1.0, "llm": 0.95}
RERANK_CASE_GAIN = {"none": -0.2, "bm25": 0.0, "cross_encoder": 0.3, "llm": 0.6}
"""an LLM reranker gains most on hard cases and loses on easy ones."""
CHUNKS = [128, 256, 512, 1024, 2048]


def heavy_quality(p: dict[str, Any]) -> float:
    k, chunk, t = p["top_k"], p["chunk_size"], p["temperature"]
    context = k * chunk  # too little context misses the answer, too much drowns it
    ctx = math.exp(-(((math.log2(context) - 12.0) / 1.6) ** 2))
    chunk_fit = math.exp(-(((math.log2(chunk) - (9.0 if p["rewrite"] else 8.0)) / 1.5) ** 2))
    temp = math.exp(-(((t - 0.2) / 0.35) ** 2))
    return RERANK_Q[p["reranker"]] * (0.45 * ctx + 0.25 * chunk_fit + 0.3 * temp) * (1.0 if p["rewrite"] else 0.93)


# --------------------------------------------------------------------------- the problems

PROBLEMS: dict[str, NoisyProblem] = {
    "llm_noisy": NoisyProblem(
        "llm_noisy",
        {
            "style": ("cat", STYLES),
            "model": ("cat", MODELS),
            "temperature": ("float", 0.0, 1.5, 0.05),
            "max_tokens": ("values", MAX_TOKENS),
            "presence_penalty": ("float", 0.0, 1.0, 0.1),  # irrelevant
            "response_format": ("cat", ["text", "markdown", "json_object"]),  # irrelevant
        },
        ["style", "model", "temperature", "max_tokens"],
        llm_quality,
        case_gain=lambda p: STYLE_CASE_GAIN[p["style"]],
        seed=1,
    ),
    "needle_noisy": NoisyProblem(
        "needle_noisy",
        {
            "template": ("cat", TEMPLATES),
            "temperature": ("float", 0.0, 2.0, 0.01),
            "top_p": ("float", 0.5, 1.0, 0.01),
            "max_tokens": ("int", 16, 1024, 16),
            "frequency_penalty": ("float", 0.0, 2.0, 0.1),  # irrelevant
            "beam_width": ("int", 1, 8, 1),  # irrelevant
        },
        ["template", "temperature", "top_p", "max_tokens"],
        needle_quality,
        seed=2,
    ),
    "cats_noisy": NoisyProblem(
        "cats_noisy",
        {
            "prompt": ("cat", PROMPTS),
            "model": ("cat", MODELS8),
            "system": ("cat", SYSTEMS),
            "stop": ("cat", STOPS),
            "temperature": ("float", 0.0, 1.0, 0.1),
            "tool_format": ("cat", ["xml", "json", "yaml", "markdown", "plain"]),  # irrelevant
            "language": ("cat", ["en", "de", "fr"]),  # irrelevant
            "n_retries": ("int", 0, 5, 1),  # irrelevant
        },
        ["prompt", "model", "system", "stop", "temperature"],
        cats_quality,
        seed=3,
    ),
    "cells_noisy": NoisyProblem(
        "cells_noisy",
        {
            "prompt": ("cat", CELL_PROMPTS),
            "model": ("cat", CELL_MODELS),
            "shots": ("values", SHOTS),
            "format": ("cat", FORMATS),
            "seed_phrase": ("cat", ["none", "think", "careful", "brief", "expert", "kind"]),  # irrelevant
            "n_retries": ("int", 0, 5, 1),  # irrelevant
        },
        ["prompt", "model", "shots", "format"],
        cells_quality,
        seed=4,
    ),
    "heavy_noisy": NoisyProblem(
        "heavy_noisy",
        {
            "top_k": ("int", 1, 20, 1),
            "chunk_size": ("values", CHUNKS),
            "temperature": ("float", 0.0, 1.0, 0.05),
            "reranker": ("cat", RERANKERS),
            "rewrite": ("cat", [False, True]),
            "cache": ("cat", ["off", "on"]),  # irrelevant
            "log_level": ("cat", ["debug", "info", "warning"]),  # irrelevant
        },
        ["top_k", "chunk_size", "temperature", "reranker", "rewrite"],
        heavy_quality,
        case_gain=lambda p: RERANK_CASE_GAIN[p["reranker"]],
        seed=5,
        difficulties=_heavy_difficulties,
    ),
}


def _optima() -> None:
    llm = PROBLEMS["llm_noisy"]
    llm.find_optimum([dict(zip(llm.relevant, v, strict=True))
                      for v in product(*(_grid(llm.space[k]) for k in llm.relevant))])
    # f alone sets the logit (no case interaction): the optimum is where f is largest (f = 1, checked)
    needle = PROBLEMS["needle_noisy"]
    needle.find_optimum([{"template": "expert", "temperature": round(0.01 * i, 2), "top_p": round(0.01 * j, 2),
                          "max_tokens": mt}
                         for i in range(20, 60) for j in range(70, 101) for mt in range(256, 529, 16)])
    cats = PROBLEMS["cats_noisy"]
    cats.find_optimum([{"prompt": p, "model": mo, "system": s, "stop": "newline",
                        "temperature": BEST_T8[MODELS8.index(mo)]}
                       for p in PROMPTS for mo in MODELS8 for s in SYSTEMS])
    cells = PROBLEMS["cells_noisy"]
    cells.find_optimum([dict(zip(cells.relevant, v, strict=True))
                        for v in product(*(_grid(cells.space[k]) for k in cells.relevant))])
    heavy = PROBLEMS["heavy_noisy"]
    heavy.find_optimum([dict(zip(heavy.relevant, v, strict=True))
                        for v in product(*(_grid(heavy.space[k]) for k in heavy.relevant))])
    assert abs(needle_quality(needle.optimum_config) - 1.0) < 1e-9
    assert abs(cats_quality(cats.optimum_config) - 1.0) < 1e-9


_optima()


# --------------------------------------------------------------------------- Convergence target and metric


def _target(name: str) -> Callable[..., Any]:
    problem = PROBLEMS[name]

    async def call(params: dict[str, Any], input: Any) -> int:
        return draw(problem, params, int(input))

    call.__name__ = f"target_{name}"
    return call


target_llm_noisy = _target("llm_noisy")
target_needle_noisy = _target("needle_noisy")
target_cats_noisy = _target("cats_noisy")
target_cells_noisy = _target("cells_noisy")
target_heavy_noisy = _target("heavy_noisy")


def score(output: Any, case: Any, call: Any, args: Any) -> float:
    return float(output)


def suggest(trial: Any, space: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """An Optuna trial's configuration over one of these spaces (the same grid every method searches)."""
    p: dict[str, Any] = {}
    for name, spec in space.items():
        if spec[0] in ("cat", "values"):
            p[name] = trial.suggest_categorical(name, list(spec[1]))
        elif spec[0] == "float":
            p[name] = round(trial.suggest_float(name, spec[1], spec[2], step=spec[3]), 6)
        else:
            p[name] = trial.suggest_int(name, spec[1], spec[2], step=spec[3])
    return p
