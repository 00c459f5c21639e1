"""The power-law tail of a spectrum beyond the recorded window (Egerton 2011, section 4.2.1).

The electrons scattered beyond the end of the window count towards the log-ratio's I_t
(kk-theory.md eq. 16) and the SSD's integral (eqs. 15, 17). Beyond the plasmons a spectrum
falls as ``A L^-r`` (L = E - the zero-loss position, r about 3 for single scattering);
:func:`tail_counts` fits it to the end of the window from sums of counts and integrates it to
infinity where the fit holds:

* :func:`fit_range`: the fixed slice of channels the power law is fitted to;
* :func:`power_integral` and :func:`solve_exponents`: the integral of ``L^-r`` and r from a
  ratio of two such integrals (batched bisection);
* :func:`tail_counts`: the counts beyond the window, where the fit holds, and their standard
  deviation from the noise.

Units: energies in eV, counts per channel in, counts out.

Examples
--------
>>> import numpy as np
>>> e = np.arange(-100, 1948) * 0.05
>>> y = np.where(e > 5, 1e6 * np.maximum(e, 1.0) ** -3.0, 0.0)[None] * 0.05
>>> extra, trusted, sd = tail_counts(np, y, e, np.zeros(1), 0.05, TAIL_FIT_FRACTION)
>>> bool(trusted[0]), round(float(extra[0]) / (1e6 / (2 * 97.375**2)), 2), bool(sd[0] < extra[0])
(True, 1.0, True)
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
    # the ratio does not change when every edge is divided by a1: with the edges near 1, L^-r
    # cannot underflow (float32 at L = 400 eV and r = 20 does)
    a1, b1, a2, b2 = 1.0, b1 / a1, a2 / a1, b2 / a1
    for _ in range(36):
        mid = 0.5 * (lo + hi)
        f = power_integral(xp, mid, a1, b1) / power_integral(xp, mid, a2, b2)
        # too small a ratio means r lies above mid
        below = f < ratio
        lo = xp.where(below, mid, lo)
        hi = xp.where(below, hi, mid)
    return 0.5 * (lo + hi)


def fit_range(
    e: Any, d: float, fit_fraction: float, stop: float = 1.0, zero_loss_eV: float = 0.0
) -> tuple[int, int]:
    """The fixed slice ``[i_start, i_stop)`` of channels the power-law tail is fitted to: the
    last ``fit_fraction`` of the loss range (from ``zero_loss_eV``, or the window's start if that
    lies above it, to the window's end), ending at ``stop`` of it."""
    n_e = e.shape[0]
    e_last = float(e[n_e - 1])
    e0 = float(e[0])
    # a static slice of channels (the pixels' centres differ by a few channels at most)
    lmax = e_last - max(float(zero_loss_eV), e0)
    base = e_last - lmax  # where the loss range starts on the axis
    i_start = max(1, math.floor((base + (stop - fit_fraction) * lmax - e0) / d))
    i_stop = min(n_e, math.floor((base + stop * lmax - e0) / d) + 1)
    return i_start, i_stop


def _noise_variance(xp: Any, y: Any) -> Any:
    """Per row, the white-noise variance of one channel of ``y`` (n, m) from fourth differences
    (in the data's own units, whatever their gain)."""
    d4 = y[:, :-4] - 4.0 * y[:, 1:-3] + 6.0 * y[:, 2:-2] - 4.0 * y[:, 3:-1] + y[:, 4:]
    return xp.mean(d4 * d4, axis=-1) / 70.0


def tail_counts(
    xp: Any,
    y: Any,
    e: Any,
    c: Any,
    d: float,
    fit_fraction: float,
    stop: float = 1.0,
    y_first: int = 0,
    zero_loss_eV: float = 0.0,
) -> tuple[Any, Any, Any]:
    """Counts beyond the window from ``A L^-r`` (L = E - centre) matched to the end of the window.

    The fit range (the last ``fit_fraction`` of the loss range, ending at ``stop`` of it) is cut
    in three equal parts; r comes from the ratio of the counts in the first and last parts (sums
    of counts, unbiased at low counts where a fit to log(counts) is not), and the power law is
    trusted where the first-to-middle and middle-to-last ratios give the same r (within 10 % and
    four standard errors of the noise) and r lies in 2..15 (:data:`R_RANGE`). The noise of the
    sums is measured (fourth differences over the fit range), so the data may be in any units.

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
    zero_loss_eV : float
        Where zero loss sits for the block as a whole (eV; 0 on a calibrated axis, which the
        analyses make by shifting an uncalibrated one): the start of the loss range that
        ``fit_fraction`` is a share of. A fixed number, so that a pixel's result does not
        depend on the block it is computed in.

    Returns
    -------
    (counts, trusted, sd) : arrays, shape (n,)
        The counts beyond the window (0 where the fit does not hold), where the power law holds,
        and the standard deviation of the counts from the noise of r (the exponent moved by one
        standard error either way).
    """
    n_e = e.shape[0]
    e_last = float(e[n_e - 1])
    i_start, i_stop = fit_range(e, d, fit_fraction, stop, zero_loss_eV)
    third = max(1, (i_stop - i_start) // 3)
    i1, i2, i3 = i_start + third, i_start + 2 * third, i_start + 3 * third
    o = y_first
    s1 = xp.sum(y[:, i_start - o : i1 - o], axis=-1)
    s2 = xp.sum(y[:, i1 - o : i2 - o], axis=-1)
    s3 = xp.sum(y[:, i2 - o : i3 - o], axis=-1)
    # the noise of one channel over the fit range: each part's sum has variance v x channels
    seg = y[:, max(0, i_start - o - 2) : min(y.shape[-1], i3 - o + 2)]
    v = _noise_variance(xp, seg) if seg.shape[-1] > 4 else xp.zeros_like(s1)
    var_part = v * float(third)
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

    # standard error of r from the noise of the sums: d ln(ratio) / dr, numerically
    def slope(rr, lo1, hi1, lo2, hi2):
        lo1, hi1, lo2, hi2 = 1.0, hi1 / lo1, lo2 / lo1, hi2 / lo1  # (no underflow: as above)
        h = 0.01
        f1 = power_integral(xp, rr + h, lo1, hi1) / power_integral(xp, rr + h, lo2, hi2)
        f0 = power_integral(xp, rr, lo1, hi1) / power_integral(xp, rr, lo2, hi2)
        return (xp.log(f1) - xp.log(f0)) / h

    rel1, rel2, rel3 = var_part / (s1s * s1s), var_part / (s2s * s2s), var_part / (s3s * s3s)
    k12, k23, k13 = slope(r12, a, m1, m1, m2), slope(r23, m1, m2, m2, b), slope(r, a, m1, m2, b)
    var12 = (rel1 + rel2) / xp.maximum(k12 * k12, 1e-12)
    var23 = (rel2 + rel3) / xp.maximum(k23 * k23, 1e-12)
    sd_r = xp.sqrt((rel1 + rel3) / xp.maximum(k13 * k13, 1e-12))
    noise = 4.0 * xp.sqrt(var12 + var23)  # 4 standard errors
    inside = (r12 > 1.1) & (r23 > 1.1) & (r > 1.1) & (r12 < 19.9) & (r23 < 19.9)
    trusted = (
        ok & inside & (r >= R_RANGE[0]) & (r <= R_RANGE[1]) & (xp.abs(r12 - r23) <= 0.1 * r + noise)
    )
    l_end = e_last + 0.5 * d - c
    total = s1s + s2s + s3s

    def beyond(rr):  # the counts of the matched power law beyond the window
        rr = xp.where(trusted, rr, xp.full_like(rr, 3.0))
        # (edges over a: no underflow, the same value)
        ratio = (l_end / a) ** (1.0 - rr) / power_integral(xp, rr, 1.0, b / a)
        return total * ratio / (rr - 1.0)

    tail = beyond(r)
    lo_r = xp.maximum(r - sd_r, 1.05)
    sd = 0.5 * xp.abs(beyond(lo_r) - beyond(r + sd_r))
    zero = xp.zeros_like(tail)
    return xp.where(trusted, tail, zero), trusted, xp.where(trusted, sd, zero)
