"""End-to-end replica sigmas of Kramers-Kronig analysis (issue 14): replicas of the recorded
counts through ``deconvolve`` and ``kramers_kronig`` both (``kramers_kronig(raw, deconvolve=...)``,
eelsgpu.analysis._chain).

Truth: ``eelsgpu.synthetic.low_loss_image`` (Drude Ep 15 eV, Gamma 1 eV, t/lambda 0.5, 1e5
counts in the ZLP, 1024 channels of 0.1 eV) as the pixels of one image, each an independent
Poisson realisation of the same truth: the scatter of each estimate over the realisations is
what its quoted sigma must match; eps1 = 1 - Ep^2 / (E^2 + Gamma^2) and eps2 = Gamma Ep^2 /
(E (E^2 + Gamma^2)) analytic. Covered: the counting noise of the recorded spectra through the
whole chain (N0, the ZLP's centre and width, the Fourier-log, the band limit, the KK pass).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import eelsgpu
from eelsgpu.analysis.kramers_kronig import KKWarning
from eelsgpu.errors import InputError
from tests._coverage import coverage

EP, GAMMA = 15.0, 1.0
R, K = 160, 24  # realisations, replicas per realisation


@functools.cache
def _raw(counts: float):
    sim = eelsgpu.synthetic.low_loss_image(
        eelsgpu.synthetic.Drude(EP, GAMMA),
        t_over_lambda=np.full((1, R), 0.5),
        shape=(1, R),
        n_channels=1024,
        dispersion_eV=0.1,
        total_counts=counts * np.exp(0.5),
        noise=True,
        seed=1,
        dtype=np.float32,
    )
    return sim["signal"].compute()


@functools.cache
def _chain(counts: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eelsgpu.kramers_kronig(
            _raw(counts),
            metal=True,
            deconvolve={},
            uncertainty=f"replicas:{K}",
            seed=3,
            device="cpu",
        )


@pytest.fixture(scope="module")
def raw():
    return _raw(1e5)


@pytest.fixture(scope="module")
def chain():
    return _chain(1e5)


def _at(ds, name, energies):
    e = ds[name]["energy"].values
    idx = [int(np.argmin(np.abs(e - x))) for x in energies]
    return e[idx], ds[name].values[0][:, idx]


def test_without_uncertainty_it_is_kk_of_the_band_limited_ssd(raw):
    """deconvolve= without uncertainty is kramers_kronig(deconvolve(raw, output="band-limited")):
    the same numbers bit for bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = eelsgpu.kramers_kronig(raw[:, :8], metal=True, deconvolve={}, device="cpu")
        d = eelsgpu.deconvolve(raw[:, :8], output="band-limited", device="cpu")
        b = eelsgpu.kramers_kronig(d, metal=True, device="cpu")
    assert set(a.data_vars) == set(b.data_vars)
    for name in b.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.parametrize("counts", [1e5, 1e6])
def test_end_to_end_sigmas_are_honest_where_ssd_replicas_are_not(counts):
    """Above the plasmon (1.5 and 2 Ep) eps1's and eps2's end-to-end sigmas match their scatter
    over the realisations (0.85-1.15; measured 0.91-1.08 at 1e5 counts in the ZLP, 0.90-1.09 at
    1e6; at 1e4, not asserted, 0.95-1.17 with 137 of 160 realisations valid), as do the plasmon
    energy's (1.00 / 1.01, inside +-1 sigma 0.69; 0.95 at 1e4); the
    replicas of the deconvolved SSD (its values as counts, the gain estimated from its own
    channel noise) give sigmas under half the scatter there (measured 0.05-0.32; 0.01-0.43 from
    Ep/4 to 2 Ep) and say so
    (a KKWarning and the attrs ``uncertainty_misses``)."""
    energies = (1.5 * EP, 2.0 * EP)
    raw, chain = _raw(counts), _chain(counts)
    d = eelsgpu.deconvolve(raw, output="band-limited", device="cpu")
    with pytest.warns(KKWarning, match="miss the deconvolution's own noise"):
        ssd_only = eelsgpu.kramers_kronig(
            d, metal=True, uncertainty=f"replicas:{K}", seed=3, device="cpu"
        )
    assert "uncertainty_misses" in ssd_only.attrs and "uncertainty_misses" not in chain.attrs
    assert chain["eps1_sigma"].attrs["covers"].startswith("counting noise of the recorded")
    for name in ("eps1", "eps2"):
        _, v = _at(chain, name, energies)
        _, s = _at(chain, f"{name}_sigma", energies)
        _, s_ssd = _at(ssd_only, f"{name}_sigma", energies)
        for j in range(len(energies)):
            scatter = np.nanstd(v[:, j], ddof=1)
            ratio = np.nanmedian(s[:, j]) / scatter
            assert 0.85 <= ratio <= 1.15, (name, energies[j], ratio)
            assert np.nanmedian(s_ssd[:, j]) / scatter < 0.5, (name, energies[j])
    ep = coverage(
        chain["plasmon_energy_eV"].values,
        chain["plasmon_energy_eV_sigma"].values,
        float(np.nanmedian(chain["plasmon_energy_eV"].values)),
    )
    assert 0.85 <= ep.ratio <= 1.15 and 0.62 <= ep.inside1 <= 0.74, ep.describe()


