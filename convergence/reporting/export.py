"""Export the best configuration as a file a user can load directly.

YAML loads to the plain configuration (run metadata sits in a comment header);
JSON is ``{"config": ..., "metadata": ...}`` because JSON has no comments;
Python is an importable module defining ``BEST_CONFIG`` (and ``METADATA``).
Every format round-trips the values exactly, multi-line prompts included.
Generations are counted from 1 here, as in the report and the CLI (the store
numbers them from 0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml

from convergence.core.types import Config
from convergence.reporting.model import RunReport
from convergence.storage.atomic import atomic_write_text

ExportFormat = Literal["yaml", "json", "python"]
EXTENSIONS: dict[str, str] = {"yaml": "yaml", "json": "json", "python": "py"}


def best_config_and_metadata(report: RunReport) -> tuple[Config, dict[str, Any]]:
    """The values to export (resolved if the store gave them, else the labels)
    and what run/trial they came from."""
    best = report.best
    if best is None:
        raise ValueError(f"run {report.run_id} has no complete trial: there is no best configuration to export")
    resolved = report.resolved_best is not None
    config = dict(report.resolved_best) if report.resolved_best is not None else dict(best.config)
    meta: dict[str, Any] = {
        "study": report.study,
        "run_id": report.run_id,
        "trial_id": best.trial_id,
        "generation": best.generation + 1,  # 1-based, as the report shows it
        "score": best.score,
        "metrics": dict(best.metrics),
        "values": "resolved" if resolved else "labels",
    }
    return config, meta


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so prompts stay readable."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # PyYAML falls back to a quoted style when a block cannot hold the string exactly.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def _yaml(config: Config, meta: dict[str, Any] | None) -> str:
    header = "# Best configuration found by Convergence\n"
    if meta:
        header += (
            f"# study: {' '.join(str(meta['study']).split())} | run {meta['run_id']} | trial {meta['trial_id']}"
            f" | generation {meta['generation']} | score {meta['score']:.6g}\n"
        )
        if meta["values"] == "labels":
            header += "# note: values are the search-space labels (resolved values were not available)\n"
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return header + body


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json(config: Config, meta: dict[str, Any] | None) -> str:
    doc = {"config": config, "metadata": _json_safe(meta or {})}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def py_literal(value: Any, indent: int = 0) -> str:
    """Python source that evaluates to ``value`` (``repr`` is not enough: it
    writes ``nan``/``inf`` as bare names)."""
    pad, inner = "    " * indent, "    " * (indent + 1)
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = "".join(f"{inner}{py_literal(k)}: {py_literal(v, indent + 1)},\n" for k, v in value.items())
        return "{\n" + items + pad + "}"
    if isinstance(value, (list, tuple)):
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        if not value:
            return open_ + close
        items = "".join(f"{inner}{py_literal(v, indent + 1)},\n" for v in value)
        return open_ + "\n" + items + pad + close
    raise TypeError(f"cannot write a {type(value).__name__} value as a Python literal: {value!r}")


def _python(config: Config, meta: dict[str, Any] | None) -> str:
    doc = '"""Best configuration found by Convergence' + (" (METADATA says from which run)." if meta else ".")
    out = doc + '"""\n\n' + f"BEST_CONFIG = {py_literal(config)}\n"
    if meta:
        out += f"\nMETADATA = {py_literal(meta)}\n"
    return out


_WRITERS = {"yaml": _yaml, "json": _json, "python": _python}


def export_config(report_or_config: RunReport | Config, fmt: ExportFormat = "yaml", path: Path | None = None) -> str:
    """Render the best configuration of a run (or a given configuration) in
    ``fmt``; write it to ``path`` when given. Returns the text."""
    if fmt not in _WRITERS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(_WRITERS)}")
    if isinstance(report_or_config, RunReport):
        config, meta = best_config_and_metadata(report_or_config)
    else:
        config, meta = dict(report_or_config), None
    text = _WRITERS[fmt](config, meta)
    if path is not None:
        atomic_write_text(Path(path), text)
    return text
