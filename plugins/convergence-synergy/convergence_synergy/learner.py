"""The synergy learner: learns each society agent's share from the improvement its proposals bring
per unit of cost, and predicts whether the next generation is worth its cost.

Each generation (``update``, in a worker thread of the loop):

1. credit every agent: ``improvement / cost``, normalised (``credit``);
2. encode the state: a fixed number of features per agent (``encoding``);
3. learn from the transition (state, action, credits, next state) with the chosen algorithm
   (``algorithms/``: actor_critic, double_dqn, sac, td3);
4. act: the algorithm proposes the next allocation (Double DQN by adjusting the current one);
   every agent keeps ``floor`` of the slots (``allocation``);
5. predict the next generation's improvement (``predictor``) for ``stop_reason``;
6. persist the shares, the networks and a line of the change log (``store``).

Options (``society.learner`` in the YAML, besides ``plugin: synergy``): ``algorithm``, ``lr``,
``floor`` (0.05), ``predictor`` (arima | ema), ``ema_alpha`` (0.4), ``arima_min_history`` (8),
``arima_window`` (8),
``min_generations`` (4), ``state_ema`` (0.3), ``state_prior`` (4; see ``encoding``) and each
algorithm's own (the fields of its config class).
Environment, read when the learner is made (it wins over the YAML):
``CONVERGENCE_SYNERGY_LEARNER`` (algorithm), ``CONVERGENCE_SYNERGY_LR`` (learning rate),
``CONVERGENCE_SYNERGY_WEIGHT_<AGENT>`` (an agent's starting weight; the name upper-cased, other
characters than letters and digits as ``_``; the starting shares are then renormalised).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convergence.society.learner import GenerationResult, LearnerContext
from convergence_synergy import store
from convergence_synergy.algorithms import ALGORITHMS, DEFAULT
from convergence_synergy.algorithms.base import Step, neutral_step, option_names
from convergence_synergy.allocation import as_mapping, effective_floor, free_part, shares_vector, to_shares
from convergence_synergy.credit import CreditNorm, credits_of, fill
from convergence_synergy.encoding import FEATURES, Encoder
from convergence_synergy.predictor import METHODS, ImprovementPredictor, Prediction

log = logging.getLogger("convergence_synergy")

ENV_ALGORITHM = "CONVERGENCE_SYNERGY_LEARNER"
ENV_LR = "CONVERGENCE_SYNERGY_LR"
ENV_WEIGHT = "CONVERGENCE_SYNERGY_WEIGHT_"

COMMON: dict[str, Any] = {
    "algorithm": DEFAULT,
    "lr": None,
    "floor": 0.05,
    "predictor": "arima",
    "ema_alpha": 0.4,
    "arima_min_history": 8,
    "arima_window": 8,
    "min_generations": 4,
    "state_ema": 0.3,
    "state_prior": 4.0,
}


def env_weight_name(agent: str) -> str:
    """``CONVERGENCE_SYNERGY_WEIGHT_`` + the agent's name upper-cased (non-alphanumerics as ``_``)."""
    return ENV_WEIGHT + re.sub(r"[^A-Z0-9]", "_", agent.upper())


def _coerce(key: str, value: Any, default: Any) -> Any:
    where = f"society.learner.{key}"
    if isinstance(default, bool):
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            return default if value else 0
        if isinstance(value, int) and value >= 0:
            return value
        raise ValueError(f"{where}: expected an integer >= 0, got {value!r}")
    if isinstance(default, float) or default is None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if key == "alpha" and value == "auto":
            return value
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if isinstance(default, tuple):
        if (isinstance(value, list | tuple) and value
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)):
            return tuple(float(x) for x in value)
        raise ValueError(f"{where}: expected a list of numbers, got {value!r}")
    return value


