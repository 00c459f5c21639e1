"""Uncertainty kernels (kernels/uncertainty.py and the sigmas of kernels/windows.py) against
Monte-Carlo and analytic truth, on every array namespace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import asarray, to_numpy

from eelsgpu.kernels.uncertainty import (
    draw_replicas,
    estimate_gain,
    linear_sigma,
    log_ratio_variance,
    poisson_variance,
    ratio_sigma,
    replica_moments,
)
from eelsgpu.kernels.windows import _peak_fit, window_kernel


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_estimate_gain_from_channel_noise(xp, gain):
    """Truth: Poisson counts times a known gain on smooth spectra (a Gaussian band on a falling
    background, 200 to 5e4 electrons per channel): the 4th-difference estimate is within 5 %.
    Covers the noise model's gain estimate (the `gain` the analyses use when none is given)."""
    e = np.linspace(100.0, 200.0, 600)
    lam = 200.0 + 5e4 * np.exp(-0.5 * ((e - 150.0) / 8.0) ** 2) + 3e3 * (e / 100.0) ** -3
    x = gain * np.random.default_rng(3).poisson(np.tile(lam, (40, 1))).astype(float)
    g, n = estimate_gain(asarray(xp, x))
    assert float(to_numpy(g)) == pytest.approx(gain, rel=0.05)
    assert int(to_numpy(n)) > 20000
    g0, n0 = estimate_gain(asarray(xp, np.zeros((2, 50))))
    assert np.isnan(float(to_numpy(g0))) and int(to_numpy(n0)) == 0


def test_log_ratio_variance_matches_monte_carlo(xp):
    """Truth: Monte Carlo of independent Poisson zero-loss (N0) and inelastic (M) counts,
    t/lambda = ln((N0 + M) / N0), 20000 draws per case: the closed form 1/N0 - 1/I (eq. 16's
    counting variance; times the gain for data in units of g per electron) is within 5 % of the
    observed variance, for t/lambda 0.1 to 3 and a gain of 1 and 4."""
    rng = np.random.default_rng(0)
    for n0, tl, gain in [(1e4, 0.1, 1.0), (1e5, 1.0, 1.0), (1e4, 3.0, 4.0)]:
        m = n0 * (np.exp(tl) - 1)
        a = gain * rng.poisson(n0, 20000).astype(float)
        b = gain * rng.poisson(m, 20000).astype(float)
        observed = np.var(np.log((a + b) / a))
        v = to_numpy(log_ratio_variance(asarray(xp, a), asarray(xp, a + b), gain))
        assert np.median(v) == pytest.approx(observed, rel=0.05)
    bad = to_numpy(log_ratio_variance(asarray(xp, [0.0, 10.0]), asarray(xp, [5.0, 5.0])))
    assert np.isnan(bad).all()


def test_ratio_sigma_with_covariance_matches_monte_carlo(xp):
    """Truth: Monte Carlo of a = sum of 30 Poisson channels, b = sum of 100 channels that include
    a's 30 (a window inside another); the first-order sigma of a / b with the covariance
    sum_j alpha_a alpha_b var_j is within 5 % of the observed scatter, and without the covariance
    it would be about 40 % too large."""
    rng = np.random.default_rng(1)
    lam = np.full(100, 400.0)
    x = rng.poisson(lam, size=(20000, 100)).astype(float)
    a, b = x[:, :30].sum(1), x.sum(1)
    alpha_a = np.zeros((1, 100))
    alpha_a[0, :30] = 1.0
    alpha_b = np.ones((1, 100))
    var = poisson_variance(asarray(xp, lam[None, :]))
    va = linear_sigma(asarray(xp, alpha_a), var) ** 2
    vb = linear_sigma(asarray(xp, alpha_b), var) ** 2
    cov = xp.sum(asarray(xp, alpha_a * alpha_b) * var, axis=-1)
    a0, b0 = asarray(xp, [lam[:30].sum()]), asarray(xp, [lam.sum()])
    sig = float(to_numpy(ratio_sigma(a0, b0, va, vb, cov))[0])
    observed = float(np.std(a / b))
    assert sig == pytest.approx(observed, rel=0.05)
    no_cov = float(to_numpy(ratio_sigma(a0, b0, va, vb, 0 * cov))[0])
    assert no_cov > 1.3 * observed


