"""The PPO pieces against hand-computed values: GAE, the clipped objective, the KL early stop,
gradient clipping; and the reward, the options and the reflection buffer's batches."""

from __future__ import annotations

import re

import pytest
import torch

from convergence.society.learner import AgentResult, GenerationResult, LearnerMemory
from convergence.storage.store import ExperienceRow
from convergence_ppo import (
    Policy,
    PPOConfig,
    ReflectionBuffer,
    RewardConfig,
    RewardExtractor,
    clipped_surrogate,
    compute_gae,
    ppo_update,
)
from convergence_ppo.learner import parse_options


def test_gae_matches_the_hand_computed_recursion() -> None:
    rewards, values = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 0.4, 0.3])
    # the run ends with the last decision: next_value is ignored
    adv, ret = compute_gae(rewards, values, torch.tensor([0.0, 0.0, 1.0]), 9.0, gamma=0.9, gae_lambda=0.8)
    # delta2 = 2 - .3 = 1.7; delta1 = 0 + .9*.3 - .4 = -.13; A1 = -.13 + .72*1.7; delta0 = 1 + .9*.4 - .5 = .86
    a1 = -0.13 + 0.72 * 1.7
    assert adv.tolist() == pytest.approx([0.86 + 0.72 * a1, a1, 1.7], abs=1e-6)
    assert ret.tolist() == pytest.approx([0.86 + 0.72 * a1 + 0.5, a1 + 0.4, 2.0], abs=1e-6)
    # not ended: the last decision is bootstrapped from next_value
    adv, _ = compute_gae(rewards, values, torch.zeros(3), 1.0, gamma=0.9, gae_lambda=0.8)
    assert adv[2].item() == pytest.approx(2 + 0.9 * 1.0 - 0.3)
    # a run that ends at decision 0 does not credit it with decision 1's advantage
    adv, _ = compute_gae(rewards, values, torch.tensor([1.0, 0.0, 0.0]), 0.0, gamma=0.9, gae_lambda=0.8)
    assert adv[0].item() == pytest.approx(1 - 0.5)


def test_the_clipped_objective_takes_the_pessimistic_side() -> None:
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.5])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # per element: max(-A r, -A clip(r, .8, 1.2)) = -0.5, 1, -1.2 (gain capped), 1.5 (loss not capped)
    assert clipped_surrogate(ratio, adv, 0.2).item() == pytest.approx((-0.5 + 1 - 1.2 + 1.5) / 4)


def _rollout(n: int = 16, reward: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 5, generator=g)
    return {"obs": obs, "actions": torch.randint(0, 3, (n, 2), generator=g),
            "old_logp": torch.full((n,), -2.2), "old_values": torch.zeros(n),
            "rewards": torch.full((n,), reward) * torch.randn(n, generator=g).sign(), "dones": torch.zeros(n)}


