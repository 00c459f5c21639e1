"""Physical constants and the relativistic kinematics of the fast electron.

The bottom layer of eelsgpu, beside :mod:`eelsgpu._xp`: shared by the synthetic model and every
kernel, so that all of them use one set of constants (CODATA values from :mod:`scipy.constants`).
Only constants and kinematics (host floats, or arrays for theta_E) live here; the equations that
use them have their homes in :mod:`eelsgpu.kernels` (the bulk loss probability of eq. 31 in
:mod:`eelsgpu.kernels.dielectric`, the surface loss of eq. 36 in :mod:`eelsgpu.kernels.surface`).

Conventions (Egerton, *EELS in the Electron Microscope*, 3rd ed., 2011, and
``shared/docs/kk-theory.md``): beam energy ``E0`` in keV, energy loss ``E`` in eV, angles in mrad,
lengths in nm.

Examples
--------
>>> round(relativistic_factor_F(200.0), 4)
0.6176
>>> round(characteristic_angle_mrad(15.0, 200.0), 4)  # theta_E of the Al plasmon at 200 kV
0.0436
"""

from __future__ import annotations

import math

from scipy import constants as _c

__all__ = [
    "BOHR_RADIUS_NM",
    "ELECTRON_REST_ENERGY_KEV",
    "HBAR_C_EV_NM",
    "KK_PREFACTOR_NM_EV_PER_KEV",
    "characteristic_angle_mrad",
    "electron_wavenumber_per_nm",
    "gamma_m0_v2_keV",
    "kinetic_energy_T_keV",
    "relativistic_factor_F",
    "speed_ratio_v_over_c",
]

#: m0 c^2 in keV (510.999 keV).
ELECTRON_REST_ENERGY_KEV: float = (
    _c.physical_constants["electron mass energy equivalent in MeV"][0] * 1e3
)
#: Bohr radius a0 in nm (0.0529 nm).
BOHR_RADIUS_NM: float = _c.physical_constants["Bohr radius"][0] * 1e9
#: hbar c in eV nm (197.327 eV nm), for optical absorption coefficients.
HBAR_C_EV_NM: float = _c.hbar * _c.c / _c.e * 1e9
#: pi a0 m0 v^2 / T = 2 pi a0, with T in keV and the result per eV: 2 pi a0 * 1000 = 332.5 nm eV/keV
#: (Egerton 2011, eq. 4.26; the "332.5" of his programs). The prefactor of eq. 31 is this times T
#: (:func:`eelsgpu.kernels.dielectric.loss_prefactor_nm_eV`); that of eq. 26, 4 a0 T, is 2/pi of it
#: (:func:`eelsgpu.kernels.sum_rule.sum_rule_prefactor_nm_eV`).
KK_PREFACTOR_NM_EV_PER_KEV: float = 2.0 * math.pi * BOHR_RADIUS_NM * 1e3


def _check_beam(beam_energy_keV: float) -> float:
    e0 = float(beam_energy_keV)
    if not math.isfinite(e0) or e0 <= 0:
        raise ValueError(
            f"beam_energy_keV must be a positive number of keV, not {beam_energy_keV!r}"
        )
    return e0


def speed_ratio_v_over_c(beam_energy_keV: float) -> float:
    """v/c of the incident electron: v/c = sqrt(1 - 1/gamma^2), gamma = 1 + E0/m0c^2."""
    gamma = 1.0 + _check_beam(beam_energy_keV) / ELECTRON_REST_ENERGY_KEV
    return math.sqrt(1.0 - 1.0 / gamma**2)


def relativistic_factor_F(beam_energy_keV: float) -> float:
    """Relativistic factor F = (1 + E0/1022) / (1 + E0/511)^2 (kk-theory.md, after eq. 26).

    Parameters
    ----------
    beam_energy_keV : float
        Incident energy E0 in keV.
    """
    e0 = _check_beam(beam_energy_keV)
    m = ELECTRON_REST_ENERGY_KEV
    return (1.0 + e0 / (2.0 * m)) / (1.0 + e0 / m) ** 2


def kinetic_energy_T_keV(beam_energy_keV: float) -> float:
    """T = m0 v^2 / 2 in keV: E0 (1 + E0/2m0c^2) / (1 + E0/m0c^2)^2 = E0 F (Egerton eq. 3.22).

    This is the "effective incident energy" of the KK and thickness formulas (eqs. 26, 31, 36).
    """
    e0 = _check_beam(beam_energy_keV)
    return e0 * relativistic_factor_F(e0)


def gamma_m0_v2_keV(beam_energy_keV: float) -> float:
    """gamma m0 v^2 in keV = E0 (2 m0c^2 + E0) / (m0c^2 + E0), the denominator of eq. 27."""
    e0 = _check_beam(beam_energy_keV)
    m = ELECTRON_REST_ENERGY_KEV
    return e0 * (2.0 * m + e0) / (m + e0)


def characteristic_angle_mrad(energy_loss_eV, beam_energy_keV: float):
    """Characteristic scattering angle theta_E = E / (gamma m0 v^2) in mrad (kk-theory.md eq. 27).

    Parameters
    ----------
    energy_loss_eV : float or array
        Energy loss E in eV (any array namespace; returned in the same one).
    beam_energy_keV : float
        Incident energy E0 in keV.
    """
    # E [eV] / (gamma m0 v^2 [keV] * 1000) rad = E / (gamma m0 v^2 [keV]) mrad
    return energy_loss_eV / gamma_m0_v2_keV(beam_energy_keV)


def electron_wavenumber_per_nm(beam_energy_keV: float) -> float:
    """Wavenumber k0 = gamma m0 v / hbar of the incident electron in 1/nm.

    k0 = p c / (hbar c) with p c = sqrt(E0 (E0 + 2 m0c^2)); 2510 /nm at 200 kV.
    """
    e0 = _check_beam(beam_energy_keV)
    pc_ev = math.sqrt(e0 * (e0 + 2.0 * ELECTRON_REST_ENERGY_KEV)) * 1e3
    return pc_ev / HBAR_C_EV_NM
