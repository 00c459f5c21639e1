"""Energy-window maps of a block of spectra (EELS low/core loss, SXES): pure array-API kernels.

For each named window ``[lo, hi]`` (eV) and pixel:

* **intensity**: the counts in the window, ``sum_i c_i f_i``, with ``c_i`` the counts of channel
  ``i`` and ``f_i`` the fraction of that channel's bin lying in the window. Bin edges are the
  midpoints between channel energies (:func:`channel_edges`), so the integral is right on a
  *non-uniform* axis (an SXES grating axis) and for windows that cut channels. Unit: the input's
  unit (``counts``), i.e. the number of counts in the window, not counts·eV;
* **background** (optional) fitted over one or more pre-windows to the spectral *density*
  ``d_i = c_i / width_i`` (counts/eV) and integrated over the window the same way, then
  subtracted (:func:`fit_background`). ``"power-law"``: ``d = A E^-r`` fitted by linear least
  squares of ``ln d`` on ``ln E`` weighted by the counts (Poisson; Egerton, *EELS in the
  Electron Microscope*, 3rd ed., sec. 4.4.2), in closed form (sums), over the channels with
  counts > 0; ``"linear"``: ``d = a + b E`` (unweighted). A pixel whose fit fails (fewer than 2
  usable channels, less than half the pre-window usable, a non-finite fit) is flagged in
  ``<name>_valid`` and its maps are NaN;
* **centroid** ``<name>_centroid_eV``: ``sum E_i s_i f_i / sum s_i f_i`` of the
  background-subtracted counts ``s_i`` (NaN if the denominator is not positive);
* **peak** ``<name>_peak_eV``: a Gaussian fitted to the top ``peak_channels`` channels around the
  maximum by least squares on ``ln s`` (a parabola in E; exact for a noise-free Gaussian), so
  shifts far below one channel width are measured. NaN when the maximum sits on the window's
  edge, a channel there is not positive or the parabola opens upward;
* **width** ``<name>_fwhm_eV``: the full width at half maximum of the background-subtracted
  band density, from the half-maximum crossings nearest the maximum on each side, linearly
  interpolated between channels (NaN when a side does not fall to half inside the window);
* **ratio** ``<a>_over_<b>``: the ratio of two window intensities (NaN where ``b <= 0``).

:func:`window_kernel` computes them all for a block; :func:`window_block` declares it for the
engine (its outputs with units, its tile size). The xarray-facing function is
:func:`eelsgpu.window_maps` (:mod:`eelsgpu.analysis.maps`).

Examples
--------
>>> e = np.arange(100.0, 200.0, 0.5)
>>> block = np.exp(-0.5 * ((e - 150.0) / 2.0) ** 2) * np.ones((2, 1))
>>> out = window_kernel(block, e, windows=(("band", 140.0, 160.0),), peak=("band",))
>>> [round(float(v), 6) for v in out["band_peak_eV"]]
[150.0, 150.0]
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._xp import array_namespace
from .declare import BlockKernel, Output
from .uncertainty import (
    linear_sigma,
    poisson_variance,
    ratio_sigma,
    replica_sigmas,
)

__all__ = [
    "BACKGROUND_MODELS",
    "TILE_PIXELS",
    "channel_edges",
    "fit_background",
    "sigma_targets",
    "window_block",
    "window_kernel",
    "window_outputs",
    "window_spans",
    "window_weights",
]

BACKGROUND_MODELS = ("power-law", "linear")
#: Spectra per CPU tile of :func:`window_kernel`: None, the engine's default (about 1 MiB of
#: input per tile).
TILE_PIXELS: int | None = None

Range = tuple[float, float]


def channel_edges(energy_eV: Any) -> tuple[Any, Any]:
    """Lower and upper bin edges (eV) of each channel: midpoints between channel energies.

    The outer edges mirror the first and last half-widths. Works on any increasing axis
    (uniform, or an SXES grating axis).

    Parameters
    ----------
    energy_eV : array (n_E,)
        Increasing channel energies in eV.

    Returns
    -------
    lo, hi : array (n_E,)
        Bin edges in eV.

    Examples
    --------
    >>> lo, hi = channel_edges(np.array([0.0, 1.0, 3.0]))
    >>> lo.tolist(), hi.tolist()
    ([-0.5, 0.5, 2.0], [0.5, 2.0, 4.0])
    """
    xp = array_namespace(energy_eV)
    e = energy_eV
    mid = (e[1:] + e[:-1]) / 2
    first = xp.reshape(2 * e[0] - mid[0], (1,))
    last = xp.reshape(2 * e[-1] - mid[-1], (1,))
    return xp.concat([first, mid]), xp.concat([mid, last])


def window_weights(energy_eV: Any, lo_eV: float, hi_eV: float) -> Any:
    """Fraction (0..1) of each channel's bin that lies inside ``[lo_eV, hi_eV]``.

    ``f_i`` of the window integral ``sum_i c_i f_i`` (bins from :func:`channel_edges`).

    Parameters
    ----------
    energy_eV : array (n_E,)
        Increasing channel energies in eV.
    lo_eV, hi_eV : float
        The window in eV.

    Returns
    -------
    array (n_E,)
        Dimensionless fractions.

    Examples
    --------
    >>> window_weights(np.array([0.0, 1.0, 2.0, 3.0]), 0.75, 2.0).tolist()
    [0.0, 0.75, 0.5, 0.0]
    """
    xp = array_namespace(energy_eV)
    lo_edge, hi_edge = channel_edges(energy_eV)
    overlap = xp.minimum(hi_edge, float(hi_eV)) - xp.maximum(lo_edge, float(lo_eV))
    return xp.clip(overlap / (hi_edge - lo_edge), 0.0, 1.0)


def _range_weights(energy_eV: Any, ranges: Sequence[Range]) -> Any:
    """Fraction (0..1) of each channel inside the union of ``ranges`` (eV)."""
    xp = array_namespace(energy_eV)
    w = xp.zeros_like(energy_eV)
    for lo, hi in ranges:
        w = w + window_weights(energy_eV, lo, hi)
    return xp.clip(w, 0.0, 1.0)


def fit_background(
    counts: Any,
    energy_eV: Any,
    weights: Any,
    model: str = "power-law",
    *,
    channel_width_eV: Any = None,
) -> tuple[Any, Any]:
    """Fit a background density to each spectrum over the channels with ``weights > 0``.

    ``"power-law"``: ``d = A E^-r`` by least squares of ``ln d`` on ``ln E`` (Egerton, *EELS in
    the Electron Microscope*, 3rd ed., sec. 4.4.2), each channel weighted by its counts (the
    inverse Poisson variance of ``ln c``), over the channels with counts > 0. ``"linear"``:
    ``d = a + b E`` by unweighted least squares. Both in closed form (sums), one fit per pixel.

    Parameters
    ----------
    counts : array (n_pix, n_E)
        Counts per channel.
    energy_eV : array (n_E,)
        Channel energies in eV (> 0 for the power law).
    weights : array (n_E,)
        Fraction of each channel in the fitting range(s).
    model : {"power-law", "linear"}
    channel_width_eV : array (n_E,), optional
        Channel widths (default: from the midpoints between channel energies).

    Returns
    -------
    background : array (n_pix, n_E)
        The fitted density in counts/eV at every channel (multiply by the channel widths for
        counts per channel).
    ok : bool array (n_pix,)
        False where the fit failed: fewer than 2 usable channels, less than half the range
        usable (counts <= 0 for the power law), or a non-finite result.

    Examples
    --------
    >>> e = np.linspace(100.0, 200.0, 51)
    >>> c = 3e6 * e[None, :] ** -2.5 * 2.0  # 2 eV channels
    >>> bg, ok = fit_background(c, e, (e < 150).astype(float))
    >>> bool(ok[0]), bool(np.allclose(bg * 2.0, c))
    (True, True)
    """
    xp = array_namespace(counts)
    if channel_width_eV is None:
        lo_edge, hi_edge = channel_edges(energy_eV)
        channel_width_eV = hi_edge - lo_edge
    density = counts / channel_width_eV
    if model == "power-law":
        positive = counts > 0
        usable = xp.where(positive, weights, 0.0)
        fit_w = usable * xp.where(positive, counts, 0.0)
        y = xp.log(xp.where(positive, density, 1.0))
        u = xp.log(energy_eV)
    elif model == "linear":
        usable = weights * xp.ones_like(density)
        fit_w = usable
        y = density
        u = energy_eV
    else:
        raise ValueError(f"background_model must be one of {BACKGROUND_MODELS}, not {model!r}")
    # Closed-form weighted least squares of y = a + b u, one per pixel.
    s0 = xp.sum(fit_w, axis=-1)
    su = xp.sum(fit_w * u, axis=-1)
    suu = xp.sum(fit_w * u * u, axis=-1)
    sy = xp.sum(fit_w * y, axis=-1)
    suy = xp.sum(fit_w * u * y, axis=-1)
    det = s0 * suu - su * su
    safe_det = xp.where(det > 0, det, 1.0)
    safe_s0 = xp.where(s0 > 0, s0, 1.0)
    b = (s0 * suy - su * sy) / safe_det
    a = (sy - b * su) / safe_s0
    fit = a[:, None] + b[:, None] * u
    background = xp.exp(fit) if model == "power-law" else fit
    n_used = xp.sum(xp.astype(usable > 0, xp.float64), axis=-1)
    ok = (
        (det > 0)
        & (n_used >= 2)
        & (xp.sum(usable, axis=-1) >= 0.5 * xp.sum(weights))
        & xp.isfinite(a)
        & xp.isfinite(b)
    )
    return background, ok


def _gather(a: Any, idx: Any) -> Any:
    """a[p, idx[p, k]] for each pixel p."""
    xp = array_namespace(a)
    return xp.take_along_axis(a, idx, axis=-1)


def _peak_fit(s: Any, e: Any, in_win: Any, half: int, sensitivity: bool = False) -> Any:
    """Vertex of a least-squares parabola to ln s over 2*half+1 channels around the maximum.

    With ``sensitivity``, also ``q_k = d vertex / d s_k`` on the fitted channels ``idx`` (both
    (n_pix, 2 half + 1)), its linearisation in the net density: ``c = A^-1 V^T ln s`` (A the 3x3 normal matrix, its inverse by cofactors),
    ``vertex = -c1 / (2 c2)``, so ``d vertex = -(dc1 + 2 vertex dc2) / (2 c2)`` and
    ``d ln s_k = ds_k / s_k``.
    """
    xp = array_namespace(s)
    n = e.shape[0]
    idxs = xp.arange(n)
    masked = xp.where(in_win, s, -xp.inf)
    imax = xp.argmax(masked, axis=-1)
    i_first = xp.min(xp.where(in_win, idxs, n))
    i_last = xp.max(xp.where(in_win, idxs, -1))
    offsets = xp.arange(-half, half + 1)
    idx = xp.clip(imax[:, None] + offsets[None, :], 0, n - 1)
    vals = _gather(s, idx)
    ee = xp.take(e, xp.reshape(idx, (-1,)))
    ee = xp.reshape(ee, idx.shape)
    e0 = xp.take(e, imax)
    u = ee - e0[:, None]
    y = xp.log(xp.where(vals > 0, vals, 1.0))
    # Normal equations of y = c0 + c1 u + c2 u^2, solved by Cramer's rule.
    m0 = xp.full_like(e0, float(2 * half + 1))
    m1, m2 = xp.sum(u, axis=-1), xp.sum(u**2, axis=-1)
    m3, m4 = xp.sum(u**3, axis=-1), xp.sum(u**4, axis=-1)
    t0, t1, t2 = xp.sum(y, axis=-1), xp.sum(u * y, axis=-1), xp.sum(u * u * y, axis=-1)

    def det3(a11, a12, a13, a21, a22, a23, a31, a32, a33):
        return (
            a11 * (a22 * a33 - a23 * a32)
            - a12 * (a21 * a33 - a23 * a31)
            + a13 * (a21 * a32 - a22 * a31)
        )

    d = det3(m0, m1, m2, m1, m2, m3, m2, m3, m4)
    safe_d = xp.where(d != 0, d, 1.0)
    c1 = det3(m0, t0, m2, m1, t1, m3, m2, t2, m4) / safe_d
    c2 = det3(m0, m1, t0, m1, m2, t1, m2, m3, t2) / safe_d
    safe_c2 = xp.where(c2 < 0, c2, -1.0)
    vertex = -c1 / (2 * safe_c2)
    span = xp.max(xp.abs(u), axis=-1)
    ok = (
        (imax - half >= i_first)
        & (imax + half <= i_last)
        & xp.all(vals > 0, axis=-1)
        & (c2 < 0)
        & (d != 0)
        & (xp.abs(vertex) <= span)
    )
    peak = xp.where(ok, e0 + vertex, xp.nan)
    if not sensitivity:
        return peak
    # rows 1 and 2 of the symmetric inverse (cofactors / d)
    c01, c11, c12 = -(m1 * m4 - m3 * m2), m0 * m4 - m2 * m2, -(m0 * m3 - m2 * m1)
    c02, c22 = m1 * m3 - m2 * m2, m0 * m2 - m1 * m1
    dc1 = (c01[:, None] + c11[:, None] * u + c12[:, None] * u * u) / safe_d[:, None]
    dc2 = (c02[:, None] + c12[:, None] * u + c22[:, None] * u * u) / safe_d[:, None]
    safe_vals = xp.where(vals > 0, vals, 1.0)
    q_k = -(dc1 + 2 * vertex[:, None] * dc2) / (2 * safe_c2[:, None] * safe_vals)
    return peak, q_k, idx


def _fwhm(s: Any, e: Any, in_win: Any, sensitivity: bool = False) -> Any:
    """Full width at half maximum from the crossings nearest the maximum, interpolated.

    With ``sensitivity``, also ``q_k = d width / d s_k`` on the five channels it reads
    (``idx``: the two channels of each crossing and the maximum), from
    ``c = e0 + (h - s0)(e1 - e0)/(s1 - s0)``, ``h = s_max / 2``.
    """
    xp = array_namespace(s)
    n = e.shape[0]
    idxs = xp.arange(n)
    masked = xp.where(in_win, s, -xp.inf)
    imax = xp.argmax(masked, axis=-1)
    smax = xp.max(masked, axis=-1)
    half = smax / 2
    below = (s < half[:, None]) & in_win
    il = xp.max(xp.where(below & (idxs < imax[:, None]), idxs, -1), axis=-1)
    ir = xp.min(xp.where(below & (idxs > imax[:, None]), idxs, n), axis=-1)
    ok = (il >= 0) & (ir < n) & (smax > 0)
    il_c = xp.clip(il, 0, n - 2)
    ir_c = xp.clip(ir, 1, n - 1)

    def crossing(i0):
        s0 = _gather(s, i0[:, None])[:, 0]
        s1 = _gather(s, i0[:, None] + 1)[:, 0]
        e0, e1 = xp.take(e, i0), xp.take(e, i0 + 1)
        ds = s1 - s0
        safe = xp.where(ds != 0, ds, 1.0)
        c = e0 + (half - s0) * (e1 - e0) / safe
        de = (e1 - e0) / (safe * safe)
        # dc/ds0, dc/ds1, dc/ds_max
        return c, de * (half - s1), -de * (half - s0), (e1 - e0) / (2 * safe)

    c_r, r0, r1, rm = crossing(ir_c - 1)
    c_l, l0, l1, lm = crossing(il_c)
    width = xp.where(ok, c_r - c_l, xp.nan)
    if not sensitivity:
        return width
    idx = xp.stack([il_c, il_c + 1, ir_c - 1, ir_c, imax], axis=-1)
    q = xp.stack([-l0, -l1, r0, r1, rm - lm], axis=-1)
    return width, q, idx


def _fit_linearisation(
    x: Any, e: Any, chan_width: Any, range_w: Any, model: str, bg_density: Any
) -> dict[str, Any]:
    """What the linearised background fit needs (see :func:`_fit_part`).

    The fit ``y = a + b u`` gives ``d(a, b) = M^-1 sum_j U_j h_j dx_j`` with
    ``M = sum w_j U_j U_j^T`` and ``U_j = (1, u_j)``. Power law: ``u = ln E``, ``w = usable x``
    (the counts weights; a change of the weights moves the estimate only at second order, as
    the residuals are noise) and ``y = ln(x / width)``, so ``h_j = usable_j``; linear: ``u = E``,
    ``w = usable`` and ``y = x / width``, so ``h_j = usable_j / width_j``, the same for every
    pixel (1-D arrays and scalars: the linear model's propagation costs almost nothing). The
    fitted density moves by ``dD_i = D'_i (da + u_i db)`` with ``D' = D`` (power law) or 1
    (linear: ``dd`` None).
    """
    xp = array_namespace(x)
    if model == "power-law":
        usable = xp.where(x > 0, range_w, 0.0)
        fit_w = usable * xp.where(x > 0, x, 0.0)
        u = xp.log(e)
        h = usable
        dd = bg_density
    else:
        fit_w = range_w
        u = e
        h = range_w / chan_width
        dd = None
    s0 = xp.sum(fit_w, axis=-1)
    su = xp.sum(fit_w * u, axis=-1)
    suu = xp.sum(fit_w * u * u, axis=-1)
    det = s0 * suu - su * su
    return {
        "u": u,
        "h": h,
        "dd": dd,
        "s0": s0[..., None],
        "su": su[..., None],
        "suu": suu[..., None],
        "det": xp.where(det > 0, det, 1.0)[..., None],
    }


def _fit_part(g0: Any, g1: Any, lin: dict[str, Any]) -> Any:
    """``h_j G^T M^-1 U_j``: how channel ``j`` moves an estimator through the background fit,
    for ``G = (g0, g1) = sum_i q_i D'_i (1, u_i)`` (``q_i = dQ/ds_i``, ``s`` the net density)."""
    u = lin["u"]
    g0, g1 = g0[..., None], g1[..., None]
    k = (g0 * (lin["suu"] - lin["su"] * u) + g1 * (lin["s0"] * u - lin["su"])) / lin["det"]
    return lin["h"] * k


def _alpha(direct: Any, q: Any, lin: dict[str, Any] | None) -> Any:
    """Sensitivities ``a_j = dQ/dx_j`` of an estimator with density sensitivities ``q_i = dQ/ds_i``.

    ``s_i = x_i / width_i - D_i`` is the net (background-subtracted) density, so
    ``a_j = q_j / width_j - h_j G^T M^-1 U_j`` (``direct = q / width``; the second term from
    :func:`_fit_part`, none without a background).
    """
    xp = array_namespace(direct)
    if lin is None:
        return direct
    qd = q if lin["dd"] is None else q * lin["dd"]
    return direct - _fit_part(xp.sum(qd, axis=-1), xp.sum(qd * lin["u"], axis=-1), lin)


def _sparse_sigma(q_k: Any, idx: Any, chan_width: Any, var: Any, lin: dict[str, Any] | None) -> Any:
    """Sigma of an estimator that reads a few channels ``idx`` with density sensitivities
    ``q_k`` (a peak fit, a FWHM), by gathers only: ``sum_j a_j^2 v_j`` with
    ``a = d - f``, ``d = q / width`` on those channels (repeated channels summed first) and ``f``
    the fit part (:func:`_fit_part`) everywhere."""
    xp = array_namespace(q_k)
    flat = xp.reshape(idx, (-1,))
    w_k = xp.reshape(xp.take(chan_width, flat), idx.shape)
    v_k = _gather(var, idx)
    # a channel read twice (a narrow band's crossing next to its maximum) counts once, with the
    # sum of its sensitivities: d_eff_k = sum_l [idx_l = idx_k] d_l, weighted 1/multiplicity
    same = xp.astype(idx[:, :, None] == idx[:, None, :], q_k.dtype)
    d_eff = xp.sum(same * (q_k / w_k)[:, None, :], axis=-1)
    mult = xp.sum(same, axis=-1)
    total = xp.sum(d_eff * d_eff * v_k / mult, axis=-1)
    if lin is not None:
        qd = q_k if lin["dd"] is None else q_k * _gather(lin["dd"], idx)
        u_k = xp.reshape(xp.take(lin["u"], flat), idx.shape)
        fit = _fit_part(xp.sum(qd, axis=-1), xp.sum(qd * u_k, axis=-1), lin)
        total = total - 2 * xp.sum(d_eff * _gather(fit, idx) * v_k / mult, axis=-1)
        total = total + xp.sum(fit * fit * var, axis=-1)
    return xp.sqrt(xp.clip(total, 0.0, None))


def window_kernel(
    block: Any,
    energy_eV: Any,
    *,
    windows: Sequence[tuple[str, float, float]],
    backgrounds: Mapping[str, Sequence[Range]] | None = None,
    background_model: str = "power-law",
    centroid: Sequence[str] = (),
    peak: Sequence[str] = (),
    width: Sequence[str] = (),
    ratios: Sequence[tuple[str, str]] = (),
    peak_channels: int = 3,
    spans: Mapping[str, tuple[int, int]] | None = None,
    uncertainty: str | None = None,
    gain: float = 1.0,
    n_replicas: int = 100,
    seed: int = 0,
    variance: Any = None,
    pixel_index: Any = None,
) -> dict[str, Any]:
    """Window maps of a block of spectra (pure array-API kernel; see the module docstring).

    Window integrals on bin edges, backgrounds by :func:`fit_background` (power law: Egerton,
    *EELS in the Electron Microscope*, 3rd ed., sec. 4.4.2), centroid, Gaussian peak position
    (least-squares parabola on ``ln s``) and FWHM of the background-subtracted density, and
    (``uncertainty``) the counting sigma of the intensities, centroids, peaks and ratios.

    Parameters
    ----------
    block : array (n_pix, n_E)
        Counts per channel.
    energy_eV : array (n_E,)
        Increasing channel energies in eV (uniform or not).
    windows : sequence of (name, lo_eV, hi_eV)
        The integration windows.
    backgrounds : mapping name -> sequence of (lo_eV, hi_eV)
        Background-fit ranges per window (absent: no background removed).
    background_model : {"power-law", "linear"}
    centroid, peak, width : sequence of str
        Windows for which to compute ``_centroid_eV``, ``_peak_eV`` and ``_fwhm_eV``.
    ratios : sequence of (a, b)
        Window pairs whose intensity ratio ``a_over_b`` is returned.
    peak_channels : int
        Odd number of channels (>= 3) in the Gaussian peak fit.
    spans : mapping name -> (i0, i1), optional
        Channel slice holding the window and its background ranges with a margin of at least
        two channels (work is then done on that slice only); the whole axis by default.
    uncertainty : {None, "analytic", "replicas"}
        ``"analytic"``: every estimator linearised about the data (:func:`_alpha`, the peak's
        :func:`_peak_fit` sensitivity), ``sigma^2 = sum_j a_j^2 var(x_j)``, ratios with the
        covariance of their windows (:func:`eelsgpu.kernels.uncertainty.ratio_sigma`);
        ``"replicas"``: ``n_replicas`` noise replicas per pixel
        (:func:`eelsgpu.kernels.uncertainty.draw_replicas`) run through this same kernel as one
        larger batch (in batches of bounded memory) and reduced to their standard deviation.
    gain : float
        Data units per counted electron: ``var(x) = gain x`` (Poisson).
    n_replicas, seed : int
        Replicas per pixel and the seed (replicas only).
    variance : array (n_pix, n_E), optional
        A measured per-channel variance (data units^2) replacing ``gain x``.
    pixel_index : array (n_pix,), optional
        Global pixel index of each spectrum (replica seeding; default 0..n_pix-1).

    Returns
    -------
    dict
        ``name`` (counts), ``name_background`` (counts), ``name_valid`` (bool) per window, and
        the requested extras (``_centroid_eV``, ``_peak_eV``, ``_fwhm_eV`` in eV, ratios ``a_over_b``
        dimensionless), each ``(n_pix,)``; with ``uncertainty`` also ``<output>_sigma`` (same
        units) for every intensity, centroid, peak, FWHM and ratio.

    Examples
    --------
    >>> e = np.arange(100.0, 200.0, 0.5)
    >>> block = 1e4 * np.exp(-0.5 * ((e - 150.0) / 2.0) ** 2) * np.ones((1, 1))
    >>> out = window_kernel(block, e, windows=(("b", 140.0, 160.0),), uncertainty="analytic")
    >>> bool(np.isclose(out["b_sigma"][0], np.sqrt(out["b"][0])))
    True
    """
    xp = array_namespace(block)
    e_all = xp.astype(energy_eV, xp.float64)
    lo_edge, hi_edge = channel_edges(e_all)
    width_all = hi_edge - lo_edge
    backgrounds = backgrounds or {}
    spans = spans or {}
    half = max(1, int(peak_channels) // 2)
    analytic = uncertainty == "analytic"
    if uncertainty not in (None, "analytic", "replicas"):
        raise ValueError(f"uncertainty must be None, 'analytic' or 'replicas', not {uncertainty!r}")
    out: dict[str, Any] = {}
    # per window: its channel slice, its intensity sensitivities and the slice's variance
    lin_terms: dict[str, tuple[int, Any, Any]] = {}
    for name, lo, hi in windows:
        i0, i1 = spans.get(name, (0, e_all.shape[0]))
        x = xp.astype(block[:, i0:i1], xp.float64)
        e = e_all[i0:i1]
        chan_width = width_all[i0:i1]
        density = x / chan_width
        f = window_weights(e, lo, hi)
        raw = xp.sum(x * f, axis=-1)
        ranges = backgrounds.get(name)
        lin = None
        if ranges:
            range_w = _range_weights(e, ranges)
            bg_density, ok = fit_background(
                x, e, range_w, background_model, channel_width_eV=chan_width
            )
            bg = xp.sum(bg_density * chan_width * f, axis=-1)
            net_density = density - bg_density
            if analytic:
                lin = _fit_linearisation(x, e, chan_width, range_w, background_model, bg_density)
        else:
            bg = xp.zeros_like(raw)
            ok = xp.ones(raw.shape, dtype=xp.bool)
            net_density = density
        intensity = raw - bg
        ok = ok & xp.isfinite(intensity)
        out[name] = xp.where(ok, intensity, xp.nan)
        out[f"{name}_background"] = xp.where(ok, bg, xp.nan)
        out[f"{name}_valid"] = ok
        net = net_density * chan_width * f
        if analytic:
            if variance is None:
                var = poisson_variance(x, gain)
            else:
                var = xp.astype(variance[:, i0:i1], xp.float64)
            a_int = _alpha(f, chan_width * f, lin)
            if len(a_int.shape) == 1:
                a_int = xp.broadcast_to(a_int, x.shape)  # the covariance slices it per pixel
            lin_terms[name] = (i0, a_int, var)
            out[f"{name}_sigma"] = xp.where(ok, linear_sigma(a_int, var), xp.nan)
        if name in centroid:
            total = xp.sum(net, axis=-1)
            good = ok & (total > 0)
            safe_total = xp.where(good, total, 1.0)
            c = xp.sum(net * e, axis=-1) / safe_total
            out[f"{name}_centroid_eV"] = xp.where(good, c, xp.nan)
            if analytic:
                direct = (e[None, :] - c[:, None]) * f / safe_total[:, None]
                sig = linear_sigma(_alpha(direct, direct * chan_width, lin), var)
                out[f"{name}_centroid_eV_sigma"] = xp.where(good, sig, xp.nan)
        in_win = f >= 0.5
        if name in peak:
            if analytic:
                p, q_k, idx = _peak_fit(net_density, e, in_win, half, sensitivity=True)
                sig = _sparse_sigma(q_k, idx, chan_width, var, lin)
                out[f"{name}_peak_eV_sigma"] = xp.where(ok & xp.isfinite(p), sig, xp.nan)
            else:
                p = _peak_fit(net_density, e, in_win, half)
            out[f"{name}_peak_eV"] = xp.where(ok, p, xp.nan)
        if name in width:
            if analytic:
                w, q_k, idx = _fwhm(net_density, e, in_win, sensitivity=True)
                sig = _sparse_sigma(q_k, idx, chan_width, var, lin)
                out[f"{name}_fwhm_eV_sigma"] = xp.where(ok & xp.isfinite(w), sig, xp.nan)
            else:
                w = _fwhm(net_density, e, in_win)
            out[f"{name}_fwhm_eV"] = xp.where(ok, w, xp.nan)
    for a, b in ratios:
        den = out[b]
        good = xp.isfinite(den) & (den > 0) & xp.isfinite(out[a])
        out[f"{a}_over_{b}"] = xp.where(good, out[a] / xp.where(good, den, 1.0), xp.nan)
        if analytic:
            cov = _covariance(lin_terms[a], lin_terms[b])
            va = out[f"{a}_sigma"] ** 2
            vb = out[f"{b}_sigma"] ** 2
            out[f"{a}_over_{b}_sigma"] = ratio_sigma(out[a], den, va, vb, cov)
    if uncertainty == "replicas":
        out.update(
            _replica_sigmas(
                block,
                e_all,
                out,
                windows=windows,
                backgrounds=backgrounds,
                background_model=background_model,
                centroid=centroid,
                peak=peak,
                width=width,
                ratios=ratios,
                peak_channels=peak_channels,
                spans=spans,
                gain=gain,
                n_replicas=n_replicas,
                seed=seed,
                variance=variance,
                pixel_index=pixel_index,
            )
        )
    return out


def _covariance(ta: tuple[int, Any, Any], tb: tuple[int, Any, Any]) -> Any:
    """``sum_j a_j b_j var(x_j)`` over the channels two windows' slices share."""
    (ia, aa, va), (ib, ab, _) = ta, tb
    xp = array_namespace(aa)
    lo, hi = max(ia, ib), min(ia + aa.shape[-1], ib + ab.shape[-1])
    if hi <= lo:
        return xp.zeros(aa.shape[:1], dtype=aa.dtype)
    sa, sb = aa[:, lo - ia : hi - ia], ab[:, lo - ib : hi - ib]
    return xp.sum(sa * sb * va[:, lo - ia : hi - ia], axis=-1)


def sigma_targets(
    windows: Sequence[tuple[str, float, float]],
    centroid: Sequence[str] = (),
    peak: Sequence[str] = (),
    ratios: Sequence[tuple[str, str]] = (),
    width: Sequence[str] = (),
) -> list[str]:
    """The outputs of :func:`window_kernel` that get a ``_sigma`` (intensities, centroids, peaks,
    FWHMs, ratios), in output order.

    Examples
    --------
    >>> sigma_targets((("a", 1.0, 2.0), ("b", 3.0, 4.0)), peak=("a",), ratios=(("a", "b"),))
    ['a', 'a_peak_eV', 'b', 'a_over_b']
    """
    names: list[str] = []
    for name, _, _ in windows:
        names.append(name)
        if name in centroid:
            names.append(f"{name}_centroid_eV")
        if name in peak:
            names.append(f"{name}_peak_eV")
        if name in width:
            names.append(f"{name}_fwhm_eV")
    names += [f"{a}_over_{b}" for a, b in ratios]
    return names


def _replica_sigmas(
    block: Any,
    e_all: Any,
    values: Mapping[str, Any],
    *,
    windows: Sequence[tuple[str, float, float]],
    spans: Mapping[str, tuple[int, int]],
    **params: Any,
) -> dict[str, Any]:
    """``<output>_sigma`` from replicas run through :func:`window_kernel` as a larger batch
    (:func:`eelsgpu.kernels.uncertainty.replica_sigmas`), drawing only the channels the windows
    use."""
    xp = array_namespace(block)
    n_e = e_all.shape[0]
    sl = {name: spans.get(name, (0, n_e)) for name, _, _ in windows}
    lo = min(i0 for i0, _ in sl.values())
    hi = max(i1 for _, i1 in sl.values())
    targets = sigma_targets(
        windows,
        params.get("centroid", ()),
        params.get("peak", ()),
        params.get("ratios", ()),
        params.get("width", ()),
    )
    sig = replica_sigmas(
        window_kernel,
        block,
        e_all,
        targets,
        channels=(lo, hi),
        windows=windows,
        spans={name: (i0 - lo, i1 - lo) for name, (i0, i1) in sl.items()},
        **params,
    )
    return {f"{t}_sigma": xp.where(xp.isfinite(values[t]), sig[t], xp.nan) for t in targets}


def window_spans(
    energy: np.ndarray, windows: Sequence[tuple[str, float, float]], bgs: Mapping[str, list[Range]]
) -> dict[str, tuple[int, int]]:
    """Channel slice of each window and its background ranges, with a 3-channel margin.

    The ``spans`` argument of :func:`window_kernel` (host NumPy, increasing energies in eV).

    Parameters
    ----------
    energy : numpy.ndarray (n_E,)
        Channel energies in eV.
    windows : sequence of (name, lo_eV, hi_eV)
    bgs : mapping name -> list of (lo_eV, hi_eV)
        Background-fit ranges per window.

    Returns
    -------
    dict
        ``name -> (i0, i1)``, a channel slice.
    """
    out = {}
    for name, lo, hi in windows:
        lows = [lo] + [r[0] for r in bgs.get(name, [])]
        highs = [hi] + [r[1] for r in bgs.get(name, [])]
        i0 = max(0, int(np.searchsorted(energy, min(lows))) - 3)
        i1 = min(energy.size, int(np.searchsorted(energy, max(highs))) + 3)
        out[name] = (i0, i1)
    return out


# --------------------------------------------------------------------------- declaration
def window_outputs(params: Mapping[str, Any], units: str = "counts") -> list[Output]:
    """The outputs :func:`window_kernel` returns for these kernel parameters.

    Per window ``<name>`` (in ``units``, the unit of the input counts), ``<name>_background``
    (``units``) and ``<name>_valid`` (bool); the requested ``_centroid_eV``, ``_peak_eV`` and
    ``_fwhm_eV`` (eV); per ratio ``<a>_over_<b>`` (1); with ``uncertainty`` a ``<output>_sigma``
    (same units) for every output of :func:`sigma_targets`.
    """
    bgs = params.get("backgrounds") or {}
    background_model = params.get("background_model", "power-law")
    cen = params.get("centroid", ())
    pk = params.get("peak", ())
    wd = params.get("width", ())
    outputs: list[Output] = []
    for name, lo, hi in params["windows"]:
        net = "net " if name in bgs else ""
        outputs += [
            Output(
                name,
                units,
                f"{name} {net}{lo:g}-{hi:g} eV",
                attrs={
                    "window_eV": [lo, hi],
                    "background_eV": [list(r) for r in bgs.get(name, [])],
                    "background_model": background_model if name in bgs else "none",
                },
            ),
            Output(f"{name}_background", units, f"{name} background under the window"),
            Output(f"{name}_valid", "", f"{name} background fit succeeded", dtype="bool"),
        ]
        if name in cen:
            outputs.append(Output(f"{name}_centroid_eV", "eV", f"{name} centroid"))
        if name in pk:
            outputs.append(Output(f"{name}_peak_eV", "eV", f"{name} peak (Gaussian fit)"))
        if name in wd:
            outputs.append(Output(f"{name}_fwhm_eV", "eV", f"{name} FWHM"))
    for a, b in params.get("ratios", ()):
        outputs.append(Output(f"{a}_over_{b}", "1", f"{a} / {b} intensity ratio"))
    method = params.get("uncertainty")
    if method:
        label = "analytic" if method == "analytic" else f"replicas:{int(params['n_replicas'])}"
        by_name = {o.name: o for o in outputs}
        for t in sigma_targets(params["windows"], cen, pk, params.get("ratios", ()), wd):
            o = by_name[t]
            outputs.append(
                Output(
                    f"{t}_sigma",
                    o.units,
                    f"sigma of {o.long_name} (counting)",
                    attrs={"sigma_of": t, "uncertainty": label, "part": "counting"},
                )
            )
    return outputs


def window_block(units: str = "counts") -> BlockKernel:
    """:func:`window_kernel` declared for the engine, for input counts in ``units``.

    The outputs follow the kernel parameters (:func:`window_outputs`); the intensities carry
    the input's unit, which the parameters do not hold, hence a declaration per unit.
    """
    return BlockKernel(
        window_kernel,
        outputs=functools.partial(window_outputs, units=units),
        tile_pixels=TILE_PIXELS,
        name="window_maps",
    )
