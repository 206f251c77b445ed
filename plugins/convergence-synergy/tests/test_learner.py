"""The learner as the loop sees it: the plugin entry, options, persistence, the change log,
environment overrides, the CLI's functions and their error messages."""

from __future__ import annotations

import json
import random

import pytest
import torch
from rigged import AGENTS, context, generation

import convergence_synergy
from convergence.registry import Registry
from convergence.society.learner import Learner, LearnerContext
from convergence_synergy import (
    SynergyFileError,
    export,
    history,
    import_,
    make_learner,
    plot_history,
    reset,
    show,
    train,
)
from convergence_synergy.learner import SynergyLearner
from convergence_synergy.store import LOG, WEIGHTS


def feed(learner, n: int, seed: int = 0, start: int = 1) -> list[dict[str, float]]:
    rng = random.Random(seed)
    shares = dict(learner.initial_shares())
    out = []
    for g in range(start, start + n):
        shares = dict(learner.update(generation(g, 30, shares, rng, shuffle=False)))
        out.append(shares)
    return out


def test_entry_point_is_registered_and_loads():
    reg = Registry()
    entry = reg.find("learner", "synergy")
    assert entry is not None and entry.distribution == "convergence-synergy"
    assert reg.load("learner", "synergy") is make_learner


@pytest.mark.parametrize("algorithm", ["actor_critic", "double_dqn", "sac", "td3"])
def test_learner_protocol_and_shares(tmp_path, algorithm):
    learner = make_learner(context(tmp_path, 0, algorithm=algorithm))
    assert isinstance(learner, Learner)
    assert learner.initial_shares() == pytest.approx(dict.fromkeys(AGENTS, 1 / 3))
    for shares in feed(learner, 3):
        assert set(shares) == set(AGENTS)
        assert sum(shares.values()) == pytest.approx(1.0)
        assert min(shares.values()) >= 0.05 - 1e-9  # the floor
    summary = learner.summary()
    assert summary["algorithm"] == algorithm and summary["generations"] == 3
    assert summary["last"]["credits"].keys() == set(AGENTS)
    json.dumps(summary)  # the report and traces store it


def test_one_update_shifts_share_to_the_agent_whose_proposals_paid(tmp_path):
    """The default actor-critic, one generation through the plugin's update: only "good" improved the run
    (the others proposed as much and found nothing), and its share rises at the others' expense."""
    from convergence.society.learner import AgentResult, GenerationResult

    learner = make_learner(context(tmp_path, 0))
    agents = {a: AgentResult(share=1 / 3, proposed=7, improvement=0.7 if a == "good" else 0.0,
                             in_top=4 if a == "good" else 0, cost=70.0, best_score=0.9 if a == "good" else 0.2)
              for a in AGENTS}
    shares = learner.update(GenerationResult(generation=1, progress=0.05, best_score=0.9, improvement=0.1,
                                             cost_unit="calls", agents=agents))
    assert learner.summary()["last"]["credits"] == {"good": 0.01, "poor": 0.0, "random": 0.0}
    assert shares["good"] > 1 / 3 + 0.003  # 0.339 after one step
    assert shares["poor"] == pytest.approx(shares["random"]) and shares["poor"] < 1 / 3


def test_default_algorithm_is_actor_critic(tmp_path):
    assert make_learner(context(tmp_path, 0)).algorithm == "actor_critic"


def test_same_seed_repeats_the_run_and_another_seed_does_not(tmp_path):
    def shares(seed: int, d: str) -> list[dict[str, float]]:
        return feed(make_learner(context(tmp_path / d, seed, algorithm="sac")), 5)

    torch.manual_seed(123)  # the global RNG is not what the learner draws from
    a = shares(7, "a")
    torch.manual_seed(456)
    assert shares(7, "b") == a
    assert shares(8, "c") != a


def test_options_and_env_choose_algorithm_and_lr(tmp_path):
    ctx = context(tmp_path, 0, algorithm="td3", lr=0.01, policy_delay=3)
    learner = SynergyLearner(ctx, environ={})
    assert learner.algorithm == "td3" and learner.config.lr == 0.01 and learner.config.policy_delay == 3
    learner = SynergyLearner(ctx, environ={"CONVERGENCE_SYNERGY_LEARNER": "double_dqn",
                                           "CONVERGENCE_SYNERGY_LR": "0.002"})
    assert learner.algorithm == "double_dqn" and learner.config.lr == 0.002
    assert learner.summary()["algorithm_source"] == "env CONVERGENCE_SYNERGY_LEARNER"


