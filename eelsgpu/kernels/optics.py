"""Optical quantities derived from the dielectric function eps = eps1 + i eps2 (kk-theory.md, after
eq. 34; Egerton 2011, section 4.2).

* :func:`refractive_index_nk`: n(E) and k(E), n + ik = sqrt(eps);
* :func:`absorption_coefficient_per_nm`: mu(E) = (E/hbar c) [2(|eps| - eps1)]^1/2 = 2 k E / (hbar c),
  in 1/nm (x 1e7 for 1/cm);
* :func:`effective_electron_density`: n_eff(E) = (2 eps0 m0 / (pi hbar^2 e^2)) int_0^E E' eps2(E')
  dE', the f-sum rule (Egerton 2011 eq. 4.29), electrons per nm^3 or per atom; for a metal it is
  dominated by the Drude peak of eps2 at E -> 0, i.e. by the low-energy extrapolation;
* :func:`plasmon_energy_eV`: where eps1 crosses 0 upwards (of several crossings, the one with the
  largest loss function);
* :func:`loss_peak_eV`: the loss-function maximum;
* :func:`cerenkov_condition`: eps1 > (c/v)^2 at low energy (median over a range, robust to noise).

Inputs are rows (n, K) on an energy grid in eV; all quantities are per pixel and dimensionless
unless a unit is named.

Examples
--------
>>> import numpy as np
>>> n, k = refractive_index_nk(np.array([[-3.0, 4.0]]), np.array([[4.0, 0.0]]))
>>> n.tolist(), k.tolist()
([[1.0, 2.0]], [[2.0, 0.0]])
"""

from __future__ import annotations

import math
from typing import Any

import scipy.constants as _c

from .. import physics
from .._xp import array_namespace

__all__ = [
    "DENSITY_PER_EP2_NM3",
    "absorption_coefficient_per_nm",
    "cerenkov_condition",
    "effective_electron_density",
    "loss_peak_eV",
    "plasmon_energy_eV",
    "refractive_index_nk",
]

#: electrons per nm^3 per eV^2 of Ep^2: n = eps0 m0 Ep^2 / hbar^2 (Ep = hbar omega_p).
DENSITY_PER_EP2_NM3: float = _c.epsilon_0 * _c.m_e * _c.e**2 / (_c.hbar**2 * _c.e**2) * 1e-27


def refractive_index_nk(eps1: Any, eps2: Any) -> tuple[Any, Any]:
    """n and k with n + ik = sqrt(eps1 + i eps2): n = sqrt((|eps| + eps1)/2), k = sqrt((|eps| -
    eps1)/2) (dimensionless; rounding below 0 is clipped)."""
    xp = array_namespace(eps1)
    mod = xp.sqrt(eps1 * eps1 + eps2 * eps2)
    n_e = xp.sqrt(xp.clip(mod + eps1, 0.0, None) / 2.0)
    k_e = xp.sqrt(xp.clip(mod - eps1, 0.0, None) / 2.0)
    return n_e, k_e


def absorption_coefficient_per_nm(k: Any, energy_eV: Any) -> Any:
    """Optical absorption coefficient mu = (E / hbar c) [2 (|eps| - eps1)]^(1/2) = 2 k E / (hbar c)
    in 1/nm, from the extinction coefficient ``k`` (n, K) on ``energy_eV`` (K,) in eV."""
    return 2.0 * k * energy_eV / physics.HBAR_C_EV_NM


def effective_electron_density(
    eps2: Any, energy_eV: Any, dispersion_eV: float, atom_density_per_nm3: float | None = None
) -> Any:
    """n_eff(E) = (2/pi) eps0 m0 / (hbar^2 e^2) int_0^E E' eps2(E') dE' (f-sum rule, Egerton 2011
    eq. 4.29), electrons per nm^3, or per atom given ``atom_density_per_nm3`` (atoms per nm^3).

    ``eps2`` (n, K) on ``energy_eV`` = k dE, k = 1..K (eV): the integral is a trapezoid over the
    channels plus [0, dE] with E eps2 flat there.
    """
    xp = array_namespace(eps2)
    de = dispersion_eV
    integrand = energy_eV * eps2
    # integral_0^E E' eps2 dE': trapezoid on k >= 1, plus [0, dE] with E eps2 flat
    cum = xp.cumulative_sum(integrand, axis=-1) * de - 0.5 * de * integrand
    cum = cum + 0.5 * de * integrand[:, :1] + 0.5 * de * integrand[:, :1]
    dens = (2.0 / math.pi) * DENSITY_PER_EP2_NM3 * cum
    if atom_density_per_nm3 is not None:
        dens = dens / float(atom_density_per_nm3)
    return dens


