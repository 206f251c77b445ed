from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # rigged.py
# as the core suite's tests/conftest.py (which does not reach this folder): no download of litellm's
# cost map, and tracing stays off
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("WANDB_API_KEY", None)
torch.set_num_threads(1)  # tiny networks; the machine is shared


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio only (anyio's own fixture adds trio)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_synergy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's CONVERGENCE_SYNERGY_* variables must not change what the tests see."""
    for key in list(os.environ):
        if key.startswith("CONVERGENCE_SYNERGY_"):
            monkeypatch.delenv(key)


@pytest.fixture
def this_checkouts_entry_points(tmp_path_factory: pytest.TempPathFactory,
                                monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The entry points this plugin's pyproject.toml declares, discovered as installed ones are: a
    dist-info of the distribution (its name, version and entry points) first on sys.path, and on
    PYTHONPATH for subprocesses, so the tests see what ``pip install -e`` of this checkout installs
    even when the venv's metadata is older (new entry points need a reinstall)."""
    from convergence.registry import GROUP, registry

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    points: dict[str, str] = project["entry-points"][GROUP]
    site = tmp_path_factory.mktemp("site")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    registry.cache_clear()
    yield points
    registry.cache_clear()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The rigged-environment table (generations until the good agent's share passed the level)."""
    try:
        from test_rigged import CONTROL_GENERATIONS, GENERATIONS, LEVEL, RESULTS
    except ImportError:
        return
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"rigged society: good agent's share > {LEVEL} within {GENERATIONS} generations; "
               f"shuffled rewards: not within {CONTROL_GENERATIONS}")
    tr.write_line(f"{'algorithm':<13} {'seed':>4} {'gens to level':>13} {'final good':>10} {'final poor':>10} "
                  f"{'final random':>12} {'shuffled: max good':>18} {'final good':>10}")
    for r in RESULTS:
        f, c = r["final"], r["control_final"]
        tr.write_line(f"{r['algorithm']:<13} {r['seed']:>4} {r['generations_to_level'] or '-':>13} "
                      f"{f['good']:>10.3f} {f['poor']:>10.3f} {f['random']:>12.3f} "
                      f"{r['control_max_good']:>18.3f} {c['good']:>10.3f}")
