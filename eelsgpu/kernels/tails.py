"""The power-law tail of a spectrum beyond the recorded window (Egerton 2011, section 4.2.1).

The electrons scattered beyond the end of the window count towards the log-ratio's I_t
(kk-theory.md eq. 16) and the SSD's integral (eqs. 15, 17). Beyond the plasmons a spectrum
falls as ``A L^-r`` (L = E - the zero-loss position, r about 3 for single scattering);
:func:`tail_counts` fits it to the end of the window from sums of counts and integrates it to
infinity where the fit holds:

* :func:`fit_range`: the fixed slice of channels the power law is fitted to;
* :func:`power_integral` and :func:`solve_exponents`: the integral of ``L^-r`` and r from a
  ratio of two such integrals (batched bisection);
* :func:`tail_counts`: the counts beyond the window, and where they are trusted.

Units: energies in eV, counts per channel in, counts out.

Examples
--------
>>> import numpy as np
>>> e = np.arange(-100, 1948) * 0.05
>>> y = np.where(e > 5, 1e6 * np.maximum(e, 1.0) ** -3.0, 0.0)[None] * 0.05
>>> extra, trusted = tail_counts(np, y, e, np.zeros(1), 0.05, TAIL_FIT_FRACTION)
>>> bool(trusted[0]), round(float(extra[0]) / (1e6 / (2 * 97.375**2)), 2)
(True, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "R_RANGE",
    "TAIL_FIT_FRACTION",
    "fit_range",
    "power_integral",
    "solve_exponents",
    "tail_counts",
]

#: Share of the loss range the power-law tail beyond the window is fitted to (by default).
TAIL_FIT_FRACTION = 0.2

#: The power-law tail is trusted where the fitted exponent r lies here (a single-scattering tail
#: falls as about E^-3; r below 2 means the window ends inside plural-scattering humps, or on a
#: background or an edge, where a power law says nothing).
R_RANGE = (2.0, 15.0)


def power_integral(xp: Any, r: Any, lo: Any, hi: Any) -> Any:
    """Integral of L^-r from lo to hi (r != 1 there; r is kept away from 1)."""
    return (hi ** (1.0 - r) - lo ** (1.0 - r)) / (1.0 - r)


def solve_exponents(xp: Any, ratio: Any, a1: Any, b1: Any, a2: Any, b2: Any) -> Any:
    """r with int_a1^b1 L^-r / int_a2^b2 L^-r = ratio, by bisection on [1.05, 20] (batched).

    The ratio grows with r for a1 < b1 <= a2 < b2; 36 halvings leave r to 3e-10, below float32
    rounding. The three ratios of the tail fit are solved in one call (stacked): the loop is
    many small array operations, whose cost is their number."""
    lo = xp.full_like(ratio, 1.05)
    hi = xp.full_like(ratio, 20.0)
    for _ in range(36):
        mid = 0.5 * (lo + hi)
        f = power_integral(xp, mid, a1, b1) / power_integral(xp, mid, a2, b2)
        # too small a ratio means r lies above mid
        below = f < ratio
        lo = xp.where(below, mid, lo)
        hi = xp.where(below, hi, mid)
    return 0.5 * (lo + hi)


def fit_range(e: Any, d: float, fit_fraction: float, stop: float = 1.0) -> tuple[int, int]:
    """The fixed slice ``[i_start, i_stop)`` of channels the power-law tail is fitted to."""
    n_e = e.shape[0]
    e_last = float(e[n_e - 1])
    e0 = float(e[0])
    # a static slice of channels (the pixels' centres differ by a few channels at most)
    lmax = e_last - max(0.0, min(e0, 0.0))
    i_start = max(1, math.floor((e_last - (1.0 - stop + fit_fraction) * lmax - e0) / d))
    i_stop = min(n_e, math.floor((e_last - (1.0 - stop) * lmax - e0) / d) + 1)
    return i_start, i_stop


def tail_counts(
    xp: Any,
    y: Any,
    e: Any,
    c: Any,
    d: float,
    fit_fraction: float,
    stop: float = 1.0,
    y_first: int = 0,
) -> tuple[Any, Any]:
    """Counts beyond the window from ``A L^-r`` (L = E - centre) matched to the end of the window.

    The fit range (the last ``fit_fraction`` of the loss range, ending at ``stop`` of it) is cut
    in three equal parts; r comes from the ratio of the counts in the first and last parts (sums
    of counts, unbiased at low counts where a fit to log(counts) is not), and the power law is
    trusted where the first-to-middle and middle-to-last ratios give the same r (within 10 % and
    four standard errors of the counting noise) and r lies in 2..15 (:data:`R_RANGE`).

    Parameters
    ----------
    xp : namespace
        The array namespace of ``y``.
    y : array, shape (n, m)
        Counts per channel; may hold only the channels from ``y_first`` on (those of the fit
        range at least).
    e : array, shape (n_E,)
        The energy axis (eV) of the whole window.
    c : array, shape (n,)
        Where zero loss sits (eV): L = E - c.
    d : float
        Dispersion (eV per channel).
    fit_fraction, stop : float
        The fit range: the last ``fit_fraction`` of the loss range, ending at ``stop`` of it.

    Returns
    -------
    (counts, trusted) : arrays, shape (n,)
        The counts beyond the window (0 where not trusted) and where the power law holds.
    """
    n_e = e.shape[0]
    e_last = float(e[n_e - 1])
    i_start, i_stop = fit_range(e, d, fit_fraction, stop)
    third = max(1, (i_stop - i_start) // 3)
    i1, i2, i3 = i_start + third, i_start + 2 * third, i_start + 3 * third
    o = y_first
    s1 = xp.sum(y[:, i_start - o : i1 - o], axis=-1)
    s2 = xp.sum(y[:, i1 - o : i2 - o], axis=-1)
    s3 = xp.sum(y[:, i2 - o : i3 - o], axis=-1)
    # channel edges in loss energy
    a = float(e[i_start]) - 0.5 * d - c
    m1 = float(e[i1]) - 0.5 * d - c
    m2 = float(e[i2]) - 0.5 * d - c
    b = float(e[i3 - 1]) + 0.5 * d - c
    ok = (s1 > 0) & (s2 > 0) & (s3 > 0) & (a > 0)
    one = xp.ones_like(s1)
    s1s, s2s, s3s = xp.where(ok, s1, one), xp.where(ok, s2, one), xp.where(ok, s3, one)
    a = xp.where(ok, a, one)
    m1, m2, b = xp.where(ok, m1, 2 * one), xp.where(ok, m2, 3 * one), xp.where(ok, b, 4 * one)
    # r from parts 1/2, 2/3 and 1/3, in one batched bisection
    n = s1s.shape[0]
    r_all = solve_exponents(
        xp,
        xp.concat([s1s / s2s, s2s / s3s, s1s / s3s]),
        xp.concat([a, m1, a]),
        xp.concat([m1, m2, m1]),
        xp.concat([m1, m2, m2]),
        xp.concat([m2, b, b]),
    )
    r12, r23, r = r_all[:n], r_all[n : 2 * n], r_all[2 * n :]
    # standard error of r from the counts: d ln(ratio) / dr, numerically
    h = 0.01
    slope12 = (
        xp.log(power_integral(xp, r12 + h, a, m1) / power_integral(xp, r12 + h, m1, m2))
        - xp.log(power_integral(xp, r12, a, m1) / power_integral(xp, r12, m1, m2))
    ) / h
    slope23 = (
        xp.log(power_integral(xp, r23 + h, m1, m2) / power_integral(xp, r23 + h, m2, b))
        - xp.log(power_integral(xp, r23, m1, m2) / power_integral(xp, r23, m2, b))
    ) / h
    var12 = (1.0 / s1s + 1.0 / s2s) / xp.maximum(slope12 * slope12, 1e-12)
    var23 = (1.0 / s2s + 1.0 / s3s) / xp.maximum(slope23 * slope23, 1e-12)
    noise = 4.0 * xp.sqrt(var12 + var23)  # 4 standard errors
    inside = (r12 > 1.1) & (r23 > 1.1) & (r > 1.1) & (r12 < 19.9) & (r23 < 19.9)
    trusted = (
        ok & inside & (r >= R_RANGE[0]) & (r <= R_RANGE[1]) & (xp.abs(r12 - r23) <= 0.1 * r + noise)
    )
    r_safe = xp.where(trusted, r, xp.full_like(r, 3.0))
    l_end = e_last + 0.5 * d - c
    total = s1s + s2s + s3s
    tail = total * l_end ** (1.0 - r_safe) / ((r_safe - 1.0) * power_integral(xp, r_safe, a, b))
    return xp.where(trusted, tail, xp.zeros_like(tail)), trusted
