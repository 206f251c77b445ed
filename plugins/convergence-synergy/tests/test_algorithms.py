"""Each algorithm's update math on small cases that can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from convergence_synergy.algorithms import actor_critic, double_dqn, sac, td3
from convergence_synergy.algorithms.actor_critic import ActorCritic, ActorCriticConfig
from convergence_synergy.algorithms.base import Step
from convergence_synergy.algorithms.double_dqn import DoubleDQN, DoubleDQNConfig
from convergence_synergy.algorithms.sac import SAC, SACConfig
from convergence_synergy.algorithms.td3 import TD3, TD3Config
from convergence_synergy.allocation import BOUND, bounded_logits, free_part, kl, reward, shift, softmax, to_shares


class Const(nn.Module):
    """A network whose output is the same row for every input."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.tensor(row))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row.expand(x.shape[0], -1) if x.dim() == 2 else self.row


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def step_for(n: int, state_dim: int, *, credits: list[float], v: np.ndarray | None = None, action=None,
             floor: float = 0.05, reward_scale: float = 1.0, kl_cost: float = 0.0) -> Step:
    v = np.full(n, 1 / n) if v is None else v
    s = torch.zeros(state_dim)
    return Step(state=s, v=v, action=action, v_next=v.copy(), credits=np.array(credits, dtype=float),
                mask=np.ones(n, dtype=bool), slots=np.full(n, 1 / n), next_state=torch.ones(state_dim),
                reencode=lambda _v: torch.ones(state_dim), floor=floor, reference=to_shares(np.full(n, 1 / n), floor),
                reward_scale=reward_scale, kl_cost=kl_cost)


# --- allocation ------------------------------------------------------------------------------------

def test_floor_and_free_part_round_trip():
    w = to_shares(np.array([1.0, 0.0, 0.0]), 0.05)
    assert w == pytest.approx([0.9, 0.05, 0.05]) and w.sum() == pytest.approx(1.0)
    assert free_part(w, 0.05) == pytest.approx([1.0, 0.0, 0.0])
    assert free_part(np.array([0.02, 0.49, 0.49]), 0.05) == pytest.approx([0.0, 0.5, 0.5])  # raised to the floor


def test_shift_moves_a_fraction_of_the_free_slots():
    v = np.array([0.5, 0.3, 0.2])
    assert shift(v, 2, 0.1) == pytest.approx([0.45, 0.27, 0.28])


def test_reward_is_credit_weighted_shares_less_kl_to_the_start():
    v = np.array([0.7, 0.3])
    w = to_shares(v, 0.05)
    assert w == pytest.approx([0.68, 0.32])
    ref = np.array([0.5, 0.5])
    kl_w = 0.68 * math.log(0.68 / 0.5) + 0.32 * math.log(0.32 / 0.5)
    assert kl(w, ref) == pytest.approx(kl_w)
    assert reward(v, np.array([1.0, -1.0]), 0.05, 2.0, 0.5, ref) == pytest.approx(2.0 * ((0.68 - 0.32) - 0.5 * kl_w))
    assert reward(np.array([0.5, 0.5]), np.array([1.0, -1.0]), 0.05, 2.0, 0.5, ref) == pytest.approx(0.0)


def test_bounded_logits_reproduce_the_shares():
    v = np.array([0.6, 0.3, 0.1])
    logits = bounded_logits(v)
    assert np.all(np.abs(logits) <= BOUND)
    assert softmax(logits) == pytest.approx(v)


def test_credits_are_normalised_by_the_noise_within_agents():
    from convergence_synergy.credit import CreditNorm

    norm = CreditNorm.empty()
    names = ["a", "b"]
    for a, b in [(1.0, 0.0), (1.2, 0.2), (0.8, -0.2), (1.0, 0.0)]:  # a is 1 better, +-0.2 of noise
        norm.update(names, np.array([a, b]), np.ones(2, dtype=bool))
    within = math.sqrt((0.08 + 0.08) / 6)  # each agent: squared deviations 0 + 0.04 + 0.04 + 0, 3 dof
    assert norm.noise == pytest.approx(within)
    assert norm.pooled.std > 3 * within  # the overall spread counts the difference between a and b
    # centred on the overall mean (0.5), in units of that noise, clipped to +-3
    assert norm.normalize(np.array([0.6, 0.4])) == pytest.approx([0.1 / within, -0.1 / within], rel=1e-6)
    assert norm.normalize(np.array([1.0, 0.0])) == pytest.approx([3.0, -3.0])  # 0.5 / within = 3.06
    assert CreditNorm.from_dict(norm.to_dict()) == norm
    assert CreditNorm.from_dict({"count": 4, "mean": 0.5, "m2": 1.0}).pooled.count == 4  # overall statistics only


