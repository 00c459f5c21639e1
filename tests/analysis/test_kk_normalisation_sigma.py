"""The given normalisation's uncertainty as a systematic part of the KK results (issue 14: "a
known thickness or refractive index the user gives with an uncertainty").

Truth: the analysis itself rerun with the normalisation moved by its sigma -- n (1 + s) or
t (1 + s) -- on the noise-free synthetic SSD of ``eelsgpu.synthetic.low_loss_image`` (a Lorentz
insulator, n = sqrt(1 + Ep^2/Eg^2), and a Drude metal given its true thickness): the quoted
``<name>_sigma_systematic`` must equal the change of each output to first order (within 3 % of
it where it is not tiny, for s = 1e-6: the derivative), and be NaN where a realistic s (1 %)
moves 1/eps by more than 20 % (first order no longer holds: a metal's eps below its plasmon).
"""

from __future__ import annotations

import numpy as np
import pytest

import eelsgpu
from eelsgpu.errors import InputError

OUT = ("eps1", "eps2", "loss_function", "refractive_index", "thickness_nm", "plasmon_energy_eV")


def _ssd(material):
    sim = eelsgpu.synthetic.low_loss_image(
        material,
        shape=(1, 3),
        t_over_lambda=np.array([[0.3, 0.6, 1.0]]),
        dtype=np.float64,
        n_channels=1024,
        dispersion_eV=0.1,
    )
    return sim


def _kk(sim, **kw):
    return eelsgpu.kramers_kronig(
        sim["true_ssd"],
        zlp_intensity=sim["true_zlp_intensity"],
        beam_energy_keV=200.0,
        collection_angle_mrad=10.0,
        device="cpu",
        low_energy_cutoff_eV=1.0,
        cubes=("eps1", "eps2", "loss_function", "refractive_index"),
        **kw,
    ).compute()


def _compare(base, moved, quoted, name):
    change = np.abs(moved[name].values - base[name].values)
    q = quoted[f"{name}_sigma_systematic"].values
    big = change > 1e-3 * np.nanmax(change)
    assert big.sum() > 0, name
    ratio = q[big] / change[big]
    assert np.all(np.abs(ratio - 1) < 0.03), (name, np.nanmin(ratio), np.nanmax(ratio))
    assert quoted[f"{name}_sigma_systematic"].attrs["parts"]["normalisation"]


S = 1e-6


def test_refractive_index_sigma_is_the_first_order_change():
    """Lorentz insulator (n = 3.41): every output's systematic sigma for n +- S equals the
    change of a rerun with n (1 + S)."""
    mat = eelsgpu.synthetic.Lorentz()
    n = float(np.sqrt(1 + mat.plasmon_energy_eV**2 / mat.gap_eV**2))
    sim = _ssd(mat)
    base = _kk(sim, refractive_index=n)
    quoted = _kk(sim, refractive_index=n, refractive_index_rel_sigma=S)
    moved = _kk(sim, refractive_index=n * (1 + S))
    for name in OUT:
        if name in base and np.isfinite(base[name].values).any():
            _compare(base, moved, quoted, name)
    for name in OUT:  # the values themselves are not touched
        if name in base:
            np.testing.assert_array_equal(base[name].values, quoted[name].values)


def test_thickness_sigma_is_the_first_order_change():
    """Drude metal normalised by its true thickness map: t +- S, the same check; with t +- 1 %
    eps's sigma is NaN exactly where |1 - eps| x 1 % > 0.2 (the lowest channels, eps1 down to
    -428 at 0.1 eV) and finite elsewhere."""
    sim = _ssd(eelsgpu.synthetic.Drude(15.0, 1.0))
    t = sim["true_t_nm"]
    base = _kk(sim, thickness_nm=t)
    quoted = _kk(sim, thickness_nm=t, thickness_rel_sigma=S)
    moved = _kk(sim, thickness_nm=t * (1 + S))
    for name in ("eps1", "eps2", "loss_function", "refractive_index", "plasmon_energy_eV"):
        _compare(base, moved, quoted, name)
    one = _kk(sim, thickness_nm=t, thickness_rel_sigma=0.01)
    # a map of relative sigmas gives each pixel its own (here all 1 %: the same numbers)
    as_map = _kk(sim, thickness_nm=t, thickness_rel_sigma=np.full(t.shape, 0.01))
    np.testing.assert_array_equal(
        as_map["eps1_sigma_systematic"].values, one["eps1_sigma_systematic"].values
    )
    eps = base["eps1"].values + 1j * base["eps2"].values
    nonlinear = np.abs(1 - eps) * 0.01 > 0.2
    assert 0 < nonlinear.sum() < 0.1 * nonlinear.size
    sig = one["eps1_sigma_systematic"].values
    np.testing.assert_array_equal(np.isnan(sig), nonlinear)


def test_a_sigma_without_its_normalisation_is_refused():
    sim = _ssd(eelsgpu.synthetic.Drude(15.0, 1.0))
    with pytest.raises(InputError, match="needs refractive_index"):
        _kk(sim, metal=True, refractive_index_rel_sigma=0.01)
    with pytest.raises(InputError, match="needs thickness_nm"):
        _kk(sim, metal=True, thickness_rel_sigma=0.01)
