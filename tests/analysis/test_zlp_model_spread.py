"""The ZLP model's systematic part (issue 14): ``zlp_models=`` of ``thickness`` and ``deconvolve``.

Truth: ``eelsgpu.synthetic.low_loss_image`` with a known t/lambda and a split-Gaussian ZLP
(:class:`eelsgpu.synthetic.ZeroLossPeak`): symmetric (every model is exact, so the spread must be
small against the counting sigma) or asymmetric (the mirror and fit models are biased by a known
amount, the threshold model is not, so the reported spread must cover the biased models' error);
and each model's own run (its ``valid`` and ZLP_MISMATCH bits) for which models count.
"""

from __future__ import annotations

import numpy as np
import pytest

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.errors import InputError
from eelsgpu.kernels.quality import ZLP_MISMATCH

T_TRUE = np.array([[0.5, 1.0]])
LAMBDA_NM = 100.0
MODELS = ("threshold", "mirror", "fit")


def _image(asymmetry: float, noise: bool = False):
    zlp = synthetic.ZeroLossPeak(0.8, asymmetry=asymmetry)
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 2.0),
        t_over_lambda=T_TRUE,
        shape=(1, 2),
        n_channels=1024,
        dispersion_eV=0.05,
        zlp=zlp,
        total_counts=1e6,
        noise=noise,
        seed=1,
        dtype=np.float64,
    )
    return sim["signal"]


def _thk(si, **kw):
    kw.setdefault("mean_free_path_nm", LAMBDA_NM)
    kw.setdefault("tail", "none")
    return eelsgpu.thickness(si, device="cpu", **kw).compute()


def test_symmetric_zlp_models_agree():
    """Truth: a symmetric ZLP, where threshold, mirror and fit all recover t/lambda (noise-free,
    1e6 counts): every model passes, and the spread is under half the counting sigma of the same
    counts (analytic, gain 1), so it adds almost nothing to the systematic sigma."""
    ds = _thk(_image(0.0), zlp="threshold", zlp_models="all", uncertainty="analytic", gain=1.0)
    assert (ds["zlp_models_passed"].values == 3).all()
    spread = ds["t_over_lambda_sigma_zlp_model"].values
    sigma = ds["t_over_lambda_sigma"].values
    assert np.all(spread < 0.5 * sigma), (spread, sigma)
    np.testing.assert_allclose(
        ds["thickness_nm_sigma_zlp_model"].values, LAMBDA_NM * spread, rtol=1e-9
    )
    assert "zlp_model" in ds["t_over_lambda_sigma_systematic"].attrs["parts"]
    assert ds.attrs["zlp_models_compared"] == list(MODELS)


def test_asymmetric_zlp_spread_covers_the_biased_models():
    """Truth: t/lambda 0.5 and 1.0 of the synthetic image under a ZLP of asymmetry 0.05, which
    every model's checks accept but which biases mirror and fit by about +0.04 (threshold stays
    within 1e-3): the spread is far above the counting sigma, each model's error is within twice
    the spread (half the range), and the systematic sigma is the quadrature sum of its parts."""
    si = _image(0.05)
    kw = dict(tail="auto", uncertainty="replicas:30", gain=1.0)
    ds = _thk(si, zlp="threshold", zlp_models="all", **kw)
    assert (ds["zlp_models_passed"].values == 3).all()
    spread = ds["t_over_lambda_sigma_zlp_model"].values
    assert np.all(spread > 10 * ds["t_over_lambda_sigma"].values)
    runs = {m: _thk(si, zlp=m, tail="auto") for m in MODELS}
    err = {m: np.abs(r["t_over_lambda"].values - T_TRUE) for m, r in runs.items()}
    for m in MODELS:
        assert np.all(err[m] <= 2.0 * spread + 1e-3), (m, err[m], spread)
    assert np.all(err["mirror"] > spread)  # a real bias, which one sigma would not cover
    # t/lambda's systematic sigma: the ZLP part and the tail's (50 % of its part of t/lambda)
    tail = 0.5 * -np.log1p(-np.nan_to_num(ds["tail_fraction"].values))
    np.testing.assert_allclose(
        ds["t_over_lambda_sigma_systematic"].values ** 2, spread**2 + tail**2, rtol=1e-12
    )
    assert set(ds["t_over_lambda_sigma_systematic"].attrs["parts"]) == {"zlp_model", "tail"}
    # N0 too: the biased models' N0 differs, and its spread is a part of its systematic sigma
    n0 = ds["zlp_intensity_sigma_zlp_model"].values
    assert np.all(n0 > 10 * ds["zlp_intensity_sigma"].values)
    np.testing.assert_allclose(ds["zlp_intensity_sigma_systematic"].values, n0, rtol=1e-12)


