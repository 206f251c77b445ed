"""The reflection buffer: every decision the policy made and what it earned, kept in the
study's database (``agent_experience`` under ``learner:ppo``) across runs.

One row per generation the learner saw: ``transition`` is the decision that generation ran
under, now rewarded (observation, action, log-probability and value when it was taken, reward,
done), and ``chosen`` the decision taken after it (its reward comes with a later generation).
A resumed run finds its earlier rows by (run, generation) and replays their decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convergence.society.learner import LearnerMemory


@dataclass(slots=True)
class Row:
    run_id: int
    generation: int
    reward: float | None
    data: dict[str, Any]


class ReflectionBuffer:
    def __init__(self, memory: LearnerMemory, run_id: int) -> None:
        self.memory = memory
        self.run_id = run_id
        self.rows = [Row(e.run_id, e.generation, e.reward, e.data) for e in memory.experiences]
        self._index = {(r.run_id, r.generation): r for r in self.rows}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, run_id: int, generation: int) -> Row | None:
        return self._index.get((run_id, generation))

    def add(self, generation: int, data: dict[str, Any], reward: float | None) -> Row:
        row = Row(self.run_id, generation, reward, data)
        self.rows.append(row)
        self._index[(row.run_id, generation)] = row
        self.memory.record(generation, data, reward)
        return row

    def transitions(self, update: int | None = None, policy: str | None = None) -> list[Row]:
        """Rows that carry a rewarded decision; with ``update`` (and ``policy``), only those recorded since
        that update of that policy."""
        return [r for r in self.rows if r.data.get("transition") is not None
                and (update is None or r.data.get("update") == update)
                and (policy is None or r.data.get("policy") == policy)]

    def get_ppo_batch(self, batch_size: int | None = None, recent_only: bool = True,
                      update: int | None = None, policy: str | None = None) -> dict[str, list[Any]]:
        """Experience for PPO, oldest first: observations, actions, log-probs and values at decision
        time, rewards, dones (a run's last decision, the last one before another run's, or the last one of
        an earlier run when the batch ends there: never bootstrapped from another run's state) and infos.
        ``recent_only`` keeps the decisions since update ``update`` of ``policy`` (on-policy);
        ``batch_size`` the newest."""
        rows = self.transitions(update, policy) if recent_only else self.transitions()
        if batch_size is not None:
            rows = rows[-batch_size:]
        out: dict[str, list[Any]] = {k: [] for k in ("observations", "actions", "log_probs", "values", "rewards",
                                                     "dones", "infos")}
        for i, r in enumerate(rows):
            t = r.data["transition"]
            # the run changes after it: with the next row, or (the batch's last) with the run learning now
            following = rows[i + 1].run_id if i + 1 < len(rows) else self.run_id
            ends_run = following != r.run_id
            out["observations"].append(t["obs"])
            out["actions"].append(t["action"])
            out["log_probs"].append(t["logp"])
            out["values"].append(t["value"])
            out["rewards"].append(float(r.reward or 0.0))
            out["dones"].append(bool(t["done"]) or ends_run)
            out["infos"].append({"run_id": r.run_id, "generation": r.generation, "labels": t.get("labels"),
                                 "reward_parts": r.data.get("reward_parts")})
        return out

    def episodes(self) -> dict[int, dict[str, Any]]:
        """Per run: decisions rewarded, mean reward, and how often each choice was taken."""
        out: dict[int, dict[str, Any]] = {}
        for r in self.transitions():
            e = out.setdefault(r.run_id, {"decisions": 0, "reward_sum": 0.0, "choices": {}})
            e["decisions"] += 1
            e["reward_sum"] += float(r.reward or 0.0)
            for head, choice in (r.data["transition"].get("labels") or {}).items():
                counts = e["choices"].setdefault(head, {})
                counts[choice] = counts.get(choice, 0) + 1
        for e in out.values():
            e["mean_reward"] = e.pop("reward_sum") / e["decisions"]
        return out
