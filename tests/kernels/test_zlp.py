"""Zero-loss peak kernels: centre, models and shift (eelsgpu.kernels.zlp).

Truth: eelsgpu.synthetic (exact channel integrals of a known ZLP at a known drift) and analytic
Gaussians.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import asarray, to_numpy

from eelsgpu import synthetic
from eelsgpu.kernels.zlp import centre_kernel, shift_kernel, zlp_kernel

DRIFTS = np.array([-0.371, -0.2, -0.0123, 0.0, 0.013, 0.025, 0.1666, 0.333, 0.4])


@pytest.fixture(scope="module")
def drifted():
    """Drude t/lambda = 0.5, Gaussian ZLP 0.5 eV, drift at sub-channel positions, 0.05 eV/ch."""
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=0.5,
        shape=(DRIFTS.size,),
        n_channels=1024,
        dispersion_eV=0.05,
        drift_eV=DRIFTS,
        dtype=np.float64,
    )


def true_zlp(sim) -> np.ndarray:
    """N0 R(E - drift) per channel: the exact ZLP of each pixel (the generator's formula)."""
    e = sim["energy"].values
    d = float(sim.attrs["dispersion_eV"])
    edges = (
        e[None, :, None]
        + d * np.array([-0.5, 0.5])
        - sim["true_zlp_centre_eV"].values[:, None, None]
    )
    r = np.diff(synthetic.ZeroLossPeak().cdf(edges), axis=-1)[..., 0]
    return r * sim["true_zlp_intensity"].values[:, None]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_centre_sub_channel(xp, drifted, dtype):
    """Truth: the synthetic drift. The centre is found to 1/100 of a channel (float64) or 1/50
    (float32), where the arg-max channel would be off by up to half a channel."""
    block = asarray(xp, drifted["signal"].values, dtype=dtype)
    e = asarray(xp, drifted["energy"].values)
    out = centre_kernel(block, e)
    err = (to_numpy(out["zlp_centre_eV"]) - DRIFTS) / 0.05
    assert to_numpy(out["valid"]).all()
    assert np.abs(err).max() < (0.01 if dtype == np.float64 else 0.02)
    argmax_err = (drifted["energy"].values[drifted["signal"].values.argmax(-1)] - DRIFTS) / 0.05
    assert np.abs(argmax_err).max() > 0.3  # the quantised answer would fail


@pytest.mark.parametrize(
    "method, tol",
    [("mirror", 1e-4), ("fit", 5e-4), ("threshold", 1e-3), ("reference", 1e-4), ("cube", 1e-12)],
)
def test_zlp_intensity_methods(xp, drifted, method, tol):
    """Truth: true_zlp_intensity (N0). Each model's N0 within its tolerance of the truth; the
    mirror's loss side equals the exact ZLP to 1e-3 of its peak."""
    sim = drifted
    block = asarray(xp, sim["signal"].values)
    e = asarray(xp, sim["energy"].values)
    z_true = true_zlp(sim)
    kwargs = {}
    if method == "reference":
        # a vacuum reference at 0 eV, on the same grid, with a different intensity
        kwargs["reference"] = asarray(xp, 3.7 * sim["true_zlp_shape"].values)
    if method == "cube":
        kwargs["zlp_cube"] = asarray(xp, z_true)
    out = zlp_kernel(block, e, method=method, **kwargs)
    n0 = to_numpy(out["zlp_intensity"])
    rel = n0 / sim["true_zlp_intensity"].values - 1
    assert to_numpy(out["valid"]).all()
    assert np.abs(rel).max() < tol, rel
    if method in ("mirror", "reference", "fit"):
        model = to_numpy(out["zlp"])
        dev = np.abs(model - z_true).max(axis=-1) / z_true.max(axis=-1)
        assert dev.max() < (1e-3 if method != "fit" else 3e-3), dev


def test_bad_pixels_flagged(xp):
    """Truth: by construction. NaN, all-zero, saturated, no peak in the search window and a peak
    cut by the spectrum's start are flagged invalid with NaN results; the good pixel is kept."""
    e = np.arange(-100, 400) * 0.05
    good = 1e4 * np.exp(-0.5 * (e / 0.2) ** 2) + 50.0 * (e > 1)
    nan = good.copy()
    nan[300] = np.nan
    zero = np.zeros_like(good)
    sat = np.minimum(good, 0.5 * good.max())  # a detector clipped at half the peak
    far = 1e4 * np.exp(-0.5 * ((e - 12.0) / 0.2) ** 2)  # ZLP 12 eV off: outside (-5, 5)
    block = asarray(xp, np.stack([good, nan, zero, sat, far]))
    for method in ("mirror", "fit", "threshold"):
        out = zlp_kernel(block, asarray(xp, e), method=method)
        valid = to_numpy(out["valid"])
        assert valid.tolist() == [True, False, False, False, False], method
        n0 = to_numpy(out["zlp_intensity"])
        assert np.isfinite(n0[0]) and np.isnan(n0[1:]).all()
        assert np.isnan(to_numpy(out["zlp"])[1:]).all()
    # a window starting on the peak's loss flank: the peak is cut
    keep = e >= 0.05
    out = zlp_kernel(asarray(xp, good[None, keep]), asarray(xp, e[keep]), method="threshold")
    assert not bool(to_numpy(out["valid"])[0])
    # the far peak is found when the search window is widened
    out = zlp_kernel(block, asarray(xp, e), method="mirror", search_eV=(-5.0, 15.0))
    assert abs(float(to_numpy(out["zlp_centre_eV"])[4]) - 12.0) < 1e-3


@pytest.mark.parametrize("method", ["fourier", "linear"])
def test_shift_keeps_counts(xp, method):
    """Truth: an analytic Gaussian shifted by 0.37 channel. Counts are kept, the shifted peak's
    centre moves by the shift, and the Fourier shift reproduces the shifted Gaussian."""
    e = np.arange(-60, 200) * 0.05
    y = 1e4 * np.exp(-0.5 * ((e - 0.3) / 0.2) ** 2) + 200.0 / (1.0 + np.exp(-(e - 3.0)))
    block = asarray(xp, y[None])
    out = to_numpy(shift_kernel(block, 0.0185, method, dispersion_eV=0.05))[0]
    assert np.isnan(out[-1]) and np.isfinite(out[:-1]).all()  # the last channel has no source
    inner = slice(5, -5)
    # counts kept: the window gains s y(end) at its high end and loses s y(start) at its low end
    s = 0.37
    expect_sum = y[inner].sum() + s * (y[-6] - y[5])
    assert abs(out[inner].sum() / expect_sum - 1) < 2e-5
    c = to_numpy(centre_kernel(asarray(xp, out[None, :-1]), asarray(xp, e[:-1]))["zlp_centre_eV"])
    assert abs(float(c[0]) - (0.3 - 0.0185)) < 0.05 * (0.002 if method == "fourier" else 0.05)
    if method == "fourier":
        expect = 1e4 * np.exp(-0.5 * ((e + 0.0185 - 0.3) / 0.2) ** 2) + 200.0 / (
            1.0 + np.exp(-(e + 0.0185 - 3.0))
        )
        assert np.abs(out[inner] - expect[inner]).max() < 1e-3 * 1e4