def parse_options(options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str, dict[str, Any]]:
    """(algorithm, where it was chosen, options for it); unknown keys and bad values are errors."""
    known = set(COMMON)
    for _, cfg_cls in ALGORITHMS.values():
        known |= option_names(cfg_cls)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"society.learner: unknown option(s) {', '.join(map(repr, unknown))} for the synergy "
                         f"learner; known: {', '.join(sorted(known))}")
    algorithm, source = str(options.get("algorithm", DEFAULT)), "options" if "algorithm" in options else "default"
    if environ.get(ENV_ALGORITHM, "").strip():
        algorithm, source = environ[ENV_ALGORITHM].strip().lower(), f"env {ENV_ALGORITHM}"
    if algorithm not in ALGORITHMS:
        raise ValueError(f"synergy learner: unknown algorithm {algorithm!r} (from {source}); "
                         f"choose one of {', '.join(ALGORITHMS)}")
    cfg_cls = ALGORITHMS[algorithm][1]
    defaults = {f.name: f.default for f in dataclasses.fields(cfg_cls)}
    out: dict[str, Any] = dict(COMMON)
    for key, value in options.items():
        if key == "algorithm":
            continue
        if key in COMMON:
            out[key] = _coerce(key, value, COMMON[key] if COMMON[key] is not None else 0.0)
        elif key in defaults:
            out[key] = _coerce(key, value, defaults[key])
    if environ.get(ENV_LR, "").strip():
        try:
            out["lr"] = float(environ[ENV_LR])
        except ValueError:
            raise ValueError(f"{ENV_LR}: expected a number, got {environ[ENV_LR]!r}") from None
    if out["lr"] is not None and not out["lr"] > 0:
        raise ValueError(f"synergy learner: lr must be > 0, got {out['lr']}")
    if out["predictor"] not in METHODS:
        raise ValueError(f"society.learner.predictor: expected one of {', '.join(METHODS)}, got {out['predictor']!r}")
    return algorithm, source, out


def algorithm_config(algorithm: str, opts: Mapping[str, Any]) -> Any:
    """The algorithm's config dataclass from parsed options (its own checks run here)."""
    cfg_cls = ALGORITHMS[algorithm][1]
    cfg_fields = option_names(cfg_cls)
    cfg_kwargs = {k: v for k, v in opts.items() if k in cfg_fields and k != "lr"}
    if opts["lr"] is not None:
        cfg_kwargs["lr"] = opts["lr"]
    return cfg_cls(**cfg_kwargs)


def check_options(options: Mapping[str, Any]) -> None:
    """``convergence validate`` and ``optimize`` call this before the run (see docs/plugins.md): every
    option the learner would refuse when the run builds it (unknown keys, bad values, the algorithm's own
    config checks, the predictor's settings) fails here, so ``validate`` accepts exactly what runs."""
    algorithm, _, opts = parse_options(options, os.environ)
    try:
        config = algorithm_config(algorithm, opts)
        ImprovementPredictor(opts["predictor"], float(opts["ema_alpha"]), int(opts["arima_min_history"]),
                             int(opts["arima_window"]))
        encoder = Encoder(2, ema=float(opts["state_ema"]), prior=float(opts["state_prior"]))
        # the algorithm's own checks (e.g. double_dqn's shifts, sac's alpha), on a two-agent society
        ALGORITHMS[algorithm][0](2, encoder.dim, effective_floor(2, float(opts["floor"])), config,
                                 torch.Generator().manual_seed(0))
    except (TypeError, ArithmeticError) as exc:
        raise ValueError(f"synergy learner: {exc}") from None


