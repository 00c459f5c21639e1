"""What pyproject.toml ships: every package of eelsgpu, so an install has every module the
source tree has (the packages are listed by hand because kernels/ ships as eelsgpu._cuda).

Truth: the package folders of the source tree (those with an ``__init__.py``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_shipped():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "eelsgpu").rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert "eelsgpu._cuda" in listed  # the CUDA sources, from kernels/
