"""The composite low-loss block kernels (eelsgpu.kernels.blocks_lowloss): the Kramers-Kronig kernel
(issue 4) and the deconvolution block.

Truth: analytic (eelsgpu.synthetic), exspy 0.3.2's answers (exspy-cases) and its measured
failures. Accuracy metric, unless a test says otherwise: max over 3-50 eV of |eps - eps_true|
relative to max |eps_true| over the same range (the issue's "within 2 % of truth relative to
max |eps|"). The models and images: tests/kk_cases.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import asarray, to_numpy
from kk_cases import BETA, DRUDE_BROAD, E0, LORENTZ_5, MODELS
from kk_cases import eps_error as _eps_error
from kk_cases import image as _image
from kk_cases import norm as _norm

from eelsgpu import synthetic
from eelsgpu.kernels.blocks_kk import ALL_VARIABLES, kk_kernel
from eelsgpu.kernels.blocks_lowloss import deconvolve_block
from eelsgpu.kernels.surface import surface_loss_per_eV


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("window", [(2048, 0.05), (2048, 0.1)], ids=["2048x0.05", "2048x0.1"])
def test_accuracy_exact_ssd(xp, name, window):
    """Truth: the analytic eps of the model and the synthetic thickness, from the exact SSD
    (true_ssd), no noise, t = 20, 60, 200 nm, 200 kV, 10 mrad. Issue 4's bar: eps1 and eps2
    within 2 % of max |eps| between 3 and 50 eV, thickness within 1 %. Measured: eps <= 1.4 %
    (sharp Drude on 0.1 eV channels; <= 0.8 % otherwise), thickness <= 0.05 %. The window ends
    at 97 or 195 eV and the loss function is continued beyond as A/E^3."""
    model = MODELS[name]
    n_ch, de = window
    sim = _image(model, [20.0, 60.0, 200.0], n_channels=n_ch, dispersion_eV=de)
    out = kk_kernel(
        asarray(xp, sim["true_ssd"].values),
        asarray(xp, sim["energy"].values),
        zlp_intensity=asarray(xp, sim["true_zlp_intensity"].values),
        beam_energy_keV=E0,
        collection_angle_mrad=BETA,
        **_norm(model),
    )
    energy = np.arange(1, to_numpy(out["eps1"]).shape[-1] + 1) * de
    err = _eps_error(to_numpy(out["eps1"]), to_numpy(out["eps2"]), energy, model)
    assert np.all(err < 0.02), err
    t_err = to_numpy(out["thickness_nm"]) / sim["true_t_nm"].values - 1
    assert np.all(np.abs(t_err) < 0.01), t_err
    assert np.all(to_numpy(out["valid"]))
    assert np.all(to_numpy(out["tail_decayed"]))


def test_derived_quantities():
    """Truth: analytic Drude (Ep 16.7, width 3.7): eps1 = 0 upwards at sqrt(Ep^2 - G^2) =
    16.28 eV; loss maximum at the maximum of the analytic Im[-1/eps]; the f-sum rule gives
    n_eff -> eps0 m0 Ep^2 / hbar^2 = 0.725 Ep^2 electrons/nm^3 (within 3 %, the tail beyond
    97 eV is missing); n, k, mu satisfy n^2 - k^2 = eps1, 2nk = eps2, mu = 2kE/(hbar c).
    Cerenkov: a Si-like Lorentz insulator at 300 kV has eps1 = 11.7 > (c/v)^2 = 1.66 (flagged),
    a metal has eps1 < 0 at low energy (not flagged)."""
    from eelsgpu.physics import HBAR_C_EV_NM

    sim = _image(DRUDE_BROAD, [50.0])
    out = kk_kernel(
        sim["true_ssd"].values,
        sim["energy"].values,
        zlp_intensity=sim["true_zlp_intensity"].values,
        beam_energy_keV=E0,
        collection_angle_mrad=BETA,
        metal=True,
        variables=ALL_VARIABLES,  # the derived cubes are asked for (not in the default)
    )
    assert out["plasmon_energy_eV"][0] == pytest.approx(math.sqrt(16.7**2 - 3.7**2), abs=0.03)
    e_fine = np.linspace(5, 30, 250001)
    peak = e_fine[np.argmax(np.imag(-1 / DRUDE_BROAD.eps(e_fine)))]
    assert out["loss_peak_eV"][0] == pytest.approx(peak, abs=0.03)
    assert out["n_eff"][0, -1] == pytest.approx(0.725 * 16.7**2, rel=0.03)
    n, k = out["refractive_index"][0], out["extinction_coefficient"][0]
    assert np.allclose(n**2 - k**2, out["eps1"][0], atol=1e-6 * np.abs(out["eps1"]).max())
    assert np.allclose(2 * n * k, out["eps2"][0], atol=1e-6 * np.abs(out["eps2"]).max())
    e = np.arange(1, n.size + 1) * 0.05
    assert np.allclose(out["absorption_coefficient"][0], 2 * k * e / HBAR_C_EV_NM)
    assert not out["cerenkov"][0]
    si = _image(LORENTZ_5, [50.0], beam_energy_keV=300.0)
    out = kk_kernel(
        si["true_ssd"].values,
        si["energy"].values,
        zlp_intensity=si["true_zlp_intensity"].values,
        beam_energy_keV=300.0,
        collection_angle_mrad=BETA,
        refractive_index=LORENTZ_5.refractive_index,
    )
    assert out["cerenkov"][0]


def test_surface_correction_converges_and_flags(xp):
    """Truth: synthetic thickness, eps and surface intensity (eq. 36, both surfaces) of a Si-like
    Lorentz film (Ep 16.6, gap 5.07, width 3.7 eV), 200 kV, 10 mrad, from the exact SSD; the
    energy axis has a channel at exactly 0 eV (where exspy's loop crashes).

    Measured (numpy; array-api-strict gives the same), uncorrected -> corrected, for
    t = 20 / 30 / 40 / 60 / 100 nm: thickness error +21.4 / 14.3 / 10.7 / 7.2 / 4.3 % ->
    0.10 / 0.07 / 0.07 / 0.05 / 0.05 %; eps error (max over 3-50 eV relative to max |eps|)
    41 / 33 / 28 / 21 / 14 % -> 0.59 / 0.58 / 0.59 / 0.57 / 0.57 % (RMS: 39 / 31 / 26 / 19 / 13 %
    -> 0.49 / 0.49 / 0.50 / 0.49 / 0.49 %; the analysis itself, without surface terms, is at
    0.56 % max), in 6 / 5 / 4 / 4 / 3 iterations; the surface intensity is within
    4.4 / 1.0 / 0.9 / 0.3 / 0.25 % of the exact one (relative to its maximum). The old plain
    fixed-point iteration diverged at 30 nm and below. Asserted with margin: thickness within
    0.2 %, eps within 1 %, both at least 20 times better than uncorrected, at most 8 iterations.

    Flags: at 10 nm (below min_thickness_nm = 20) the pixel is not corrected (status 2). A
    30 nm pixel whose SSD is cut to 20 % over 8-14 eV (under the surface plasmon, so the measured
    intensity there is below the surface term: no consistent solution; the linearised problem
    winds around 0) and, with iterations=1, every pixel (one step cannot meet the criterion) are
    flagged status 3 and keep the uncorrected result exactly, never a diverged one."""
    t_nm = np.array([20.0, 30.0, 40.0, 60.0, 100.0, 10.0, 30.0])
    sim = _image(LORENTZ_5, t_nm, surface=True)
    energy_in = sim["energy"].values
    ssd = sim["true_ssd"].values.copy()
    ssd[6, (energy_in > 8.0) & (energy_in < 14.0)] *= 0.2
    args = (asarray(xp, ssd), asarray(xp, energy_in))
    n0 = sim["true_zlp_intensity"].values
    kw = dict(
        zlp_intensity=asarray(xp, n0),
        beam_energy_keV=E0,
        collection_angle_mrad=BETA,
        refractive_index=LORENTZ_5.refractive_index,
        variables=ALL_VARIABLES,  # the loss function and I_S are asked for
    )
    raw = {k: to_numpy(v) for k, v in kk_kernel(*args, **kw).items()}
    cor = {k: to_numpy(v) for k, v in kk_kernel(*args, iterations=30, **kw).items()}
    truth = sim["true_t_nm"].values
    energy = np.arange(1, raw["eps1"].shape[-1] + 1) * 0.05
    t_raw = np.abs(raw["thickness_nm"] / truth - 1)
    t_cor = np.abs(cor["thickness_nm"] / truth - 1)
    e_raw = _eps_error(raw["eps1"], raw["eps2"], energy, LORENTZ_5)
    e_cor = _eps_error(cor["eps1"], cor["eps2"], energy, LORENTZ_5)
    film = slice(0, 5)
    assert list(cor["surface_status"]) == [1, 1, 1, 1, 1, 2, 3]
    assert list(cor["converged"]) == [True] * 5 + [False, False]
    assert np.all(t_raw[film] > 0.04) and np.all(t_cor[film] < 0.002)
    assert np.all(e_raw[film] > 0.1) and np.all(e_cor[film] < 0.01)
    assert np.all(t_cor[film] < t_raw[film] / 20) and np.all(e_cor[film] < e_raw[film] / 20)
    assert np.all(cor["iterations"][film] <= 8) and cor["iterations"][5] == 0
    eps = LORENTZ_5.eps(energy)
    i_s = n0[:5, None] * 0.05 * surface_loss_per_eV(eps.real, eps.imag, energy, E0, BETA)
    i_err = np.abs(cor["surface_intensity"][film] - i_s).max(axis=-1) / i_s.max(axis=-1)
    assert np.all(i_err < [0.07, 0.02, 0.02, 0.01, 0.01])
    for name in ("thickness_nm", "eps1", "eps2", "loss_function"):  # flagged: uncorrected
        assert np.array_equal(cor[name][5:], raw[name][5:])
    assert np.all(np.isfinite(cor["eps1"])) and np.all(cor["surface_intensity"][5:] == 0)

    one = {k: to_numpy(v) for k, v in kk_kernel(*args, iterations=1, **kw).items()}
    assert list(one["surface_status"]) == [3, 3, 3, 3, 3, 2, 3]
    assert not np.any(one["converged"]) and np.all(one["iterations"] <= 1)
    for name in ("thickness_nm", "eps1", "eps2", "loss_function", "re_inverse_eps0"):
        assert np.array_equal(one[name], raw[name])
    assert np.all(one["surface_intensity"] == 0)


def test_surface_correction_noisy_never_diverges(xp):
    """Truth: synthetic thickness of the Si-like Lorentz film of the test above, 20 / 30 / 60 /
    100 nm (two pixels each), SSD with Poisson noise (1e6 counts per spectrum, seed 3). The
    noisy inverse problem is ill-conditioned at 20-30 nm (the surface term near the surface
    plasmon is up to 22 % of the SSD's peak): each pixel either converges, with its thickness
    closer to truth, or is flagged status 3 with the uncorrected result kept exactly. Measured
    (seed 3): 6 of 8 pixels converge, thickness error 0.02-0.52 % against 4-21 % uncorrected, in
    3-15 iterations; 2 of the 4 pixels at 20-30 nm are flagged (seeds 4, 5: 7 and 6 of 8
    converge, 0.01-0.87 %). At 60 and 100 nm every pixel converges."""
    t_nm = np.repeat([20.0, 30.0, 60.0, 100.0], 2)
    sim = _image(LORENTZ_5, t_nm, surface=True)
    ssd = np.random.default_rng(3).poisson(np.clip(sim["true_ssd"].values, 0, None)) * 1.0
    args = (asarray(xp, ssd), asarray(xp, sim["energy"].values))
    kw = dict(
        zlp_intensity=asarray(xp, sim["true_zlp_intensity"].values),
        beam_energy_keV=E0,
        collection_angle_mrad=BETA,
        refractive_index=LORENTZ_5.refractive_index,
    )
    raw = {k: to_numpy(v) for k, v in kk_kernel(*args, **kw).items()}
    cor = {k: to_numpy(v) for k, v in kk_kernel(*args, iterations=20, **kw).items()}
    t_raw = np.abs(raw["thickness_nm"] / sim["true_t_nm"].values - 1)
    t_cor = np.abs(cor["thickness_nm"] / sim["true_t_nm"].values - 1)
    ok = cor["surface_status"] == 1
    assert set(cor["surface_status"]) <= {1, 3} and np.all(ok[4:])
    assert np.all(t_cor[ok] < 0.015) and np.all(t_cor[ok] < t_raw[ok] / 4)
    for name in ("thickness_nm", "eps1", "eps2"):
        assert np.array_equal(cor[name][~ok], raw[name][~ok])


@dataclass
class TabulatedEps:
    """A dielectric model from a tabulated eps (eelsgpu.synthetic takes any object with
    .eps(E)): linear interpolation inside the table; beyond it Im[-1/eps] = A/E^3,
    Re[1/eps] = 1 (the tail model of the analysis)."""

    label: str = "tabulated"
    is_metal = True

    def set(self, energy, eps, tail_a):
        self._e, self._eps, self._a = np.asarray(energy), np.asarray(eps), float(tail_a)
        return self

    def eps(self, energy_eV):
        e = np.asarray(energy_eV, dtype=float)
        inside = np.interp(e, self._e, self._eps.real) + 1j * np.interp(e, self._e, self._eps.imag)
        with np.errstate(all="ignore"):
            outside = 1.0 / (1.0 - 1j * self._a / np.maximum(e, 1e-9) ** 3)
        return np.where(e <= self._e[-1], inside, outside)

    @property
    def refractive_index(self):
        return math.inf


def test_round_trip_reproduces_spectrum():
    """Truth: the input synthetic spectrum (Drude Ep 15, width 1, t/lambda 0.5, 2048 x 0.05 eV).
    eps from the analysis, fed back through eelsgpu.synthetic with the analysed thickness and
    the same N0, reproduces the whole spectrum to 1 % of its peak, and its inelastic part
    (spectrum minus ZLP) to 1 % of the inelastic peak (measured: 0.007 % and 0.05 %)."""
    model = synthetic.Drude(15.0, 1.0)
    sim = synthetic.low_loss_spectrum(model, t_over_lambda=0.5, dtype=np.float64)
    n0 = float(sim["true_zlp_intensity"])
    out = kk_kernel(
        sim["true_ssd"].values[None],
        sim["energy"].values,
        zlp_intensity=np.array([n0]),
        beam_energy_keV=E0,
        collection_angle_mrad=BETA,
        metal=True,
        variables=("eps1", "eps2", "loss_function", "thickness_nm"),
    )
    e = np.arange(1, out["eps1"].shape[-1] + 1) * 0.05
    eps = out["eps1"][0] + 1j * out["eps2"][0]
    tail_a = out["loss_function"][0, -1] * e[-1] ** 3
    tab = TabulatedEps().set(e, eps, tail_a)
    lam = float(synthetic.low_loss_spectrum(tab, t_over_lambda=0.1)["true_mean_free_path_nm"])
    again = synthetic.low_loss_spectrum(
        tab, t_over_lambda=float(out["thickness_nm"][0]) / lam, zlp_counts=n0, dtype=np.float64
    )
    a, b = sim["signal"].values, again["signal"].values
    zlp = sim["true_zlp_shape"].values * n0
    assert np.abs(a - b).max() < 0.01 * a.max()
    assert np.abs((a - zlp) - (b - zlp)).max() < 0.01 * (a - zlp).max()


@pytest.mark.parametrize("case", ["al_300kV_b10_t0.5_gauss", "si_300kV_b10_t0.6_gauss"])
def test_against_exspy_cases(exspy_cases, case):
    """Truth: true_eps and true_t_nm of the exspy-cases files; peer: exspy 0.3.2's
    kramers_kronig_analysis of the exact SSD normalised by n (exspy_eps_ssdtrue_n,
    exspy_te_ssdtrue_n). Metric: RMS |eps - truth| / RMS |truth| over 3-50 eV. exspy: 36 % (Al)
    and 26 % (Si); ours: 0.3 % and 0.5 %. Why exspy is off: its FFT period is only twice the
    window (P = 2 x 1947 x 0.05 eV = 194.7 eV), so its Hilbert transform wraps around and adds a
    near-constant pi^2 Ep^2 / (3 P^2) to Re[1/eps] (0.0195 for Al, 0.024 for Si: the test checks
    exspy's offset against it), which at low energy, where |1/eps| is small, is a large error in
    eps. Both thicknesses are right (the sum rule needs no Hilbert transform)."""
    d = np.load(exspy_cases / f"{case}.npz")
    meta = json.loads(str(d["meta_case"]))
    n = float(d["in_n_kk"])
    norm = {"metal": True} if n >= 1000 else {"refractive_index": n}
    out = kk_kernel(
        d["in_ssd_true"][None],
        d["in_energy"],
        zlp_intensity=np.array([float(d["in_i0"])]),
        beam_energy_keV=float(d["in_e0_kev"]),
        collection_angle_mrad=float(d["in_beta_mrad"]),
        **norm,
    )
    e = d["exspy_kk_energy"]
    true = d["true_eps"]
    ours = out["eps1"][0, : e.size] + 1j * out["eps2"][0, : e.size]
    assert np.allclose(np.arange(1, e.size + 1) * float(d["in_scale"]), e)
    sel = (e >= 3) & (e <= 50)

    def rms(x):
        return np.sqrt(np.mean(np.abs(x[sel] - true[sel]) ** 2) / np.mean(np.abs(true[sel]) ** 2))

    exspy = d["exspy_eps_ssdtrue_n"]
    assert rms(exspy) > 0.2
    assert rms(ours) < 0.01
    offset = np.median(np.real(1 / exspy[sel]) - np.real(1 / true[sel]))
    period = 2 * e.size * float(d["in_scale"])
    assert offset == pytest.approx(math.pi**2 * meta["mat"]["ep"] ** 2 / (3 * period**2), rel=0.1)
    t_true = float(d["true_t_nm"])
    assert abs(out["thickness_nm"][0] / t_true - 1) < 0.002
    assert abs(float(d["exspy_te_ssdtrue_n"]) / t_true - 1) < 0.002


DECONVOLVE_MATERIALS = {
    "drude": synthetic.Drude(15.0, 1.0),
    "lorentz": synthetic.Lorentz(16.6, 5.07, 3.7),
}


@pytest.mark.parametrize("method", ["mirror", "fit", "threshold"])
def test_deconvolve_block_thickness_map(xp, method):
    """The block kernel of deconvolve (ZLP model, Fourier-log, the t/lambda map beside it), on
    NumPy and array-api-strict. Truth: the synthetic t/lambda (0.3 to 2.5, noise-free), met to
    0.2 % by every ZLP model, for the raw and the reconvolved SSD."""
    tl = np.linspace(0.3, 2.5, 6)[None, :]
    sim = synthetic.low_loss_image(
        DECONVOLVE_MATERIALS["drude"],
        t_over_lambda=tl,
        shape=(1, 6),
        n_channels=1024,
        dispersion_eV=0.1,
    )
    y = asarray(xp, sim["signal"].values.reshape(6, -1), np.float64)
    e = asarray(xp, sim["energy"].values, np.float64)
    for output in ("ssd", "reconvolved-zlp"):
        out = deconvolve_block(y, e, method=method, output=output)
        assert bool(np.all(to_numpy(out["valid"])))
        np.testing.assert_allclose(to_numpy(out["t_over_lambda"]), tl[0], rtol=2e-3)