# --- actor-critic ----------------------------------------------------------------------------------

def test_actor_critic_advantage_is_the_td_error():
    r = torch.tensor([1.0, 0.0, -1.0])
    assert actor_critic.advantages(r, torch.tensor(0.5), torch.tensor(2.0), 0.9).tolist() == pytest.approx(
        [1.0 + 0.9 * 2.0 - 0.5, 0.9 * 2.0 - 0.5, -1.0 + 0.9 * 2.0 - 0.5])


def test_actor_critic_learn_uses_v_of_s_and_s_prime():
    ac = ActorCritic(3, 4, 0.05, ActorCriticConfig(gamma=0.9, kl_cost=0.0), gen())
    critic = nn.Linear(4, 1)  # V(x) = sum(x): V(s = 0) = 0, V(s' = 1) = 4
    with torch.no_grad():
        critic.weight.fill_(1.0)
        critic.bias.zero_()
    ac.critic = critic
    step = step_for(3, 4, credits=[1.0, 0.0, -0.5])
    out = ac.learn(step)
    # A_i = r_i + 0.9 * 4 - 0; rho = 1/3 each -> mean advantage = mean(r) + 3.6
    assert out["mean_advantage"] == pytest.approx(np.mean([1.0, 0.0, -0.5]) + 3.6, abs=1e-5)
    assert out["value"] == pytest.approx(0.0)
    assert out["critic_loss"] == pytest.approx((np.mean([1.0, 0.0, -0.5]) + 3.6 - 0.0) ** 2, abs=1e-4)


def test_actor_critic_moves_shares_towards_positive_advantage():
    ac = ActorCritic(3, 4, 0.05, ActorCriticConfig(lr=0.05, kl_cost=0.0), gen())
    v = np.full(3, 1 / 3)
    ac.anchor(torch.zeros(4), v)
    before = ac.policy(torch.zeros(4)).detach().numpy()
    assert before == pytest.approx(to_shares(v, 0.05), abs=1e-5)  # anchored to the starting shares
    for _ in range(5):
        ac.learn(step_for(3, 4, credits=[1.0, -1.0, -1.0]))
    after = ac.policy(torch.zeros(4)).detach().numpy()
    assert after[0] > before[0] + 0.05 and after[1] < before[1] and after[2] < before[2]


# --- Double DQN ------------------------------------------------------------------------------------

def test_double_dqn_target_uses_the_target_network_to_value_the_online_argmax():
    online = Const([1.0, 5.0, 2.0])  # argmax_a Q_online(s', a) = 1
    target = Const([10.0, 20.0, 30.0])  # Q_target(s', 1) = 20 (its own max would be 30)
    r = torch.tensor([0.5, -1.0])
    y = double_dqn.td_target(r, torch.zeros(2, 4), online, target, gamma=0.9)
    assert y.tolist() == pytest.approx([0.5 + 0.9 * 20.0, -1.0 + 0.9 * 20.0])


def test_double_dqn_learn_bootstraps_from_the_target_network(monkeypatch):
    algo = DoubleDQN(2, 4, 0.05, DoubleDQNConfig(gradient_steps=3, batch_size=4, target_sync_every=1000,
                                                 structured=False), gen())
    seen = []
    real = double_dqn.td_target

    def spy(rewards, next_states, q_online, q_target, gamma):
        seen.append((q_online, q_target, gamma))
        return real(rewards, next_states, q_online, q_target, gamma)

    monkeypatch.setattr(double_dqn, "td_target", spy)
    algo.learn(step_for(2, 4, credits=[1.0, -1.0], action=0))
    assert len(seen) == 3
    assert all(o is algo.q_online and t is algo.q_target and t is not o for o, t, _ in seen)