def test_replicas_reproducible_whatever_the_blocks(xp):
    """Truth: the seeding rule (generator per (seed, global pixel index)): the replicas of a
    pixel are the same when it is drawn alone, in another block or in another order; their mean
    and variance are x and g x (Poisson of x / g, times g); replica_moments gives NumPy's
    nanmean / nanstd(ddof=1) and NaN where too few replicas are finite."""
    x = np.array([[1e3, 4e3, 9e3], [2e3, 2e3, 2e3], [5e2, 1e4, 1.0]])
    idx = np.array([7, 8, 9])
    whole = to_numpy(draw_replicas(asarray(xp, x), 2000, pixel_index=asarray(xp, idx), seed=3))
    alone = to_numpy(
        draw_replicas(asarray(xp, x[1:2]), 2000, pixel_index=asarray(xp, idx[1:2]), seed=3)
    )
    np.testing.assert_array_equal(whole[2000:4000], alone)
    other = to_numpy(draw_replicas(asarray(xp, x), 2000, pixel_index=asarray(xp, idx), seed=4))
    assert not np.array_equal(whole, other)
    g = to_numpy(
        draw_replicas(asarray(xp, 2.0 * x), 2000, pixel_index=asarray(xp, idx), gain=2.0)
    ).reshape(3, 2000, 3)
    np.testing.assert_allclose(g.mean(1), 2.0 * x, rtol=0.02, atol=0.5)
    np.testing.assert_allclose(g.var(1), 2.0 * 2.0 * x, rtol=0.1, atol=0.5)
    v = np.random.default_rng(0).normal(size=12)
    v[[0, 1, 2, 5]] = np.nan
    mean, std = replica_moments(asarray(xp, v), 4)
    ref = v.reshape(3, 4)
    np.testing.assert_allclose(to_numpy(mean)[1:], np.nanmean(ref[1:], 1))
    np.testing.assert_allclose(to_numpy(std)[1:], np.nanstd(ref[1:], 1, ddof=1))
    assert np.isnan(to_numpy(std)[0])  # 1 finite replica of 4
    # all finite (NumPy's float64-accumulated mean / std, no copy): a map and a per-pixel cube,
    # float32 replicas as a float32 block gives them
    cube = np.random.default_rng(1).normal(3.0, 2.0, size=(5 * 7, 6)).astype(np.float32)
    mean, std = replica_moments(asarray(xp, cube), 7)
    ref = cube.astype(np.float64).reshape(5, 7, 6)
    np.testing.assert_allclose(to_numpy(mean), ref.mean(1), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(std), ref.std(1, ddof=1), rtol=1e-12)
    mean, std = replica_moments(asarray(xp, cube[:, 0]), 7)
    np.testing.assert_allclose(to_numpy(std), ref[:, :, 0].std(1, ddof=1), rtol=1e-12)


def test_window_sigmas_equal_closed_forms(xp):
    """Truth: closed forms. Without a background the window intensity is sum_i f_i x_i, so its
    sigma is sqrt(sum_i f_i^2 g x_i) exactly (cut channels included); a measured variance given
    as g x gives the same sigmas as the gain g; the ratio of a window with itself has sigma 0."""
    e = np.linspace(100.0, 200.0, 201)
    x = np.random.default_rng(2).poisson(1e3 + 10 * e, size=(4, e.size)).astype(float)
    f = np.clip(np.minimum(e + 0.25, 151.3) - np.maximum(e - 0.25, 120.1), 0, 0.5) / 0.5
    kw = dict(windows=(("a", 120.1, 151.3),), ratios=(("a", "a"),))
    out = window_kernel(asarray(xp, x), asarray(xp, e), uncertainty="analytic", gain=3.0, **kw)
    np.testing.assert_allclose(to_numpy(out["a_sigma"]), np.sqrt((f**2 * 3.0 * x).sum(1)))
    np.testing.assert_allclose(to_numpy(out["a_over_a_sigma"]), 0.0, atol=1e-9)
    var = window_kernel(
        asarray(xp, x), asarray(xp, e), uncertainty="analytic", variance=asarray(xp, 3.0 * x), **kw
    )
    np.testing.assert_allclose(to_numpy(var["a_sigma"]), to_numpy(out["a_sigma"]))


