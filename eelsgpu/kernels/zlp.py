"""Zero-loss peak kernels (kk-theory.md eqs. 13-14): centre, sub-channel shift, and the ZLP models.

A low-loss spectrum is ``I(E) = N0 R(E) + inelastic`` (kk-theory.md eqs. 13-14): the ZLP ``N0 R``
holds the electrons that lost no energy, R has unit area and N0 is the ZLP's integral. Everything
after (log-ratio thickness, Fourier-log deconvolution, Kramers-Kronig) needs N0 and often R, per
pixel. This module gives them as array-API kernels (NumPy, CuPy, array-api-strict):

* :func:`centre_kernel`: the ZLP centre to a fraction of a channel, from a parabola fitted to the
  logarithm of the peak's top channels (exact for a Gaussian top), not the arg-max channel;
* :func:`shift_kernel`: a sub-channel shift that keeps counts (Fourier phase ramp or linear
  interpolation);
* one function per ZLP model, :func:`mirror_model`, :func:`fit_model`, :func:`threshold_model`,
  :func:`reference_model` and :func:`cube_model`, in the table :data:`MODELS`, each documented in
  :func:`zlp_kernel` with when it is right and when it is wrong (Egerton 2011, sections 4.1.1
  and 5.1);
* :func:`zlp_kernel`: N0 and ``N0 R(E)`` by the model named in ``method`` (a look-up in
  :data:`MODELS`).

The xarray-facing side (``zlp=`` of the public functions, :func:`eelsgpu.align_zlp`) is in
:mod:`eelsgpu.analysis.zlp`.

A pixel whose ZLP cannot be used (NaN counts, all zero, a saturated flat top, no peak inside the
search window, a peak cut by the end of the spectrum) gets ``valid = False`` and NaN results; the
run goes on.

Units: energies and widths in eV, counts per channel in and out, N0 in counts.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=0.5,
...                                   drift_eV=0.123, n_channels=1024, dtype=np.float64)
>>> out = zlp_kernel(sim["signal"].values[None], sim["energy"].values, method="mirror")
>>> round(float(out["zlp_centre_eV"][0]), 3)
0.123
>>> bool(abs(out["zlp_intensity"][0] / float(sim["true_zlp_intensity"]) - 1) < 1e-3)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._xp import array_namespace, erf, fft_module, is_numpy, take_rows, tiny
from ..errors import InputError, NoZeroLossPeakError
from . import _fused
from ._sync import all_rows, host_axis, host_decides

__all__ = [
    "BACKGROUND_LIMITS",
    "CHECK_LIMITS",
    "GAIN_SIDE_MAX_SHARE",
    "GAIN_SIDE_MIN_FWHM",
    "METHODS",
    "MIN_ZLP_SNR",
    "OFF_AXIS_GAIN_SIDE_FWHM",
    "OFF_AXIS_GAIN_SIDE_SHARE",
    "MODELS",
    "SEARCH_EV",
    "ZlpInput",
    "ZlpModel",
    "centre_kernel",
    "cube_model",
    "fit_model",
    "mirror_model",
    "reference_model",
    "shift_kernel",
    "threshold_model",
    "background_check",
    "channel_noise",
    "channel_variance",
    "zlp_kernel",
    "zlp_model_checks",
]

#: Default energy window (eV, on the stored axis) in which the ZLP maximum is looked for.
SEARCH_EV = (-5.0, 5.0)
#: The name of the compiled CPU form of :func:`_away_stats` for NumPy arrays
#: (:mod:`eelsgpu.kernels._fused`, :mod:`eelsgpu.engine.cpu_fused`).
CPU_AWAY_STATS_NAME = "cpu_zlp_away_stats"
#: ... and of the sums of :func:`background_check`.
CPU_BACKGROUND_NAME = "cpu_zlp_background_sums"


# --------------------------------------------------------------------------- centre
#: A ZLP candidate is refused when the window starts less than this many FWHM below its centre
#: (the gain side is cut: no ZLP model can be made, and a window that starts on the loss flank of
#: a ZLP makes its falling tail look like a peak's).
GAIN_SIDE_MIN_FWHM = 1.5
#: ... or when anything on its gain side, more than 3 FWHM below the centre, reaches this share
#: of its height: nobody gains energy, so below a true ZLP there is only dark noise (measured on
#: every real file of shared/data: at most 0.026, the WS2 monochromated ZLP's Lorentzian tail);
#: a loss peak (a plasmon in a window that starts above the ZLP) has the ZLP's tail below it.
GAIN_SIDE_MAX_SHARE = 0.1
#: A ZLP found away from 0 eV (an uncalibrated axis, or a window that starts above the ZLP and
#: holds a loss peak instead) must be clearly one: the window must hold at least this many FWHM
#: below it ...
OFF_AXIS_GAIN_SIDE_FWHM = 5.0
#: ... and nothing there, beyond 5 FWHM below it, may reach this share of its height (measured on
#: every real file: at most 8.6e-3 for the WS2 monochromated ZLPs with their long tails, 2.6e-3
#: for the others; a Drude metal's plasmon in a window that starts above the ZLP has its own
#: low-energy losses there, a few per cent of its height).
OFF_AXIS_GAIN_SIDE_SHARE = 0.005
#: ... or when its height over the spectrum's mean level is below this many standard deviations of
#: the channel noise (the noise from fourth differences away from the peak): rosettasciio's
#: noise-only test spectrum scores 1.3, real ZLPs 2e3 to 6e5, a synthetic 1e5-count ZLP at
#: t/lambda = 3 about 60.
MIN_ZLP_SNR = 10.0


def _clamp(xp: Any, x: Any, lo: float, hi: float) -> Any:
    """``min(max(x, lo), hi)`` elementwise: one ``clip`` (one launch) on a device, the two
    ufuncs on NumPy (array-api-compat's clip is several times slower there); the same values."""
    if is_numpy(xp):
        return xp.minimum(xp.maximum(x, lo), hi)
    return xp.clip(x, lo, hi)


def _zero_non_finite(xp: Any, y: Any) -> Any:
    """``y`` with its non-finite values zeroed: on NumPy ``y`` itself where every value is
    finite (one summing pass instead of a test and a copy; a NaN or inf makes the sum so), else
    a ``where`` (on a device always: no host decision)."""
    if is_numpy(xp) and y.dtype.kind == "f" and math.isfinite(float(np.sum(y))):
        return y
    return xp.where(xp.isfinite(y), y, 0.0)


def _nan_where(xp: Any, ok: Any, maps: dict[str, Any], fill: float = math.nan) -> dict[str, Any]:
    """Each (n,) map of ``maps`` where ``ok`` (n,) holds, ``fill`` (NaN) elsewhere: the maps of
    one dtype in one ``where`` over their stack (the results are column views of it), so the
    number of operations does not grow with the number of maps; the values are those of a
    ``where`` each."""
    groups: dict[str, list[str]] = {}
    for key, value in maps.items():
        groups.setdefault(str(value.dtype), []).append(key)
    out: dict[str, Any] = {}
    for keys in groups.values():
        if len(keys) == 1:
            out[keys[0]] = xp.where(ok, maps[keys[0]], fill)
            continue
        masked = xp.where(ok[:, None], xp.stack([maps[k] for k in keys], axis=-1), fill)
        out.update({k: masked[:, i] for i, k in enumerate(keys)})
    return {k: out[k] for k in maps}


def _peak_in(xp: Any, block: Any, i0: int, i1: int) -> Any:
    """The arg-max channel of each row among channels i0..i1 (non-finite values never win)."""
    win = block[:, i0 : i1 + 1]
    return xp.argmax(xp.where(xp.isfinite(win), win, -math.inf), axis=-1) + i0


def _first_dominant_peak(xp: Any, block: Any) -> Any:
    """The ZLP candidate of a spectrum whose axis may be anywhere: the highest channel of the
    first run of channels at or above half the spectrum's maximum. The ZLP is the first peak of
    a spectrum (nothing lies below it); a thick specimen's plasmon may be higher than its ZLP,
    but the ZLP then still reaches half the maximum first."""
    n, n_e = block.shape
    y = xp.where(xp.isfinite(block), block, -math.inf)
    top = xp.max(y, axis=-1)
    above = y >= 0.5 * top[:, None]
    idx = xp.arange(n_e)[None, :]
    a = xp.argmax(xp.astype(above, xp.int8), axis=-1)  # first channel of the run
    after = (~above) & (idx > a[:, None])
    b = xp.where(xp.any(after, axis=-1), xp.argmax(xp.astype(after, xp.int8), axis=-1), n_e)
    run = (idx >= a[:, None]) & (idx < b[:, None])
    return xp.argmax(xp.where(run, y, -math.inf), axis=-1)


def _centre_at(xp: Any, block: Any, e_first: float, d: float, p: Any, span: int) -> dict[str, Any]:
    """Everything :func:`centre_kernel` returns, for the peak channels ``p`` (n,): sub-channel
    centre, FWHM, the half-maximum crossings, and ``valid`` by shape alone (finite, positive, a
    local maximum, not saturated, both half-maximum crossings inside the window). ``span``: how
    far (channels) from its peak a pixel's half-maximum crossings are looked for; ``e_first``
    and ``d`` the axis' first energy and channel width (eV, host floats)."""
    n, n_e = block.shape
    dt = block.dtype
    finite = xp.isfinite(xp.sum(block, axis=-1))  # one pass: a NaN or inf makes the sum so
    # everything else on the channels within hw of each pixel's own peak, gathered once (a
    # window that moves with the peak: no slab bounds read back from the device)
    hw = max(32, span)
    offs = xp.arange(-hw, hw + 1)
    pos = p[:, None] + offs[None, :]
    win = xp.take_along_axis(block, _clamp(xp, pos, 0, n_e - 1), axis=-1)
    # (0 outside the spectrum or non-finite; the peak's neighbours are plain columns of it)
    win = xp.where((pos >= 0) & (pos < n_e) & xp.isfinite(win), win, 0.0)
    ymax = win[:, hw]
    half = 0.5 * ymax
    big = 4 * hw
    under = win < half[:, None]  # (one compare for both sides: their columns are views)
    left = xp.max(xp.where(under[:, :hw], offs[:hw], -big), axis=-1)
    right = xp.min(xp.where(under[:, hw + 1 :], offs[hw + 1 :], big), axis=-1)

    # crossings interpolated linearly for the FWHM (offsets beyond hw: the pixel is not valid):
    # the counts at the two channels of each crossing, in one gather
    left_c, right_c = xp.maximum(left, -hw), xp.minimum(right, hw)
    # (the four channels' offsets in one add of a constant row)
    idx = xp.stack([left_c, left_c, right_c, right_c], axis=-1) + xp.asarray(
        [hw, hw + 1, hw, hw - 1], dtype=left_c.dtype
    )
    g = xp.take_along_axis(win, idx, axis=-1)
    outer, inner = g[:, 0::2], g[:, 1::2]  # (yl, yr) below half, (yl1, yr1) at or above it
    rising = inner > outer
    frac = xp.where(rising, (half[:, None] - outer) / xp.where(rising, inner - outer, 1.0), 0.0)
    fwhm_ch = xp.astype(right - left, dt) - frac[:, 0] - frac[:, 1]

    y_l1, y_r1 = win[:, hw - 1], win[:, hw + 1]
    five = win[:, hw - 2 : hw + 3]  # the peak and two channels either side
    positive = five > 0  # (n, 5): which of the five are above zero (columns: views)
    local_max = (p >= 1) & (p <= n_e - 2) & (ymax >= y_l1) & (ymax >= y_r1)
    # a saturated detector: three or more channels at exactly the maximum
    saturated = xp.sum(xp.astype(win == ymax[:, None], xp.int32), axis=-1) >= 3
    valid = finite & positive[:, 2] & local_max & ~saturated & (left > -big) & (right < big)

    # parabola vertex on log(counts): 3 points, or a 5-point least-squares fit for wide peaks
    logs = xp.log(xp.maximum(five, float(np.finfo(np.float32).tiny)))
    pos3 = positive[:, 1] & positive[:, 3] & positive[:, 2]
    pos5 = pos3 & positive[:, 0] & positive[:, 4] & (p >= 2) & (p <= n_e - 3)
    # 3 points (on log where all positive, else on the counts themselves)
    a3 = xp.where(pos3[:, None], logs[:, 1:4], five[:, 1:4])
    a_m, a_0, a_p = a3[:, 0], a3[:, 1], a3[:, 2]
    den3 = a_m - 2.0 * a_0 + a_p
    neg3 = den3 < 0
    delta3 = xp.where(neg3, 0.5 * (a_m - a_p) / xp.where(neg3, den3, -1.0), 0.0)
    # 5 points: y = c0 + c1 x + c2 x^2 on x = -2..2
    ll2, ll1, l0, lr1, lr2 = logs[:, 0], logs[:, 1], logs[:, 2], logs[:, 3], logs[:, 4]
    c1 = (-2.0 * ll2 - ll1 + lr1 + 2.0 * lr2) / 10.0
    c2 = (2.0 * ll2 - ll1 - 2.0 * l0 - lr1 + 2.0 * lr2) / 14.0
    neg2 = c2 < 0
    delta5 = xp.where(neg2, -c1 / (2.0 * xp.where(neg2, c2, -1.0)), 0.0)
    use5 = pos5 & (fwhm_ch >= 8.0)
    delta = _clamp(xp, xp.where(use5, delta5, delta3), -1.0, 1.0)
    centre = e_first + (xp.astype(p, dt) + delta) * d
    return {
        "zlp_centre_eV": centre,
        "valid": valid,
        "peak_index": p,
        "fwhm_eV": fwhm_ch * d,
        "half_left": p + left,
        "half_right": p + right,
        "height": ymax,
    }


def _plausible(
    xp: Any, block: Any, e: Any, cen: dict[str, Any], off_axis: bool = False
) -> dict[str, Any]:
    """``cen`` with ``valid`` narrowed to peaks that can be a ZLP (see :func:`centre_kernel`) and
    the evidence: ``zlp_snr`` (height over the channel noise) and ``gain_share`` (the largest
    count more than 3 FWHM below the centre over the height); ``noise`` the channels' noise
    (:func:`channel_noise`, measured here once for the block). ``e`` (n_E,) the axis (eV) in the
    block's dtype. ``off_axis``: the stricter tests of a ZLP found away from 0 eV."""
    c = cen["zlp_centre_eV"]
    w = xp.where(cen["valid"], cen["fwhm_eV"], 1.0)
    w = xp.where(w > 0, w, 1.0)
    c = xp.where(cen["valid"], c, 0.0)
    y = _zero_non_finite(xp, block)
    # the energy from the centre, in FWHM: on NumPy only on the channels up to the end of the
    # block's last ZLP core (the slab of _away_stats; beyond it every x is above 3, so nothing
    # below is lost there), elsewhere on the whole row (no host numbers)
    slab = _core_slab(xp, e, c, w)
    cols = max(1, slab[1]) if host_decides(xp) else y.shape[-1]
    whole = cols == y.shape[-1]
    x = ((e[None, :] if whole else e[None, :cols]) - c[:, None]) / w[:, None]
    yx = y if whole else y[:, :cols]
    h = cen["height"]
    hh = xp.where(h > 0, h, 1.0)
    gain_side = x < -3.0
    gain_max = xp.max(xp.where(gain_side, yx, -math.inf), axis=-1)
    # (a gain side beyond 3 FWHM exists where the window starts there: x rises along the row;
    # room > 3 is x[:, 0] < -3, its first column)
    gain_share = xp.where(gain_side[:, 0], gain_max / hh, 0.0)
    stats = _away_stats(xp, y, x, e, c, w, level=True, slab=slab)
    sigma = xp.sqrt(stats["noise"][0])
    # (a noise-free spectrum has no noise: its floor is the rounding of float32 data)
    snr = (h - stats["level"]) / xp.maximum(sigma, 1e-7 * xp.abs(h) + tiny(str(block.dtype)))
    # (room >= the minimum is x[:, 0] <= -the minimum: a negation is exact)
    ok = (
        (x[:, 0] <= -GAIN_SIDE_MIN_FWHM)
        & (gain_share <= GAIN_SIDE_MAX_SHARE)
        & (snr >= MIN_ZLP_SNR)
    )
    if off_axis:
        room = -x[:, 0]  # (how far the window reaches below the centre, in FWHM)
        far_max = xp.max(xp.where(x < -5.0, yx, -math.inf), axis=-1)
        far_share = xp.where(room > 5.0, far_max / hh, 0.0)
        ok = ok & (room >= OFF_AXIS_GAIN_SIDE_FWHM) & (far_share <= OFF_AXIS_GAIN_SIDE_SHARE)
    out = dict(cen)
    out["valid"] = cen["valid"] & ok
    out["zlp_snr"] = snr
    out["gain_share"] = gain_share
    out["noise"] = stats["noise"]
    out["finite"] = y  # the block with non-finite counts zeroed, for the block's later checks
    return out


def _median_rows(xp: Any, a: Any) -> Any:
    """The median of each row of ``a`` (n, m): a partial sort (``numpy.partition``, O(m)) on
    NumPy, a sort elsewhere (the array API has neither median nor partition)."""
    m = a.shape[-1]
    k = ((m - 1) // 2, m // 2)
    if is_numpy(xp):
        # one k-th element (NumPy's SIMD partition; given two it takes a generic path, 5-7x
        # slower, measured on 512-2048 channels), the lower middle of an even row the largest
        # value left of it: the same two order statistics, so the same median to the bit
        s = np.partition(a, k[1], axis=-1)
        upper = s[:, k[1]]
        lower = upper if k[0] == k[1] else np.max(s[:, : k[1]], axis=-1)
        return 0.5 * (lower + upper)
    s = xp.sort(a, axis=-1)
    return 0.5 * (s[:, k[0]] + s[:, k[1]])


def _core_slab(xp: Any, e: Any, c: Any, w: Any) -> tuple[int, int]:
    """The channels ``a:b`` (host ints) that hold every row's ZLP core, |E - c| <= 3 W, on
    NumPy (its bounds are host numbers, free there); the whole row elsewhere (no sync)."""
    n, n_e = c.shape[0], e.shape[0]
    a, b = 0, n_e
    if host_decides(xp) and n and n_e > 1:
        e0, d = float(e[0]), float(e[1] - e[0])
        lo, hi = float(xp.min(c - 3.0 * w)), float(xp.max(c + 3.0 * w))
        if math.isfinite(lo) and math.isfinite(hi):
            a = min(n_e, max(0, math.floor((lo - e0) / d)))
            b = min(n_e, max(a, math.ceil((hi - e0) / d) + 1))
    return a, b


def _away_stats(
    xp: Any,
    y: Any,
    x: Any,
    e: Any,
    c: Any,
    w: Any,
    level: bool = False,
    slab: tuple[int, int] | None = None,
    compiled: bool = True,
) -> dict[str, Any]:
    """The channels more than 3 FWHM ``w`` from the centre ``c`` of the finite spectra ``y``
    (n, n_E): ``noise`` = :func:`channel_noise`'s ``(v_out, y_out)`` and, with ``level``, the
    mean count there. ``x`` (n, n_E) the energy from the centre in FWHM when already made
    (None: from ``e``, the axis in eV in the block's dtype).

    Written for speed (it runs once per block): the sums away from the ZLP are the whole row's
    minus the core's; on NumPy the core is summed on a slab of channels that holds every row's
    core (its bounds are host numbers, free there), on a device over the whole row (no sync);
    the median is taken on every 4th channel of the whole row (the ZLP's few channels do not
    move a median). ``compiled``: may use the compiled CPU form (:mod:`eelsgpu.engine.cpu_fused`)
    where the engine registered one."""
    dt = y.dtype
    n, n_e = y.shape
    if compiled and is_numpy(xp):
        fused = _fused.lookup(CPU_AWAY_STATS_NAME, xp)
        if fused is not None:  # (the compiled form: one pass per row, the same bits)
            ab = _core_slab(xp, e, c, w) if slab is None else slab
            got = fused(y, e, c, w, level, ab)
            if got is not None:
                return got
    if is_numpy(xp):  # the same sums in two buffers (out=): 2 block-sized arrays, not 7
        v = np.add(y[:, :-4], y[:, 4:])
        t = np.add(y[:, 1:-3], y[:, 3:-1])
        t *= 4.0
        v -= t
        v += np.multiply(y[:, 2:-2], 6.0, out=t)
        v *= v
    else:
        d4 = (y[:, :-4] + y[:, 4:]) - 4.0 * (y[:, 1:-3] + y[:, 3:-1]) + 6.0 * y[:, 2:-2]
        v = d4 * d4
    med = _median_rows(xp, v[:, ::4]) / 0.4549  # chi2(1): median -> mean
    v = xp.minimum(v, 25.0 * med[:, None])
    yp = xp.maximum(y, 0.0)
    a, b = _core_slab(xp, e, c, w) if slab is None else slab
    xs = x[:, a:b] if x is not None else (e[None, a:b] - c[:, None]) / w[:, None]
    cf = xp.astype(xp.abs(xs) <= 3.0, dt)  # the core |E - c| <= 3 W
    n_core = xp.sum(cf, axis=-1)
    yp_core = xp.sum(yp[:, a:b] * cf, axis=-1)
    # fourth difference j covers channels j..j+4, centred on j + 2: the core of channels
    # max(a, 2)..min(b, n_E - 2)
    av, bv = max(a, 2), min(b, n_e - 2)
    if bv > av:
        cfv = cf[:, av - a : bv - a]
        v_core = xp.sum(v[:, av - 2 : bv - 2] * cfv, axis=-1)
        n_vcore = xp.sum(cfv, axis=-1)
    else:
        v_core = n_vcore = xp.zeros((n,), dtype=dt)
    v_out = (xp.sum(v, axis=-1) - v_core) / 70.0 / xp.maximum(float(n_e - 4) - n_vcore, 1.0)
    n_away = xp.maximum(float(n_e) - n_core, 1.0)
    y_out = (xp.sum(yp, axis=-1) - yp_core) / n_away
    out = {"noise": (xp.maximum(v_out, 0.0), xp.maximum(y_out, tiny(str(dt))))}
    if level:
        y_core = xp.sum(y[:, a:b] * cf, axis=-1)
        out["level"] = (xp.sum(y, axis=-1) - y_core) / n_away
    return out


def centre_kernel(
    block: Any,
    energy_eV: Any,
    *,
    search_eV: tuple[float, float] | None = None,
    axis_eV: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Centre of the zero-loss peak of each spectrum, to a fraction of a channel.

    Where the ZLP is looked for (``search_eV``):

    * ``None`` (default): first within :data:`SEARCH_EV` (-5..5 eV, a calibrated axis); a pixel
      with no ZLP there is searched over the whole window, where its ZLP is the spectrum's
      dominant narrow peak: the highest channel of the first run of channels at or above half
      the spectrum's maximum (the ZLP is the first peak of a spectrum; a thick specimen's plasmon
      may be higher, but the ZLP reaches half of it first). A centre beyond :data:`SEARCH_EV` is
      reported as ``axis_offset`` (the axis was not calibrated);
    * ``(lo, hi)``: only there (eV on the stored axis).

    The centre is the vertex of a parabola fitted to ln(counts) of the top channels (3 channels
    when the peak's FWHM spans fewer than 8 channels, a least-squares fit to 5 otherwise). The
    logarithm makes the fit exact for a Gaussian top (Egerton 2011, section 4.1.1, fits the ZLP
    top the same way); the arg-max channel alone is quantised to whole channels.

    A candidate is a ZLP only if it is a clean, local, unsaturated maximum whose half-maximum
    crossings lie inside the window, and

    * the window starts at least :data:`GAIN_SIDE_MIN_FWHM` FWHM below it (a window that starts
      on or above the ZLP has none: its pixels are refused, not given a loss peak as "ZLP");
    * nothing more than 3 FWHM below it reaches :data:`GAIN_SIDE_MAX_SHARE` of its height (no
      electron gains energy: below a ZLP there is only dark noise);
    * found away from 0 eV (the whole-window search), it must be clearly a ZLP: at least
      :data:`OFF_AXIS_GAIN_SIDE_FWHM` FWHM of gain side in the window, and nothing beyond
      5 FWHM below it reaching :data:`OFF_AXIS_GAIN_SIDE_SHARE` of its height (a loss peak of a
      window that starts above the ZLP, a sharp metal plasmon say, has its own low losses
      there);
    * its height over the spectrum's mean level away from it is at least :data:`MIN_ZLP_SNR`
      times the channel noise (from fourth differences more than 3 FWHM from it): a
      significance test that refuses noise-only spectra.

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra (counts per channel), any array-API namespace.
    energy_eV : array, shape (n_E,)
        Uniform, increasing energy axis (eV).
    search_eV : (float, float) or None
        Where the ZLP maximum may be (eV on the stored axis); None: see above.
    axis_eV : (float, float), optional
        The axis' first energy and channel width (eV) as host floats, when the caller has them
        (a device array is then never read back: :func:`~._sync.host_axis`).

    Returns
    -------
    dict
        ``zlp_centre_eV`` (n,) in eV (NaN where not valid), ``valid`` (n,) bool,
        ``axis_offset`` (n,) bool (a valid centre outside :data:`SEARCH_EV`), ``zlp_snr`` (n,)
        (height over the channel noise), and for the other kernels ``peak_index`` (n,) int (the
        arg-max channel), ``fwhm_eV`` (n,) the FWHM from the half-maximum crossings (eV),
        ``half_left`` / ``half_right`` (n,) int, the last channel left of the peak and the first
        right of it below half maximum, and ``noise``, :func:`channel_noise` of each spectrum
        about its peak (the channels' white-noise variance and mean level more than 3 FWHM
        away), which the checks of the ZLP model reuse; host numbers: ``peak_bound`` (int, the
        highest channel a valid peak can sit in) and ``axis_eV`` (the axis' first energy and
        channel width, eV).

    Notes
    -----
    ``valid`` is also False for a pixel with NaN counts, no positive maximum, a maximum at the
    edge of the search window that is not a local maximum (no peak inside it), or a flat top of
    three equal channels (a saturated detector).

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-50, 150) * 0.05
    >>> y = np.exp(-0.5 * ((e - 0.0123) / 0.2) ** 2)[None]
    >>> round(float(centre_kernel(y, e)["zlp_centre_eV"][0]), 4)
    0.0123
    >>> far = np.exp(-0.5 * ((e - 6.0) / 0.2) ** 2)[None]
    >>> out = centre_kernel(far, e)  # 6 eV off a calibrated axis: found, and said so
    >>> round(float(out["zlp_centre_eV"][0]), 3), bool(out["axis_offset"][0])
    (6.0, True)
    """
    xp = array_namespace(block)
    n, n_e = block.shape
    e_first, d = host_axis(energy_eV, axis_eV)
    dt = block.dtype
    e = xp.astype(energy_eV, dt, copy=False)
    lo, hi = SEARCH_EV if search_eV is None else (float(search_eV[0]), float(search_eV[1]))
    i0 = max(0, math.ceil((lo - e_first) / d - 1e-6))
    i1 = min(n_e - 1, math.floor((hi - e_first) / d + 1e-6))
    if i1 >= i0:
        p = _peak_in(xp, block, i0, i1)
        cen = _plausible(xp, block, e, _centre_at(xp, block, e_first, d, p, i1 - i0 + 1))
    else:  # the search range is outside the window: nothing found there
        cen = None
    bound = i1  # the highest channel a ZLP's peak can sit in (host: no sync to know it)
    # (one host decision, a sync on a device: the whole-window search is a second centre of the
    # block that most blocks, on a calibrated or shifted axis, do not need)
    if search_eV is None and (cen is None or not bool(xp.all(cen["valid"]))):
        # the pixels without a ZLP near 0 eV: the whole window's first dominant peak
        p2 = _first_dominant_peak(xp, block)
        span = min(n_e, max(64, round(10.0 / d)))
        far = _plausible(xp, block, e, _centre_at(xp, block, e_first, d, p2, span), off_axis=True)
        bound = n_e - 1
        if cen is None:
            cen = far
        else:  # the pixels with a ZLP near 0 eV keep it
            keep = cen["valid"]
            merged = {
                k: xp.where(keep, cen[k], far[k]) for k in cen if k not in ("noise", "finite")
            }
            merged["finite"] = cen["finite"]  # (both the same block's)
            merged["noise"] = tuple(
                xp.where(keep, a, b) for a, b in zip(cen["noise"], far["noise"], strict=True)
            )
            cen = merged
    if cen is None:
        zi = xp.zeros((n,), dtype=xp.int64)
        nan = xp.full((n,), math.nan, dtype=dt)
        no = xp.zeros((n,), dtype=xp.bool)
        return {
            "zlp_centre_eV": nan,
            "valid": no,
            "axis_offset": no,
            "zlp_snr": xp.zeros((n,), dtype=dt),
            "peak_index": zi,
            "fwhm_eV": nan,
            "half_left": zi - 1,
            "half_right": zi + n_e,
            "noise": (xp.zeros((n,), dtype=dt), xp.ones((n,), dtype=dt)),
            "peak_bound": n_e - 1,
            "axis_eV": (e_first, d),
        }
    valid = cen["valid"]
    c = cen["zlp_centre_eV"]
    return {
        "zlp_centre_eV": xp.where(valid, c, math.nan),
        "valid": valid,
        "axis_offset": valid & ((c < SEARCH_EV[0]) | (c > SEARCH_EV[1])),
        "zlp_snr": cen["zlp_snr"],
        "peak_index": cen["peak_index"],
        "fwhm_eV": xp.where(valid, cen["fwhm_eV"], math.nan),
        "half_left": cen["half_left"],
        "half_right": cen["half_right"],
        "noise": cen["noise"],
        "finite": cen["finite"],
        "peak_bound": bound,
        "axis_eV": (e_first, d),
    }


# --------------------------------------------------------------------------- shift
def shift_kernel(
    block: Any,
    shift_eV: Any,
    method: str = "fourier",
    *,
    dispersion_eV: float,
    fill_value: float = math.nan,
) -> Any:
    """Shift each spectrum along energy by a fraction of a channel, keeping counts.

    ``out(E) = in(E + shift)``: a feature at ``E = s`` moves to 0 when ``shift_eV = s``.

    ``"fourier"`` multiplies the transform by a phase ramp (exact for a band-limited spectrum; the
    straight line through the first and last channel is taken off first and shifted separately, so
    the periodic wrap of the discrete transform meets no step). ``"linear"`` interpolates between
    the two neighbouring channels; it keeps the sum of counts exactly but widens a sharp peak by
    up to a channel. Both keep the total counts away from the ends. Channels whose source lies
    outside the measured window are set to ``fill_value`` (NaN by default: there is no data).

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra (counts per channel).
    shift_eV : float or array, shape (n,)
        Shift per spectrum in eV.
    method : {"fourier", "linear"}
    dispersion_eV : float
        Channel width (eV).
    fill_value : float
        Value of the channels that have no source inside the window.

    Returns
    -------
    array, shape (n, n_E)

    Examples
    --------
    >>> import numpy as np
    >>> y = np.zeros((1, 16)); y[0, 8] = 1.0
    >>> out = shift_kernel(y, np.array([1.0]), "linear", dispersion_eV=0.5)
    >>> out[0, 6:9].tolist()
    [1.0, 0.0, 0.0]
    """
    xp = array_namespace(block)
    n, n_e = block.shape
    dt = block.dtype
    s = (
        xp.asarray(shift_eV, dtype=dt)
        if not hasattr(shift_eV, "shape")
        else xp.astype(shift_eV, dt)
    )
    s = xp.broadcast_to(xp.reshape(s, (-1,)), (n,)) / dispersion_eV  # in channels
    s_finite = xp.isfinite(s)
    s = xp.where(s_finite, s, 0.0)
    idx = xp.astype(xp.arange(n_e), dt)
    if method == "linear":
        src = idx[None, :] + s[:, None]  # source position of each output channel
        j = xp.floor(src)
        f = src - j
        j0 = xp.astype(xp.clip(j, 0, n_e - 1), xp.int64)
        j1 = xp.astype(xp.clip(j + 1, 0, n_e - 1), xp.int64)
        out = (1.0 - f) * xp.take_along_axis(block, j0, axis=-1) + f * xp.take_along_axis(
            block, j1, axis=-1
        )
    elif method == "fourier":
        first, last = block[:, :1], block[:, n_e - 1 :]
        slope = (last - first) / (n_e - 1)
        fft = fft_module(xp)
        spec = fft.rfft(block, axis=-1)
        m = spec.shape[-1]
        ctype = spec.dtype
        # the straight line first + slope i through the end channels is shifted exactly, apart
        # from the rest (so the periodic wrap of the transform meets no step); it is taken off in
        # Fourier space, where it is slope x (the transform of the channel index) plus a constant
        # at k = 0 that the phase ramp leaves alone: no pass over the spectra in real space
        ramp = xp.astype(fft.rfft(xp.astype(xp.arange(n_e), xp.float64)), ctype)[None, :]
        line = xp.astype(slope, ctype) * ramp
        # the phase ramp exp(2 pi i k s / N) as an outer product of two short tables
        # (k = 32 a + b), so that only 65 sines and cosines per spectrum are taken
        step = (2.0 * math.pi / n_e) * s

        def expi(t):
            return xp.astype(xp.cos(t), ctype) + xp.astype(xp.sin(t), ctype) * 1j

        n_a = -(-m // 32)
        fine = expi(step[:, None] * xp.astype(xp.arange(32), dt)[None, :])
        coarse = expi(step[:, None] * xp.astype(xp.arange(n_a) * 32, dt)[None, :])
        rot = xp.reshape(coarse[:, :, None] * fine[:, None, :], (n, n_a * 32))[:, :m]
        # (spectrum - line) shifted, + the line's transform; the line moves by slope s as a whole
        out = fft.irfft((spec - line) * rot + line, n=n_e, axis=-1) + slope * s[:, None]
    else:
        raise ValueError(f"shift method must be 'fourier' or 'linear', not {method!r}")
    # channels whose source lies outside the window: only within max|s| of the ends
    lo_src = -s - 1e-3  # output channel i is inside when lo_src <= i <= hi_src (1e-3: rounding)
    hi_src = (n_e - 1) + 1e-3 - s
    if not bool(xp.all(s_finite)):
        out = xp.where(s_finite[:, None], out, fill_value)
    h = int(math.ceil(float(xp.max(xp.abs(s))))) + 2 if n else 0
    if h == 0:
        return out
    if 2 * h >= n_e:  # shifts of half the window or more: the whole row
        ok = (idx[None, :] >= lo_src[:, None]) & (idx[None, :] <= hi_src[:, None])
        return xp.where(ok, out, fill_value)
    head = out[:, :h]
    head = xp.where(idx[None, :h] >= lo_src[:, None], head, fill_value)
    tail = out[:, n_e - h :]
    tail = xp.where(idx[None, n_e - h :] <= hi_src[:, None], tail, fill_value)
    return xp.concat([head, out[:, h : n_e - h], tail], axis=-1)


# --------------------------------------------------------------------------- ZLP models
def _cdf_at(xp, y, cs, q):
    """Integral of the counts from the start of the spectrum to the position ``q`` (in channels,
    0 = the lower edge of channel 0), with a parabolic density inside the channel that keeps the
    counts of it and its two neighbours (as a piecewise-parabolic reconstruction does)."""
    n_e = y.shape[-1]
    qc = _clamp(xp, q, 0.0, float(n_e) - 1e-9)
    j = xp.floor(qc)
    x = qc - j - 0.5  # position inside channel j, -1/2..1/2
    ji = xp.astype(j, xp.int64)
    a0 = xp.take_along_axis(y, ji, axis=-1)
    am = xp.take_along_axis(y, xp.maximum(ji - 1, 0), axis=-1)
    ap = xp.take_along_axis(y, xp.minimum(ji + 1, n_e - 1), axis=-1)
    part = (
        a0 * (x + 0.5)
        + 0.25 * (ap - am) * (x * x - 0.25)
        + 0.5 * (ap - 2.0 * a0 + am) * ((x * x * x + 0.125) / 3.0 - (x + 0.5) / 12.0)
    )
    return xp.where(q <= 0.0, 0.0, xp.take_along_axis(cs, ji, axis=-1) + part)


def _mirror(xp, y, e, c, d, w, q_extra=None, u=None):
    """Gain side as measured, loss side = the gain side mirrored about the centre.

    A mirrored channel holds the counts of its mirror image interval on the gain side, from the
    cumulative counts with a parabolic density inside a channel; the model's sum is then exact
    for a symmetric peak whatever the sub-channel centre (the pieces telescope). Only the first
    ``w`` channels (beyond the highest possible centre) can be mirrored, so the work is done on
    them and on a slab of ``w`` channels above the peak, not on the whole spectrum.

    Returns the model (n, n_E) and the cumulative counts at the positions ``q_extra`` (n, m)
    (in channels; None: not asked for), looked up with the mirror's own. ``u`` = (c - e[0]) / d
    when the caller made it (the same values)."""
    n, n_e = y.shape
    w = min(w, n_e)
    head = y[:, :w]
    cs = xp.cumulative_sum(head, axis=-1, include_initial=True)
    u = (c - e[0]) / d if u is None else u
    # (2 u is 2 (c - e[0]) / d exactly: a scaling by 2)
    a = 2.0 * u  # the mirror of channel i starts at edge a - i
    k = xp.astype(xp.floor(u + 0.5), xp.int64)  # channel holding the centre
    t = xp.arange(-1, w)
    i = k[:, None] + t[None, :]  # slab: channels from the centre's up (and the one below)
    q = a[:, None] - xp.astype(i, y.dtype)
    if q_extra is not None:
        q = xp.concat([q, q_extra], axis=-1)
    # channel i's mirror interval is [q_i, q_i + 1] = [q_i, q_(i-1)]: one look-up per edge
    cdf = _cdf_at(xp, head, cs, q)
    extra = None
    if q_extra is not None:
        extra = cdf[:, w + 1 :]
        cdf = cdf[:, : w + 1]
    slab = cdf[:, :-1] - cdf[:, 1:]
    # the model is zero above channel k + w < 2 w: build it on the first 2 w channels only
    w2 = min(n_e, 2 * w)
    off = xp.arange(w2)[None, :] - k[:, None]
    loss = xp.take_along_axis(slab, _clamp(xp, off, 0, w - 1), axis=-1)
    loss = xp.where(off < w, loss, 0.0)
    model = xp.where(e[None, :w2] <= c[:, None], y[:, :w2], loss)
    if w2 < n_e:
        model = xp.concat([model, xp.zeros((n, n_e - w2), dtype=model.dtype)], axis=-1)
    return model, extra


#: The smoothing half-widths (channels) :func:`_first_minimum` sums exactly on a device (wider
#: ones by differences of cumulative sums, as on NumPy).
_EXACT_SMOOTHING = 8


def _first_minimum(xp, y, p, fwhm_ch, d, active=None):
    """Index of the first minimum after the peak of the spectrum smoothed over ~FWHM/2 channels,
    looked for within 25 eV of the peak; ``n_E`` where the spectrum only falls (vacuum).

    On NumPy the smoothed spectrum is built on fixed slices of channels shared by the whole
    block (the peaks differ by a few channels), a chunk at a time from the peaks up: the first
    minimum of a real spectrum lies a few eV above the ZLP, so the 25 eV range is rarely read to
    its end (the chunks, the smoothing widths in use and when to stop are host decisions). On a
    device (:func:`_first_minimum_rows`) the whole 25 eV range of every pixel at once, with no
    sync. Pixels not ``active`` (no usable ZLP) are not searched (their result is ``n_E``)."""
    if not host_decides(xp):
        return _first_minimum_rows(xp, y, p, fwhm_ch, d, active)
    n, n_e = y.shape
    fw = xp.where(xp.isfinite(fwhm_ch), fwhm_ch, 2.0)
    k = xp.astype(xp.clip(xp.round(fw / 4.0), 1.0, 64.0), xp.int64)
    width = min(n_e, max(64, int(round(25.0 / d))))
    start = xp.astype(xp.ceil(fw / 2.0), xp.int64)
    big = 2 * n_e + 1
    result = xp.full((n,), n_e, dtype=xp.int64)
    todo = xp.ones((n,), dtype=xp.bool) if active is None else active
    if not bool(xp.any(todo)):
        return result
    # channel i of pixel q may hold its minimum when start <= i - p < width and i < n_e - 1
    first = xp.where(todo, p + start, xp.full_like(p, big))
    last = xp.where(todo, xp.minimum(p + width, n_e - 1), xp.full_like(p, -1))
    a = int(xp.min(first))
    end = int(xp.max(last))
    # the smoothing widths in use (a block's pixels share one or two): between their min and max
    k_lo = int(xp.min(xp.where(todo, k, xp.full_like(k, 64))))
    k_hi = int(xp.max(xp.where(todo, k, xp.ones_like(k))))
    ks = [kv for kv in range(k_lo, k_hi + 1) if k_lo == k_hi or bool(xp.any(todo & (k == kv)))]

    def seg(lo, hi):  # y[:, lo:hi] with zeros outside the spectrum, as the smoothing counts them
        inner = y[:, max(lo, 0) : min(hi, n_e)]
        parts = [xp.zeros((n, min(-lo, hi - lo)), dtype=y.dtype)] if lo < 0 else []
        parts.append(inner)
        if hi > n_e:
            parts.append(xp.zeros((n, min(hi - n_e, hi - lo)), dtype=y.dtype))
        return inner if len(parts) == 1 else xp.concat(parts, axis=-1)

    chunk = 64 + int(xp.max(xp.where(todo, p, xp.zeros_like(p)))) - a + 1
    while a < end:
        b = min(end, a + chunk)  # candidates i in [a, b); each needs sm[i] and sm[i + 1]
        m = b + 1 - a
        sm = None
        for kv in ks:
            ys = seg(a - kv, b + 1 + kv)  # the candidates and their neighbours, +-kv
            if kv <= 8:  # a few shifted slices: exact sums, no long cumulative sum
                acc = ys[:, :m]
                for j in range(1, 2 * kv + 1):
                    acc = acc + ys[:, j : j + m]
            else:
                cs = xp.cumulative_sum(ys, axis=-1, include_initial=True)
                acc = cs[:, 2 * kv + 1 :] - cs[:, :m]
            s = acc / float(2 * kv + 1)
            sm = s if sm is None else xp.where((k == kv)[:, None], s, sm)
        i = xp.arange(a, b)[None, :]
        rel = i - p[:, None]
        ok = (sm[:, :-1] <= sm[:, 1:]) & (rel >= start[:, None]) & (rel < width) & (i < n_e - 1)
        j = xp.min(xp.where(ok & todo[:, None], i, big), axis=-1)
        found = j < big
        result = xp.where(found, j, result)
        todo = todo & ~found & (last > b)
        if not bool(xp.any(todo)):
            break
        a, chunk = b, 2 * chunk
    return result


def _first_minimum_rows(xp, y, p, fwhm_ch, d, active=None):
    """:func:`_first_minimum` as fixed-shape vector operations (a device: no host decision).

    The channels from 64 below each pixel's peak to 64 beyond its 25 eV range are gathered (a
    window that moves with the peak; zero outside the spectrum, as the host path counts them);
    the smoothing over 2k + 1 channels is the exact sum for every k up to
    :data:`_EXACT_SMOOTHING` (accumulated pair by pair, then each pixel's own k taken; exact
    sums, not differences of a cumulative sum through the ZLP, which float32 rounds), and a
    difference of cumulative sums for the rare wider k (as on NumPy)."""
    n, n_e = y.shape
    dt = y.dtype
    fw = xp.where(xp.isfinite(fwhm_ch), fwhm_ch, 2.0)
    kf = _clamp(xp, xp.round(fw / 4.0), 1.0, 64.0)  # (whole numbers 1..64)
    k = xp.astype(kf, xp.int64)
    width = min(n_e, max(64, int(round(25.0 / d))))
    start = xp.astype(xp.ceil(fw / 2.0), xp.int64)
    pad = 64
    m = width + 1  # smoothed values at p + r, r = 0..width (candidates r < width, and r + 1)
    offs = xp.arange(-pad, m + pad)
    pos = p[:, None] + offs[None, :]
    win = xp.take_along_axis(y, _clamp(xp, pos, 0, n_e - 1), axis=-1)
    win = xp.where((pos >= 0) & (pos < n_e), win, 0.0)
    # the pairs (y[i - j] + y[i + j]), j = 1..8, in one add of two stacks of views, accumulated
    # onto y[i] by one cumulative sum along the pair axis: the same additions in the same order
    # as a loop over j (a cumulative sum adds in sequence), in 5 operations instead of 17
    ks = range(1, _EXACT_SMOOTHING + 1)
    pairs = xp.stack([win[:, pad - kv : pad - kv + m] for kv in ks], axis=1) + xp.stack(
        [win[:, pad + kv : pad + kv + m] for kv in ks], axis=1
    )
    sums = xp.cumulative_sum(xp.concat([win[:, None, pad : pad + m], pairs], axis=1), axis=1)
    exact = xp.take_along_axis(
        sums, xp.reshape(xp.minimum(k, _EXACT_SMOOTHING), (n, 1, 1)), axis=1
    )[:, 0, :]
    cs = xp.cumulative_sum(win, axis=-1, include_initial=True)
    r = offs[None, pad : pad + m]  # 0..m - 1 (a view)
    wide = xp.take_along_axis(cs, r + (pad + 1) + k[:, None], axis=-1) - xp.take_along_axis(
        cs, xp.maximum(r + pad - k[:, None], 0), axis=-1
    )
    # (2 k + 1 in the data's dtype: exact for these small whole numbers)
    sm = (
        xp.where((k <= _EXACT_SMOOTHING)[:, None], exact, wide)
        / xp.astype(2.0 * kf + 1.0, dt, copy=False)[:, None]
    )
    i = p[:, None] + r[:, :-1]
    ok = (sm[:, :-1] <= sm[:, 1:]) & (r[:, :-1] >= start[:, None]) & (i < n_e - 1)
    if active is not None:
        ok = ok & active[:, None]
    big = 2 * n_e + 1
    j = xp.min(xp.where(ok, i, big), axis=-1)
    return xp.where(j < big, j, n_e)


def _pseudo_voigt_basis(xp, e, c, w, d):
    """Channel integrals of a unit Gaussian and a unit Lorentzian of FWHM ``w`` centred at ``c``."""
    # ``e`` holds consecutive channels: each function is evaluated once per channel edge
    lo = (e if e.ndim == 2 else e[None, :]) - 0.5 * d - c[:, None]
    edges = xp.concat([lo, lo[:, -1:] + d], axis=-1)
    sig = (w / (2.0 * math.sqrt(2.0 * math.log(2.0))))[:, None]
    cg = 0.5 * erf(xp, edges * (1.0 / (sig * math.sqrt(2.0))))
    g = cg[:, 1:] - cg[:, :-1]
    gam = 0.5 * w[:, None]
    cl = xp.atan(edges * (1.0 / gam)) / math.pi
    lor = cl[:, 1:] - cl[:, :-1]
    return g, lor


def _fit_pseudo_voigt(xp, y, e, c, fwhm, d, p):
    """Least-squares pseudo-Voigt a G(w) + b L(w), symmetric about ``c``, on the gain side and
    the top; w by a two-stage grid search with a parabolic refinement, a and b in closed form.
    The fit runs on a slab of channels from at most 256 below the peak to 32 above it."""
    n, n_e = y.shape
    w0 = xp.where(xp.isfinite(fwhm) & (fwhm > 0), fwhm, 4.0 * d)
    w0 = xp.maximum(w0, 1.5 * d)
    # the slab: only the channels the mask below can hold (the centre is within a channel of
    # the peak), at most 256 below the peak and 32 above it (on a device always that widest
    # slab: the mask gives the same fit, with no sync)
    w_max = (float(xp.max(w0)) if n else d) if host_decides(xp) else 1e3 * n_e * d
    lo = max(-256, -math.ceil(12.0 * w_max / d) - 2)
    hi = min(32, math.ceil(0.25 * w_max / d) + 2)
    offs = xp.arange(lo, hi + 1)
    pos = p[:, None] + offs[None, :]
    inside = (pos >= 0) & (pos < n_e)
    ys = xp.take_along_axis(y, xp.clip(pos, 0, n_e - 1), axis=-1)
    ys = xp.where(inside & xp.isfinite(ys), ys, 0.0)
    es = e[0] + xp.astype(pos, y.dtype) * d
    mask = (
        inside & (es <= c[:, None] + 0.25 * w0[:, None]) & (es >= c[:, None] - 12.0 * w0[:, None])
    )
    mf = xp.astype(mask, y.dtype)
    full_e = e
    e, y = es, ys
    # (the masked products evaluated left to right as before, their shared factors made once:
    # mf y y is the same for every width, mf g and mf L once per width; the same sums to the bit)
    yy = xp.sum(mf * y * y, axis=-1)

    def solve(w):
        g, lor = _pseudo_voigt_basis(xp, e, c, w, d)
        mg = mf * g
        ml = mf * lor
        gg = xp.sum(mg * g, axis=-1)
        ll = xp.sum(ml * lor, axis=-1)
        gl = xp.sum(mg * lor, axis=-1)
        gy = xp.sum(mg * y, axis=-1)
        ly = xp.sum(ml * y, axis=-1)
        det = gg * ll - gl * gl
        safe = xp.where(det > 0, det, 1.0)
        a = (ll * gy - gl * ly) / safe
        b = (gg * ly - gl * gy) / safe
        # a or b negative: the better of the pure Gaussian and the pure Lorentzian
        a_g = gy / xp.where(gg > 0, gg, 1.0)
        b_l = ly / xp.where(ll > 0, ll, 1.0)
        r_g = yy - a_g * gy
        r_l = yy - b_l * ly
        both = (a >= 0) & (b >= 0) & (det > 0)
        r_both = yy - a * gy - b * ly
        a = xp.where(both, a, xp.where(r_g <= r_l, a_g, 0.0))
        b = xp.where(both, b, xp.where(r_g <= r_l, 0.0, b_l))
        res = xp.where(both, r_both, xp.minimum(r_g, r_l))
        return a, b, res

    def grid(centre_w, ratio, k):
        best_w = centre_w
        best_r = xp.full_like(centre_w, math.inf)
        rs = []
        for i in range(-k, k + 1):
            w = centre_w * ratio**i
            _, _, r = solve(w)
            rs.append(r)
            better = r < best_r
            best_w = xp.where(better, w, best_w)
            best_r = xp.where(better, r, best_r)
        return best_w, best_r

    w1, _ = grid(w0, 1.08, 8)  # 0.54 to 1.85 times the half-maximum width
    w2, _ = grid(w1, 1.015, 5)
    # parabolic refinement in log w on the best point and its two neighbours
    step = math.log(1.015)
    _, _, rm = solve(w2 * math.exp(-step))
    _, _, r0 = solve(w2)
    _, _, rp = solve(w2 * math.exp(step))
    den = rm - 2.0 * r0 + rp
    off = xp.where(den > 0, 0.5 * (rm - rp) / xp.where(den > 0, den, 1.0), 0.0)
    w = w2 * xp.exp(xp.clip(off, -1.0, 1.0) * step)
    a, b, _ = solve(w)
    g, lor = _pseudo_voigt_basis(xp, full_e, c, w, d)
    return a[:, None] * g + b[:, None] * lor, a + b


# --------------------------------------------------------------------------- the model table
@dataclass(frozen=True)
class ZlpInput:
    """What every ZLP model gets: the block and its ZLP centre (:func:`centre_kernel`).

    ``y`` (n, n_E) counts per channel; ``e`` (n_E,) the energy axis (eV) in the block's dtype;
    ``energy_eV`` the axis as given (float64 on the device); ``d`` the dispersion (eV); ``c`` (n,)
    the centres (eV) with 0 standing in for invalid pixels; ``valid``, ``fwhm_eV`` and
    ``peak_index`` (n,) from the centre; ``search_eV`` where the ZLP maximum may be (eV; None:
    anywhere, see :func:`centre_kernel`); host numbers: ``e0`` the axis' first energy (eV) and
    ``peak_bound`` the highest channel a valid peak can sit in (the centre's ``peak_bound``).
    """

    xp: Any
    y: Any
    e: Any
    energy_eV: Any
    d: float
    c: Any
    valid: Any
    fwhm_eV: Any
    peak_index: Any
    search_eV: tuple[float, float] | None
    e0: float = 0.0
    peak_bound: int | None = None


class ZlpModel(NamedTuple):
    """What a ZLP model returns: ``model`` (n, n_E) ``N0 R(E)`` in counts per channel, or None
    when not asked for; ``n0`` (n,) N0 in counts; ``usable`` (n,) bool, pixels the model itself
    rules out (None: no extra condition); ``cut`` (n,) int, the truncation's first channel above
    the ZLP (``"threshold"`` only, else None)."""

    model: Any
    n0: Any
    usable: Any = None
    cut: Any = None


def mirror_model(z: ZlpInput, *, return_model: bool = True, **_: Any) -> ZlpModel:
    """``"mirror"``: the gain side as measured, mirrored about the centre (see :func:`zlp_kernel`).

    N0 is the model's sum, which telescopes to two look-ups of the cumulative counts (with a
    parabolic density inside a channel), so it is exact for a symmetric peak at any sub-channel
    centre; without ``return_model`` only those look-ups are made.
    """
    xp, y, e, c, d = z.xp, z.y, z.e, z.c, z.d
    n, n_e = y.shape
    # channels up to the highest centre of the block (+ margin) hold every gain side (any wider
    # head gives the same model): on NumPy the block's highest centre, on a device the highest
    # the centre search allows (a host number: no sync)
    if host_decides(xp) or z.peak_bound is None:
        c_max = float(xp.max(xp.where(z.valid, c, -math.inf))) if n else 0.0
        c_max = c_max if math.isfinite(c_max) else z.e0
        w_head = min(n_e, max(math.floor((c_max - z.e0) / d) + 4, 4))
    else:
        w_head = min(n_e, max(z.peak_bound + 5, 4))
    # the model's sum telescopes to C(edge above c) + C(mirror of that edge): two look-ups (made
    # with the model's own when it is built)
    u = (c - e[0]) / d  # the centre in channels from the axis' first (made once)
    k = xp.floor(u + 0.5)  # channel holding c (its upper edge is k + 1)
    q_hi = k + 1.0
    # (2 u is 2 (c - e[0]) / d exactly: a scaling by 2)
    q = xp.stack([q_hi, 2.0 * u + 1.0 - q_hi], axis=-1)
    if return_model:
        model, at = _mirror(xp, y, e, c, d, w_head, q_extra=q, u=u)
    else:
        head = y[:, :w_head]
        model, at = (
            None,
            _cdf_at(xp, head, xp.cumulative_sum(head, axis=-1, include_initial=True), q),
        )
    return ZlpModel(model, xp.sum(at, axis=-1))


def threshold_model(z: ZlpInput, *, return_model: bool = True, **_: Any) -> ZlpModel:
    """``"threshold"``: truncation at the first minimum after the peak (see :func:`zlp_kernel`).

    N0 is the sum of the counts below the minimum (all of them where the spectrum only falls);
    the model is the measured spectrum there and zero above.
    """
    xp, y, d, valid = z.xp, z.y, z.d, z.valid
    n, n_e = y.shape
    t = _first_minimum(xp, y, z.peak_index, z.fwhm_eV / d, d, valid)
    # N0 = the counts below t: a sum over the channels up to the largest t (NumPy), not a
    # cumulative sum of the whole spectrum (t = n_E, no minimum: all of it); on a device over
    # the whole row (no sync)
    if host_decides(xp):
        t_max = int(xp.max(xp.where(t < n_e, t, xp.zeros_like(t)))) if n else 0
    else:
        t_max = n_e
    below = xp.arange(t_max)[None, :] < t[:, None]
    head = y[:, :t_max]
    kept = xp.where(below, head, 0.0)
    n0 = xp.sum(kept, axis=-1)
    n0 = xp.where(t < n_e, n0, xp.sum(y, axis=-1))
    model = None
    if return_model:
        # (over the whole row, as on a device, the model is the counts summed for N0)
        whole = t_max == n_e
        model = kept if whole else xp.where(xp.arange(n_e)[None, :] < t[:, None], y, 0.0)
    return ZlpModel(model, n0, None, t)


def fit_model(z: ZlpInput, **_: Any) -> ZlpModel:
    """``"fit"``: a symmetric pseudo-Voigt fitted to the gain side and the top (see
    :func:`zlp_kernel`); N0 is its integral. The model is always built (the fit needs it)."""
    model, n0 = _fit_pseudo_voigt(z.xp, z.y, z.e, z.c, z.fwhm_eV, z.d, z.peak_index)
    return ZlpModel(model, n0)


def reference_model(z: ZlpInput, *, reference: Any = None, **_: Any) -> ZlpModel:
    """``"reference"``: a measured vacuum spectrum (n_E,) shifted to each centre and scaled by
    least squares on the gain side and the top (see :func:`zlp_kernel`).

    Raises
    ------
    InputError
        No reference, or one with another number of channels.
    NoZeroLossPeakError
        The reference has no usable ZLP in ``search_eV``.
    """
    xp, y, e, c, d = z.xp, z.y, z.e, z.c, z.d
    n, n_e = y.shape
    if reference is None:
        raise InputError("zlp method 'reference' needs a reference spectrum (reference=...)")
    ref = xp.astype(xp.reshape(reference, (1, -1)), y.dtype)
    if ref.shape[-1] != n_e:
        raise InputError(
            f"the reference ZLP has {ref.shape[-1]} channels, the data {n_e}: resample it "
            "onto the data's energy axis first"
        )
    rc = centre_kernel(ref, z.energy_eV, search_eV=z.search_eV, axis_eV=(z.e0, z.d))
    if not bool(rc["valid"][0]):
        raise NoZeroLossPeakError(
            f"the reference spectrum has no usable zero-loss peak in {tuple(z.search_eV)} eV"
        )
    ref_clean = xp.where(xp.isfinite(ref), ref, 0.0)
    shifted = shift_kernel(
        xp.broadcast_to(ref_clean, (n, n_e)),
        rc["zlp_centre_eV"][0] - c,
        "fourier",
        dispersion_eV=d,
        fill_value=0.0,
    )
    w = z.fwhm_eV
    w = xp.where(xp.isfinite(w), w, 4.0 * d)
    mask = xp.astype(e[None, :] <= c[:, None] + 0.25 * w[:, None], y.dtype)
    num = xp.sum(mask * y * shifted, axis=-1)
    den = xp.sum(mask * shifted * shifted, axis=-1)
    scale = num / xp.where(den > 0, den, 1.0)
    model = scale[:, None] * shifted
    n0 = scale * xp.sum(ref_clean)
    return ZlpModel(model, n0)


def cube_model(z: ZlpInput, *, zlp_cube: Any = None, **_: Any) -> ZlpModel:
    """``"cube"``: a per-pixel ZLP (n, n_E) made elsewhere, used as is; N0 is its sum. Pixels
    whose cube row is not finite are not usable.

    Raises
    ------
    InputError
        No cube, or a cube of another shape than the block.
    """
    xp, y = z.xp, z.y
    n, n_e = y.shape
    if zlp_cube is None:
        raise InputError("zlp method 'cube' needs a per-pixel ZLP cube (zlp_cube=...)")
    zc = xp.astype(zlp_cube, y.dtype)
    if tuple(zc.shape) != (n, n_e):
        raise InputError(f"the ZLP cube block has shape {tuple(zc.shape)}, the data {(n, n_e)}")
    ok = xp.all(xp.isfinite(zc), axis=-1)
    model = xp.where(ok[:, None], zc, 0.0)
    n0 = xp.sum(model, axis=-1)
    return ZlpModel(model, n0, ok)


#: The ZLP models by name (:func:`zlp_kernel`'s ``method``): each ``model(z: ZlpInput, *,
#: return_model, reference, zlp_cube) -> ZlpModel``, taking the options it needs.
MODELS: dict[str, Callable[..., ZlpModel]] = {
    "mirror": mirror_model,
    "fit": fit_model,
    "threshold": threshold_model,
    "reference": reference_model,
    "cube": cube_model,
}

#: The ZLP models :func:`zlp_kernel` knows.
METHODS = tuple(MODELS)


def zlp_kernel(
    block: Any,
    energy_eV: Any,
    *,
    method: str = "mirror",
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] | None = None,
    return_model: bool = True,
    centre: dict[str, Any] | None = None,
    axis_eV: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The zero-loss peak of each spectrum: centre, intensity N0 and shape ``N0 R(E)``.

    kk-theory.md eq. 14: ``I_ZLP(E) = N0 R(E)`` with R of unit area. The methods (the models of
    :data:`MODELS`, one function each):

    ``"mirror"``
        The gain side (E below the centre) is taken as measured and mirrored about the centre to
        give the loss side; N0 is the model's sum. Right for a symmetric ZLP (a cold-FEG source
        in a well-tuned spectrometer) sampled by at least 4 channels per FWHM, and a specimen
        with no loss in the first half-width of the peak. Wrong for an asymmetric ZLP (a
        Schottky source's or a monochromator's loss-side tail is missed: N0 low, a zero-loss
        residue in the SSD) and where the gain side holds something else (energy-gain peaks, a
        detector artefact); at 2 channels per FWHM its sub-channel interpolation leaves a
        misfit that rings; sensitive to the centre, so to noise in it.
    ``"fit"``
        A pseudo-Voigt (Gaussian + Lorentzian of one FWHM, symmetric) fitted by least squares to
        the gain side and the top; its integral is N0. Right for a symmetric Gaussian or
        cold-FEG ZLP with Lorentzian wings, and for noisy data (the fit averages many channels).
        Wrong for an asymmetric ZLP, and where the shape is neither Gaussian nor Lorentzian: the
        Lorentzian wings overshoot the steep gain side of a monochromated ZLP.
    ``"threshold"``
        Truncation at the first minimum after the peak (of the spectrum smoothed over about half
        the FWHM): N0 is the sum of all channels below it, the model is the measured spectrum
        there and zero above. Right for a specimen with a clear minimum between the ZLP and the
        first losses, and robust to any ZLP shape (it is what exspy's
        ``estimate_thickness(threshold=...)`` does). Wrong where losses start under the ZLP (a
        small gap, phonons at low energy, a thin metal's low-energy tail: N0 too high) or the ZLP
        tail reaches past the minimum (N0 too low); as a resolution function for the
        Fourier-log its loss side ends in a step, which the measured-error roll-off of
        :func:`eelsgpu.kernels.fourier_log.fourier_log_kernel` band-limits.
    ``"reference"``
        A measured vacuum spectrum (1-D, on the same energy grid) shifted to each pixel's centre
        and scaled by least squares on the gain side and top. Right when the reference was taken
        under the same conditions (same spectrometer, dispersion and exposure regime): it brings
        the true asymmetric shape and tails. Wrong when the conditions differ (energy resolution
        changes with beam current, thickness broadening of the ZLP).
    ``"cube"``
        A per-pixel ZLP cube made elsewhere (a fitted or machine-learned model) given as
        ``zlp_cube`` (n, n_E), used as is; N0 is its sum. As right as the model that made it.

    Which model for which ZLP (measured on every real spectrum of shared/data, with the checks
    of :func:`zlp_model_checks` that flag a model that does not fit a pixel):

    * **monochromated** (narrow, steep gain side, a long loss-side shoulder: the WS2 and h-BN
      spectra, the Al film): ``"threshold"`` for thickness and deconvolution, or a vacuum
      ``"reference"`` taken under the same conditions; ``"mirror"`` and ``"fit"`` miss the
      shoulder (thickness of a vacuum spectrum 0.2 instead of 0.002) and are flagged;
    * **asymmetric** (a Schottky or thermionic source's loss-side tail): ``"threshold"`` or a
      ``"reference"``; never ``"mirror"`` or ``"fit"``;
    * **Lorentzian-tailed, symmetric** (a cold FEG): ``"fit"``, or ``"mirror"`` when the FWHM
      spans at least 4 channels; ``"threshold"`` for the log-ratio thickness.

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel.
    energy_eV : array, shape (n_E,)
        Uniform, increasing energy axis (eV).
    method : {"mirror", "fit", "threshold", "reference", "cube"}
    reference : array, shape (n_E,), optional
        The vacuum spectrum for ``method="reference"``.
    zlp_cube : array, shape (n, n_E), optional
        The per-pixel ZLP for ``method="cube"`` (counts per channel).
    search_eV : (float, float) or None
        Where the ZLP maximum may be (eV on the stored axis); None: near 0 eV, else anywhere in
        the window (:func:`centre_kernel`).
    return_model : bool
        Build the (n, n_E) model; without it (what the log-ratio needs) ``"mirror"`` and
        ``"threshold"`` cost little more than one cumulative sum, and ``zlp`` is None.
    centre : dict, optional
        What :func:`centre_kernel` returned for this block with this ``search_eV`` (to model
        the ZLP twice without finding its centre twice).
    axis_eV : (float, float), optional
        The axis' first energy and channel width (eV) as host floats (:func:`centre_kernel`).

    Returns
    -------
    dict
        ``zlp_centre_eV`` (n,) eV; ``zlp_intensity`` (n,) N0 in counts; ``zlp`` (n, n_E) the model
        ``N0 R(E)`` in counts per channel on the block's own (unaligned) grid; ``valid`` (n,) bool;
        ``fwhm_eV`` (n,); ``axis_offset`` and ``zlp_snr`` (n,) from :func:`centre_kernel`;
        ``cut_index`` (n,) int, the truncation's first channel above the ZLP (``"threshold"``;
        else None); ``method``. Invalid pixels are NaN everywhere.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-100, 400) * 0.05
    >>> y = 1e4 * np.exp(-0.5 * (e / 0.2) ** 2)[None]
    >>> out = zlp_kernel(y, e, method="fit")
    >>> bool(abs(float(out["zlp_intensity"][0] / y.sum()) - 1) < 1e-3)
    True
    """
    if method not in METHODS:
        raise ValueError(f"zlp method must be one of {METHODS}, not {method!r}")
    xp = array_namespace(block)
    if centre is None:
        centre = centre_kernel(block, energy_eV, search_eV=search_eV, axis_eV=axis_eV)
    cen = centre
    e0, d = cen.get("axis_eV") or host_axis(energy_eV, axis_eV)
    y = block  # a pixel with NaN is invalid (flagged by the centre); its NaN stays in its row
    e = xp.astype(energy_eV, y.dtype, copy=False)
    valid = cen["valid"]
    c0 = cen["zlp_centre_eV"]
    c = xp.where(valid, c0, 0.0)  # finite stand-in for the invalid pixels
    fwhm = cen["fwhm_eV"]
    z = ZlpInput(
        xp,
        y,
        e,
        energy_eV,
        d,
        c,
        valid,
        fwhm,
        cen["peak_index"],
        search_eV,
        e0=e0,
        peak_bound=cen.get("peak_bound"),
    )
    model, n0, usable, cut = MODELS[method](
        z, return_model=return_model, reference=reference, zlp_cube=zlp_cube
    )
    if usable is not None:
        valid = valid & usable

    valid = valid & xp.isfinite(n0) & (n0 > 0)
    if model is not None and not all_rows(xp, valid):  # (a full pass: only when needed)
        model = xp.where(valid[:, None], model, math.nan)
    maps = _nan_where(xp, valid, {"zlp_centre_eV": c0, "zlp_intensity": n0, "fwhm_eV": fwhm})
    return {
        "zlp_centre_eV": maps["zlp_centre_eV"],
        "zlp_intensity": maps["zlp_intensity"],
        "zlp": model,
        "valid": valid,
        "fwhm_eV": maps["fwhm_eV"],
        "axis_offset": valid & cen["axis_offset"],
        "zlp_snr": cen["zlp_snr"],
        "cut_index": cut,
        "method": method,
        "noise": cen.get("noise"),
        "axis_eV": (e0, d),
    }


# --------------------------------------------------------------------------- model checks
#: Limits of :func:`zlp_model_checks` (each beyond its counting-noise allowance): the model's
#: t/lambda against the truncation's, relative (``rel_dtl``); significant over-subtraction on
#: the loss side as a share of the SSD's integral (``rel_excess``); the share of the SSD's
#: integral within 2 FWHM of zero loss (``residue``); for the truncation itself, the counts at
#: its cut that could belong to either side (``trunc``). Set on every real spectrum of
#: shared/data (no flag on a good file; every case issue 11 lists flagged) and on 240 Poisson
#: synthetic spectra (no false flag with a symmetric ZLP).
CHECK_LIMITS = {"rel_dtl": 0.10, "rel_excess": 0.05, "residue": 0.20, "trunc": 0.10}
#: The loss side the excess is measured on (FWHM above the centre), in bins of half a FWHM.
_EXCESS_BINS = 8


def channel_noise(xp: Any, y: Any, e: Any, c: Any, w: Any) -> tuple[Any, Any]:
    """Per row, ``(v_out, y_out)``: the white-noise variance of one channel of the spectra ``y``
    (n, n_E) more than 3 FWHM ``w`` from the ZLP centre ``c`` (fourth differences, each clipped
    at 25 times their median against edges and spikes), and the mean positive count there. In
    the data's own units, whatever their gain; ``e`` (n_E,) the axis (eV).

    A block's kernels measure it once (:func:`centre_kernel` returns it as ``noise``, which the
    model checks, the background test, the Fourier-log's error and the log-ratio's noise reuse);
    how it is computed: :func:`_away_stats`."""
    y = _zero_non_finite(xp, y)
    return _away_stats(xp, y, None, xp.astype(e, y.dtype, copy=False), c, w)["noise"]


def channel_variance(
    xp: Any, y: Any, e: Any, c: Any, w: Any, noise: tuple[Any, Any] | None = None
) -> Any:
    """Per-channel variance (n, n_E) of the spectra ``y``: the white-noise variance ``v_out`` of
    the channels more than 3 FWHM ``w`` from the ZLP centre ``c`` (:func:`channel_noise`, or
    ``noise`` when already measured), scaled as counts ``v_out max(y, y_out) / y_out``
    (Poisson-like, never below the level far from the peak; ``y_out`` the mean count there).
    In the data's own units, whatever their gain."""
    v_out, y_out = channel_noise(xp, y, e, c, w) if noise is None else noise
    yp = xp.maximum(_zero_non_finite(xp, y), 0.0)
    return (v_out / y_out)[:, None] * xp.maximum(yp, y_out[:, None])


def zlp_model_checks(
    block: Any,
    energy_eV: Any,
    z: dict[str, Any],
    thr: dict[str, Any],
    method: str,
    finite: Any = None,
) -> dict[str, Any]:
    """Does the ZLP model fit each pixel? Statistics against the truncation and counting noise.

    ``z`` is the model (:func:`zlp_kernel` with ``return_model=True``), ``thr`` the truncation
    model of the same block (``method="threshold"``; it may be ``z`` itself). With
    ``scale = max(ln(I_w / N0_thr), 0.01)`` (the log-ratio of the window by truncation, I_w the
    window's counts) and the per-channel variance ``v`` of :func:`channel_variance` (doubled for
    the mirror, whose loss side copies the gain side's noise):

    * ``rel_dtl = ln(N0_thr / N0_model) / scale``: the model's t/lambda minus the truncation's,
      relative (eq. 16);
    * ``rel_excess``: on the loss side (0 to 4 FWHM above the centre, in bins of half a FWHM),
      the model's excess over the data beyond 3 standard deviations of the counting noise,
      summed, over ``N0 scale``: the loss the model removes that the data do not have (a
      pseudo-Voigt's wings over a monochromated gain side);
    * ``residue``: the data minus the model within 2 FWHM above the centre, over ``N0 scale``:
      the share of the SSD's integral the model leaves at zero loss (a mirror of an asymmetric
      ZLP);
    * ``trunc`` (truncation only): the counts at the cut times 2 FWHM of channels, over
      ``N0 scale``: what could belong to either side.

    ``mismatch`` is True where one of them exceeds :data:`CHECK_LIMITS` by more than 4 standard
    deviations of its own counting noise (``rel_dtl``, ``residue``; the excess has its noise in
    it): the ZLP_MISMATCH bit of :mod:`eelsgpu.kernels.quality`. The truncation is judged by
    ``trunc`` alone (it is the reference of the others).

    Returns
    -------
    dict of (n,) arrays
        ``rel_dtl``, ``rel_excess``, ``residue``, ``trunc`` (NaN unless ``method ==
        "threshold"``), ``mismatch`` (bool; False where the pixel has no ZLP); and ``noise``,
        the channels' noise (:func:`channel_noise`).

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-200, 1800) * 0.05
    >>> zlp = 1e5 * np.exp(-0.5 * (e / 0.25) ** 2)
    >>> loss = np.where(e > 1, 2e3 * np.exp(-0.5 * ((e - 15) / 3) ** 2), 0.0)
    >>> shoulder = 3e4 * np.exp(-0.5 * ((e - 0.5) / 0.3) ** 2) * (e > 0)  # loss side only
    >>> y = (zlp + loss + shoulder)[None]
    >>> thr = zlp_kernel(y, e, method="threshold")
    >>> checks = zlp_model_checks(y, e, zlp_kernel(y, e, method="mirror"), thr, "mirror")
    >>> bool(checks["mismatch"][0]), round(float(checks["residue"][0]), 1)
    (True, 0.7)
    >>> bool(zlp_model_checks(y, e, thr, thr, "threshold")["mismatch"][0])
    False
    """
    xp = array_namespace(block)
    dt = block.dtype
    n, n_e = block.shape
    e0, d = z.get("axis_eV") or host_axis(energy_eV)
    e = xp.astype(energy_eV, dt, copy=False)
    ok = z["valid"] & thr["valid"]
    if finite is None:  # (``finite``: the block with non-finite counts zeroed, when made)
        y = xp.where(ok[:, None] & xp.isfinite(block), block, 0.0)
    else:
        y = xp.where(ok[:, None], finite, 0.0)
    c = xp.where(ok, z["zlp_centre_eV"], 0.0)
    # (the three maps 1 where not ok: one where over their stack)
    ones = _nan_where(
        xp, ok, {"w": z["fwhm_eV"], "n0": z["zlp_intensity"], "n0_thr": thr["zlp_intensity"]}, 1.0
    )
    w = xp.where(ones["w"] > 0, ones["w"], 1.0)
    n0, n0_thr = ones["n0"], ones["n0_thr"]
    window = xp.sum(y, axis=-1)
    tl_thr = xp.log(xp.where(ok & (window > 0), window / n0_thr, 1.0))
    scale = xp.maximum(tl_thr, 0.01)
    noise = z.get("noise") or channel_noise(xp, y, e, c, w)
    # everything below lies within 4 FWHM of a centre: on NumPy a slab of channels shared by the
    # block (its bounds are two host numbers), on a device the whole row (no sync)
    a, b = 0, n_e
    if host_decides(xp) and n:
        lo_e = float(xp.min(xp.where(ok, c - 4.5 * w, math.inf)))
        hi_e = float(xp.max(xp.where(ok, c + 4.5 * w, -math.inf)))
        a = max(0, math.floor((lo_e - e0) / d) - 1) if math.isfinite(lo_e) else 0
        b = min(n_e, math.ceil((hi_e - e0) / d) + 2) if math.isfinite(hi_e) else 1
        b = max(b, a + 1)
    ys = y[:, a:b]
    var = channel_variance(xp, ys, e[a:b], c, w, noise)
    if method == "mirror":
        var = 2.0 * var
    model = z["zlp"][:, a:b]
    model = xp.where(ok[:, None] & xp.isfinite(model), model, 0.0)
    x = (e[None, a:b] - c[:, None]) / w[:, None]  # energy from the centre in FWHM
    # t/lambda of the model against the truncation's; its noise: the ZLP's channels' variance
    rel_dtl = xp.log(n0_thr / n0) / scale
    # every sum below runs over a range of x (which rises along the row): differences of the
    # cumulative sums at the range's ends, found for all ranges at once (_x_counts)
    diff = model - ys
    cum = xp.cumulative_sum(xp.stack([diff, var], axis=1), axis=-1, include_initial=True)
    ends = _x_counts(xp, x, e0 + a * d, d, c, w)
    at = xp.take_along_axis(cum, xp.broadcast_to(ends[:, None, :], (n, 2, ends.shape[-1])), axis=-1)
    sums = at[:, :, 1:] - at[:, :, :-1]  # (n, 2, ranges): diff and var over each range
    sum_d, sum_v = sums[:, 0, :], xp.maximum(sums[:, 1, :], 0.0)
    # core -2 <= x <= 2: range 0 (x < -2 to x <= 0) + range 1 (0 < x <= 2)
    sd_dtl = xp.sqrt(2.0 * (sum_v[:, 0] + sum_v[:, 1])) / n0 / scale
    # over-subtraction on the loss side, in bins of half a FWHM from the centre up
    dk, vk = sum_d[:, 3:], sum_v[:, 3:]
    excess = xp.sum(xp.maximum(dk - 3.0 * xp.sqrt(vk), 0.0), axis=-1)
    rel_excess = excess / (n0 * scale)
    residue = -sum_d[:, 1] / (n0 * scale)  # 0 < x <= 2
    sd_res = xp.sqrt(sum_v[:, 1]) / (n0 * scale)
    nan = math.nan
    if method == "threshold":
        cut = z["cut_index"] if z.get("cut_index") is not None else thr["cut_index"]
        at_cut = take_rows(xp, y, cut)
        trunc = xp.where(cut < n_e, at_cut * (2.0 * w / d) / (n0_thr * scale), 0.0)
        mismatch = trunc > CHECK_LIMITS["trunc"]
    else:
        trunc = xp.full_like(residue, math.nan)  # (not a truncation)
        mismatch = (
            (xp.abs(rel_dtl) > CHECK_LIMITS["rel_dtl"] + 4.0 * sd_dtl)
            | (rel_excess > CHECK_LIMITS["rel_excess"])
            | (xp.abs(residue) > CHECK_LIMITS["residue"] + 4.0 * sd_res)
        )
    # the four figures NaN where not ok: one where over their stack (columns: views)
    figures = xp.where(ok[:, None], xp.stack([rel_dtl, rel_excess, residue, trunc], axis=-1), nan)
    return {
        "rel_dtl": figures[:, 0],
        "rel_excess": figures[:, 1],
        "residue": figures[:, 2],
        "trunc": figures[:, 3],
        "mismatch": ok & mismatch,
        "noise": noise,
    }


def _x_counts(xp: Any, x: Any, e_first: float, d: float, c: Any, w: Any) -> Any:
    """For each row of ``x`` (n, m) = (e - c) / w (rising along the row), the number of channels
    with x < -2, then with x <= t for t = 0, 2, 0, 0.5, 1, ..., 4 (n, 12): the differences of
    neighbours are the counts of the ranges :func:`zlp_model_checks` sums over, -2 <= x <= 0,
    0 < x <= 2, (one unused), and the bins (0.5 k, 0.5 (k + 1)] for k = 0..7.

    Each count is first estimated from the channel width (the axis is uniform) and then made
    exact against ``x`` itself at the two channels about the estimate (an axis rounded in a text
    file is uniform to 1 % of a channel: the estimate is off by at most one), so the ranges are
    exactly those of the masks ``x <= t`` on the row."""
    n, m = x.shape
    dt = x.dtype
    ts = [-2.0, 0.0, 2.0] + [0.5 * k for k in range(_EXCESS_BINS + 1)]
    # (x of the slab's channel j is (e_first + j d - c) / w: e_first is the slab's first energy)
    # the thresholds t and, for the comparisons, t_cmp: t with the first (strict: x < -2) one
    # moved down to the next smaller number of the dtype, so that x >= t and x < t there are
    # x > t_cmp and x <= t_cmp (no number of the dtype lies between): one compare for all
    np_dt = np.dtype(str(dt).split(".")[-1])
    t_cmp = np.asarray(ts, dtype=np_dt)
    t_cmp[0] = np.nextafter(t_cmp[0], np_dt.type(-np.inf))
    both = xp.asarray(np.stack([np.asarray(ts, dtype=np_dt), t_cmp]))  # one upload
    t, t_lo = both[0, :], both[1, :]
    # x <= t  <=>  e <= c + t w: the channel's index from the axis' first energy and width
    pos = (c[:, None] + t[None, :] * w[:, None] - e_first) / d
    est = xp.astype(_clamp(xp, xp.floor(pos) + 1.0, 0.0, float(m)), xp.int64)
    # exact: one fewer where the last channel counted has x > t, one more where the next has
    # x <= t (the first end counts x < -2, strictly)
    below = xp.take_along_axis(x, xp.maximum(est - 1, 0), axis=-1)
    above = xp.take_along_axis(x, xp.minimum(est, m - 1), axis=-1)
    over_b = (below > t_lo) & (est > 0)
    under_a = (above <= t_lo) & (est < m)
    return est - xp.astype(over_b, xp.int64) + xp.astype(under_a, xp.int64)


#: Limits of :func:`background_check`: an offset on the gain side far below the ZLP counts when
#: it is significant (this many standard errors of its mean) and makes up more than
#: ``share`` of the counts the log-ratio calls inelastic.
BACKGROUND_LIMITS = {"significance": 5.0, "share": 0.02}


def background_check(
    block: Any,
    energy_eV: Any,
    centre_eV: Any,
    fwhm_eV: Any,
    noise: Any = None,
    finite: Any = None,
) -> dict[str, Any]:
    """A constant offset under the spectrum (dark current, a badly subtracted background).

    No electron gains energy, so far below the ZLP (more than max(10 FWHM, 3 eV) below its
    centre, at least 8 channels there) a spectrum holds only noise around zero. Its mean
    level ``b`` there is an offset that also sits under every loss channel, where the
    log-ratio (eq. 16) counts it as inelastic scattering: ``b`` times the loss channels, over
    the counts above the ZLP (``I_w - 2 x`` the gain side's counts), is the share of "inelastic"
    counts that are offset. ``unphysical`` is True where ``|b|`` exceeds
    ``BACKGROUND_LIMITS["significance"]`` standard errors (noise from fourth differences) and
    that share exceeds ``BACKGROUND_LIMITS["share"]`` (the UNPHYSICAL_BACKGROUND bit).

    Returns
    -------
    dict of (n,) arrays
        ``offset`` (counts per channel; NaN where the gain side is too short to tell),
        ``offset_share`` and ``unphysical`` (bool). ``noise``: :func:`channel_noise` of the block
    when already measured; ``finite``: the block with non-finite counts zeroed, when made.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-400, 1600) * 0.05
    >>> y = 1e5 * np.exp(-0.5 * (e / 0.2) ** 2) + np.where(e > 1, 3e3 / np.maximum(e, 1), 0)
    >>> out = background_check(np.stack([y, y + 30.0]), e, np.zeros(2), np.full(2, 0.47))
    >>> out["unphysical"].tolist()
    [False, True]
    """
    xp = array_namespace(block)
    dt = block.dtype
    n, n_e = block.shape
    e = xp.astype(energy_eV, dt, copy=False)
    ok = xp.isfinite(centre_eV) & xp.isfinite(fwhm_eV)
    c = xp.where(ok, xp.astype(centre_eV, dt, copy=False), 0.0)
    w = xp.where(ok, xp.astype(fwhm_eV, dt, copy=False), 1.0)
    y = _zero_non_finite(xp, block) if finite is None else finite
    # (-max(10 w, 3) as min(-10 w, -3): negations are exact)
    thr = xp.minimum(-10.0 * w, -3.0)
    fused = _fused.lookup(CPU_BACKGROUND_NAME, xp) if is_numpy(xp) else None
    sums = None if fused is None else fused(y, e, c, thr)
    if sums is not None:  # (the compiled form: one pass per row, the same bits)
        n_far, s_far, loss_channels, window, s_gain = (sums[:, j] for j in range(5))
    else:
        rel = e[None, :] - c[:, None]
        ff = xp.astype(rel < thr[:, None], dt)
        n_far = xp.sum(ff, axis=-1)
        s_far = xp.sum(y * ff, axis=-1)
        gain = xp.astype(rel < 0.0, dt)
        loss_channels = xp.sum(1.0 - gain, axis=-1)
        window = xp.sum(y, axis=-1)
        s_gain = xp.sum(y * gain, axis=-1)
    n_far1 = xp.maximum(n_far, 1.0)
    b = s_far / n_far1
    if noise is None:
        noise = channel_noise(xp, y, e, c, w)
    se = xp.sqrt(noise[0] / n_far1)
    above = window - 2.0 * s_gain  # the window minus the ZLP (mirror) ...
    share = b * loss_channels / xp.where(above > 0, above, 1.0)
    told = ok & (n_far >= 8.0)
    unphysical = (
        told
        & (xp.abs(b) > BACKGROUND_LIMITS["significance"] * se)
        & (xp.abs(share) > BACKGROUND_LIMITS["share"])
    )
    nan = xp.full((n,), math.nan, dtype=dt)
    return {
        "offset": xp.where(told, b, nan),
        "offset_share": xp.where(told, share, nan),
        "unphysical": unphysical,
    }