@pytest.mark.parametrize(("options", "environ", "message"), [
    ({"algoritm": "sac"}, {}, "unknown option(s) 'algoritm'"),
    ({"algorithm": "ppo"}, {}, "unknown algorithm 'ppo' (from options); choose one of actor_critic, double_dqn"),
    ({}, {"CONVERGENCE_SYNERGY_LEARNER": "dqn"}, "unknown algorithm 'dqn' (from env CONVERGENCE_SYNERGY_LEARNER)"),
    ({"lr": "fast"}, {}, "society.learner.lr: expected a number, got 'fast'"),
    ({}, {"CONVERGENCE_SYNERGY_LR": "x"}, "CONVERGENCE_SYNERGY_LR: expected a number, got 'x'"),
    ({"predictor": "prophet"}, {}, "society.learner.predictor: expected one of arima, ema"),
    ({}, {"CONVERGENCE_SYNERGY_WEIGHT_GOOD": "-1"}, "CONVERGENCE_SYNERGY_WEIGHT_GOOD: expected a number >= 0"),
])
def test_bad_options_are_clear_errors(tmp_path, options, environ, message):
    with pytest.raises(ValueError) as err:
        SynergyLearner(context(tmp_path, 0, **options), environ=environ)
    assert message in str(err.value)


def test_weights_and_change_log_are_written_every_generation(tmp_path):
    learner = make_learner(context(tmp_path, 0, algorithm="double_dqn"))
    shares = feed(learner, 4)
    data = json.loads((tmp_path / WEIGHTS).read_text())
    assert data["shares"] == pytest.approx(shares[-1])
    assert data["algorithm"] == "double_dqn" and data["generation"] == 4 and data["updates"] == 4
    assert data["networks"] == {"double_dqn": "synergy_networks.double_dqn.pt"}
    assert (tmp_path / "synergy_networks.double_dqn.pt").exists()
    lines = (tmp_path / LOG).read_text().splitlines()
    assert len(lines) == 4
    entries = [json.loads(line) for line in lines]
    for g, (entry, new) in enumerate(zip(entries, shares, strict=True), start=1):
        assert {"time", "generation", "old", "new", "reward", "algorithm"} <= entry.keys()
        assert entry["generation"] == g and entry["event"] == "update" and entry["algorithm"] == "double_dqn"
        assert entry["new"] == pytest.approx(new)
        assert isinstance(entry["reward"], float)
    assert entries[0]["old"] == pytest.approx(dict.fromkeys(AGENTS, 1 / 3))
    assert entries[1]["old"] == pytest.approx(shares[0])


def test_a_later_run_starts_from_the_learned_weights_and_networks(tmp_path):
    first = make_learner(context(tmp_path, 0, algorithm="td3"))
    learned = feed(first, 6)[-1]
    second = make_learner(context(tmp_path, 1, algorithm="td3"))
    assert second.initial_shares() == pytest.approx(learned)
    assert any("networks loaded" in n for n in second.summary()["notes"])
    assert second.summary()["initial_source"].startswith("learned")
    # the anchored policy proposes the learned shares in the starting state, not the learned ones twice over
    assert second.algo.actor(second._state).detach().numpy() == pytest.approx(
        convergence_synergy.allocation.bounded_logits(second.v), abs=1e-4)


def test_agents_missing_from_the_learned_weights_get_the_roster_share(tmp_path):
    (tmp_path / WEIGHTS).write_text(json.dumps({"shares": {"good": 0.6, "poor": 0.4}}))
    ctx = LearnerContext(agents=["good", "poor", "new"], shares={"good": 0.2, "poor": 0.2, "new": 0.6},
                         options={}, seed=0, study="s", state_dir=tmp_path, min_improvement=0.0)
    learner = make_learner(ctx)
    # start {good: 0.6, poor: 0.4, new: 0.6} -> normalised /1.6, then floors (all above 0.05 already)
    assert learner.initial_shares() == pytest.approx({"good": 0.375, "poor": 0.25, "new": 0.375})
    assert any("new" in n for n in learner.summary()["notes"])


