"""The parametric, Kramers-Kronig-consistent dielectric function of the film fits: Drude + Lorentz.

thin-film-theory.md section 2 (Egerton 2011 eqs. 3.39-3.40)::

    eps(E) = 1 - Ep^2 / (E^2 + i Gamma_D E) + sum_j f_j / (E_j^2 - E^2 - i Gamma_j E)

(convention exp(-i omega t): eps2 > 0). Every pole lies in the lower half of the complex E plane,
so eps is causal and eps1, eps2 are a Kramers-Kronig pair by construction (eq. 32 holds
exactly); eps -> 1 as E -> infinity (no eps_inf: it would break KK; core polarisation belongs in
a fixed oscillator above the window). The strengths ``f_j`` (eV^2) are ``plasmon_energy_eV^2``
of :class:`eelsgpu.synthetic.Lorentz`, so one oscillator is that model exactly.

Parameters are positive and fitted as their logarithms (:func:`eps_and_derivatives` returns
d eps / d ln p), so a strength, width or energy can never change sign.

Units: energies and widths in eV, strengths f in eV^2; eps dimensionless.

Examples
--------
>>> import numpy as np
>>> e = np.array([5.0, 15.0])
>>> eps = drude_lorentz_eps(np, e, 15.0, 1.0, np.zeros(0), np.zeros(0), np.zeros(0))
>>> bool(eps[1].imag > 0 and abs(eps[1].real) < 0.01)  # near the zero crossing of a metal
True
"""

from __future__ import annotations

import math
from typing import Any

from scipy import constants as _c

__all__ = [
    "PLASMA_EV_PER_SQRT_NM3",
    "drude_lorentz_eps",
    "eps_and_derivatives",
    "free_electron_cutoff_per_nm",
    "n_eff_per_nm3",
]

#: hbar omega_p (eV) of a free-electron gas of density 1 electron per nm^3:
#: hbar sqrt(e^2 n / (eps0 m0)) = 1.1745 eV (thin-film-theory.md section 2, "Ep_tot = 1.174
#: sqrt(n_eff)").
PLASMA_EV_PER_SQRT_NM3: float = _c.hbar * math.sqrt(_c.e**2 * 1e27 / (_c.epsilon_0 * _c.m_e)) / _c.e
#: hbar^2 / m0 in eV nm^2 (0.0762), for the Fermi velocity of the plasmon cut-off.
_HBAR2_OVER_M_EV_NM2: float = _c.hbar**2 / _c.m_e / _c.e * 1e18


def drude_lorentz_eps(
    xp: Any, energy_eV: Any, ep: Any, gamma_d: Any, e_j: Any, f_j: Any, g_j: Any
) -> Any:
    """eps(E) of a Drude term and Lorentz oscillators (thin-film-theory.md section 2).

    Parameters
    ----------
    xp : namespace
    energy_eV : array (..., n_E)
        Energies (eV), > 0.
    ep, gamma_d : array (...,) or float
        Drude plasma energy Ep and damping Gamma_D (eV); Ep = 0 for no free electrons.
    e_j, f_j, g_j : array (..., n_osc)
        Oscillator energies (eV), strengths (eV^2) and widths (eV); n_osc may be 0.

    Returns
    -------
    array (..., n_E), complex
    """
    e = energy_eV
    ep = _last(xp, ep, e)
    gd = _last(xp, gamma_d, e)
    eps = 1.0 - ep * ep / (e * e + 1j * gd * e)
    if e_j.shape[-1]:
        ee = e[..., None, :]
        den = e_j[..., :, None] ** 2 - ee * ee - 1j * g_j[..., :, None] * ee
        eps = eps + xp.sum(f_j[..., :, None] / den, axis=-2)
    return eps


def eps_and_derivatives(
    xp: Any, energy_eV: Any, ep: Any, gamma_d: Any, e_j: Any, f_j: Any, g_j: Any
) -> tuple[Any, Any]:
    """eps(E) and its derivatives with respect to the logarithms of its parameters.

    Parameters
    ----------
    xp, energy_eV, ep, gamma_d, e_j, f_j, g_j
        As :func:`drude_lorentz_eps`; ``ep``, ``gamma_d`` of shape (B,), the oscillators
        (B, n_osc), ``energy_eV`` (n_E,).

    Returns
    -------
    eps : array (B, n_E), complex
    d_eps : array (B, 2 + 3 n_osc, n_E), complex
        d eps / d ln p for p = (Ep, Gamma_D, E_1, f_1, Gamma_1, E_2, ...): analytic, e.g.
        d eps / d ln Ep = -2 Ep^2 / (E^2 + i Gamma E).
    """
    e = energy_eV[None, :]
    ep2 = (ep * ep)[:, None]
    gd = gamma_d[:, None]
    dd = e * e + 1j * gd * e
    drude = ep2 / dd
    eps = 1.0 - drude
    parts = [-2.0 * drude, drude * (1j * gd * e) / dd]
    n_osc = e_j.shape[-1]
    for j in range(n_osc):
        ej = e_j[:, j : j + 1]
        fj = f_j[:, j : j + 1]
        gj = g_j[:, j : j + 1]
        den = ej * ej - e * e - 1j * gj * e
        term = fj / den
        eps = eps + term
        parts += [-2.0 * term * ej * ej / den, term, term * (1j * gj * e) / den]
    return eps, xp.stack(parts, axis=1)


def _last(xp: Any, v: Any, like: Any) -> Any:
    """A per-row parameter (B,) as a column against ``like`` (B, n_E); floats pass unchanged."""
    if isinstance(v, (int, float)):
        return v
    return v[..., None] if v.ndim and like.ndim > v.ndim else v


def n_eff_per_nm3(ep_total_eV: Any) -> Any:
    """Effective electron density n_eff (electrons/nm^3) of a total strength Ep_tot (eV): the
    f-sum rule int E eps2 dE = (pi/2) Ep_tot^2 with Ep_tot^2 = Ep^2 + sum f_j and
    Ep_tot = 1.1745 sqrt(n_eff) (thin-film-theory.md section 2).

    >>> round(float(n_eff_per_nm3(15.8)), 0)  # Al: 3 electrons x 60.2 atoms/nm^3
    181.0
    """
    return (ep_total_eV / PLASMA_EV_PER_SQRT_NM3) ** 2


def free_electron_cutoff_per_nm(ep_total_eV: Any) -> Any:
    """Plasmon cut-off wavenumber q_c = omega_p / v_F (1/nm) of a free-electron gas of plasma
    energy Ep_tot (eV): v_F from k_F = (3 pi^2 n)^(1/3), n from :func:`n_eff_per_nm3`
    (thin-film-theory.md section 5: 11 /nm for Al, theta_c = q_c/k0 = 4.5 mrad at 200 kV).

    >>> round(float(free_electron_cutoff_per_nm(15.8)), 1)
    11.8
    """
    n = n_eff_per_nm3(ep_total_eV)
    k_f = (3.0 * math.pi**2 * n) ** (1.0 / 3.0)
    return ep_total_eV / (_HBAR2_OVER_M_EV_NM2 * k_f)
