"""Kinematics and constants against textbook values (Egerton 2011) and exact relations."""

from __future__ import annotations

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