def test_end_to_end_sigmas_are_never_overconfident_below_the_plasmon(chain):
    """At Ep/4, Ep/2 and Ep (a metal's eps below its plasmon, ill-conditioned: 1/eps near 0,
    heavy-tailed estimates: sigma / standard deviation 0.22-0.66 there, the standard deviation
    ruled by a few wild realisations) the truth lies within +-2 sigma of at least 92 % of the
    realisations at Ep/4 and Ep/2 (measured 0.95-0.99, +-1 sigma 0.81-0.88: conservative, the
    replicas of a noisy spectrum spread wider than the estimates do) and 75 % at Ep (eps1:
    0.81, its band-limit bias +1.0 sigma) -- except eps2 at Ep, whose band-limit bias
    (the plasmon peak broadened by the ZLP's Gaussian, systematic, not counting) is many sigma:
    asserted as such, so that a change there is seen. The KK thickness: within +-1 / +-2 sigma
    in 62-80 % / 92-99 % (measured 0.72 / 0.93)."""
    energies = (EP / 4, EP / 2, EP)
    for name in ("eps1", "eps2"):
        e, v = _at(chain, name, energies)
        _, s = _at(chain, f"{name}_sigma", energies)
        truth = (
            1 - EP**2 / (e**2 + GAMMA**2) if name == "eps1"
            else GAMMA * EP**2 / (e * (e**2 + GAMMA**2))
        )  # fmt: skip
        for j in range(len(energies)):
            c = coverage(v[:, j], s[:, j], truth[j])
            if name == "eps2" and j == 2:
                assert c.bias > 3, c.describe()  # the band limit's bias at the peak
                continue
            assert c.inside2 >= 0.92 if j < 2 else c.inside2 >= 0.75, (name, e[j], c.describe())
    t = chain["thickness_nm"].values.ravel()
    st = chain["thickness_nm_sigma"].values.ravel()
    c = coverage(t, st, float(np.nanmedian(t)))
    assert 0.62 <= c.inside1 <= 0.80 and 0.92 <= c.inside2 <= 0.99, c.describe()


def test_options_that_cannot_run_end_to_end_are_refused(raw):
    """One clear line each: analytic (the roll-off is not linearised), uncertainty inside
    deconvolve=, an output that is not an SSD."""
    small = raw[:, :4]
    with pytest.raises(InputError, match="not offered with deconvolve="):
        eelsgpu.kramers_kronig(small, metal=True, deconvolve={}, uncertainty="analytic")
    with pytest.raises(InputError, match="give uncertainty= to kramers_kronig"):
        eelsgpu.kramers_kronig(small, metal=True, deconvolve={"uncertainty": "replicas"})
    with pytest.raises(InputError, match="not an SSD"):
        eelsgpu.kramers_kronig(small, metal=True, deconvolve={"output": "residual"})


def test_one_spectrum_and_a_line_scan_get_their_own_shapes(raw):
    """A single spectrum (no pixel axes) and a line scan (one) get sigmas shaped like their
    results; the line scan's pixel sigmas are those of the same pixels in the image (replicas
    seeded by the flat pixel index: the first row of the image is the line scan's pixels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(metal=True, deconvolve={}, uncertainty="replicas:4", seed=2, device="cpu")
        one = eelsgpu.kramers_kronig(raw.isel(y=0, x=0), **kw)
        line = eelsgpu.kramers_kronig(raw.isel(y=0, x=slice(0, 3)), **kw)
        image = eelsgpu.kramers_kronig(raw[:, :3], **kw)
    assert one["eps1_sigma"].dims == ("energy",) and one["thickness_nm_sigma"].ndim == 0
    assert np.isfinite(float(one["thickness_nm_sigma"])) and float(one["thickness_nm_sigma"]) > 0
    assert line["eps1_sigma"].dims == ("x", "energy")
    np.testing.assert_array_equal(
        line["thickness_nm_sigma"].values, image["thickness_nm_sigma"].values[0]
    )