@pytest.mark.parametrize("model", ["power-law", "linear"])
def test_window_sensitivities_match_finite_differences(model):
    """Truth: numerical derivatives. The analytic sigma is sqrt(sum_j a_j^2 var_j) with a_j the
    estimator's derivative by channel j; here a_j is taken by finite differences of the kernel's
    own outputs (intensity with the background fit, centroid, 5-channel peak, FWHM) and the sigma built
    from them equals the kernel's analytic sigma to 1e-4."""
    e = np.linspace(140.0, 200.0, 121)
    lam = 2e4 * np.exp(-0.5 * ((e - 171.3) / 2.0) ** 2) + 5e4 * (e / 140.0) ** -3
    kw = dict(
        windows=(("p", 165.0, 178.0),),
        backgrounds={"p": [(145.0, 160.0), (185.0, 195.0)]},
        background_model=model,
        centroid=("p",),
        peak=("p",),
        width=("p",),
        peak_channels=5,
    )
    out = window_kernel(lam[None, :], e, uncertainty="analytic", **kw)
    h = 1e-3 * np.sqrt(lam)
    plus = lam[None, :] + np.diag(h)
    minus = lam[None, :] - np.diag(h)
    up, down = window_kernel(plus, e, **kw), window_kernel(minus, e, **kw)
    for name in ("p", "p_centroid_eV", "p_peak_eV", "p_fwhm_eV"):
        a = (up[name] - down[name]) / (2 * h)
        assert np.sqrt(np.sum(a * a * lam)) == pytest.approx(out[f"{name}_sigma"][0], rel=1e-4)


def test_peak_sensitivity_is_the_vertex_derivative(xp):
    """Truth: the 3-point log-parabola vertex of a Gaussian sampled on a non-uniform axis is the
    Gaussian's centre; the sensitivities sum_i q_i s_i = 0 (the vertex does not move when every
    density is scaled: scale invariance), on every namespace."""
    e = np.array([0.0, 0.9, 2.1, 3.0, 4.2, 5.0])
    s = np.exp(-0.5 * ((e - 2.3) / 1.1) ** 2)[None, :]
    p, q, idx = _peak_fit(asarray(xp, s), asarray(xp, e), asarray(xp, np.ones(6, bool)), 1, True)
    assert float(to_numpy(p)[0]) == pytest.approx(2.3, abs=1e-9)
    assert to_numpy(idx).tolist() == [[1, 2, 3]]
    assert float(np.sum(to_numpy(q) * s[0, 1:4])) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["analytic", "replicas"])
def test_window_sigmas_same_on_every_namespace(xp, method):
    """Truth: NumPy's own result (kernels are written once against the array API). Every sigma
    of a block with power-law and linear backgrounds, centroid, 5-channel peak and an
    overlapping-window ratio is the same on this namespace as on NumPy (replicas: the same
    draws, as they are seeded by pixel index)."""
    e = np.linspace(140.0, 200.0, 121)
    lam = 2e4 * np.exp(-0.5 * ((e - 171.3) / 2.0) ** 2) + 5e4 * (e / 140.0) ** -3
    x = np.random.default_rng(4).poisson(lam, size=(6, e.size)).astype(float)
    kw = dict(
        windows=(("p", 165.0, 178.0), ("q", 170.0, 173.0)),
        backgrounds={"p": [(145.0, 160.0)], "q": [(145.0, 160.0), (185.0, 195.0)]},
        centroid=("p",),
        peak=("q",),
        width=("p",),
        peak_channels=5,
        ratios=(("q", "p"),),
        uncertainty=method,
        n_replicas=5,
    )
    ref = window_kernel(x, e, **kw)
    out = window_kernel(asarray(xp, x), asarray(xp, e), **kw)
    names = [k for k in ref if k.endswith("_sigma")]
    assert len(names) == 6
    for k in names:
        assert np.all(np.isfinite(ref[k])), k
        np.testing.assert_allclose(to_numpy(out[k]), ref[k], rtol=1e-9, err_msg=k)


