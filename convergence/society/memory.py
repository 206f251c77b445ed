"""An agent's memory in the store: its learned state and its replay buffer,
per study, so a later run of the study starts where the last one left off."""

from __future__ import annotations

from typing import Any

from convergence.storage.store import ExperienceRow, Store


class AgentMemory:
    """One agent's view of the store (writes are buffered, like every row of a run)."""

    def __init__(self, store: Store, study_id: int, agent: str):
        self.store = store
        self.study_id = study_id
        self.agent = agent

    async def load(self) -> dict[str, Any] | None:
        return await self.store.agent_memory(self.study_id, self.agent)

    def save(self, state: dict[str, Any]) -> None:
        self.store.save_agent_memory(self.study_id, self.agent, state)

    async def experiences(self, limit: int | None = None) -> list[ExperienceRow]:
        return await self.store.experiences(self.study_id, self.agent, limit)

    def record(self, run_id: int | None, generation: int, data: dict[str, Any], reward: float | None) -> None:
        self.store.record_experience(self.study_id, self.agent, run_id or 0, generation, data, reward)

    def prune(self, keep: int) -> None:
        self.store.prune_experiences(self.study_id, self.agent, keep)
