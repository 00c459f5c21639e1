"""Fourier-log deconvolution kernels (kk-theory.md eqs. 18-25): the single-scattering distribution.

The measured spectrum is the zero-loss peak convolved with the Poisson sum of the multiple
scatterings (kk-theory.md eq. 18); its Fourier transform is ``J~ = Z~ exp(S~/N0)``, so

    S(E) = N0 F^-1[ ln( F[J] / F[Z] ) ]                                   (eq. 22)

with ``Z = N0 R`` the zero-loss peak in counts (Egerton 2011, section 4.1.2). This module
(:func:`fourier_log_kernel`) evaluates eq. 22 on real, zero-padded discrete transforms (eqs. 23-24)
and puts the energy origin where eq. 25 says: the inverse transform returns the SSD in *kernel
coordinates* (index 0 is zero loss); a phase factor ``exp(-2 pi i k a / P)`` (``a`` = the channel
of 0 eV, possibly fractional; a plain roll when it is whole) maps it onto the spectrum's own
energy axis.

What makes it exact where the textbook recipe is not:

* the complex log in split form, ``ln|J~/Z~| + i arg(J~/Z~)``, with the phase **unwrapped** along
  frequency (``arg`` can pass +-pi many times for t/lambda above about 2; the principal-branch
  log then adds 2 pi jumps that turn into large oscillations of the SSD), up to the first
  frequency where the measured error of the log (below) reaches 1 rad;
* the spectrum's tail beyond the window is continued by a power law of the energy loss (or an
  exponential) fitted to the last channels and brought smoothly to zero with a half-cosine, and
  the transform is padded to a fast length of at least twice the window, so the periodic wrap of
  the discrete transform leaves no step and no overlap;
* J and Z are multiplied by an exponential weight ``exp(-alpha E)`` before the transforms and the
  SSD by ``exp(+alpha E)`` after: the weighted functions obey eq. 18 exactly (a convolution of
  weighted functions is the weighted convolution), with a thinner effective t/lambda, so the log
  is well conditioned and what lies beyond the window barely matters; alpha grows with the
  pixel's t/lambda (a weight at the window's end of 1/10 at t/lambda = 1, 1/100 at 4);
* no taper of the low-energy end: a window that starts just below the ZLP (-1 eV) is fine.

**The raw SSD's roll-off follows the measured error of ln(J~/Z~)**, per pixel (issue 11; the
research is /work/proto/issue11/REPORT.md). To first order ``ln(J~/Z~) = S~/N0 + eps`` with
``eps = dJ~/J~ - dZ~/Z~``, and the error power per frequency is

    sigma^2(nu) = |r~|^2 / |Z~|^2 + N_J / |J~|^2 + N_Z / |Z~|^2             (:func:`error_power`)

* ``r`` the ZLP model's measured misfit: the data minus the model on the gain side within 3 FWHM
  of the centre, counted twice (a symmetric model misfits the loss side as much; the loss side
  itself holds the specimen's losses and cannot be used);
* ``N_J`` the white noise power of J~ not shared with the model (the truncation model's channels
  are the data themselves: their noise cancels in J/Z): measured on the top quarter of
  frequencies where the ZLP's transform has died (counting and rounding noise alike), else from
  fourth differences of the channels (coarse dispersion: the ZLP is still there at Nyquist);
* ``N_Z`` the model's own white floor (the mirror's copied noise, a smooth model's rounding).

The cut-off ``nu_c`` is the first frequency where the smoothed ``|ln(J~/Z~)|^2`` is no more than
twice the smoothed ``sigma^2`` (the error reaches the signal), or the minimum of the smoothed
``|ln(J~/Z~)|^2`` if that comes first (the signal's transform decays and every error grows with
frequency, so past the minimum the log is mostly error, whatever made it: the truncation's step,
the mirror's loss side). Below it a monotone Wiener weight ``S^2 / (S^2 + sigma^2)`` is applied,
normalised so that its point-spread has unit area after un-weighting. Where the error reaches
the signal inside the ZLP's own band (``nu_c`` below the band of a Gaussian of
``max_resolution_fwhm`` x the pixel's ZLP FWHM, and what is cut is not negligible), the pixel
gets that Gaussian instead (``floored``); where that Gaussian's SSD still rings above
:data:`RINGING_LIMIT` of its peak (a misfit finer than the ZLP), one of
:data:`COARSER_RESOLUTION_FWHM` times its width. Both weights are exactly 1 at zero frequency, so the SSD's integral is
``N0 ln(I/N0)`` as eq. 22 requires (with the exponential weight, to the aliasing of the weighted
transform; exactly with ``damping=1``).

**Resolution of the raw SSD.** It is the single-scattering distribution convolved with a
unit-area, centred point-spread whose FWHM is returned per pixel as ``resolution_eV``: its
frequencies are kept up to where the measured error of ln(J~/Z~) reaches the signal. On every
measured spectrum in shared/data that happens inside the ZLP's own band, so there the point-spread
is a Gaussian of the measured ZLP FWHM (times ``max_resolution_fwhm``, default 1): the raw SSD is
band-limited to the ZLP's resolution, which is all the data support. ``limit_eV`` is the
resolution the error criterion alone would give. On noise-free synthetic spectra the cut-off lies
where rounding meets the signal, and the raw SSD is exact (below).

Other outputs: ``"band-limited"`` is the SSD convolved with a unit-area Gaussian of each pixel's
measured ZLP FWHM (zero loss at 0 eV; what Kramers-Kronig analysis takes by default);
``"reconvolved-gaussian"`` the same with a Gaussian of a given FWHM; ``"reconvolved-zlp"`` the SSD
convolved with the ZLP model where it sits in the data (Egerton's advice for noisy data; the
counting noise of J~ is Wiener-weighted, weight 1 at zero frequency); ``"residual"`` the data
minus the ZLP minus that, the plural scattering.

Accuracy, measured against eelsgpu.synthetic's true SSD (2048 channels of 0.05 eV from -5 eV,
Gaussian ZLP of 0.5 eV, float64; tests/kernels/test_fourier_log.py): noise-free with the true ZLP
as R, t/lambda 0.1 to 4, the raw SSD is within 1e-3 of its peak but in the last 3 eV of the window
(before issue 11: 6e-4; the Wiener weight trims the last frequencies where rounding meets the
signal). With Poisson noise of 1e5 counts in the ZLP, the old roll-off (|Z~| above 1e-3 of
Z~(0)) left the raw SSD 0.3 to 17 times its peak off; now it is the truth convolved with a
Gaussian of the ZLP FWHM, within a few per cent of the peak (the noise left at that resolution).
Speed: see benchmarks/_bench_fourier_log.py.

The xarray-facing :func:`eelsgpu.deconvolve` is in :mod:`eelsgpu.analysis.deconvolution`.
:func:`log_spectrum_ratio` and its twins (the core before issue 11, with a fixed roll-off at
1e-3 of Z~(0)) remain for the fused CUDA kernel ``kernels/fourier_log.cu`` that the engine checks
against them; :func:`fourier_log_kernel` no longer calls them.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=3.0,
...                                   dtype=np.float64)
>>> e = sim["energy"].values
>>> zlp = (sim["true_zlp_shape"] * sim["true_zlp_intensity"]).values
>>> out = fourier_log_kernel(sim["signal"].values[None], e, zlp[None], misfit=False)
>>> ssd, true = out["ssd"][0], sim["true_ssd"].values
>>> inside = e < e[-1] - 3.0  # the last eV depend on the tail's extrapolation
>>> bool(np.abs(ssd - true)[inside].max() < 1e-3 * true.max())
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    moving_average,
    tiny,
)
from ..errors import InputError
from . import _fused
from ._sync import all_rows, any_rows, host_decides
from .zlp import _clamp, _nan_where, centre_kernel, channel_variance
from .zlp import _median_rows as zlp_median_rows

__all__ = [
    "EXTRAPOLATIONS",
    "FUSED_NAME",
    "COARSER_RESOLUTION_FWHM",
    "KAPPA",
    "MAX_RESOLUTION_FWHM",
    "OUTPUTS",
    "PHASE_FLOOR",
    "RolloffConsts",
    "RINGING_LIMIT",
    "ROLLOFF",
    "SNR2",
    "error_power",
    "fourier_log_kernel",
    "log_spectrum_ratio",
    "log_spectrum_ratio_numpy",
    "log_spectrum_ratio_twin",
    "noise_power",
    "probe_spectra",
    "rolloff_numpy",
    "rolloff_probe",
    "rolloff_twin",
    "ssd_metrics",
    "tail_continuation",
]

OUTPUTS = ("ssd", "band-limited", "reconvolved-zlp", "reconvolved-gaussian", "residual")
EXTRAPOLATIONS = ("power-law", "exponential", "none")

# Relative floor |Z~(nu)| / Z~(0) below which the legacy core does not unwrap the phase: a few
# times the relative rounding error of a transform in the data's precision (by itemsize).
PHASE_FLOOR = {4: 3e-6, 8: 1e-11}
# |Z~(nu)| / Z~(0) where the legacy core rolls the raw SSD's frequencies off
ROLLOFF = 1e-3
# |J~|^2 / (noise power) above which the legacy core unwraps the phase (signal-to-noise 2)
SNR2 = 4.0
#: The coarsest raw SSD, in ZLP FWHM: a pixel whose measured error reaches the signal inside
#: this band gets a Gaussian point-spread of this many ZLP FWHM (the "floored" pixels).
MAX_RESOLUTION_FWHM = 1.0
#: A raw SSD whose rms departure from itself smoothed to the ZLP's resolution exceeds this share of
#: its peak rings (:func:`ssd_metrics`; the RINGING bit of :mod:`eelsgpu.kernels.quality`).
RINGING_LIMIT = 0.1
#: A pixel band-limited to its ZLP's band that still rings above RINGING_LIMIT gets a Gaussian
#: point-spread this many times wider (measured on shared/data: it brings every such pixel whose
#: ZLP model passes the checks below 0.04; they are a mirror at 2 channels per FWHM and the
#: truncation step of a monochromated ZLP).
COARSER_RESOLUTION_FWHM = 1.5
#: FWHM of the point-spread (eV) times the cut-off frequency (1/eV) of the Gaussian weight that is
#: 1/10 at the cut-off: 2 sqrt(2 ln 2) sqrt(2 ln 10) / (2 pi).
KAPPA = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt(2.0 * math.log(10.0)) / (2.0 * math.pi)
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# The cut-off is where the smoothed |ln(J~/Z~)|^2 falls to (1 + _SNR_MIN) times the smoothed error
# power (signal power = error power: Wiener's crossing); a cut whose smoothed power is below
# _NEGLIGIBLE^2 |ln(J~/Z~)(0)|^2 removes less than 1e-3 of the peak and does not floor the pixel.
_SNR_MIN = 1.0
_NEGLIGIBLE = 1e-3
# -ln(exponential weight at the window's end) per unit t/lambda: 1 at 0, 1/10 at t/lambda = 1,
# 1/100 at t/lambda = 4 (more weight conditions thick areas and short windows better; less keeps
# float32 rounding, which the weight scales up at the end, below 1e-3 of thin areas' SSD)
_DAMPING_THIN = math.log(10.0)
_DAMPING_PER_TAU = math.log(10.0) / 3.0
_ROW_BYTES = 1 << 20  # rows per pass: about 1 MiB per temporary (stays in the L2/L3 cache)

#: The name under which the engine registers the fused form of the measured-error roll-off
#: (:func:`rolloff_twin`; the CUDA kernel of kernels/fourier_log.cu) in
#: :mod:`eelsgpu.kernels._fused`.
FUSED_NAME = "fourier_log_rolloff"
#: The name of its compiled CPU form for NumPy arrays (:mod:`eelsgpu.engine.cpu_fused`).
CPU_ROLLOFF_NAME = "cpu_fourier_log_rolloff"


def tail_continuation(
    block: Any,
    e_end_eV: float,
    dispersion_eV: float,
    plan: dict[str, Any],
    extrapolation: str,
    alpha: Any,
) -> Any:
    """Continuation of each spectrum beyond the window, ending at zero, times ``exp(-alpha E)``.

    Power law ``A L^-r`` of the energy loss L (Egerton 2011, section 4.2.1) or exponential
    ``A exp(-E/tau)``, both with the value and slope of a least-squares line through the last
    1/128th of the window (at least 8 channels), so the join is smooth to first order, times a
    half-cosine from 1 to 0 so that the periodic transform sees no step. ``plan["log_taper"]``,
    ``plan["tail_log"]`` (ln(L/L_end)) and ``plan["e_ext"]`` (E, eV) are shared by all pixels;
    ``alpha`` (n, 1) is each pixel's weight (1/eV). Amplitude, shape, taper and weight are one
    exponential.

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel.
    e_end_eV, dispersion_eV : float
        The energy loss of the window's last channel and the channel width (eV).
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
    # ln v (-1e30 where the data end at or below 0: no tail; not -inf, which the matrix
    # product below would turn into NaN)
    v_ok = xp.where(ok, v, 1.0)
    log_v = xp.where(ok, xp.log(v_ok), -1e30)
    # logarithmic slope -d ln J / dE at the window's end (>= 0: the tail only falls)
    # (_clamp: minimum/maximum on NumPy, where array-api-compat's clip costs ~50 us a call)
    rate = _clamp(xp, -g / v_ok, 0.0, 50.0 / dispersion_eV)
    if extrapolation == "power-law" and e_end_eV > 0:
        # A (L / L_end)^-r with r = rate L_end: same value and slope as the data at the end
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
    damping: float | None = None,
    zlp_centre_eV: Any = None,
    zlp_fwhm_eV: Any = None,
    misfit: bool = True,
    tied: Any = None,
    max_resolution_fwhm: float = MAX_RESOLUTION_FWHM,
    zero_loss_eV: float = 0.0,
    metrics: bool = False,
    axis_eV: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Fourier-log deconvolution of a block of spectra (kk-theory.md eqs. 22 and 25).

    The raw SSD's roll-off follows the measured error of ln(J~/Z~) per pixel (module docstring);
    its weight is 1 at zero frequency, so its integral is ``N0 ln(I/N0)`` (eq. 22).

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel on a uniform, increasing energy axis (float32 or float64;
        the work is done in that precision).
    energy_eV : array, shape (n_E,)
        The energy axis in eV; the channel at 0 eV (possibly between channels) is where the
        aligned outputs put zero loss.
    zlp : array, shape (n, n_E)
        The zero-loss peak of each spectrum in counts, ``I_ZLP = N0 R`` (eq. 14), on the same
        grid, where it sits in the data (e.g. ``zlp`` of :func:`eelsgpu.kernels.zlp.zlp_kernel`).
    output : {"ssd", "band-limited", "reconvolved-zlp", "reconvolved-gaussian", "residual"}
        ``"ssd"``: the raw SSD, counts per channel on the input's axis (0 eV = zero loss),
        integral N0 t/lambda, resolution ``resolution_eV``. ``"band-limited"``: the SSD convolved
        with a unit-area Gaussian of each pixel's ZLP FWHM (0 eV = zero loss).
        ``"reconvolved-zlp"``: the SSD convolved with R where the ZLP sits in the data.
        ``"reconvolved-gaussian"``: the SSD convolved with a unit-area Gaussian of ``fwhm_eV``.
        ``"residual"``: data - ZLP - (SSD reconvolved with R), the plural scattering.
    fwhm_eV : float
        FWHM of the Gaussian in eV (``"reconvolved-gaussian"`` only).
    extrapolation : {"power-law", "exponential", "none"}
        How the tail beyond the window is continued to zero before the transform.
    pad_to : int, optional
        Transform length (>= 2 n_E); default: the next 5-smooth length >= 2 n_E.
    unwrap : bool
        Unwrap the phase (default). ``False`` gives the principal-branch log, wrong for thick
        areas; it exists to show that.
    damping : float, optional
        The exponential weight at the window's end, the same for every pixel (0 < damping <= 1;
        1 is no weight, and makes eq. 22's zero frequency exact). Default: per pixel from its
        t/lambda (1/10 at t/lambda = 1, 1/100 at 4).
    zlp_centre_eV, zlp_fwhm_eV : array (n,), optional
        Each pixel's ZLP centre and FWHM (eV; :func:`eelsgpu.kernels.zlp.centre_kernel` of the
        data). Default: measured on ``zlp``.
    misfit : bool
        Count the model's misfit on the gain side as error (default; right for a model made from
        the data). False: the ZLP is taken as exact (a true ZLP of synthetic data).
    tied : array (n, n_E) of bool, optional
        Channels where the model is the data itself (the truncation model below its cut): their
        noise cancels in J/Z and is not counted.
    max_resolution_fwhm : float
        The coarsest raw SSD, in ZLP FWHM (see the module docstring).
    zero_loss_eV : float
        Where zero loss sits on ``energy_eV`` for the block (eV): the origin of the power-law
        tail and of the exponential weight's span (0 for a calibrated axis).
    metrics : bool
        Also return the raw SSD's figures of merit (:func:`ssd_metrics`): ``ringing``,
        ``negative_lobe``, ``ssd_peak``, ``sum_error`` (the raw SSD summed over the transform
        period, over N0, minus ln(I_ext / N0) with I_ext the window and its continuation: the
        closure of eq. 22 at zero frequency, which the exponential weight's aliasing leaves) and
        ``raw_ssd`` when ``output`` is not ``"ssd"``.
    axis_eV : (float, float), optional
        The axis' first energy and channel width (eV) as host floats, for a caller that has them
        and has checked the axis is uniform (a block kernel: no device array is read back);
        default: from ``energy_eV``, checked.

    Returns
    -------
    dict
        ``ssd`` (n, n_E): the requested output in counts per channel; ``zlp_intensity`` (n,):
        N0 = sum of ``zlp`` (counts); ``t_over_lambda`` (n,): ln(sum J / N0) over the window
        (the log-ratio; no tail); ``valid`` (n,): False where N0 <= 0, the data are not finite,
        or the log is undefined (these get NaN); ``resolution_eV`` (n,): the FWHM of the
        point-spread the returned SSD carries (the ZLP's FWHM for ``"reconvolved-zlp"``, NaN for
        ``"residual"``); ``limit_eV`` (n,): the resolution the measured error alone supports;
        ``floored`` (n,) bool: the raw SSD was band-limited to the ZLP's band; ``zlp_fwhm_eV``
        (n,).

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
    >>> round(float(out["ssd"][0].sum() / 1e4), 3)  # the SSD's integral is N0 ln(I/N0): eq. 22
    0.262
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    if extrapolation not in EXTRAPOLATIONS:
        raise ValueError(f"extrapolation must be one of {EXTRAPOLATIONS}, not {extrapolation!r}")
    if output == "reconvolved-gaussian" and not (fwhm_eV is not None and fwhm_eV > 0):
        raise ValueError("output='reconvolved-gaussian' needs fwhm_eV > 0 (eV)")
    if not max_resolution_fwhm > 0:
        raise ValueError(f"max_resolution_fwhm must be positive, not {max_resolution_fwhm}")
    xp = array_namespace(block)
    dt = block.dtype
    n, n_e = block.shape
    if tuple(zlp.shape) != (n, n_e):
        raise InputError(f"zlp has shape {tuple(zlp.shape)}; the block is {(n, n_e)}")
    if axis_eV is None:
        offset, disp = axis_step(energy_eV, uniform=True, what="the Fourier-log deconvolution")
    else:
        offset, disp = float(axis_eV[0]), float(axis_eV[1])
    p = int(pad_to) if pad_to is not None else fast_length(2 * n_e)
    if p < n_e + 2:
        raise ValueError(f"pad_to={p} is too short for {n_e} channels")
    if damping is not None and not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], not {damping}")
    zlp = xp.astype(zlp, dt, copy=False)
    if zlp_centre_eV is None or zlp_fwhm_eV is None:
        c_in, w_in = _model_centre(xp, zlp, energy_eV, offset, disp)
        zlp_centre_eV = c_in if zlp_centre_eV is None else zlp_centre_eV
        zlp_fwhm_eV = w_in if zlp_fwhm_eV is None else zlp_fwhm_eV
    cen = xp.astype(xp.asarray(zlp_centre_eV), dt, copy=False)
    fw = xp.astype(xp.asarray(zlp_fwhm_eV), dt, copy=False)
    plan = _plan(xp, dt, energy_eV, offset, disp, n_e, p, output, fwhm_eV, damping, zero_loss_eV)
    plan.update(misfit=bool(misfit), max_res=float(max_resolution_fwhm), metrics=bool(metrics))
    # On a CPU rows are done a few at a time so that the temporaries of a row stay in the cache;
    # on a device the block is one pass (the engine already sizes passes from device memory)
    rows = max(1, _ROW_BYTES // (p * itemsize(dt))) if host_decides(xp) else max(n, 1)
    parts = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        parts.append(
            _rows(
                xp,
                block[start:stop, :],
                zlp[start:stop, :],
                cen[start:stop],
                fw[start:stop],
                None if tied is None else tied[start:stop, :],
                plan,
                output,
                extrapolation,
                unwrap,
            )
        )
    if len(parts) == 1:
        return parts[0]
    return {key: xp.concat([part[key] for part in parts], axis=0) for key in parts[0]}


def _model_centre(xp: Any, zlp: Any, energy_eV: Any, offset: float, disp: float) -> tuple[Any, Any]:
    """Centre and FWHM (eV) of each ZLP model (its own peak; the arg-max channel and 4 channels
    where it has none)."""
    z = xp.where(xp.isfinite(zlp), zlp, 0.0)
    last = offset + disp * (zlp.shape[-1] - 1)
    cen = centre_kernel(z, energy_eV, search_eV=(offset, last), axis_eV=(offset, disp))
    e = xp.astype(energy_eV, zlp.dtype)
    arg = xp.take(e, xp.argmax(z, axis=-1))
    c = xp.where(xp.isfinite(cen["zlp_centre_eV"]), cen["zlp_centre_eV"], arg)
    w = xp.where(xp.isfinite(cen["fwhm_eV"]), cen["fwhm_eV"], 4.0 * disp)
    return c, w


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
    zero_loss_eV: float,
) -> dict[str, Any]:
    """The vectors every pixel shares: weights, tail shape, frequencies, origin phase.

    Made on the host in float64 from host numbers (the axis' first energy and channel width),
    cast to the data's precision there and sent to the device as ONE array whose parts are
    views (one copy instead of a few dozen small operations); only the window's energies come
    from the axis array itself."""
    n_ext = p - n_e
    e_end = offset + disp * (n_e - 1)
    loss_end = e_end - float(zero_loss_eV)  # the window's end in energy loss
    i = np.arange(1, n_ext + 1, dtype=np.float64)
    k = np.arange(p // 2 + 1, dtype=np.float64)
    # signed position in the period of each sample of an irfft (kernel coordinates, eV)
    j = np.arange(p, dtype=np.float64)
    # ... and of the SSD over the period: the window's gain side (its channels below 0 eV) wraps
    # to the period's end, everything else is loss
    gain = max(0, math.ceil(-offset / disp - 1e-9))
    host = {
        "e_ext": e_end + disp * i,
        "log_taper": np.log(0.5 + 0.5 * np.cos(i * (math.pi / (n_ext + 1)))),
        "tail_de": disp * i,
        "nu": k / (p * disp),
        "x_period": np.where(j < p // 2, j, j - p) * disp,
        "x_sum": np.where(j < p - gain, j, j - p) * disp,
    }
    if loss_end > 0:
        host["tail_log"] = np.log1p((disp / loss_end) * i)
    origin = -offset / disp  # channel of 0 eV: where zero loss goes (eq. 25)
    whole = round(origin)
    if abs(origin - whole) > 1e-6:
        # sub-channel origin: the phase factor of eq. 25, exp(-2 pi i k a / P)
        theta = (-2.0 * math.pi * origin / p) * k
        host["filter_r"], host["filter_i"] = np.cos(theta), np.sin(theta)
        whole = 0
    np_dt = np.dtype(str(dt).split(".")[-1])
    packed = xp.asarray(np.concatenate(list(host.values())).astype(np_dt))
    parts, start = {}, 0
    for name, value in host.items():
        parts[name] = packed[start : start + value.shape[0]]
        start += value.shape[0]
    plan: dict[str, Any] = {
        "p": p,
        "n_e": n_e,
        "disp": disp,
        "e_end": e_end,
        "loss_end": loss_end,
        "e_span": max(loss_end, disp),
        "damping": damping,
        "e_win": xp.astype(energy_eV[:n_e], dt, copy=False)[None, :],
        "e_ext": parts["e_ext"],
        "log_taper": parts["log_taper"],
        "tail_de": parts["tail_de"],
        "tail_log": parts.get("tail_log"),
        "tiny": tiny(str(dt)),
        "nu": parts["nu"][None, :],
        "x_period": parts["x_period"][None, :],
        "x_sum": parts["x_sum"][None, :],
        "sigma": None,
        "origin": int(whole),
        "filter": None,
    }
    if output == "reconvolved-gaussian":
        plan["sigma"] = fwhm_eV / _FWHM_PER_SIGMA
    if "filter_r" in parts:
        plan["filter"] = (parts["filter_r"][None, :], parts["filter_i"][None, :])
    return plan


@dataclass(frozen=True)
class RolloffConsts:
    """The host constants of the roll-off (:func:`rolloff_twin`, the fused kernel): the transform
    length ``p``, the channel width ``disp`` (eV), ``max_res`` (ZLP FWHM), ``unwrap``, the
    half-width ``half`` of the moving averages along frequency (max(8, K // 64)), and the
    frequency table ``nu_table`` (K,) (1/eV) in the data's precision (``nu_k = k / (p disp)``)."""

    p: int
    disp: float
    max_res: float
    unwrap: bool
    half: int
    nu_table: Any

    def nu(self, xp: Any, dt: Any) -> Any:
        """The frequencies (K,) (1/eV) in ``dt``."""
        return self.nu_table


def _misfit_transform(xp: Any, fft: Any, jw: Any, zw: Any, e: Any, c: Any, w: Any, p: int) -> Any:
    """The transform of the model's measured misfit: the weighted data minus the weighted model
    on the gain side within 3 FWHM (1 to 1.5 FWHM, raised cosine to 0 at 3); :func:`error_power`
    counts its power twice (a symmetric model misfits the loss side as much)."""
    dt = jw.dtype
    n, n_e = jw.shape
    if host_decides(xp) and n and n_e > 1:
        # NumPy: the zone on the channels that hold every row's (c - 3 W, c) (2 channels more
        # either side), zeros elsewhere (where the whole-row zone is 0 too): the same transform
        e0, d = float(e[0]), float(e[1] - e[0])
        lo, hi = float(np.min(c - 3.0 * w)), float(np.max(c))
        a = min(n_e, max(0, math.floor((lo - e0) / d) - 2))
        b = min(n_e, max(a, math.ceil((hi - e0) / d) + 2))
        es = e[None, a:b]
        x = np.abs(es - c[:, None]) / w[:, None]
        ramp = _clamp(np, (3.0 - x) / 1.5, 0.0, 1.0)
        zone = (0.5 - 0.5 * np.cos(math.pi * ramp)) * (es < c[:, None]).astype(dt)
        misfit = np.zeros((n, p), dtype=dt)
        misfit[:, a:b] = (jw[:, a:b] - zw[:, a:b]) * zone
        return fft.rfft(misfit, axis=-1)
    x = xp.abs(e[None, :] - c[:, None]) / w[:, None]
    ramp = _clamp(xp, (3.0 - x) / 1.5, 0.0, 1.0)
    zone = (0.5 - 0.5 * xp.cos(math.pi * ramp)) * xp.astype(e[None, :] < c[:, None], dt)
    return fft.rfft((jw - zw) * zone, n=p, axis=-1)


def _dead_rows(zf: np.ndarray) -> np.ndarray:
    """Where the ZLP's transform has died at the top frequencies (NumPy): the median of |Z~|^2
    over the top quarter below 1e-6 |Z~(0)|^2, as :func:`error_power` decides it."""
    k_all = zf.shape[-1]
    top = zf[:, k_all - max(1, k_all // 4) :]
    med = zlp_median_rows(np, top.real * top.real + top.imag * top.imag)
    return med < 1e-6 * (zf[:, 0].real ** 2 + zf[:, 0].imag ** 2)


def _noise_from_channels(xp: Any, jw: Any, e: Any, c: Any, w: Any, tied: Any) -> Any:
    """The white noise power of J~ where the ZLP is still there at Nyquist (coarse dispersion):
    the channels' variance from fourth differences away from the ZLP, scaled as counts
    (:func:`~.zlp.channel_variance`), summed over the channels not tied to the model."""
    var = channel_variance(xp, jw, e, c, w)
    if tied is not None:
        var = xp.where(tied, 0.0, var)
    return xp.sum(var, axis=-1)


def _rolloff(
    xp: Any,
    jf: Any,
    zf: Any,
    rf: Any,
    share: Any,
    n_j_alive: Any,
    fw: Any,
    consts: RolloffConsts,
) -> dict[str, Any]:
    """:func:`rolloff_twin` on the device's fused kernel when the engine registered one
    (complex64 arrays of a namespace it has one for), else the NumPy fast path or the twin."""
    if not is_numpy(xp) and str(jf.dtype).split(".")[-1] == "complex64":
        fused = _fused.lookup(FUSED_NAME, xp)
        if fused is not None:
            return fused(jf, zf, rf, share, n_j_alive, fw, consts)
    if is_numpy(xp):
        return rolloff_numpy(jf, zf, rf, share, n_j_alive, fw, consts)
    return rolloff_twin(xp, jf, zf, rf, share, n_j_alive, fw, consts)


def _rows(
    xp: Any,
    block: Any,
    zlp: Any,
    cen: Any,
    fw: Any,
    tied: Any,
    plan: dict[str, Any],
    output: str,
    extrapolation: str,
    unwrap: bool,
) -> dict[str, Any]:
    """eq. 22 on a few rows (see :func:`fourier_log_kernel`)."""
    fft = fft_module(xp)
    dt = block.dtype
    p, n_e = plan["p"], plan["n_e"]
    nan = float("nan")
    # A NaN or inf anywhere makes the row's sum non-finite: one pass each for validity, N0
    # (sum of the ZLP) and the log-ratio's total.
    n0 = xp.sum(zlp, axis=-1)
    total = xp.sum(block, axis=-1)
    valid = xp.isfinite(total) & xp.isfinite(n0) & (n0 > 0)
    ok_cw = xp.isfinite(cen) & xp.isfinite(fw) & (fw > 0)
    cen = xp.where(ok_cw, cen, 0.0)
    fw = xp.where(ok_cw, fw, 4.0 * plan["disp"])
    # Invalid pixels are swapped for a harmless spectrum (J = Z = a delta at channel 0) so that
    # nothing below warns or spreads NaN; they get NaN at the end.
    if not all_rows(xp, valid):
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
            _DAMPING_THIN * _clamp(xp, tau, 0.0, 1.0)
            + _DAMPING_PER_TAU * _clamp(xp, tau - 1.0, 0.0, 10.0)
        ) / plan["e_span"]
    else:
        alpha = xp.full((j.shape[0],), -math.log(plan["damping"]) / plan["e_span"], dtype=dt)
    alpha = xp.astype(alpha, dt, copy=False)[:, None]
    wgt = xp.exp(-alpha * plan["e_win"])  # (rows, n_E); the tail's weight is in the tail
    tail = tail_continuation(j, plan["loss_end"], plan["disp"], plan, extrapolation, alpha)
    jw = j * wgt
    zw = z * wgt
    jf = fft.rfft(xp.concat([jw, tail], axis=-1), axis=-1)
    zf = fft.rfft(zw, n=p, axis=-1)
    log_defined = xp.real(jf[:, 0]) * xp.real(zf[:, 0]) > 0  # J~(0) / Z~(0) > 0

    # the measured error of ln(J~/Z~), and the log with its phase unwrapped where it is trusted,
    # the cut-off and the Wiener weight below it: one fused step after the transforms
    e = plan["e_win"][0, :]
    rf = _misfit_transform(xp, fft, jw, zw, e, cen, fw, p) if plan["misfit"] else None
    jp = xp.maximum(jw, 0.0)
    untied = jp if tied is None else xp.where(tied, 0.0, jp)
    share = xp.sum(untied, axis=-1) / xp.maximum(xp.sum(jp, axis=-1), tiny(str(dt)))
    consts = RolloffConsts(
        p, plan["disp"], plan["max_res"], bool(unwrap), max(8, (p // 2 + 1) // 64), plan["nu"][0, :]
    )
    # where the ZLP's transform has not died at the top frequencies (coarse dispersion, and
    # every model made from the data: the mirror's copied noise, the truncation's step) J~'s
    # noise comes from the channels' variance instead: on NumPy measured only where a pixel
    # needs it (a host decision), on a device always (no sync)
    n_j_alive = None
    if not host_decides(xp) or not bool(np.all(_dead_rows(zf))):
        n_j_alive = _noise_from_channels(xp, jw, e, cen, fw, tied)
    core = _rolloff(xp, jf, zf, rf, share, n_j_alive, fw, consts)
    ell = core["ell"]

    want_raw = output == "ssd" or plan["metrics"]
    weight = res = limit = floored = raw = metrics = None
    if want_raw:
        weight, res, limit, floored = _adaptive_weight(xp, fft, core, fw, alpha, plan)
        factor = n0[:, None] / wgt
        raw, metrics = _raw_and_metrics(xp, fft, ell, weight, fw, alpha, plan, factor)
        # a pixel band-limited to its ZLP's band whose SSD still rings above RINGING_LIMIT (a
        # misfit finer than the ZLP: the mirror at 2 channels per FWHM, a truncation step) gets
        # the coarser band of COARSER_RESOLUTION_FWHM ZLP FWHM where that rings less (a host
        # decision, one sync on a device: such pixels are rare)
        redo = floored & (metrics["ringing"] > RINGING_LIMIT) & valid
        if bool(xp.any(redo)):
            sig2 = COARSER_RESOLUTION_FWHM * plan["max_res"] * fw / _FWHM_PER_SIGMA
            w2 = _gaussian_weight(xp, plan["nu"], sig2, alpha)
            raw2, m2 = _raw_and_metrics(xp, fft, ell, w2, fw, alpha, plan, factor)
            take = redo & (m2["ringing"] < metrics["ringing"])
            weight = xp.where(take[:, None], w2, weight)
            raw = xp.where(take[:, None], raw2, raw)
            res = xp.where(take, sig2 * _FWHM_PER_SIGMA, res)
            metrics = {k: xp.where(take, m2[k], v) for k, v in metrics.items()}
    if output in ("reconvolved-zlp", "residual"):
        # Z_w~ ln(J_w~/Z_w~) = N0 F[(R (x) S)_w] with R where it sits: already on the data's axis;
        # J~'s counting noise Wiener-weighted (weight 1 at nu = 0: the integral is kept)
        jj = xp.real(jf) ** 2 + xp.imag(jf) ** 2
        wj = jj / (jj + core["n_j"][:, None])
        wj = xp.where(xp.arange(wj.shape[-1])[None, :] == 0, 1.0, wj)
        out = fft.irfft(ell * wj * zf, n=p, axis=-1)[:, :n_e]
        scale = 1.0
        res_out = fw if output == "reconvolved-zlp" else xp.full_like(fw, nan)
    else:
        if output == "ssd":
            out, res_out = raw, res
        else:
            if output == "band-limited":
                sig, res_out = fw / _FWHM_PER_SIGMA, fw
            else:  # reconvolved-gaussian
                sig = xp.full_like(fw, plan["sigma"])
                res_out = sig * _FWHM_PER_SIGMA
            wout = _gaussian_weight(xp, plan["nu"], sig, alpha)
            out = _aligned(xp, fft, ell * wout, plan, n_e) * (n0[:, None] / wgt)
        scale = None
    ok = valid & log_defined & xp.all(xp.isfinite(out), axis=-1)
    if scale is not None:  # un-weighting of the ZLP-reconvolved outputs
        out = out / wgt
    if not all_rows(xp, ok):
        out = xp.where(ok[:, None], out, nan)
    if output == "residual":
        out = j - z - out
    if limit is None:
        limit = xp.full_like(fw, nan)
        floored = xp.zeros(fw.shape, dtype=xp.bool)
    else:
        # eq. 22 at zero frequency: sum(SSD) over the period / N0 against ln(I_ext / N0)
        ext = total + xp.sum(tail * xp.exp(alpha * plan["e_ext"][None, :]), axis=-1)
        sum_error = metrics["period_sum"] - xp.log(xp.where(ext > 0, ext / n0, nan))
    maps = {
        "t_over_lambda": t_over_lambda,
        "resolution_eV": res_out,
        "limit_eV": limit,
        "zlp_fwhm_eV": fw,
    }
    if plan["metrics"]:
        maps.update(
            sum_error=sum_error,
            ringing=metrics["ringing"],
            negative_lobe=metrics["negative_lobe"],
            ssd_peak=metrics["peak"],
        )
    result = {
        "ssd": out,
        "zlp_intensity": xp.where(valid, n0, nan),
        "valid": ok,
        "floored": ok & floored,
        **_nan_where(xp, ok, maps),
    }
    if plan["metrics"]:
        if output != "ssd":
            result["raw_ssd"] = xp.where(ok[:, None], raw, nan)
    return result


def _adaptive_weight(
    xp: Any, fft: Any, core: dict[str, Any], fw: Any, alpha: Any, plan: dict[str, Any]
) -> tuple[Any, Any, Any, Any]:
    """The raw SSD's weight (n, K) complex, its point-spread's FWHM (n,) (eV), the error-limited
    resolution (n,) (eV) and ``floored`` (n,) (module docstring), from the roll-off's Wiener
    weight ``core["w"]`` (:func:`rolloff_twin`): normalised so that its point-spread has unit
    area after un-weighting (its integral, eq. 22, is kept), or the Gaussian of the ZLP's band
    where the pixel is floored."""
    p, nu = plan["p"], plan["nu"]
    limit, floored = core["limit"], core["floored"]
    nu_floor = KAPPA / (plan["max_res"] * fw)
    sig_g = 1.0 / (2.0 * math.pi * (nu_floor / math.sqrt(2.0 * math.log(10.0))))
    res_gauss = _FWHM_PER_SIGMA * sig_g
    if all_rows(xp, floored):
        return _gaussian_weight(xp, nu, sig_g, alpha), res_gauss, limit, floored
    # on NumPy the Gaussian (an exp, a cos and a sin per frequency) only for the floored rows
    # (none on most synthetic blocks); the weight is then real where none is floored, which the
    # complex log times it casts to complex exactly as the ``where`` below would
    numpy_rows = host_decides(xp) and is_numpy(xp)
    w_gauss = None if numpy_rows else _gaussian_weight(xp, nu, sig_g, alpha)
    w = core["w"]
    psf = fft.irfft(_complex(xp, w), n=p, axis=-1)
    mass = xp.sum(psf * xp.exp(alpha * plan["x_period"]), axis=-1)
    w = w / xp.where(mass != 0, mass, 1.0)[:, None]
    # FWHM of the (symmetric) point-spread: its first fall below half its centre value
    h = psf[:, : p // 4]
    half = 0.5 * h[:, :1]
    i = xp.maximum(_first_true(xp, h < half, p // 4 - 1), 1)
    y01 = xp.take_along_axis(h, xp.stack([i - 1, i], axis=-1), axis=-1)
    y0, y1 = y01[:, 0], y01[:, 1]
    frac = (y0 - half[:, 0]) / xp.where(y0 != y1, y0 - y1, 1.0)
    res_w = 2.0 * (xp.astype(i, h.dtype) - 1.0 + frac) * plan["disp"]
    if numpy_rows:
        weight = w
        if floored.any():
            weight = w.astype(np.result_type(w.dtype, np.complex64))
            weight[floored] = _gaussian_weight(np, nu, sig_g[floored], alpha[floored])
    else:
        weight = xp.where(floored[:, None], w_gauss, w)
    return weight, xp.where(floored, res_gauss, res_w), limit, floored


def _raw_and_metrics(
    xp: Any,
    fft: Any,
    ell: Any,
    weight: Any,
    fw: Any,
    alpha: Any,
    plan: dict[str, Any],
    factor: Any,
) -> tuple[Any, dict[str, Any]]:
    """The raw SSD for ``weight`` (aligned, un-weighted, times N0: ``factor`` = N0 / weight), its
    :func:`ssd_metrics` against itself convolved with a Gaussian of the ZLP FWHM, and
    ``period_sum``: the SSD summed over the whole transform period (un-weighted) over N0, which
    eq. 22 at zero frequency makes ln(I_ext / N0) (I_ext: the window and its continuation)."""
    n_e, p = plan["n_e"], plan["p"]
    spec = ell * weight
    full = fft.irfft(spec, n=p, axis=-1)  # kernel coordinates: zero loss at index 0
    period_sum = xp.sum(full * xp.exp(alpha * plan["x_sum"]), axis=-1)
    if plan["filter"] is None:
        raw = _roll_window(xp, full, plan["origin"], n_e) * factor
    else:
        raw = _aligned(xp, fft, spec, plan, n_e) * factor
    metrics = ssd_metrics(xp, raw, _window_smooth(xp, fft, raw, fw, plan), plan["e_win"][0, :], fw)
    metrics["period_sum"] = period_sum
    return raw, metrics


def _window_smooth(xp: Any, fft: Any, ssd: Any, fw: Any, plan: dict[str, Any]) -> Any:
    """The window's SSD (zero outside it) convolved with a unit-area Gaussian of each row's
    FWHM ``fw`` (eV): the smoothing of the ringing metric (:func:`ssd_metrics`)."""
    n_e, p = plan["n_e"], plan["p"]
    sig = fw / _FWHM_PER_SIGMA
    nu = plan["nu"]  # frequencies of a length-p transform (1/eV)
    g = _exp_normal(xp, -(2.0 * math.pi**2) * (sig * sig)[:, None] * (nu * nu))
    if host_decides(xp) and math.isfinite(float(np.sum(ssd))):  # (NumPy: a copy saved)
        f = fft.rfft(ssd, n=p, axis=-1)
    else:  # (the zeroed copy a temporary: not held through the inverse transform)
        f = fft.rfft(xp.where(xp.isfinite(ssd), ssd, 0.0), n=p, axis=-1)
    return fft.irfft(f * g, n=p, axis=-1)[:, :n_e]


def _complex(xp: Any, a: Any) -> Any:
    """A real array as the input of an inverse real transform: as it is for scipy.fft (NumPy),
    cast to the matching complex dtype elsewhere (the array API's irfft wants a complex array)."""
    if is_numpy(xp):
        return a
    return xp.astype(a, xp.complex64 if a.dtype == xp.float32 else xp.complex128)


def _aligned(xp: Any, fft: Any, spec: Any, plan: dict[str, Any], n_e: int) -> Any:
    """The window's channels of ``irfft(spec)`` with zero loss at 0 eV of the axis (eq. 25)."""
    p = plan["p"]
    if plan["filter"] is not None:
        spec = spec * complex_from(xp, *plan["filter"])
    return _roll_window(xp, fft.irfft(spec, n=p, axis=-1), plan["origin"], n_e)


def _exp_normal(xp: Any, x: Any) -> Any:
    """``exp(x)`` of a temporary array ``x``, with the results that would be subnormal (below
    the dtype's smallest normal number, ~1.2e-38 in float32) flushed to 0 on NumPy, where x86
    CPUs take each subnormal operand or result through a microcode assist: measured, a float32
    exp 13x and a product 33x slower on such values, which a Gaussian's transform holds in a
    band of its frequencies (and the FFTs after it). What is flushed is far below the rounding
    of anything it is added to (results the same on every real file and synthetic image
    tested). Elsewhere (a GPU handles them at full speed) the plain exp; ``x`` may be
    overwritten."""
    if not is_numpy(xp):
        return xp.exp(x)
    x[x < _LOG_TINY[x.dtype.itemsize]] = -np.inf
    return np.exp(x, out=x)


#: ln of the smallest normal float32 / float64 (by itemsize), a little below: exp() of less is
#: subnormal.
_LOG_TINY = {4: math.log(float(np.finfo(np.float32).tiny)) - 0.2,
             8: math.log(float(np.finfo(np.float64).tiny)) - 0.2}  # fmt: skip


def _gaussian_weight(xp: Any, nu: Any, sigma: Any, alpha: Any) -> Any:
    """The weighted unit-area Gaussian ``F[G exp(-alpha E)] = G~(nu - i alpha / 2 pi)``, (n, K)
    complex, for each row's sigma (n,) (eV) and weight alpha (n, 1): applied to the weighted
    ln(J~/Z~) it leaves, after un-weighting, exactly ``G (x) S`` (unit area, centred)."""
    s2 = (sigma * sigma)[:, None]
    amp = _exp_normal(xp, 0.5 * s2 * alpha * alpha - (2.0 * math.pi**2) * s2 * nu * nu)
    arg = (2.0 * math.pi) * s2 * alpha * nu
    return complex_from(xp, amp * xp.cos(arg), amp * xp.sin(arg))


def _split_log(xp: Any, jf: Any, zf: Any, stop: Any) -> Any:
    """``ln(J~/Z~)`` in split form, ``ln|J~/Z~| + i arg(J~ conj(Z~))``, the phase unwrapped from
    nu = 0 up to the index ``stop`` (n,) (whole turns between neighbours removed) and kept on its
    branch above it (no further turns removed); ``stop=None``: the principal branch."""
    log_mod, phase = _split_log_parts(xp, jf, zf, stop)
    return complex_from(xp, log_mod, phase)


def _split_log_parts(xp: Any, jf: Any, zf: Any, stop: Any, jj: Any = None, zz: Any = None) -> Any:
    """:func:`_split_log` as its real and imaginary parts (``jj``, ``zz``: |J~|^2 and |Z~|^2
    already floored, when made)."""
    dt = xp.real(jf).dtype
    floor = tiny(str(dt))
    jr, ji = xp.real(jf), xp.imag(jf)
    zr, zi = xp.real(zf), xp.imag(zf)
    # |J~|^2 and |Z~|^2 held above 1e-24 of their zero frequency (where the weights make the
    # value irrelevant) so that the ratio cannot overflow where a transform vanishes
    if jj is None:
        jj = jr * jr + ji * ji
        jj = xp.maximum(jj, 1e-24 * jj[:, :1] + floor)
    if zz is None:
        zz = zr * zr + zi * zi
        zz = xp.maximum(zz, 1e-24 * zz[:, :1] + floor)
    log_mod = 0.5 * xp.log(jj / zz)
    phase = xp.atan2(ji * zr - jr * zi, jr * zr + ji * zi)
    if stop is not None:
        k = phase.shape[-1]
        step = phase[:, 1:] - phase[:, :-1]
        turns = xp.astype(xp.round(step * (0.5 / math.pi)), xp.int32)
        inside = xp.arange(k - 1)[None, :] < (stop[:, None] - 1)
        turns = xp.where(inside, turns, 0)
        # most blocks (t/lambda below ~3 after the weight) have no whole turn where it counts
        # (a host decision: on a device the accumulation always runs)
        if any_rows(xp, turns != 0):
            acc = xp.cumulative_sum(turns, axis=-1, dtype=xp.int32, include_initial=True)
            phase = phase - (2.0 * math.pi) * xp.astype(acc, dt)
    return log_mod, phase


def _median_rows(xp: Any, a: Any) -> Any:
    """The median of each row of ``a`` (n, m) (partial sort on NumPy, a sort elsewhere)."""
    return zlp_median_rows(xp, a)


def error_power(
    xp: Any,
    jf: Any,
    zf: Any,
    rf: Any,
    share: Any,
    n_j_alive: Any = None,
) -> dict[str, Any]:
    """The measured error power ``sigma^2(nu)`` (n, K) of ln(J~/Z~) and its parts (module
    docstring), in the kernel's weighted domain.

    ``jf``, ``zf`` the transforms of the weighted, padded spectra and models; ``rf`` the
    transform of the model's weighted misfit on the gain side (:func:`_misfit_transform`; None:
    the model is exact); ``share`` (n,) the share of the spectrum's counts not tied to the model
    (the truncation's channels are the data: their noise cancels); ``n_j_alive`` (n,) the white
    noise power of J~ from the channels' variance (:func:`_noise_from_channels`), used where
    the ZLP's transform has not died at the top frequencies (None: not measured; the caller
    measures it where ``dead`` is not all True and asks again). Returns ``sigma2``, ``n_j`` and
    ``n_z`` (n,) the white noise powers of J~ and Z~, ``dead`` (n,), and ``jj``/``zz``
    (|J~|^2, |Z~|^2 floored at 1e-24 of their zero frequency).
    """
    dt = xp.real(jf).dtype
    floor = tiny(str(dt))
    jj = xp.real(jf) ** 2 + xp.imag(jf) ** 2
    zz = xp.real(zf) ** 2 + xp.imag(zf) ** 2
    k_all = jj.shape[-1]
    top = slice(k_all - max(1, k_all // 4), k_all)
    # the floors of the divisions below: 1e-24 of the zero frequency (a true ZLP's transform
    # underflows to 0 at high frequency; the error there is then huge, not infinite)
    jj_floor = xp.maximum(jj, 1e-24 * jj[:, :1] + floor)
    zz_floor = xp.maximum(zz, 1e-24 * zz[:, :1] + floor)
    # white noise has exponentially distributed power: its mean is the median / ln 2
    med = _median_rows(xp, xp.concat([jj[:, top], zz[:, top]], axis=0))
    n = jj.shape[0]
    f_j, med_z = med[:n] / math.log(2.0), med[n:]
    f_z = med_z / math.log(2.0)
    dead = med_z < 1e-6 * zz[:, 0]
    n_j = f_j * share
    if n_j_alive is not None:
        n_j = xp.where(dead, n_j, n_j_alive)
    n_z = xp.where(dead, f_z, 0.0)
    sigma2 = n_j[:, None] / jj_floor + n_z[:, None] / zz_floor
    if rf is not None:
        # the model's misfit on the gain side, counted twice (_misfit_transform)
        sigma2 = sigma2 + 2.0 * (xp.real(rf) ** 2 + xp.imag(rf) ** 2) / zz_floor
    return {"sigma2": sigma2, "n_j": n_j, "n_z": n_z, "dead": dead, "jj": jj_floor, "zz": zz_floor}


def _cumulative_min(xp: Any, a: Any) -> Any:
    """Running minimum along the last axis: ``numpy.minimum.accumulate`` on NumPy; elsewhere
    (the array API has no cummin) ceil(log2(m)) doubling steps on one buffer (a shifted copy,
    a minimum and a select each; no concatenation)."""
    if is_numpy(xp):
        return np.minimum.accumulate(a, axis=-1)
    m = a.shape[-1]
    idx = xp.arange(m)[None, :]
    s = 1
    while s < m:
        a = xp.where(idx >= s, xp.minimum(a, xp.roll(a, s, axis=-1)), a)
        s *= 2
    return a


def _first_true(xp: Any, mask: Any, k: int) -> Any:
    """The first index of each row where ``mask`` holds, ``k`` where it never does."""
    return xp.where(xp.any(mask, axis=-1), xp.argmax(xp.astype(mask, xp.int8), axis=-1), k)


def rolloff_twin(
    xp: Any,
    jf: Any,
    zf: Any,
    rf: Any,
    share: Any,
    n_j_alive: Any,
    fw: Any,
    consts: RolloffConsts,
) -> dict[str, Any]:
    """The measured-error roll-off of eq. 22 after the transforms, in array-API operations: the
    twin of the fused CUDA kernel ``fourier_log_rolloff`` (kernels/fourier_log.cu), which the
    engine checks against it, and of the NumPy fast path :func:`rolloff_numpy`.

    Everything that is elementwise per frequency, or a scan or reduction along the frequencies
    of one row: the error power (:func:`error_power`: the noise powers of J~ and Z~ from the
    medians of the top quarter of frequencies, the misfit), the log in split form with its phase
    unwrapped up to the first frequency where the error reaches 1 rad (:func:`_split_log`), the
    cut-off (the first frequency where the smoothed |ln(J~/Z~)|^2 falls to twice the smoothed
    error, the minimum of the former, or that 1 rad frequency) and the monotone Wiener weight
    below it, smoothed and normalised to 1 at zero frequency (module docstring).

    ``jf``, ``zf``, ``rf`` (n, K) complex: the transforms of the weighted spectra, models and
    the model's misfit (``rf`` None: an exact model); ``share``, ``n_j_alive`` (n,): see
    :func:`error_power`; ``fw`` (n,) the ZLP FWHM (eV); ``consts`` the host constants.

    Returns
    -------
    dict
        ``ell`` (n, K) complex, ln(J~/Z~) (S~/N0 weighted, dimensionless); ``w`` (n, K) real,
        the Wiener weight (1 at zero frequency, not yet normalised to a unit-area point-spread);
        ``n_j`` (n,) the white noise power of J~; ``dead`` (n,) bool; ``first`` (n,) int, the
        cut-off's index (K: none); ``limit`` (n,) the error-limited resolution (eV); ``floored``
        (n,) bool, the error reaches the signal inside the ZLP's band.
    """
    dt = xp.real(jf).dtype
    k_all = jf.shape[-1]
    err = error_power(xp, jf, zf, rf, share, n_j_alive)
    sigma2 = err["sigma2"]
    stop = _first_true(xp, sigma2 > 1.0, k_all)  # an error of 1 rad: a phase step is random
    log_mod, phase = _split_log_parts(
        xp, jf, zf, stop if consts.unwrap else None, err["jj"], err["zz"]
    )
    b = consts.half
    power = moving_average(xp, log_mod * log_mod + phase * phase, b)
    errs = moving_average(xp, sigma2, b)
    idx = xp.arange(k_all)[None, :]
    k_est = _first_true(xp, (power <= (1.0 + _SNR_MIN) * errs) & (idx >= 1), k_all)
    k_min = 1 + xp.argmin(power[:, 1:], axis=-1)
    k_min = xp.where(k_min >= k_all - b - 1, k_all, k_min)  # no minimum: the error never rose
    first = xp.minimum(xp.minimum(k_est, k_min), stop)
    at = xp.minimum(first, k_all - 1)
    nu = consts.nu(xp, dt)
    nu_c = xp.take(nu, at)
    limit = KAPPA / xp.maximum(nu_c, nu[1])
    nu_floor = KAPPA / (consts.max_res * fw)
    cut_power = xp.take_along_axis(power, at[:, None], axis=-1)[:, 0]
    ell0 = log_mod[:, 0] * log_mod[:, 0] + phase[:, 0] * phase[:, 0]
    # the error reaches the signal inside the ZLP's band, and what is cut is not negligible
    floored = (first < k_all) & (nu_c < nu_floor) & (cut_power > _NEGLIGIBLE**2 * ell0)
    # the monotone Wiener weight below the cut-off, smoothed, 1 at zero frequency
    s2 = xp.maximum(power - errs, 0.0)
    w = s2 / xp.maximum(s2 + errs, tiny(str(dt)))
    w = xp.where(idx == 0, 1.0, w)
    w = _cumulative_min(xp, w)
    w = xp.where(idx < first[:, None], w, 0.0)
    w = moving_average(xp, w, b)
    w = w / xp.where(w[:, :1] > 0, w[:, :1], 1.0)  # (0: a cut-off at zero frequency, floored)
    return {
        "ell": complex_from(xp, log_mod, phase),
        "w": w,
        "n_j": err["n_j"],
        "dead": err["dead"],
        "first": first,
        "limit": limit,
        "floored": floored,
    }


def _moving_average_numpy(y: np.ndarray, half: int) -> np.ndarray:
    """:func:`eelsgpu._xp.moving_average` for NumPy, bitwise the same: the same running sums,
    the inner channels (whole windows) by one difference of two slices instead of two gathers
    and a division by a row of window lengths."""
    m = y.shape[-1]
    if m < 2 * half + 2:
        return moving_average(np, y, half)
    c = np.cumulative_sum(y, axis=-1, include_initial=True)
    out = np.empty_like(y)
    np.subtract(c[:, 2 * half + 1 :], c[:, : m - 2 * half], out=out[:, half : m - half])
    out[:, half : m - half] /= y.dtype.type(2 * half + 1)
    j = np.r_[0:half, m - half : m]  # the ends: fewer channels
    lo, hi = np.maximum(j - half, 0), np.minimum(j + half + 1, m)
    out[:, j] = (c[:, hi] - c[:, lo]) / (hi - lo).astype(y.dtype)
    return out


def rolloff_numpy(
    jf: np.ndarray,
    zf: np.ndarray,
    rf: np.ndarray | None,
    share: np.ndarray,
    n_j_alive: np.ndarray | None,
    fw: np.ndarray,
    consts: RolloffConsts,
) -> dict[str, Any]:
    """:func:`rolloff_twin` for NumPy arrays (the CPU's fast path): the compiled form
    ``cpu_fourier_log_rolloff`` where the engine registered one (:mod:`eelsgpu.engine.cpu_fused`,
    two loops per spectrum; the same bits), else :func:`rolloff_numpy_passes`."""
    fused = _fused.lookup(CPU_ROLLOFF_NAME, np)
    if fused is not None:
        return fused(jf, zf, rf, share, n_j_alive, fw, consts)
    return rolloff_numpy_passes(jf, zf, rf, share, n_j_alive, fw, consts)


def rolloff_numpy_passes(
    jf: np.ndarray,
    zf: np.ndarray,
    rf: np.ndarray | None,
    share: np.ndarray,
    n_j_alive: np.ndarray | None,
    fw: np.ndarray,
    consts: RolloffConsts,
) -> dict[str, Any]:
    """:func:`rolloff_twin` for NumPy arrays in fewer passes over memory: the same arithmetic
    with ``out=`` buffers, medians by partial sorts, the running minimum by
    ``numpy.minimum.accumulate``, the unwrapping only up to the block's last trusted frequency.
    Tests compare it with the twin (``test_rolloff_numpy_equals_twin``)."""
    n, k_all = jf.shape
    rdt = jf.real.dtype
    floor = tiny(str(rdt))
    jr, ji = np.ascontiguousarray(jf.real), np.ascontiguousarray(jf.imag)
    zr, zi = np.ascontiguousarray(zf.real), np.ascontiguousarray(zf.imag)
    jj = jr * jr
    t1 = ji * ji
    jj += t1
    zz = np.multiply(zr, zr, out=t1)
    zz += zi * zi
    # the noise powers: medians of the top quarter of |J~|^2 and |Z~|^2, before the floors
    q = max(1, k_all // 4)
    med = zlp_median_rows(np, np.concatenate([jj[:, k_all - q :], zz[:, k_all - q :]]))
    f_j = med[:n] / math.log(2.0)
    dead = med[n:] < 1e-6 * zz[:, 0]
    n_j = f_j * share
    if n_j_alive is not None:
        n_j = np.where(dead, n_j, n_j_alive)
    n_z = np.where(dead, med[n:] / math.log(2.0), 0.0).astype(rdt, copy=False)
    np.maximum(jj, 1e-24 * jj[:, :1] + floor, out=jj)
    np.maximum(zz, 1e-24 * zz[:, :1] + floor, out=zz)
    # sigma^2 = n_j / jj + n_z / zz (+ 2 |R~|^2 / zz)
    sigma2 = np.divide(n_j.astype(rdt, copy=False)[:, None], jj)
    t2 = np.divide(n_z[:, None], zz)
    sigma2 += t2
    if rf is not None:
        rr = np.multiply(rf.real, rf.real, out=t2)
        rr += rf.imag * rf.imag
        rr *= 2.0
        rr /= zz
        sigma2 += rr
    big = sigma2 > 1.0
    stop = np.where(big.any(axis=-1), big.argmax(axis=-1), k_all)
    # ln|J~/Z~| and the phase of J~ conj(Z~)
    log_mod = np.divide(jj, zz, out=jj)
    np.log(log_mod, out=log_mod)
    log_mod *= 0.5
    im = np.multiply(ji, zr, out=zz)
    t3 = jr * zi
    im -= t3
    re = np.multiply(jr, zr, out=jr)
    np.multiply(ji, zi, out=t3)
    re += t3
    phase = np.arctan2(im, re, out=ji)
    if consts.unwrap:
        last = int(stop.max()) if n else 0
        if last > 1:
            step = np.diff(phase[:, :last], axis=-1)
            step *= 0.5 / math.pi
            turns = np.rint(step).astype(np.int32)
            turns *= np.arange(last - 1)[None, :] < (stop[:, None] - 1)  # trusted steps only
            if turns.any():
                acc = np.cumsum(turns, axis=-1, dtype=np.int32)
                np.multiply(acc, 2.0 * math.pi, out=step, dtype=step.dtype, casting="unsafe")
                phase[:, 1:last] -= step
                phase[:, last:] -= step[:, -1:]  # above: kept on its branch
    # the smoothed |ln(J~/Z~)|^2 and error, the cut-off
    b = consts.half
    pw = np.multiply(log_mod, log_mod, out=re)
    pw += np.multiply(phase, phase, out=im)
    power = _moving_average_numpy(pw, b)
    k_min = 1 + np.argmin(power[:, 1:], axis=-1)
    k_min[k_min >= k_all - b - 1] = k_all
    # The cut-off is min(k_est, k_min, stop): the smoothed error and the test against it matter
    # only below the block's largest min(k_min, stop) (``reach``; measured: under 0.17 of the
    # frequencies on synthetic and real spectra), and the weight only below the largest cut-off.
    # Both are done on that prefix of the rows, the same values to the bit: a moving average's
    # running sums over a prefix are the row's, and its windows below ``reach`` lie within the
    # prefix (b channels beyond it); a row whose test fails nowhere there has k_est >= reach,
    # so its cut-off is min(k_min, stop) either way.
    reach = int(np.minimum(k_min, stop).max()) if n else 0
    m_err = min(k_all, reach + 1)
    errs = _moving_average_numpy(sigma2[:, : min(k_all, m_err + b + 1)], b)[:, :m_err]
    bad = power[:, :m_err] <= (1.0 + _SNR_MIN) * errs
    bad[:, 0] = False
    k_est = np.where(bad.any(axis=-1), bad.argmax(axis=-1), k_all)
    first = np.minimum(np.minimum(k_est, k_min), stop)
    at = np.minimum(first, k_all - 1)
    nu = consts.nu(np, rdt)
    nu_c = nu[at]
    limit = KAPPA / np.maximum(nu_c, nu[1])
    nu_floor = KAPPA / (consts.max_res * fw)
    cut_power = power[np.arange(n), at]
    ell0 = log_mod[:, 0] * log_mod[:, 0] + phase[:, 0] * phase[:, 0]
    floored = (first < k_all) & (nu_c < nu_floor) & (cut_power > _NEGLIGIBLE**2 * ell0)
    # the Wiener weight (s2 = max(power - err, 0), w = s2 / (s2 + err)) below each row's cut-off
    # (0 from it on), on the prefix of the rows up to the largest cut-off ``top`` (<= m_err),
    # smoothed on the prefix up to top + 2b + 1 (beyond top + b every window holds zeros only:
    # exactly 0 in the row's moving average too)
    top = int(first.max()) if n else 0
    w = np.zeros((n, k_all), dtype=rdt)
    if top > 0:
        s2 = np.subtract(power[:, :top], errs[:, :top])
        np.maximum(s2, 0.0, out=s2)
        den = np.add(errs[:, :top], s2, out=errs[:, :top])
        np.maximum(den, tiny(str(rdt)), out=den)
        wp = np.divide(s2, den, out=s2)
        wp[:, 0] = 1.0
        np.minimum.accumulate(wp, axis=-1, out=wp)
        wp[np.arange(top)[None, :] >= first[:, None]] = 0.0
        w[:, :top] = wp
        span = min(k_all, top + 2 * b + 1)
        w[:, :span] = _moving_average_numpy(w[:, :span], b)
        w[:, :span] /= np.where(w[:, :1] > 0, w[:, :1], 1.0)  # (0: a cut-off at zero frequency)
    ell = np.empty(jf.shape, dtype=jf.dtype)
    ell.real = log_mod
    ell.imag = phase
    return {
        "ell": ell,
        "w": w,
        "n_j": n_j,
        "dead": dead,
        "first": first,
        "limit": limit,
        "floored": floored,
    }


def ssd_metrics(xp: Any, ssd: Any, smooth: Any, e: Any, fwhm_eV: Any) -> dict[str, Any]:
    """Figures of merit of raw SSDs (n, n_E) with zero loss at 0 eV of ``e`` (n_E,) (eV).

    ``smooth`` is the SSD (zero outside the window) convolved with a unit-area Gaussian of each
    pixel's ZLP FWHM ``fwhm_eV`` (n,) (eV): the metric of /work/proto/issue11/REPORT.md. ``peak`` is the largest value of ``smooth`` at or beyond 3 FWHM (the
    main loss peak; a zero-loss spike cannot set it); ``ringing`` the rms of ``ssd - smooth``
    from 0 eV to the window's end over ``peak`` (the RINGING bit above 0.1: what oscillates
    faster than the ZLP's resolution); ``negative_lobe`` the deepest value of ``ssd`` at or
    beyond 3 FWHM, below zero, over ``peak`` (the NEGATIVE_LOBE bit above 0.1: the spectrum
    breaks the Fourier-log model). A pixel whose SSD has no positive peak scores infinity.
    """
    dt = ssd.dtype
    e = xp.astype(e, dt, copy=False)[None, :]
    loss = e >= 0.0
    beyond = e >= 3.0 * fwhm_eV[:, None]
    peak = xp.max(xp.where(beyond, smooth, -math.inf), axis=-1)
    diff = xp.where(loss, ssd - smooth, 0.0)
    count = xp.maximum(xp.sum(xp.astype(loss, dt), axis=-1), 1.0)
    rms = xp.sqrt(xp.sum(diff * diff, axis=-1) / count)
    low = xp.min(xp.where(beyond, ssd, math.inf), axis=-1)
    good = peak > 0
    safe = xp.where(good, peak, 1.0)
    inf = xp.full_like(peak, math.inf)
    return {
        "ringing": xp.where(good, rms / safe, inf),
        "negative_lobe": xp.where(good, xp.maximum(-low, 0.0) / safe, inf),
        "peak": peak,
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

    The core of eq. 22 as it was before issue 11 (kk-theory.md; not the log-ratio thickness of
    eq. 16, which is :func:`eelsgpu.kernels.log_ratio.log_ratio_kernel`), and what
    ``kernels/fourier_log.cu`` computes on a GPU. :func:`fourier_log_kernel` no longer calls it
    (its roll-off follows each pixel's measured error), so neither it nor the fused kernel runs
    in any analysis until issue 13 ports the fused kernel:

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
    """:func:`log_spectrum_ratio` on the NumPy fast path or the twin (the fused CUDA kernel now
    implements the measured-error roll-off, :func:`rolloff_twin`, not this core)."""
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
    j_flat = xp.where(xp.mean(jj_mid, axis=-1) <= 4.0 * j_top, j_top, 0.0)
    j_noise = xp.where(count > 0, xp.sum(jj_top * dead, axis=-1) / xp.maximum(count, 1.0), j_flat)
    z_top = xp.mean(zz_top, axis=-1)
    z_noise = xp.where(xp.mean(zz_mid, axis=-1) <= 2.0 * z_top, z_top, 0.0)
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


def rolloff_probe(xp: Any, k: int, consts: RolloffConsts) -> tuple[Any, ...]:
    """The arguments of :func:`rolloff_twin` for a probe block of ``k`` frequencies (complex64):
    spectra with known structure (a vacuum spectrum, thin and thick ones whose phase passes pi
    many times, counting noise, a model misfit on the gain side), the first-use check of the
    fused kernel (:func:`eelsgpu.engine.cuda.verified`) at a block's own size."""
    p = consts.p
    n_e = p // 2
    rng = np.random.default_rng(13)
    e = (np.arange(p) - n_e // 10) * consts.disp
    z = np.exp(-0.5 * (e / max(0.25, 2.0 * consts.disp)) ** 2)
    s = np.where(e > 0, np.exp(-0.5 * ((e - 15.0) / 1.5) ** 2), 0.0)
    s /= s.sum()
    rows_j, rows_z, rows_r = [], [], []
    for t, counts in ((0.0, 1e5), (0.3, 1e5), (1.5, 1e4), (3.0, 1e6), (5.0, 1e5), (1.0, 0.0)):
        j = np.fft.irfft(np.fft.rfft(z) * np.exp(t * np.fft.rfft(s)), n=p)
        j[n_e:] *= np.linspace(1.0, 0.0, p - n_e)
        scale = counts / j.sum() if counts else 1e5 / j.sum()
        j = j * scale
        zz = z * (counts or 1e5) / z.sum()
        if counts:
            j = j + rng.normal(0.0, 1.0, p) * np.sqrt(np.maximum(j, 1.0))
        rows_j.append(j)
        rows_z.append(zz)
        rows_r.append(np.where(e < 0, j - zz, 0.0) * (np.abs(e) < 1.0))

    def tf(rows):
        return xp.asarray(np.fft.rfft(np.array(rows), axis=-1)[:, :k].astype(np.complex64))

    n = len(rows_j)
    share = xp.asarray(np.linspace(0.6, 1.0, n).astype(np.float32))
    fw = xp.asarray(np.full(n, 2.355 * max(0.25, 2.0 * consts.disp), dtype=np.float32))
    return (tf(rows_j), tf(rows_z), tf(rows_r), share, None, fw, consts)


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