def test_double_dqn_target_network_lags_and_is_synced_every_n_steps():
    algo = DoubleDQN(2, 4, 0.05, DoubleDQNConfig(gradient_steps=1, batch_size=4, target_sync_every=3, lr=0.01,
                                                 structured=False), gen())

    def same() -> bool:
        return all(torch.equal(a, b) for a, b in zip(algo.q_online.state_dict().values(),
                                                      algo.q_target.state_dict().values(), strict=True))

    for i in range(1, 7):
        algo.learn(step_for(2, 4, credits=[1.0, -1.0], action=1))
        assert same() == (i % 3 == 0), f"after gradient step {i}"
    assert algo.syncs == 2


def test_double_dqn_counterfactual_rewards_are_each_actions_gain():
    algo = DoubleDQN(2, 4, 0.05, DoubleDQNConfig(gradient_steps=0, shifts=(0.1,), structured=False), gen())
    step = step_for(2, 4, credits=[1.0, -1.0], action=0, reward_scale=10.0)  # no KL cost
    algo.learn(step)
    assert algo.buffer.size == 3  # keep, shift to 0, shift to 1
    rewards = algo.buffer.rewards[:3].tolist()
    assert rewards[0] == pytest.approx(0.0)  # keep: no change, no gain
    # shift 0.1 of the free part to agent 0: v = [0.55, 0.45] -> shares 0.05 + 0.9 * v = [0.545, 0.455]
    assert rewards[1] == pytest.approx(10 * ((0.545 - 0.455) - (0.5 - 0.5)), rel=1e-5)
    assert rewards[2] == pytest.approx(-rewards[1], rel=1e-5)
    assert algo.buffer.actions[:3].tolist() == [0, 1, 2]


def test_double_dqn_structured_action_values_have_the_gains_form():
    from convergence_synergy.encoding import FEATURES

    q = double_dqn.ActionValues(2 * len(FEATURES), 2, (0.1,), 8, 0.05, True, gen())
    q.set_reference(np.array([0.5, 0.5]))
    last = [m for m in q.net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0, math.log(math.e - 1), 0.25]))  # phi, softplus^-1(1), psi
    state = torch.zeros(2, len(FEATURES))
    state[:, 0] = torch.tensor([0.5, 0.5]) * 2  # the share feature: shares times n
    values = q(state.reshape(1, -1))[0].tolist()
    # keep: psi; shift 0.1 to agent 0: shares [0.545, 0.455]; to agent 1: [0.455, 0.545]
    kl_shift = 0.545 * math.log(0.545 / 0.5) + 0.455 * math.log(0.455 / 0.5)
    assert values == pytest.approx([0.25, 0.25 + 0.09 - kl_shift, 0.25 - 0.09 - kl_shift], abs=1e-5)


# --- SAC -------------------------------------------------------------------------------------------

def test_sac_actor_loss_contains_the_entropy_term():
    log_pi = torch.tensor([-1.0, -2.0])
    q1, q2 = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])
    # alpha * log pi - min(Q1, Q2) = [0.5 * -1 - 1, 0.5 * -2 - 0] -> mean -1.25
    assert float(sac.actor_loss(log_pi, q1, q2, alpha=0.5)) == pytest.approx(-1.25)
    assert float(sac.actor_loss(log_pi, q1, q2, alpha=0.0)) == pytest.approx(-0.5)


def test_sac_soft_target():
    y = sac.soft_target(torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([3.0]), torch.tensor([-2.0]),
                        alpha=0.1, gamma=0.5)
    assert float(y) == pytest.approx(1.0 + 0.5 * (3.0 - 0.1 * -2.0))


def test_sac_log_prob_of_a_squashed_gaussian():
    mean, log_std, eps = torch.tensor([0.2]), torch.tensor([math.log(0.5)]), torch.tensor([0.4])
    a, log_prob = sac.squash(mean, log_std, eps, BOUND)
    u = 0.2 + 0.5 * 0.4
    expected = torch.distributions.Normal(0.2, 0.5).log_prob(torch.tensor(u)) - math.log(
        BOUND * (1 - math.tanh(u) ** 2) + 1e-6)
    assert float(a) == pytest.approx(BOUND * math.tanh(u))
    assert float(log_prob) == pytest.approx(float(expected), abs=1e-5)


