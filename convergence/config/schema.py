"""The JSON Schema of ``optimization.yaml`` (``convergence schema``), for editors and CI linters.

Pydantic's schema needs two fixes to be standard and true to what the loader accepts:
constraints on optional numbers come out as pydantic's own ``gt``/``ge``/``lt``/``le`` keys (not JSON
Schema: validators ignore them), and a field with other accepted names (metric ``type`` for
``direction``, ``parallel_workers`` for ``concurrency``, RLP ``group_size`` for ``G``) lists only one
name, so a documented spelling fails in an editor while ``validate`` accepts it.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import AliasChoices, BaseModel

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_KEYWORDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def config_json_schema() -> dict[str, Any]:
    """The schema of the whole file: standard JSON Schema (draft 2020-12)."""
    from convergence.config.models import ConvergenceConfig

    schema = ConvergenceConfig.model_json_schema(by_alias=False, mode="validation")
    models = _models(ConvergenceConfig)
    defs = schema.get("$defs", {})
    for name, model in models.items():
        node = defs.get(name) if name != ConvergenceConfig.__name__ else schema
        if node is not None:
            _add_aliases(node, model)
    _standard_keywords(schema)
    return {"$schema": DIALECT, **schema}


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root``'s fields, by class name (pydantic's ``$defs`` keys)."""
    out: dict[str, type[BaseModel]] = {}
    stack: list[Any] = [root]
    while stack:
        ann = stack.pop()
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann.__name__ in out:
                continue
            out[ann.__name__] = ann
            stack.extend(f.annotation for f in ann.model_fields.values())
        else:
            stack.extend(typing.get_args(ann))
    return out


def _add_aliases(node: dict[str, Any], model: type[BaseModel]) -> None:
    props = node.get("properties")
    if not isinstance(props, dict):
        return
    for name, f in model.model_fields.items():
        alias = f.validation_alias
        if isinstance(alias, AliasChoices) and name in props:
            for choice in alias.choices:
                if isinstance(choice, str) and choice != name and choice not in props:
                    props[choice] = {**props[name], "description": f"Another name of '{name}'."}


def _standard_keywords(node: Any) -> None:
    """Pydantic's ``gt``/``ge``/``lt``/``le`` (left on optional numbers) -> JSON Schema's keywords."""
    if isinstance(node, dict):
        for key, standard in _KEYWORDS.items():
            value = node.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                del node[key]
                node.setdefault(standard, value)
        for key, value in node.items():
            if key != "properties":
                _standard_keywords(value)
            else:  # property names are user keys, never keywords
                for sub in value.values():
                    _standard_keywords(sub)
    elif isinstance(node, list):
        for item in node:
            _standard_keywords(item)
