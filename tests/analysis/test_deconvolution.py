"""Fourier-log deconvolution of spectrum images (eelsgpu.analysis.deconvolution.deconvolve).

Truth: the exact single-scattering distribution of eelsgpu.synthetic (``true_ssd``, from which the
data were built), the exspy-cases reference files (``in_ssd_true``, ``true_ssd_zlp_broadened``),
and exspy 0.3.2 run in the test on the same input where the two are compared (the cases:
tests/fourier_log_cases.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from fourier_log_cases import MATERIALS
from fourier_log_cases import case as _case
from fourier_log_cases import err as _err
from fourier_log_cases import image as _image
from fourier_log_cases import inside as _inside

from eelsgpu import synthetic
from eelsgpu.analysis._lowloss import AxisOffsetWarning
from eelsgpu.analysis.deconvolution import deconvolve
from eelsgpu.analysis.thickness import thickness
from eelsgpu.errors import EnergyAxisError, InputError, NoZeroLossPeakError
from eelsgpu.kernels.fourier_log import fourier_log_kernel
from eelsgpu.kernels.quality import AXIS_OFFSET, FATAL, TAIL_UNTRUSTED
from eelsgpu.model import spectrum_image


def test_deconvolve_true_zlp_cube_equals_truth():
    """deconvolve(si, zlp=<true ZLP cube>, output='ssd') = true_ssd per pixel (t/lambda 0.2 to
    3, drifting ZLP so the cube differs per pixel) to 1e-3 of the peak; coordinates and units."""
    drift = np.linspace(-0.2, 0.2, 12).reshape(3, 4)
    sim = _image(drift_eV=drift)
    e = sim["energy"].values
    edges = e[:, None] + 0.05 * np.array([-1.0, 1.0])
    shape = synthetic.ZeroLossPeak()
    cube = (
        np.stack([np.diff(shape.cdf(edges - d), axis=-1)[:, 0] for d in drift.reshape(-1)]).reshape(
            3, 4, -1
        )
        * sim["true_zlp_intensity"].values[..., None]
    )
    ds = deconvolve(sim["signal"].astype(np.float64), zlp=cube, output="ssd", device="cpu")
    assert ds["ssd"].attrs["units"] == "counts"
    assert ds["ssd"].dims == ("y", "x", "energy")
    np.testing.assert_array_equal(ds["energy"].values, e)
    ssd = ds["ssd"].values
    true = sim["true_ssd"].values
    inside = _inside(e)
    assert bool(ds["valid"].values.all())
    for iy in range(3):
        for ix in range(4):
            assert _err(ssd[iy, ix], true[iy, ix], inside) < 1e-3, (iy, ix)
    np.testing.assert_allclose(ds["zlp_intensity"], sim["true_zlp_intensity"], rtol=1e-6)


def test_lazy_chunked_equals_in_memory():
    """deconvolve on a dask-chunked image (2x2 pixel blocks, energy split in 4 chunks on input)
    equals the in-memory result: the engine hands the kernel whole spectra."""
    sim = _image()
    lazy = sim["signal"].chunk({"y": 2, "x": 2, "energy": 256})
    eager = sim["signal"].compute()
    a = deconvolve(lazy, zlp="fit", device="cpu")
    assert a["ssd"].chunks is not None  # lazy until asked
    b = deconvolve(eager, zlp="fit", device="cpu")
    np.testing.assert_allclose(a["ssd"].values, b["ssd"].values, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(a["valid"].values, b["valid"].values)


def test_deconvolve_methods_run_and_conserve_counts():
    """With the ZLP modelled from the data ('fit' and 'mirror'), sum(SSD)/N0 follows t/lambda
    to 2 % (the model's N0 error), every pixel valid."""
    sim = _image()
    for method in ("fit", "mirror"):
        ds = deconvolve(sim["signal"], zlp=method, output="ssd", device="cpu")
        t = (ds["ssd"].sum("energy") / ds["zlp_intensity"]).values
        true = (sim["true_ssd"].sum("energy") / sim["true_zlp_intensity"]).values
        np.testing.assert_allclose(t, true, rtol=0.02, atol=0.01)
        assert bool(ds["valid"].all())


def test_deconvolve_thickness_maps_equal_truth():
    """Truth: the synthetic t/lambda (0.2 to 3) and thickness (nm). The t_over_lambda map that
    deconvolve makes from its own SSD (sum + power-law tail, over N0 of the true ZLP cube)
    equals the truth to 0.2 %, for the raw SSD and for the SSD reconvolved with a ZLP that
    drifts by +-0.2 eV; thickness_nm = t/lambda x the given mean free path, so with the true
    one it equals the true thickness to 0.2 %."""
    drift = np.linspace(-0.2, 0.2, 12).reshape(3, 4)
    sim = _image(drift_eV=drift)
    e = sim["energy"].values
    edges = e[:, None] + 0.05 * np.array([-1.0, 1.0])
    shape = synthetic.ZeroLossPeak()
    cube = np.stack([np.diff(shape.cdf(edges - d), axis=-1)[:, 0] for d in drift.reshape(-1)])
    cube = cube.reshape(3, 4, -1) * sim["true_zlp_intensity"].values[..., None]
    mfp = float(sim["true_mean_free_path_nm"].values.mean())
    for output in ("ssd", "reconvolved-zlp"):
        ds = deconvolve(sim["signal"], zlp=cube, output=output, mean_free_path_nm=mfp, device="cpu")
        np.testing.assert_allclose(ds["t_over_lambda"], sim["true_t_over_lambda"], rtol=2e-3)
        np.testing.assert_allclose(ds["thickness_nm"], sim["true_t_nm"], rtol=2e-3)
        assert ds["thickness_nm"].attrs["units"] == "nm"
        assert ds.attrs["mean_free_path_nm"] == mfp
    with pytest.raises(ValueError, match="residual"):
        deconvolve(sim["signal"], output="residual", mean_free_path_nm=mfp, device="cpu")


def test_raw_ssd_from_noisy_mirror_model():
    """Truth: the synthetic t/lambda = 1 of a noisy image (1e5 counts per spectrum, ZLP drifting
    by +-0.4 eV, 64 pixels). A model ZLP made from the data (mirrored gain side, fit,
    truncation) carries the counting noise; the roll-off follows the measured error, so every
    pixel's raw SSD is band-limited to its ZLP's FWHM (resolution_eV 0.5 eV) and holds what it
    must: its sum over the model's N0 equals ln(I/N0) of that N0 (eq. 22 with the weight 1 at
    zero frequency; the window misses 1e-4 of I at t/lambda 1) to 0.01 in every pixel (before
    issue 11, 0.2-0.7 above it in 6 of 16 pixels with the mirror). The t_over_lambda map takes
    N0 from the model, so it equals thickness(zlp=<the same model>) exactly; with the
    truncation it is within 2 % of the truth (scatter under 1 %); the mirror's and the fit's N0
    move with the centre's jitter at this count (2 rho(c) dc / N0, eelsgpu.kernels.log_ratio),
    measured up to 6 % (scatter 2 %), below the 10 % at which ZLP_MISMATCH flags a model."""
    drift = np.random.default_rng(1).uniform(-0.4, 0.4, (4, 16))
    sim = synthetic.low_loss_image(
        MATERIALS["drude"],
        t_over_lambda=np.ones((4, 16)),
        shape=(4, 16),
        n_channels=2048,
        dispersion_eV=0.05,
        offset_eV=-5.0,
        total_counts=1e5,
        noise=True,
        drift_eV=drift,
        dtype=np.float32,
    )
    for method, limit, scatter in (
        ("mirror", 0.08, 0.03),
        ("fit", 0.08, 0.03),
        ("threshold", 0.02, 0.01),
    ):
        ds = deconvolve(sim["signal"], zlp=method, output="ssd", device="cpu").compute()
        # (the tail beyond the 97 eV window, 1e-4 of the counts, is within its uncertainty in
        # some pixels: TAIL_UNTRUSTED, not fatal, the only bit)
        others = ds["quality"].values.astype(np.int64) & ~TAIL_UNTRUSTED
        assert bool(ds["valid"].all()) and not others.any()
        np.testing.assert_allclose(ds["resolution_eV"], ds["zlp_fwhm_eV"], rtol=1e-5)
        np.testing.assert_allclose(ds["zlp_fwhm_eV"], 0.5, rtol=0.05)  # measured: noisy
        n0 = ds["zlp_intensity"]
        gap = ds["ssd"].sum("energy") / n0 - np.log(sim["signal"].sum("energy") / n0)
        assert float(np.abs(gap).max()) < 0.01, (method, float(np.abs(gap).max()))
        peer = thickness(sim["signal"], zlp=method, device="cpu").compute()
        np.testing.assert_array_equal(ds["t_over_lambda"].values, peer["t_over_lambda"].values)
        err = ds["t_over_lambda"].values - 1.0
        assert np.abs(err).max() < limit and err.std() < scatter, (method, err)


def test_deconvolve_nan_pixel_run_finishes():
    """deconvolve on an image with a NaN pixel: that pixel flagged, NaN, the rest valid."""
    sim = _image()
    data = sim["signal"].values.copy()
    data[1, 2, 300] = np.nan
    si = spectrum_image(data, sim["energy"].values, source="test-nan", dtype=np.float32)
    ds = deconvolve(si, zlp="fit", device="cpu")
    valid = ds["valid"].values
    assert not valid[1, 2] and valid.sum() == 11
    assert np.isnan(ds["ssd"].values[1, 2]).all()
    assert np.isfinite(ds["ssd"].values[valid]).all()


def test_window_without_zlp_raises():
    """Truth: by construction. A window starting at 10 eV holds no zero-loss peak: deconvolve
    raises NoZeroLossPeakError naming the file (as thickness does) instead of writing a store
    of NaN."""

    sim = _image()
    core = sim["signal"].isel(energy=slice(200, None))
    core.attrs["source"] = "core.dm4"
    with pytest.raises(NoZeroLossPeakError, match="core.dm4"):
        deconvolve(core, device="cpu")


def test_non_uniform_axis_raises():
    """A non-uniform energy axis: EnergyAxisError from the kernel and from deconvolve (naming
    the file)."""
    e, j, zlp, _ = _case("drude", 0.5)
    bent = e + 1e-3 * (e - e[0]) ** 2 / (e[-1] - e[0])
    with pytest.raises(EnergyAxisError):
        fourier_log_kernel(j[None], bent, zlp[None])
    si = spectrum_image(j[None], bent, source="bent.msa", dtype=np.float64)
    with pytest.raises(EnergyAxisError, match="bent.msa"):
        deconvolve(si, zlp="fit", device="cpu")


def test_interface_outputs_and_band_limited():
    """The interface H11b's Kramers-Kronig builds on (phase2.md), on the synthetic image (truth:
    true_ssd and the synthetic ZLP's 0.5 eV FWHM): deconvolve returns ``zlp_fwhm_eV`` (the
    measured FWHM, to 2 %), ``resolution_eV`` (the band-limited output's is the ZLP FWHM; the
    ZLP-reconvolved one's too; the Gaussian's its own), ``quality`` (uint32 with the bit table in
    its attributes; valid = no fatal bit) and the ``deconvolution_output`` attribute;
    ``output="band-limited"`` is the true SSD convolved with a unit-area Gaussian of the
    measured FWHM, zero loss at 0 eV, to 1e-3 of its peak (the model's misfit counted)."""
    sim = _image()
    e = sim["energy"].values
    ds = deconvolve(sim["signal"], zlp="mirror", output="band-limited", device="cpu").compute()
    assert ds.attrs["deconvolution_output"] == "band-limited"
    assert ds["quality"].dtype == np.uint32 and "flag_bits" in ds["quality"].attrs
    assert ds["quality"].attrs["flag_bits"]["ZLP_MISMATCH"]["fatal"] is True
    np.testing.assert_array_equal(ds["valid"].values, (ds["quality"].values & FATAL) == 0)
    w = ds["zlp_fwhm_eV"].values
    np.testing.assert_allclose(w, 0.5, rtol=0.02)
    np.testing.assert_allclose(ds["resolution_eV"].values, w)
    true = sim["true_ssd"].values.reshape(-1, e.size)
    got = ds["ssd"].values.reshape(-1, e.size)
    x = np.arange(-100, 101)
    for i, wi in enumerate(w.ravel()):
        sigma = wi / (2 * np.sqrt(2 * np.log(2))) / 0.1
        g = np.exp(-0.5 * (x / sigma) ** 2)
        want = np.convolve(true[i], g / g.sum())[100 : 100 + e.size]
        assert _err(got[i], want, _inside(e)) < 1e-3, i
    rec = deconvolve(sim["signal"], zlp="mirror", device="cpu").compute()
    np.testing.assert_allclose(rec["resolution_eV"].values, w, rtol=1e-6)
    gau = deconvolve(sim["signal"], output="reconvolved-gaussian", fwhm_eV=0.8, device="cpu")
    np.testing.assert_allclose(gau["resolution_eV"].values, 0.8)


def test_numbers_out_of_range_are_input_errors():
    """Truth: by construction. fwhm_eV <= 0, pad_to below 2, an inverted search range, a
    negative mean free path or density: one InputError naming the argument and its unit, before
    anything runs."""
    sim = _image()
    si = sim["signal"]
    for kw, match in (
        ({"output": "reconvolved-gaussian", "fwhm_eV": 0.0}, "fwhm_eV.*eV"),
        ({"output": "reconvolved-gaussian", "fwhm_eV": -0.3}, "fwhm_eV"),
        ({"pad_to": 0}, "pad_to"),
        ({"search_eV": (5.0, -5.0)}, "search_eV"),
        ({"mean_free_path_nm": -100.0}, "mean_free_path_nm.*nm"),
        ({"density_g_cm3": -2.7}, "density_g_cm3.*g/cm3"),
    ):
        with pytest.raises(InputError, match=match):
            deconvolve(si, device="cpu", **kw)


@pytest.mark.parametrize("shift", [20.0, 30.0, 100.0])
def test_zlp_off_axis_right_or_refused(shift):
    """Issue 12 items 5 and 6, truth: the synthetic t/lambda (0.2 to 3) and true SSD. The image
    on an axis offset by +20, +30, +100 eV: deconvolve finds every ZLP (AxisOffsetWarning, the
    AXIS_OFFSET bit, not fatal), its t/lambda map within 0.2 % of the truth, its raw SSD on the
    stored axis minus the ZLP's offset (the attribute axis_shift_eV), equal to the true SSD to
    1e-3 of its peak; thickness gives the same t/lambda; with search_eV=(-5, 5) both refuse."""
    sim = _image()
    e = sim["energy"].values
    si = spectrum_image(sim["signal"].values, e + shift, source="offset.dm4", dtype=np.float64)
    with pytest.warns(AxisOffsetWarning, match="offset.dm4"):
        ds = deconvolve(si, zlp="mirror", output="ssd", device="cpu").compute()
    assert ds.attrs["axis_shift_eV"] == pytest.approx(shift)
    np.testing.assert_allclose(ds["energy"].values, e, atol=1e-9)
    assert bool(ds["valid"].all()) and (ds["quality"].values & AXIS_OFFSET).all()
    np.testing.assert_allclose(ds["t_over_lambda"], sim["true_t_over_lambda"], rtol=2e-3)
    true = sim["true_ssd"].values.reshape(-1, e.size)
    got = ds["ssd"].values.reshape(-1, e.size)
    for i in range(got.shape[0]):
        assert _err(got[i], true[i], _inside(e)) < 1e-3, i
    with pytest.warns(AxisOffsetWarning):
        th = thickness(si, zlp="mirror", device="cpu").compute()
    np.testing.assert_allclose(th["t_over_lambda"], ds["t_over_lambda"], rtol=1e-6)
    for run in (deconvolve, thickness):
        with pytest.raises(NoZeroLossPeakError, match="offset.dm4"):
            run(si, search_eV=(-5.0, 5.0), device="cpu")