def plasmon_energy_eV(
    xp: Any, e1: Any, loss: Any, e: Any, lo: Any, dispersion_eV: float | None = None
) -> Any:
    """Energy (eV) where eps1 crosses 0 upwards; of several crossings, the one where the loss
    function is largest (the bulk plasmon); NaN when there is none.

    ``e1`` and ``loss`` (n, K) on the uniform grid ``e`` (K,) in eV; ``lo`` (K,) or (n, K) bool,
    the channels searched (E >= E_c). The crossing is interpolated linearly between channels.
    ``dispersion_eV`` (the grid step, a host number) spares reading it from ``e``.
    """
    a, b = e1[:, :-1], e1[:, 1:]
    lo2 = lo if lo.ndim == 2 else lo[None, :]
    cross = (a < 0) & (b >= 0) & lo2[:, :-1]
    score = xp.where(cross, loss[:, :-1], -1.0)
    idx = xp.argmax(score, axis=-1)[:, None]
    has = xp.take_along_axis(score, idx, axis=-1)[:, 0] >= 0  # the best score: a crossing
    # eps1 at the crossing's two channels in one gather
    ab = xp.take_along_axis(e1, xp.concat([idx, idx + 1], axis=-1), axis=-1)
    a_i, b_i = ab[:, 0], ab[:, 1]
    e_i = xp.take(e, idx[:, 0])
    de = dispersion_eV if dispersion_eV is not None else e[1] - e[0]
    step = b_i - a_i
    ec = e_i - de * a_i / xp.where(step > 0, step, 1.0)
    return xp.where(has, ec, math.nan)


def loss_peak_eV(xp: Any, loss: Any, e: Any, lo: Any, dispersion_eV: float | None = None) -> Any:
    """Energy (eV) of the loss-function maximum above E_c, refined by a parabola through 3 points.

    ``loss`` (n, K) on the uniform grid ``e`` (K,) in eV; ``lo`` (K,) or (n, K) bool, the channels
    searched. ``dispersion_eV`` (the grid step, a host number) spares reading it from ``e``.
    """
    masked = xp.where(lo if lo.ndim == 2 else lo[None, :], loss, -math.inf)
    n = loss.shape[-1]
    idx = xp.clip(xp.argmax(masked, axis=-1), 1, n - 2)
    # the three channels around the peak in one gather
    y = xp.take_along_axis(loss, idx[:, None] + xp.arange(-1, 2)[None, :], axis=-1)
    y0, y1, y2 = y[:, 0], y[:, 1], y[:, 2]
    den = y0 + y2 - 2.0 * y1
    # a parabola with a maximum (den < 0): its vertex, within half a channel
    shift = xp.clip(0.5 * (y0 - y2) / xp.where(den < 0, den, -math.inf), -0.5, 0.5)
    de = dispersion_eV if dispersion_eV is not None else e[1] - e[0]
    return xp.take(e, idx) + shift * de


def cerenkov_condition(eps1: Any, k0: Any, k1: int, beam_energy_keV: float) -> Any:
    """Per pixel: the Cerenkov condition v > c / sqrt(eps1), i.e. eps1 > (c/v)^2, on the median of
    eps1 over channels [k0, k1) (the low-energy range where Cerenkov losses fall; a single noisy
    channel where Re[1/eps] passes near 0 -- eps1 -> +-inf, common for metals at low energy --
    must not flag a pixel). ``eps1`` (n, K); ``k0`` an int or an integer array (n,) (each
    pixel's first channel above its cut-off); E0 in keV. False where the range is empty."""
    xp = array_namespace(eps1)
    beta_v = physics.speed_ratio_v_over_c(beam_energy_keV)
    if isinstance(k0, int):
        low = xp.sort(eps1[:, k0:k1], axis=-1)
        median = low[:, (k1 - k0) // 2]
        return median > 1.0 / beta_v**2
    # per-pixel ranges: channels outside [k0, k1) sort to the end as +inf; the median of the
    # m_i channels inside is the (m_i // 2)-th
    seg = eps1[:, :k1]
    inside = xp.arange(k1)[None, :] >= k0[:, None]
    srt = xp.sort(xp.where(inside, seg, xp.full_like(seg, math.inf)), axis=-1)
    m = xp.sum(xp.astype(inside, xp.int64), axis=-1)
    idx = xp.clip(m // 2, 0, k1 - 1)
    median = xp.take_along_axis(srt, idx[:, None], axis=-1)[:, 0]
    return (m > 0) & (median > 1.0 / beta_v**2)