def test_networks_of_another_roster_start_fresh(tmp_path):
    feed(make_learner(context(tmp_path, 0)), 2)
    ctx = LearnerContext(agents=["good", "poor"], shares={"good": 0.5, "poor": 0.5}, options={}, seed=0,
                         study="s", state_dir=tmp_path, min_improvement=0.0)
    learner = make_learner(ctx)
    assert any("networks start fresh" in n for n in learner.summary()["notes"])


def test_env_overrides_the_starting_weight_then_renormalises(tmp_path):
    learner = SynergyLearner(context(tmp_path, 0), environ={"CONVERGENCE_SYNERGY_WEIGHT_GOOD": "2.0"})
    # {good: 2, poor: 1/3, random: 1/3} / (8/3) = {0.75, 0.125, 0.125}
    assert learner.initial_shares() == pytest.approx({"good": 0.75, "poor": 0.125, "random": 0.125})
    entry = history(tmp_path)[-1]
    assert entry["event"] == "env" and entry["overrides"] == {"good": 2.0}
    assert entry["old"] == pytest.approx(dict.fromkeys(AGENTS, 1 / 3))
    assert entry["new"] == pytest.approx(learner.initial_shares())


def test_env_override_applies_on_top_of_learned_weights(tmp_path):
    (tmp_path / WEIGHTS).write_text(json.dumps({"shares": {"good": 0.5, "poor": 0.25, "random": 0.25}}))
    learner = SynergyLearner(context(tmp_path, 0), environ={"CONVERGENCE_SYNERGY_WEIGHT_POOR": "0"})
    # {0.5, 0, 0.25} / 0.75 -> {2/3, 0, 1/3}; poor is raised to the 5% floor, the free part is what
    # lies above the floor, normalised: {2/3 - 0.05, 0, 1/3 - 0.05} / 0.9
    free = {"good": (2 / 3 - 0.05) / 0.9, "poor": 0.0, "random": (1 / 3 - 0.05) / 0.9}
    assert learner.initial_shares() == pytest.approx({a: 0.05 + 0.85 * f for a, f in free.items()})


def test_env_name_of_agents_with_other_characters():
    from convergence_synergy.learner import env_weight_name

    assert env_weight_name("my-agent.v2") == "CONVERGENCE_SYNERGY_WEIGHT_MY_AGENT_V2"


# --- the CLI's functions ---------------------------------------------------------------------------

