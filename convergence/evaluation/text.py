"""How any target output becomes text, shared by the metrics and the LLM judge."""

from __future__ import annotations

import json
from typing import Any


def to_text(value: Any) -> str:
    """The string a text metric compares: strings as-is, structures as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)
