"""The Weave side of a traced run (imported only when a run is traced).

Each traced step becomes a call made through the Weave client's public
``create_call`` / ``finish_call`` with inputs and outputs we extract and
redact ourselves, so the optimizer, targets and test cases are never handed
to Weave's serializer and a secret never reaches it. Parent/child structure
comes from Weave's own call stack (a context variable), which anyio task
groups copy into every task they start: a trial's case calls are children of
the trial that spawned them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import Token
from typing import TYPE_CHECKING, Any

import anyio

from convergence.tracing.redact import Redactor, redactor_for

if TYPE_CHECKING:
    from convergence.config.models import WeaveConfig
    from convergence.storage.store import Store
    from convergence.tracing import TraceSpec

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "convergence"
FLUSH_TIMEOUT_SECONDS = 30.0


class TraceFailure(Exception):
    """Stands in for a step's exception in the trace, with secrets removed from its message."""


def _project_name(cfg: WeaveConfig) -> str:
    project = cfg.project or DEFAULT_PROJECT
    if cfg.entity and "/" not in project:
        return f"{cfg.entity}/{project}"
    return project


def _init_client(project: str) -> Any:
    """``weave.init`` in a worker thread (it does network I/O); ``None`` if Weave
    cannot authenticate without asking, in which case nothing was started."""
    from weave.wandb_interface.context import get_wandb_auth_context

    if get_wandb_auth_context() is None:  # would prompt for a login: never do that
        return None
    import weave

    return weave.init(project)


def _compose(current: Callable[[Any], Any] | None, scrub: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The client's own hook (if any) followed by ``scrub``; re-installing for a
    later run replaces our previous scrubber instead of stacking it."""
    base = getattr(current, "__convergence_base__", current)

    def fn(value: Any) -> Any:
        return scrub(base(value) if base is not None else value)

    fn.__convergence_base__ = base  # type: ignore[attr-defined]
    return fn


class RunTrace:
    """One traced run: the Weave client, the run's call and the redactor."""

    def __init__(self, client: Any, redactor: Redactor, attributes: dict[str, Any]) -> None:
        self.client = client
        self.redactor = redactor
        self.attributes = attributes
        self.ops: dict[str, Any] = {}
        self.run_call: Any = None
        self.url: str | None = None
        self.token: Token[Any] | None = None
        self._failed_once = False

    # ------------------------------------------------------------------ ops

    def _op(self, name: str) -> Any:
        op = self.ops.get(name)
        if op is None:
            import weave

            async def step(**inputs: Any) -> Any:  # the op's identity in Weave; never called
                return None

            op = weave.op(step, name=name, enable_code_capture=False)
            self.ops[name] = op
        return op

    def _start(self, name: str, inputs: dict[str, Any]) -> Any:
        try:
            return self.client.create_call(self._op(name), self.redactor.clean(inputs),
                                           attributes=self.attributes, use_stack=True)
        except Exception:  # noqa: BLE001 - tracing must never break a run
            self._warn_once()
            return None

    def _finish(self, call: Any, output: Any, error: BaseException | None) -> None:
        from weave.trace.context import call_context

        try:
            exc: BaseException | None = None
            if error is not None:
                if isinstance(error, anyio.get_cancelled_exc_class()):
                    exc = TraceFailure("cancelled (run stopped or time budget reached)")
                else:
                    exc = TraceFailure(self.redactor.text(f"{type(error).__name__}: {error}"))
            self.client.finish_call(call, None if error is not None else self.redactor.clean(output),
                                    exc)
        except Exception:  # noqa: BLE001
            self._warn_once()
        finally:
            call_context.pop_call(call.id)

    def _warn_once(self) -> None:
        if not self._failed_once:
            self._failed_once = True
            logger.warning("tracing: a Weave call could not be recorded; the run continues", exc_info=True)

    async def call(self, spec: TraceSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            inputs = spec.inputs(*args, **kwargs) if spec.inputs is not None else {}
            name = spec.op_name(args, kwargs)
        except Exception:  # noqa: BLE001
            self._warn_once()
            return await spec.fn(*args, **kwargs)
        call = self._start(name, inputs)
        if call is None:
            return await spec.fn(*args, **kwargs)
        try:
            result = await spec.fn(*args, **kwargs)
        except BaseException as exc:
            self._finish(call, None, exc)
            raise
        try:
            shown = spec.output(result) if spec.output is not None else None
        except Exception:  # noqa: BLE001
            self._warn_once()
            shown = None
        self._finish(call, shown, None)
        return result

    # ------------------------------------------------------------------ run

    async def close(self, outcome: Any, error: BaseException | None) -> None:
        if self.run_call is not None:
            self._finish(self.run_call, _outcome_output(outcome) if outcome is not None else None, error)
        with anyio.CancelScope(shield=True), anyio.move_on_after(FLUSH_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(self.client.flush, abandon_on_cancel=True)


def _outcome_output(outcome: Any) -> dict[str, Any]:
    best = outcome.best
    return {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "stop_reason": outcome.stop_reason,
        "generations_run": outcome.generations_run,
        "total_calls": outcome.total_calls,
        "total_cost_usd": outcome.total_cost_usd,
        "elapsed_seconds": outcome.elapsed_seconds,
        "cached_cases": outcome.cached_cases,
        "best": None if best is None else {
            "score": best.score, "configuration": best.config, "config_hash": best.config_hash,
            "metrics": best.metrics, "generation": best.generation, "proposer": best.proposer,
        },
    }


async def open_run(
    cfg: WeaveConfig,
    store: Store,
    client: Any,
    *,
    study: str,
    run_id: int,
    seed: int | None,
    config: dict[str, Any],
    resume: bool,
    notify: Callable[[str], None] | None,
) -> RunTrace | None:
    """Get a Weave client (the one already set up, else ``weave.init`` once),
    install redaction on it, open the run's call and remember its URL."""
    if client is None:
        try:
            client = await anyio.to_thread.run_sync(_init_client, _project_name(cfg))
        except Exception as exc:  # noqa: BLE001 - a tracing failure must not stop the run
            if notify is not None:
                notify(f"tracing: could not start Weave ({type(exc).__name__}: {exc}); this run is not traced")
            return None
        if client is None:
            if notify is not None:
                notify("tracing: Weave found no usable W&B credentials; this run is not traced")
            return None
    from weave.utils import sanitize

    for key in ("authorization", "x-api-key", "api-key", "password", "secret", "token", "access_token"):
        sanitize.add_redact_key(key)
    redactor = redactor_for(config)
    # Ops we do not own (e.g. LiteLLM calls Weave patches) pass through the same scrubber.
    client.postprocess_inputs = _compose(client.postprocess_inputs, redactor.scrub)
    client.postprocess_output = _compose(client.postprocess_output, redactor.scrub)

    attributes = {"convergence": {"study": study, "run_id": run_id, "seed": seed}}
    run = RunTrace(client, redactor, attributes)
    inputs = {"study": study, "run_id": run_id, "seed": seed, "resume": resume, "configuration": config}
    run.run_call = run._start("convergence.run", inputs)
    if run.run_call is None:
        return None
    call_id = str(run.run_call.id)
    try:
        url = str(run.run_call.ui_url)
    except Exception:  # noqa: BLE001
        from weave.trace.urls import redirect_call

        url = redirect_call(client.entity, client.project, call_id)
    run.url = url
    await store.save_run_trace(run_id, project=f"{client.entity}/{client.project}", url=url, call_id=call_id)
    if notify is not None:
        notify(f"tracing to Weave: {url}")
    return run