def test_replica_sigmas_of_any_kernel_with_per_pixel_extras(xp):
    """Truth: closed form. A kernel ``scale_p * sum(x)`` with a per-pixel ``scale`` map and a
    per-pixel ``weights`` cube (0/1 per channel) has sigma ``scale_p sqrt(g sum_j w_j x_j)``; 800
    replicas in batches of a few pixels (the memory bound) give it within 8 %, the per-pixel
    arrays repeated for each replica; the channel slice draws only those channels."""
    from eelsgpu.kernels.uncertainty import replica_sigmas

    def kernel(b, e, scale, weights):
        from eelsgpu._xp import array_namespace

        ns = array_namespace(b)
        return {"s": scale * ns.sum(b * weights, axis=-1)}

    x = np.array([[400.0] * 10, [900.0] * 10, [100.0] * 10])
    scale = np.array([1.0, 2.0, 0.5])
    weights = np.tile((np.arange(10) % 2).astype(float), (3, 1))
    out = replica_sigmas(
        kernel,
        asarray(xp, 2.0 * x),
        asarray(xp, np.arange(10.0)),
        ["s"],
        n_replicas=800,
        gain=2.0,
        extras={"scale": asarray(xp, scale), "weights": asarray(xp, weights)},
        batch_elements=20000,
    )
    expect = scale * np.sqrt(2.0 * (2.0 * x * weights).sum(1))
    np.testing.assert_allclose(to_numpy(out["s"]), expect, rtol=0.08)
    part = replica_sigmas(
        kernel,
        asarray(xp, 2.0 * x),
        asarray(xp, np.arange(10.0)),
        ["s"],
        n_replicas=800,
        gain=2.0,
        channels=(0, 4),
        extras={"scale": asarray(xp, scale), "weights": asarray(xp, weights[:, :4])},
    )
    expect4 = scale * np.sqrt(2.0 * (2.0 * x * weights)[:, :4].sum(1))
    np.testing.assert_allclose(to_numpy(part["s"]), expect4, rtol=0.08)


def _fourier_log(j, m, filt, n_fft):
    """A plain Fourier-log (eq. 22): S = N0 F^-1[R~ ln(J~/Z~)] with Z = m J (threshold model),
    the phase of J~/Z~ unwrapped along frequency (eqs. 23-25)."""
    z = j * m
    jf, zf = np.fft.rfft(j, n_fft), np.fft.rfft(z, n_fft)
    n0 = z.sum(-1, keepdims=True)
    ratio = jf / zf
    log = np.log(np.abs(ratio)) + 1j * np.unwrap(np.angle(ratio), axis=-1)
    return n0 * np.fft.irfft(filt * log, n_fft)[..., : j.shape[-1]]


