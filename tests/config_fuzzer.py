"""Config fuzzer: broken variants of real configs, every one must be refused cleanly.

From the default ``optimization.yaml``, every ``examples/*/optimization.yaml``
and three synthetic configs that use every section (an ``api:`` HTTP target
with ``legacy:``/``society:``/``tracing:``, a Python target with a custom
evaluator and JSON-schema/numeric metrics, a LiteLLM target with messages, an
``api_base`` and an LLM judge), it generates variants that are each wrong in
one way:

* a type sweep: every typed scalar field gets a boolean, a fraction, text,
  ``.inf``/``.nan``, a list or a mapping where that is not its type;
* an unknown-key sweep: a misspelt key in every section;
* semantic mistakes per section (ranges, conflicting options, unknown
  functions, modules that fail to import, uncompilable regexes, templates and
  JSON schemas, bad URLs, unusable storage and output paths, options we do not
  implement, malformed ``${...}`` references ...);
* file-level damage: duplicate keys, binary and non-UTF-8 bytes, recursive
  aliases, an alias bomb, absurd nesting, unsupported YAML tags, a 100 KB
  study name, a file over the size limit, broken YAML.

and a few valid edits (comments, CRLF, BOM, ``$${`` escapes, interpolation,
anchors and merges, markup characters in names) that must still validate.

Round 2 (``round2``, kinds ``r2-*``) adds: ranges whose ``step`` overflows the space size, lone
surrogates and control characters in names, labels and paths, templates that loop, blow up or reach
into Python (``range(10**9)``, nested loops, ``'x' * 10**9``, ``center(10**9)``, namespace doubling,
``__class__``), nonsense URLs, ports, Ray addresses, environment variable names and model names, and
``society.learner`` options the synergy/PPO learners refuse (for the valid ones, the learner is started
the way a run starts it). ``runtime_variants`` are valid configs whose Python target raises
``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException``: those run for real, and must end
cleanly (exit 0, or 3 when every call failed).

Each variant runs through ``convergence validate`` (a subprocess with a
timeout, or in-process with ``--in-process``) and through what ``optimize``
does before its first call (in-process, with the run itself stubbed out). The
counts printed at the end are the result:

* tracebacks: a Python traceback or an exit code other than 0/2;
* hangs: no answer within the per-variant timeout;
* wrong acceptances: exit 0 for a broken variant;
* wrong rejections: exit 2 for a valid variant;
* missing location: a rejection whose report lacks the file, the line, or
  the field (where the mistake has one);
* misplaced: the reported fields do not include the mutated one;
* validate/optimize disagreements: one accepts what the other refuses.

The fuzzer itself (generation, running, judging) lives here, next to the test that runs a
sample of it (``tests/test_config_fuzz.py``); ``benchmarks/config_fuzz.py`` is its command line
(the full run: ``python benchmarks/config_fuzz.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
"""The repository: the default ``optimization.yaml`` and ``examples/`` are the fuzzer's bases."""

INF, NAN = float("inf"), float("nan")
ENV = {"FZ_SET": "fz_funcs:call", "FZ_TOKEN": "secret-token-123", "FZ_KEY": "sk-fuzz",
       "COMPLETIONS_TOKEN": "anything", "OPENAI_API_KEY": "sk-fuzz", "FZ_NUM": "4"}
UNSET = "FZ_DEFINITELY_UNSET_VAR"


@dataclass
class Variant:
    id: str
    base: str
    section: str
    kind: str
    text: bytes
    expect: str  # "reject" | "accept"
    where: str = "field"  # least location a rejection must give: "field" | "line" | "file"
    field: str | None = None  # the mutated field's dotted path, when known
    filename: str = ""
    run: bool = False  # optimize runs for real (a target that misbehaves at call time), not only up to its first call


@dataclass
class Outcome:
    variant: Variant
    rc: int | None
    stderr: str
    seconds: float
    traceback: bool = False
    hang: bool = False
    optimize_rc: int | None = None
    optimize_traceback: bool = False
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- project files

HELPERS: dict[str, str] = {
    "fz_funcs.py": (
        "VALUE = 3\n"
        "def call(params, input):\n    return str(input)\n"
        "def noargs():\n    return 1\n"
        "def metric(output, case, call, args):\n    return 1.0\n"
        "def legacy_eval(response, expected, metadata):\n    return {'quality': 1.0}\n"
        "def exits(params, input):\n    raise SystemExit(3)\n"
        "def interrupts(params, input):\n    raise KeyboardInterrupt\n"
        "class Custom(BaseException):\n    pass\n"
        "def base_error(params, input):\n    raise Custom('a BaseException')\n"
        "async def async_exits(params, input):\n    raise SystemExit('bye')\n"
        "async def async_interrupts(params, input):\n    raise KeyboardInterrupt\n"
        "def half(params, input):\n    if 'one' in str(input):\n        raise SystemExit(1)\n    return str(input)\n"
    ),
    "fz_boom.py": "raise RuntimeError('boom at import')\ndef call(params, input):\n    return 1\n",
    "fz_exit.py": "import sys\nsys.exit(3)\n",
    "fz_bad.json": "[{\"input\": 1,,}]\n",
    "fz_cases.jsonl": "".join(
        json.dumps({"id": f"c{i}", "input": {"question": f"q{i}"}, "expected": f"{i}"}) + "\n" for i in range(4)
    ),
    "fz_noexpected.jsonl": "".join(json.dumps({"input": {"question": f"q{i}"}}) + "\n" for i in range(3)),
    "fz_schema.json": json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}),
    "fz_badschema.json": json.dumps({"type": 12}),
    "fz_notsqlite.db": "this is not a database\n",
    "fz_file.txt": "a plain file\n",
}

SYNTHETIC: dict[str, str] = {
    "full_http": """\
api:
  name: fuzz-http
  description: the-convergence style HTTP target
  endpoint: http://127.0.0.1:9/v1/completions
  auth: {type: bearer, token_env: FZ_TOKEN}
  request:
    method: POST
    timeout_seconds: 30
    headers: {X-Study: "fuzz", X-Q: "{{ question }}"}
    body:
      prompt: "{{ style }}"
      temperature: "{{ temperature }}"
      max_tokens: "{{ max_tokens }}"
  response: {result_field: choices.0.text, error_field: error, cost_field: usage.cost}
search_space:
  parameters:
    style:
      type: categorical
      values: {plain: "{{ question }}", qa: "Q: {{ question }}\\nA:"}
    temperature: {type: continuous, min: 0.0, max: 1.0, step: 0.25}
    max_tokens: {type: discrete, values: [8, 16]}
evaluation:
  test_cases: {path: fz_cases.jsonl, limit: 3}
  metrics:
    accuracy: {function: contains, weight: 0.6, type: higher_is_better, threshold: 0.5}
    pattern: {function: regex, weight: 0.1, args: {pattern: "^[0-9]+$", ignore_case: true}}
    valid_json: {function: json_valid, weight: 0.1}
    latency_ms: {function: latency, weight: 0.2, type: lower_is_better, threshold: 2000}
optimization:
  algorithm: mab_evolution
  seed: 11
  mab: {strategy: thompson_sampling, exploration_rate: 0.2, confidence_level: 0.95, bins: 6}
  evolution: {population_size: 4, generations: 3, mutation_rate: 0.3, crossover_rate: 0.7, elite_size: 1,
              tournament_size: 2, early_stopping_generations: 2}
  execution: {parallel_workers: 2, max_retries: 2, retry_delay_seconds: 0.5, timeout_seconds: 20,
              experiments_per_generation: 4, early_stopping: {enabled: true, min_improvement: 0.01}}
  budget: {max_calls: 100, max_cost_usd: 1.0, max_seconds: 60}
  warm_start: 2
output:
  save_path: results
  save_all_experiments: false
  formats: [json, csv]
  visualizations: [score_over_time, pareto_front]
  plot_format: html
  export_best_config: {enabled: true, format: json, output_path: best.json}
legacy: {enabled: true, session_id: fuzz-session, tracking_backend: builtin, export_dir: results}
society:
  enabled: false
  auto_generate_agents: true
  llm: {model: local/gemma-3-270m, temperature: 0.5, max_tokens: 64}
tracing: {weave: {enabled: false, project: fuzz}}
""",
    "full_python": """\
study: fuzz-python
target:
  type: python
  function: "fz_funcs:call"
  timeout_seconds: 5
  rate_limit_per_second: 50
  retry: {max_retries: 1, backoff_initial_seconds: 0.1, backoff_max_seconds: 1}
search_space:
  parameters:
    mode: {type: categorical, values: [fast, slow]}
    depth: {type: discrete, min: 1, max: 5, step: 2}
    rate: {type: continuous, min: 0.001, max: 1.0, log: true}
evaluation:
  test_cases:
    inline:
      - {id: a, input: {question: one}, expected: "1"}
      - {id: b, input: {question: two}, expected: "2"}
  custom_evaluator: {enabled: true, module: fz_funcs, function: legacy_eval}
  metrics:
    quality: {weight: 0.4}
    exact: {function: exact_match, weight: 0.2, args: {first_line_only: true}}
    shape: {function: json_schema, weight: 0.1, args: {schema: fz_schema.json}}
    near: {function: numeric, weight: 0.1, args: {tolerance: 0.5, scale: 2}}
    own: {function: "fz_funcs:metric", weight: 0.1}
    cost: {function: cost, weight: 0.1, type: lower_is_better, budget_per_call: 0.01}
optimization:
  algorithm: genetic
  seed: 5
  evolution: {population_size: 5, generations: 2, elite_size: 1}
  execution: {concurrency: 3, early_stopping: {enabled: false, patience: 2}}
legacy: {enabled: true, sqlite_path: .convergence/fuzz.db, export_formats: [json, markdown]}
""",
    "full_litellm": """\
study: fuzz-litellm
target:
  type: litellm
  model: openai/gpt-4o-mini
  api_base: http://127.0.0.1:9/v1
  api_key_env: FZ_KEY
  messages:
    - {role: system, content: "{{ system }}"}
    - {role: user, content: "{{ question }}"}
  params: {top_p: 0.9}
  call_params: [temperature, model]
  timeout_seconds: 30
search_space:
  parameters:
    system: {type: categorical, values: ["Be brief.", "Answer with a number."]}
    temperature: {type: continuous, min: 0, max: 1, step: 0.5}
    model: {type: categorical, values: [openai/gpt-4o-mini, local/gemma-3-270m]}
evaluation:
  test_cases: {path: fz_cases.jsonl}
  metrics:
    judge:
      function: llm_judge
      weight: 0.5
      judge: {model: local/gemma-3-270m, rubric: "Is it right?", temperature: 0, max_tokens: 4, timeout_seconds: 30}
    similar: {function: similarity, weight: 0.5}
optimization:
  algorithm: mab_only
  seed: 2
  evolution: {population_size: 3, generations: 2, elite_size: 1}
storage: {path: .convergence/llm.db}
""",
}


