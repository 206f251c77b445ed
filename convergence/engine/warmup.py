"""What a run loads before its first timed call, in worker threads.

Left to the first call that needs it, each of these lands inside the run:

* ``scipy.stats`` (1-3 s to import) is imported lazily by racing's first look, the learner's
  statistics and the end-of-run selection, all on the event loop: every slot stalls meanwhile;
* LiteLLM (seconds to import) at the first LLM call, on the event loop and inside that call's latency;
* the embedded model (llama.cpp, seconds to tens of seconds to load): every call of the first wave waits
  for it and counts the wait as its latency, so with a latency metric the wrong configuration can win
  (and a resumed run reloads it while its trials are in flight).

:func:`warm_up` does all three off the loop before the first call, and says once how long the embedded
model took, so that time is in no call's latency.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable

import anyio
import anyio.to_thread

from convergence.config.loader import LoadedConfig
from convergence.config.models import JudgeConfig, LiteLLMTargetConfig
from convergence.core.space import SearchSpace

HEAVY_MODULES = ("scipy.stats",)
"""Imported by code that runs on the event loop (engine/signed_rank.py, engine/selection.py,
society/learner.py); every run reaches them."""


def llm_users(loaded: LoadedConfig, space: SearchSpace, members: Iterable[object], *,
              target_in_process: bool) -> dict[str, list[str]]:
    """LiteLLM model string -> who calls it from this process: the target (when its calls run here,
    not on Ray), the LLM judges, and the society's LLM agents (any member holding an ``LLMClient``)."""
    from convergence.llm.agent_client import LLMClient

    cfg = loaded.config
    out: dict[str, list[str]] = {}
    target = cfg.resolved_target
    if target_in_process and isinstance(target, LiteLLMTargetConfig):
        models = {target.model}
        dim = space.dims.get("model")
        if dim is not None:
            models.update(v for v in dim.values if isinstance(v, str))
        for model in sorted(models):
            out.setdefault(model, []).append("target")
    for name, metric in cfg.evaluation.metrics.items():
        if metric.function == "llm_judge":
            out.setdefault((metric.judge or JudgeConfig()).model, []).append(f"judge ({name})")
    for member in members:
        for value in vars(member).values() if hasattr(member, "__dict__") else ():
            if isinstance(value, LLMClient):
                out.setdefault(value.model, []).append(f"agent {getattr(member, 'name', '?')}")
    return out


async def warm_up(users: dict[str, list[str]], notify: Callable[[str], None]) -> None:
    """Import the heavy modules and (when a model is used) LiteLLM in worker threads, and load and warm
    the embedded model if anything here calls it; concurrently, and all done when this returns."""
    async with anyio.create_task_group() as tg:
        for module in HEAVY_MODULES:
            tg.start_soon(_in_thread, importlib.import_module, module)
        if users:
            tg.start_soon(_warm_llm, users, notify)


async def _warm_llm(users: dict[str, list[str]], notify: Callable[[str], None]) -> None:
    from convergence.llm.client import litellm_module
    from convergence.llm.local_provider import LOCAL_MODEL, warm_up as warm_local

    await _in_thread(litellm_module)
    if LOCAL_MODEL not in users:
        return
    start = time.perf_counter()
    try:
        await warm_local()
    except Exception as exc:  # noqa: BLE001 - the calls will say it again, each as its case's error
        notify(f"the embedded model {LOCAL_MODEL} did not load: {type(exc).__name__}: {exc}")
        return
    notify(f"loaded the embedded model {LOCAL_MODEL} in {time.perf_counter() - start:.1f}s "
           f"(used by the {', '.join(users[LOCAL_MODEL])}; before the first call, so in no call's latency)")


async def _in_thread(fn: Callable[..., object], *args: object) -> None:
    # abandoned on cancel: Ctrl-C must not wait for an import or a model load to finish
    await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
