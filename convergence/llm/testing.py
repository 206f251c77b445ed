"""A deterministic fake LLM behind LiteLLM, for testing agents without a model.

Loading a real model makes agent tests slow and their answers hard to steer.
:class:`FakeLLM` registers a LiteLLM provider ``fake``, so ``fake/<name>`` is
a model string like any other: the society's LLM, RLP and SAO, the LLM judge
and the LiteLLM target reach it through the same LiteLLM path a real model
takes. Only the model is fake::

    from convergence.llm.testing import FakeLLM

    llm = FakeLLM("judge", reply=lambda call: "A]]" if "Paris" in call.prompt else "B]]")
    sao = SAOMixin(config, llm.model)          # "fake/judge"
    ...
    assert llm.calls[0].params["temperature"] == 0.0

How an answer is chosen, first match wins:

1. ``reply(call)`` when it returns something other than ``None`` (a string,
   or a dict/list sent as JSON; it may raise to play a failing provider);
2. for a log-prob request (``logprobs=True``): the most likely word of
   ``logprobs(prompt)``;
3. the next of the scripted ``responses`` (an exception in it is raised);
4. with a JSON schema in ``response_format``: JSON valid for the schema
   (:func:`schema_example`), drawn from a generator seeded by the request;
5. ``default``, else the prompt's last non-empty line (``fake/echo``).

Plain-text answers (no ``response_format``) are cut at a ``stop`` sequence
and at ``max_tokens`` tokens, where a token is a whitespace-led word.

Log-probs come in OpenAI's shape (``choices[0].logprobs.content``): the first
token's ``top_logprobs`` are the ``top_logprobs`` most likely words of
``logprobs(prompt)``. That is how :func:`convergence.llm.logprob.logprob_of`
measures any non-local model, so a test rigs RLP's information gain or SAO's
likelihood judge by choosing that function (see :func:`mention_logprobs`).

Nothing is random: an answer depends only on the request and the script (a
queue answers in order), so the same prompt and settings get the same answer.
Usage counts tokens as above; the cost is 0. Every call is recorded in
:attr:`FakeLLM.calls`. ``fake/echo`` always exists (defaults only); any other
name must be created first, in the process that calls it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from convergence.llm.local_provider import messages_to_prompt

__all__ = [
    "PROVIDER",
    "FakeCall",
    "FakeLLM",
    "ensure_registered",
    "mention_logprobs",
    "schema_example",
]

PROVIDER = "fake"
ECHO = "echo"
"""The built-in model's name: ``fake/echo`` answers with defaults only."""
MAX_TOP_LOGPROBS = 20
"""OpenAI's limit, as the local provider's."""

Answer = str | Mapping[str, Any] | list[Any] | None
Reply = Callable[["FakeCall"], Answer | Awaitable[Answer]]
LogProbs = Callable[[str], Mapping[str, float]]

_TOKEN = re.compile(r"\s*\S+")
_WORD = re.compile(r"[A-Za-z0-9_']+")
_WORDS = ("alpha", "bravo", "delta", "echo", "kilo", "lima", "metro", "nova", "oscar", "papa", "quartz", "river",
          "sierra", "tango", "umbra", "vivid", "whisky", "yonder", "zulu", "amber", "cedar", "maple", "orbit")
"""Words of generated strings: plain, and varied enough that near-duplicate filters keep most answers apart."""

_LOCK = threading.Lock()
_MODELS: dict[str, FakeLLM] = {}
_handler: Any = None


