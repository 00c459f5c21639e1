"""Shared fixtures: array namespaces, the shared data folder, and synthetic data with known truth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    return Path(os.environ.get("EELSGPU_SHARED", ROOT.parent / "shared"))


# --------------------------------------------------------------------------- array namespaces
def _namespaces():
    out = [pytest.param("numpy", id="numpy")]
    out.append(pytest.param("array_api_strict", id="array-api-strict"))
    # a usable GPU reruns every kernel test on CuPy (cupy's numpy_cupy_allclose idea); without
    # one the CuPy entry is left out rather than skipped test by test (the gpu-marked tests say
    # once each why they skip)
    from eelsgpu.engine.device import gpu_status

    if gpu_status().usable:
        out.append(pytest.param("cupy", id="cupy", marks=pytest.mark.gpu))
    return out


@pytest.fixture(params=_namespaces())
def xp(request):
    """The array namespace a kernel test runs on: NumPy (via array-api-compat) and
    array-api-strict, which refuses anything outside the standard (what CuPy might lack)."""
    if request.param == "numpy":
        from array_api_compat import array_namespace

        return array_namespace(np.empty(0))
    if request.param == "cupy":
        import cupy
        from array_api_compat import array_namespace

        return array_namespace(cupy.empty(0))
    strict = pytest.importorskip("array_api_strict")
    return strict


def asarray(xp, a, dtype=None):
    """A NumPy array in namespace ``xp`` (float64 unless ``dtype`` says otherwise)."""
    a = np.asarray(a)
    if dtype is None:
        dtype = np.float64 if np.issubdtype(a.dtype, np.floating) else a.dtype
    return xp.asarray(np.ascontiguousarray(a, dtype=dtype))


def to_numpy(a) -> np.ndarray:
    from eelsgpu.engine.device import to_host

    return to_host(a)


# --------------------------------------------------------------------------- shared data
@pytest.fixture(scope="session")
def shared_root() -> Path:
    root = _shared_root()
    if not root.is_dir():
        pytest.skip(f"shared folder not found at {root} (set EELSGPU_SHARED to its path)")
    return root


@pytest.fixture(scope="session")
def shared_data(shared_root) -> Path:
    p = shared_root / "data"
    if not p.is_dir():
        pytest.skip(f"real spectra not found at {p}")
    return p


@pytest.fixture(scope="session")
def exspy_cases(shared_root) -> Path:
    p = shared_root / "reference" / "exspy-cases"
    if not p.is_dir():
        pytest.skip(f"exspy reference cases not found at {p}")
    return p


# --------------------------------------------------------------------------- synthetic truth
@pytest.fixture(scope="session")
def drude_spectrum():
    """Noise-free Al-like Drude spectrum, t/lambda = 0.5, 300 kV, 10 mrad (exspy-cases setup)."""
    from eelsgpu import synthetic

    return synthetic.low_loss_spectrum(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=0.5,
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        dtype=np.float64,
    )


@pytest.fixture(scope="session")
def lorentz_spectrum():
    """Noise-free Si-like Lorentz insulator spectrum, t/lambda = 0.6, 300 kV, 10 mrad."""
    from eelsgpu import synthetic

    return synthetic.low_loss_spectrum(
        synthetic.Lorentz(16.6, 5.07, 3.7),
        t_over_lambda=0.6,
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        dtype=np.float64,
    )


@pytest.fixture(scope="session")
def small_image():
    """A 12 x 10 Drude image with a thickness gradient (t/lambda 0.1 to 2), holes to vacuum and
    ZLP drift up to 0.3 eV; 1024 channels of 0.05 eV from -5 eV."""
    from eelsgpu import synthetic

    tl = synthetic.thickness_map((12, 10), "gradient", (0.1, 2.0))
    tl[2:4, 2:4] = 0.0
    drift = np.linspace(-0.3, 0.3, 120).reshape(12, 10)
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=(12, 10),
        n_channels=1024,
        drift_eV=drift,
        dtype=np.float64,
        chunks=(5, 5),
    )


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if "gpu" in it.keywords]
    if not gpu_items:
        return
    from eelsgpu.engine.device import gpu_status

    status = gpu_status()
    if not status.usable:
        skip = pytest.mark.skip(reason=f"no usable GPU: {status.reason}")
        for it in gpu_items:
            it.add_marker(skip)


# --------------------------------------------------------------------------- shared images
# (built from tests/_data.py, once per session, for the modules that share them)
@pytest.fixture(scope="session")
def three_phase():
    """16 x 16 Poisson image of three materials in known regions (t/lambda 0.4 to 0.6):
    _data.CLUSTER_MATERIALS in _data.cluster_regions()."""
    from _data import CLUSTER_MATERIALS, cluster_regions

    from eelsgpu import synthetic

    tl = 0.4 + 0.2 * np.linspace(0, 1, 16)[None, :] * np.ones((16, 1))
    return synthetic.low_loss_image(
        CLUSTER_MATERIALS,
        regions=cluster_regions(),
        shape=(16, 16),
        t_over_lambda=tl,
        n_channels=512,
        dispersion_eV=0.1,
        offset_eV=-5.0,
        total_counts=2e5,
        noise=True,
        seed=2,
        chunks=(8, 8),
    )


@pytest.fixture(scope="session")
def mixture_image():
    """The three-spectrum mixture of _data.mixture() as a spectrum image: ``(si, spectra, maps,
    truth, noisy)``."""
    from _data import mixture

    from eelsgpu.model import spectrum_image

    e, spectra, maps, truth, noisy = mixture()
    si = spectrum_image(noisy, e, chunks=(16, 16), source="mixture")
    return si, spectra, maps, truth, noisy


@pytest.fixture(scope="session")
def drifted():
    """Drude t/lambda = 0.5, Gaussian ZLP 0.5 eV, drift at sub-channel positions
    (_data.DRIFTS), 0.05 eV/ch."""
    from _data import DRIFTS

    from eelsgpu import synthetic

    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=0.5,
        shape=(DRIFTS.size,),
        n_channels=1024,
        dispersion_eV=0.05,
        drift_eV=DRIFTS,
        dtype=np.float64,
    )
