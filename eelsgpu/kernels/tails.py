"""The power-law tail of a spectrum beyond the recorded window (Egerton 2011, section 4.2.1).

The electrons scattered beyond the end of the window count towards the log-ratio's I_t
(kk-theory.md eq. 16) and the SSD's integral (eqs. 15, 17). Beyond the plasmons a spectrum
falls as ``A L^-r`` (L = E - the zero-loss position, r about 3 for single scattering);
:func:`tail_counts` fits it to the end of the window from sums of counts and integrates it to
infinity where the fit holds:

* :func:`fit_range`: the fixed slice of channels the power law is fitted to (host numbers);
* :func:`power_integral` and :func:`solve_exponents`: the integral of ``L^-r`` and r from a
  ratio of two such integrals (a few Newton steps from the small-range estimate, batched);
* :func:`tail_sums` and :func:`solve_tails`: the fit in two halves, so that several fits (the
  spectrum's own tail and its SSD's, with two fit ranges) share ONE batched solve: what a block
  kernel pays is the number of its array operations, not their length;
* :func:`tail_counts`: the counts beyond the window, where the fit holds, and their standard
  deviation from the noise (one fit: both halves).

Units: energies in eV, counts per channel in, counts out. Every slice is fixed by host numbers
(the axis' first energy, channel width and length: ``axis``), so nothing here reads a device
array back (issue 13).

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
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .._xp import is_numpy
from . import _fused

__all__ = [
    "FUSED_NAME",
    "R_RANGE",
    "TAIL_FIT_FRACTION",
    "TailSums",
    "fit_range",
    "power_integral",
    "solve_exponents",
    "solve_tails",
    "tail_counts",
    "tail_sums",
    "tails_probe",
    "tails_twin",
]

#: The name of the fused form of :func:`tails_twin` (``kernels/tails.cu``) in
#: :mod:`eelsgpu.kernels._fused`.
FUSED_NAME = "tails_solve"

#: Share of the loss range the power-law tail beyond the window is fitted to (by default).
TAIL_FIT_FRACTION = 0.2

#: The power-law tail is trusted where the fitted exponent r lies here (a single-scattering tail
#: falls as about E^-3; r below 2 means the window ends inside plural-scattering humps, or on a
#: background or an edge, where a power law says nothing).
R_RANGE = (2.0, 15.0)

#: Where :func:`solve_exponents` keeps r (the ratio is monotone in r there; r = 1 is singular).
_R_BOUNDS = (1.05, 20.0)
#: Newton steps from the log-space estimate (each integral ~ its log-range times L^(1-r) at the
#: range's log-centre): measured against a 60-step bisection on 9,000 random fit ranges
#: (0.3-500 eV, 5-60 % of the loss range, r 1.06-19.9), 3 steps agree to 3e-12 in float64 and
#: to float32 rounding in float32 (2e-4 where the two parts' ratio is within 3 % of 1, which
#: limits a bisection the same way).
_NEWTON_STEPS = 3
#: Step of the numerical slope d ln(ratio) / dr that the noise of r is propagated with.
_SLOPE_STEP = 0.01


def _clamp(xp: Any, x: Any, lo: float, hi: float) -> Any:
    """``min(max(x, lo), hi)``: one ``clip`` on a device, the two ufuncs on NumPy (the same
    values; array-api-compat's clip is slower there)."""
    if is_numpy(xp):
        return xp.minimum(xp.maximum(x, lo), hi)
    return xp.clip(x, lo, hi)


def power_integral(xp: Any, r: Any, lo: Any, hi: Any) -> Any:
    """Integral of L^-r from lo to hi (r != 1 there; r is kept away from 1)."""
    return (hi ** (1.0 - r) - lo ** (1.0 - r)) / (1.0 - r)


def solve_exponents(xp: Any, ratio: Any, a1: Any, b1: Any, a2: Any, b2: Any) -> Any:
    """r with ``int_a1^b1 L^-r / int_a2^b2 L^-r = ratio``, in [1.05, 20] (batched, (n,)).

    The log of the ratio of integrals is monotone in r for a1 < b1 <= a2 < b2; r starts from its
    log-space value (each integral ~ ln(b / a) L^(1 - r) at the range's log-centre) and takes
    :data:`_NEWTON_STEPS` Newton steps on ``ln(ratio)`` (exact derivative), each clamped to
    [1.05, 20]: a fixed number of vector operations, whatever the data (a 36-step bisection
    before issue 13; they agree to float rounding, see :data:`_NEWTON_STEPS`). A root beyond
    the bounds gives the bound. Everything is in ratios of the edges, so L^-r cannot
    underflow.
    """
    return _solve(xp, ratio, a1, b1, a2, b2)[0]


def _solve(xp: Any, ratio: Any, a1: Any, b1: Any, a2: Any, b2: Any) -> tuple[Any, Any]:
    """:func:`solve_exponents`, and the numerical slope ``d ln(ratio) / dr`` at the root (step
    :data:`_SLOPE_STEP`), which the noise of r is propagated with."""
    # ln(int_a1^b1 L^-r / int_a2^b2 L^-r) = ln(expm1(s u1) / expm1(s u2)) - s ln(a2 / a1) with
    # s = 1 - r and u = ln(b / a) of each range: exact, and well conditioned for ranges close to
    # 1, where a difference of powers is not; its derivative in r is
    # u1 / expm1(-s u1) - u2 / expm1(-s u2) + ln(a2 / a1)
    lo, hi = _R_BOUNDS
    # (the three logs in one: u of each range and ln(a2 / a1))
    logs = xp.log(xp.stack([b1 / a1, b2 / a2, a2 / a1], axis=-1))
    u, lp = logs[:, :2], logs[:, 2]
    target = xp.log(ratio)
    # start: in x = ln L each integral is exp(s x_centre) times its range u, to first order:
    # s (x_centre1 - x_centre2) + ln(u1 / u2) = ln(ratio)
    s0 = (target - xp.log(u[:, 0] / u[:, 1])) / (0.5 * (u[:, 0] - u[:, 1]) - lp)
    r = _clamp(xp, 1.0 - s0, lo, hi)
    # (u and -u stacked once: s (-u) is -(s u) exactly, so each step's two expm1 are one)
    uu = xp.stack([u, -u], axis=1)  # (n, 2 [u, -u], 2 [range 1, 2])
    for _ in range(_NEWTON_STEPS):
        s = 1.0 - r
        em = xp.expm1(s[:, None, None] * uu)  # (n, 2 [s u, -s u], 2 [range 1, 2])
        g = xp.log(em[:, 0, 0] / em[:, 0, 1]) - s * lp - target
        q = u / em[:, 1, :]
        r = _clamp(xp, r - g / (q[:, 0] - q[:, 1] + lp), lo, hi)
    # the slope, as a forward difference (the noise model of tail_counts)
    s2 = xp.stack([1.0 - r, (1.0 - _SLOPE_STEP) - r], axis=-1)  # (n, 2): r and r + h
    em = xp.expm1(s2[:, :, None] * u[:, None, :])  # (n, 2 [r, r + h], 2 [range 1, 2])
    f = xp.log(em[:, :, 0] / em[:, :, 1]) - s2 * lp[:, None]
    return r, (f[:, 1] - f[:, 0]) / _SLOPE_STEP


def fit_range(
    axis: tuple[float, float, int],
    fit_fraction: float,
    stop: float = 1.0,
    zero_loss_eV: float = 0.0,
) -> tuple[int, int]:
    """The fixed slice ``[i_start, i_stop)`` of channels the power-law tail is fitted to: the
    last ``fit_fraction`` of the loss range (from ``zero_loss_eV``, or the window's start if that
    lies above it, to the window's end), ending at ``stop`` of it. ``axis`` is the window's
    first energy, channel width (eV) and number of channels (host numbers)."""
    e0, d, n_e = axis
    e_last = e0 + d * (n_e - 1)
    # a static slice of channels (the pixels' centres differ by a few channels at most)
    lmax = e_last - max(float(zero_loss_eV), e0)
    base = e_last - lmax  # where the loss range starts on the axis
    i_start = max(1, math.floor((base + (stop - fit_fraction) * lmax - e0) / d))
    i_stop = min(n_e, math.floor((base + stop * lmax - e0) / d) + 1)
    return i_start, i_stop


def _fourth_difference_squares(xp: Any, y: Any) -> Any:
    """Per row, the squared fourth differences of ``y`` (n, m): (n, m - 4), the one at column j
    covering channels j..j+4."""
    d4 = (y[:, :-4] + y[:, 4:]) - 4.0 * (y[:, 1:-3] + y[:, 3:-1]) + 6.0 * y[:, 2:-2]
    return d4 * d4


def _noise_variance(xp: Any, y: Any, squares: Any = None) -> Any:
    """Per row, the white-noise variance of one channel of ``y`` (n, m) from fourth differences
    (in the data's own units, whatever their gain); ``squares`` their squares when already made
    (:func:`_fourth_difference_squares`, the same values)."""
    sq = _fourth_difference_squares(xp, y) if squares is None else squares
    return xp.sum(sq, axis=-1) / (70.0 * sq.shape[-1])


def _noise_segment(
    axis: tuple[float, float, int],
    fit_fraction: float,
    stop: float,
    zero_loss_eV: float,
    y_first: int,
    y_stop: int,
) -> tuple[int, int]:
    """The channels ``[a, b)`` (absolute) whose fourth differences give the noise of the fit of
    :func:`tail_sums` with these parameters, on data holding channels ``y_first..y_stop - 1``."""
    i_start, i_stop = fit_range(axis, fit_fraction, stop, zero_loss_eV)
    third = max(1, (i_stop - i_start) // 3)
    return max(y_first, i_start - 2), min(y_stop, i_start + 3 * third + 2)


class TailSums(NamedTuple):
    """The data of one power-law tail fit (:func:`tail_sums`), per row: ``parts`` (n, 3) the
    counts in the three equal parts of the fit range, ``edges`` (n, 4) their edges in loss
    energy a < m1 < m2 < b (eV), ``var`` (n,) the variance of one part's sum from the noise,
    ``l_end`` (n,) the window's end in loss energy (eV). The fit can be made where every part
    is positive and a > 0 (:func:`tails_twin` decides it, with the rest of the fit)."""

    parts: Any
    edges: Any
    var: Any
    l_end: Any


def tail_sums(
    xp: Any,
    y: Any,
    axis: tuple[float, float, int],
    c: Any,
    fit_fraction: float,
    stop: float = 1.0,
    y_first: int = 0,
    zero_loss_eV: float = 0.0,
    squares: tuple[Any, int] | None = None,
) -> TailSums:
    """The sums of a power-law tail fit (see :func:`tail_counts`, whose parameters these are;
    ``axis`` the window's first energy, channel width (eV) and length, host numbers).
    ``squares`` = (the squared fourth differences of the data, the absolute channel the first
    one starts at) when several fits share them (:func:`_fourth_difference_squares`; they must
    cover :func:`_noise_segment`): the same values, made once."""
    e0, d, n_e = axis
    dt = y.dtype
    i_start, i_stop = fit_range(axis, fit_fraction, stop, zero_loss_eV)
    third = max(1, (i_stop - i_start) // 3)
    o = y_first
    # the three parts are equal and adjacent: one sum of a (n, 3, third) view
    fit = y[:, i_start - o : i_start - o + 3 * third]
    parts = xp.sum(xp.reshape(fit, (fit.shape[0], 3, third)), axis=-1)
    # the noise of one channel over the fit range: each part's sum has variance v x channels
    seg = y[:, max(0, i_start - o - 2) : min(y.shape[-1], i_start + 3 * third - o + 2)]
    if seg.shape[-1] > 4 and squares is not None:
        a = max(o, i_start - 2) - squares[1]
        var = _noise_variance(xp, seg, squares[0][:, a : a + seg.shape[-1] - 4]) * float(third)
    elif seg.shape[-1] > 4:
        var = _noise_variance(xp, seg) * float(third)
    else:
        var = xp.zeros((y.shape[0],), dtype=dt)
    # channel edges in loss energy (host numbers minus each row's zero loss; c None: zero loss
    # at 0 eV for every row): one upload
    i1, i2, i3 = i_start + third, i_start + 2 * third, i_start + 3 * third
    host = xp.asarray([e0 + d * (i - 0.5) for i in (i_start, i1, i2, i3)], dtype=dt)
    n = y.shape[0]
    edges = xp.broadcast_to(host[None, :], (n, 4)) if c is None else host[None, :] - c[:, None]
    l_end_host = e0 + d * (n_e - 0.5)
    l_end = xp.full((n,), l_end_host, dtype=dt) if c is None else l_end_host - c
    return TailSums(parts, edges, var, l_end)


def solve_tails(xp: Any, fits: Sequence[TailSums]) -> list[tuple[Any, Any, Any]]:
    """``(counts, trusted, sd)`` of each fit (:func:`tail_counts`), all solved together: the
    rows of every fit and their three ratios (parts 1/2, 2/3, 1/3) go through ONE batched
    :func:`solve_exponents` and one evaluation of the counts beyond the window
    (:func:`tails_twin`; on a device with a fused form of it, one kernel launch)."""
    sizes = [f.l_end.shape[0] for f in fits]
    cat = (lambda arrs: arrs[0]) if len(fits) == 1 else (lambda arrs: xp.concat(arrs, axis=0))
    tail, trusted, sd = _tails(
        xp,
        cat([f.parts for f in fits]),
        cat([f.edges for f in fits]),
        cat([f.var for f in fits]),
        cat([f.l_end for f in fits]),
    )
    out, start = [], 0
    for m in sizes:
        out.append((tail[start : start + m], trusted[start : start + m], sd[start : start + m]))
        start += m
    return out


def _tails(xp: Any, parts: Any, edges: Any, var: Any, l_end: Any) -> tuple[Any, ...]:
    """:func:`tails_twin` on the device's fused kernel where the engine registered one (float32
    arrays of a namespace it has one for: ``kernels/tails.cu`` on CuPy), else the twin."""
    if not is_numpy(xp) and str(parts.dtype).split(".")[-1] == "float32":
        fused = _fused.lookup(FUSED_NAME, xp)
        if fused is not None:
            return tuple(fused(parts, edges, var, l_end))
    return tails_twin(xp, parts, edges, var, l_end)


def tails_twin(xp: Any, parts: Any, edges: Any, var: Any, l_end: Any) -> tuple[Any, Any, Any]:
    """The power-law tails of :func:`solve_tails` from their fits' sums, row by row: the
    array-API twin of the fused CUDA kernel ``tails_solve`` (``kernels/tails.cu``).

    ``parts`` (n, 3), ``edges`` (n, 4), ``var``, ``l_end`` (n,): the fields of
    :class:`TailSums` (the rows of several fits stacked). Returns ``(counts, trusted, sd)``
    (n,): the counts beyond the window (0 where the power law does not hold, or where the fit
    cannot be made: a part not positive, or a <= 0), where it holds, and their standard
    deviation from the noise of r. Every row is independent of the others: an elementwise
    kernel's worth of work (about 130 array operations here).
    """
    n = parts.shape[0]
    # where the fit cannot be made, stand-in sums 1, 1, 1 over edges 1, 2, 3, 4 (harmless
    # numbers: such a row is not trusted and gets 0)
    ok = xp.all(parts > 0, axis=-1) & (edges[:, 0] > 0)
    parts = xp.where(ok[:, None], parts, 1.0)
    edges = xp.where(ok[:, None], edges, xp.asarray([1.0, 2.0, 3.0, 4.0], dtype=edges.dtype))
    s1, s2, s3 = parts[:, 0], parts[:, 1], parts[:, 2]
    a, m1, m2, b = edges[:, 0], edges[:, 1], edges[:, 2], edges[:, 3]
    # r from parts 1/2, 2/3 and 1/3, in one batched solve
    r_all, k_all = _solve(
        xp,
        xp.concat([s1, s2, s1]) / xp.concat([s2, s3, s3]),  # (the same three divisions)
        xp.concat([a, m1, a]),
        xp.concat([m1, m2, m1]),
        xp.concat([m1, m2, m2]),
        xp.concat([m2, b, b]),
    )
    r12, r23, r = r_all[:n], r_all[n : 2 * n], r_all[2 * n :]
    r3n = xp.reshape(r_all, (3, n))  # rows: r12, r23, r (a view)
    # standard error of r from the noise of the sums: d ln(ratio) / dr, numerically
    rel = var[:, None] / (parts * parts)  # (n, 3)
    k2 = xp.reshape(xp.maximum(k_all * k_all, 1e-12), (3, n))
    # the noise of each ratio, parts 1+2, 2+3 and 1+3, in one add and one divide (3, n)
    rel_pairs = xp.stack([rel[:, 0], rel[:, 1], rel[:, 0]]) + xp.stack(
        [rel[:, 1], rel[:, 2], rel[:, 2]]
    )
    var_r = rel_pairs / k2
    var12, var23 = var_r[0, :], var_r[1, :]
    sd_r = xp.sqrt(var_r[2, :])
    noise = 4.0 * xp.sqrt(var12 + var23)  # 4 standard errors
    inside = xp.all(r3n > 1.1, axis=0) & xp.all(r3n[:2, :] < 19.9, axis=0)
    trusted = (
        ok & inside & (r >= R_RANGE[0]) & (r <= R_RANGE[1]) & (xp.abs(r12 - r23) <= 0.1 * r + noise)
    )
    total = xp.sum(parts, axis=-1)
    # the counts of the matched power law beyond the window, for r and r -+ sd_r at once:
    # total (l_end / a)^(1 - r) / int_1^(b/a) L^-r / (r - 1) (edges over a: no underflow)
    r3 = xp.where(trusted, r, 3.0)
    rr = xp.stack([r3, xp.maximum(r3 - sd_r, 1.05), r3 + sd_r], axis=-1)
    s = 1.0 - rr
    logs = xp.log(xp.stack([l_end, b], axis=-1) / a[:, None])  # (n, 2)
    counts = -total[:, None] * xp.exp(s * logs[:, :1]) / xp.expm1(s * logs[:, 1:])
    tail = counts[:, 0]
    sd = 0.5 * xp.abs(counts[:, 1] - counts[:, 2])
    tail = xp.where(trusted, tail, 0.0)
    sd = xp.where(trusted, sd, 0.0)
    return tail, trusted, sd


def tails_probe(xp: Any, n: int = 256, seed: int = 11) -> tuple[Any, ...]:
    """The arguments of :func:`tails_twin` for a probe of ``n`` rows (float32): power laws
    ``L^-r`` with r from 1.2 to 18 integrated exactly over fit ranges of 0.3-500 eV (5-60 % of
    the loss range), with and without counting noise, ranges whose parts do not follow one
    power law (a hump, a step) and rows the fit cannot be made for: the first-use check of the
    fused kernel (:func:`eelsgpu.engine.cuda.verified_tails`) and its emulation's test."""
    rng = np.random.default_rng(seed)
    a = np.exp(rng.uniform(np.log(0.3), np.log(500.0), n))
    width = a * rng.uniform(0.05, 1.5, n)
    edges = a[:, None] + width[:, None] * np.array([0.0, 1.0, 2.0, 3.0]) / 3.0
    r = rng.uniform(1.2, 18.0, n)
    scale = 10.0 ** rng.uniform(2.0, 7.0, n)
    s = 1.0 - r[:, None]
    # exact integrals of scale (L / a)^-r over the three parts (in units of a: no underflow)
    x = edges / a[:, None]
    parts = scale[:, None] * a[:, None] * (x[:, 1:] ** s - x[:, :-1] ** s) / s
    kind = np.arange(n) % 8
    noisy = kind >= 4
    var = np.where(noisy, parts.mean(axis=-1) / 30.0, parts.mean(axis=-1) * 1e-8)
    parts = np.where(
        noisy[:, None], parts + rng.normal(size=parts.shape) * np.sqrt(var)[:, None], parts
    )
    parts[kind == 1, 1] *= 1.3  # a hump in the middle part: not one power law
    parts[kind == 2, 2] *= 0.5  # a step down
    l_end = edges[:, 3] * rng.uniform(1.0, 1.05, n)
    # rows the fit cannot be made for: a part not positive (none counted, or noise below
    # zero), or the range starting at or below zero loss
    sub = np.arange(n) % 24  # (kind 3: 3, 11 and 19)
    parts[sub == 3, 0] = 0.0
    parts[sub == 11, 2] = -5.0
    edges[sub == 19] -= edges[sub == 19, :1] + 0.5  # a = -0.5 eV
    f32 = np.float32
    return (
        xp.asarray(parts.astype(f32)),
        xp.asarray(edges.astype(f32)),
        xp.asarray(var.astype(f32)),
        xp.asarray(l_end.astype(f32)),
    )


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
    axis_eV: tuple[float, float] | None = None,
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
    axis_eV : (float, float), optional
        The axis' first energy and channel width (eV), host floats (else read from ``e``).

    Returns
    -------
    (counts, trusted, sd) : arrays, shape (n,)
        The counts beyond the window (0 where the fit does not hold), where the power law holds,
        and the standard deviation of the counts from the noise of r (the exponent moved by one
        standard error either way).
    """
    e0 = float(axis_eV[0]) if axis_eV is not None else float(e[0])
    fit = tail_sums(xp, y, (e0, d, e.shape[0]), c, fit_fraction, stop, y_first, zero_loss_eV)
    return solve_tails(xp, [fit])[0]