def test_show_export_import_reset_history_plot(tmp_path):
    state = tmp_path / "state"
    assert show(state)["exists"] is False
    feed(make_learner(context(state, 0)), 3)
    info = show(state)
    assert info["exists"] and info["algorithm"] == "actor_critic" and info["generation"] == 3
    assert info["changes"] == 3 and "actor_critic" in info["networks"]

    out = export(state, tmp_path / "w.json")
    doc = json.loads(out.read_text())
    assert doc["shares"] == pytest.approx(info["shares"])

    (tmp_path / "edit.json").write_text(json.dumps({"shares": {"good": 8, "poor": 1, "random": 1}}))
    assert import_(state, tmp_path / "edit.json") == pytest.approx({"good": 0.8, "poor": 0.1, "random": 0.1})
    assert show(state)["shares"] == pytest.approx({"good": 0.8, "poor": 0.1, "random": 0.1})
    assert history(state)[-1]["event"] == "import"
    assert make_learner(context(state, 0)).initial_shares() == pytest.approx({"good": 0.8, "poor": 0.1,
                                                                               "random": 0.1})

    png = plot_history(state, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    removed = reset(state)
    assert str(state / WEIGHTS) in removed and any(r.endswith(".pt") for r in removed)
    assert show(state)["exists"] is False and history(state)[-1]["event"] == "reset"
    assert make_learner(context(state, 0)).initial_shares() == pytest.approx(dict.fromkeys(AGENTS, 1 / 3))


def test_import_accepts_a_bare_mapping(tmp_path):
    (tmp_path / "w.json").write_text('{"good": 3, "poor": 1}')
    assert import_(tmp_path / "s", tmp_path / "w.json") == {"good": 0.75, "poor": 0.25}


@pytest.mark.parametrize(("text", "message"), [
    ('{"shares": {"good": 1,}}', "not valid JSON: Expecting property name enclosed in double quotes (line 1"),
    ('[1, 2]', "expected a JSON object with 'shares' (agent -> weight), got list"),
    ('{"shares": {"good": "lots", "poor": 1}}', "field 'shares.good': expected a number >= 0, got 'lots'"),
    ('{"shares": {"good": -0.5, "poor": 1}}', "field 'shares.good': expected a number >= 0, got -0.5"),
    ('{"shares": {"good": 0, "poor": 0}}', "field 'shares': the weights sum to 0"),
    ('{"shares": {}}', "field 'shares': no agents"),
    ('{"shares": [0.5, 0.5]}', "field 'shares': expected an object mapping agent name to weight, got list"),
    ('{"weights": {"good": 1}}', "field 'shares' is missing"),
    ('{"shares": {"good": 1}, "generation": "three"}', "field 'generation': expected int, got 'three'"),
])
def test_import_errors_name_the_file_and_the_field(tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(SynergyFileError) as err:
        import_(tmp_path / "s", bad)
    assert str(err.value).startswith(f"{bad}: ")
    assert message in str(err.value)
    assert not (tmp_path / "s" / WEIGHTS).exists()


def test_import_of_a_missing_file(tmp_path):
    with pytest.raises(SynergyFileError, match=r"nope\.json: no such file"):
        import_(tmp_path, tmp_path / "nope.json")


def test_a_broken_weights_file_stops_the_learner_with_its_name(tmp_path):
    (tmp_path / WEIGHTS).write_text('{"shares": {"good": null}}')
    with pytest.raises(SynergyFileError, match=r"synergy_weights\.json: field 'shares\.good'"):
        make_learner(context(tmp_path, 0))
    reset(tmp_path)  # what the message's reader does
    make_learner(context(tmp_path, 0))


def test_history_skips_a_line_cut_short(tmp_path):
    feed(make_learner(context(tmp_path, 0)), 2)
    with open(tmp_path / LOG, "a") as f:
        f.write('{"time": "2026-')
    assert len(history(tmp_path)) == 2


def test_unreadable_networks_start_fresh(tmp_path):
    feed(make_learner(context(tmp_path, 0)), 2)
    (tmp_path / "synergy_networks.actor_critic.pt").write_bytes(b"not a torch file")
    learner = make_learner(context(tmp_path, 0))
    assert any("could not be loaded" in n for n in learner.summary()["notes"])
    feed(learner, 1)


def test_train_offline_from_recorded_generations(tmp_path):
    rng = random.Random(5)
    even = dict.fromkeys(AGENTS, 1 / 3)
    recorded = [generation(g, 20, even, rng, shuffle=False) for g in range(1, 21)]  # a run on even shares
    summary = train(context(tmp_path, 0), recorded)
    assert summary["generations"] == 20
    assert summary["shares"]["good"] > 0.5
    assert show(tmp_path)["shares"] == pytest.approx(summary["shares"])
    assert len(history(tmp_path)) == 20


def test_unknown_agents_are_ignored_and_absent_ones_not_credited(tmp_path):
    from convergence.society.learner import AgentResult, GenerationResult

    learner = make_learner(context(tmp_path, 0))
    agents = {"good": AgentResult(share=0.5, proposed=5, improvement=10.0, in_top=3, cost=50.0, best_score=0.9),
              "poor": AgentResult(share=0.5, proposed=5, improvement=0.0, in_top=0, cost=50.0, best_score=0.1),
              "stranger": AgentResult(share=0.1, proposed=9, improvement=99.0, in_top=9, cost=1.0, best_score=1.0)}
    shares = learner.update(GenerationResult(generation=1, progress=0.1, best_score=0.9, improvement=0.2,
                                             cost_unit="calls", agents=agents))
    assert set(shares) == set(AGENTS) and sum(shares.values()) == pytest.approx(1.0)
    credits = learner.summary()["last"]["credits"]
    assert credits == {"good": 0.2, "poor": 0.0, "random": None}  # random proposed nothing: no credit, not 0


def test_free_proposals_are_credited_per_proposal(tmp_path):
    from convergence.society.learner import AgentResult, GenerationResult

    learner = make_learner(context(tmp_path, 0))
    agents = {a: AgentResult(share=1 / 3, proposed=4, improvement=0.1 if a == "good" else 0.0, in_top=1, cost=0.0,
                             best_score=0.5) for a in AGENTS}
    learner.update(GenerationResult(generation=1, progress=0.1, best_score=0.5, improvement=0.1, cost_unit="usd",
                                    agents=agents))
    assert learner.summary()["last"]["credits"] == {"good": 0.025, "poor": 0.0, "random": 0.0}
