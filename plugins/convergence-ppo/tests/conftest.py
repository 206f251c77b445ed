from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("WANDB_API_KEY", None)  # tracing stays off in tests
torch.set_num_threads(1)  # tiny networks; the machine is shared


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, as in the repository's tests/."""
    return "asyncio"


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