def test_sac_learn_passes_alpha_and_log_pi_to_the_actor_loss(monkeypatch):
    algo = SAC(2, 4, 0.05, SACConfig(alpha=0.3, gradient_steps=2, batch_size=4, counterfactual=2), gen())
    seen = []
    real = sac.actor_loss

    def spy(log_pi, q1, q2, alpha):
        seen.append((alpha, log_pi.requires_grad))
        return real(log_pi, q1, q2, alpha)

    monkeypatch.setattr(sac, "actor_loss", spy)
    algo.learn(step_for(2, 4, credits=[1.0, -1.0], action=np.zeros(2)))
    assert seen == [(0.3, True), (0.3, True)]


def test_sac_alpha_auto_tunes():
    algo = SAC(2, 4, 0.05, SACConfig(alpha="auto", gradient_steps=5, batch_size=4, counterfactual=2, lr=0.05), gen())
    before = algo.alpha
    algo.learn(step_for(2, 4, credits=[1.0, -1.0], action=np.zeros(2)))
    assert algo.alpha != before


def test_structured_critic_has_the_rewards_form():
    q = sac.QNetwork(4, 2, 8, BOUND, gen(), structured=True, floor=0.05)
    q.set_reference(np.array([0.5, 0.5]))
    last = [m for m in q.net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0, math.log(math.e - 1), 0.5]))  # phi, softplus^-1(1), psi
    a = torch.tensor([[math.log(0.7), math.log(0.3)]])  # free part [0.7, 0.3] -> shares [0.68, 0.32]
    kl_w = 0.68 * math.log(0.68 / 0.5) + 0.32 * math.log(0.32 / 0.5)
    assert float(q(torch.zeros(1, 4), a).detach()) == pytest.approx((0.68 - 0.32) - 1.0 * kl_w + 0.5, abs=1e-5)


# --- TD3 -------------------------------------------------------------------------------------------

def test_td3_target_smoothing_noise_is_clipped():
    zero = Const([0.0, 0.0, 0.0])
    a = td3.smoothed_target_action(zero, torch.zeros(500, 4), noise_std=10.0, noise_clip=0.2, max_action=3.0,
                                   generator=gen())
    assert float(a.abs().max()) == pytest.approx(0.2)  # huge noise, clipped to +-0.2
    assert float(a.std()) > 0.1  # but there is noise
    near_bound = Const([2.9, -2.9, 0.0])
    a = td3.smoothed_target_action(near_bound, torch.zeros(500, 4), noise_std=10.0, noise_clip=0.5, max_action=3.0,
                                   generator=gen())
    assert float(a[:, 0].max()) == pytest.approx(3.0) and float(a[:, 1].min()) == pytest.approx(-3.0)
    assert float(a[:, 2].abs().max()) == pytest.approx(0.5)


def test_td3_target_is_the_min_of_the_twin_critics():
    y = td3.td_target(torch.tensor([1.0, 1.0]), torch.tensor([5.0, 2.0]), torch.tensor([3.0, 4.0]), gamma=0.5)
    assert y.tolist() == pytest.approx([1.0 + 0.5 * 3.0, 1.0 + 0.5 * 2.0])


def test_td3_policy_and_targets_update_only_every_policy_delay_critic_updates():
    algo = TD3(2, 4, 0.05, TD3Config(policy_delay=3, lr=0.01), gen())
    s, a = torch.randn(8, 4, generator=gen(1)), torch.rand(8, 2, generator=gen(2)) * 2 - 1
    r, s2 = torch.randn(8, generator=gen(3)), torch.randn(8, 4, generator=gen(4))

    def snapshot(module: nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
        return any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))

    for i in range(1, 8):
        actor, actor_t, q1, q1_t = (snapshot(m) for m in (algo.actor, algo.actor_target, algo.q1, algo.q1_target))
        out = algo.train_batch(s, a, r, s2)
        delayed = i % 3 == 0
        assert changed(q1, algo.q1), f"critic update {i}"
        assert ("actor_loss" in out) == delayed
        assert changed(actor, algo.actor) == delayed, f"actor after critic update {i}"
        assert changed(actor_t, algo.actor_target) == delayed and changed(q1_t, algo.q1_target) == delayed
    assert algo.critic_updates == 7 and algo.actor_updates == 2
