"""Log-ratio relative thickness t/lambda (kk-theory.md eq. 16; Egerton 2011, section 5.1.1).

``t/lambda = ln(I_t / N0)``: N0 the zero-loss intensity (:mod:`eelsgpu.kernels.zlp`) and I_t all
the electrons, including those scattered beyond the end of the recorded window (eq. 16:
``N_inel = N0 (exp(t/lambda) - 1)``). exspy counts only the window and is low by about 1.4 % at
t/lambda = 3 in a 100 eV window (11 % at t/lambda = 2 in a 46 eV window); here the spectrum's
tail is continued by a power law ``A E^-r`` fitted to the end of the window where that fit holds
(:mod:`eelsgpu.kernels.tails`), and where it does not (a window that ends inside the
plural-scattering humps) the counts beyond the window come from the Fourier-log single-scattering
distribution (:mod:`eelsgpu.kernels.fourier_log`), which is exact inside the window whatever lies
beyond it and whose own tail is small.

* :func:`log_ratio_kernel`: the log-ratio map of a block (eq. 16), with the tail options;
* :func:`t_over_lambda_from_ssd`: t/lambda as the SSD's integral over N0 (eqs. 14, 15, 17);
* :func:`log_ratio_with_ssd_tail`: the log-ratio beside a deconvolution, from the SSD it made.

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
from typing import Any

from .._xp import array_namespace, axis_step, moving_average
from .fourier_log import fourier_log_kernel
from .tails import TAIL_FIT_FRACTION, fit_range, tail_counts
from .zlp import SEARCH_EV, zlp_kernel

__all__ = [
    "TAILS",
    "log_ratio_kernel",
    "log_ratio_with_ssd_tail",
    "ssd_t_over_lambda",
    "t_over_lambda_from_ssd",
]

#: How :func:`log_ratio_kernel` counts the electrons scattered beyond the window.
TAILS = ("auto", "power-law", "fourier-log", "none")


def ssd_t_over_lambda(xp, block, energy_eV, zlp, n0, fit_fraction, fwhm_eV=None):
    """t/lambda = (sum of the Fourier-log SSD over the window + its power-law tail) / N0.

    ``block`` and ``zlp`` (n, n_E) counts per channel (non-finite ZLP values count as 0), ``n0``
    (n,) counts; the SSD raw, or reconvolved with a unit-area Gaussian of ``fwhm_eV`` (eV).
    Returns ``(t_over_lambda, tail_trusted, tail_counts, ssd)``
    (:func:`t_over_lambda_from_ssd`).
    """
    zf = xp.where(xp.isfinite(zlp), zlp, xp.zeros_like(zlp))
    if fwhm_eV is None:
        out = fourier_log_kernel(block, energy_eV, zf, output="ssd")
    else:
        out = fourier_log_kernel(
            block, energy_eV, zf, output="reconvolved-gaussian", fwhm_eV=fwhm_eV
        )
    ssd = out["ssd"]
    tl, trusted, tail = t_over_lambda_from_ssd(ssd, energy_eV, n0, fit_fraction=fit_fraction)
    return tl, trusted, tail, ssd


def t_over_lambda_from_ssd(
    ssd: Any,
    energy_eV: Any,
    zlp_intensity: Any,
    *,
    zero_loss_eV: Any = None,
    fit_fraction: float = TAIL_FIT_FRACTION,
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
    n = ssd.shape[0]
    e = xp.astype(energy_eV, ssd.dtype)
    d = axis_step(energy_eV)[1]
    c = xp.zeros((n,), dtype=ssd.dtype) if zero_loss_eV is None else zero_loss_eV
    c = xp.where(xp.isfinite(c), xp.astype(c, ssd.dtype), xp.zeros_like(c, dtype=ssd.dtype))
    finite = xp.where(xp.isfinite(ssd), ssd, xp.zeros_like(ssd))
    # fitted short of the end, where the deconvolution's own tail treatment shows, and on the
    # SSD averaged over 1 eV, which takes out the ringing of an imperfect ZLP model; only the
    # channels of the fit range (and k before them) are smoothed: the first k of the slice are
    # averaged over fewer channels, but they lie before the fit range
    k = max(1, int(round(0.5 / d)))
    base = max(0, fit_range(e, d, fit_fraction, 0.95)[0] - k)
    part = finite[:, base:]
    # the whole SSD counts (ringing about zero loss sums to nothing); the tail is fitted on L > 0
    part = xp.where(e[None, base:] > c[:, None], part, xp.zeros_like(part))
    smooth = moving_average(xp, part, k)
    tail, trusted = tail_counts(xp, smooth, e, c, d, fit_fraction, stop=0.95, y_first=base)
    # the SSD's tail beyond a window that reaches past the plasmon is a small correction (about
    # 0.1 %); a larger "tail" comes from ringing of an imperfect ZLP model, not from physics
    total = xp.sum(finite, axis=-1)
    trusted = trusted & (tail <= 5e-3 * xp.abs(total))
    tail = xp.where(trusted, tail, xp.zeros_like(tail))
    return (total + tail) / zlp_intensity, trusted, tail


def _ssd_missing_counts(xp, y, energy_eV, window, fit_fraction, *, method, **zlp_args):
    """Counts beyond the window, ``N0 exp(t/lambda) - window`` with t/lambda from the Fourier-log
    SSD (its integral over N0, plus its power-law tail). The truncation model (``"threshold"``)
    is no resolution function, so the mirror model stands in for it there.

    The SSD is taken reconvolved with a Gaussian of 0.5 eV (at least 4 channels) FWHM: that keeps
    its integral and takes out the high frequencies where counting noise, divided by a vanishing
    ZLP transform, makes the raw SSD unstable (measured at 2e5 counts, t/lambda 2 to 3, window
    to 46 eV: worst error 2 % against tens of per cent raw; noise-free: 0.2 %)."""
    z = zlp_kernel(y, energy_eV, method="mirror" if method == "threshold" else method, **zlp_args)
    n0 = z["zlp_intensity"]
    fwhm = max(0.5, 4.0 * axis_step(energy_eV)[1])
    # (the NaN rows of the model are zeroed there)
    tl, _, _, _ = ssd_t_over_lambda(xp, y, energy_eV, z["zlp"], n0, fit_fraction, fwhm_eV=fwhm)
    return n0 * xp.exp(xp.astype(tl, y.dtype)) - window


def _on_subset(xp, select, fn, *arrays, **kwargs):
    """``fn(*rows)`` on the rows where ``select`` is True only, scattered back (0 elsewhere).

    The rows are gathered with a stable argsort and ``take`` (no boolean indexing), so a costly
    step runs on the few pixels that need it, not on the whole block."""
    n = select.shape[0]
    k = int(xp.sum(xp.astype(select, xp.int32)))
    order = xp.argsort(xp.astype(~select, xp.int32), stable=True)  # selected rows first
    sel = order[:k]
    out = fn(*[None if a is None else xp.take(a, sel, axis=0) for a in arrays], **kwargs)
    padded = xp.concat([out, xp.zeros((n - k,), dtype=out.dtype)])
    back = xp.take(padded, xp.argsort(order, stable=True))
    return xp.where(select, back, xp.zeros_like(back))


def log_ratio_kernel(
    block: Any,
    energy_eV: Any,
    *,
    method: str = "mirror",
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] = SEARCH_EV,
    tail: str = "auto",
    tail_fit_fraction: float = TAIL_FIT_FRACTION,
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
        How the electrons scattered beyond the window are counted. ``"auto"`` (default): the
        power law where it is trusted, the Fourier-log SSD elsewhere. ``"power-law"``: ``A E^-r``
        (E from the ZLP centre) fitted to the last ``tail_fit_fraction`` of the window and
        integrated to infinity; used where trusted (r between 2 and 15, the same in both halves
        of the fit range), else nothing is added and ``tail_trusted`` is False (a window that
        ends inside plural-scattering humps: use ``"fourier-log"`` or a longer window).
        ``"fourier-log"``: t/lambda is the integral of the single-scattering distribution over
        N0 (:func:`eelsgpu.kernels.fourier_log.fourier_log_kernel`), whose part beyond the window is a
        clean power law even for thick specimens. ``"none"``: the window only (as exspy).
    tail_fit_fraction : float
        Fraction of the loss range, at its end, that the power law is fitted to.

    Returns
    -------
    dict
        ``t_over_lambda``, ``zlp_intensity`` (N0, counts), ``zlp_centre_eV``, ``valid``,
        ``total_intensity`` (I_t with the tail, counts), ``tail_fraction`` (share of I_t beyond the
        window; NaN where no tail could be trusted), ``tail_trusted`` (bool), ``zlp`` (n, n_E).
    """
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    xp = array_namespace(block)
    n, n_e = block.shape
    d = axis_step(energy_eV)[1]
    z = zlp_kernel(
        block,
        energy_eV,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
        return_model=tail == "fourier-log",
    )
    valid = z["valid"]
    n0 = z["zlp_intensity"]
    c = xp.where(valid, z["zlp_centre_eV"], xp.zeros_like(n0))
    y = block  # NaN pixels are invalid already; their NaN stays in their row
    window = xp.sum(y, axis=-1)
    e = xp.astype(energy_eV, y.dtype)
    nan = xp.full_like(n0, math.nan)
    if tail == "none":
        extra = xp.zeros_like(window)
        trusted = xp.ones(n, dtype=xp.bool)
        tl = xp.log(window / n0)
    elif tail in ("power-law", "auto"):
        extra, trusted = tail_counts(xp, y, e, c, d, tail_fit_fraction)
        tl = xp.log((window + extra) / n0)
        redo = valid & ~trusted
        if tail == "auto" and bool(xp.any(redo)):
            # the window ends inside plural scattering: count what lies beyond it from the SSD,
            # on those pixels only
            extra_f = _on_subset(
                xp,
                redo,
                lambda yy, ww, cube: _ssd_missing_counts(
                    xp,
                    yy,
                    energy_eV,
                    ww,
                    tail_fit_fraction,
                    method=method,
                    reference=reference,
                    zlp_cube=cube,
                    search_eV=search_eV,
                ),
                y,
                window,
                zlp_cube,
            )
            extra = xp.where(redo, extra_f, extra)
            tl = xp.log((window + extra) / n0)
            trusted = trusted | (redo & xp.isfinite(extra_f))
    else:
        extra = _ssd_missing_counts(
            xp,
            y,
            energy_eV,
            window,
            tail_fit_fraction,
            method=method,
            reference=reference,
            zlp_cube=zlp_cube,
            search_eV=search_eV,
        )
        trusted = xp.isfinite(extra)
        tl = xp.log((window + extra) / n0)
    total = window + extra
    tail_frac = xp.where(trusted, extra / total, nan)
    return {
        "t_over_lambda": xp.where(valid, tl, nan),
        "zlp_intensity": n0,
        "zlp_centre_eV": z["zlp_centre_eV"],
        "valid": valid,
        "total_intensity": xp.where(valid, total, nan),
        "tail_fraction": xp.where(valid, tail_frac, nan),
        "tail_trusted": valid & trusted,
        "zlp": z["zlp"],
    }


