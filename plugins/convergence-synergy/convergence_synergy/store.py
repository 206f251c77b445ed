"""The learned weights on disk, per study (in the learner's ``state_dir``).

``synergy_weights.json``
    The shares (agent -> share, summing to 1), the algorithm that last wrote them, the
    generation and update count, the reward normalisers (one per cost unit) and which
    network files belong to it. Human-readable; ``export`` / ``import_`` edit it.
``synergy_networks.<algorithm>.pt``
    The algorithm's networks, target networks and optimizers (``torch.save`` of state dicts,
    loaded with ``weights_only=True``), one file per algorithm so switching back keeps each.
``synergy_weights.log.jsonl``
    Every change, one JSON object per line: ``time``, ``event`` (update | import | reset | env),
    ``generation``, ``old`` and ``new`` shares, ``reward``, ``algorithm`` (and per-agent
    ``credits`` for updates).

Every file is written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WEIGHTS = "synergy_weights.json"
LOG = "synergy_weights.log.jsonl"
FORMAT = 1


class SynergyFileError(ValueError):
    """A weights file that cannot be used; the message names the file and the field."""


def weights_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / WEIGHTS


def log_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / LOG


def networks_path(state_dir: str | Path, algorithm: str) -> Path:
    return Path(state_dir) / f"synergy_networks.{algorithm}.pt"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- atomic writes -----------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def append_log(state_dir: str | Path, entry: Mapping[str, Any]) -> None:
    path = log_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": now_iso(), "unix": round(time.time(), 3), **entry}, separators=(",", ":"))
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


# --- validation --------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SynergyFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SynergyFileError(f"{path}: cannot be read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SynergyFileError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def validate_shares(raw: Any, path: Path, field: str = "shares") -> dict[str, float]:
    """Agent -> weight: numbers >= 0, at least one > 0; returned normalised to sum to 1."""
    if not isinstance(raw, dict):
        raise SynergyFileError(f"{path}: field '{field}': expected an object mapping agent name to weight, "
                               f"got {type(raw).__name__}")
    if not raw:
        raise SynergyFileError(f"{path}: field '{field}': no agents")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise SynergyFileError(f"{path}: field '{field}': agent names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise SynergyFileError(f"{path}: field '{field}.{name}': expected a number >= 0, got {value!r}")
        out[name] = float(value)
    total = sum(out.values())
    if total <= 0:
        raise SynergyFileError(f"{path}: field '{field}': the weights sum to 0; at least one must be positive")
    return {k: v / total for k, v in out.items()}


def validate_weights(data: Any, path: Path) -> dict[str, Any]:
    """A weights document: ``{"shares": {...}, ...}``, or a bare ``{agent: weight}`` mapping."""
    if not isinstance(data, dict):
        raise SynergyFileError(f"{path}: expected a JSON object with 'shares' (agent -> weight), "
                               f"got {type(data).__name__}")
    if "shares" not in data:
        # a bare mapping agent -> weight (what a user writes by hand)
        if all(not isinstance(v, dict | list) for v in data.values()):
            return {"format": FORMAT, "shares": validate_shares(data, path, field="(top level)")}
        raise SynergyFileError(f"{path}: field 'shares' is missing (expected agent -> weight)")
    out = dict(data)
    out["shares"] = validate_shares(data["shares"], path)
    fmt = data.get("format", FORMAT)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
        raise SynergyFileError(f"{path}: field 'format': expected an integer <= {FORMAT}, got {fmt!r}")
    for key, kinds in (("algorithm", str), ("study", str), ("generation", int), ("updates", int)):
        if key in data and data[key] is not None and (not isinstance(data[key], kinds) or isinstance(data[key], bool)):
            raise SynergyFileError(f"{path}: field '{key}': expected {kinds.__name__}, got {data[key]!r}")
    if "reward_norm" in data and not isinstance(data["reward_norm"], dict):
        raise SynergyFileError(f"{path}: field 'reward_norm': expected an object (cost unit -> statistics)")
    return out


def read_weights(state_dir: str | Path) -> dict[str, Any] | None:
    """The validated weights document, or None when there is none yet."""
    path = weights_path(state_dir)
    if not path.exists():
        return None
    return validate_weights(_load_json(path), path)


def write_weights(state_dir: str | Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(weights_path(state_dir), {"format": FORMAT, **data, "updated_at": now_iso()})


# --- the CLI's functions -----------------------------------------------------------------------

def show(state_dir: str | Path) -> dict[str, Any]:
    """What is stored: the shares, who wrote them, the network files, how many changes were logged."""
    state_dir = Path(state_dir)
    path = weights_path(state_dir)
    data = read_weights(state_dir)
    networks = {}
    for f in sorted(state_dir.glob("synergy_networks.*.pt")) if state_dir.is_dir() else []:
        networks[f.name[len("synergy_networks."):-len(".pt")]] = {"file": str(f), "bytes": f.stat().st_size}
    out: dict[str, Any] = {"state_dir": str(state_dir), "weights_file": str(path), "exists": data is not None,
                           "shares": dict(data["shares"]) if data else {}, "networks": networks,
                           "log_file": str(log_path(state_dir)), "changes": len(history(state_dir))}
    if data:
        for key in ("algorithm", "study", "generation", "updates", "updated_at"):
            out[key] = data.get(key)
    return out


def export(state_dir: str | Path, out_path: str | Path) -> Path:
    """Write the shares (and where they came from) to ``out_path`` for editing or another study."""
    data = read_weights(state_dir)
    if data is None:
        raise SynergyFileError(f"{weights_path(state_dir)}: no such file (nothing learned yet in {state_dir})")
    out = Path(out_path)
    doc = {"format": FORMAT, "shares": data["shares"], "algorithm": data.get("algorithm"),
           "study": data.get("study"), "generation": data.get("generation"), "exported_at": now_iso(),
           "exported_from": str(weights_path(state_dir))}
    atomic_write_json(out, doc)
    return out


def import_(state_dir: str | Path, in_path: str | Path) -> dict[str, float]:
    """Replace the stored shares by those of ``in_path`` (validated; weights are normalised to sum to 1).
    The networks are kept: the learners adjust from the imported shares on."""
    in_path = Path(in_path)
    incoming = validate_weights(_load_json(in_path), in_path)
    state_dir = Path(state_dir)
    current = read_weights(state_dir) or {}
    doc = {**{k: v for k, v in current.items() if k not in ("format", "updated_at")}, "shares": incoming["shares"]}
    write_weights(state_dir, doc)
    append_log(state_dir, {"event": "import", "generation": current.get("generation"),
                           "algorithm": current.get("algorithm"), "old": current.get("shares"),
                           "new": incoming["shares"], "reward": None, "source": str(in_path)})
    return dict(incoming["shares"])


def reset(state_dir: str | Path) -> list[str]:
    """Forget what was learned (weights and networks; the change log stays, with a reset entry).
    The next run starts from the roster's shares. Returns the files removed."""
    state_dir = Path(state_dir)
    try:
        old = read_weights(state_dir)
    except SynergyFileError:
        old = None  # a broken file is exactly what a reset is for
    removed = []
    targets = [weights_path(state_dir), *(state_dir.glob("synergy_networks.*.pt") if state_dir.is_dir() else [])]
    for f in targets:
        if f.exists():
            f.unlink()
            removed.append(str(f))
    if removed:
        append_log(state_dir, {"event": "reset", "generation": None, "algorithm": old.get("algorithm") if old else None,
                               "old": old.get("shares") if old else None, "new": None, "reward": None})
    return removed


