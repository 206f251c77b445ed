"""``convergence ppo stats | reset | export``: the PPO learner's policy and reflection buffer
in a study's database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from convergence.society.learner import LearnerMemory
from convergence.storage.store import Store
from convergence_ppo.buffer import ReflectionBuffer

KEY = "learner:ppo"


async def _study_id(store: Store, study: str) -> int | None:
    return await store.study_id(study) if await store.list_runs(study, limit=1) else None


async def stats(store: Store, study: str) -> dict[str, Any]:
    """The saved policy (updates, decisions, last learning metrics) and, per run, the mean reward and
    how often each choice was taken: the learning curve over the study's runs."""
    sid = await _study_id(store, study)
    if sid is None:
        return {"study": study, "exists": False}
    state = await store.agent_memory(sid, KEY)
    buffer = ReflectionBuffer(LearnerMemory(None, await store.experiences(sid, KEY)), 0)
    history = (state or {}).get("history", [])
    return {"study": study, "exists": state is not None, "updates": (state or {}).get("updates", 0),
            "decisions": (state or {}).get("decisions", 0), "experiences": len(buffer),
            "actions": [h[0] for h in (state or {}).get("signature", {}).get("heads", [])],
            "config": (state or {}).get("config"), "last_update": history[-1] if history else None,
            "updates_history": history, "runs": buffer.episodes()}


async def reset(store: Store, study: str) -> tuple[int, int]:
    """Forget the policy and the reflection buffer; the next run starts a new policy."""
    sid = await _study_id(store, study)
    if sid is None:
        return 0, 0
    return await store.forget_agent(sid, KEY)


async def export(store: Store, study: str, out: Path, policy: Path | None = None) -> dict[str, Any]:
    """The reflection buffer as JSON lines (one decision per line: observation, action, reward, done,
    what was chosen) and, with ``policy``, the policy's weights as a PyTorch file."""
    sid = await _study_id(store, study)
    if sid is None:
        raise ValueError(f"no study {study!r} in {store.path}")
    rows = await store.experiences(sid, KEY)
    batch = ReflectionBuffer(LearnerMemory(None, rows), 0).get_ppo_batch(recent_only=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for i in range(len(batch["rewards"])):
            f.write(json.dumps({"observation": batch["observations"][i], "action": batch["actions"][i],
                                "log_prob": batch["log_probs"][i], "value": batch["values"][i],
                                "reward": batch["rewards"][i], "done": batch["dones"][i], **batch["infos"][i]}) + "\n")
    written: dict[str, Any] = {"experiences": str(out), "decisions": len(batch["rewards"])}
    if policy is not None:
        state = await store.agent_memory(sid, KEY)
        if state is None:
            raise ValueError(f"study {study!r} has no saved PPO policy yet")
        import torch

        from convergence_ppo.learner import _unb64

        policy.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": _unb64(state["policy"]), "signature": state["signature"],
                    "norm": state["norm"], "config": state.get("config")}, policy)
        written["policy"] = str(policy)
    return written
