"""The synthetic model against analytic truth: sum rules of the dielectric models, the Poisson law
of plural scattering, eq. 31 for the single scattering, and an independent generator (the one
that made shared/reference/exspy-cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from eelsgpu import synthetic
from eelsgpu.kernels.dielectric import bulk_loss_per_eV_nm

MODELS = [
    synthetic.Drude(15.0, 1.0),
    synthetic.Drude(16.7, 3.7),
    synthetic.Lorentz(16.6, 5.07, 3.7),
    synthetic.Lorentz(20.0, 9.0, 2.0),
]


def _integrate(f, tail_power: float) -> float:
    """Integral of f over (0, inf): quad on (0, 2000] eV plus an analytic tail ~ E^-tail_power."""
    points = [1.0, 5.0, 10.0, 15.0, 20.0, 30.0, 100.0]
    head = sum(
        integrate.quad(f, a, b, limit=500, epsabs=0, epsrel=1e-10)[0]
        for a, b in zip([0.0, *points], [*points, 2000.0], strict=True)
    )
    # f ~ c E^-p beyond 2000 eV: integral c 2000^(1-p)/(p-1) = f(2000) 2000/(p-1)
    return head + f(2000.0) * 2000.0 / (tail_power - 1.0)


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_bethe_f_sum_rule(model):
    """Truth: the f-sum rule int_0^inf E eps2(E) dE = (pi/2) Ep^2 (Egerton 2011 eq. 4.27), and
    the same for the loss function E Im[-1/eps], to 1e-3."""
    ep = model.plasmon_energy_eV
    eps2 = _integrate(lambda e: e * model.eps(np.array([e]))[0].imag, 2.0)
    assert eps2 == pytest.approx(math.pi / 2 * ep**2, rel=1e-3)
    integrate_value = _integrate(
        lambda e: e * synthetic.loss_function(model, np.array([e]))[0], 2.0
    )
    assert integrate_value == pytest.approx(math.pi / 2 * ep**2, rel=1e-3)


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_kramers_kronig_sum_rule(model):
    """Truth: the KK sum rule (kk-theory eq. 33), (2/pi) int Im[-1/eps]/E dE = 1 - Re[1/eps(0)],
    which is 1 for a metal and 1 - 1/n^2 for an insulator (eq. 28), to 1e-3."""
    value = (
        2
        / math.pi
        * _integrate(lambda e: synthetic.loss_function(model, np.array([e]))[0] / e, 4.0)
    )
    expected = 1.0 if model.is_metal else 1.0 - 1.0 / model.refractive_index**2
    assert value == pytest.approx(expected, rel=1e-3)


def test_lorentz_refractive_index_is_static_eps():
    """Truth: n^2 = eps(0) for the Lorentz model (eq. 28); the Si-like case of exspy-cases has
    n = 3.423."""
    m = synthetic.Lorentz(16.6, 5.07, 3.7)
    assert m.refractive_index == pytest.approx(math.sqrt(m.eps(np.array([0.0]))[0].real))
    assert m.refractive_index == pytest.approx(3.4235, abs=1e-3)


@pytest.mark.parametrize("model", [MODELS[0], MODELS[2]], ids=["drude", "lorentz"])
@pytest.mark.parametrize("tl", [0.1, 1.0, 3.0])
def test_ssd_integral_is_t_over_lambda(model, tl):
    """Truth: integral of the SSD over N0 is t/lambda (eq. 15-16). With a window long enough to
    hold the whole single scattering (4096 ch of 0.1 eV), it holds to 1e-3."""
    sim = synthetic.low_loss_spectrum(
        model,
        t_over_lambda=tl,
        n_channels=4096,
        dispersion_eV=0.1,
        offset_eV=-10.0,
        dtype=np.float64,
    )
    ratio = float(sim["true_ssd"].sum()) / float(sim["true_zlp_intensity"])
    assert ratio == pytest.approx(tl, rel=1e-3)


def test_poisson_law_total_counts():
    """Truth: plural scattering conserves counts, I_total = N0 exp(t/lambda) (eq. 15-16), so the
    whole spectrum (long window) sums to the requested total."""
    sim = synthetic.low_loss_spectrum(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=2.0,
        n_channels=8192,
        dispersion_eV=0.1,
        offset_eV=-10.0,
        total_counts=1e6,
        dtype=np.float64,
    )
    total = float(sim["signal"].sum())
    assert total == pytest.approx(1e6, rel=2e-3)
    assert float(sim["true_zlp_intensity"]) == pytest.approx(1e6 * math.exp(-2.0))


def test_single_scattering_follows_eq31():
    """Truth: eq. 31, I_SSD(E) = N0 t dP/dE dE with dP/dE from Im[-1/eps] and ln(1+beta^2/theta_E^2),
    checked at the plasmon peak to 1e-3 (the model integrates each channel, the formula is a point
    value, so compare at a smooth point with a small channel)."""
    model = synthetic.Drude(15.0, 1.0)
    sim = synthetic.low_loss_spectrum(
        model,
        t_over_lambda=0.3,
        n_channels=2048,
        dispersion_eV=0.02,
        offset_eV=-5.0,
        beam_energy_keV=200.0,
        collection_angle_mrad=5.0,
        dtype=np.float64,
    )
    e = sim["energy"].values
    i = int(np.argmin(np.abs(e - 20.0)))
    n0 = float(sim["true_zlp_intensity"])
    t = float(sim["true_t_nm"])
    expected = (
        n0
        * t
        * 0.02
        * bulk_loss_per_eV_nm(
            synthetic.loss_function(model, e[i : i + 1]), e[i : i + 1], 200.0, 5.0
        )[0]
    )
    assert float(sim["true_ssd"][i]) == pytest.approx(expected, rel=1e-3)


def test_matches_independent_generator(exspy_cases):
    """Truth (peer): the independent generator behind shared/reference/exspy-cases (same physics,
    point-sampled). Mean free path to 1e-4, spectrum to 2e-4 of its peak."""
    ref = np.load(exspy_cases / "al_300kV_b10_t0.5_gauss.npz")
    sim = synthetic.low_loss_spectrum(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=0.5,
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        dtype=np.float64,
    )
    assert float(sim["true_mean_free_path_nm"]) == pytest.approx(
        float(ref["true_lambda_nm"]), rel=1e-4
    )
    diff = np.abs(sim["signal"].values - ref["in_spectrum"]).max()
    assert diff / ref["in_spectrum"].max() < 2e-4


def test_drift_shifts_whole_spectrum():
    """Truth: a ZLP drift of d eV shifts every feature by d: the drifted spectrum equals the
    undrifted one shifted by a whole number of channels."""
    kw = dict(t_over_lambda=0.8, n_channels=1024, dispersion_eV=0.05, dtype=np.float64)
    a = synthetic.low_loss_spectrum(synthetic.Drude(), **kw)["signal"].values
    b = synthetic.low_loss_spectrum(synthetic.Drude(), drift_eV=0.5, **kw)["signal"].values
    np.testing.assert_allclose(b[10:], a[:-10], atol=1e-9 * a.max())


def test_zlp_shape_fwhm_and_area():
    """Truth: the ZLP has unit area and the requested FWHM, whatever its asymmetry."""
    z = synthetic.ZeroLossPeak(fwhm_eV=0.8, asymmetry=0.3)
    e = np.linspace(-10, 10, 200001)
    pdf = np.gradient(z.cdf(e), e)
    above = e[pdf >= pdf.max() / 2]
    assert above[-1] - above[0] == pytest.approx(0.8, abs=1e-3)
    assert z.cdf(np.array([60.0]))[0] - z.cdf(np.array([-60.0]))[0] == pytest.approx(1.0, abs=1e-9)


def test_noise_is_poisson():
    """Truth: with noise=True the counts are Poisson: variance equals mean (vacuum pixels, whose
    expectation is the known ZLP)."""
    sim = synthetic.low_loss_image(
        synthetic.Drude(),
        t_over_lambda=0.0,
        shape=(40, 50),
        n_channels=256,
        dispersion_eV=0.05,
        offset_eV=-2.0,
        total_counts=1e4,
        noise=True,
        dtype=np.float64,
    )
    data = sim["signal"].values.reshape(-1, 256)
    peak = int(np.argmax(data.mean(0)))
    mean, var = data[:, peak].mean(), data[:, peak].var(ddof=1)
    assert var == pytest.approx(mean, rel=0.1)
    assert np.all(data == np.round(data))


def test_thickness_map_kinds():
    """Truth: the map kinds do what they say (range, holes are exactly zero, four terraces)."""
    g = synthetic.thickness_map((8, 16), "gradient", (0.1, 4.0))
    assert g.min() == pytest.approx(0.1) and g.max() == pytest.approx(4.0)
    s = synthetic.thickness_map((8, 16), "steps", (0.5, 2.0))
    assert len(np.unique(s)) == 4
    h = synthetic.thickness_map((32, 32), "holes", (0.5, 2.0), hole_fraction=0.1)
    assert 0.1 <= np.mean(h == 0) < 0.5 and h[h > 0].min() >= 0.5
    with pytest.raises(ValueError, match="kind"):
        synthetic.thickness_map((4, 4), "spiral")


def test_regions_select_materials():
    """Truth: with two materials, each pixel's mean free path is its region's."""
    mats = [synthetic.Drude(15.0, 1.0), synthetic.Lorentz(16.6, 5.07, 3.7)]
    regions = np.array([[0, 1], [1, 0]])
    sim = synthetic.low_loss_image(
        mats, regions=regions, shape=(2, 2), n_channels=256, dispersion_eV=0.2
    )
    lam = sim["true_mean_free_path_nm"].values
    assert lam[0, 0] == lam[1, 1] and lam[0, 1] == lam[1, 0] and lam[0, 0] != lam[0, 1]