def log_ratio_with_ssd_tail(
    block: Any,
    energy_eV: Any,
    z: dict[str, Any],
    thr: dict[str, Any],
    ssd: Any,
    output: str,
) -> Any:
    """t/lambda = ln(I_t / N0) (Egerton 2011, 5.1.1; kk-theory.md eq. 16) beside the deconvolution.

    The log-ratio of :func:`log_ratio_kernel` (``tail="auto"``), with what that
    computes twice taken from this pass: N0 by truncation at the first minimum after the ZLP (a
    sum of counts, the log-ratio's robust choice), I_t the window's counts plus the power-law
    tail of the spectrum beyond it where that fit holds (:func:`eelsgpu.kernels.tails.tail_counts`;
    the same numbers as ``thickness``), and elsewhere (a window that ends inside the plural
    scattering) ``ln(I_t / I_w) = t/lambda_SSD - ln(I_w / N0_model)`` from the SSD just made: its
    integral with its own power-law tail (:func:`t_over_lambda_from_ssd`) is
    ``ln(I_t / N0_model)``, and the model's N0, which moves with the fitted centre of a mirrored
    or fitted model, cancels from the difference. ``z`` is the deconvolution's ZLP model and
    ``thr`` the truncation model (:func:`eelsgpu.kernels.zlp.zlp_kernel` results)."""
    xp = array_namespace(block)
    valid = z["valid"]
    window = xp.sum(block, axis=-1)
    ok = valid & thr["valid"] & (window > 0)
    n0 = xp.where(ok, thr["zlp_intensity"], 1.0)
    window = xp.where(ok, window, 1.0)
    c = xp.where(ok, thr["zlp_centre_eV"], 0.0)
    extra, trusted = tail_counts(
        xp,
        block,
        xp.astype(energy_eV, block.dtype),
        c,
        axis_step(energy_eV)[1],
        TAIL_FIT_FRACTION,
    )
    log_ratio = xp.log((window + extra) / n0)
    if not bool(xp.all(trusted | ~ok)):
        n0_model = xp.where(valid, z["zlp_intensity"], 1.0)
        # the SSD reconvolved with the ZLP sits where the ZLP sits, the raw one at 0 eV
        zero_loss = z["zlp_centre_eV"] if output == "reconvolved-zlp" else None
        tl_ssd, _, _ = t_over_lambda_from_ssd(ssd, energy_eV, n0_model, zero_loss_eV=zero_loss)
        beyond = tl_ssd - xp.log(window / n0_model)  # ln(I_t / I_w)
        log_ratio = xp.where(trusted, log_ratio, xp.log(window / n0) + beyond)
    return xp.where(ok, log_ratio, float("nan"))