class SynergyLearner:
    name = "synergy"

    def __init__(self, context: LearnerContext, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.agents = [str(a) for a in context.agents]
        if not self.agents:
            raise ValueError("synergy learner: the society has no agents")
        n = len(self.agents)
        self.algorithm, self.algorithm_source, opts = parse_options(context.options, env)
        self.study = context.study
        self.min_improvement = float(context.min_improvement)
        self.min_generations = int(opts["min_generations"])
        self.floor = effective_floor(n, float(opts["floor"]))
        self.state_dir = Path(context.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []
        self._lock = threading.Lock()

        algo_cls = ALGORITHMS[self.algorithm][0]
        self.config = algorithm_config(self.algorithm, opts)
        self.reward_scale = float(getattr(self.config, "reward_scale", 1.0))
        self.kl_cost = float(getattr(self.config, "kl_cost", 0.0))
        self.generator = torch.Generator().manual_seed(int(context.seed))
        self.encoder = Encoder(n, ema=float(opts["state_ema"]), prior=float(opts["state_prior"]))
        self._new_algo = lambda: algo_cls(n, self.encoder.dim, self.floor, self.config, self.generator)
        self.algo = self._new_algo()
        self.predictor = ImprovementPredictor(opts["predictor"], float(opts["ema_alpha"]),
                                              int(opts["arima_min_history"]), int(opts["arima_window"]))

        stored = store.read_weights(self.state_dir)  # a broken file is an error naming it
        self.norms: dict[str, CreditNorm] = {}
        self.updates = 0
        roster = {a: max(0.0, float(context.shares.get(a, 0.0))) for a in self.agents}
        if stored is not None:
            learned = stored["shares"]
            start = {a: learned.get(a, roster[a]) for a in self.agents}
            self.initial_source = f"learned ({store.weights_path(self.state_dir)})"
            missing = [a for a in self.agents if a not in learned]
            if missing:
                self.notes.append(f"not in the learned weights, roster share used: {', '.join(missing)}")
            for unit, d in (stored.get("reward_norm") or {}).items():
                self.norms[str(unit)] = CreditNorm.from_dict(d)
            self.updates = int(stored.get("updates") or 0)
        else:
            start, self.initial_source = roster, "roster"
        overridden = {}
        for a in self.agents:
            key = env_weight_name(a)
            if env.get(key, "").strip():
                try:
                    value = float(env[key])
                except ValueError:
                    raise ValueError(f"{key}: expected a number >= 0, got {env[key]!r}") from None
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{key}: expected a number >= 0, got {env[key]!r}")
                overridden[a] = value
        before_env = None
        if overridden:
            before_env = as_mapping(self.agents, to_shares(free_part(shares_vector(self.agents, start), self.floor),
                                                           self.floor))
            start = {**start, **overridden}
            self.initial_source += " + env " + ", ".join(env_weight_name(a) for a in overridden)

        self.v = free_part(shares_vector(self.agents, start), self.floor)
        self.reference = to_shares(self.v, self.floor)
        self.initial = as_mapping(self.agents, self.reference)
        self.shares = dict(self.initial)
        if overridden:
            store.append_log(self.state_dir, {"event": "env", "generation": 0, "algorithm": self.algorithm,
                                              "study": self.study, "old": before_env, "new": self.initial,
                                              "reward": None, "overrides": overridden})
        self._load_networks()

        # Each run starts from the starting shares (learned, imported or the roster's): the policy is
        # anchored to them, and the off-policy learners' replay buffers start with the neutral prior
        # measured against them (transitions are not carried over from earlier runs: their rewards
        # were measured against another run's starting shares).
        self._state = self.encoder.encode(to_shares(self.v, self.floor))
        self.algo.anchor(self._state, self.v)
        self._v_before = self.v.copy()
        self._action: Any = self.algo.null_action(self.v)
        self.algo.prior(neutral_step(self._state, self.v, self._action, self._reencode, self.floor,
                                     self.reference, self.reward_scale, self.kl_cost))
        self.generations = 0
        self.prediction: Prediction | None = None
        self.last: dict[str, Any] = {}
        self.cpu_seconds: list[float] = []
        self.persist_error: str | None = None

    def _reencode(self, v: np.ndarray) -> torch.Tensor:
        return self.encoder.encode(to_shares(v, self.floor))

    # --- the Learner protocol ------------------------------------------------------------------

    def initial_shares(self) -> Mapping[str, float]:
        return dict(self.initial)

    def update(self, result: GenerationResult) -> Mapping[str, float]:
        with self._lock:
            t0 = time.process_time()
            floor = self.floor
            used = to_shares(self.v, floor)
            cr = credits_of(result, self.agents, used)
            norm = self.norms.setdefault(result.cost_unit, CreditNorm.empty())
            norm.update(self.agents, cr.raw, cr.mask)
            r_hat = np.where(cr.mask, norm.normalize(cr.raw), 0.0)
            credits = fill(r_hat, cr.mask, cr.slots)
            self.encoder.observe(r_hat, cr.mask, cr.hit_rate, cr.cost_fraction, result.progress)
            next_state = self.encoder.encode(used)
            step = Step(state=self._state, v=self._v_before, action=self._action, v_next=self.v.copy(),
                        credits=credits, mask=cr.mask, slots=cr.slots, next_state=next_state,
                        reencode=self._reencode, floor=floor,
                        reference=self.reference, reward_scale=self.reward_scale, kl_cost=self.kl_cost)
            losses = self.algo.learn(step) if cr.mask.any() else {}

            self._state, self._v_before = next_state, self.v.copy()
            v_next, action = self.algo.act(next_state, self.v)
            if np.all(np.isfinite(v_next)) and abs(float(v_next.sum()) - 1.0) < 1e-6:
                self.v, self._action = v_next, action
            else:
                self._action = self.algo.null_action(self.v)
                self.notes.append(f"generation {result.generation}: the {self.algorithm} action was not finite; "
                                  f"shares kept")
            old, self.shares = self.shares, as_mapping(self.agents, to_shares(self.v, floor))

            self.predictor.observe(result.improvement)
            self.prediction = self.predictor.predict()
            self.generations += 1
            self.updates += 1
            reward = float(np.dot(np.where(cr.mask, cr.slots, 0.0), r_hat))
            self.last = {"generation": result.generation, "reward": reward, "losses": losses,
                         "credits": {a: (float(x) if m else None) for a, x, m in zip(self.agents, cr.raw, cr.mask,
                                                                                      strict=True)},
                         "normalised_credits": as_mapping(self.agents, r_hat)}
            self._persist(result, old, reward)
            self.cpu_seconds.append(time.process_time() - t0)
            return dict(self.shares)

    def stop_reason(self) -> str | None:
        with self._lock:
            p = self.prediction
            if p is None or self.generations < self.min_generations or self.min_improvement <= 0:
                return None
            if p.value < self.min_improvement:
                return (f"synergy: predicted improvement of the next generation {p.value:.3g} < min_improvement "
                        f"{self.min_improvement:.3g} ({p.method} over {p.history} generations)")
            return None

    def summary(self) -> dict[str, Any]:
        reason = self.stop_reason()
        with self._lock:
            p = self.prediction
            return {
                "learner": self.name, "algorithm": self.algorithm, "algorithm_source": self.algorithm_source,
                "config": dataclasses.asdict(self.config), "floor": self.floor, "features": list(FEATURES),
                "generations": self.generations, "updates_total": self.updates,
                "initial_shares": dict(self.initial), "initial_source": self.initial_source,
                "shares": dict(self.shares), "last": dict(self.last),
                "prediction": None if p is None else dataclasses.asdict(p), "stop_reason": reason,
                "cpu_seconds_per_update": float(np.mean(self.cpu_seconds)) if self.cpu_seconds else None,
                "files": {"weights": str(store.weights_path(self.state_dir)),
                          "networks": str(store.networks_path(self.state_dir, self.algorithm)),
                          "log": str(store.log_path(self.state_dir))},
                "persist_error": self.persist_error, "notes": list(self.notes),
            }

    # --- persistence ---------------------------------------------------------------------------

    def _network_meta(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "agents": list(self.agents), "features": list(FEATURES),
                "hidden": int(getattr(self.config, "hidden", 0))}

    def _load_networks(self) -> bool:
        path = store.networks_path(self.state_dir, self.algorithm)
        if not path.exists():
            return False
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = {k: payload.get(k) for k in self._network_meta()}
            if meta != self._network_meta():
                self.notes.append(f"{path} was learned for {meta.get('agents')} (hidden {meta.get('hidden')}); "
                                  f"this society differs: networks start fresh")
                return False
            self.algo.load_state_dict(payload["model"])
            self.notes.append(f"networks loaded from {path}")
            return True
        except Exception as exc:  # noqa: BLE001 - unreadable networks must not stop a run: start fresh
            self.notes.append(f"{path} could not be loaded ({type(exc).__name__}: {exc}); networks start fresh")
            self.algo = self._new_algo()  # not half-loaded
            return False

    def _persist(self, result: GenerationResult, old: Mapping[str, float], reward: float) -> None:
        try:
            import io

            buf = io.BytesIO()
            torch.save({**self._network_meta(), "model": self.algo.state_dict()}, buf)
            store.atomic_write_bytes(store.networks_path(self.state_dir, self.algorithm), buf.getvalue())
            stored = store.read_weights(self.state_dir) if store.weights_path(self.state_dir).exists() else None
            networks = dict((stored or {}).get("networks") or {})
            networks[self.algorithm] = store.networks_path(self.state_dir, self.algorithm).name
            store.write_weights(self.state_dir, {
                "study": self.study, "algorithm": self.algorithm, "generation": result.generation,
                "updates": self.updates, "agents": list(self.agents), "floor": self.floor,
                "shares": dict(self.shares),
                "reward_norm": {unit: n.to_dict() for unit, n in self.norms.items()},
                "networks": networks})
            store.append_log(self.state_dir, {
                "event": "update", "generation": result.generation, "algorithm": self.algorithm,
                "study": self.study, "old": dict(old), "new": dict(self.shares), "reward": reward,
                "credits": self.last.get("credits"), "progress": result.progress,
                "improvement": result.improvement})
            self.persist_error = None
        except (OSError, store.SynergyFileError) as exc:
            self.persist_error = f"{type(exc).__name__}: {exc}"
            log.warning("synergy learner: could not save to %s: %s", self.state_dir, exc)


def make_learner(context: LearnerContext) -> SynergyLearner:
    """The ``learner.synergy`` entry point."""
    return SynergyLearner(context)


make_learner.check_options = check_options  # type: ignore[attr-defined]


def train(context: LearnerContext, results: Iterable[GenerationResult]) -> dict[str, Any]:
    """Learn offline from recorded generations (e.g. a finished run's, read back from the store), as if
    they had happened in a run: the weights, networks and change log in ``context.state_dir`` are
    updated exactly as by a live run. Returns the learner's summary."""
    learner = SynergyLearner(context)
    for result in results:
        learner.update(result)
    return learner.summary()
