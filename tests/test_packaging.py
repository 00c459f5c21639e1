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


#: What each dask-cuda release requires of dask, read from PyPI's metadata (Requires-Dist of
#: dask-cuda -> rapids-dask-dependency -> dask) with `pip download --no-deps` when the extras
#: were pinned.
DASK_CUDA_PINS_DASK = {
    "24.8": "2024.7.1",
    "24.10": "2024.9.0",
    "24.12": "2024.11.2",
    "25.2": "2024.12.1",
    "25.6": "2025.5.0",
    "25.10": "2025.9.1",
    "26.4": "2026.1.1",
    "26.10": "2026.7.1",
}


def test_gpu_extras_for_cuda12_and_cuda13_with_a_dask_cuda_that_fits():
    """Extras gpu-cuda12 (cupy-cuda12x) and gpu-cuda13 (cupy-cuda13x), gpu an alias of the
    CUDA 12 one; every dask-cuda release they allow pins a dask that eelsgpu's own dask
    requirement accepts, and the release just below the lower bound does not. Truth: PyPI's
    metadata (the table above)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    dask_req = next(Requirement(d) for d in meta["dependencies"] if d.startswith("dask"))
    assert any(r.startswith("cupy-cuda12x") for r in extras["gpu-cuda12"])
    assert any(r.startswith("cupy-cuda13x") for r in extras["gpu-cuda13"])
    assert extras["gpu"] == ["eelsgpu[gpu-cuda12]"]
    for name in ("gpu-cuda12", "gpu-cuda13"):
        req = next(Requirement(r) for r in extras[name] if r.startswith("dask-cuda"))
        allowed = [v for v in DASK_CUDA_PINS_DASK if Version(v) in req.specifier]
        refused = [v for v in DASK_CUDA_PINS_DASK if Version(v) not in req.specifier]
        assert allowed and all(
            Version(DASK_CUDA_PINS_DASK[v]) in dask_req.specifier for v in allowed
        ), (name, allowed)
        below = max(refused, key=Version)
        assert Version(DASK_CUDA_PINS_DASK[below]) not in dask_req.specifier or name.endswith(
            "13"
        ), (name, below)
    cu13 = next(Requirement(r) for r in extras["gpu-cuda13"] if r.startswith("dask-cuda"))
    assert "cu13" in cu13.extras and Version("25.10") in cu13.specifier
    assert Version("25.6") not in cu13.specifier  # no cu13 extra before 25.10