def test_deconvolve_reports_the_same_spread():
    """Truth: deconvolve's t/lambda is exactly thickness's with ``tail="auto"`` (its docstring),
    so its ZLP-model spread is the one thickness reports with that tail, bit for bit; the
    systematic part is added without ``uncertainty`` too."""
    si = _image(0.05)
    dec = eelsgpu.deconvolve(si, zlp="mirror", device="cpu", zlp_models=("threshold",)).compute()
    thk = _thk(si, zlp="mirror", tail="auto", mean_free_path_nm=None, zlp_models="threshold")
    for v in ("t_over_lambda_sigma_zlp_model", "zlp_intensity_sigma_zlp_model"):
        assert dec[v].values.tobytes() == thk[v].values.tobytes(), v
    assert dec.attrs["zlp_models_compared"] == ["mirror", "threshold"]
    assert "zlp_model" in dec["t_over_lambda_sigma_systematic"].attrs["parts"]
    assert "t_over_lambda_sigma" not in dec
    with pytest.raises(InputError, match="residual"):
        eelsgpu.deconvolve(si, output="residual", device="cpu", zlp_models="all")


def test_a_model_whose_checks_fail_is_left_out():
    """Truth: each model's own run. Under asymmetry 0.1 the mirror and fit models are flagged
    ZLP_MISMATCH at t/lambda 0.5 (not at 1.0): there only threshold passes, so no spread is
    measured (NaN, passed 1: their biased +0.08 is not let in); at 1.0 the spread is half the
    range of the three. The counts match the runs' own checks pixel by pixel."""
    si = _image(0.1)
    ds = _thk(si, zlp="threshold", zlp_models="all")
    runs = {m: _thk(si, zlp=m) for m in MODELS}
    ok = {
        m: r["valid"].values & ((r["quality"].values & ZLP_MISMATCH) == 0) for m, r in runs.items()
    }
    assert not ok["mirror"][0, 0] and ok["mirror"][0, 1]  # the case this test is about
    np.testing.assert_array_equal(ds["zlp_models_passed"].values, sum(ok.values()))
    vals = np.array([runs[m]["t_over_lambda"].values for m in MODELS])
    spread = ds["t_over_lambda_sigma_zlp_model"].values
    assert np.isnan(spread[0, 0])
    assert np.isnan(ds["t_over_lambda_sigma_systematic"].values[0, 0])
    np.testing.assert_allclose(spread[0, 1], np.ptp(vals[:, 0, 1]) / 2, rtol=1e-12)


def test_kk_thickness_zlp_model_part():
    """Truth: the KK thickness of each model's own run: the spread of ``thickness_nm`` is half
    the range of the three runs' thickness, the only part of its systematic sigma (a metal, no
    mean free path)."""
    si = _image(0.05)
    si.attrs.update(beam_energy_keV=200.0, collection_angle_mrad=10.0)
    kw = dict(method="kk", metal=True, mean_free_path_nm=None)
    ds = _thk(si, zlp="threshold", zlp_models="all", **kw)
    vals = np.array([_thk(si, zlp=m, **kw)["thickness_nm"].values for m in MODELS])
    np.testing.assert_allclose(
        ds["thickness_nm_sigma_zlp_model"].values, np.ptp(vals, axis=0) / 2, rtol=1e-12
    )
    assert list(ds["thickness_nm_sigma_systematic"].attrs["parts"]) == ["zlp_model"]


def test_default_outputs_unchanged_and_refusals():
    """Truth: the runs without ``zlp_models`` (the analysis before this option): the default and
    ``zlp_models=None`` are byte-identical and hold no ZLP-model variable; with it, every
    variable of the default run but the systematic sums is byte-identical. Bad model lists are
    refused with one line."""
    si = _image(0.05, noise=True)
    kw = dict(zlp="threshold", uncertainty="analytic", gain=1.0)
    base = _thk(si, **kw)
    none = _thk(si, zlp_models=None, **kw)
    withz = _thk(si, zlp_models="all", **kw)
    assert not [v for v in base.data_vars if "zlp_model" in v]
    assert list(base.data_vars) == list(none.data_vars)
    for v in base.data_vars:
        assert base[v].values.tobytes() == none[v].values.tobytes(), v
        if not v.endswith("_systematic"):
            assert base[v].values.tobytes() == withz[v].values.tobytes(), v
    assert base.attrs == none.attrs
    for bad, msg in ((["mirror", "gauss"], "not a ZLP model"), (["threshold"], "at least two")):
        with pytest.raises(InputError, match=msg):
            eelsgpu.thickness(si, zlp="threshold", zlp_models=bad, device="cpu")
