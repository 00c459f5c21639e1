"""Band-gap onset fit of a block of spectra: the energy and type of the absorption onset.

Near a band gap the single-scattering loss rises as a power of the energy above the gap,

    I(E) = A (E - Eg)^b  for E > Eg,  0 below,

with b = 1/2 for a direct and b = 3/2 for an indirect allowed transition (Rafferty & Brown,
Phys. Rev. B 58, 10326 (1998); Egerton 2011, section 3.3.6; used by EELSfitter, Roest et al.,
Ultramicroscopy 222, 113202 (2021)). What lies under the onset (the tail of the zero-loss peak,
or its residual after subtraction) is a background ``B(E)``: none, a constant, a straight line or
a decaying power law ``c0 + c1 (E/E_lo)^-r``.

The fit is exact least squares without a per-pixel optimiser, so it streams blockwise on CPU or
GPU: for every candidate (Eg, b, r) on a grid the model is *linear* in A and the background
coefficients, which are profiled out in closed form (Frisch-Waugh: the onset column is
projected off the background columns, then A = <f, y~>_w / <f~, f~>_w with A >= 0 enforced);
the chi^2 of every candidate comes from a few matrix products over the whole block. The minimum
of the profile chi^2(Eg) (b, r and the linear parameters profiled out) is refined by a 5-point
parabola, and its curvature gives the standard error, sigma^2 = 2 / (d^2 chi^2 / dEg^2) (the
Delta chi^2 = 1 rule; where the profile is not parabolic, the half-width of the grid interval
with Delta chi^2 <= 1 if that is wider), scaled by sqrt(reduced chi^2) when the model fits worse
than the noise. With b free (a grid of 0.1) the estimate is made continuous in b (issue 14: on
the curved Eg-b valley the grid's b moved Eg by more than its sigma, and the 5-point parabola
over b put b 3-5 sigma above the truth): per grid b the conditional minimum in Eg (a parabola
through three Eg points), the parabola of chi^2(b) through the best grid b and its neighbours,
Eg interpolated along the valley, then Newton steps on chi^2(Eg, b) at each pixel's own (Eg, b)
(:func:`_newton`: a 3 x 3 stencil along the valley at the scale of the sigmas, the step kept
only where it lowers chi^2), whose Hessian gives the errors of Eg and b, each marginalised over
the other, widened or narrowed where the profile likelihood is not parabolic
(:func:`_profile_secant`). The type is the better of b = 1/2 and b = 3/2 by chi^2 on the grid
(a likelihood-ratio choice). Weights are Poisson:
variance = the counts smoothed over 5 channels (at least 1), or a variance cube the caller gives.
Energies are in eV, spectra in counts per channel.

A pixel is flagged (``valid`` False, NaN results, ``gap_type`` -1) when the onset is not
significant (the onset term improves chi^2 by less than ``min_significance``^2), when the best
Eg or b sits at the edge of its search range, when the chi^2 curvature is not positive, or when
its reduced chi^2 is far above the image's median (the model does not describe that pixel):
bit NO_ONSET of the ``quality`` map (:mod:`.quality`).

The zero-loss peak's residue. Where a ZLP was taken off the spectrum (a measured vacuum ZLP
subtracted, or the SSD of a deconvolution), what the subtraction left decays from 0 eV towards
the pre-onset floor; a window that starts on that decay asks the onset term to tell the
residue's foot from the gap, and on the real WS2 spectra it does not (EELSfitter Specimen 3,
the vacuum reference subtracted: 2 of 10 spectra give 0.69 and 0.71 eV, at the residue's foot,
against 1.6-1.7 for the rest). :func:`zlp_residue` measures, per pixel, how far the spectrum at
the window's start stands above the window's floor, in units of the onset's own rise within
the window (``residue_excess``), and where that falls below :data:`RESIDUE_LIMIT`
(``zlp_residue_end_eV``, where a window may start). A ZLP-removed pixel whose excess is above
the limit gets WINDOW_IN_ZLP_RESIDUE (fatal), and so does one whose fitted onset lies less than
:data:`FOOT_FRACTION` of the window above ``zlp_residue_end_eV`` (the window then holds no
pre-onset floor: on WS2 with a power-law background the onset latches onto the residue's foot at
0.70-0.77 eV even from a window that starts where the residue has come down). A raw spectrum's
ZLP tail is not a residue: the power-law background models it, and is not flagged.

:func:`bandgap_kernel` fits a block (array API, NumPy/CuPy/array-api-strict);
:func:`bandgap_block` subtracts a ZLP model first where asked (the reference-ZLP route: each
pixel's ZLP centre moved to 0 eV, the fit weighted by the raw counts), checks the residue and
sets the quality bits; :data:`BANDGAP_BLOCK` declares it for the engine; :func:`auto_window`
finds a fit window on the host from the mean spectrum. The xarray-facing function is
:func:`eelsgpu.bandgap` (:mod:`eelsgpu.analysis.bandgap`).

Examples
--------
>>> e = np.arange(0.0, 6.0, 0.02)
>>> y = 1.0 + 400.0 * np.clip(e - 2.5, 0, None) ** 1.5
>>> i0, i1 = np.searchsorted(e, [1.0, 5.0], side="left"), np.searchsorted(e, 5.0, side="right")
>>> out = bandgap_kernel(y[None, :], e, window=(int(i0[0]), int(i1)),
...                      eg_grid_eV=np.arange(1.0, 4.8, 0.02), b_values=(B_INDIRECT,),
...                      background="constant")
>>> round(float(out["bandgap_eV"][0]), 2), int(out["gap_type"][0])
(2.5, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._xp import array_namespace, axis_step, moving_average
from ..errors import InputError
from . import quality as q
from .declare import BlockKernel, Output
from .zlp import SEARCH_EV, shift_kernel, zlp_kernel

__all__ = [
    "BACKGROUNDS",
    "BANDGAP_BLOCK",
    "BANDGAP_OUTPUTS",
    "B_DIRECT",
    "B_FREE",
    "B_INDIRECT",
    "MODELS",
    "FOOT_FRACTION",
    "ONSET_FRACTION",
    "PRE_ONSET_SHARE",
    "RESIDUE_LIMIT",
    "TAIL_EXPONENTS",
    "TILE_PIXELS",
    "auto_window",
    "bandgap_block",
    "bandgap_kernel",
    "zlp_residue",
]

MODELS = ("direct", "indirect", "free")
BACKGROUNDS = ("none", "constant", "linear", "power-law")
#: Exponent of a direct and of an indirect allowed transition.
B_DIRECT, B_INDIRECT = 0.5, 1.5
#: b grid of the free model (includes 0.5 and 1.5 exactly, so the type test compares them).
B_FREE = tuple(round(0.3 + 0.1 * i, 10) for i in range(18))  # 0.3 .. 2.0
#: Decay exponents r of the power-law background tried per pixel.
TAIL_EXPONENTS = tuple(0.5 * i for i in range(2, 13))  # 1 .. 6
_SMOOTH = 5  # channels in the moving average that estimates the Poisson variance
#: The largest ZLP residue at the window's start, in units of the onset's rise within the window
#: (:func:`zlp_residue`), for a ZLP-removed spectrum not to get WINDOW_IN_ZLP_RESIDUE.
RESIDUE_LIMIT: float = 0.5
#: :func:`auto_window`: the onset is the last point below the half-rise still within this share
#: of the rise above the floor, and the window starts at least PRE_ONSET_SHARE of the onset's
#: span to the half-rise point below it (so that it holds a pre-onset floor to fit).
ONSET_FRACTION: float = 0.1
PRE_ONSET_SHARE: float = 0.5
#: An onset found less than this share of the window above where the residue has come down sits
#: at the residue's foot (WINDOW_IN_ZLP_RESIDUE): the window holds no pre-onset floor below it.
FOOT_FRACTION: float = 0.1


def _stencil(xp, prof, idx):
    """Values of ``prof`` (n, k) at idx-2..idx+2 (clipped) and whether idx is >= 2 from an edge."""
    k = prof.shape[1]
    vals = []
    for d in (-2, -1, 0, 1, 2):
        j = xp.clip(idx + d, 0, k - 1)
        vals.append(xp.take_along_axis(prof, j[:, None], axis=1)[:, 0])
    inside = (idx >= 2) & (idx <= k - 3)
    return vals, inside


def _interval_halfwidth(xp, prof, grid, chi2_min, scale2):
    """Half the width of the grid points with chi^2 <= min + scale2 (the 1-sigma interval)."""
    inside = prof <= (chi2_min + scale2)[:, None]
    lo = xp.min(xp.where(inside, grid[None, :], math.inf), axis=1)
    hi = xp.max(xp.where(inside, grid[None, :], -math.inf), axis=1)
    return xp.where(hi >= lo, 0.5 * (hi - lo), 0.0)


def _track(xp, track, chi2, fy, q, ok, fb, cols, theta, eg, b: float, r: float) -> None:
    """Keep, per pixel, the parameters of the best grid point seen so far (in place in dict)."""
    idx = xp.argmin(chi2, axis=1)[:, None]
    val = xp.take_along_axis(chi2, idx, axis=1)[:, 0]
    a_all = xp.where(ok, fy / xp.where(ok, q, 1.0), 0.0)
    a = xp.take_along_axis(a_all, idx, axis=1)[:, 0]
    better = val < track["chi2"]
    new = {
        "chi2": val,
        "a": a,
        "eg": xp.take(eg, idx[:, 0]),
        "b": xp.full_like(a, b),
        "r": xp.full_like(a, r),
    }
    # background at the joint optimum: theta - A G^-1 <B, f> (the onset's share removed)
    fb_at = [xp.take_along_axis(f, idx, axis=1)[:, 0] for f in fb]
    for p in range(len(fb)):
        shift = sum(cols[p][s_][:, 0] * fb_at[s_] for s_ in range(len(fb)))
        new[f"c{p}"] = theta[p][:, 0] - a * shift
    for key, value in new.items():
        track[key] = xp.where(better, value, track[key])


def _parabola(vals):
    """Least-squares parabola through 5 equally spaced values: vertex offset and c2 (grid units).

    With orthogonal polynomials on k = -2..2: c1 = sum k v / 10, c2 = sum (k^2 - 2) v / 14, and
    v(k) ~ c0 + c1 k + c2 (k^2 - 2), so the vertex is at -c1 / (2 c2) and d^2v/dk^2 = 2 c2.
    """
    ks = (-2.0, -1.0, 0.0, 1.0, 2.0)
    c1 = sum(k * v for k, v in zip(ks, vals, strict=True)) / 10.0
    c2 = sum((k * k - 2.0) * v for k, v in zip(ks, vals, strict=True)) / 14.0
    return c1, c2


def _vertex3(xp, vm, v0, vp):
    """The parabola through (-1, vm), (0, v0), (1, vp): vertex offset (clipped to +-1), value
    there and second derivative (grid units; NaN where not positive)."""
    g = 0.5 * (vp - vm)
    c = vp - 2.0 * v0 + vm
    good = c > 0
    k = xp.clip(-g / xp.where(good, c, 1.0), -1.0, 1.0)
    k = xp.where(good, k, 0.0)
    return k, v0 + g * k + 0.5 * c * k * k, xp.where(good, c, math.nan)


def _refine(xp, prof, eg, h_eg):
    """Eg at the minimum of chi^2(Eg | b) (n, n_eg), refined by the parabola through the grid
    minimum and its two neighbours: (Eg in eV, chi^2 there, d^2chi^2/dEg^2 in 1/eV^2)."""
    idx = xp.argmin(prof, axis=1)
    # the three values in one gather (one of these per grid b: few device operations)
    j = xp.clip(
        idx[:, None] + xp.asarray([-1, 0, 1], dtype=idx.dtype)[None, :], 0, prof.shape[1] - 1
    )
    v3 = xp.take_along_axis(prof, j, axis=1)
    k, val, c = _vertex3(xp, v3[:, 0], v3[:, 1], v3[:, 2])
    return xp.take(eg, idx) + k * h_eg, val, c / (h_eg * h_eg)


def _valley(xp, valley, bgrid, h_b: float, h_eg):
    """The joint (Eg, b) minimum of the free model, continuous in b, and its errors.

    ``valley`` holds per grid b the conditional fit (Eg(b), chi^2(b), d^2chi^2/dEg^2 at b). b is
    the vertex of the parabola through chi^2(b) at the grid minimum and its two neighbours, and
    Eg the quadratic (Lagrange) interpolation of Eg(b) there, so that neither jumps from one
    grid cell of b to the next (on the curved Eg-b valley a b grid of 0.1 moved Eg by more than
    its sigma; tests/analysis/test_kk_bandgap_uncertainty.py). Errors (Delta chi^2 = 1, the
    (Eg, b) Hessian H): b's from the profile's curvature, sigma_b^2 = 2 / chi^2''(b); Eg's
    marginalised over b, [2 H^-1]_EgEg = sigma_Eg|b^2 + (dEg/db)^2 sigma_b^2 (the conditional
    error at b and b's error carried along the valley's slope).

    Returns
    -------
    (eg, eg_err, b, b_err, good_b, b_inside) : arrays (n,)
    """
    e_b = xp.stack([v[0] for v in valley], axis=1)
    chi_b = xp.stack([v[1] for v in valley], axis=1)
    curv_e = xp.stack([v[2] for v in valley], axis=1)
    n_b = chi_b.shape[1]
    jdx = xp.argmin(chi_b, axis=1)
    cv, _ = _stencil(xp, chi_b, jdx)
    k, _, c = _vertex3(xp, cv[1], cv[2], cv[3])
    good_b = xp.isfinite(c)
    b_inside = (jdx >= 1) & (jdx <= n_b - 2)
    ev, _ = _stencil(xp, e_b, jdx)
    de = 0.5 * (ev[3] - ev[1])
    d2e = ev[3] - 2.0 * ev[2] + ev[1]
    eg = ev[2] + k * de + 0.5 * k * k * d2e
    slope = (de + k * d2e) / h_b  # dEg/db along the valley at b
    b_best = xp.take(bgrid, jdx) + k * h_b
    b_var = 2.0 * h_b * h_b / c
    cc, _ = _stencil(xp, curv_e, jdx)
    # the conditional curvature in Eg at b, linear between the grid b's either side
    ce = xp.where(k >= 0, cc[2] + k * (cc[3] - cc[2]), cc[2] - k * (cc[1] - cc[2]))
    ce = xp.where(ce > 0, ce, math.nan)
    eg_var = 2.0 / ce + slope * slope * b_var
    return {
        "eg": eg,
        "eg_err": xp.sqrt(eg_var),
        "eg_cond_err": xp.sqrt(2.0 / ce),
        "slope": slope,
        "b": b_best,
        "b_err": xp.sqrt(b_var),
        "good_b": good_b,
        "b_inside": b_inside,
    }


#: Where :func:`_profile_secant` measures the profile's rise, in sigmas of the Hessian.
SECANT = 1.5
#: Newton steps of the joint (Eg, b) refinement of the free model (:func:`_newton`).
NEWTON_STEPS = 5
#: The longest Newton step, in stencil units (about sigmas; longer steps, 8, left b = 0.5 at
#: high counts less converged in the coverage tests). 4 steps instead of 5 did too.
MAX_STEP = 2.0
# the 3 x 3 stencil of _newton in step units: u (along Eg) and v (along b), row-major in v
_U = (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0)
_V = (-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)


def _newton(xp, chi2_at, v: dict[str, Any], h_eg, h_b: float) -> dict[str, Any]:
    """Newton steps on chi^2(Eg, b) (b's and the background's linear parameters profiled out)
    from the valley's estimate ``v`` (:func:`_valley`), each pixel at its own (Eg, b).

    ``chi2_at(eg, b)`` (both (n, 9)) gives chi^2 at each pixel's points. The 3 x 3 stencil
    lies along the valley: u steps Eg by ``de`` (Eg's conditional sigma), v steps b by ``db``
    (b's sigma) and Eg with it by the valley's slope, so the stencil spans the Delta chi^2 ~ 1
    region (the profile likelihood's, not the grid's scale) and the cross term is small. From
    it: gradient g and Hessian H (central differences), the step -H^-1 g, the covariance
    2 H^-1 (Delta chi^2 = 1) carried back to (Eg, b): var Eg = C_uu de^2 + 2 s C_uv de db +
    s^2 C_vv db^2, var b = C_vv db^2 (each marginalised over the other); the slope s and the
    steps follow H. Where H is not positive definite the pixel keeps the valley's values.
    """
    lo_e, lo_b = h_eg / 100.0, h_b / 100.0
    ce = v["eg_cond_err"]
    cur = {
        "eg": v["eg"],
        "b": v["b"],
        "slope": xp.where(xp.isfinite(v["slope"]), v["slope"], 0.0),
        "de": xp.clip(xp.where(xp.isfinite(ce), ce, h_eg), lo_e, h_eg),
        "db": xp.clip(xp.where(xp.isfinite(v["b_err"]), v["b_err"], h_b), lo_b, h_b / 2.0),
    }
    # the best stencil centre so far (lowest chi^2), the step from it, and the errors of the
    # last positive-definite Hessian
    best = cur | {
        "chi2": xp.full(v["eg"].shape, math.inf, dtype=v["eg"].dtype),
        "eg_err": v["eg_err"],
        "b_err": v["b_err"],
        "du": xp.zeros_like(v["eg"]),
        "dv": xp.zeros_like(v["eg"]),
        "cov": xp.zeros_like(v["eg"]),
        "pd": xp.zeros(v["eg"].shape, dtype=xp.bool),
    }
    u = xp.asarray(_U, dtype=v["eg"].dtype)[None, :]
    w_ = xp.asarray(_V, dtype=v["eg"].dtype)[None, :]
    for _ in range(NEWTON_STEPS):
        de, db, slope = cur["de"], cur["db"], cur["slope"]
        pts_b = cur["b"][:, None] + db[:, None] * w_
        pts_e = cur["eg"][:, None] + de[:, None] * u + (slope * db)[:, None] * w_
        c = chi2_at(pts_e, pts_b)
        c = [c[:, i] for i in range(9)]
        gu, gv = 0.5 * (c[5] - c[3]), 0.5 * (c[7] - c[1])
        huu, hvv = c[5] - 2.0 * c[4] + c[3], c[7] - 2.0 * c[4] + c[1]
        huv = 0.25 * (c[8] - c[6] - c[2] + c[0])
        det = huu * hvv - huv * huv
        pd = (huu > 0) & (det > 0) & xp.isfinite(det)
        sdet = xp.where(pd, det, 1.0)
        shuu = xp.where(huu > 0, huu, 1.0)
        # the Newton step; where H is not positive definite (off the valley's floor) the
        # conditional step in Eg alone, which brings the centre down onto the floor
        du = xp.where(pd, -(hvv * gu - huv * gv) / sdet, xp.where(huu > 0, -gu / shuu, 0.0))
        dv = xp.where(pd, -(huu * gv - huv * gu) / sdet, 0.0)
        du, dv = xp.clip(du, -MAX_STEP, MAX_STEP), xp.clip(dv, -MAX_STEP, MAX_STEP)
        cuu, cvv, cuv = 2.0 * hvv / sdet, 2.0 * xp.where(pd, huu, 1.0) / sdet, -2.0 * huv / sdet
        var_e = cuu * de * de + 2.0 * slope * cuv * de * db + slope * slope * cvv * db * db
        here = {
            "eg": cur["eg"],
            "b": cur["b"],
            "chi2": c[4],
            "du": du * de + slope * dv * db,  # the step, in eV and in b
            "dv": dv * db,
            "pd": pd,
        }
        # what a positive-definite Hessian says: the errors (2 H^-1 carried back to (Eg, b)),
        # the valley's slope and the conditional sigmas that scale the next stencil
        errs = {
            "eg_err": xp.sqrt(xp.clip(var_e, 0.0, None)),
            "b_err": xp.sqrt(cvv) * db,
            "cov": (cuv * de + slope * cvv * db) * db,  # cov(Eg, b)
            "slope": slope - huv / shuu * de / db,
            "de": xp.clip(de * xp.sqrt(2.0 / shuu), lo_e, h_eg),
            "db": xp.clip(xp.sqrt(cvv) * db, lo_b, h_b / 2.0),
        }
        better = xp.isfinite(c[4]) & (c[4] < best["chi2"])
        best = {k: xp.where(better, here[k], best[k]) if k in here else best[k] for k in best}
        best = best | {k: xp.where(better & pd, errs[k], best[k]) for k in errs}
        # next: the step from a better centre; else half the best centre's step (a step that
        # raised chi^2: the power-law background's r grid makes the surface the lower
        # envelope of smooth ones, with kinks where the best r changes)
        best["du"] = xp.where(better, best["du"], 0.5 * best["du"])
        best["dv"] = xp.where(better, best["dv"], 0.5 * best["dv"])
        cur = {k: best[k] for k in ("slope", "de", "db")}
        cur["eg"] = best["eg"] + best["du"]
        cur["b"] = best["b"] + best["dv"]
    # the best centre moved by its Newton step where its Hessian holds (the step stays within
    # the stencil)
    small = best["pd"] & (xp.abs(best["dv"]) <= best["db"])
    eg = xp.where(small, best["eg"] + best["du"], best["eg"])
    b = xp.where(small, best["b"] + best["dv"], best["b"])
    ok = xp.isfinite(best["chi2"])
    s_e, s_b, cov = best["eg_err"], best["b_err"], best["cov"]
    eg_err = xp.where(ok, _profile_secant(xp, chi2_at, eg, b, s_e, s_b, cov, lo_b, True), s_e)
    b_err = xp.where(ok, _profile_secant(xp, chi2_at, eg, b, s_b, s_e, cov, lo_e, False), s_b)
    return v | {"eg": eg, "eg_err": eg_err, "b": b, "b_err": b_err}


def _profile_secant(xp, chi2_at, eg, b, s_x, s_y, cov, lo_y: float, x_is_eg: bool):
    """The error of x (Eg or b) from the profile likelihood itself: Delta chi^2 of the profile
    (y, the other, minimised: a parabola through three y's about the Hessian's conditional y)
    at x +- SECANT sigma_H, where a parabolic profile rises by SECANT^2. Where the curved Eg-b
    valley (or the onset's cusp at b < 1) makes the profile flatter or steeper than the local
    Hessian says, sigma = SECANT sigma_H / sqrt(Delta chi^2) (the secant through the two
    sides, whose mean cancels an offset of the centre; Delta clipped to 0.1..4 SECANT^2).
    ``s_x``, ``s_y``, ``cov``: the Hessian's sigmas of x and y and their covariance."""
    ok = xp.isfinite(s_x) & (s_x > 0) & xp.isfinite(s_y) & xp.isfinite(cov)
    sx = xp.where(ok, s_x, 1.0)
    k = xp.where(ok, cov, 0.0) / (sx * sx)  # dy/dx along the profile
    cond = xp.clip(xp.where(ok, s_y, 0.0) ** 2 - xp.where(ok, cov, 0.0) * k, 0.0, None)
    dy = xp.clip(xp.sqrt(cond), lo_y, None)
    sides = (-SECANT, -SECANT, -SECANT, SECANT, SECANT, SECANT, 0.0)
    steps = (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, 0.0)
    sd = xp.asarray(sides, dtype=eg.dtype)[None, :]
    st = xp.asarray(steps, dtype=eg.dtype)[None, :]
    px = sd * sx[:, None]
    py = sd * (k * sx)[:, None] + st * (SECANT * dy)[:, None]
    if x_is_eg:
        c = chi2_at(eg[:, None] + px, b[:, None] + py)
    else:
        c = chi2_at(eg[:, None] + py, b[:, None] + px)
    c0 = c[:, 6]
    rise = 0.0
    for i in (0, 3):
        _, val, _ = _vertex3(xp, c[:, i], c[:, i + 1], c[:, i + 2])
        # no positive curvature in y: the middle point (an upper bound of the profile)
        val = xp.where(xp.isfinite(val), val, c[:, i + 1])
        rise = rise + 0.5 * (xp.minimum(val, c[:, i + 1]) - c0)
    rise = xp.clip(xp.where(xp.isfinite(rise), rise, SECANT**2), 0.1 * SECANT**2, 4 * SECANT**2)
    return xp.where(ok, SECANT * s_x / xp.sqrt(rise), s_x)


def bandgap_kernel(
    block: Any,
    energy_eV: Any,
    *,
    window: tuple[int, int],
    eg_grid_eV: Any,
    b_values: Sequence[float] = (B_DIRECT,),
    background: str = "power-law",
    tail_exponents: Sequence[float] = TAIL_EXPONENTS,
    min_significance: float = 5.0,
    variance: Any = None,
    return_model: bool = False,
) -> dict[str, Any]:
    """Fit I(E) = A (E - Eg)^b + background to every spectrum of a block (array API).

    Rafferty & Brown, PRB 58, 10326 (1998), eq. 1 (the onset power law); grid search with the
    linear parameters profiled out in closed form, see the module docstring.

    Parameters
    ----------
    block : array (n_pixels, n_energy)
        Spectra (counts per channel): an SSD or a ZLP-subtracted spectrum; the raw spectrum works
        too when its ZLP tail is modelled by the power-law background.
    energy_eV : array (n_energy,)
        Energy loss in eV.
    window : (int, int)
        Channel slice [i0, i1) of the fit.
    eg_grid_eV : array (n_eg,)
        Candidate gap energies in eV, equally spaced (at least 5).
    b_values : sequence of float
        Exponents tried: one value (fixed) or an equally spaced grid of at least 5 (free).
    background : {"none", "constant", "linear", "power-law"}
        What lies under the onset.
    tail_exponents : sequence of float
        r values tried for the power-law background.
    min_significance : float
        The onset must lower chi^2 by at least this squared (in sigma) to count.
    variance : array (n_pixels, n_energy), optional
        Variance of each channel (counts^2); default Poisson from the smoothed counts.
    return_model : bool
        Also return ``model`` (n_pixels, window channels): the best-fitting curve on the grid,
        to draw over the data (costs a little more).

    Returns
    -------
    dict
        ``bandgap_eV``, ``bandgap_error_eV``, ``exponent_b``, ``exponent_error``, ``gap_type``
        (0 direct, 1 indirect, -1 flagged), ``fit_quality`` (reduced chi^2), ``r_squared``,
        ``onset_significance`` (sigma), ``amplitude`` (A, counts per channel per eV^b),
        ``valid`` (bool), each (n_pixels,).
    """
    xp = array_namespace(block)
    # float64 even from float32 counts (the one block-sized float64 array on the GPU path, the
    # window): chi^2 of a candidate is chi^2 of the background alone minus <f, y>^2 / <f, f>
    # after the onset column is projected off the background's, a difference of large sums that
    # cancels where the onset looks like the background; in float32 Eg moved by up to 1.3 sigma
    # and pixels changed validity on noisy synthetic onsets (tests/engine/test_gpu_budget.py)
    f64 = xp.float64
    i0, i1 = int(window[0]), int(window[1])
    y = xp.astype(block[:, i0:i1], f64)
    e = xp.astype(energy_eV[i0:i1], f64)
    eg = xp.astype(eg_grid_eV, f64)
    n, m = y.shape
    n_eg = eg.shape[0]
    finite = xp.all(xp.isfinite(y), axis=1)
    # a pixel with NaN/inf is flagged; its values are replaced so the arithmetic stays quiet
    y = xp.where(finite[:, None], y, 1.0)
    if variance is None:
        var = moving_average(xp, y, _SMOOTH // 2)
        var = xp.clip(xp.abs(var), 1.0, None)
    else:
        var = xp.astype(variance[:, i0:i1], f64)
        var_ok = xp.all(xp.isfinite(var) & (var > 0), axis=1)
        finite = finite & var_ok
        var = xp.where(var_ok[:, None], xp.clip(var, 1e-12, None), 1.0)
    w = 1.0 / var
    wy = w * y

    e_lo = e[0]
    span = e[-1] - e[0]
    if background == "power-law":
        bases = [[xp.ones_like(e), (e / e_lo) ** (-float(r))] for r in tail_exponents]
    elif background == "linear":
        bases = [[xp.ones_like(e), (e - e_lo) / span]]
    elif background == "constant":
        bases = [[xp.ones_like(e)]]
    elif background == "none":
        bases = [[]]
    else:
        raise ValueError(f"background must be one of {BACKGROUNDS}, not {background!r}")
    k_bg = len(bases[0])

    inf = xp.asarray(math.inf, dtype=f64)
    # background-only weighted LS per basis (closed form for k <= 2, a Gram matrix per pixel);
    # what does not depend on Eg or b is computed once here
    fits = []
    grams = []  # (g, by) per basis: the orthogonalised onset projection below
    syy = xp.sum(wy * y, axis=1) if k_bg == 2 else None  # <y, y>_w
    chi2_bg_best = xp.full((n,), math.inf, dtype=f64)
    for basis in bases:
        g = [[w @ (bi * bj) for bj in basis] for bi in basis]
        by = [wy @ bi for bi in basis]
        grams.append((g, by))
        if k_bg == 0:
            ginv, theta = [], []
        elif k_bg == 1:
            ginv = [[1.0 / g[0][0]]]
            theta = [by[0] * ginv[0][0]]
        else:
            det = g[0][0] * g[1][1] - g[0][1] * g[0][1]
            det = xp.where(det > 0, det, math.nan)
            ginv = [[g[1][1] / det, -g[0][1] / det], [-g[0][1] / det, g[0][0] / det]]
            theta = [
                ginv[0][0] * by[0] + ginv[0][1] * by[1],
                ginv[1][0] * by[0] + ginv[1][1] * by[1],
            ]
        if k_bg == 2:
            # chi^2 of the background alone from the same sums (Gram-Schmidt on 1, B: the
            # squared norm of y less its projections), not from a (n, m) residual per basis
            z = by[1] - by[0] * (g[0][1] / g[0][0])
            chi2_bg = syy - by[0] * by[0] / g[0][0] - z * z * g[0][0] / det
        else:
            resid = y
            for t, bi in zip(theta, basis, strict=True):
                resid = resid - t[:, None] * bi[None, :]
            chi2_bg = xp.sum(w * resid * resid, axis=1)
        chi2_bg = xp.where(xp.isfinite(chi2_bg), chi2_bg, inf)
        chi2_bg_best = xp.minimum(chi2_bg_best, chi2_bg)
        cols = [[gi[:, None] for gi in row] for row in ginv]
        fits.append((cols, [t[:, None] for t in theta], chi2_bg[:, None]))
    # Column 0 of every basis is the constant, shared; column 1 (if any) differs per basis.
    # <f, y - B theta>_w = <f, y>_w - sum_i theta_i <f, B_i>_w, so per b the matrix products
    # are <f, y>, <f, f>, <f, 1> and one stacked product for the bases' second columns.
    n_var = len(bases) if k_bg == 2 else 0
    wb1 = xp.concat([w * basis[1][None, :] for basis in bases], axis=0) if n_var else None

    prof_eg = xp.full((n, n_eg), math.inf, dtype=f64)
    prof_b = []
    if return_model:  # parameters of the best grid point, for the fitted curve
        r_of_basis = list(tail_exponents) if background == "power-law" else [0.0]
        track = {"chi2": xp.full((n,), math.inf, dtype=f64)}
        for key in ("a", "eg", "b", "r", *(f"c{p}" for p in range(k_bg))):
            track[key] = xp.zeros((n,), dtype=f64)
    # every basis at once: the per-pixel background parameters stacked on a leading axis
    # (J bases, n, 1), so one (b) step is ~16 operations on (J, n, n_eg) arrays whatever J (was
    # ~29 per basis, one basis at a time)
    n_fit = len(fits)

    def stacked(parts):
        return xp.stack(parts, axis=0) if n_fit > 1 else parts[0][None, ...]

    chi2_bg_s = stacked([fit[2] for fit in fits])
    if k_bg == 2:
        # the onset column projected off the background's by Gram-Schmidt on its two columns
        # (1 and B_j): with g00 = <1, 1>, r_j = <1, B_j> / g00, u_j = B_j - r_j (orthogonal to
        # 1) and h_j = <u_j, u_j> = det G_j / g00, q_j = <f, f> - <f, 1>^2 / g00 - t_j^2 and
        # <f, y - B theta_j> = <f, y> - <f, 1> <1, y> / g00 - t_j z_j, with t_j = <f, u_j> /
        # sqrt(h_j) and z_j = <u_j, y> / sqrt(h_j): the first terms shared by every basis, the
        # last a few operations on the stacked (J, n, n_eg) arrays (the same q and <f, y - B
        # theta> as G^-1's quadratic forms, with fewer passes)
        g00 = grams[0][0][0][0]
        y_mean = grams[0][1][0] / g00
        g01_s = stacked([gr[0][0][1][:, None] for gr in grams])
        r_s = g01_s / g00[:, None]
        h_s = stacked([gr[0][1][1][:, None] for gr in grams]) - r_s * g01_s
        inv_sqrt_h = 1.0 / xp.sqrt(xp.where(h_s > 0, h_s, math.nan))
        rs_s = r_s * inv_sqrt_h
        by0 = grams[0][1][0][:, None]
        z_s = (stacked([gr[1][1][:, None] for gr in grams]) - r_s * by0) * inv_sqrt_h
    else:
        theta_s = [stacked([fit[1][p] for fit in fits]) for p in range(k_bg)]
        cols_s = {(p, s_): stacked([fit[0][p][s_] for fit in fits]) for p in range(k_bg)
                  for s_ in range(k_bg)}  # fmt: skip
    n_b = len(b_values)
    free_b = n_b >= 5
    h_eg = (eg[-1] - eg[0]) / (n_eg - 1)
    valley = []  # per b (free model): (Eg at the minimum, its chi^2, d^2chi^2/dk^2 / 2 in Eg)

    def onset_chi2(ff, fy0, f0, fb1):
        """chi^2 (J, n, P) of P onset candidates per pixel, per background basis, from the
        onset column's weighted sums <f, f>, <f, y>, <f, 1> (n, P) and <f, B_j> (J, n, P)."""
        fb = [] if k_bg == 0 else [f0[None, ...]] if k_bg == 1 else [f0[None, ...], fb1]
        if k_bg == 2:
            t = fb1 * inv_sqrt_h - rs_s * f0[None, ...]
            q = (ff - f0 * f0 / g00[:, None])[None, ...] - t * t
            fy = (fy0 - f0 * y_mean[:, None])[None, ...] - t * z_s
        else:
            fy = fy0[None, ...]
            q = ff[None, ...]
            for p in range(k_bg):
                fy = fy - theta_s[p] * fb[p]
                for s_ in range(k_bg):
                    q = q - fb[p] * cols_s[(p, s_)] * fb[s_]
        ok = (q > (1e-12 * ff)[None, ...]) & (fy > 0)
        dchi = xp.where(ok, fy * fy / xp.where(ok, q, 1.0), 0.0)
        return chi2_bg_s - dchi, fy, q, ok, fb

    def chi2_at(eg_pts, b_pts):
        """chi^2 (n, P), the best background basis, at each pixel's own (Eg, b) points (n, P)."""
        # b held above 0 (a wild step's point; 0 ** -b is inf): the estimate is range-checked
        b_pts = xp.clip(b_pts, 0.05, None)
        f = xp.clip(e[None, None, :] - eg_pts[:, :, None], 0.0, None) ** b_pts[:, :, None]
        ff = xp.sum(w[:, None, :] * f * f, axis=-1)
        fy0 = xp.sum(wy[:, None, :] * f, axis=-1)
        f0 = xp.sum(w[:, None, :] * f, axis=-1) if k_bg else None
        fb1 = None
        if n_var:
            wb = xp.reshape(wb1, (n_var, n, m))[:, :, :, None]  # (J, n, m, 1)
            fb1 = xp.matmul(f[None, ...], wb)[..., 0]  # (J, n, P)
        return xp.min(onset_chi2(ff, fy0, f0, fb1)[0], axis=0)

    for b in b_values:
        f = xp.clip(e[:, None] - eg[None, :], 0.0, None) ** float(b)  # (m, n_eg)
        ff = w @ (f * f)
        fy0 = wy @ f
        f0 = w @ f if k_bg else None
        fb1 = xp.reshape(wb1 @ f, (n_var, n, n_eg)) if n_var else None
        chi2, fy, q, ok, fb = onset_chi2(ff, fy0, f0, fb1)  # (J, n, n_eg)
        prof_this = xp.min(chi2, axis=0)
        prof_eg = xp.minimum(prof_eg, prof_this)
        prof_b.append(xp.min(prof_this, axis=1))
        if free_b:
            # the conditional fit at this b: Eg refined on chi^2(Eg | b) by the 3-point parabola,
            # the refined minimum chi^2(b) and the curvature in Eg (the valley, see below)
            valley.append(_refine(xp, prof_this, eg, h_eg))
        if return_model:
            for j, (cols, theta, _) in enumerate(fits):
                fb_j = [x[min(j, x.shape[0] - 1), ...] for x in fb]
                _track(xp, track, chi2[j, ...], fy[j, ...], q[j, ...], ok[j, ...], fb_j, cols,
                       theta, eg, b, r_of_basis[j])  # fmt: skip

    # refine Eg on the profile chi^2(Eg)
    idx = xp.argmin(prof_eg, axis=1)
    vals, inside = _stencil(xp, prof_eg, idx)
    chi2_min = vals[2]
    c1, c2 = _parabola(vals)
    good_curv = c2 > 0
    off = xp.clip(-c1 / (2.0 * xp.where(good_curv, c2, 1.0)), -1.0, 1.0)
    eg_best = xp.take(eg, idx) + off * h_eg
    eg_err = h_eg / xp.sqrt(xp.where(good_curv, c2, math.nan))

    pb = xp.stack(prof_b, axis=1)  # (n, n_b)
    if free_b:
        bgrid = xp.asarray(list(b_values), dtype=f64)
        h_b = float(b_values[1] - b_values[0])
        # the joint (Eg, b) minimum, continuous in b: the valley through the grid's
        # conditional minima, then Newton steps at each pixel's own (Eg, b)
        v = _newton(xp, chi2_at, _valley(xp, valley, bgrid, h_b, h_eg), h_eg, h_b)
        eg_best, eg_err, b_best, b_err = v["eg"], v["eg_err"], v["b"], v["b_err"]
        good_b, b_inside = v["good_b"], v["b_inside"]
        b_inside = b_inside & (b_best >= bgrid[0]) & (b_best <= bgrid[-1])
        good_curv = good_curv & xp.isfinite(eg_err)
        i_dir = b_values.index(B_DIRECT) if B_DIRECT in b_values else None
        i_ind = b_values.index(B_INDIRECT) if B_INDIRECT in b_values else None
        if i_dir is not None and i_ind is not None:
            gtype = xp.astype(pb[:, i_dir] > pb[:, i_ind], xp.int32)
        else:
            gtype = xp.astype(b_best >= 1.0, xp.int32)
        b_ok = b_inside & good_b
        n_par = k_bg + 3
    else:
        b0 = float(b_values[0])
        b_best = xp.full((n,), b0, dtype=f64)
        b_err = xp.zeros((n,), dtype=f64)
        gtype = xp.full(
            (n,), 0 if abs(b0 - B_DIRECT) <= abs(b0 - B_INDIRECT) else 1, dtype=xp.int32
        )
        b_ok = xp.ones((n,), dtype=xp.bool)
        n_par = k_bg + 2

    dof = max(m - n_par, 1)
    red = chi2_min / dof
    scale2 = xp.clip(red, 1.0, None)
    scale = xp.sqrt(scale2)
    # where the profile is not parabolic (the Eg-b valley of the free model is curved), the
    # Delta chi^2 <= 1 interval is wider than the local curvature says: take the wider
    eg_err = xp.maximum(eg_err, _interval_halfwidth(xp, prof_eg, eg, chi2_min, scale2)) * scale
    if free_b:
        b_err = xp.maximum(b_err, _interval_halfwidth(xp, pb, bgrid, chi2_min, scale2)) * scale
    dchi_best = chi2_bg_best - chi2_min
    signif = xp.sqrt(xp.clip(dchi_best, 0.0, None))
    # weighted R^2 against the weighted mean
    sw = xp.sum(w, axis=1)
    ybar = xp.sum(wy, axis=1) / xp.where(sw > 0, sw, 1.0)
    ss_tot = xp.sum(w * (y - ybar[:, None]) ** 2, axis=1)
    r2 = 1.0 - chi2_min / xp.where(ss_tot > 0, ss_tot, math.nan)

    valid = (
        finite
        & inside
        & good_curv
        & b_ok
        & (dchi_best >= float(min_significance) ** 2)
        & xp.isfinite(eg_err)
        & xp.isfinite(chi2_min)
    )
    # amplitude at the refined optimum is not needed for the map; report A at the grid optimum
    nan = math.nan
    out = {}
    if return_model:
        model = (
            track["a"][:, None]
            * xp.clip(e[None, :] - track["eg"][:, None], 0.0, None) ** (track["b"][:, None])
        )
        if k_bg >= 1:
            model = model + track["c0"][:, None]
        if k_bg == 2:
            second = (
                (e[None, :] / e_lo) ** (-track["r"][:, None])
                if background == "power-law"
                else ((e - e_lo) / span)[None, :]
            )
            model = model + track["c1"][:, None] * second
        out["model"] = xp.where(finite[:, None], model, nan)
    return out | {
        "bandgap_eV": xp.where(valid, eg_best, nan),
        "bandgap_error_eV": xp.where(valid, eg_err, nan),
        "exponent_b": xp.where(valid, b_best, nan),
        "exponent_error": xp.where(valid, b_err, nan),
        "gap_type": xp.where(valid, gtype, xp.asarray(-1, dtype=xp.int32)),
        "fit_quality": xp.where(valid, red, nan),
        "r_squared": xp.where(valid, r2, nan),
        "onset_significance": xp.where(finite, signif, nan),
        "valid": valid,
    }


def _smooth_host(y: np.ndarray, n: int) -> np.ndarray:
    n = max(1, int(n))
    return np.convolve(y, np.ones(n) / n, mode="same")


def auto_window(
    energy_eV: np.ndarray, mean_spectrum: np.ndarray, *, after_residue: bool = False
) -> tuple[float, float]:
    """A fit window for the onset, found from the mean spectrum (eV).

    The floor is the smallest magnitude of the smoothed spectrum between 0 and 12 eV (between
    the zero-loss tail and the onset; magnitude, so that a negative artefact left by a ZLP
    subtraction or deconvolution near 0 eV is not taken for it); the low end is where the
    magnitude first falls to 2 % of its largest height above the floor (past most of the tail,
    or the first channels of an SSD); the high end is where the spectrum has risen to half of its
    next maximum (within 8 eV of the floor) above the floor. The window then starts at least
    :data:`PRE_ONSET_SHARE` of the span from the onset (the last point below the high end within
    :data:`ONSET_FRACTION` of the rise above the floor) to the high end below the onset, and 20
    channels: a window that starts on the onset holds no pre-onset floor, and the fit finds no
    onset (a deconvolution's flat, slightly negative floor below a clean gap crosses zero at
    the onset, where the smallest magnitude then lies).

    With ``after_residue`` (a spectrum whose ZLP was taken off: its residue is no background
    to fit), the low end is moreover no lower than where the mean spectrum has come down to
    within a quarter of the window's rise above the floor (:data:`RESIDUE_LIMIT` / 2: half-way
    to what :func:`zlp_residue` flags, a margin for the single pixels' noise).

    A heuristic: it suits ZLP-subtracted spectra and SSDs whose loss rises steadily after the
    gap. On raw spectra (the ZLP tail still there) or where the loss flattens soon after a
    direct gap, give the window (``window_eV``) and look at the fits (:func:`fit_curves`).

    Raises
    ------
    InputError
        When no rise follows the floor (nothing to fit).
    """
    e = np.asarray(energy_eV, float)
    y = np.asarray(mean_spectrum, float)
    disp = float(np.mean(np.diff(e)))
    s = _smooth_host(y, round(0.1 / disp) | 1)
    pos = np.nonzero((e > max(0.05, 2 * disp)) & (e < 12.0))[0]
    if pos.size < 20:
        raise InputError("the spectrum has too few channels between 0 and 12 eV to find an onset")
    # ignore the smoothing's edge effects at the far end
    pos = pos[pos < e.size - 3]
    sp = s[pos]
    mag = np.abs(sp)
    i_min = int(np.argmin(mag))
    floor = sp[i_min]
    head = mag[: i_min + 1]
    lo_i = int(np.nonzero(head <= mag[i_min] + 0.02 * (head.max() - mag[i_min]))[0][0])
    top_end = np.nonzero(e[pos] <= e[pos[i_min]] + 8.0)[0][-1]
    top = float(np.max(sp[i_min : top_end + 1]))
    if not top > floor:
        raise InputError("no rise above the floor after the zero-loss tail: no onset to fit")
    half = floor + 0.5 * (top - floor)
    rise = np.nonzero(sp[i_min : top_end + 1] >= half)[0]
    hi_i = i_min + int(rise[0])
    # the onset: the last point below the half-rise point still within ONSET_FRACTION of the
    # rise above the floor. The window must hold a stretch before it (what pins the background;
    # a window that starts on the onset leaves the onset term nothing to stand out from: NO_ONSET
    # on clean synthetic onsets, whose SSD below the gap is a flat, often negative floor whose
    # zero crossing, at the onset, is the smallest magnitude): at least PRE_ONSET_SHARE of the
    # onset-to-half-rise span (and 20 channels) below it
    low_part = np.nonzero(sp[: hi_i + 1] <= floor + ONSET_FRACTION * (top - floor))[0]
    on_i = int(low_part[-1]) if low_part.size else i_min
    e_pos = e[pos]
    margin = max(PRE_ONSET_SHARE * (e_pos[hi_i] - e_pos[on_i]), 20 * disp)
    lo_i = min(lo_i, max(0, int(np.searchsorted(e_pos, e_pos[on_i] - margin, side="right")) - 1))
    if after_residue:
        # the rise the residue check will see in the window [lo, hi]: up to the half-rise point
        rise_w = float(np.max(sp[i_min : hi_i + 1])) - floor
        # after the last point above that level on the way down to the floor
        above = np.nonzero(sp[: i_min + 1] - floor > 0.5 * RESIDUE_LIMIT * rise_w)[0]
        lo_i = max(lo_i, min(int(above[-1]) + 1, i_min) if above.size else 0)
    lo, hi = float(e[pos[lo_i]]), float(e[pos[hi_i]])
    hi = max(hi, lo + 40 * disp)
    return lo, hi


# --------------------------------------------------------------------------- ZLP residue
def zlp_residue(xp: Any, y: Any, energy_eV: Any, limit: float = RESIDUE_LIMIT) -> tuple[Any, Any]:
    """How much of the zero-loss peak's residue is left at the start of a fit window.

    ``y`` (n, m) are the window's channels (counts), ``energy_eV`` (m,) their energies. With
    ``s`` the spectrum averaged over ``h = max(2, m // 40)`` channels either side, ``floor`` its
    minimum over the window and ``rise`` its maximum over the window's top third less the floor
    (the onset's height within the window): ``residue_excess = (s[0] - floor) / rise``, the spectrum's height at the
    window's start above the floor in units of the onset's rise; and ``zlp_residue_end_eV``,
    the first energy of the window where ``s - floor <= limit x rise`` (where the residue has
    come down; NaN if nowhere). An excess above ``limit`` means the residue at the window's
    start is more than ``limit`` times the onset the fit is after.

    Returns
    -------
    (excess, end) : arrays (n,)
        Dimensionless and eV; +inf excess where the window shows no rise at all.
    """
    m = y.shape[-1]
    h = max(2, m // 40)
    s = moving_average(xp, y, h)
    floor = xp.min(s, axis=-1)
    # the onset's rise: the top third of the window (where the onset has risen), over the floor
    rise = xp.max(s[:, (2 * m) // 3 :], axis=-1) - floor
    rise_ok = rise > 0
    safe = xp.where(rise_ok, rise, xp.ones_like(rise))
    excess = xp.where(rise_ok, (s[:, 0] - floor) / safe, math.inf)
    # the end: after the last channel above the limit on the way down to the floor
    k = xp.arange(m)
    at_floor = xp.argmin(s, axis=-1)
    up = ((s - floor[:, None]) > limit * safe[:, None]) & (k[None, :] <= at_floor[:, None])
    first = xp.max(xp.where(up, k[None, :], -1), axis=-1) + 1
    first = xp.minimum(first, at_floor)
    end = xp.where(rise_ok, xp.take(energy_eV, first), math.nan)
    return excess, end


def bandgap_block(
    block: Any,
    energy_eV: Any,
    *,
    window: tuple[int, int],
    eg_grid_eV: Any,
    b_values: Sequence[float] = (B_DIRECT,),
    background: str = "power-law",
    tail_exponents: Sequence[float] = TAIL_EXPONENTS,
    min_significance: float = 5.0,
    variance: Any = None,
    upstream_quality: Any = None,
    zlp_method: str | None = None,
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] = SEARCH_EV,
    zlp_removed: bool = False,
    residue_limit: float | None = RESIDUE_LIMIT,
    dispersion_eV: float | None = None,
) -> dict[str, Any]:
    """The band-gap fit of a block with the ZLP taken off first where asked, and its quality.

    With ``zlp_method`` (the reference-ZLP route: ``"reference"`` with a measured vacuum
    spectrum ``reference`` (n_E,), or any model of :func:`~.zlp.zlp_kernel`), each pixel's ZLP
    model is subtracted (eq. 13: I_inel = I - N0 R), the rest moved so that the pixel's ZLP
    centre sits at 0 eV (linear interpolation, counts kept) and fitted on energy relative to
    the ZLP, weighted by the raw counts (Poisson variance of the measured spectrum, not of the
    difference) unless ``variance`` is given. Then :func:`bandgap_kernel`, :func:`zlp_residue`
    on the window, and the ``quality`` bits (:mod:`.quality`): NO_ZLP (no usable ZLP where one
    was to be subtracted), NO_ONSET (the fit is not valid), WINDOW_IN_ZLP_RESIDUE (a
    ZLP-removed spectrum, ``zlp_removed`` or ``zlp_method``, whose residue excess at the
    window's start is above ``residue_limit``; None: not checked), and ``upstream_quality``
    (the bits of the deconvolution an SSD came from). ``valid`` is a valid fit with no fatal
    bit; pixels not valid get NaN results and ``gap_type`` -1. ``dispersion_eV`` (the channel
    width, a host number) spares reading it from the device.

    Returns
    -------
    dict
        :func:`bandgap_kernel`'s maps and ``residue_excess``, ``zlp_residue_end_eV`` (eV),
        ``quality`` (uint32); with ``zlp_method`` also ``zlp_intensity`` (counts) and
        ``zlp_centre_eV`` (eV, on the stored axis).
    """
    xp = array_namespace(block)
    extra: dict[str, Any] = {}
    quality = xp.zeros((block.shape[0],), dtype=xp.uint32)
    if upstream_quality is not None:
        uq = xp.where(xp.isfinite(upstream_quality), upstream_quality, 0.0)
        quality = xp.astype(uq, xp.uint32)
    y = block
    zlp_ok = None
    if zlp_method is not None:
        z = zlp_kernel(
            block,
            energy_eV,
            method=zlp_method,
            reference=reference,
            zlp_cube=zlp_cube,
            search_eV=search_eV,
        )
        zlp_ok = z["valid"]
        c = xp.where(zlp_ok, z["zlp_centre_eV"], xp.zeros_like(z["zlp_centre_eV"]))
        d = dispersion_eV if dispersion_eV is not None else axis_step(energy_eV)[1]
        model = xp.where(zlp_ok[:, None], z["zlp"], xp.zeros_like(block))
        y = shift_kernel(block - model, c, "linear", dispersion_eV=d, fill_value=0.0)
        if variance is None:
            raw = shift_kernel(block, c, "linear", dispersion_eV=d, fill_value=0.0)
            variance = xp.clip(xp.abs(moving_average(xp, raw, _SMOOTH // 2)), 1.0, None)
        y = xp.where(zlp_ok[:, None], y, xp.full_like(y, math.nan))
        quality = q.set_bit(xp, quality, ~zlp_ok, q.NO_ZLP)
        extra["zlp_intensity"] = xp.where(zlp_ok, z["zlp_intensity"], math.nan)
        extra["zlp_centre_eV"] = xp.where(zlp_ok, z["zlp_centre_eV"], math.nan)
    out = bandgap_kernel(
        y,
        energy_eV,
        window=window,
        eg_grid_eV=eg_grid_eV,
        b_values=b_values,
        background=background,
        tail_exponents=tail_exponents,
        min_significance=min_significance,
        variance=variance,
    )
    i0, i1 = int(window[0]), int(window[1])
    yw = y[:, i0:i1]
    finite = xp.all(xp.isfinite(yw), axis=-1)
    yw = xp.where(finite[:, None], yw, xp.zeros_like(yw))
    limit = RESIDUE_LIMIT if residue_limit is None else float(residue_limit)
    excess, end = zlp_residue(xp, yw, energy_eV[i0:i1], limit)
    nan = math.nan
    excess = xp.where(finite, excess, nan)
    end = xp.where(finite, end, nan)
    fit_ok = out["valid"]
    data_ok = finite if zlp_ok is None else finite & zlp_ok
    quality = q.set_bit(xp, quality, data_ok & ~fit_ok, q.NO_ONSET)
    if residue_limit is not None and (zlp_removed or zlp_method is not None):
        # the window starts on the residue, or the onset found sits at the residue's foot:
        # less than FOOT_FRACTION of the window above where the residue has come down
        e_lo = energy_eV[i0]  # 0-d arrays on the block's device: no host round trip
        start = xp.where(xp.isfinite(end), xp.maximum(end, e_lo), e_lo)
        foot = FOOT_FRACTION * (energy_eV[i1 - 1] - e_lo)
        at_foot = xp.isfinite(out["bandgap_eV"]) & (out["bandgap_eV"] - start < foot)
        in_residue = data_ok & ((excess > limit) | at_foot)
        quality = q.set_bit(xp, quality, in_residue, q.WINDOW_IN_ZLP_RESIDUE)
    fatal = (quality & xp.asarray(q.FATAL, dtype=xp.uint32)) > 0
    valid = fit_ok & ~fatal
    result = {}
    for name, value in out.items():
        if name == "valid" or name == "onset_significance":
            result[name] = value
        elif name == "gap_type":
            result[name] = xp.where(valid, value, xp.asarray(-1, dtype=xp.int32))
        else:
            result[name] = xp.where(valid, value, nan)
    result["valid"] = valid
    result["residue_excess"] = excess
    result["zlp_residue_end_eV"] = end
    result["quality"] = quality
    return result | extra


# --------------------------------------------------------------------------- declaration
#: Spectra per CPU tile of :func:`bandgap_kernel`: None, the engine's default (about 1 MiB of
#: input per tile).
TILE_PIXELS: int | None = None

#: What :func:`bandgap_kernel` returns (without ``return_model``), one value per pixel.
BANDGAP_OUTPUTS: tuple[Output, ...] = (
    Output("bandgap_eV", "eV", "band gap Eg"),
    Output("bandgap_error_eV", "eV", "band gap standard error"),
    Output("exponent_b", "", "onset exponent b"),
    Output("exponent_error", "", "onset exponent standard error"),
    Output(
        "gap_type",
        "",
        "band gap type",
        dtype="int32",
        attrs={"flag_values": [-1, 0, 1], "flag_meanings": "flagged direct indirect"},
    ),
    Output("fit_quality", "", "reduced chi-squared of the onset fit"),
    Output("r_squared", "", "weighted R^2 of the onset fit"),
    Output("onset_significance", "sigma", "onset significance"),
    Output("valid", "", "fit is meaningful and no fatal quality bit", dtype="bool"),
)

#: What :func:`bandgap_block` adds: the residue check and the quality bits.
BLOCK_OUTPUTS: tuple[Output, ...] = (
    Output("residue_excess", "", "ZLP residue at the window's start / onset rise"),
    Output("zlp_residue_end_eV", "eV", "where the ZLP residue has come down (window start)"),
    Output("quality", "", "quality bitmask (eelsgpu.kernels.quality)", dtype="uint32"),
)
#: With the reference-ZLP route (``zlp_method``) also the ZLP's intensity and centre.
ZLP_OUTPUTS: tuple[Output, ...] = (
    Output("zlp_intensity", "counts", "zero-loss intensity N0"),
    Output("zlp_centre_eV", "eV", "zero-loss peak centre"),
)


def _block_outputs(params: Any) -> tuple[Output, ...]:
    outs = BANDGAP_OUTPUTS + tuple(
        Output(o.name, o.units, o.long_name, dtype=o.dtype, attrs=q.describe())
        if o.name == "quality"
        else o
        for o in BLOCK_OUTPUTS
    )
    return outs + (ZLP_OUTPUTS if params.get("zlp_method") is not None else ())


#: :func:`bandgap_block` declared for the engine; the per-channel ``variance`` cube (counts^2),
#: a ZLP cube and the deconvolution's ``upstream_quality`` map are optional extras.
BANDGAP_BLOCK = BlockKernel(
    bandgap_block,
    outputs=_block_outputs,
    tile_pixels=TILE_PIXELS,
    extras=("variance", "zlp_cube", "upstream_quality"),
    name="bandgap",
)