def bases() -> dict[str, tuple[str, str]]:
    """name -> (relative directory inside the fuzz project, YAML text)."""
    out = {"default": (".", (ROOT / "optimization.yaml").read_text(encoding="utf-8"))}
    for p in sorted((ROOT / "examples").glob("*/optimization.yaml")):
        out[p.parent.name] = (f"examples/{p.parent.name}", p.read_text(encoding="utf-8"))
    for name, text in SYNTHETIC.items():
        out[name] = ("synthetic", text)
    return out


def make_project(tmp: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp / "examples")
    (tmp / "synthetic").mkdir()
    dirs = [tmp, tmp / "synthetic", *[p for p in (tmp / "examples").iterdir() if p.is_dir()]]
    for d in dirs:
        for name, text in HELPERS.items():
            (d / name).write_text(text, encoding="utf-8")
        (d / "fz_dir").mkdir(exist_ok=True)


# --------------------------------------------------------------------------- generation


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000).encode("utf-8")


def get(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


def with_value(data: dict, path: tuple[Any, ...], value: Any) -> dict:
    new = copy.deepcopy(data)
    node = new
    for p in path[:-1]:
        if isinstance(node, dict) and not isinstance(node.get(p), (dict, list)):
            node[p] = {}
        node = node[p]
    node[path[-1]] = value
    return new


def without(data: dict, path: tuple[Any, ...]) -> dict:
    new = copy.deepcopy(data)
    node = get(new, path[:-1])
    del node[path[-1]]
    return new


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _scalar_kind(ann: Any) -> str | None:
    """'int' | 'float' | 'bool' | 'str' | 'literal' for a typed scalar field annotation, else None."""
    from convergence.config.loader import _pick

    ann = _pick(ann, None)
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return "literal"
    if ann in (int, float, bool, str):
        return ann.__name__
    return None


def _field(loc: tuple[Any, ...], data: dict) -> Any:
    """The pydantic FieldInfo of the field at ``loc`` (None for free-form data)."""
    from convergence.config.loader import _model_at

    if not loc or not isinstance(loc[-1], str):
        return None
    model = _model_at(loc[:-1], data)
    if model is None:
        return None
    f = model.model_fields.get(loc[-1])
    if f is None:
        for candidate in model.model_fields.values():  # an alias such as parallel_workers
            alias = candidate.validation_alias
            if alias is not None and loc[-1] in getattr(alias, "choices", ()):
                f = candidate
    return f


def _field_kind(loc: tuple[Any, ...], data: dict) -> str | None:
    f = _field(loc, data)
    return None if f is None else _scalar_kind(f.annotation)


def _optional(ann: Any) -> bool:
    import types as _types

    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    if ann is Any:
        return True
    return typing.get_origin(ann) in (typing.Union, _types.UnionType) and type(None) in typing.get_args(ann)


WRONG: dict[str, list[tuple[str, Any]]] = {
    "int": [("bool", True), ("fraction", 2.5), ("text", "many"), ("inf", INF), ("list", [1]), ("map", {"a": 1})],
    "float": [("bool", True), ("nan", NAN), ("inf", -INF), ("text", "fast"), ("list", [0.5])],
    "bool": [("text", "maybe"), ("int", 2), ("list", [True])],
    "str": [("int", 12345), ("list", ["a"]), ("map", {"a": "b"}), ("bool", False)],
    "literal": [("unknown", "no-such-option"), ("int", 7), ("list", ["x"])],
}


def leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += leaves(v, path + (i,))
    else:
        out.append((path, node))
    return out


def mappings(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        out.append(path)
        for k, v in node.items():
            out += mappings(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += mappings(v, path + (i,))
    return out


def type_sweep(name: str, data: dict) -> list[Variant]:
    out = []
    for path, _value in leaves(data):
        kind = _field_kind(path, data)
        if kind is None:
            continue
        for label, wrong in WRONG[kind]:
            if kind == "str" and path[-1] in ("description",) and label == "int":
                continue
            out.append(Variant(f"{name}:{dotted(path)}={label}", name, str(path[0]), f"type-{label}",
                               dump(with_value(data, path, wrong)), "reject", "field", dotted(path)))
    return out


def null_and_missing_sweep(name: str, data: dict) -> list[Variant]:
    """A required field removed, or a field that cannot be null set to null."""
    out = []
    for path in mappings(data):
        node = get(data, path)
        for key in list(node):
            loc = path + (key,)
            f = _field(loc, data)
            if f is None:
                continue
            section = str(loc[0])
            if f.is_required():
                out.append(Variant(f"{name}:{dotted(loc)}-removed", name, section, "missing",
                                   dump(without(data, loc)), "reject", "field", dotted(loc)))
            if not _optional(f.annotation) and key not in ("study",):
                out.append(Variant(f"{name}:{dotted(loc)}=null", name, section, "null",
                                   dump(with_value(data, loc, None)), "reject", "field", dotted(loc)))
    return out


def unknown_key_sweep(name: str, data: dict) -> list[Variant]:
    from convergence.config.loader import _model_at
    from convergence.config.models import SocietyConfig

    out = []
    for path in mappings(data):
        model = _model_at(path, data)
        if model is None or model is SocietyConfig:
            continue
        node = get(data, path)
        keys = [k for k in node if isinstance(k, str)]
        typo = (keys[0][:-1] + keys[0][-1] * 2) if keys else "unexpected_key"
        if typo in node or typo in model.model_fields:
            typo = "zz_unknown"
        section = str(path[0]) if path else "root"
        out.append(Variant(f"{name}:{dotted(path) or 'root'}+{typo}", name, section, "unknown-key",
                           dump(with_value(data, path + (typo,), 1)), "reject", "field", dotted(path + (typo,))))
    return out


def semantic(name: str, data: dict) -> list[Variant]:
    """Mistakes by meaning, per section; each (path, value) set in a copy of ``data``."""
    t_key = "target" if "target" in data else "api"
    t = data[t_key]
    kind = t.get("type", "http" if "endpoint" in t and "model" not in t else "litellm") if t_key == "target" else (
        "litellm" if "model" in t else "http")
    params = data["search_space"]["parameters"]
    p0 = next(iter(params))
    metrics = data["evaluation"]["metrics"]
    # a metric without judge settings, so changing its function is its only mistake
    m0 = next((k for k, m in metrics.items() if not (isinstance(m, dict) and "judge" in m)), next(iter(metrics)))
    has_custom = "custom_evaluator" in data["evaluation"]
    S: list[tuple[str, tuple[Any, ...], Any, str | None]] = []  # (label, path, value, expected field)

    def s(label: str, path: tuple[Any, ...], value: Any, expected: str | None = "") -> None:
        S.append((label, path, value, dotted(path) if expected == "" else expected))

    # ---- target
    if kind == "python":
        for label, fn in [("no-colon", "fz_funcs"), ("missing-module", "no_such_module_xyz:call"),
                          ("missing-attr", "fz_funcs:nope"), ("empty-attr", "fz_funcs:"),
                          ("not-callable", "fz_funcs:VALUE"), ("wrong-arity", "fz_funcs:noargs"),
                          ("import-raises", "fz_boom:call"), ("import-exits", "fz_exit:call"), ("empty", "")]:
            s(f"function-{label}", (t_key, "function"), fn)
    if kind == "http":
        for label, url in [("no-scheme", "127.0.0.1:9/x"), ("ftp", "ftp://127.0.0.1/x"), ("no-host", "http://"),
                           ("bad-port", "http://127.0.0.1:99999/x"), ("space", "http://a b/x"),
                           ("template", "http://{{ host }}/x"), ("empty", ""), ("ipv6", "http://[::1/x")]:
            s(f"endpoint-{label}", (t_key, "endpoint"), url)
        s("auth-no-token-env", (t_key, "auth"), {"type": "bearer"})
        s("auth-unknown-type", (t_key, "auth"), {"type": "oauth", "token_env": "FZ_TOKEN"})
        s("auth-basic-no-password", (t_key, "auth"), {"type": "basic", "username": "u"})
        s("auth-unset-env", (t_key, "auth"), {"type": "bearer", "token_env": UNSET},
          dotted((t_key, "auth", "token_env")))
        s("auth-unused-field", (t_key, "auth"), {"type": "none", "token_env": "FZ_TOKEN"},
          dotted((t_key, "auth", "token_env")))
        s("method-delete", (t_key, "request", "method"), "DELETE")
        s("header-non-ascii", (t_key, "request", "headers"), {"X-Name": "café"},
          dotted((t_key, "request", "headers", "X-Name")))
        s("header-bad-name", (t_key, "request", "headers"), {"X(Name)": "v"}, dotted((t_key, "request", "headers")))
        s("body-syntax", (t_key, "request", "body"), {"prompt": "{{ question"}, dotted((t_key, "request", "body")))
        s("body-undefined", (t_key, "request", "body"), {"prompt": "{{ no_such_var }}"},
          dotted((t_key, "request", "body")))
        s("timeout-zero", (t_key, "request", "timeout_seconds"), 0)
        s("result-field-empty", (t_key, "response", "result_field"), "")
        if t_key == "api":
            s("api-mock", ("api", "mock_mode"), True)
            s("api-adapter", ("api", "adapter_enabled"), True)
            s("api-models", ("api", "models"), {"a": {"endpoint": "http://x"}})
            s("api-prompt-on-http", ("api", "prompt"), "hi")
            s("api-name-empty", ("api", "name"), "")
            s("api-no-endpoint", ("api", "endpoint"), None, "api")
    if kind == "litellm":
        s("model-empty", (t_key, "model"), "")
        s("model-unknown-local", (t_key, "model"), "local/llama-9000")
        s("api-base-scheme", (t_key, "api_base"), "localhost:11434")
        s("api-base-no-host", (t_key, "api_base"), "https://")
        s("api-key-env-unset", (t_key, "api_key_env"), UNSET)
        s("prompt-syntax", (t_key, "prompt"), "{% if %}", dotted((t_key,)))
        s("prompt-undefined", (t_key, "prompt"), "Q: {{ questoin }}", dotted((t_key,)))
        if t_key == "target":
            if "messages" in t:
                s("prompt-and-messages", (t_key, "prompt"), "Q: {{ question }}", dotted((t_key,)))
            else:
                s("prompt-and-messages", (t_key, "messages"), [{"role": "user", "content": "x"}], dotted((t_key,)))
            s("messages-empty", (t_key, "messages"), [], dotted((t_key,)))
            s("message-role", (t_key, "messages"), [{"role": "boss", "content": "x"}], dotted((t_key, "messages")))
            s("message-no-content", (t_key, "messages"), [{"role": "user"}], dotted((t_key, "messages")))
            s("call-params-unknown", (t_key, "call_params"), ["no_such_param"], dotted((t_key, "call_params")))
            s("params-not-map", (t_key, "params"), "temperature=1")
            s("retry-too-many", (t_key, "retry", "max_retries"), 500)
            s("rate-limit-zero", (t_key, "rate_limit_per_second"), 0)
            s("backoff-initial-gt-max", (t_key, "retry"), {"backoff_initial_seconds": 30, "backoff_max_seconds": 5},
              dotted((t_key, "retry", "backoff_initial_seconds")))
            s("exec-timeout-conflict", (), {**data, "target": {**t, "timeout_seconds": 10},
                                            "optimization": {**data.get("optimization", {}),
                                                             "execution": {"timeout_seconds": 20}}},
              "optimization.execution.timeout_seconds")
    if t_key == "target":
        s("target-type-unknown", ("target", "type"), "grpc")
        s("timeout-negative", ("target", "timeout_seconds"), -1)
        s("timeout-huge", ("target", "timeout_seconds"), 1e12)
    s("both-target-and-api", ("api" if t_key == "target" else "target",),
      {"name": "x", "model": "m"} if t_key == "target" else {"type": "python", "function": "fz_funcs:call"}, None)
    # ---- search space
    s("params-empty", ("search_space", "parameters"), {})
    s("param-type-unknown", ("search_space", "parameters", p0), {"type": "gaussian", "min": 0, "max": 1})
    s("categorical-empty", ("search_space", "parameters", p0), {"type": "categorical", "values": []})
    s("categorical-duplicates", ("search_space", "parameters", p0), {"type": "categorical", "values": ["a", "b", "a"]})
    s("categorical-true-and-1", ("search_space", "parameters", p0), {"type": "categorical", "values": [1, True]})
    s("categorical-template-syntax", ("search_space", "parameters", p0),
      {"type": "categorical", "values": {"a": "{{ input", "b": "x"}})
    s("categorical-template-undefined", ("search_space", "parameters", p0),
      {"type": "categorical", "values": {"a": "{{ nothing_here }}", "b": "x"}})
    s("continuous-min-gt-max", ("search_space", "parameters", p0), {"type": "continuous", "min": 2, "max": 1})
    s("continuous-inf", ("search_space", "parameters", p0), {"type": "continuous", "min": 0, "max": INF})
    s("continuous-nan", ("search_space", "parameters", p0), {"type": "continuous", "min": NAN, "max": 1})
    s("continuous-too-wide", ("search_space", "parameters", p0), {"type": "continuous", "min": -1e308, "max": 1e308})
    s("continuous-step-zero", ("search_space", "parameters", p0), {"type": "continuous", "min": 0, "max": 1, "step": 0})
    s("continuous-log-zero", ("search_space", "parameters", p0),
      {"type": "continuous", "min": 0, "max": 1, "log": True})
    s("continuous-missing-max", ("search_space", "parameters", p0), {"type": "continuous", "min": 0})
    s("discrete-empty", ("search_space", "parameters", p0), {"type": "discrete", "values": []})
    s("discrete-text", ("search_space", "parameters", p0), {"type": "discrete", "values": [1, "two"]})
    s("discrete-bool", ("search_space", "parameters", p0), {"type": "discrete", "values": [1, True]})
    s("discrete-values-and-range", ("search_space", "parameters", p0),
      {"type": "discrete", "values": [1], "min": 0, "max": 3})
    s("discrete-fraction-min", ("search_space", "parameters", p0), {"type": "discrete", "min": 0.5, "max": 3})
    s("discrete-huge", ("search_space", "parameters", p0), {"type": "discrete", "min": 0, "max": 10**30})
    s("discrete-no-range", ("search_space", "parameters", p0), {"type": "discrete"})
    s("param-reserved-name", ("search_space", "parameters", "input"), {"type": "categorical", "values": [1, 2]})
    s("param-long-name", ("search_space", "parameters", "p" * 300), {"type": "categorical", "values": [1, 2]},
      "search_space.parameters")
    s("param-newline-name", ("search_space", "parameters", "a\nb"), {"type": "categorical", "values": [1, 2]},
      "search_space.parameters")
    s("param-not-map", ("search_space", "parameters", p0), [1, 2, 3])
    # ---- evaluation
    tc = ("evaluation", "test_cases")
    s("cases-missing-file", tc, {"path": "no/such/cases.jsonl"}, dotted(tc + ("path",)))
    s("cases-dir", tc, {"path": "fz_dir"}, dotted(tc + ("path",)))
    s("cases-bad-json", tc, {"path": "fz_bad.json"}, dotted(tc + ("path",)))
    s("cases-both", tc, {"path": "fz_cases.jsonl", "inline": [{"input": 1}]}, dotted(tc))
    s("cases-neither", tc, {}, dotted(tc))
    s("cases-inline-empty", tc, {"inline": []}, dotted(tc + ("inline",)))
    s("cases-inline-no-input", tc, {"inline": [{"expected": 1}]}, dotted(tc + ("inline",)))
    s("cases-inline-dup-ids", tc, {"inline": [{"id": 1, "input": "a", "expected": "a"},
                                              {"id": 1, "input": "b", "expected": "b"}]}, dotted(tc + ("inline",)))
    s("cases-inline-not-list", tc, {"inline": {"input": "a"}}, dotted(tc + ("inline",)))
    s("cases-limit-zero", tc + ("limit",), 0)
    s("cases-augmentation", tc + ("augmentation",), {"enabled": True, "mutation_rate": 0.3})
    mp = ("evaluation", "metrics")
    s("metrics-empty", mp, {})
    s("weights-all-zero", mp, {k: {**v, "weight": 0} if isinstance(v, dict) else v for k, v in metrics.items()},
      dotted(mp))
    s("weight-negative", mp + (m0, "weight"), -1)
    s("direction-sideways", mp + (m0, "type"), "sideways")
    s("function-unknown", mp + (m0, "function"), "no_such_metric")
    s("function-missing-module", mp + (m0, "function"), "no_such_mod_xyz:score")
    s("function-import-raises", mp + (m0, "function"), "fz_boom:call")
    s("function-not-callable", mp + (m0, "function"), "fz_funcs:VALUE")
    if not has_custom:
        s("metric-cannot-infer", mp + ("quality_zz",), {"weight": 1}, dotted(mp + ("quality_zz",)))
    s("regex-bad-pattern", mp + ("rx",), {"function": "regex", "args": {"pattern": "(unclosed"}}, dotted(mp + ("rx",)))
    s("regex-ignore-case-int", mp + ("rx",), {"function": "regex", "args": {"pattern": "a", "ignore_case": 1}},
      dotted(mp + ("rx", "args", "ignore_case")))
    s("regex-arg-typo", mp + ("rx",), {"function": "regex", "args": {"patern": "a"}},
      dotted(mp + ("rx", "args", "patern")))
    s("schema-missing", mp + ("js",), {"function": "json_schema"}, dotted(mp + ("js",)))
    s("schema-invalid", mp + ("js",), {"function": "json_schema", "args": {"schema": {"type": 12}}},
      dotted(mp + ("js",)))
    s("schema-file-invalid", mp + ("js",), {"function": "json_schema", "args": {"schema": "fz_badschema.json"}},
      dotted(mp + ("js",)))
    s("schema-file-missing", mp + ("js",), {"function": "json_schema", "args": {"schema": "nope.json"}},
      dotted(mp + ("js",)))
    s("numeric-tolerance-text", mp + ("nm",), {"function": "numeric", "args": {"tolerance": "close"}},
      dotted(mp + ("nm", "args", "tolerance")))
    s("numeric-tolerance-negative", mp + ("nm",), {"function": "numeric", "args": {"tolerance": -1}},
      dotted(mp + ("nm",)))
    s("similarity-args", mp + ("sm",), {"function": "similarity", "args": {"threshold": 0.5}},
      dotted(mp + ("sm", "args")))
    s("latency-measure", mp + ("lt",), {"function": "latency", "type": "lower_is_better", "args": {"measure": "cpu"}},
      dotted(mp + ("lt",)))
    s("judge-on-contains", mp + ("jc",), {"function": "contains", "judge": {"model": "local/gemma-3-270m"}},
      dotted(mp + ("jc", "judge")))
    s("judge-unset-key", mp + ("jd",), {"function": "llm_judge", "judge": {"model": "openai/x", "api_key_env": UNSET}},
      dotted(mp + ("jd", "judge")))
    s("judge-bad-api-base", mp + ("jd",), {"function": "llm_judge", "judge": {"api_base": "nope"}},
      dotted(mp + ("jd", "judge", "api_base")))
    s("judge-local-unknown", mp + ("jd",), {"function": "llm_judge", "judge": {"model": "local/other"}},
      dotted(mp + ("jd", "judge", "model")))
    s("lower-threshold-negative", mp + ("lt",), {"function": "latency", "type": "lower_is_better", "threshold": -5},
      dotted(mp + ("lt", "threshold")))
    s("budget-per-call-on-higher", mp + ("bq",), {"function": "contains", "budget_per_call": 0.1},
      dotted(mp + ("bq", "budget_per_call")))
    s("metric-long-name", mp + ("m" * 300,), {"function": "contains"}, "evaluation.metrics")
    s("custom-evaluator-missing", ("evaluation", "custom_evaluator"),
      {"module": "no_such_eval_mod", "function": "f"}, "evaluation")
    s("custom-evaluator-incomplete", ("evaluation", "custom_evaluator"), {"module": "fz_funcs"},
      "evaluation.custom_evaluator")
    s("expected-missing", tc, {"inline": [{"input": {"question": "x"}}]}, "evaluation")
    # ---- optimization
    op = ("optimization",)
    for label, path, value in [
        ("algorithm-unknown", ("algorithm",), "bayesian"), ("seed-negative", ("seed",), -1),
        ("seed-2**63", ("seed",), 2**63), ("seed-huge", ("seed",), 10**40), ("seed-fraction", ("seed",), 1.5),
        ("mab-strategy", ("mab", "strategy"), "ucb1"), ("mab-confidence", ("mab", "confidence_level"), 0.9),
        ("mab-exploration", ("mab", "exploration_rate"), 1.5), ("mab-bins", ("mab", "bins"), 1),
        ("pop-zero", ("evolution", "population_size"), 0), ("pop-huge", ("evolution", "population_size"), 10**7),
        ("generations-zero", ("evolution", "generations"), 0), ("mutation-rate", ("evolution", "mutation_rate"), 1.5),
        ("crossover-negative", ("evolution", "crossover_rate"), -0.1),
        ("tournament-zero", ("evolution", "tournament_size"), 0),
        ("esg-zero", ("evolution", "early_stopping_generations"), 0),
        ("concurrency-zero", ("execution", "concurrency"), 0), ("retries-50", ("execution", "max_retries"), 50),
        ("exec-timeout-inf", ("execution", "timeout_seconds"), INF),
        ("retry-delay-negative", ("execution", "retry_delay_seconds"), -1),
        ("patience-zero", ("execution", "early_stopping", "patience"), 0),
        ("min-improvement-nan", ("execution", "early_stopping", "min_improvement"), NAN),
        ("max-calls-zero", ("budget", "max_calls"), 0), ("max-cost-negative", ("budget", "max_cost_usd"), -1),
        ("max-seconds-inf", ("budget", "max_seconds"), INF), ("warm-start-negative", ("warm_start",), -1),
        ("warm-start-huge", ("warm_start",), 10**30),
    ]:
        s(label, op + path, value)
    pop = data.get("optimization", {}).get("evolution", {}).get("population_size", 8)
    s("elite-ge-pop", op, {**data.get("optimization", {}), "execution": {},
                           "evolution": {"population_size": 3, "elite_size": 3, "generations": 2}},
      dotted(op + ("evolution", "elite_size")))
    s("epg-conflict", op, {**data.get("optimization", {}), "evolution": {"population_size": 4},
                           "execution": {"experiments_per_generation": 6}},
      dotted(op + ("execution", "experiments_per_generation")))
    s("esg-conflicts-patience", op, {**data.get("optimization", {}), "evolution": {"early_stopping_generations": 2},
                                     "execution": {"early_stopping": {"patience": 5}}},
      dotted(op + ("evolution", "early_stopping_generations")))
    del pop
    # ---- output
    s("formats-pdf", ("output", "formats"), ["json", "pdf"], "output.formats[1]")
    s("visualization-pie", ("output", "visualizations"), ["pie"], "output.visualizations[0]")
    s("plot-format-svg", ("output", "plot_format"), "svg")
    s("export-format-toml", ("output", "export_best_config", "format"), "toml")
    s("save-path-is-file", ("output", "save_path"), "fz_file.txt")
    s("save-path-under-file", ("output", "save_path"), "fz_file.txt/results")
    s("save-path-empty", ("output", "save_path"), "")
    s("export-path-is-dir", ("output", "export_best_config", "output_path"), str(Path(tempfile.gettempdir())))
    # ---- storage
    s("storage-dir", ("storage", "path"), "fz_dir")
    s("storage-not-sqlite", ("storage", "path"), "fz_notsqlite.db")
    s("storage-under-file", ("storage", "path"), "fz_file.txt/x.db")
    s("storage-empty", ("storage", "path"), "")
    # ---- legacy
    s("legacy-backend", ("legacy", "tracking_backend"), "mlflow")
    s("legacy-formats", ("legacy", "export_formats"), ["xml"], "legacy.export_formats[0]")
    s("legacy-sqlite-conflict", (), {**data, "storage": {"path": "a.db"}, "legacy": {"sqlite_path": "b.db"}},
      "legacy.sqlite_path")
    s("legacy-export-dir-conflict", (), {**data, "output": {"save_path": "a"}, "legacy": {"export_dir": "b"}},
      "legacy.export_dir")
    s("legacy-disabled-warm-start", (), {**data, "optimization": {**data.get("optimization", {}), "warm_start": 3},
                                         "legacy": {"enabled": False}}, "legacy.enabled")
    s("legacy-session-empty", ("legacy", "session_id"), "")
    s("legacy-sqlite-dir", ("legacy", "sqlite_path"), "fz_dir", None if "storage" in data else "legacy.sqlite_path")
    # ---- society, tracing
    s("society-agent-unknown", (), {**data, "society": {"enabled": True, "agents": {"nope": 1.0}}},
      "society.agents.nope")
    s("society-sao-pairs", ("society", "sao", "response_pairs"), 3)
    s("society-sao-judge", ("society", "sao", "judge"), "coin")
    s("society-share-negative", (), {**data, "society": {"enabled": True, "agents": {"rlp": -1.0}}},
      "society.agents.rlp")
    s("society-rlp-g", ("society", "rlp", "G"), 0)
    s("society-llm-temp", ("society", "llm", "temperature"), INF)
    s("weave-enabled-text", ("tracing", "weave", "enabled"), "sometimes")
    s("weave-project-empty", ("tracing", "weave", "project"), "")
    # ---- study, root
    s("study-empty", ("study",), "")
    s("study-100kb", ("study",), "s" * 100_000)
    s("study-newline", ("study",), "line1\nline2")
    s("study-list", ("study",), ["a"])
    s("missing-search-space", ("search_space",), None, "search_space")
    s("missing-evaluation", ("evaluation",), None, "evaluation")
    # ---- interpolation
    for label, text in [("empty", "${}"), ("digit", "${1X}"), ("unclosed", "${FZ_SET"), ("colon", "${FZ_SET:x}"),
                        ("unset", "${" + UNSET + "}"), ("nested", "${FZ_X:-${FZ_Y}}"), ("dash", "${FZ_SET-x}")]:
        s(f"interp-{label}", ("output", "save_path"), text)

    out = []
    for label, path, value, expected in S:
        section = str(path[0]) if path else "root"
        if not path:
            new = value
        elif value is None:
            try:
                new = without(data, path)
            except (KeyError, TypeError):
                continue
        else:
            new = with_value(data, path, value)
        if path[:2] in (("output", "save_path"), ("storage", "path"), ("output", "formats")) and "legacy" in new:
            # legacy.export_dir / sqlite_path / export_formats are other names of these: drop them
            moved = ("export_dir", "sqlite_path", "export_formats")
            legacy = {k: v for k, v in new["legacy"].items() if k not in moved}
            new = {**new, "legacy": legacy}
        out.append(Variant(f"{name}:{label}", name, section, f"semantic-{label}", dump(new), "reject",
                           "field" if expected else "line", expected or None))
    return out


LOOPING_TEMPLATES = {
    "range-1e9": "{% for i in range(10**9) %}x{% endfor %}",
    "nested-ranges": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "string-times-1e9": "{{ 'x' * 10**9 }}",
    "list-times-1e8": "{{ [1] * 10**8 }}",
    "center-1e9": "{{ 'x'|center(10**9) }}",
    "percent-width": "{{ '%1000000000s' % 1 }}",
    "namespace-doubling": "{% set ns = namespace(a='x') %}{% for i in range(80) %}{% set ns.a = ns.a ~ ns.a %}"
                          "{% endfor %}{{ ns.a }}",
    "dunder": "{{ ''.__class__.__mro__ }}",
    "recursive-macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}
"""Templates that loop, blow up or reach into Python: each must be a clear error, quickly."""


def round2(name: str, data: dict) -> list[Variant]:
    """Hardening round 2: shapes that traced back, hung or were accepted as nonsense."""
    t_key = "target" if "target" in data else "api"
    t = data[t_key]
    kind = t.get("type", "litellm") if t_key == "target" else ("litellm" if "model" in t else "http")
    params = data["search_space"]["parameters"]
    p0 = next(iter(params))
    pp = ("search_space", "parameters", p0)
    S: list[tuple[str, tuple[Any, ...], Any, str | None]] = []

    def s(label: str, path: tuple[Any, ...], value: Any, expected: str | None = "") -> None:
        S.append((label, path, value, dotted(path) if expected == "" else expected))

    # ---- numbers that overflow
    s("step-overflows", pp, {"type": "continuous", "min": 0, "max": 1e308, "step": 0.1}, dotted(pp + ("step",)))
    s("step-tiny", pp, {"type": "continuous", "min": 0, "max": 1e300, "step": 1e-300}, dotted(pp + ("step",)))
    s("step-2**60-points", pp, {"type": "continuous", "min": 0, "max": 2.0**60, "step": 0.5}, dotted(pp + ("step",)))
    # ---- control characters in names and labels
    s("label-tab", pp, {"type": "categorical", "values": {"a\tb": 1, "c": 2}}, dotted(pp + ("values",)))
    s("label-escape", pp, {"type": "categorical", "values": {"a\x1b[31m": 1, "c": 2}}, dotted(pp + ("values",)))
    s("param-name-escape", ("search_space", "parameters", "a\x1bb"), {"type": "categorical", "values": [1, 2]},
      "search_space.parameters")
    s("metric-name-tab", ("evaluation", "metrics", "m\tx"), {"function": "contains"}, "evaluation.metrics")
    # ---- templates that loop or escape
    for label, template in LOOPING_TEMPLATES.items():
        s(f"template-{label}", pp, {"type": "categorical", "values": {"a": "plain", "loop": template}},
          dotted(pp + ("values", "loop")))
    if kind == "litellm" and t_key == "target" and "messages" not in t:
        s("prompt-range-1e9", (t_key, "prompt"), LOOPING_TEMPLATES["range-1e9"])
    if kind == "http":
        s("body-range-1e9", (t_key, "request", "body"), {"prompt": LOOPING_TEMPLATES["range-1e9"]},
          dotted((t_key, "request", "body")))
    # ---- URLs, addresses, ports, env var names, model names, paths
    s("society-api-base-text", ("society", "llm", "api_base"), "not a url")
    s("society-api-base-port", ("society", "llm", "api_base"), "http://127.0.0.1:99999/v1")
    s("society-api-base-ftp", ("society", "llm", "api_base"), "ftp://127.0.0.1/v1")
    s("society-key-env-space", ("society", "llm", "api_key_env"), "bad name")
    s("society-key-env-digit", ("society", "llm", "api_key_env"), "1KEY")
    s("society-model-space", ("society", "llm", "model"), "open ai/gpt")
    s("rlp-model-space", ("society", "rlp", "model_name"), "a b")
    s("sao-model-tab", ("society", "sao", "model_name"), "x\ty")
    s("sao-temperatures", ("society", "sao", "response_temperatures"), [-5, 100],
      "society.sao.response_temperatures")
    ray = ("optimization", "execution", "ray")
    for label, address in [("port-99999", "127.0.0.1:99999"), ("port-0", "h:0"), ("client-port-0", "ray://h:0"),
                           ("client-port-huge", "ray://h:123456"), ("space", "bad host:10001"),
                           ("no-port", "h:"), ("no-host", ":80"), ("client-empty", "ray://"),
                           ("path", "h:80/x"), ("url", "http://h:80")]:
        s(f"ray-address-{label}", ray + ("address",), address)
    for label, names in [("space", ["bad name"]), ("digit", ["1X"]), ("dash", ["A-B"]), ("empty", [""])]:
        s(f"ray-env-vars-{label}", ray + ("env_vars",), names, dotted(ray + ("env_vars",)))
    s("ray-runtime-env-name", ray + ("runtime_env",), {"env_vars": {"BAD-NAME": "x"}}, dotted(ray + ("runtime_env",)))
    s("ray-memory-fraction", ray + ("resources",), {"memory": 0.5}, dotted(ray + ("resources",)))
    s("ray-resource-empty", ray + ("resources",), {"": 1}, dotted(ray + ("resources",)))
    s("storage-nul", ("storage", "path"), "a\x00b.db")
    s("save-path-newline", ("output", "save_path"), "res\nults")
    s("export-path-tab", ("output", "export_best_config", "output_path"), "best\t.yaml")
    s("cases-path-nul", ("evaluation", "test_cases"), {"path": "cases\x00.jsonl"},
      dotted(("evaluation", "test_cases", "path")))
    mp = ("evaluation", "metrics", "jz")
    s("judge-key-env-space", mp, {"function": "llm_judge", "judge": {"api_key_env": "bad name"}},
      dotted(mp + ("judge", "api_key_env")))
    s("judge-model-space", mp, {"function": "llm_judge", "judge": {"model": "a b"}}, dotted(mp + ("judge", "model")))
    s("judge-api-base-port", mp, {"function": "llm_judge", "judge": {"api_base": "http://h:99999"}},
      dotted(mp + ("judge", "api_base")))
    if kind == "http" and t_key == "target":
        s("auth-token-env-space", (t_key, "auth"), {"type": "bearer", "token_env": "bad name"},
          dotted((t_key, "auth", "token_env")))
        s("auth-username-colon", (t_key, "auth"), {"type": "basic", "username": "a:b", "password_env": "FZ_TOKEN"},
          dotted((t_key, "auth", "username")))
        for f, path in (("result_field", "a..b"), ("cost_field", ".cost"), ("error_field", "x.")):
            s(f"response-{f}-empty-part", (t_key, "response", f), path)
    if kind == "litellm" and t_key == "target":
        s("api-key-env-space", (t_key, "api_key_env"), "bad name")
        s("api-base-port", (t_key, "api_base"), "http://h:99999/v1")
        s("api-base-text", (t_key, "api_base"), "not a url")
        s("model-space", (t_key, "model"), "open ai/gpt")
    # ---- learner options: validate refuses what the run would
    society = {k: v for k, v in (data.get("society") or {}).items() if k != "learner"}
    for label, learner in [("synergy-unknown", {"plugin": "synergy", "nonsense_option": 1}),
                           ("synergy-shifts", {"plugin": "synergy", "algorithm": "double_dqn", "shifts": [2.0]}),
                           ("synergy-ema-alpha", {"plugin": "synergy", "ema_alpha": 5.0}),
                           ("synergy-predictor", {"plugin": "synergy", "predictor": "zzz"}),
                           ("synergy-algorithm", {"plugin": "synergy", "algorithm": "nope"}),
                           ("ppo-unknown", {"plugin": "ppo", "nonsense_option": 1}),
                           ("plugin-unknown", {"plugin": "no_such_learner"})]:
        s(f"learner-{label}", ("society",), {**society, "enabled": True, "learner": learner}, "society.learner")

    out = []
    for label, path, value, expected in S:
        new = with_value(data, path, value)
        out.append(Variant(f"{name}:r2-{label}", name, str(path[0]), f"r2-{label.split('-')[0]}", dump(new), "reject",
                           "field" if expected else "line", expected or None))
    # valid learner settings stay valid (and the learner starts: see InProcess.optimize)
    for label, learner in [("synergy", {"plugin": "synergy"}),
                           ("synergy-sac", {"plugin": "synergy", "algorithm": "sac"}), ("ppo", {"plugin": "ppo"})]:
        out.append(Variant(f"{name}:r2-valid-learner-{label}", name, "valid", "r2-valid-learner",
                           dump(with_value(data, ("society",), {**society, "enabled": True, "learner": learner})),
                           "accept", "file"))
    # a lone surrogate, written the way YAML allows it (a double-quoted escape)
    if "study" in data:
        body = dump({**data, "study": "SURROGATE_PLACEHOLDER"}).replace(b"SURROGATE_PLACEHOLDER", b'"t\\udc80"')
        out.append(Variant(f"{name}:r2-study-surrogate", name, "study", "r2-surrogate", body, "reject", "field",
                           "study"))
    body = dump(with_value(data, ("output", "save_path"), "SURROGATE_PLACEHOLDER")).replace(
        b"SURROGATE_PLACEHOLDER", b'"res\\ud800ults"')
    out.append(Variant(f"{name}:r2-path-surrogate", name, "output", "r2-surrogate", body, "reject", "field",
                       "output.save_path"))
    return out


RUNTIME_CONFIG = """\
study: fz-runtime-{fn}
target: {{type: python, function: "fz_funcs:{fn}", retry: {{max_retries: 0}}}}
search_space:
  parameters:
    x: {{type: categorical, values: [a, b]}}
evaluation:
  test_cases:
    inline: [{{input: one, expected: one}}, {{input: two, expected: two}}]
  metrics:
    exact: {{function: exact_match}}
optimization:
  evolution: {{population_size: 2, generations: 1, elite_size: 1}}
  racing: {{enabled: false}}
  selection: {{confirm_top: 0}}
output: {{save_path: fz_runtime_results/{fn}, visualizations: []}}
storage: {{path: .convergence/fz-runtime-{fn}.db}}
"""


def runtime_variants() -> list[Variant]:
    """Valid configs whose target misbehaves when called: the run must end cleanly (exit 0, or 3 when every
    call failed), never with a traceback or as if the user pressed Ctrl-C."""
    out = []
    for fn in ("exits", "interrupts", "base_error", "async_exits", "async_interrupts", "half"):
        out.append(Variant(f"runtime:{fn}", "full_python", "runtime", f"runtime-{fn}",
                           RUNTIME_CONFIG.format(fn=fn).encode(), "accept", "file", run=True))
    return out


def text_level(name: str, text: str, data: dict) -> list[Variant]:
    """Damage to the file itself, and valid edits that must keep validating."""
    out: list[Variant] = []
    enc = text.encode("utf-8")

    def v(label: str, body: bytes, expect: str = "reject", where: str = "line", fieldp: str | None = None,
          section: str = "file") -> None:
        out.append(Variant(f"{name}:{label}", name, section, f"text-{label}", body, expect, where, fieldp))

    first_key = next(iter(data))
    v("dup-top-key", enc + f"\n{first_key}: null\n".encode(), where="field", fieldp=first_key)
    v("dup-nested-key", dump(data).replace(b"search_space:\n  parameters:\n",
                                           b"search_space:\n  parameters: {}\n  parameters:\n"), where="field",
      fieldp="search_space.parameters")
    v("non-utf8", enc.replace(b"search_space", b"search_\xff\xfespace", 1))
    v("latin1", enc + "\n# café\n".encode("latin-1"))
    v("binary-nul", enc[:40] + b"\x00\x01\x02" + enc[40:])
    v("utf16", text.encode("utf-16"))
    v("random-bytes", bytes(range(256)) * 4)
    v("recursive-alias", enc + b"\nzz_loop: &loop [*loop]\n")
    v("recursive-alias-map", enc + b"\nzz_loop: &loop {a: *loop}\n")
    bomb = "\nzz_bomb:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  l{i}: &l{i} [{', '.join(['*l' + str(i - 1)] * 10)}]\n" for i in range(1, 9))
    v("alias-bomb", enc + bomb.encode())
    v("deep-nesting", enc + b"\nzz_deep: " + b"[" * 400 + b"]" * 400 + b"\n")
    v("deep-nesting-150", enc + b"\nzz_deep: " + b"[" * 150 + b"]" * 150 + b"\n")
    v("tab-indent", enc.replace(b"\n  ", b"\n\t", 1))
    v("unclosed-flow", enc + b"\nzz: [a, b\n")
    v("two-documents", enc + b"\n---\nstudy: other\n")
    v("binary-tag", enc + b"\nstudy: !!binary aGVsbG8=\n", where="field", fieldp="study")
    v("set-tag", enc.replace(b"search_space:", b"zz_set: !!set {a, b}\nsearch_space:", 1),
      where="field", fieldp="zz_set")
    v("python-tag", enc + b"\nzz: !!python/object/apply:os.system [echo hi]\n", where="field", fieldp="zz")
    v("custom-tag", enc + b"\nzz: !secret xyz\n", where="field", fieldp="zz")
    v("empty-file", b"", where="file")
    v("only-comments", b"# nothing here\n", where="file")
    v("top-level-list", b"- a\n- b\n")
    v("top-level-scalar", b"just text\n")
    v("over-size-limit", enc + b"\n# " + b"x" * 1_100_000 + b"\n", where="file")
    v("key-100kb", enc + b"\n" + b"k" * 100_000 + b": 1\n")  # YAML keys are limited to 1024 characters
    v("key-1000", enc + b"\n" + b"k" * 1000 + b": 1\n", where="field", fieldp="k")
    v("markup-key", enc + b"\n'[/]': 1\n", where="field", fieldp="[/]")
    v("markup-unknown-section", enc + b"\n'[bold]x[/]': [/]\n", where="field", fieldp="[bold]x[/]")
    v("key-complex", enc + b"\n? [a, b]\n: 1\n")
    v("control-char", enc + b"\nstudy: \x07bell\n")

    # valid edits: must still validate
    ok = lambda label, body: v(label, body, expect="accept", where="file", section="valid")  # noqa: E731
    ok("unchanged", enc)
    ok("comments", b"# a comment\n" + enc.replace(b"\n", b"  # trailing\n", 1))
    ok("crlf", enc.replace(b"\n", b"\r\n"))
    ok("bom", b"\xef\xbb\xbf" + enc)
    ok("json-style", json.dumps(data).encode())
    if "study" in data:
        ok("study-markup", dump({**data, "study": "[bold]x[/] [/]"}))
        ok("study-date-like", dump({**data, "study": "2024-01-01"}).replace(b"'2024-01-01'", b"2024-01-01"))
        ok("study-interpolated", dump({**data, "study": "run-${FZ_SET}-$${LITERAL}-${" + UNSET + ":-fallback}"}))
        ok("study-dollars", dump({**data, "study": "costs $5 and $$10"}))
    aliased = copy.deepcopy(data)
    metrics = aliased["evaluation"]["metrics"]
    metrics["zz_alias_copy"] = metrics[next(iter(metrics))]  # the same object twice: dumped as &anchor / *alias
    ok("anchor-alias", dump(aliased))
    opt = data.get("optimization", {})
    if isinstance(opt, dict):
        evo = opt.get("evolution", {})
        pop = evo.get("population_size", 8)
        ok("epg-equal", dump({**data, "optimization": {**opt, "execution": {**opt.get("execution", {}),
                                                                             "experiments_per_generation": pop}}}))
        ok("confidence-default", dump({**data, "optimization": {**opt, "mab": {**opt.get("mab", {}),
                                                                                "confidence_level": 0.95}}}))
        ok("int-from-env", dump({**data, "optimization": {**opt, "warm_start": "${FZ_NUM}"}}))
    if "legacy" not in data and "storage" not in data:
        ok("legacy-sqlite-path", dump({**data, "legacy": {"sqlite_path": ".convergence/legacy.db",
                                                          "tracking_backend": "sqlite"}}))
    return out


def generate() -> list[Variant]:
    variants: list[Variant] = []
    for name, (_, text) in bases().items():
        data = yaml.safe_load(text)
        for gen in (type_sweep, null_and_missing_sweep, unknown_key_sweep, semantic):
            variants += gen(name, data)
        variants += text_level(name, text, data)
        variants += round2(name, data)
    variants += runtime_variants()
    seen: set[str] = set()
    unique = []
    for i, v in enumerate(variants):
        if v.id in seen:
            v.id += f"#{i}"
        seen.add(v.id)
        v.filename = f"fz_{i:05d}.yaml"
        unique.append(v)
    return unique


def sample(variants: list[Variant], n: int | None) -> list[Variant]:
    """Deterministic, stratified: every (base, section, kind) group is represented,
    then groups are filled round-robin up to ``n``."""
    if n is None or n >= len(variants):
        return variants
    groups: dict[tuple[str, str, str], list[Variant]] = {}
    for v in variants:
        groups.setdefault((v.base, v.section, v.kind), []).append(v)
    # interleave: one group of each config in turn, sections and kinds in turn within a config
    by_base: dict[str, list[tuple[str, str, str]]] = {}
    for key in sorted(groups, key=lambda k: (k[2], k[1])):
        by_base.setdefault(key[0], []).append(key)
    order: list[tuple[str, str, str]] = []
    lists = [_spread(keys) for keys in by_base.values()]
    for i in range(max(len(x) for x in lists)):
        order += [x[i] for x in lists if i < len(x)]
    chosen: list[Variant] = []
    depth = 0
    while len(chosen) < n:
        added = False
        for key in order:
            g = groups[key]
            if depth < len(g):
                # spread picks across the group rather than taking its head
                idx = (depth * 7919) % len(g)
                while g[idx] in chosen:
                    idx = (idx + 1) % len(g)
                chosen.append(g[idx])
                added = True
                if len(chosen) >= n:
                    break
        if not added:
            break
        depth += 1
    return chosen


def _spread(keys: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Reorder (base, section, kind) keys so consecutive ones differ in section."""
    by_section: dict[str, list[tuple[str, str, str]]] = {}
    for k in keys:
        by_section.setdefault(k[1], []).append(k)
    out: list[tuple[str, str, str]] = []
    lists = list(by_section.values())
    for j, x in enumerate(lists):  # rotate so the first pick of each section is of a different kind
        k = j % len(x)
        x[:] = x[k:] + x[:k]
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


# --------------------------------------------------------------------------- running

_LINE = re.compile(r":(\d+):")
_FIELD = re.compile(r" (\S+?):(?: |$)")


def locations(stderr: str, path: str) -> list[tuple[bool, bool, str | None]]:
    """(has file, has line, field) of every problem line of a ConfigError report."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("  ") or line.startswith("  ..."):
            continue
        text = line[2:]
        has_file = text.startswith(path)
        rest = text[len(path):] if has_file else text
        m = _LINE.match(rest)
        has_line = m is not None
        rest = rest[m.end() - 1:] if m else rest
        rest = rest[1:] if rest.startswith(":") else rest
        f = _FIELD.match(rest)
        out.append((has_file, has_line, f.group(1) if f else None))
    return out


def judge(o: Outcome, file_arg: str) -> None:
    v = o.variant
    if o.hang or o.traceback:
        return
    if v.expect == "accept":
        if o.rc != 0:
            o.notes.append("wrong rejection")
    else:
        if o.rc == 0:
            o.notes.append("wrong acceptance")
        elif o.rc == 2:
            locs = locations(o.stderr, file_arg)
            if not locs:
                o.notes.append("missing location: no problem lines")
            else:
                need_line = v.where in ("line", "field")
                if not all(f for f, _, _ in locs):
                    o.notes.append("missing location: file")
                elif need_line and not any(ln for _, ln, _ in locs):
                    o.notes.append("missing location: line")
                elif v.where == "field" and not any(fl for _, ln, fl in locs):
                    o.notes.append("missing location: field")
                elif v.field:
                    fields = [fl for _, _, fl in locs if fl]
                    want = v.field

                    def related(a: str) -> bool:
                        return a.startswith(want[:60]) or want.startswith(a[:60])

                    if not any(related(fl) for fl in fields):
                        o.notes.append(f"misplaced: wanted {want[:80]!r}, got {[f[:80] for f in fields][:4]}")
    if o.optimize_traceback:
        o.notes.append("optimize preflight traceback")
    elif o.optimize_rc is not None and o.rc in (0, 2) and (o.optimize_rc == 0) != (o.rc == 0):
        o.notes.append(f"validate/optimize disagree (validate {o.rc}, optimize {o.optimize_rc})")


def run_subprocess(v: Variant, path: Path, timeout: float, env: dict[str, str]) -> Outcome:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "convergence", "validate", path.name], cwd=path.parent,
                              capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(v, None, "", time.perf_counter() - start, hang=True)
    stderr = proc.stderr.decode("utf-8", "replace")
    tb = "Traceback (most recent call last)" in stderr or proc.returncode not in (0, 2)
    return Outcome(v, proc.returncode, stderr, time.perf_counter() - start, traceback=tb)


def _invoke_in_thread(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported as a traceback
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box.get("value")


class InProcess:
    """Runs ``validate`` and ``optimize`` (run stubbed out) through the CLI in this process."""

    def __init__(self) -> None:
        from typer.testing import CliRunner

        import convergence.cli.app as cli_app

        self.app = cli_app
        self.runner = CliRunner()

    def _invoke(self, args: list[str], cwd: Path, timeout: float) -> tuple[bool, Any]:
        def call() -> Any:
            old = os.getcwd()
            os.chdir(cwd)
            try:
                return self.runner.invoke(self.app.app, args)
            finally:
                os.chdir(old)

        return _invoke_in_thread(call, timeout)

    def validate(self, v: Variant, path: Path, timeout: float) -> Outcome:
        start = time.perf_counter()
        done, result = self._invoke(["validate", path.name], path.parent, timeout)
        if not done:
            return Outcome(v, None, "", time.perf_counter() - start, hang=True)
        exc = result.exception
        tb = exc is not None and not isinstance(exc, SystemExit)
        stderr = _stderr(result)
        if tb:
            import traceback as _tb

            stderr += "".join(_tb.format_exception(exc))
        return Outcome(v, result.exit_code, stderr, time.perf_counter() - start, traceback=tb)

    def optimize(self, o: Outcome, path: Path, timeout: float) -> None:
        if o.variant.run:
            self._run_for_real(o, path, timeout)
            return
        started: list[Any] = []
        original = self.app._run_async
        self.app._run_async = lambda fn, *args: started.append(args)  # everything before the first call, no run
        try:
            done, result = self._invoke(["optimize", path.name, "--quiet"], path.parent, timeout)
        finally:
            self.app._run_async = original
        if not done:
            o.optimize_traceback = True
            o.notes.append("optimize preflight hang")
            return
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            o.optimize_traceback = True
            return
        o.optimize_rc = 0 if started and result.exit_code == 0 else result.exit_code
        if o.optimize_rc == 0:
            problem = _learner_start_problem(path)
            if problem is not None:  # the run builds the learner after the first generation is proposed
                o.optimize_rc = 2
                o.notes.append(f"learner refused at the run's start: {problem[:200]}")

    def _run_for_real(self, o: Outcome, path: Path, timeout: float) -> None:
        """The whole run: exit 0, or 3 (every call failed), both clean ends; 130 means the target's own
        KeyboardInterrupt was taken for Ctrl-C."""
        try:
            done, result = self._invoke(["optimize", path.name, "--quiet", "--no-outputs"], path.parent, timeout * 3)
        except BaseException as exc:  # noqa: BLE001 - the target's BaseException escaped the run: a traceback
            import traceback as _tb

            o.optimize_traceback = True
            o.stderr += "".join(_tb.format_exception(exc))
            return
        if not done:
            o.hang = True
            o.notes.append("optimize run hang")
            return
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            o.optimize_traceback = True
            import traceback as _tb

            o.stderr += "".join(_tb.format_exception(exc))
            return
        text = _stderr(result) + result.output
        if "Traceback (most recent call last)" in text:
            o.optimize_traceback = True
            o.stderr += text
            return
        o.optimize_rc = 0 if result.exit_code in (0, 3) else result.exit_code
        if o.optimize_rc != 0:
            o.stderr += text


def _learner_start_problem(path: Path) -> str | None:
    """Start the ``society.learner`` of an accepted config the way a run does (its factory with the run's
    context), so "validate accepts" means "the run's learner starts"."""
    from convergence.config.loader import ConfigError, load_config

    try:
        loaded = load_config(path)
    except ConfigError:
        return None
    cfg = loaded.config
    if cfg.society.learner is None:
        return None
    from convergence.registry import registry
    from convergence.society.learner import LearnerContext

    roster = cfg.society.roster(cfg.optimization.algorithm)
    total = sum(roster.values()) or 1.0
    state = Path(tempfile.mkdtemp(prefix="fz-learner-"))
    try:
        ctx = LearnerContext(agents=list(roster), shares={k: v / total for k, v in roster.items()},
                             options=cfg.society.learner.options, seed=0, study=cfg.study_name, state_dir=state,
                             min_improvement=cfg.optimization.execution.early_stopping.min_improvement,
                             generations=cfg.optimization.evolution.generations)
        learner = registry().load("learner", cfg.society.learner.plugin)(ctx)
        learner.initial_shares()
    except Exception as exc:  # noqa: BLE001 - what the run would report as "failed to start"
        return f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return None


def _stderr(result: Any) -> str:
    try:
        return result.stderr
    except ValueError:
        return result.output


@dataclass
class Report:
    outcomes: list[Outcome]

    def count(self, prefix: str) -> int:
        return sum(1 for o in self.outcomes if any(n.startswith(prefix) for n in o.notes))

    @property
    def tracebacks(self) -> int:
        return sum(1 for o in self.outcomes if o.traceback or o.optimize_traceback)

    @property
    def hangs(self) -> int:
        return sum(1 for o in self.outcomes if o.hang)

    def summary(self) -> dict[str, Any]:
        n = len(self.outcomes)
        rejects = [o for o in self.outcomes if o.variant.expect == "reject"]
        sections = Counter(o.variant.section for o in self.outcomes)
        return {
            "variants": n,
            "broken": len(rejects),
            "valid": n - len(rejects),
            "bases": len({o.variant.base for o in self.outcomes}),
            "sections": dict(sorted(sections.items())),
            "tracebacks": self.tracebacks,
            "hangs": self.hangs,
            "wrong_acceptances": self.count("wrong acceptance"),
            "wrong_rejections": self.count("wrong rejection"),
            "missing_location": self.count("missing location"),
            "misplaced": self.count("misplaced"),
            "validate_optimize_disagreements": self.count("validate/optimize disagree"),
            "slowest_seconds": round(max((o.seconds for o in self.outcomes), default=0.0), 3),
        }

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.traceback or o.hang or o.optimize_traceback or o.notes]


def run(n: int | None = 600, *, in_process: bool = False, timeout: float = 20.0, workers: int | None = None,
        optimize_check: bool = True, progress: bool = False, kinds: tuple[str, ...] = ()) -> Report:
    """Run ``n`` variants (a stratified sample; None: all), only those whose kind starts with one of
    ``kinds`` when given."""
    variants = sample([v for v in generate() if not kinds or v.kind.startswith(kinds)], n)
    old_env = {k: os.environ.get(k) for k in [*ENV, UNSET]}
    os.environ.update(ENV)
    os.environ.pop(UNSET, None)
    env = {**os.environ}
    tmp = Path(tempfile.mkdtemp(prefix="convergence-fuzz-"))
    try:
        make_project(tmp)
        dirs = {name: tmp / rel for name, (rel, _) in bases().items()}
        paths = {}
        for v in variants:
            p = dirs[v.base] / v.filename
            p.write_bytes(v.text)
            paths[v.id] = p
        outcomes: list[Outcome] = []
        ip = InProcess() if (in_process or optimize_check) else None
        if in_process:
            assert ip is not None
            for i, v in enumerate(variants):
                outcomes.append(ip.validate(v, paths[v.id], timeout))
                if progress and i % 50 == 0:
                    print(f"  {i}/{len(variants)}", file=sys.stderr)
        else:
            with cf.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
                futures = [pool.submit(run_subprocess, v, paths[v.id], timeout, env) for v in variants]
                for i, f in enumerate(futures):
                    outcomes.append(f.result())
                    if progress and i % 50 == 0:
                        print(f"  {i}/{len(variants)}", file=sys.stderr)
        if ip is not None:
            for o in outcomes:
                if not o.hang and (optimize_check or o.variant.run):
                    ip.optimize(o, paths[o.variant.id], timeout)
        for o in outcomes:
            judge(o, paths[o.variant.id].name)
        return Report(outcomes)
    finally:
        for k, val in old_env.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val
        shutil.rmtree(tmp, ignore_errors=True)
