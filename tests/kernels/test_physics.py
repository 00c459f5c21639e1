"""Kinematics and constants against textbook values (Egerton 2011) and exact relations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eelsgpu import physics


def test_constants():
    """Truth: CODATA values; 2 pi a0 * 1000 is Egerton's 332.5 nm eV/keV."""
    assert physics.ELECTRON_REST_ENERGY_KEV == pytest.approx(510.999, abs=1e-3)
    assert physics.BOHR_RADIUS_NM == pytest.approx(0.0529177, rel=1e-6)
    assert physics.KK_PREFACTOR_NM_EV_PER_KEV == pytest.approx(332.5, abs=0.05)


@pytest.mark.parametrize("e0", [60.0, 100.0, 200.0, 300.0])
def test_relativistic_relations(e0):
    """Truth: T = m0 v^2/2 from v/c, gamma m0 v^2 = 2 T gamma, and F = T/E0."""
    beta = physics.speed_ratio_v_over_c(e0)
    gamma = 1 + e0 / physics.ELECTRON_REST_ENERGY_KEV
    t = 0.5 * physics.ELECTRON_REST_ENERGY_KEV * beta**2
    assert physics.kinetic_energy_T_keV(e0) == pytest.approx(t, rel=1e-12)
    assert physics.gamma_m0_v2_keV(e0) == pytest.approx(2 * t * gamma, rel=1e-12)
    assert physics.relativistic_factor_F(e0) == pytest.approx(t / e0, rel=1e-12)


def test_textbook_values():
    """Truth: Egerton 2011 - v/c = 0.6953 and T = 123.5 keV at 200 kV; theta_E of the Al
    plasmon (15 eV) at 200 kV is about 0.044 mrad; k0 = 2510 /nm at 200 kV."""
    assert physics.speed_ratio_v_over_c(200) == pytest.approx(0.6953, abs=1e-4)
    assert physics.kinetic_energy_T_keV(200) == pytest.approx(123.5, abs=0.1)
    assert physics.characteristic_angle_mrad(15.0, 200.0) == pytest.approx(0.0436, abs=1e-4)
    assert physics.electron_wavenumber_per_nm(200) == pytest.approx(2505, abs=2)


def test_bad_beam_energy():
    """Truth: a non-positive beam energy is refused."""
    with pytest.raises(ValueError, match="beam_energy_keV"):
        physics.relativistic_factor_F(0)


def test_loss_probabilities_zero_below_zero_loss(xp):
    """Truth: no loss probability at E <= 0 (bulk eq. 31 and surface eq. 36), on any namespace."""
    from conftest import asarray, to_numpy

    e = asarray(xp, np.array([-1.0, 0.0, 5.0, 15.0]))
    lf = asarray(xp, np.array([0.2, 0.2, 0.1, 1.0]))
    bulk = to_numpy(physics.bulk_loss_per_eV_nm(lf, e, 200.0, 10.0))
    assert bulk[0] == 0 and bulk[1] == 0 and bulk[3] > bulk[2] > 0
    eps1 = asarray(xp, np.array([1.0, 1.0, -2.0, 0.0]))
    eps2 = asarray(xp, np.array([1.0, 1.0, 1.0, 1.0]))
    surf = to_numpy(physics.surface_loss_per_eV(eps1, eps2, e, 200.0, 10.0))
    assert surf[0] == 0 and surf[1] == 0 and np.all(np.isfinite(surf))
    # the surface plasmon (eps1 = -1) of a Drude metal dominates over the bulk one at eps1 = 0
    assert surf[2] > 0


def test_bulk_loss_angular_factor():
    """Truth: eq. 31's angular factor ln(1 + beta^2/theta_E^2): doubling beta at beta >> theta_E
    adds ln(4) to the factor."""
    e = np.array([10.0])
    lf = np.array([1.0])
    p1 = physics.bulk_loss_per_eV_nm(lf, e, 200.0, 10.0)[0]
    p2 = physics.bulk_loss_per_eV_nm(lf, e, 200.0, 20.0)[0]
    theta = physics.characteristic_angle_mrad(10.0, 200.0)
    ratio = math.log(1 + (20 / theta) ** 2) / math.log(1 + (10 / theta) ** 2)
    assert p2 / p1 == pytest.approx(ratio, rel=1e-12)
