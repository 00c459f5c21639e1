"""Zero-loss peak on spectrum images: alignment and ``zlp=`` (eelsgpu.analysis.zlp).

Truth: eelsgpu.synthetic (a known drift), and real spectra under ../shared/data whose ZLPs sit
off zero (README section 1).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr
from _data import DRIFTS

from eelsgpu import synthetic
from eelsgpu.analysis.zlp import align_zlp, resolve_zlp
from eelsgpu.errors import EnergyAxisError, InputError, NoZeroLossPeakError
from eelsgpu.kernels.zlp import centre_kernel
from eelsgpu.model import spectrum_image


def test_align_zlp_synthetic(drifted):
    """Truth: the synthetic drift. After align_zlp every centre is at 0 to 1/100 channel, the
    reported centres are the drifts, and the counts in the common window are kept."""
    si = drifted["signal"]
    for method in ("fourier", "linear"):
        ds = align_zlp(si, method=method, device="cpu").compute()
        assert ds["valid"].all()
        np.testing.assert_allclose(ds["zlp_centre_eV"].values, DRIFTS, atol=5e-4)
        e = ds["energy"].values
        assert np.isfinite(ds["signal"].values).all()
        c = centre_kernel(ds["signal"].values, e)["zlp_centre_eV"]
        assert np.abs(c).max() < (0.01 if method == "fourier" else 0.03) * 0.05
        assert ds["signal"].attrs.get("units") == "counts"
        # counts: the aligned window holds what the same energy range held before the shift
        assert abs(ds["signal"].values.sum() / si.values[:, 10:-10].sum() - 1) < 2e-3


def _load_real(path):
    hs = pytest.importorskip("hyperspy.api")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = hs.load(str(path))
    s = s[0] if isinstance(s, list) else s
    ax = s.axes_manager.signal_axes[0]
    e = np.asarray(ax.axis, dtype=np.float64)
    return spectrum_image(np.asarray(s.data), e, source=str(path)), s


@pytest.mark.parametrize(
    "name, lo, hi",
    [
        ("pyeelsmodel/ll.msa", -4.6, -4.0),
        ("gduscher/6-SiO2.dm3", 1.0, 2.0),
        ("exspy_demos/LSMO_linescan_low_loss.hspy", 2.9, 3.6),
    ],
)
def test_real_off_zero_zlp_found_and_aligned(shared_data, name, lo, hi):
    """Truth: shared/data README (ZLP at -4.3 eV, +1.5 eV, +3.0 to +3.5 eV on the stored axis,
    read by eye to a channel). Our centres fall in that range for every pixel; after alignment
    they are at 0 eV to 1/20 of a channel."""
    si, _ = _load_real(shared_data / name)
    ds = align_zlp(si, device="cpu").compute()
    c = np.atleast_1d(ds["zlp_centre_eV"].values)
    assert ds["valid"].values.all()
    assert (c > lo).all() and (c < hi).all(), c
    d = si.attrs["dispersion_eV"]
    flat = ds["signal"].values.reshape(-1, ds.sizes["energy"])
    again = centre_kernel(flat, ds["energy"].values)["zlp_centre_eV"]
    assert np.abs(again).max() < 0.05 * d


def test_resolve_zlp_forms():
    """Truth: the contract of resolve_zlp (method name, reference array or DataArray on another
    grid, per-pixel cube; anything else an InputError)."""
    e = np.arange(100) * 0.1 - 2.0
    si = spectrum_image(np.ones((2, 3, 100)), e)
    assert resolve_zlp(si, "mirror") == ({"method": "mirror"}, {})
    p, x = resolve_zlp(si, np.arange(100.0))
    assert p["method"] == "reference" and x == {}
    ref = xr.DataArray(
        np.exp(-((np.arange(50) * 0.2 - 5.0) ** 2)),
        dims="energy",
        coords={"energy": np.arange(50) * 0.2 - 5.0},
    )
    p, _ = resolve_zlp(si, ref)
    assert p["reference"].shape == (100,)
    assert abs(e[np.argmax(p["reference"])]) < 0.15  # interpolated onto the data's axis
    p, x = resolve_zlp(si, np.ones((2, 3, 100)))
    assert p == {"method": "cube"} and x["zlp_cube"].shape == (2, 3, 100)
    with pytest.raises(InputError):
        resolve_zlp(si, np.ones(7))
    with pytest.raises(InputError):
        resolve_zlp(si, "gaussian")


def test_no_zlp_and_reversed_axis():
    """Truth: by construction. A window starting above 0 eV has no ZLP: NoZeroLossPeakError
    naming the file; a decreasing axis is an EnergyAxisError at the kernel and at the public
    function."""
    e = 5.0 + np.arange(200) * 0.1
    si = spectrum_image(np.ones((2, 2, 200)) * np.exp(-e / 20), e, source="core.dm4")
    with pytest.raises(NoZeroLossPeakError, match="core.dm4"):
        align_zlp(si, device="cpu")
    e2 = np.arange(200) * 0.1 - 5
    with pytest.raises(EnergyAxisError):
        centre_kernel(np.ones((1, 200)), e2[::-1].copy())
    bad = xr.DataArray(np.ones((2, 200)), dims=("x", "energy"), coords={"energy": e2[::-1]})
    with pytest.raises(EnergyAxisError):
        align_zlp(bad, device="cpu")


def test_one_pixel_and_nan_pixel_image():
    """Truth: synthetic drift. A one-pixel image aligns; a NaN pixel in an image is flagged and
    NaN while the others are aligned."""
    sim = synthetic.low_loss_image(
        synthetic.Drude(),
        t_over_lambda=0.3,
        shape=(1, 1),
        n_channels=512,
        dispersion_eV=0.1,
        drift_eV=0.21,
    )
    ds = align_zlp(sim["signal"], device="cpu").compute()
    assert ds["valid"].values.all() and abs(float(ds["zlp_centre_eV"][0, 0]) - 0.21) < 2e-3
    data = sim["signal"].values.repeat(3, axis=1)
    data[0, 1, 10] = np.nan
    si = spectrum_image(data, sim["energy"].values)
    ds = align_zlp(si, device="cpu").compute()
    assert ds["valid"].values.tolist() == [[True, False, True]]
    assert np.isnan(ds["signal"].values[0, 1]).all()
    assert math.isfinite(float(ds["signal"].values[0, 0].sum()))