def _update(cfg: PPOConfig, **kw: object) -> dict[str, float]:
    torch.manual_seed(0)
    policy = Policy(5, [3, 3], cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    return ppo_update(policy, opt, cfg, next_value=0.0, generator=torch.Generator().manual_seed(1),
                      **{**_rollout(), **kw})  # type: ignore[arg-type]


def _one_update(clip_epsilon: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One ppo_update of a tiny, untrained policy (one head of three choices, uniform) on a synthetic batch:
    24 one-decision episodes, each choice taken 8 times, and only choice 1 rewarded (1 vs 0). The mean
    probabilities of the three choices before and after, and the update's metrics."""
    torch.manual_seed(0)
    cfg = PPOConfig(learning_rate=1e-2, epochs=4, minibatch_size=8, target_kl=None, clip_epsilon=clip_epsilon, hidden=8)
    policy = Policy(4, [3], cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    obs = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
    actions = (torch.arange(24) % 3).unsqueeze(-1)
    with torch.no_grad():
        _, old_logp, _, old_values = policy.act(obs, actions)
        before = policy.heads(obs)[0].probs.mean(0)
    metrics = ppo_update(policy, opt, cfg, obs=obs, actions=actions, old_logp=old_logp, old_values=old_values,
                         rewards=(actions[:, 0] == 1).float(), dones=torch.ones(24), next_value=0.0,
                         generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        after = policy.heads(obs)[0].probs.mean(0)
    return before, after, metrics


def test_one_update_moves_the_policy_toward_the_advantaged_choice() -> None:
    before, after, m = _one_update(0.2)
    assert before.tolist() == pytest.approx([1 / 3] * 3, abs=0.01)  # the untrained head is uniform
    assert after[1] > before[1] + 0.05  # the rewarded choice gained (0.33 -> 0.41 here) ...
    assert after[0] < before[0] and after[2] < before[2]  # ... from the two that earned nothing
    assert m["samples"] == 24 and m["epochs"] == 4 and m["policy_loss"] < 0 and m["mean_reward"] == pytest.approx(1 / 3)


def test_a_tighter_clip_range_takes_a_smaller_step() -> None:
    """The clipped objective stops pushing a probability ratio once it left [1 - eps, 1 + eps]: the same
    update moves the policy less with eps 0.05 than with 0.3, and clips more of the samples."""
    _, tight, m_tight = _one_update(0.05)
    _, loose, m_loose = _one_update(0.3)
    assert 1 / 3 < tight[1] < loose[1]
    assert m_tight["clip_fraction"] > m_loose["clip_fraction"]


def test_the_kl_early_stop_ends_the_epochs_once_the_policy_moved_too_far() -> None:
    free = _update(PPOConfig(learning_rate=0.5, epochs=10, minibatch_size=4, target_kl=None))
    stopped = _update(PPOConfig(learning_rate=0.5, epochs=10, minibatch_size=4, target_kl=1e-4))
    assert free["epochs"] == 10 and free["kl_stop"] == 0.0
    assert stopped["epochs"] < 10 and stopped["kl_stop"] == 1.0


def test_gradient_clipping_bounds_the_norm_of_each_step() -> None:
    m = _update(PPOConfig(max_grad_norm=0.01, epochs=1), rewards=torch.full((16,), 100.0))
    assert m["grad_norm"] > 0.01  # the raw gradient was larger ...
    assert m["grad_norm_clipped"] <= 0.01 * 1.001  # ... and the step used at most max_grad_norm


def _result(**kw: object) -> GenerationResult:
    base: dict[str, object] = dict(generation=3, progress=0.5, best_score=0.8, improvement=0.01, cost_unit="calls",
                                   agents={"a": AgentResult(0.5, 4, 0.01, 1, 4.0, 0.8),
                                           "b": AgentResult(0.5, 4, 0.0, 0, 4.0, 0.2)}, survivors=2)
    return GenerationResult(**{**base, **kw})  # type: ignore[arg-type]


def test_the_reward_adds_its_weighted_terms_and_stays_in_minus_one_to_one() -> None:
    ex = RewardExtractor(RewardConfig(gain_scale=0.02), expected_cost=16.0)
    parts = ex.parts(_result(error_rate=0.25, timeout_rate=0.125))
    assert parts == pytest.approx({"quality": 0.6 * 0.5, "survival": 0.3 * 2 / 8, "efficiency": 0.1 * 0.5,
                                   "errors": -0.5 * 0.25, "timeouts": -0.3 * 0.125})
    assert ex.reward(_result(improvement=5.0, survivors=8)) == pytest.approx(0.6 + 0.3 + 0.05)
    heavy = RewardExtractor(RewardConfig(quality_weight=1, survival_weight=1, error_penalty=1, timeout_penalty=1))
    assert heavy.reward(_result(improvement=5.0, survivors=8)) == 1.0
    assert heavy.reward(_result(improvement=0.0, survivors=0, error_rate=1.0, timeout_rate=1.0)) == -1.0
    timed = RewardExtractor(RewardConfig(time_budget_seconds=10.0)).parts(_result(seconds=15.0))
    assert timed["efficiency"] == pytest.approx(0.1 * -0.5)


@pytest.mark.parametrize(("options", "names"), [
    ({"learnin_rate": 0.1}, "learnin_rate: Extra inputs are not permitted"),
    ({"reward": {"quality": 1}}, "reward.quality: Extra inputs"),
    ({"reward": 5}, "reward: Input should be a valid dictionary"),
    ({"rollout": 2.9}, "rollout: Input should be a valid integer"),
    ({"epochs": True}, "epochs: Input should be a valid integer"),
    ({"gamma": 7}, "gamma: Input should be less than or equal to 1"),
    ({"clip_epsilon": -1}, "clip_epsilon: Input should be greater than 0"),
    ({"actions": []}, "actions: List should have at least 1 item"),
    ({"boost": 1.5}, "boost: Input should be less than 1"),
])
def test_bad_options_are_refused_naming_the_option(options: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        parse_options(options)


def test_options_set_the_trainer_the_reward_and_the_decisions() -> None:
    cfg, reward, actions, boost = parse_options({"learning_rate": "0.01", "target_kl": None, "rollout": 4,
                                                 "reward": {"error_penalty": 1}, "actions": ["boost"],
                                                 "boost": 0.25})
    assert (cfg.learning_rate, cfg.target_kl, cfg.rollout, reward.error_penalty, actions, boost) == \
        (0.01, None, 4, 1.0, ["boost"], 0.25)


def test_a_batch_ends_an_episode_where_one_run_gives_way_to_the_next() -> None:
    def row(run: int, gen: int, done: bool) -> ExperienceRow:
        t = {"obs": [0.0], "action": [0], "logp": -1.0, "value": 0.0, "done": done, "decided_at": gen - 1}
        return ExperienceRow(gen, run, gen, 0.5, {"transition": t, "chosen": {}, "update": 0}, 0.0)

    buf = ReflectionBuffer(LearnerMemory(None, [row(1, 1, False), row(1, 2, False), row(2, 1, False),
                                                row(2, 2, True)]), run_id=3)
    assert buf.get_ppo_batch(update=0)["dones"] == [False, True, False, True]
    assert buf.get_ppo_batch(batch_size=2, update=0)["dones"] == [False, True]
    # an earlier run's rows that end the batch (they wait for a smaller rollout of the next run) end there
    # too: the update never bootstraps them from the new run's first observation
    left = ReflectionBuffer(LearnerMemory(None, [row(1, 1, False), row(1, 2, False)]), run_id=2)
    assert left.get_ppo_batch(update=0)["dones"] == [False, True]
    same = ReflectionBuffer(LearnerMemory(None, [row(2, 1, False), row(2, 2, False)]), run_id=2)
    assert same.get_ppo_batch(update=0)["dones"] == [False, False]  # the run goes on: bootstrapped


def test_the_observation_norm_is_the_core_one_and_its_saved_states_load() -> None:
    import numpy as np

    from convergence.core import rl
    from convergence_ppo import RunningNorm

    assert RunningNorm is rl.RunningNorm and compute_gae.__module__ == "convergence_ppo.ppo"
    norm = RunningNorm(3)
    assert norm.count == rl.OBS_PRIOR and norm.var.tolist() == pytest.approx([1.0] * 3)  # CleanRL's prior
    for x in ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 2.0, 8.0]):
        norm.update(np.asarray(x))
    assert norm.mean.tolist() == pytest.approx([2.0, 2.0, 4.0], rel=1e-3)
    assert norm.var.tolist() == pytest.approx([2 / 3, 0.0, 26 / 3], abs=1e-3)  # population variance
    assert np.abs(norm(np.asarray([100.0, 2.0, -100.0]))).max() == 5.0  # clipped
    state = norm.to_dict()
    assert {"mean", "var", "count"} <= set(state)  # the names checkpoints and exported policies have
    again = RunningNorm(3)
    again.load(state)
    assert again == norm  # exactly: a resumed run scales as an uninterrupted one
    old = RunningNorm(3)  # a checkpoint written before m2 was saved: mean, var, count
    old.load({k: state[k] for k in ("mean", "var", "count")})
    assert old.var.tolist() == pytest.approx(norm.var.tolist(), rel=1e-12)
