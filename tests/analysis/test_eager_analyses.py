"""Every analysis that runs through the engine gives, on an image held in memory (the eager path:
NumPy results written block by block, no dask graph), exactly what it gives on the same image as
a dask array (the lazy path) -- bit for bit, every variable, the quality maps and per-pixel flags,
the same dims, coords, units and attrs.

Truth: the lazy path on the same numbers in the same pixel blocks (``_lazy_twin``: the blocks the
engine cuts an image in memory into). Images of several blocks (4 cores assumed): a synthetic
Drude film with a thickness gradient and counting noise, and a measured line scan (LSMO at
80 kV, exspy's demo data) tiled to 7 rows.
"""

from __future__ import annotations

import os
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.engine.blocks import _memory_chunks


def _lazy_twin(si: xr.DataArray) -> xr.DataArray:
    chunks = _memory_chunks(np.asarray(si.data))
    return si.chunk(dict(zip(si.dims, chunks, strict=True)))


def _assert_same(eager: xr.Dataset, lazy: xr.Dataset, what: str) -> None:
    assert list(eager.data_vars) == list(lazy.data_vars), what
    assert eager.attrs.keys() == lazy.attrs.keys(), what
    for name in lazy.data_vars:
        a, b = eager[name], lazy[name]
        assert not isinstance(a.data, da.Array), (what, name)  # computed: NumPy-backed
        assert a.dims == b.dims and a.dtype == b.dtype and a.attrs == b.attrs, (what, name)
        np.testing.assert_array_equal(a.values, b.values, strict=True, err_msg=f"{what} {name}")
    for name in lazy.coords:
        np.testing.assert_array_equal(eager[name].values, lazy[name].values, err_msg=name)


def _analyses(si: xr.DataArray, lean: bool = False) -> dict[str, xr.Dataset]:
    """Each analysis of the engine on ``si``; KK on the band-limited deconvolution of ``si``
    (``lean``: thickness, deconvolve and KK only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dec = eelsgpu.deconvolve(si, output="band-limited", device="cpu")
        if lean:
            return {
                "thickness": eelsgpu.thickness(si, device="cpu"),
                "deconvolve": dec,
                "kramers_kronig": eelsgpu.kramers_kronig(dec, metal=True, device="cpu"),
            }
        return {
            "thickness": eelsgpu.thickness(si, device="cpu"),
            "thickness kk": eelsgpu.thickness(si, method="kk", metal=True, device="cpu"),
            "deconvolve": dec,
            "deconvolve ssd": eelsgpu.deconvolve(si, zlp="threshold", device="cpu"),
            "kramers_kronig": eelsgpu.kramers_kronig(
                dec, metal=True, iterations=2, cubes="all", device="cpu"
            ),
            "bandgap": eelsgpu.bandgap(si, zlp="threshold", window_eV=(2, 14), device="cpu"),
            "window_maps": eelsgpu.window_maps(
                si, {"plasmon": (10.0, 20.0)}, background={"plasmon": (5.0, 9.0)}, device="cpu"
            ),
            "align_zlp": eelsgpu.align_zlp(si, device="cpu"),
        }


def _check(si: xr.DataArray, lean: bool = False) -> None:
    assert len(_lazy_twin(si).chunks[0]) >= 2  # several pixel blocks
    eager = _analyses(si, lean)
    lazy = _analyses(_lazy_twin(si), lean)
    for what, ds in eager.items():
        _assert_same(ds, lazy[what], what)


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)


def test_synthetic_film_eager_equals_lazy(four_cores):
    """A 16 x 32 Drude film (Ep 15 eV, t/lambda 0.2-1.5, Poisson noise), float32 in memory."""
    tl = np.linspace(0.2, 1.5, 32)[None, :] * np.ones((16, 1))
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), t_over_lambda=tl, shape=(16, 32), n_channels=256,
        dispersion_eV=0.2, offset_eV=-5.0, dtype=np.float32, noise=True, seed=3,
    )  # fmt: skip
    si = sim["signal"].compute()
    assert isinstance(si.data, np.ndarray)
    _check(si)


def test_measured_line_scan_eager_equals_lazy(four_cores, shared_data):
    """The LSMO 80 kV line scan (40 spectra, exspy's demo data), tiled to 7 x 40: thickness,
    band-limited deconvolution and KK (the chain the real-data tests run)."""
    from real_files import FILES, open_real

    f = next(x for x in FILES if x.name == "LSMO 80kV")
    line = open_real(shared_data, f)
    si = xr.concat([line] * 7, dim="y").transpose("y", ...)
    si = si.copy(data=np.ascontiguousarray(si.values))
    _check(si, lean=True)
