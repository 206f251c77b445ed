"""One registry of named parts, built-in and plugged in, found the same way.

Kinds: ``agent`` (a society proposer), ``learner`` (sets the society's
shares), ``metric`` (a per-case metric function), ``target`` (what is
optimized), ``sampler`` (an Optuna sampler, run as a society agent) and
``cli`` (a ``typer.Typer`` app, or a factory returning one, added to the
command line as ``convergence <name> ...``: how a learner plugin brings its
own commands).
Built-ins are entries like any other, with ``distribution = "convergence"``.

A third party adds entries with entry points in the group
``convergence.plugins``, named ``<kind>.<name>``::

    [project.entry-points."convergence.plugins"]
    "agent.greedy" = "my_pkg.agents:make_greedy"
    "cli.greedy" = "my_pkg.cli:app"

Discovery is lazy: nothing is imported until a config names the entry (or,
for a ``cli`` entry, until its sub-command is invoked), so one broken plugin
cannot slow down or break ``convergence --help`` or the others. A name taken
twice, a malformed entry point or a failed import is a :class:`PluginError`
that names the distribution and the entry point; the listing (``convergence
plugins``) shows such problems beside the good entries. What each kind must be is in ``docs/plugins.md``.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from convergence.errors import ConvergenceError

GROUP = "convergence.plugins"
KINDS = ("agent", "learner", "metric", "target", "sampler", "cli")
BUILTIN = "convergence"


class PluginError(ConvergenceError):
    """A plugin that cannot be used: unknown, ambiguous, broken or of the wrong type."""


class SpecError(ValueError):
    """A ``module:attr`` reference that cannot be loaded (the caller adds what it was for)."""


def load_spec(spec: str, base_dir: Path | None = None) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted), with ``base_dir`` importable so a file next to
    the YAML just works. The one loader for targets, metrics and plugins; raises :class:`SpecError`."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name.strip() or not attr_path.strip():
        raise SpecError(f"expected 'module:attribute', got {spec!r}")
    where = "sys.path"
    if base_dir is not None:
        folder = str(Path(base_dir).resolve())
        where = f"{folder} and sys.path"
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise SpecError(f"module {exc.name!r} not found (looked in {where})") from exc
        raise SpecError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise SpecError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:15]
            raise SpecError(f"{getattr(obj, '__name__', module_name)!r} has no attribute {part!r} (has: {public})")
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True, slots=True)
class Entry:
    """One named part: where it lives and who ships it."""

    kind: str
    name: str
    spec: str
    """``module:attr`` of the object (a factory, class or function, by kind)."""
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN

    @property
    def origin(self) -> str:
        if self.builtin:
            return "built-in"
        return f"entry point {self.kind}.{self.name} = {self.spec} ({GROUP})"

    def load(self) -> Any:
        try:
            return load_spec(self.spec)
        except SpecError as exc:
            raise PluginError(f"{self.kind} {self.name!r} from {self._who()}: {exc}") from None

    def _who(self) -> str:
        return "Convergence (built-in)" if self.builtin else (
            f"distribution {self.distribution} {self.version}, entry point {self.kind}.{self.name} = {self.spec}")


_BUILTINS: dict[str, dict[str, str]] = {
    "agent": {
        "evolution": "convergence.society.builtin_agents:evolution",
        "bandit": "convergence.society.builtin_agents:bandit",
        "random": "convergence.society.builtin_agents:random_search",
        "rlp": "convergence.society.builtin_agents:rlp",
        "sao": "convergence.society.builtin_agents:sao",
        "tpe": "convergence.society.builtin_agents:optuna_sampler",
        "gp": "convergence.society.builtin_agents:optuna_sampler",
        "cmaes": "convergence.society.builtin_agents:optuna_sampler",
        "surrogate": "convergence.society.builtin_agents:surrogate",
    },
    "target": {
        "litellm": "convergence.targets.factory:litellm_target",
        "http": "convergence.targets.factory:http_target",
        "python": "convergence.targets.factory:python_target",
    },
    "metric": {
        name: f"convergence.evaluation.metrics:{name}"
        for name in ("exact_match", "contains", "regex", "numeric", "json_valid", "json_schema", "similarity",
                     "latency", "cost", "success")
    },
    "learner": {},
    "sampler": {},
    "cli": {},
}


_RESERVED_METRICS = frozenset({"llm_judge", "custom", "sao_preference"})
"""Metric functions the evaluator resolves itself (not registry entries)."""


class Registry:
    """Every entry, built-in and plugged in; plugins are read from the installed distributions' metadata
    once (no plugin code is imported until an entry is loaded)."""

    def __init__(self, plugin_points: Iterable[Any] | None = None) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self.problems: list[str] = []
        """Plugins that could not be registered (malformed name, a name taken twice), for the listing."""
        from convergence._version import __version__

        for kind, table in _BUILTINS.items():
            for name, spec in table.items():
                self._entries[(kind, name)] = Entry(kind, name, spec, BUILTIN, __version__)
        for ep in plugin_points if plugin_points is not None else _entry_points():
            self._add(ep)

    def _add(self, ep: Any) -> None:
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", None) or "an unknown distribution"
        version = getattr(dist, "version", None) or "?"
        kind, _, name = str(ep.name).partition(".")
        where = f"distribution {dist_name} {version}, entry point {ep.name!r} = {ep.value!r}"
        if kind not in KINDS or not name:
            self.problems.append(f"{where}: the name must be <kind>.<name> with kind one of {', '.join(KINDS)}")
            return
        if kind == "metric" and name in _RESERVED_METRICS:
            self.problems.append(f"{where}: {name!r} is a built-in metric function; this one is ignored "
                                 f"(rename the entry point)")
            return
        other = {"agent": "sampler", "sampler": "agent"}.get(kind)
        clash = self._entries.get((other, name)) if other else None
        if clash is not None:  # a roster names agents and samplers alike: one name, one meaning
            article = "an" if other == "agent" else "a"
            self.problems.append(f"{where}: {name!r} is already {article} {other} (from {clash.distribution}); "
                                 f"this one is ignored (rename the entry point)")
            return
        taken = self._entries.get((kind, name))
        if taken is not None:
            self.problems.append(f"{where}: {kind} {name!r} is already provided by "
                                 f"{'Convergence (built-in)' if taken.builtin else taken.distribution}; "
                                 f"this one is ignored (rename the entry point)")
            return
        self._entries[(kind, name)] = Entry(kind, name, str(ep.value), dist_name, version)

    def entries(self, kind: str | None = None) -> list[Entry]:
        return sorted((e for e in self._entries.values() if kind is None or e.kind == kind),
                      key=lambda e: (KINDS.index(e.kind), not e.builtin, "" if e.builtin else e.name))

    def names(self, kind: str) -> list[str]:
        return [e.name for e in self.entries(kind)]

    def find(self, kind: str, name: str) -> Entry | None:
        return self._entries.get((kind, name))

    def get(self, kind: str, name: str) -> Entry:
        """The entry, or a :class:`PluginError` that suggests the closest installed names."""
        entry = self.find(kind, name)
        if entry is None:
            raise PluginError(unknown(kind, name, self.names(kind)))
        return entry

    def load(self, kind: str, name: str, check: Callable[[Any], bool] = callable) -> Any:
        """Import the entry's object; a plugin that is not what its kind needs is a :class:`PluginError`."""
        entry = self.get(kind, name)
        obj = entry.load()
        if not check(obj):
            raise PluginError(f"{kind} {name!r} from {entry._who()}: is a {type(obj).__name__}, "
                              f"not what a {kind} plugin must be (see docs/plugins.md)")
        return obj


def unknown(kind: str, name: str, names: list[str]) -> str:
    """'unknown agent 'evolutoin'; did you mean 'evolution'? (installed: ...)'"""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
    return f"unknown {kind} {shown}{hint} (installed: {', '.join(names) or 'none'})"


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=GROUP))


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process's registry (installed distributions are read once)."""
    return Registry()