@dataclass(slots=True)
class FakeCall:
    """One request as the fake model received it from LiteLLM."""

    model: str
    """``fake/<name>``."""
    messages: list[dict[str, Any]]
    prompt: str
    """The messages as one text (a single user message verbatim), as the local provider builds it."""
    params: dict[str, Any]
    """LiteLLM's ``optional_params``: ``temperature``, ``max_tokens``, ``stop``, ``seed``, ``response_format``..."""
    answer: str | None = None
    """The text returned (``None`` if the call raised)."""

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of ``response_format`` (``json_schema``, or ``json_object`` with a schema)."""
        fmt = self.params.get("response_format")
        if fmt is None:
            return None
        kind = _field(fmt, "type")
        found = _field(_field(fmt, "json_schema"), "schema") if kind == "json_schema" else _field(fmt, "schema")
        return found if isinstance(found, dict) else None

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.params.get("logprobs"))


def mention_logprobs(vocabulary: Iterable[str] | None = None, weight: float = 2.0) -> LogProbs:
    """Log-probs of a model that expects what the prompt mentions: a log-softmax over
    ``vocabulary`` (default: the prompt's own words) of ``weight`` x each word's count in
    the prompt (whole words, case-insensitive). A thought that names an outcome raises
    that outcome's log-prob, as with a real model, so RLP's information gain is positive
    exactly for informative thoughts."""
    fixed = [w.lower() for w in vocabulary] if vocabulary is not None else None

    def logprobs(prompt: str) -> dict[str, float]:
        counts: dict[str, int] = {}
        for w in _WORD.findall(prompt.lower()):
            counts[w] = counts.get(w, 0) + 1
        words = fixed if fixed is not None else list(counts)
        if not words:
            return {}
        logits = {w: weight * counts.get(w, 0) for w in words}
        peak = max(logits.values())
        norm = math.log(sum(math.exp(v - peak) for v in logits.values()))
        return {w: v - peak - norm for w, v in logits.items()}

    return logprobs


def schema_example(schema: Mapping[str, Any], rng: random.Random, *, root: Mapping[str, Any] | None = None) -> Any:
    """A value valid for ``schema``, drawn with ``rng``: ``const``, ``enum``, ``anyOf``/``oneOf``
    (first), local ``$ref``, objects (every property; ``additionalProperties`` never used), arrays
    (``minItems``..``maxItems``), strings (``minLength``..``maxLength``), integers and numbers
    (``minimum``/``maximum``, exclusive bounds, ``multipleOf``), booleans, null. Enough for the
    schemas Convergence sends; formats and patterns are ignored."""
    root = schema if root is None else root
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        return schema_example(target, rng, root=root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(list(schema["enum"]))
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_example(schema[key][0], rng, root=root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        out = {name: schema_example(sub, rng, root=root) for name, sub in props.items()}
        for name in schema.get("required") or []:
            out.setdefault(name, _string(rng, 1, 40))
        return out
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = max(low, int(schema.get("maxItems", low + 2)))
        item = schema.get("items") or {}
        return [schema_example(item, rng, root=root) for _ in range(rng.randint(low, high))]
    if kind == "string":
        return _string(rng, int(schema.get("minLength", 1)), int(schema.get("maxLength", 60)))
    if kind in ("integer", "number"):
        return _number(schema, rng, integer=kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _string(rng: random.Random, low: int, high: int) -> str:
    high = max(low, high)
    target = rng.randint(max(low, min(12, high)), max(low, min(40, high)))
    text = " ".join(rng.choice(_WORDS) for _ in range(target // 4 + 1))
    while len(text) < target:
        text += " " + rng.choice(_WORDS)
    return text[:high].rstrip() if len(text[:high].rstrip()) >= low else text[:high]


def _number(schema: Mapping[str, Any], rng: random.Random, *, integer: bool) -> float | int:
    low = float(schema.get("minimum", schema.get("exclusiveMinimum", 0)))
    high = float(schema.get("maximum", schema.get("exclusiveMaximum", max(low, 0) + 100)))
    step = float(schema.get("multipleOf", 1 if integer else 0) or 0)
    if step:
        first, last = math.ceil(low / step), math.floor(high / step)
        if "exclusiveMinimum" in schema and first * step <= low:
            first += 1
        if "exclusiveMaximum" in schema and last * step >= high:
            last -= 1
        k = rng.randint(first, max(first, last)) * step
        return int(k) if integer else round(k, 10)
    value = min(max(round(rng.uniform(low, high), 3), low), high)
    if value in (low, high) and ("exclusiveMinimum" in schema or "exclusiveMaximum" in schema):
        value = (low + high) / 2  # a rounded draw landed on an excluded bound
    return value


class FakeLLM:
    """A scripted model reachable as ``fake/<name>`` through LiteLLM (see the module docstring).

    ``reply(call)``: answers computed from the request (``None``: not this one).
    ``responses``: answers returned in order, one per completion (not per log-prob request).
    ``logprobs(prompt)``: word -> natural-log probability of the first generated token
    (default :func:`mention_logprobs` over the prompt's words; ``lambda p: {}`` plays a
    provider without log-probs). ``default``: the answer when nothing else gives one.

    Creating one registers it (replacing an earlier model of the same name); :meth:`close`
    or leaving a ``with`` block unregisters it.
    """

    def __init__(
        self,
        name: str = "test",
        *,
        reply: Reply | None = None,
        responses: Iterable[Answer | BaseException] = (),
        logprobs: LogProbs | None = None,
        default: str | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"a fake model name is one path segment, got {name!r}")
        self.name = name
        self.model = f"{PROVIDER}/{name}"
        self.reply = reply
        self.responses: deque[Answer | BaseException] = deque(responses)
        self.logprobs = logprobs or mention_logprobs()
        self.default = default
        self.calls: list[FakeCall] = []
        """Every request, in arrival order."""
        self._lock = threading.Lock()
        _register_model(self)

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unregister: ``fake/<name>`` is then an unknown model again."""
        with _LOCK:
            if _MODELS.get(self.name) is self:
                del _MODELS[self.name]

    def push(self, *answers: Answer | BaseException) -> None:
        """Queue more scripted answers."""
        with self._lock:
            self.responses.extend(answers)

    @property
    def prompts(self) -> list[str]:
        return [c.prompt for c in self.calls]

    def __repr__(self) -> str:
        return f"FakeLLM({self.model!r}, calls={len(self.calls)})"

    # ------------------------------------------------------------------ answering

    def _record(self, call: FakeCall) -> None:
        with self._lock:
            self.calls.append(call)  # first: a call that raises is recorded too

    async def _aanswer(self, call: FakeCall) -> tuple[str, list[dict[str, Any]] | None, str]:
        self._record(call)
        got = self.reply(call) if self.reply is not None else None
        if inspect.isawaitable(got):
            got = await got
        return self._finish(call, got)

    def _answer(self, call: FakeCall) -> tuple[str, list[dict[str, Any]] | None, str]:
        self._record(call)
        got = self.reply(call) if self.reply is not None else None
        if inspect.isawaitable(got):
            close = getattr(got, "close", None)
            if close is not None:
                close()  # never awaited: say so instead of a "never awaited" warning
            raise TypeError("an async reply needs an async call (litellm.acompletion)")
        return self._finish(call, got)

    def _finish(self, call: FakeCall, got: Any) -> tuple[str, list[dict[str, Any]] | None, str]:
        """(text, logprobs content or None, finish reason) once ``reply`` has had its say."""
        dist = dict(self.logprobs(call.prompt)) if call.wants_logprobs else {}
        structured = call.params.get("response_format") is not None
        if got is None and call.wants_logprobs and dist:
            got = min(dist, key=lambda w: (-dist[w], w))
        if got is None and not call.wants_logprobs:
            with self._lock:
                got = self.responses.popleft() if self.responses else None
            if isinstance(got, BaseException):
                raise got
        if got is None and call.schema is not None:
            got = schema_example(call.schema, random.Random(_request_seed(call)))
        elif got is None and structured:
            got = {}  # json_object without a schema: any object is valid
        if got is None:
            got = self.default if self.default is not None else _last_line(call.prompt)
        text = got if isinstance(got, str) else json.dumps(got, ensure_ascii=False)
        reason = "stop"
        if not structured:
            text, reason = _cut(text, call.params)
        call.answer = text
        content = _logprobs_content(text, dist, call.params) if call.wants_logprobs and dist else None
        return text, content, reason


def _register_model(llm: FakeLLM) -> None:
    import litellm

    with _LOCK:
        _MODELS[llm.name] = llm
    litellm.register_model({llm.model: {
        "input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "cache_creation_input_token_cost": 0.0,
        "cache_read_input_token_cost": 0.0, "litellm_provider": PROVIDER, "mode": "chat",
    }})


def _lookup(model: str) -> FakeLLM:
    name = model.removeprefix(f"{PROVIDER}/")
    with _LOCK:
        found = _MODELS.get(name)
    if found is not None:
        return found
    if name == ECHO:
        return FakeLLM(ECHO)
    import litellm

    raise litellm.NotFoundError(message=f"unknown fake model {model!r}: create FakeLLM({name!r}) first "
                                        f"(known: {', '.join(sorted({ECHO, *_MODELS}))})",
                                model=model, llm_provider=PROVIDER)


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _request_seed(call: FakeCall) -> int:
    """The schema generator's seed: the request itself, so equal requests get equal answers."""
    keys = ("seed", "temperature", "max_tokens", "top_p")
    material = json.dumps([call.model, call.prompt, {k: call.params.get(k) for k in keys}, call.schema],
                          sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


def _last_line(prompt: str) -> str:
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _cut(text: str, params: Mapping[str, Any]) -> tuple[str, str]:
    """Plain text as a provider returns it: up to the first stop sequence, at most ``max_tokens`` tokens."""
    stop = params.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    limit = params.get("max_tokens", params.get("max_completion_tokens"))
    tokens = _TOKEN.findall(text)
    if limit is not None and len(tokens) > int(limit):
        return "".join(tokens[: int(limit)]), "length"
    return text, "stop"


def _logprobs_content(text: str, dist: Mapping[str, float], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content``: the first token's alternatives are the top words of
    ``dist``; a token ``dist`` does not list gets the lowest listed log-prob minus 1, later
    tokens are certain (0)."""
    k = int(params.get("top_logprobs") or 0)
    if not 0 <= k <= MAX_TOP_LOGPROBS:
        import litellm

        raise litellm.BadRequestError(message=f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}",
                                      model=PROVIDER, llm_provider=PROVIDER)
    ranked = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))
    floor = min(dist.values()) - 1.0
    content = []
    for i, token in enumerate(_TOKEN.findall(text) or [text]):
        if i == 0:
            logprob = dist.get(token.strip(), floor)
            top = [_entry(w, lp) for w, lp in ranked[:k]]
        else:
            logprob, top = 0.0, [_entry(token, 0.0)] if k else []
        content.append({**_entry(token, logprob), "top_logprobs": top})
    return content


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": float(logprob), "bytes": list(token.encode("utf-8"))}


def _fill(model_response: Any, llm: FakeLLM, call: FakeCall, text: str, content: list[dict[str, Any]] | None,
          reason: str) -> Any:
    from litellm.types.utils import ChoiceLogprobs, Usage

    model_response.choices[0].message.content = text
    model_response.choices[0].finish_reason = reason
    if content is not None:
        model_response.choices[0].logprobs = ChoiceLogprobs(content=content)
    prompt_tokens, completion_tokens = len(_TOKEN.findall(call.prompt)), len(_TOKEN.findall(text))
    model_response.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                 total_tokens=prompt_tokens + completion_tokens)
    model_response.model = llm.model
    model_response.created = int(time.time())
    return model_response


def _make_handler() -> Any:
    from litellm import CustomLLM

    def start(model: str, messages: list, kw: dict[str, Any]) -> tuple[FakeLLM, FakeCall]:
        llm = _lookup(model)
        params = dict(kw.get("optional_params") or {})
        return llm, FakeCall(llm.model, [dict(m) for m in messages], messages_to_prompt(messages), params)

    class FakeProvider(CustomLLM):
        """LiteLLM handler for ``fake/...`` model strings."""

        def completion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            llm, call = start(model, messages, kw)
            return _fill(kw["model_response"], llm, call, *llm._answer(call))

        async def acompletion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            llm, call = start(model, messages, kw)
            return _fill(kw["model_response"], llm, call, *await llm._aanswer(call))

    return FakeProvider()


def ensure_registered() -> None:
    """Register the ``fake`` provider with LiteLLM (idempotent). Called by
    :func:`convergence.llm.client.acompletion` for ``fake/...`` models."""
    global _handler
    import litellm

    with _LOCK:
        if _handler is None:
            _handler = _make_handler()
        if any(i.get("provider") == PROVIDER for i in litellm.custom_provider_map):
            return
        litellm.custom_provider_map = [*litellm.custom_provider_map,
                                       {"provider": PROVIDER, "custom_handler": _handler}]
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
