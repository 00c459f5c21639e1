"""The film fit on the real aluminium film (../shared/data/pytemlib/AL-DFoffset0.00.dm3: 200 kV,
beta 100 mrad, Libra, ZLP FWHM 0.16 eV): thin-film-theory.md section 4.2's acceptance.

Truths: the optical constants of Al (Rakic 1995, shared/data/reference/optical_constants/
Al_Rakic.csv): eps1(8 eV) = -2.67, eps1(10 eV) = -1.33, zero crossing 14.93 eV; and physics: a
metal's eps1 < 0 below its plasmon, the oxide-interface plasmon at Ep/sqrt(1 + eps_oxide) (6.5-7.5
eV for 2-4 nm of oxide per face, section 1.6). The classic Kramers-Kronig of the same SSD (metal
normalisation) is run beside it: it takes the interface and surface plasmons as bulk losses and
gives eps1 > 0 at 8-10 eV (issue 15), which the fit must not.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from real_files import FILES, band_limited, open_real

import eelsgpu


@pytest.fixture(scope="module")
def al(shared_data):
    f = next(x for x in FILES if x.path == "pytemlib/AL-DFoffset0.00.dm3")
    dec = band_limited(open_real(shared_data, f), "threshold")
    # the NR oxide/Al/oxide film (the retarded one fits 2.5 x better and gives the same eps at
    # 8-10 eV, section 4.2, but takes 4 x longer: benchmarks/bench_film.py runs it)
    fit = eelsgpu.fit_dielectric(
        dec,
        oxide_nm="fit",
        retardation=False,
        window_eV=(4.5, 25.0),
        bin_eV=0.1,
        nodes_per_channel=1,
        iterations=16,
        jitter=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kk = eelsgpu.kramers_kronig(dec, metal=True, device="cpu").compute()
    rakic = np.loadtxt(
        shared_data / "reference" / "optical_constants" / "Al_Rakic.csv",
        delimiter=",",
        comments="#",
        skiprows=4,
    )
    return dec, fit, kk, rakic


def _rakic_eps1(rakic, e):
    order = np.argsort(rakic[:, 0])  # columns: energy_eV, wavelength, n, k, eps1, eps2, ELF
    return np.interp(e, rakic[order, 0], rakic[order, 4])


def test_al_eps1_negative_and_near_rakic(al):
    """eps1 < 0 over 5-14.5 eV; eps1 at 8 and 10 eV within 10 % of Rakic's (the notes' fit:
    -2.51 / -1.25 against -2.67 / -1.33); the zero crossing at 14.9-15.1 eV; and the classic KK
    of the same SSD is further from Rakic at 8 and 10 eV (it is positive there)."""
    _, fit, kk, rakic = al
    e = fit.energy.values
    eps1 = np.asarray(fit.eps1.values).reshape(-1)
    band = (e >= 5.0) & (e <= 14.5)
    assert np.all(eps1[band] < 0)
    for energy in (8.0, 10.0):
        got = float(np.interp(energy, e, eps1))
        ref = float(_rakic_eps1(rakic, energy))
        assert abs(got / ref - 1.0) < 0.10, (energy, got, ref)
        classic = float(np.interp(energy, kk.energy.values, np.asarray(kk.eps1.values).reshape(-1)))
        assert abs(classic - ref) > abs(got - ref)
    above = e[(e > 14.0) & (eps1 > 0)]
    assert 14.9 <= above[0] <= 15.1


def test_al_interface_peak_and_oxide(al):
    """The oxide's interface plasmon: the surface part of the model peaks at 6.5-7.5 eV and the
    fitted oxide is 2-4 nm per face (the notes: 2.34 +- 0.03 nm retarded, 2.4 nm NR); the 3-layer
    model misses the data by far less than a bare film (relative deviance, the gain being
    unknown), which misses the 6-7 eV hump."""
    dec, fit, _, _ = al
    d = float(fit["oxide_nm"].values.reshape(-1)[0])
    assert 2.0 <= d <= 4.0
    ef = fit.energy_fit.values
    surf = np.asarray(fit.model_surface.values).reshape(-1)
    m = (ef > 5.0) & (ef < 10.0)
    assert 6.5 <= ef[m][np.argmax(surf[m])] <= 7.5
    bare = eelsgpu.fit_dielectric(
        dec,
        retardation=False,
        window_eV=(4.5, 25.0),
        nodes_per_channel=1,
        iterations=16,
        jitter=0.0,
        check_quadrature=False,
    )
    ratio = float(bare.deviance_reduced.values.reshape(-1)[0]) / float(
        fit.deviance_reduced.values.reshape(-1)[0]
    )
    assert ratio > 10.0
    # the misfit the notes describe (section 4.2): the data above the model at 8-12 eV
    data = np.asarray(fit.data.values).reshape(-1)
    model = np.asarray(fit.model.values).reshape(-1)
    mid = (ef > 8.0) & (ef < 12.0)
    assert 0.05 < np.mean(data[mid] / model[mid] - 1.0) < 0.4


def test_al_one_node_per_channel_is_enough(al):
    """One node per channel (the default centre rule; the fixture's fit) on the measured film gives
    the fit of two Gauss nodes per channel (measured: t, d, Ep, Gamma the same to 1e-4 relative),
    and the ``QUADRATURE`` check, held to the sigmas the fit quotes (scaled by the reduced
    deviance, the gain being unknown), does not flag it."""
    from eelsgpu.kernels.film_fit import FIT_BITS

    dec, fit, _, _ = al
    assert not int(fit.fit_flags.values.reshape(-1)[0]) & FIT_BITS["QUADRATURE"][0]
    two = eelsgpu.fit_dielectric(
        dec,
        oxide_nm="fit",
        retardation=False,
        window_eV=(4.5, 25.0),
        bin_eV=0.1,
        nodes_per_channel=2,
        iterations=16,
        jitter=0.0,
    )
    for name in ("thickness_nm", "oxide_nm", "plasmon_energy_eV", "damping_eV"):
        a = float(fit[name].values.reshape(-1)[0])
        b = float(two[name].values.reshape(-1)[0])
        assert abs(a / b - 1.0) < 1e-4, (name, a, b)
