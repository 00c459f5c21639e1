"""Log-ratio relative thickness t/lambda (kk-theory.md eq. 16; Egerton 2011, section 5.1.1).

``t/lambda = ln(I_t / N0)``: N0 the zero-loss intensity (:mod:`eelsgpu.kernels.zlp`) and I_t all
the electrons, including those scattered beyond the end of the recorded window (eq. 16:
``N_inel = N0 (exp(t/lambda) - 1)``). exspy counts only the window and is low by about 1.4 % at
t/lambda = 3 in a 100 eV window (11 % at t/lambda = 2 in a 46 eV window); here the spectrum's
tail is continued by a power law ``A L^-r`` of the energy loss fitted to the end of the window
where that fit holds (:mod:`eelsgpu.kernels.tails`), and where it does not (a window that ends
inside the plural-scattering humps) the counts beyond the window come from the Fourier-log
single-scattering distribution (:mod:`eelsgpu.kernels.fourier_log`), which is exact inside the
window whatever lies beyond it and whose own tail is small.

The physics a tail must obey: it is never negative and never makes t/lambda lower than the window
alone (a negative Fourier-log tail means the spectrum breaks the Fourier-log model: it is dropped
and flagged), and it counts only where it exceeds its own uncertainty (else the window alone, and
a flag). Energies are losses from each pixel's ZLP centre, wherever the axis puts it.

* :func:`log_ratio_kernel`: the log-ratio maps of a block (eq. 16), with the tail options;
* :func:`log_ratio_maps`: the rules above on a ZLP model (shared with ``deconvolve``'s map);
* :func:`t_over_lambda_from_ssd`: t/lambda as the SSD's integral over N0 (eqs. 14, 15, 17);
* :func:`fourier_log_tail`: ln(I_t / I_w) from a raw SSD, and its uncertainty;
* :func:`ssd_for_tail`: the raw SSD both thickness and deconvolve take that tail from.

Counting statistics (Poisson counts, N0 part of I_t): with the ZLP counted directly
(``"threshold"``), N0 and M = I_t - N0 are independent Poisson counts and

    var(t/lambda) = M / (N0 I_t) = 1/N0 - 1/I_t;

with the mirrored gain side (``"mirror"``, N0 = 2 G, G the ~N0/2 gain-side counts)
``var = 2/N0 - 1/I_t + (2 rho(c) / N0)^2 var(c)``: the mirror's N0 moves by twice the ZLP's
height rho(c) (counts/eV at the centre) per eV the centre moves, so the centre's jitter adds to
it; measured, 3 times the threshold's scatter at N0 = 1e5 with 0.1 eV channels.

Units: counts per channel in, t/lambda dimensionless, intensities in counts, energies in eV.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=1.0,
...                                   n_channels=2048, dispersion_eV=0.1, dtype=np.float64)
>>> out = log_ratio_kernel(sim["signal"].values[None], sim["energy"].values, method="mirror")
>>> bool(abs(float(out["t_over_lambda"][0]) - 1.0) < 2e-3)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .._xp import array_namespace, is_numpy, moving_average
from ._sync import any_rows, host_axis, host_decides
from .fourier_log import _moving_average_numpy, fourier_log_kernel
from .tails import (
    TAIL_FIT_FRACTION,
    TailSums,
    _fourth_difference_squares,
    _noise_segment,
    fit_range,
    solve_tails,
    tail_sums,
)
from .zlp import centre_kernel, channel_variance, zlp_kernel

__all__ = [
    "TAILS",
    "SsdTail",
    "fourier_log_tail",
    "fourier_log_tail_finish",
    "log_ratio_kernel",
    "log_ratio_maps",
    "ssd_for_tail",
    "ssd_tail_sums",
    "t_over_lambda_from_ssd",
]

#: How :func:`log_ratio_kernel` counts the electrons scattered beyond the window.
TAILS = ("auto", "power-law", "fourier-log", "none")


def _ssd_fit(
    xp: Any,
    finite: Any,
    e: Any,
    axis: tuple[float, float, int],
    c: Any,
    zero_loss: float,
    fit_fractions: tuple[float, ...],
) -> list[TailSums]:
    """The power-law fits of the SSDs ``finite`` (n, n_E; finite) for each fit fraction, short of
    the window's end (stop 0.95) and on the SSD averaged over 1 eV: one smoothing shared by
    every fit (the widest fit range's; a narrower fit takes its channels from it)."""
    e0, d, n_e = axis
    # fitted short of the end, where the deconvolution's own tail treatment shows, and on the
    # SSD averaged over 1 eV, which takes out the ringing of an imperfect ZLP model; only the
    # channels of the fit range (and k before them) are smoothed: the first k of the slice are
    # averaged over fewer channels, but they lie before the fit range
    k = max(1, int(round(0.5 / d)))
    bases = [max(0, fit_range(axis, f, 0.95, zero_loss)[0] - k) for f in fit_fractions]
    base = min(bases)
    part = finite[:, base:]
    # the whole SSD counts (ringing about zero loss sums to nothing); the tail is fitted on L > 0
    part = xp.where(e[None, base:] > (0.0 if c is None else c[:, None]), part, 0.0)
    # (NumPy: the same running sums' differences by slices, bitwise moving_average's)
    smooth = _moving_average_numpy(part, k) if is_numpy(xp) else moving_average(xp, part, k)
    # the fits' noise from the squared fourth differences of one segment that covers them all
    # (the narrower fit's channels lie inside the wider's): made once, the same values
    segs = [
        _noise_segment(axis, f, 0.95, zero_loss, b, base + smooth.shape[-1])
        for f, b in zip(fit_fractions, bases, strict=True)
    ]
    a, b_end = min(s[0] for s in segs), max(s[1] for s in segs)
    squares = None
    if b_end - a > 4:
        squares = (_fourth_difference_squares(xp, smooth[:, a - base : b_end - base]), a)
    return [
        tail_sums(
            xp,
            smooth[:, b - base :],
            axis,
            c,
            f,
            stop=0.95,
            y_first=b,
            zero_loss_eV=zero_loss,
            squares=squares,
        )
        for f, b in zip(fit_fractions, bases, strict=True)
    ]


def _ssd_tl(total: Any, n0: Any, fit: tuple[Any, Any, Any], xp: Any) -> tuple[Any, Any, Any]:
    """t/lambda of an SSD from its window sum ``total``, N0 and its solved tail fit: the tail
    counts only where it is below 0.5 % of the window (a larger "tail" comes from ringing of an
    imperfect ZLP model, not from physics)."""
    tail, trusted, _ = fit
    trusted = trusted & (tail <= 5e-3 * xp.abs(total))
    tail = xp.where(trusted, tail, 0.0)
    return (total + tail) / n0, trusted, tail


def t_over_lambda_from_ssd(
    ssd: Any,
    energy_eV: Any,
    zlp_intensity: Any,
    *,
    zero_loss_eV: Any = None,
    fit_fraction: float = TAIL_FIT_FRACTION,
    axis_eV: tuple[float, float] | None = None,
) -> tuple[Any, Any, Any]:
    """Relative thickness from a single-scattering distribution: ``t/lambda = int SSD dE / N0``.

    kk-theory.md eqs. 14, 15 and 17: the SSD of a Poisson-distributed plural scattering
    integrates to ``N_1 = N0 t/lambda``. The integral is the sum over the window plus the
    SSD's power-law tail ``A L^-r`` beyond it (L = E - zero loss; fitted on the SSD averaged over
    1 eV, short of the window's end), trusted only where the fit holds and the tail is below 0.5 %
    of the window's sum (a larger one is ringing of an imperfect ZLP model, not physics).

    Parameters
    ----------
    ssd : array (n, n_E)
        Counts per channel (raw or reconvolved SSD; a reconvolution kernel of unit area keeps
        the integral).
    energy_eV : array (n_E,)
        Uniform energy axis (eV).
    zlp_intensity : array (n,)
        N0 (counts).
    zero_loss_eV : array (n,), optional
        Where zero loss sits on ``energy_eV`` (eV): 0 for a raw SSD (default), the ZLP centre
        for an SSD reconvolved with the ZLP where it sits in the data.
    fit_fraction : float
        Share of the loss range the tail is fitted to.
    axis_eV : (float, float), optional
        The axis' first energy and channel width (eV), host floats (else read from the axis).

    Returns
    -------
    (t_over_lambda, tail_trusted, tail_counts) : arrays (n,)

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-100, 1948) * 0.05
    >>> ssd = np.where(e > 1, np.exp(-0.5 * ((e - 15) / 3) ** 2), 0.0)[None]
    >>> tl, _, _ = t_over_lambda_from_ssd(ssd, e, np.array([ssd.sum() / 0.5]))
    >>> round(float(tl[0]), 3)
    0.5
    """
    xp = array_namespace(ssd)
    n, n_e = ssd.shape
    e0, d = host_axis(energy_eV, axis_eV)
    e = xp.astype(energy_eV, ssd.dtype)
    if zero_loss_eV is None:
        c, zero_loss = xp.zeros((n,), dtype=ssd.dtype), 0.0
    else:
        c = xp.astype(zero_loss_eV, ssd.dtype)
        c = xp.where(xp.isfinite(c), c, 0.0)
        zero_loss = float(xp.max(c)) if n else 0.0  # (a host number: one sync)
    finite = xp.where(xp.isfinite(ssd), ssd, 0.0)
    (fit,) = _ssd_fit(xp, finite, e, (e0, d, n_e), c, zero_loss, (fit_fraction,))
    return _ssd_tl(xp.sum(finite, axis=-1), zlp_intensity, solve_tails(xp, [fit])[0], xp)


class SsdTail(NamedTuple):
    """What :func:`fourier_log_tail` needs of a block's raw SSDs before their power-law fits are
    solved (:func:`ssd_tail_sums`), so that the solve can be shared with other fits:
    ``fits`` the fits to the last ``fit_fraction`` and half of it (:func:`~.tails.tail_sums`),
    ``total`` (n,) the window's SSD sum, ``unknown`` (n,) the spread where neither fit holds,
    ``log_window`` (n,) ln(I_w / N0), ``n0`` (n,) N0, ``eps`` the dtype's rounding (host)."""

    fits: tuple[TailSums, TailSums]
    total: Any
    unknown: Any
    log_window: Any
    n0: Any
    eps: float


def ssd_tail_sums(
    ssd: Any,
    energy_eV: Any,
    zlp_intensity: Any,
    window: Any,
    *,
    fit_fraction: float = TAIL_FIT_FRACTION,
    axis_eV: tuple[float, float] | None = None,
) -> SsdTail:
    """The first half of :func:`fourier_log_tail` (same parameters): everything but the solve
    of the two power-law fits, which :func:`fourier_log_tail_finish` takes solved."""
    xp = array_namespace(ssd)
    n, n_e = ssd.shape
    e0, d = host_axis(energy_eV, axis_eV)
    axis = (e0, d, n_e)
    dt = ssd.dtype
    e = xp.astype(energy_eV, dt, copy=False)
    if host_decides(xp) and dt.kind == "f" and math.isfinite(float(xp.sum(ssd))):
        finite = ssd  # (NumPy, every value finite: one summing pass instead of a copy)
    else:
        finite = xp.where(xp.isfinite(ssd), ssd, 0.0)
    # (zero loss at 0 eV for every row: c None, no array of zeros to subtract)
    fits = _ssd_fit(xp, finite, e, axis, None, 0.0, (fit_fraction, 0.5 * fit_fraction))
    # where neither fit holds: what an E^-3 continuation of the SSD's level where its tail is
    # fitted (85 to 95 % of the loss range: short of the end, which follows the window's
    # extrapolation) would add, with the noise of that level
    i0, i1 = fit_range(axis, 0.1, 0.95)
    end = finite[:, i0:i1]
    level = xp.abs(xp.mean(end, axis=-1)) + xp.std(end, axis=-1) / math.sqrt(max(1, i1 - i0))
    l_end = max(e0 + d * (n_e - 1), d)
    eps = float(np.finfo(np.dtype(str(dt).split(".")[-1])).eps)
    return SsdTail(
        fits=(fits[0], fits[1]),
        total=xp.sum(finite, axis=-1),
        unknown=level * (l_end / (2.0 * d)),
        log_window=xp.log(window / zlp_intensity),
        n0=zlp_intensity,
        eps=10.0 * math.sqrt(n_e) * eps,
    )


def fourier_log_tail_finish(
    xp: Any, prep: SsdTail, solved: Sequence[tuple[Any, Any, Any]]
) -> tuple[Any, Any]:
    """``(beyond, sd)`` of :func:`fourier_log_tail` from :func:`ssd_tail_sums` and its two fits
    solved (:func:`~.tails.solve_tails`)."""
    # both fits at once, on (2, n): the same operations on each
    both = tuple(xp.stack([solved[0][i], solved[1][i]]) for i in (0, 1))
    tl2, fits2, tail2 = _ssd_tl(prep.total, prep.n0, (*both, None), xp)
    tl, fits, tail = tl2[0, :], fits2[0, :], tail2[0, :]
    fits_half, tail_half = fits2[1, :], tail2[1, :]
    beyond = tl - prep.log_window
    # the two fits' difference where both hold; half the tail where only one does; where
    # neither holds, the E^-3 continuation (ssd_tail_sums)
    spread = xp.where(
        fits & fits_half,
        xp.abs(tail - tail_half),
        xp.where(fits | fits_half, 0.5 * xp.abs(tail + tail_half), prep.unknown),
    )
    # and the rounding of the sums in the data's precision (sqrt(n) ulps of t/lambda, x10)
    rounding = prep.eps * xp.maximum(xp.abs(tl), 1.0)
    sd = (spread + 0.1 * xp.abs(tail)) / prep.n0 + rounding
    return beyond, sd


def fourier_log_tail(
    ssd: Any,
    energy_eV: Any,
    zlp_intensity: Any,
    window: Any,
    *,
    fit_fraction: float = TAIL_FIT_FRACTION,
    axis_eV: tuple[float, float] | None = None,
) -> tuple[Any, Any]:
    """``ln(I_t / I_w)`` from a raw SSD: what lies beyond the window, as the Fourier-log sees it.

    With t/lambda_SSD the SSD's integral over N0 (its window and its own power-law tail,
    :func:`t_over_lambda_from_ssd`; eqs. 14, 15, 17) and the window's log-ratio
    ``ln(I_w / N0)`` (eq. 16), ``ln(I_t / I_w) = t/lambda_SSD - ln(I_w / N0)``: the plural
    scattering beyond the window is what the SSD inside it predicts. N0 cancels from the
    difference to first order (the SSD's integral is ``N0 ln(I/N0)``, eq. 22), so a ZLP model's
    error in N0 does not bias it.

    Its uncertainty is the SSD's own continuation: the difference between the SSD's power-law
    tails fitted to the last ``fit_fraction`` and the last half of that (half the tail where only
    one of the two fits holds; where neither holds, the counts an E^-3 continuation of the SSD's
    level at 85 to 95 % of the loss range, and its noise, would add), plus a tenth of the tail itself
    (a power law of the SSD is a model), plus the rounding of the sums in the data's precision.

    The work is :func:`ssd_tail_sums`, one :func:`~.tails.solve_tails` of both fits, and
    :func:`fourier_log_tail_finish`; a block kernel calls the three itself to solve these fits
    with its other power-law fits in one batch.

    Parameters
    ----------
    ssd : array (n, n_E)
        Raw SSDs in counts per channel, zero loss at 0 eV of ``energy_eV`` (eV).
    zlp_intensity, window : array (n,)
        N0 and the window's counts I_w.
    axis_eV : (float, float), optional
        The axis' first energy and channel width (eV), host floats (else read from the axis).

    Returns
    -------
    (beyond, sd) : arrays (n,)
        ``ln(I_t / I_w)`` (negative where the SSD says less than the window holds: the spectrum
        breaks the Fourier-log model) and its standard deviation.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-100, 1948) * 0.05
    >>> ssd = np.where(e > 1, np.exp(-0.5 * ((e - 15) / 3) ** 2), 0.0)[None]
    >>> n0 = np.array([ssd.sum() / 0.5])  # t/lambda = 0.5 inside the window
    >>> beyond, sd = fourier_log_tail(ssd, e, n0, n0 * np.exp(0.49))
    >>> round(float(beyond[0]), 3), bool(sd[0] < 1e-3)
    (0.01, True)
    """
    xp = array_namespace(ssd)
    prep = ssd_tail_sums(
        ssd, energy_eV, zlp_intensity, window, fit_fraction=fit_fraction, axis_eV=axis_eV
    )
    return fourier_log_tail_finish(xp, prep, solve_tails(xp, list(prep.fits)))


def _on_subset(xp, select, fn, *arrays):
    """``fn(*rows)`` (a dict of (k,) arrays) on the rows where ``select`` is True only, scattered
    back (0 elsewhere).

    The rows are gathered with a stable argsort and ``take`` (no boolean indexing), so a costly
    step runs on the few pixels that need it, not on the whole block. On a device (where the
    number of rows is a sync, and a block's operations must not depend on its data) ``fn`` runs
    on every row instead."""
    if not host_decides(xp):
        return {key: xp.where(select, v, 0.0) for key, v in fn(*arrays).items()}
    n = select.shape[0]
    k = int(xp.sum(xp.astype(select, xp.int32)))
    order = xp.argsort(xp.astype(~select, xp.int32), stable=True)  # selected rows first
    sel = order[:k]
    out = fn(*[None if a is None else xp.take(a, sel, axis=0) for a in arrays])
    inverse = xp.argsort(order, stable=True)
    back = {}
    for key, value in out.items():
        padded = xp.concat([value, xp.zeros((n - k,), dtype=value.dtype)])
        v = xp.take(padded, inverse)
        back[key] = xp.where(select, v, 0.0)
    return back


def _t_over_lambda_sd(
    xp: Any, y: Any, e: Any, c: Any, w: Any, n0: Any, window: Any, noise: Any = None
) -> Any:
    """The standard deviation of the window's ln(I_w / N0) from the channels' measured noise
    (:func:`eelsgpu.kernels.zlp.channel_variance`, with ``noise`` when already measured): with
    N0 the counts within 3 FWHM of the ZLP and M the rest,
    ``var = var(M)/I^2 + var(N0) (1/N0 - 1/I)^2`` (counting statistics of two independent sums,
    in the data's own units)."""
    var = channel_variance(xp, y, e, c, w, noise)
    x = xp.abs(e[None, :] - c[:, None]) / w[:, None]
    var_n0 = xp.sum(xp.where(x <= 3.0, var, 0.0), axis=-1)
    var_m = xp.sum(var, axis=-1) - var_n0
    return xp.sqrt(var_m / window**2 + var_n0 * (1.0 / n0 - 1.0 / window) ** 2)


def log_ratio_maps(
    xp: Any,
    block: Any,
    energy_eV: Any,
    z: dict[str, Any],
    *,
    tail: str = "auto",
    fit_fraction: float = TAIL_FIT_FRACTION,
    fourier_log: Any = None,
    ssd_tail: tuple[SsdTail, Any] | None = None,
    noise: Any = None,
    axis_eV: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """t/lambda = ln(I_t / N0) (eq. 16) with N0 of the ZLP model ``z`` and the tail's rules.

    The one implementation behind :func:`log_ratio_kernel` (``thickness``) and the map of
    ``deconvolve``, so the same ``zlp=`` gives the same t/lambda in both. ``z`` is
    :func:`eelsgpu.kernels.zlp.zlp_kernel`'s result. The raw SSD's tail comes either from
    ``fourier_log(select)``, which returns, for the rows where ``select`` (n,) holds,
    ``{"beyond", "sd", "negative_lobe"}`` from their raw SSD (:func:`fourier_log_tail`), each
    (n,) (0 elsewhere): the SSD is made only for the pixels whose power law fails (NumPy); or
    from ``ssd_tail`` = (:func:`ssd_tail_sums` of every row's raw SSD, its negative lobe (n,)),
    whose fits are then solved in one batch with the spectrum's own (where the SSD is made for
    every pixel anyway: ``deconvolve``, or a device). ``noise`` the channels' noise when
    already measured (:func:`eelsgpu.kernels.zlp.channel_noise`); ``axis_eV`` the axis' first
    energy and channel width (eV, host floats).

    The counts beyond the window (``tail``): ``"none"`` nothing; ``"power-law"`` the spectrum's
    power law (:func:`eelsgpu.kernels.tails.tail_counts`) where its fit holds and it exceeds its
    own standard deviation; ``"fourier-log"`` ``I_w (exp(beyond) - 1)`` from the SSD where
    ``beyond`` is positive and exceeds its standard deviation; ``"auto"`` the power law where it
    is trusted, else the Fourier-log. A tail is never negative and never makes t/lambda lower
    than the window alone: a Fourier-log tail below minus its own uncertainty is dropped
    (NEGATIVE_TAIL), one within its uncertainty too (TAIL_UNTRUSTED); t/lambda then counts the
    window only.

    t/lambda below 0 is unphysical: within 3 standard deviations of its counting noise
    (:func:`_t_over_lambda_sd`, doubled for a model made from the gain side) it is a vacuum
    pixel's 0 and is returned as 0; below that the ZLP model fails and it is kept, with
    ``negative_t_over_lambda`` (the NEGATIVE_T_OVER_LAMBDA bit, fatal).

    Returns
    -------
    dict of (n,) arrays
        ``t_over_lambda``, ``t_over_lambda_sd``, ``negative_t_over_lambda``,
        ``total_intensity``, ``tail_fraction`` (NaN where no tail was added), ``tail_trusted``,
        ``negative_tail``, ``tail_untrusted``, ``negative_lobe`` (the SSD's deepest negative
        lobe over its peak where an SSD was made, else 0), ``ssd_made``, ``fourier_log_used``
        (the tail counted came from the SSD).
    """
    n = block.shape[0]
    valid = z["valid"]
    n0 = xp.where(valid, z["zlp_intensity"], 1.0)
    c = xp.where(valid, z["zlp_centre_eV"], 0.0)
    if host_decides(xp) and block.dtype.kind == "f" and bool(xp.all(valid)):
        y = block  # (NumPy, every pixel valid: no copy)
    else:
        y = xp.where(valid[:, None], block, 0.0)
    window = xp.sum(y, axis=-1)
    window = xp.where(valid & (window > 0), window, 1.0)
    e = xp.astype(energy_eV, block.dtype, copy=False)
    e0, d = host_axis(energy_eV, axis_eV)
    no = xp.zeros((n,), dtype=xp.bool)
    zero = xp.zeros((n,), dtype=block.dtype)
    extra, trusted, negative, untrusted, lobe, made = zero, no, no, no, zero, no
    power_law = tail in ("power-law", "auto")
    from_ssd = tail in ("fourier-log", "auto")
    fits = [tail_sums(xp, y, (e0, d, e.shape[0]), c, fit_fraction)] if power_law else []
    fl = None
    if from_ssd and ssd_tail is not None:  # every fit in one batched solve
        solved = solve_tails(xp, fits + list(ssd_tail[0].fits))
        beyond, sd = fourier_log_tail_finish(xp, ssd_tail[0], solved[-2:])
        fl = {"beyond": beyond, "sd": sd, "negative_lobe": ssd_tail[1]}
    elif fits:
        solved = solve_tails(xp, fits)
    if power_law:
        pl, fits_ok, sd = solved[0]
        trusted = valid & fits_ok & (pl > sd)
        extra = xp.where(trusted, pl, zero)
        untrusted = valid & ~trusted
    if from_ssd:
        redo = valid & ~trusted
        if fl is not None or any_rows(xp, redo):
            fl = fourier_log(redo) if fl is None else fl
            beyond, sd = fl["beyond"], fl["sd"]
            # a significant negative tail: the spectrum breaks the Fourier-log model
            negative = redo & (beyond < -sd)
            good = redo & (beyond > 0) & (beyond > sd)
            extra = xp.where(good, window * xp.expm1(xp.where(good, beyond, zero)), extra)
            trusted = trusted | good
            untrusted = redo & ~(good | negative)
            lobe = xp.where(redo, fl["negative_lobe"], zero)
            made = redo
    total = window + extra
    tl = xp.log(total / n0)
    # t/lambda < 0 is unphysical: within 3 standard deviations of its noise it is a vacuum
    # pixel's 0, below that the ZLP model fails (the NEGATIVE_T_OVER_LAMBDA bit)
    sd_tl = _t_over_lambda_sd(xp, y, e, c, xp.where(valid, z["fwhm_eV"], 1.0), n0, window, noise)
    if z.get("method", "threshold") != "threshold":
        sd_tl = 2.0 * sd_tl  # a model made from the gain side: its N0 noise doubles
    negative_tl = valid & (tl < -3.0 * sd_tl)
    tl = xp.where(negative_tl, tl, xp.maximum(tl, 0.0))
    # the maps NaN where not valid in one where over their stack (columns: views); the tail's
    # share where it was added too
    kept = valid & trusted
    masked = xp.where(
        xp.stack([valid, valid, valid, kept], axis=-1),
        xp.stack([tl, sd_tl, total, extra / total], axis=-1),
        math.nan,
    )
    return {
        "t_over_lambda": masked[:, 0],
        "negative_t_over_lambda": negative_tl,
        "t_over_lambda_sd": masked[:, 1],
        "total_intensity": masked[:, 2],
        "tail_fraction": masked[:, 3],
        "tail_trusted": kept,
        "negative_tail": valid & negative,
        "tail_untrusted": valid & untrusted,
        "negative_lobe": lobe,
        "ssd_made": made,
        "fourier_log_used": made & trusted,
    }


def log_ratio_kernel(
    block: Any,
    energy_eV: Any,
    *,
    method: str = "threshold",
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] | None = None,
    tail: str = "auto",
    tail_fit_fraction: float = TAIL_FIT_FRACTION,
    centre: dict[str, Any] | None = None,
    zero_loss_eV: float = 0.0,
) -> dict[str, Any]:
    """Log-ratio relative thickness ``t/lambda = ln(I_t / N0)`` (kk-theory.md eq. 16; Egerton 2011,
    eq. 5.11).

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel.
    energy_eV : array, shape (n_E,)
        Uniform, increasing energy axis (eV).
    method, reference, zlp_cube, search_eV
        The zero-loss model, see :func:`eelsgpu.kernels.zlp.zlp_kernel`.
    tail : {"auto", "power-law", "fourier-log", "none"}
        How the electrons scattered beyond the window are counted (:func:`log_ratio_maps`).
        ``"auto"`` (default): the power law ``A L^-r`` of the spectrum (L the energy loss)
        fitted to the last ``tail_fit_fraction`` of the window where it holds and exceeds its
        own uncertainty, the Fourier-log SSD elsewhere (its part beyond the window is a clean
        power law even for thick specimens). ``"none"``: the window only (as exspy).
    tail_fit_fraction : float
        Fraction of the loss range, at its end, that the power law is fitted to.
    centre : dict, optional
        :func:`eelsgpu.kernels.zlp.centre_kernel` of this block, when already made.
    zero_loss_eV : float
        Where zero loss sits on the axis for the block (eV; 0 for a calibrated axis): the
        origin the Fourier-log SSD is aligned to (its raw SSD has zero loss there).

    Returns
    -------
    dict
        The maps of :func:`log_ratio_maps`, and ``zlp_intensity`` (N0, counts),
        ``zlp_centre_eV``, ``valid`` (a usable ZLP), ``zlp`` (n, n_E; None unless the
        Fourier-log tail needed it), ``zlp_fwhm_eV``, ``axis_offset``.
    """
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    xp = array_namespace(block)
    cen = centre_kernel(block, energy_eV, search_eV=search_eV) if centre is None else centre
    z = zlp_kernel(
        block,
        energy_eV,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
        return_model=tail in ("auto", "fourier-log"),
        centre=cen,
    )

    def fourier_log(select):
        def run(y, model, c, w):
            ssd = ssd_for_tail(xp, y, energy_eV - zero_loss_eV, model, c - zero_loss_eV, w, method)
            beyond, sd = fourier_log_tail(
                ssd["ssd"],
                energy_eV - zero_loss_eV,
                ssd["zlp_intensity"],
                xp.sum(y, axis=-1),
                fit_fraction=tail_fit_fraction,
            )
            return {"beyond": beyond, "sd": sd, "negative_lobe": ssd["negative_lobe"]}

        return _on_subset(xp, select, run, block, z["zlp"], z["zlp_centre_eV"], z["fwhm_eV"])

    out = log_ratio_maps(
        xp, block, energy_eV, z, tail=tail, fit_fraction=tail_fit_fraction, fourier_log=fourier_log
    )
    out.update(
        zlp_intensity=z["zlp_intensity"],
        zlp_centre_eV=z["zlp_centre_eV"],
        zlp_fwhm_eV=z["fwhm_eV"],
        valid=z["valid"],
        axis_offset=z["axis_offset"],
        zlp=z["zlp"],
    )
    return out


def ssd_for_tail(
    xp: Any,
    y: Any,
    energy_eV: Any,
    model: Any,
    c: Any,
    w: Any,
    method: str,
    axis_eV: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The raw SSD the log-ratio's Fourier-log tail is made from: the measured-error Fourier-log
    (:func:`eelsgpu.kernels.fourier_log.fourier_log_kernel`, ``output="ssd"``, its metrics) of the
    spectra ``y`` with their ZLP ``model`` (the truncation's channels are the data: tied; a
    per-pixel ``"cube"`` made elsewhere is taken as exact, every other model's misfit on the gain
    side counts as error), on the axis ``energy_eV`` whose 0 eV is zero loss; ``c``, ``w`` the
    ZLP centres and FWHM (eV).
    ``deconvolve`` makes its raw SSD with exactly this call, so both see the same tail."""
    zf = xp.where(xp.isfinite(model), model, 0.0)
    tied = ((zf == y) & (zf != 0)) if method == "threshold" else None
    return fourier_log_kernel(
        y,
        energy_eV,
        zf,
        output="ssd",
        zlp_centre_eV=c,
        zlp_fwhm_eV=w,
        misfit=method != "cube",
        tied=tied,
        metrics=True,
        axis_eV=axis_eV,
    )
