"""Fourier-log deconvolution kernels (kk-theory.md eqs. 18-25): the single-scattering distribution.

The measured spectrum is the zero-loss peak convolved with the Poisson sum of the multiple
scatterings (kk-theory.md eq. 18); its Fourier transform is ``J~ = Z~ exp(S~/N0)``, so

    S(E) = N0 F^-1[ ln( F[J] / F[Z] ) ]                                   (eq. 22)

with ``Z = N0 R`` the zero-loss peak in counts (Egerton 2011, section 4.1.2). This module
(:func:`fourier_log_kernel`) evaluates eq. 22 on real, zero-padded discrete transforms (eqs. 23-24) and puts the energy origin
where eq. 25 says: the inverse transform returns the SSD in *kernel coordinates* (index 0 is zero
loss); a phase factor ``exp(-2 pi i k a / P)`` (``a`` = the channel of 0 eV, possibly fractional;
a plain roll when it is whole) maps it onto the spectrum's own energy axis.

What makes it exact where the textbook recipe is not:

* the complex log in split form, ``ln|J~/Z~| + i arg(J~/Z~)``, with the phase **unwrapped** along
  frequency (``arg`` can pass +-pi many times for t/lambda above about 2; the principal-branch
  log then adds 2 pi jumps that turn into large oscillations of the SSD);
* the spectrum's tail beyond the window is continued by a power law (or an exponential) fitted
  to the last channels and brought smoothly to zero with a half-cosine, and the transform is
  padded to a fast length of at least twice the window, so the periodic wrap of the discrete
  transform leaves no step and no overlap;
* J and Z are multiplied by an exponential weight ``exp(-alpha E)`` before the transforms and the
  SSD by ``exp(+alpha E)`` after: the weighted functions obey eq. 18 exactly (a convolution of
  weighted functions is the weighted convolution), with a thinner effective t/lambda, so the log
  is well conditioned and what lies beyond the window barely matters; alpha grows with the
  pixel's t/lambda (a weight at the window's end of 1/10 at t/lambda = 1, 1/100 at 4);
* no taper of the low-energy end: a window that starts just below the ZLP (-1 eV) is fine;
* the raw SSD keeps the frequencies where the ZLP's transform stands above 1e-3 of its peak and
  rolls off smoothly above it (a Wiener-like weight), so noise divided by a vanishing ``Z~`` does
  not flood it (the resolution limit of any deconvolution); the phase is unwrapped only where
  ``Z~`` stands above the rounding floor of the data's precision.

Accuracy (noise-free synthetic Drude and Lorentz spectra, 2048 channels of 0.05 eV from -5 eV,
true ZLP as R, t/lambda 0.1 to 4): the raw SSD equals the true one to 6e-4 of its peak in float64
and 6e-4 in float32 but in the last 3 eV of the window, which depend on the extrapolated tail; the
SSD reconvolved with R to 7e-4 over the whole window. Speed: about 65 us per spectrum and core on
NumPy for 2048 channels (three float32 FFTs of 4096 points take about 20 of them; the rest is about
35 element-wise passes over the transforms: see benchmarks/_bench_fourier_log.py).

The core ``ln(J~/Z~)`` (:func:`log_spectrum_ratio`) has three forms with the same arithmetic: the
array-API twin (:func:`log_spectrum_ratio_twin`, every namespace), a NumPy fast path with fewer
passes over memory (:func:`log_spectrum_ratio_numpy`), and the fused CUDA kernel
``kernels/fourier_log.cu``, which the engine registers in :mod:`eelsgpu.kernels._fused`
(:mod:`eelsgpu.engine.cuda`) and which is used for complex64 CuPy arrays when it passed its
first-use check. The user-facing :func:`eelsgpu.deconvolve` is in
:mod:`eelsgpu.analysis.deconvolution`.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=3.0,
...                                   dtype=np.float64)
>>> e = sim["energy"].values
>>> zlp = (sim["true_zlp_shape"] * sim["true_zlp_intensity"]).values
>>> out = fourier_log_kernel(sim["signal"].values[None], e, zlp[None])
>>> ssd, true = out["ssd"][0], sim["true_ssd"].values
>>> inside = e < e[-1] - 3.0  # the last eV depend on the tail's extrapolation
>>> bool(np.abs(ssd - true)[inside].max() < 1e-3 * true.max())
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._xp import (
    array_namespace,
    axis_step,
    complex_from,
    fast_length,
    fft_module,
    is_numpy,
    itemsize,
    tiny,
)
from ..errors import InputError
from . import _fused

__all__ = [
    "EXTRAPOLATIONS",
    "FUSED_NAME",
    "OUTPUTS",
    "PHASE_FLOOR",
    "ROLLOFF",
    "SNR2",
    "fourier_log_kernel",
    "log_spectrum_ratio",
    "log_spectrum_ratio_numpy",
    "log_spectrum_ratio_twin",
    "noise_power",
    "probe_spectra",
    "tail_continuation",
]

OUTPUTS = ("ssd", "reconvolved-zlp", "reconvolved-gaussian", "residual")
EXTRAPOLATIONS = ("power-law", "exponential", "none")

# Relative floor |Z~(nu)| / Z~(0) below which the phase is not unwrapped: a few times the relative
# rounding error of a transform in the data's precision (by itemsize).
PHASE_FLOOR = {4: 3e-6, 8: 1e-11}
# |Z~(nu)| / Z~(0) where the raw SSD's frequencies are rolled off (resolution limit)
ROLLOFF = 1e-3
# |J~|^2 / (noise power) above which the phase is unwrapped (signal-to-noise 2)
SNR2 = 4.0
# -ln(exponential weight at the window's end) per unit t/lambda: 1 at 0, 1/10 at t/lambda = 1,
# 1/100 at t/lambda = 4 (more weight conditions thick areas and short windows better; less keeps
# float32 rounding, which the weight scales up at the end, below 1e-3 of thin areas' SSD)
_DAMPING_THIN = math.log(10.0)
_DAMPING_PER_TAU = math.log(10.0) / 3.0
_ROW_BYTES = 1 << 20  # rows per pass: about 1 MiB per temporary (stays in the L2/L3 cache)

#: The name under which the engine registers the fused CUDA form of :func:`log_spectrum_ratio`
#: (kernels/fourier_log.cu) in :mod:`eelsgpu.kernels._fused`.
FUSED_NAME = "fourier_log_ratio"


def tail_continuation(
    block: Any,
    e_end_eV: float,
    dispersion_eV: float,
    plan: dict[str, Any],
    extrapolation: str,
    alpha: Any,
) -> Any:
    """Continuation of each spectrum beyond the window, ending at zero, times ``exp(-alpha E)``.

    Power law ``A E^-r`` (Egerton 2011, section 4.2.1) or exponential ``A exp(-E/tau)``, both
    with the value and slope of a least-squares line through the last 1/128th of the window (at
    least 8 channels), so the join is smooth to first order, times a half-cosine from 1 to 0 so
    that the periodic transform sees no step. ``plan["log_taper"]``, ``plan["tail_log"]``
    (ln(E/E_end)) and ``plan["e_ext"]`` (E, eV) are shared by all pixels; ``alpha`` (n, 1) is
    each pixel's weight (1/eV). Amplitude, shape, taper and weight are one exponential.

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel.
    e_end_eV, dispersion_eV : float
        The energy of the window's last channel and the channel width (eV).
    plan : dict
        The shared vectors of :func:`fourier_log_kernel`'s plan (see above).
    extrapolation : {"power-law", "exponential", "none"}
    alpha : array, shape (n, 1)
        The exponential weight (1/eV).

    Returns
    -------
    array, shape (n, P - n_E)
        The weighted continuation in counts per channel (zeros for ``"none"``).
    """
    xp = array_namespace(block)
    dt = block.dtype
    n_e = block.shape[-1]
    if extrapolation == "none":
        return xp.zeros((block.shape[0], plan["e_ext"].shape[0]), dtype=dt)
    w = min(max(8, n_e // 128), n_e)
    # least-squares line through the last w channels: value v and slope g at the last channel
    x = xp.arange(w, dtype=dt) - (w - 1) / 2.0
    seg = block[:, n_e - w :]
    mean = xp.mean(seg, axis=-1)
    g = xp.sum(seg * x[None, :], axis=-1) / (float(w * (w * w - 1)) / 12.0) / dispersion_eV
    v = mean + g * (dispersion_eV * (w - 1) / 2.0)
    ok = v > 0
    # ln v (-inf where the data end at or below 0: no tail)
    log_v = xp.where(ok, xp.log(xp.where(ok, v, 1.0)), -math.inf)
    # logarithmic slope -d ln J / dE at the window's end (>= 0: the tail only falls)
    # (minimum/maximum, not clip: array-api-compat's clip costs ~50 us a call)
    rate = xp.minimum(xp.maximum(-g / xp.where(ok, v, 1.0), 0.0), 50.0 / dispersion_eV)
    if extrapolation == "power-law" and e_end_eV > 0:
        # A (E / E_end)^-r with r = rate E_end: same value and slope as the data at the end
        coef, shape = -(rate * e_end_eV), plan["tail_log"]
    else:
        coef, shape = -rate, plan["tail_de"]
    # the exponent  ln v - r shape(E) - alpha E + ln taper(E)  of every row and sample, as one
    # (n, 4) @ (4, n_ext) product (one pass instead of four)
    rows = xp.stack([log_v, coef, -alpha[:, 0], xp.ones_like(log_v)], axis=1)
    basis = xp.stack([xp.ones_like(shape), shape, plan["e_ext"], plan["log_taper"]], axis=0)
    return xp.exp(rows @ basis)


def fourier_log_kernel(
    block: Any,
    energy_eV: Any,
    zlp: Any,
    *,
    output: str = "ssd",
    fwhm_eV: float | None = None,
    extrapolation: str = "power-law",
    pad_to: int | None = None,
    unwrap: bool = True,
    rolloff: float | None = None,
    damping: float | None = None,
) -> dict[str, Any]:
    """Fourier-log deconvolution of a block of spectra (kk-theory.md eqs. 22 and 25).

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel on a uniform, increasing energy axis (float32 or float64;
        the work is done in that precision).
    energy_eV : array, shape (n_E,)
        The energy axis in eV; the channel at 0 eV (possibly between channels) is zero loss.
    zlp : array, shape (n, n_E)
        The zero-loss peak of each spectrum in counts, ``I_ZLP = N0 R`` (eq. 14), on the same
        grid, where it sits in the data (e.g. ``zlp`` of :func:`eelsgpu.kernels.zlp.zlp_kernel`).
    output : {"ssd", "reconvolved-zlp", "reconvolved-gaussian", "residual"}
        ``"ssd"``: the SSD itself, counts per channel on the input's axis (0 eV = zero loss),
        integral N0 t/lambda. ``"reconvolved-zlp"``: the SSD convolved with R where the ZLP sits
        in the data (Egerton's choice for noisy data; no noise amplification).
        ``"reconvolved-gaussian"``: the SSD convolved with a unit-area Gaussian of ``fwhm_eV``.
        ``"residual"``: data - ZLP - (SSD reconvolved with R), the plural scattering (diagnostic).
    fwhm_eV : float
        FWHM of the Gaussian in eV (``"reconvolved-gaussian"`` only).
    extrapolation : {"power-law", "exponential", "none"}
        How the tail beyond the window is continued to zero before the transform.
    pad_to : int, optional
        Transform length (>= 2 n_E); default: the next 5-smooth length >= 2 n_E.
    unwrap : bool
        Unwrap the phase (default). ``False`` gives the principal-branch log, wrong for thick
        areas; it exists to show that.
    rolloff : float, optional
        Relative level of |Z~| (to Z~(0)) where the raw SSD's frequencies are rolled off, for
        ``"ssd"`` and ``"reconvolved-gaussian"`` (default 1e-3).
    damping : float, optional
        The exponential weight at the window's end, the same for every pixel (0 < damping <= 1;
        1 is no weight). Default: per pixel from its t/lambda (1/10 at t/lambda = 1, 1/100 at 4).

    Returns
    -------
    dict
        ``ssd`` (n, n_E): the requested output in counts per channel; ``zlp_intensity`` (n,):
        N0 = sum of ``zlp`` (counts); ``t_over_lambda`` (n,): ln(sum J / N0) over the window
        (the log-ratio; no tail); ``valid`` (n,): False where N0 <= 0, the data are not
        finite, or the log is undefined (these get NaN).

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-50, 974) * 0.1
    >>> z = np.exp(-0.5 * (e / 0.2) ** 2); z = 1e4 * z / z.sum()
    >>> s = np.where(e > 0, np.exp(-0.5 * ((e - 15) / 2) ** 2), 0.0); s *= 0.3 * 1e4 / s.sum()
    >>> j = z + np.convolve(z, s / 1e4)[50:1074]  # thin sample: single scattering only ...
    >>> out = fourier_log_kernel(j[None], e, z[None])
    >>> round(float(out["t_over_lambda"][0]), 2)  # ... ln(1 + 0.3) exactly
    0.26
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    if extrapolation not in EXTRAPOLATIONS:
        raise ValueError(f"extrapolation must be one of {EXTRAPOLATIONS}, not {extrapolation!r}")
    if output == "reconvolved-gaussian" and not (fwhm_eV is not None and fwhm_eV > 0):
        raise ValueError("output='reconvolved-gaussian' needs fwhm_eV > 0 (eV)")
    xp = array_namespace(block)
    dt = block.dtype
    n, n_e = block.shape
    if tuple(zlp.shape) != (n, n_e):
        raise InputError(f"zlp has shape {tuple(zlp.shape)}; the block is {(n, n_e)}")
    offset, disp = axis_step(energy_eV, uniform=True, what="the Fourier-log deconvolution")
    p = int(pad_to) if pad_to is not None else fast_length(2 * n_e)
    if p < n_e + 2:
        raise ValueError(f"pad_to={p} is too short for {n_e} channels")
    if damping is not None and not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], not {damping}")
    plan = _plan(xp, dt, energy_eV, offset, disp, n_e, p, output, fwhm_eV, damping, rolloff)
    zlp = xp.astype(zlp, dt)
    # Rows are done a few at a time so that the ~20 temporaries of a row stay in the cache.
    rows = max(1, _ROW_BYTES // (p * itemsize(dt)))
    parts = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        parts.append(
            _rows(xp, block[start:stop, :], zlp[start:stop, :], plan, output, extrapolation, unwrap)
        )
    if len(parts) == 1:
        return parts[0]
    return {key: xp.concat([part[key] for part in parts], axis=0) for key in parts[0]}


def _plan(
    xp: Any,
    dt: Any,
    energy_eV: Any,
    offset: float,
    disp: float,
    n_e: int,
    p: int,
    output: str,
    fwhm_eV: float | None,
    damping: float | None,
    rolloff: float | None,
) -> dict[str, Any]:
    """The vectors every pixel shares: weights, tail shape, Gaussian, origin phase."""
    n_ext = p - n_e
    e_end = offset + disp * (n_e - 1)
    e_win = xp.astype(energy_eV[:n_e], xp.float64)
    i = xp.arange(1, n_ext + 1, dtype=xp.float64)
    e_ext = e_end + disp * i
    taper = 0.5 + 0.5 * xp.cos(i * (math.pi / (n_ext + 1)))
    k = xp.arange(p // 2 + 1, dtype=xp.float64)
    plan: dict[str, Any] = {
        "p": p,
        "n_e": n_e,
        "disp": disp,
        "e_end": e_end,
        "e_span": max(e_end, disp),
        "damping": damping,
        "e_win": xp.astype(e_win, dt)[None, :],
        "e_ext": xp.astype(e_ext, dt),
        "log_taper": xp.astype(xp.log(taper), dt),
        "tail_de": xp.astype(disp * i, dt),
        "tail_log": xp.astype(xp.log1p((disp / e_end) * i), dt) if e_end > 0 else None,
        "gate": PHASE_FLOOR[itemsize(dt)] ** 2,
        "rolloff": (rolloff if rolloff is not None else ROLLOFF) ** 2,
        "tiny": tiny(str(dt)),
        "sigma": None,
    }
    if output == "reconvolved-gaussian":
        plan["sigma"] = fwhm_eV / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        plan["nu"] = xp.astype(k / (p * disp), dt)[None, :]
    filt_r = filt_i = None
    origin = -offset / disp  # channel of 0 eV: where zero loss goes (eq. 25)
    whole = round(origin)
    if output in ("ssd", "reconvolved-gaussian") and abs(origin - whole) > 1e-6:
        # sub-channel origin: the phase factor of eq. 25, exp(-2 pi i k a / P)
        theta = (-2.0 * math.pi * origin / p) * k
        filt_r, filt_i = xp.cos(theta), xp.sin(theta)
        whole = 0
    plan["origin"] = int(whole)
    plan["filter"] = (
        None if filt_r is None else (xp.astype(filt_r, dt)[None, :], xp.astype(filt_i, dt)[None, :])
    )
    return plan


def _rows(
    xp: Any,
    block: Any,
    zlp: Any,
    plan: dict[str, Any],
    output: str,
    extrapolation: str,
    unwrap: bool,
) -> dict[str, Any]:
    """eq. 22 on a few rows (see :func:`fourier_log_kernel`)."""
    fft = fft_module(xp)
    dt = block.dtype
    p, n_e = plan["p"], plan["n_e"]
    # A NaN or inf anywhere makes the row's sum non-finite: one pass each for validity, N0
    # (sum of the ZLP) and the log-ratio's total.
    n0 = xp.sum(zlp, axis=-1)
    total = xp.sum(block, axis=-1)
    valid = xp.isfinite(total) & xp.isfinite(n0) & (n0 > 0)
    # Invalid pixels are swapped for a harmless spectrum (J = Z = a delta at channel 0) so that
    # nothing below warns or spreads NaN; they get NaN at the end.
    if not bool(xp.all(valid)):
        delta = xp.astype(xp.arange(n_e) == 0, dt)[None, :]
        block = xp.where(valid[:, None], block, delta)
        zlp = xp.where(valid[:, None], zlp, delta)
        n0 = xp.where(valid, n0, 1.0)
        total = xp.where(valid, total, 1.0)
    j, z = block, zlp
    t_over_lambda = xp.log(total / n0)  # log-ratio of the window (eq. 16)
    # Exponential weight exp(-alpha E) on J and Z: a convolution of weighted functions is the
    # weighted convolution, so J_w~ = Z_w~ exp(S_w~/N0) with S_w = S exp(-alpha E) (eq. 18
    # still holds). It keeps |exp(S_w~/N0)| away from 0 for thick areas, so the log is well
    # conditioned and the extrapolated tail beyond the window matters little. It also scales
    # rounding errors up by exp(alpha E) at the end, so it is used only as much as t/lambda
    # needs (see _DAMPING_THIN).
    if plan["damping"] is None:
        tau = xp.where(xp.isfinite(t_over_lambda), t_over_lambda, 0.0)
        alpha = (
            _DAMPING_THIN * xp.minimum(xp.maximum(tau, 0.0), 1.0)
            + _DAMPING_PER_TAU * xp.minimum(xp.maximum(tau - 1.0, 0.0), 10.0)
        ) / plan["e_span"]
    else:
        alpha = xp.full((j.shape[0],), -math.log(plan["damping"]) / plan["e_span"], dtype=dt)
    alpha = xp.astype(alpha, dt)[:, None]
    wgt = xp.exp(-alpha * plan["e_win"])  # (rows, n_E); the tail's weight is in the tail
    tail = tail_continuation(j, plan["e_end"], plan["disp"], plan, extrapolation, alpha)
    jf = fft.rfft(xp.concat([j * wgt, tail], axis=-1), axis=-1)
    zf = fft.rfft(z * wgt, n=p, axis=-1)

    log_defined = xp.real(jf[:, 0]) * xp.real(zf[:, 0]) > 0  # J~(0) / Z~(0) > 0
    mode = "zlp" if output in ("reconvolved-zlp", "residual") else "rolloff"
    ell = _log_ratio(xp, jf, zf, mode, plan["gate"], plan["rolloff"], unwrap)

    if mode == "zlp":
        # Z_w~ ln(J_w~/Z_w~) = N0 F[(R (x) S)_w] with R where it sits: already on the data's axis
        res = fft.irfft(ell, n=p, axis=-1)[:, :n_e]
        scale = xp.ones_like(n0)
    else:
        if plan["sigma"] is not None:
            # the weighted unit-area Gaussian: F[G exp(-alpha E)] = G~(nu - i alpha / 2 pi)
            sig2, nu = plan["sigma"] ** 2, plan["nu"]
            amp = xp.exp(0.5 * sig2 * alpha * alpha - (2.0 * math.pi**2 * sig2) * nu * nu)
            arg = (2.0 * math.pi * sig2) * alpha * nu
            ell = ell * complex_from(xp, amp * xp.cos(arg), amp * xp.sin(arg))
        if plan["filter"] is not None:
            ell = ell * complex_from(xp, *plan["filter"])
        res = _roll_window(xp, fft.irfft(ell, n=p, axis=-1), plan["origin"], n_e)
        scale = n0
    ok = valid & log_defined & xp.all(xp.isfinite(res), axis=-1)
    nan = float("nan")
    # un-weighting, N0 and the NaN of unusable rows in one pass: res * (N0 or NaN) / wgt
    res = res * (xp.where(ok, scale, nan)[:, None] / wgt)
    if output == "residual":
        res = j - z - res
    return {
        "ssd": res,
        "zlp_intensity": xp.where(valid, n0, nan),
        "t_over_lambda": xp.where(ok, t_over_lambda, nan),
        "valid": ok,
    }


def log_spectrum_ratio(
    jf: Any,
    zf: Any,
    *,
    mode: str = "rolloff",
    gate: float = PHASE_FLOOR[8] ** 2,
    rolloff: float = ROLLOFF**2,
    unwrap: bool = True,
) -> Any:
    """``ln(J~/Z~)`` per frequency in split form, phase unwrapped, ready for the inverse transform.

    The core of eq. 22 (kk-theory.md; not the log-ratio thickness of eq. 16, which is
    :func:`eelsgpu.kernels.log_ratio.log_ratio_kernel`), and what ``kernels/fourier_log.cu``
    computes on a GPU:

    * ``ln|J~/Z~| = (ln |J~|^2 - ln |Z~|^2) / 2`` and ``arg = atan2(Im q, Re q)`` with
      ``q = J~ conj(Z~)`` (two real logs and one atan2 instead of a complex log);
    * the phase unwrapped along frequency: the principal value minus 2 pi times the whole turns
      between neighbours, counted from 0 up to the first frequency where
      ``|Z~|^2 <= gate |Z~(0)|^2`` (rounding level) or ``|J~|^2 <= 4 sigma^2`` (counting noise,
      sigma^2 the mean ``|J~|^2`` over the top eighth of frequencies where ``|Z~|`` is below
      1e-3 of ``Z~(0)``, else 0), and 0 above it;
    * times the Wiener-like weight ``|J~|^2 / (|J~|^2 + sigma^2)`` (noise does not pass), and
      ``mode="rolloff"``: times ``|Z~|^2 / (|Z~|^2 + rolloff |Z~(0)|^2)`` (the raw SSD's
      resolution limit); ``mode="zlp"``: times ``Z~`` (the SSD reconvolved with the ZLP).

    Parameters
    ----------
    jf, zf : complex arrays, shape (n, K)
        Transforms of the (weighted, padded) spectra and ZLPs.
    mode : {"rolloff", "zlp"}
    gate, rolloff : float
        Squared relative levels of |Z~| (see above).
    unwrap : bool
        False: the principal-branch log (wrong for thick areas).

    Returns
    -------
    complex array, shape (n, K)
        ``ln(J~/Z~)`` weighted as ``mode`` says (dimensionless: S~/N0).

    Examples
    --------
    >>> import numpy as np
    >>> z = np.fft.rfft(np.exp(-0.5 * (np.arange(64) - 3.0) ** 2))[None]
    >>> s = np.zeros(64); s[10] = 0.5
    >>> j = z * np.exp(np.fft.rfft(s))[None]
    >>> ell = log_spectrum_ratio(j, z, rolloff=0.0)
    >>> bool(np.allclose(np.fft.irfft(ell, n=64)[0], s, atol=1e-9))
    True
    """
    xp = array_namespace(jf)
    return _log_ratio(xp, jf, zf, mode, gate, rolloff, unwrap)


def _log_ratio(
    xp: Any, jf: Any, zf: Any, mode: str, gate: float, rolloff: float, unwrap: bool
) -> Any:
    """:func:`log_spectrum_ratio` on the device's fused kernel when the engine registered one
    (complex64 arrays of a namespace it has one for), else the NumPy fast path or the twin."""
    if not is_numpy(xp) and str(jf.dtype) == "complex64":
        fused = _fused.lookup(FUSED_NAME, xp)
        if fused is not None:
            return fused(jf, zf, noise_power(xp, jf, zf), mode, gate, rolloff, unwrap)
    if is_numpy(xp):
        return log_spectrum_ratio_numpy(jf, zf, mode, gate, rolloff, unwrap)
    return log_spectrum_ratio_twin(xp, jf, zf, None, mode, gate, rolloff, unwrap)


def log_spectrum_ratio_numpy(
    jf: np.ndarray, zf: np.ndarray, mode: str, gate: float, rolloff: float, unwrap: bool
) -> np.ndarray:
    """:func:`log_spectrum_ratio_twin` for NumPy arrays in fewer passes over memory (the CPU's fast path).

    The same arithmetic, written with ``out=`` buffers (no temporaries), the two thresholds on
    |Z~|^2 folded into one, the unwrapping done only up to the last trusted frequency of the
    block, and the result written straight into the complex output. Tests compare it with the
    twin (``test_numpy_fast_path_equals_twin``)."""
    jr, ji = np.ascontiguousarray(jf.real), np.ascontiguousarray(jf.imag)
    zr, zi = np.ascontiguousarray(zf.real), np.ascontiguousarray(zf.imag)
    floor = tiny(str(jr.dtype))
    zz = zr * zr
    t1 = zi * zi
    zz += t1
    jj = np.multiply(jr, jr, out=t1)
    t2 = ji * ji
    jj += t2
    zz0 = zz[:, :1]
    top, mid = _top_bands(jj.shape[-1])
    noise2 = _noise_from_power(np, jj[:, top], zz[:, top], zz0, zz[:, mid], jj[:, mid])
    j_noise, z_noise = noise2[:, :1], noise2[:, 1:2]
    # ln|J~/Z~| (see the twin for the floors)
    log_mod = np.maximum(jj, floor)
    log_mod /= np.maximum(zz, 1e-24 * zz0 + floor, out=t2)
    np.log(log_mod, out=log_mod)
    log_mod *= 0.5
    # phase of J~ conj(Z~)
    im = np.multiply(ji, zr, out=t2)
    t3 = jr * zi
    im -= t3
    re = np.multiply(jr, zr, out=jr)
    np.multiply(ji, zi, out=t3)
    re += t3
    phase = np.arctan2(im, re, out=ji)
    weight = np.add(jj, j_noise, out=t3)
    np.divide(jj, weight, out=weight)
    if mode != "zlp":
        roll = np.add(zz, rolloff * zz0 + SNR2 * z_noise, out=t2)
        np.divide(zz, roll, out=roll)
        weight *= roll
    out = np.empty(jf.shape, dtype=jf.dtype)
    np.multiply(log_mod, weight, out=out.real)
    if unwrap:
        # the first untrusted frequency per row: |Z~|^2 under the larger of its two floors
        # (rounding, model noise) or |J~|^2 in the counting noise
        bad = zz <= np.maximum(gate * zz0, SNR2 * z_noise)
        bad |= jj <= SNR2 * j_noise
        k = bad.shape[-1]
        first = np.argmax(bad, axis=-1)
        first[~bad[np.arange(bad.shape[0]), first]] = k
        stop = int(first.max()) if first.size else 0
        if stop > 1:
            step = np.diff(phase[:, :stop], axis=-1)
            step *= 0.5 / math.pi
            turns = np.rint(step).astype(np.int32)
            turns *= np.arange(stop - 1)[None, :] < (first[:, None] - 1)  # trusted steps only
            if turns.any():
                acc = np.cumsum(turns, axis=-1, dtype=np.int32)
                # (the int -> float conversion inside the multiplication: one pass)
                np.multiply(acc, 2.0 * math.pi, out=step, dtype=step.dtype, casting="unsafe")
                phase[:, 1:stop] -= step
        for r in np.flatnonzero(first < k):  # the phase is 0 above the trusted band
            phase[r, first[r] :] = 0.0
    np.multiply(phase, weight, out=out.imag)
    if mode == "zlp":
        out *= zf  # Z~ ln(J~/Z~), weighted
    return out


def noise_power(xp: Any, jf: Any, zf: Any) -> Any:
    """Per row, the noise powers of J~ and of Z~, (n, 2) (see :func:`_noise_from_power`)."""
    top, mid = _top_bands(jf.shape[-1])
    jj = xp.real(jf[:, top]) ** 2 + xp.imag(jf[:, top]) ** 2
    jm = xp.real(jf[:, mid]) ** 2 + xp.imag(jf[:, mid]) ** 2
    zz = xp.real(zf[:, top]) ** 2 + xp.imag(zf[:, top]) ** 2
    zm = xp.real(zf[:, mid]) ** 2 + xp.imag(zf[:, mid]) ** 2
    zz0 = xp.real(zf[:, :1]) ** 2 + xp.imag(zf[:, :1]) ** 2
    return _noise_from_power(xp, jj, zz, zz0, zm, jm)


def _top_bands(k: int) -> tuple[slice, slice]:
    """The top eighth of ``k`` frequencies and the eighth below it."""
    w = max(1, k // 8)
    return slice(k - w, k), slice(max(0, k - 2 * w), k - w)


def _noise_from_power(xp: Any, jj_top: Any, zz_top: Any, zz0: Any, zz_mid: Any, jj_mid: Any) -> Any:
    """Noise powers from |J~|^2 and |Z~|^2 over the top eighth of frequencies and |Z~(0)|^2.

    Column 0: the mean |J~|^2 where |Z~| < 1e-3 Z~(0). Where the ZLP's transform has died away
    J~ holds only the counting noise, whose power is flat in frequency (white): this measures it
    (rounding level for noise-free data). Where Z~ never dies away (a model made from noisy
    data) the mean |J~|^2 over the top eighth when it is flat there (see column 1); where the
    ZLP is still there at the top (coarse dispersion) it is 0: no noise weight.
    Column 1: the mean |Z~|^2 over the top eighth, the floor of the ZLP model's transform: the
    rounding level for a smooth model or a measured reference, but the counting noise of the
    data for a model built from them (the mirrored gain side), whose transform never dies away;
    frequencies where Z~ sinks into it carry no information about R. It counts as a floor only
    where it is flat (white): the eighth below (``zz_mid``) holds less than twice its power; a
    ZLP still falling there (coarse dispersion) is signal, and the floor is 0."""
    dead = xp.astype(zz_top < 1e-6 * zz0, jj_top.dtype)
    count = xp.sum(dead, axis=-1)
    j_top = xp.mean(jj_top, axis=-1)
    j_flat = xp.where(xp.mean(jj_mid, axis=-1) <= 4.0 * j_top, j_top, xp.zeros_like(j_top))
    j_noise = xp.where(count > 0, xp.sum(jj_top * dead, axis=-1) / xp.maximum(count, 1.0), j_flat)
    z_top = xp.mean(zz_top, axis=-1)
    z_noise = xp.where(xp.mean(zz_mid, axis=-1) <= 2.0 * z_top, z_top, xp.zeros_like(z_top))
    return xp.stack([j_noise, z_noise], axis=-1)


def log_spectrum_ratio_twin(
    xp: Any,
    jf: Any,
    zf: Any,
    noise2: Any | None,
    mode: str,
    gate: float,
    rolloff: float,
    unwrap: bool,
) -> Any:
    """:func:`log_spectrum_ratio` in array-API operations, for every namespace (the twin of
    ``kernels/fourier_log.cu``, whose first-use check compares with it).

    ``jf``, ``zf`` (n, K) complex transforms of the weighted, padded spectra and ZLPs;
    ``noise2`` (n, 2) the noise powers of J~ and Z~ (:func:`noise_power`; None: computed here);
    ``mode``, ``gate``, ``rolloff``, ``unwrap`` as in :func:`log_spectrum_ratio`. Returns the
    weighted ``ln(J~/Z~)`` (or ``Z~ ln(J~/Z~)`` for ``mode="zlp"``), (n, K) complex,
    dimensionless (S~/N0).
    """
    # Every line is one pass over (rows, K): fewer passes is what makes it fast on a CPU.
    # Contiguous copies of the real and imaginary parts: each is read 2-4 times below, and
    # arithmetic on the strided views of a complex array is ~3x slower than on a plain array.
    jr, ji = xp.asarray(xp.real(jf), copy=True), xp.asarray(xp.imag(jf), copy=True)
    zr, zi = xp.asarray(xp.real(zf), copy=True), xp.asarray(xp.imag(zf), copy=True)
    dt = jr.dtype
    floor = tiny(str(dt))
    zz = zr * zr + zi * zi
    zz0 = zz[:, :1]
    jj = jr * jr + ji * ji
    if noise2 is None:  # (from the powers just computed: cheaper than noise_power)
        top, mid = _top_bands(jj.shape[-1])
        noise2 = _noise_from_power(xp, jj[:, top], zz[:, top], zz0, zz[:, mid], jj[:, mid])
    # ln|J~/Z~| with one log: |Z~|^2 is held above 1e-24 of |Z~(0)|^2 (below the gate and the
    # roll-off, where the weights below make the value irrelevant) so that the ratio cannot
    # overflow where noise meets a vanishing Z~
    log_mod = 0.5 * xp.log(xp.maximum(jj, floor) / xp.maximum(zz, 1e-24 * zz0 + floor))
    phase = xp.atan2(ji * zr - jr * zi, jr * zr + ji * zi)
    # Wiener-like weight: frequencies where J~ is counting noise do not pass
    j_noise, z_noise = noise2[:, :1], noise2[:, 1:2]
    weight = jj / (jj + j_noise)
    if mode != "zlp":
        weight = weight * (zz / (zz + (rolloff * zz0 + SNR2 * z_noise)))
    phase_weight = weight
    if unwrap:
        # trusted: from nu = 0 up to the first frequency where Z~ sinks to rounding level or J~
        # into the counting noise (there a step of the phase is random: a wrong whole turn would
        # spoil every frequency above); the phase is 0 above it (the weights below remove it)
        bad = (zz <= gate * zz0) | (jj <= SNR2 * j_noise) | (zz <= SNR2 * z_noise)
        k = bad.shape[-1]
        # the first bad frequency of each row (argmax of a bool: its first True), K if none
        first = xp.where(xp.any(bad, axis=-1), xp.argmax(xp.astype(bad, xp.int8), axis=-1), k)
        trusted = xp.arange(k)[None, :] < first[:, None]
        phase_weight = weight * xp.astype(trusted, dt)
        # whole turns between neighbours, accumulated in int32 (an integer cumulative sum is ~8x
        # faster than a float one); those above the first bad frequency are zeroed with the phase
        step = phase[:, 1:] - phase[:, :-1]
        turns = xp.astype(xp.round(step * (0.5 / math.pi)), xp.int32)
        # most blocks (t/lambda below ~3 after the weight) have no whole turn where it counts:
        # then the accumulation is skipped (it is a quarter of this function's time)
        if bool(xp.any((turns != 0) & trusted[:, 1:])):
            turns = xp.cumulative_sum(turns, axis=-1, dtype=xp.int32, include_initial=True)
            phase = phase - (2.0 * math.pi) * xp.astype(turns, dt)
    ell = complex_from(xp, log_mod * weight, phase * phase_weight)
    if mode == "zlp":
        return zf * ell  # Z~ ln(J~/Z~), weighted
    return ell


def probe_spectra(xp: Any) -> tuple[Any, Any]:
    """A small block with a known answer's structure: thick (phase passes pi), thin, a vacuum."""
    n_e, p = 256, 512
    e = (np.arange(p) - 40) * 0.1
    z = np.exp(-0.5 * (e / 0.25) ** 2)
    s = np.where(e > 0, np.exp(-0.5 * ((e - 15.0) / 1.5) ** 2), 0.0)
    s /= s.sum()
    rows_j, rows_z = [], []
    for t in (0.0, 0.3, 3.0, 5.0):
        j = np.fft.irfft(np.fft.rfft(z) * np.exp(t * np.fft.rfft(s)), n=p)
        j[n_e:] *= np.linspace(1.0, 0.0, p - n_e)
        rows_j.append(j)
        rows_z.append(z)
    jf = xp.asarray(np.fft.rfft(np.array(rows_j), axis=-1).astype(np.complex64))
    zf = xp.asarray(np.fft.rfft(np.array(rows_z), axis=-1).astype(np.complex64))
    return jf, zf


def _roll_window(xp: Any, s: Any, origin: int, n_e: int) -> Any:
    """Channels 0..n_E-1 of the periodic signal ``s`` shifted right by ``origin`` samples."""
    p = s.shape[-1]
    if origin == 0:
        return s[:, :n_e]
    if origin > 0:
        if origin >= n_e:
            return s[:, p - origin : p - origin + n_e]
        return xp.concat([s[:, p - origin :], s[:, : n_e - origin]], axis=-1)
    return s[:, -origin : -origin + n_e]