def history(state_dir: str | Path) -> list[dict[str, Any]]:
    """The change log, oldest first (a line cut short by a kill is skipped)."""
    path = log_path(state_dir)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
    return out


def plot_history(state_dir: str | Path, out_png: str | Path) -> Path:
    """Each agent's share after every change (x: change number; dotted lines: a new run began)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    entries = [e for e in history(state_dir) if isinstance(e.get("new"), dict)]
    if not entries:
        raise SynergyFileError(f"{log_path(state_dir)}: no weight changes to plot")
    agents: list[str] = []
    for e in entries:
        agents += [a for a in e["new"] if a not in agents]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    xs = list(range(1, len(entries) + 1))
    for agent in agents:
        ax.plot(xs, [e["new"].get(agent, float("nan")) for e in entries], marker=".", label=agent)
    prev_gen = None
    for x, e in zip(xs, entries, strict=True):
        gen = e.get("generation")
        if e.get("event") != "update" or (isinstance(gen, int) and isinstance(prev_gen, int) and gen <= prev_gen):
            ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
        prev_gen = gen if isinstance(gen, int) else prev_gen
    ax.set_xlabel("change")
    ax.set_ylabel("share of the generation's slots")
    ax.set_ylim(0, 1)
    ax.set_title(f"synergy weights ({entries[-1].get('algorithm') or '?'})")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(out, buf.getvalue())
    return out