@pytest.mark.parametrize("t_over_lambda", [0.5, 1.0])
def test_fourier_log_ssd_variance_matches_monte_carlo(xp, t_over_lambda):
    """Truth: Monte Carlo. 800 Poisson realisations (1e6 counts) of the noise-free spectrum of
    eelsgpu.synthetic.low_loss_spectrum (Drude, Ep 15 eV), deconvolved by a plain Fourier-log
    (eq. 22) with a threshold ZLP (the data up to the first minimum: the model moves with the
    data) and a Gaussian reconvolution of 0.5 eV FWHM. The linearised variance (four FFT
    convolutions) is within 15 % of the observed variance of the SSD at 3, 8, 15, 22 and 30 eV,
    and so is that of two linear functionals of the SSD (a sum-rule-like integral of S/E over
    3-40 eV, a 10-20 eV window) by fourier_log_functional_variance.
    Covers the counting noise of the SSD per channel, the ZLP model's share (through N0 and Z)
    included; the kernel next session's deconvolve will call."""
    from eelsgpu import synthetic
    from eelsgpu.kernels.uncertainty import (
        fourier_log_functional_variance,
        fourier_log_ssd_variance,
    )

    ds = synthetic.low_loss_spectrum(
        synthetic.Drude(15.0, 1.0), t_over_lambda=t_over_lambda, dtype=np.float64
    )
    e = ds["energy"].values
    lam = ds["signal"].values
    origin = int(np.argmin(np.abs(e)))
    lam = np.roll(lam, -origin)  # channel 0 = 0 eV (the transform's origin)
    e0 = np.roll(e, -origin)
    k_min = int(np.argmin(lam[: int(3.0 / 0.05)]))  # first minimum after the ZLP (< 3 eV)
    m = ((np.arange(e.size) <= k_min) | (e0 < 0)).astype(float)
    n_fft = 4096
    sigma_ch = 0.5 / (2 * np.sqrt(2 * np.log(2))) / 0.05
    f = np.fft.rfftfreq(n_fft)
    filt = np.exp(-2 * (np.pi * sigma_ch * f) ** 2)
    x = np.random.default_rng(7).poisson(np.tile(lam, (800, 1))).astype(float)
    with np.errstate(all="ignore"):
        ssd = _fourier_log(x, m, filt, n_fft)
    keep = np.isfinite(ssd).all(1)  # (a zero of Z~ on the grid makes a rare realisation NaN)
    x, ssd = x[keep], ssd[keep]
    assert keep.sum() > 790
    observed = ssd.var(0, ddof=1)
    var = fourier_log_ssd_variance(
        asarray(xp, x[:50]),
        asarray(xp, x[:50] * m),
        asarray(xp, filt),
        asarray(xp, x[:50]),
        n_fft=n_fft,
        zlp_from_data=asarray(xp, np.tile(m, (50, 1))),
        ssd=asarray(xp, ssd[:50]),
    )
    quoted = np.median(to_numpy(var), axis=0)
    for energy in (3.0, 8.0, 15.0, 22.0, 30.0):
        k = int(np.argmin(np.abs(e0 - energy)))
        assert quoted[k] / observed[k] == pytest.approx(1.0, abs=0.15), (energy, t_over_lambda)
    # linear functionals: a sum-rule-like integral of S/E over 3-40 eV, a 10-20 eV window
    for a in (np.where((e0 > 3) & (e0 < 40), 1 / np.abs(e0 + 1e-9), 0.0), 1.0 * (abs(e0 - 15) < 5)):
        q_var = fourier_log_functional_variance(
            asarray(xp, a),
            asarray(xp, x[:50]),
            asarray(xp, x[:50] * m),
            asarray(xp, filt),
            asarray(xp, x[:50]),
            n_fft=n_fft,
            zlp_from_data=asarray(xp, np.tile(m, (50, 1))),
            ssd=asarray(xp, ssd[:50]),
        )
        ratio = np.median(to_numpy(q_var)) / np.var(ssd @ a, ddof=1)
        assert ratio == pytest.approx(1.0, abs=0.15), (ratio, t_over_lambda)


def test_sandwich_covariance_of_an_onset_fit_matches_monte_carlo(xp):
    """Truth: Monte Carlo. 2000 Poisson realisations of an onset ``A (E - Eg)^1.5`` plus a flat
    background (the band-gap model of kernels/bandgap, exponent fixed), fitted for (A, Eg, c) by
    Gauss-Newton with unit weights; the sandwich covariance at each fit's solution gives sigma(Eg)
    and sigma(A) within 10 % of the observed scatter. The plug for the band gap's sigma."""
    from eelsgpu.kernels.uncertainty import sandwich_covariance

    e = np.linspace(1.0, 4.0, 151)

    def model(p):
        amp, eg, c = p[..., 0:1], p[..., 1:2], p[..., 2:3]
        d = np.clip(e - eg, 0, None)
        f = amp * d**1.5 + c
        jac = np.stack(
            [d**1.5, -1.5 * amp * np.sqrt(d), np.ones_like(d)], axis=-1
        )  # df/dA, df/dEg, df/dc
        return f, jac

    truth = np.array([400.0, 2.0, 50.0])
    lam, _ = model(truth[None])
    y = np.random.default_rng(8).poisson(np.tile(lam[0], (2000, 1))).astype(float)
    p = np.tile(truth, (2000, 1))
    for _ in range(20):  # Gauss-Newton
        f, jac = model(p)
        step = np.linalg.solve(
            np.einsum("nip,niq->npq", jac, jac), np.einsum("nip,ni->np", jac, y - f)[..., None]
        )[..., 0]
        p = p + step
    f, jac = model(p)
    cov = to_numpy(
        sandwich_covariance(asarray(xp, jac), asarray(xp, np.ones(e.size)), asarray(xp, y))
    )
    quoted = np.sqrt(np.median(cov[:, [0, 1], [0, 1]], axis=0))
    observed = p[:, :2].std(0, ddof=1)
    np.testing.assert_allclose(quoted / observed, 1.0, atol=0.1)


def test_normalisation_sigmas_are_the_first_order_moves(xp):
    """Truth: eps = 1 / (1 + K g) moved by K (1 + s), s = 1e-7, in NumPy complex arithmetic
    (eqs. 31-34), and the plasmon crossing (linear between channels, as optics does) recomputed
    with eps1 moved: the kernels' first-order sigmas equal the moves / s within 1e-4; NaN where
    |1 - eps| dK/K > 0.2."""
    from eelsgpu.kernels.uncertainty import (
        LINEAR_MOVE_MAX,
        eps_normalisation_sigmas,
        plasmon_crossing_shift_eV,
    )

    rng = np.random.default_rng(4)
    g = rng.normal(0, 0.5, (3, 40)) + 1j * rng.uniform(0.05, 0.5, (3, 40))
    g[:, :4] = -0.995 + 0.005j  # 1/eps near 0: |eps| ~ 140, a metal below its plasmon
    eps = 1 / (1 + g)
    s = 1e-7
    moved = 1 / (1 + g * (1 + s))
    rel = np.array([0.01, 0.02, 0.005])
    s1, s2, sn = (
        to_numpy(v)
        for v in eps_normalisation_sigmas(
            asarray(xp, eps.real), asarray(xp, eps.imag), asarray(xp, rel)
        )
    )
    ok = np.abs(1 - eps) * rel[:, None] <= LINEAR_MOVE_MAX
    assert 0 < ok.sum() < ok.size
    assert np.all(np.isnan(s1[~ok])) and np.all(np.isnan(sn[~ok]))
    r = rel[:, None]
    np.testing.assert_allclose(s1[ok], np.abs((moved - eps).real / s * r)[ok], rtol=1e-4)
    np.testing.assert_allclose(s2[ok], np.abs((moved - eps).imag / s * r)[ok], rtol=1e-4)

    def n_of(z):
        return np.sqrt((np.abs(z) + z.real) / 2)

    np.testing.assert_allclose(sn[ok], (np.abs(n_of(moved) - n_of(eps)) / s * r)[ok], rtol=1e-3)

    e1 = np.array([[-2.0, -1.0, 1.0, 2.0]])
    d = np.array([[0.3, 0.1, -0.2, 0.4]])
    ep = np.array([1.5])  # channels 1 and 2 (E = 0, 1, 2, 3): E_p = 1 + 1 / 2

    def crossing(x):
        return 1.0 - x[0, 1] / (x[0, 2] - x[0, 1])

    want = abs(crossing(e1 + s * d) - crossing(e1)) / s
    got = to_numpy(
        plasmon_crossing_shift_eV(asarray(xp, e1), asarray(xp, d), asarray(xp, ep), 0.0, 1.0)
    )
    np.testing.assert_allclose(got, [want], rtol=1e-5)
