"""Specimen thickness maps: log-ratio t/lambda, mean free paths, and the Kramers-Kronig sum rule.

* **Log-ratio** (Egerton 2011, section 5.1.1): ``t/lambda = ln(I_t / N0)`` per pixel, with N0 the
  zero-loss intensity (:mod:`eelsgpu.zlp`) and ``I_t`` all the electrons, including those scattered
  beyond the end of the recorded window. exspy counts only the window and is low by about 1.4 %
  at t/lambda = 3 in a 100 eV window (11 % at t/lambda = 2 in a 46 eV window); here the
  spectrum's tail is continued by a power law ``A E^-r`` fitted to the end of the window where
  that fit holds (``tail="power-law"``), and where it does not (a window that ends inside the
  plural-scattering humps) the counts beyond the window come from the Fourier-log
  single-scattering distribution, which is exact inside the window whatever lies beyond it and
  whose own tail is small (``tail="fourier-log"``; ``"auto"``, the default, takes the power law
  where it holds and this elsewhere).
* **Mean free paths** for absolute thickness: Iakoubovskii et al. (2008) from the density, with
  the angular correction for a finite collection and convergence angle, and Malis et al. (1988)
  from the effective atomic number.
* **Kramers-Kronig sum rule** (kk-theory.md eqs. 26-29): absolute thickness from the SSD, for an
  insulator of refractive index n (eq. 28) or a metal; the constant A of eq. 29 calibrated on a
  region of known thickness; and n from a known thickness (the inverse of eq. 26).

Counting statistics of the log-ratio (Poisson counts, N0 part of I_t): with the ZLP counted
directly (``"threshold"``), N0 and M = I_t - N0 are independent Poisson counts and

    var(t/lambda) = M / (N0 I_t) = 1/N0 - 1/I_t;

with the mirrored gain side (``"mirror"``, N0 = 2 G, G the ~N0/2 gain-side counts)
``var = 2/N0 - 1/I_t + (2 rho(c) / N0)^2 var(c)``: the mirror's N0 moves by twice the ZLP's
height rho(c) (counts/eV at the centre) per eV the centre moves, so the centre's jitter adds to
it; measured, 3 times the threshold's scatter at N0 = 1e5 with 0.1 eV channels.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_image(synthetic.Drude(15.0, 1.0), t_over_lambda=1.0, shape=(2, 2),
...                                n_channels=2048, dispersion_eV=0.1, dtype=np.float64)
>>> ds = thickness(sim["signal"], zlp="mirror", device="cpu")
>>> bool(abs(float(ds["t_over_lambda"][0, 0]) - 1.0) < 2e-3)
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from . import engine, physics
from ._xp import array_namespace
from .errors import InputError
from .model import energy_axis, require_param
from .zlp import SEARCH_EV, _dispersion, check_any_valid, resolve_zlp, zlp_kernel

__all__ = [
    "TAILS",
    "calibrate_kk_constant",
    "effective_atomic_number",
    "iakoubovskii_angular_correction",
    "kk_sum_rule_integral",
    "log_ratio_kernel",
    "kk_thickness_kernel",
    "mean_free_path_iakoubovskii_nm",
    "mean_free_path_malis_nm",
    "refractive_index_from_thickness",
    "thickness",
]

TAILS = ("auto", "power-law", "fourier-log", "none")
#: Share of the loss range the power-law tail beyond the window is fitted to (by default).
TAIL_FIT_FRACTION = 0.2

#: Spectra per kernel call for the log-ratio on a CPU (see :func:`eelsgpu.engine.apply_kernel`).
_LR_TILE_PIXELS = 4096

#: The power-law tail is trusted where the fitted exponent r lies here (a single-scattering tail
#: falls as about E^-3; r below 2 means the window ends inside plural-scattering humps, or on a
#: background or an edge, where a power law says nothing).
_R_RANGE = (2.0, 15.0)


# --------------------------------------------------------------------------- mean free paths
def _F(beam_energy_keV: float) -> float:
    # Iakoubovskii's and Malis's papers use the rounded 1022/511 keV form of F
    e0 = float(beam_energy_keV)
    if not (math.isfinite(e0) and e0 > 0):
        raise ValueError(
            f"beam_energy_keV must be a positive number of keV, not {beam_energy_keV!r}"
        )
    return (1.0 + e0 / 1022.0) / (1.0 + e0 / 511.0) ** 2


def iakoubovskii_angular_correction(
    density_g_cm3: float,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    convergence_angle_mrad: float = 0.0,
) -> float:
    """Angular correction C of Iakoubovskii et al. (2008) for a finite aperture.

    ``C = ln(thC^2/thE^2) / ln(A thC^2 / (B thE^2))`` with ``A = a^2 + b^2 + 2 thE^2 + |a^2 - b^2|``,
    ``B = a^2 + b^2 + 2 thC^2 + |a^2 - b^2|``, ``thE = 5.5 rho^0.3 / (F E0)`` mrad, ``thC = 20``
    mrad (a = convergence, b = collection semi-angle, mrad; E0 keV; rho g/cm^3). The measured
    t/lambda times C is t over the large-aperture mean free path.

    Examples
    --------
    >>> round(iakoubovskii_angular_correction(3.6, 200.0, 20.0, 10.0), 3)
    1.064
    """
    f = _F(beam_energy_keV)
    th_e = 5.5 * float(density_g_cm3) ** 0.3 / (f * float(beam_energy_keV))
    th_c = 20.0
    a2, b2 = float(convergence_angle_mrad) ** 2, float(collection_angle_mrad) ** 2
    big_a = a2 + b2 + 2.0 * th_e**2 + abs(a2 - b2)
    big_b = a2 + b2 + 2.0 * th_c**2 + abs(a2 - b2)
    return math.log(th_c**2 / th_e**2) / math.log(big_a * th_c**2 / (big_b * th_e**2))


def mean_free_path_iakoubovskii_nm(
    density_g_cm3: float,
    beam_energy_keV: float,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float = 0.0,
) -> float:
    """Inelastic mean free path (nm) from the density, Iakoubovskii et al., Microsc. Res. Tech.
    71, 626 (2008), eq. 9.

    ``1/lambda = 11 rho^0.3 / (200 F E0) ln(thC^2 / thE^2)`` (per nm; rho in g/cm^3, E0 in keV,
    F = (1 + E0/1022)/(1 + E0/511)^2, thE = 5.5 rho^0.3/(F E0) mrad, thC = 20 mrad). That is the
    large-aperture value; with ``collection_angle_mrad`` (and the convergence angle, mrad) it is
    multiplied by :func:`iakoubovskii_angular_correction`, giving the effective lambda for the
    t/lambda measured with that aperture (t = t/lambda x lambda).

    Examples
    --------
    >>> round(mean_free_path_iakoubovskii_nm(2.70, 200.0), 1)  # Al, large aperture
    143.5
    """
    rho = float(density_g_cm3)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"density_g_cm3 must be positive, not {density_g_cm3!r}")
    f = _F(beam_energy_keV)
    e0 = float(beam_energy_keV)
    th_e = 5.5 * rho**0.3 / (f * e0)
    inv = 11.0 * rho**0.3 / (200.0 * f * e0) * math.log(20.0**2 / th_e**2)
    lam = 1.0 / inv
    if collection_angle_mrad is not None:
        lam *= iakoubovskii_angular_correction(
            rho, e0, collection_angle_mrad, convergence_angle_mrad or 0.0
        )
    return lam


_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se "
    "Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy "
    "Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()


def effective_atomic_number(composition: Mapping[str | int, float]) -> float:
    """Zeff = sum f_i Z_i^1.3 / sum f_i Z_i^0.3 (Malis et al. 1988), f_i atom fractions.

    ``composition`` maps element symbols or atomic numbers to atom counts or fractions.

    Examples
    --------
    >>> round(effective_atomic_number({"Si": 1, "O": 2}), 2)
    10.23
    """
    num = den = 0.0
    for el, frac in composition.items():
        z = el if isinstance(el, int) else _SYMBOLS.index(str(el).capitalize()) + 1
        num += float(frac) * z**1.3
        den += float(frac) * z**0.3
    if den <= 0:
        raise ValueError("composition needs at least one element with a positive fraction")
    return num / den


def mean_free_path_malis_nm(
    beam_energy_keV: float,
    collection_angle_mrad: float,
    zeff: float | None = None,
    composition: Mapping[str | int, float] | None = None,
) -> float:
    """Inelastic mean free path (nm), Malis, Cheng & Egerton, J. Electron Microsc. Tech. 8, 193
    (1988): ``lambda = 106 F E0 / (Em ln(2 beta E0 / Em))``, ``Em = 7.6 Zeff^0.36`` eV.

    E0 in keV, beta (collection semi-angle) in mrad, F = (1 + E0/1022)/(1 + E0/511)^2; Zeff given
    or from ``composition`` (see :func:`effective_atomic_number`). Valid for beta below about
    15 mrad and E0 of 100-300 keV (the paper's range); larger beta is outside it.

    Examples
    --------
    >>> round(mean_free_path_malis_nm(200.0, 100.0, zeff=13), 1)  # Al
    89.5
    """
    if zeff is None:
        if composition is None:
            raise ValueError("give zeff= or composition= for the Malis mean free path")
        zeff = effective_atomic_number(composition)
    f = _F(beam_energy_keV)
    e0 = float(beam_energy_keV)
    em = 7.6 * float(zeff) ** 0.36
    return 106.0 * f * e0 / (em * math.log(2.0 * float(collection_angle_mrad) * e0 / em))


# --------------------------------------------------------------------------- kernels
def _power_integral(xp, r, lo, hi):
    """Integral of L^-r from lo to hi (r != 1 there; r is kept away from 1)."""
    return (hi ** (1.0 - r) - lo ** (1.0 - r)) / (1.0 - r)


def _solve_exponents(xp, ratio, a1, b1, a2, b2):
    """r with int_a1^b1 L^-r / int_a2^b2 L^-r = ratio, by bisection on [1.05, 20] (batched).

    The ratio grows with r for a1 < b1 <= a2 < b2; 36 halvings leave r to 3e-10, below float32
    rounding. The three ratios of the tail fit are solved in one call (stacked): the loop is
    many small array operations, whose cost is their number."""
    lo = xp.full_like(ratio, 1.05)
    hi = xp.full_like(ratio, 20.0)
    for _ in range(36):
        mid = 0.5 * (lo + hi)
        f = _power_integral(xp, mid, a1, b1) / _power_integral(xp, mid, a2, b2)
        # too small a ratio means r lies above mid
        below = f < ratio
        lo = xp.where(below, mid, lo)
        hi = xp.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _fit_range(e, d, fit_fraction, stop=1.0):
    """The fixed slice ``[i_start, i_stop)`` of channels the power-law tail is fitted to."""
    n_e = e.shape[0]
    e_last = float(e[n_e - 1])
    e0 = float(e[0])
    # a static slice of channels (the pixels' centres differ by a few channels at most)
    lmax = e_last - max(0.0, min(e0, 0.0))
    i_start = max(1, math.floor((e_last - (1.0 - stop + fit_fraction) * lmax - e0) / d))
    i_stop = min(n_e, math.floor((e_last - (1.0 - stop) * lmax - e0) / d) + 1)
    return i_start, i_stop


def _tail_counts(xp, y, e, c, d, fit_fraction, stop=1.0, y_first=0):
    """Counts beyond the window from ``A L^-r`` (L = E - centre) matched to the end of the window.

    The fit range (the last ``fit_fraction`` of the loss range, ending at ``stop`` of it) is cut
    in three equal parts; r comes from the ratio of the counts in the first and last parts (sums
    of counts, unbiased at low counts where a fit to log(counts) is not), and the power law is
    trusted where the first-to-middle and middle-to-last ratios give the same r (within 10 % and
    four standard errors of the counting noise) and r lies in 2..15. ``y`` may hold only the
    channels from ``y_first`` on (those of the fit range at least)."""
    n_e = e.shape[0]
    e_last = float(e[n_e - 1])
    i_start, i_stop = _fit_range(e, d, fit_fraction, stop)
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
    r_all = _solve_exponents(
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
        xp.log(_power_integral(xp, r12 + h, a, m1) / _power_integral(xp, r12 + h, m1, m2))
        - xp.log(_power_integral(xp, r12, a, m1) / _power_integral(xp, r12, m1, m2))
    ) / h
    slope23 = (
        xp.log(_power_integral(xp, r23 + h, m1, m2) / _power_integral(xp, r23 + h, m2, b))
        - xp.log(_power_integral(xp, r23, m1, m2) / _power_integral(xp, r23, m2, b))
    ) / h
    var12 = (1.0 / s1s + 1.0 / s2s) / xp.maximum(slope12 * slope12, 1e-12)
    var23 = (1.0 / s2s + 1.0 / s3s) / xp.maximum(slope23 * slope23, 1e-12)
    noise = 4.0 * xp.sqrt(var12 + var23)  # 4 standard errors
    inside = (r12 > 1.1) & (r23 > 1.1) & (r > 1.1) & (r12 < 19.9) & (r23 < 19.9)
    trusted = (
        ok
        & inside
        & (r >= _R_RANGE[0])
        & (r <= _R_RANGE[1])
        & (xp.abs(r12 - r23) <= 0.1 * r + noise)
    )
    r_safe = xp.where(trusted, r, xp.full_like(r, 3.0))
    l_end = e_last + 0.5 * d - c
    total = s1s + s2s + s3s
    tail = total * l_end ** (1.0 - r_safe) / ((r_safe - 1.0) * _power_integral(xp, r_safe, a, b))
    return xp.where(trusted, tail, xp.zeros_like(tail)), trusted


def _moving_average(xp, y, k):
    """Mean over 2k+1 channels (shorter at the ends), by cumulative sums."""
    n, n_e = y.shape
    cs = xp.cumulative_sum(y, axis=-1, include_initial=True)
    idx = xp.arange(n_e)
    hi = xp.clip(idx + k + 1, 0, n_e)
    lo = xp.clip(idx - k, 0, n_e)
    return (xp.take(cs, hi, axis=-1) - xp.take(cs, lo, axis=-1)) / xp.astype(hi - lo, y.dtype)


def _ssd_t_over_lambda(xp, block, energy_eV, zlp, n0, fit_fraction, fwhm_eV=None):
    """t/lambda = (sum of the Fourier-log SSD over the window + its power-law tail) / N0."""
    from .deconvolution import fourier_log_kernel

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
    d = _dispersion(xp, energy_eV)
    c = xp.zeros((n,), dtype=ssd.dtype) if zero_loss_eV is None else zero_loss_eV
    c = xp.where(xp.isfinite(c), xp.astype(c, ssd.dtype), xp.zeros_like(c, dtype=ssd.dtype))
    finite = xp.where(xp.isfinite(ssd), ssd, xp.zeros_like(ssd))
    # fitted short of the end, where the deconvolution's own tail treatment shows, and on the
    # SSD averaged over 1 eV, which takes out the ringing of an imperfect ZLP model; only the
    # channels of the fit range (and k before them) are smoothed: the first k of the slice are
    # averaged over fewer channels, but they lie before the fit range
    k = max(1, int(round(0.5 / d)))
    base = max(0, _fit_range(e, d, fit_fraction, 0.95)[0] - k)
    part = finite[:, base:]
    # the whole SSD counts (ringing about zero loss sums to nothing); the tail is fitted on L > 0
    part = xp.where(e[None, base:] > c[:, None], part, xp.zeros_like(part))
    smooth = _moving_average(xp, part, k)
    tail, trusted = _tail_counts(xp, smooth, e, c, d, fit_fraction, stop=0.95, y_first=base)
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
    fwhm = max(0.5, 4.0 * _dispersion(xp, energy_eV))
    # (the NaN rows of the model are zeroed there)
    tl, _, _, _ = _ssd_t_over_lambda(xp, y, energy_eV, z["zlp"], n0, fit_fraction, fwhm_eV=fwhm)
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
    """Log-ratio relative thickness ``t/lambda = ln(I_t / N0)`` (Egerton 2011, eq. 5.11).

    Parameters
    ----------
    block : array, shape (n, n_E)
        Spectra in counts per channel.
    energy_eV : array, shape (n_E,)
        Uniform, increasing energy axis (eV).
    method, reference, zlp_cube, search_eV
        The zero-loss model, see :func:`eelsgpu.zlp.zlp_kernel`.
    tail : {"auto", "power-law", "fourier-log", "none"}
        How the electrons scattered beyond the window are counted. ``"auto"`` (default): the
        power law where it is trusted, the Fourier-log SSD elsewhere. ``"power-law"``: ``A E^-r``
        (E from the ZLP centre) fitted to the last ``tail_fit_fraction`` of the window and
        integrated to infinity; used where trusted (r between 2 and 15, the same in both halves
        of the fit range), else nothing is added and ``tail_trusted`` is False (a window that
        ends inside plural-scattering humps: use ``"fourier-log"`` or a longer window).
        ``"fourier-log"``: t/lambda is the integral of the single-scattering distribution over
        N0 (:func:`eelsgpu.deconvolution.fourier_log_kernel`), whose part beyond the window is a
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
    d = _dispersion(xp, energy_eV)
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
        extra, trusted = _tail_counts(xp, y, e, c, d, tail_fit_fraction)
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


def kk_sum_rule_integral(
    ssd: Any,
    energy_eV: Any,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    low_energy_cutoff_eV: float | None = None,
) -> Any:
    """The integral of eq. 29, ``int_0^inf SSD(E) / (E ln(1 + beta^2/theta_E^2)) dE``.

    ``ssd`` (n, n_E) in counts per channel on the loss axis ``energy_eV`` (eV); theta_E from eq. 27,
    beta in mrad. Returns counts/eV, (n,). Computed by
    :func:`eelsgpu.kramers_kronig.sum_rule_thickness_nm` (one implementation of eq. 26 for the
    package), so it shares its low-energy treatment (the small-E form of the loss function below
    ``low_energy_cutoff_eV``, so the zero-loss residue is not amplified by 1/E) and its A/E^3 tail
    beyond the window; NaN where the integral is not positive.
    """
    from .kramers_kronig import DEFAULT_LOW_ENERGY_CUTOFF_EV, sum_rule_thickness_nm

    xp = array_namespace(ssd)
    cutoff = DEFAULT_LOW_ENERGY_CUTOFF_EV if low_energy_cutoff_eV is None else low_energy_cutoff_eV
    s = xp.where(xp.isfinite(ssd), ssd, xp.zeros_like(ssd))
    # a metal has 1 - Re[1/eps(0)] = 1, so its eq. 26 thickness is 4 a0 T times the integral
    t_metal = sum_rule_thickness_nm(
        s,
        energy_eV,
        xp.ones(s.shape[0], dtype=s.dtype),
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        metal=True,
        low_energy_cutoff_eV=cutoff,
    )
    return t_metal / _kk_prefactor_nm(beam_energy_keV)


def _kk_prefactor_nm(beam_energy_keV: float) -> float:
    """4 a0 F E0 of eq. 26, with E0 in eV: nm eV (= 4 a0 T, T = m0 v^2/2)."""
    return 4.0 * physics.BOHR_RADIUS_NM * physics.kinetic_energy_T_keV(beam_energy_keV) * 1e3


def kk_thickness_kernel(
    block: Any,
    energy_eV: Any,
    *,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    kk_constant_nm_eV: float,
    method: str = "mirror",
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] = SEARCH_EV,
    tail_fit_fraction: float = TAIL_FIT_FRACTION,
) -> dict[str, Any]:
    """Absolute thickness from the Kramers-Kronig sum rule, zero-loss model -> Fourier-log SSD ->
    eq. 29, in one kernel: ``t = A / N0 * sum SSD(E) / (E ln(1 + beta^2/theta_E^2))``.

    ``kk_constant_nm_eV`` is A of eq. 29 (nm eV): ``4 a0 F E0 / (1 - Re[1/eps(0)])`` with
    Re[1/eps(0)] = 1/n^2 (eq. 28) or 0 for a metal, or calibrated on a region of known thickness
    (:func:`calibrate_kk_constant`). Also returns the log-ratio quantities and ``kk_integral``
    (the sum over N0, 1/eV), which the calibrations use. The SSD needs a resolution function:
    with ``method="threshold"`` (a truncated spectrum, not a ZLP shape) the mirror model is used.
    """
    xp = array_namespace(block)
    # the truncation model is no resolution function: the mirror stands in for it here
    z = zlp_kernel(
        block,
        energy_eV,
        method="mirror" if method == "threshold" else method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
    )
    valid = z["valid"]
    n0 = z["zlp_intensity"]
    y = xp.where(valid[:, None], block, xp.zeros_like(block))
    zf = xp.where(valid[:, None], z["zlp"], xp.zeros_like(y))
    from .deconvolution import fourier_log_kernel

    tl, _, _, _ = _ssd_t_over_lambda(xp, y, energy_eV, zf, n0, tail_fit_fraction)
    # the SSD reconvolved with the ZLP (Egerton's choice for noisy data): the raw SSD's
    # high-frequency noise would swing the 1/E-weighted integral by tens of percent
    ssd = fourier_log_kernel(y, energy_eV, zf, output="reconvolved-zlp")["ssd"]
    ssd = xp.astype(ssd, y.dtype)
    integral = kk_sum_rule_integral(ssd, energy_eV, beam_energy_keV, collection_angle_mrad)
    ratio = integral / n0
    nan = xp.full_like(n0, math.nan)
    return {
        "thickness_nm": xp.where(valid, kk_constant_nm_eV * ratio, nan),
        "kk_integral": xp.where(valid, ratio, nan),
        "t_over_lambda": xp.where(valid, tl, nan),
        "zlp_intensity": n0,
        "zlp_centre_eV": z["zlp_centre_eV"],
        "valid": valid,
    }


def calibrate_kk_constant(result: xr.Dataset, thickness_nm: float, where: Any = None) -> float:
    """A of eq. 29 (nm eV) from a region of known thickness: ``A = t / mean(kk_integral)``.

    ``result`` is a :func:`thickness` Dataset of ``method="kk"`` (its ``kk_integral``); ``where``
    a boolean map of the region (default: every valid pixel). Pass the result as
    ``thickness(..., kk_constant_nm_eV=A)`` to map the thickness elsewhere.
    """
    k = result["kk_integral"]
    mask = (
        result["valid"] if where is None else (result["valid"] & xr.DataArray(where, dims=k.dims))
    )
    vals = np.asarray(k.where(mask).values, dtype=np.float64)
    m = np.nanmean(vals) if np.isfinite(vals).any() else math.nan
    if not (math.isfinite(m) and m > 0):
        raise InputError("the calibration region has no valid pixel with a positive KK integral")
    return float(thickness_nm) / m


def refractive_index_from_thickness(
    kk_integral_per_eV: Any, thickness_nm: float, beam_energy_keV: float
) -> Any:
    """Refractive index from a known thickness, the inverse of eq. 26 (kk-theory.md):
    ``n = [1 - 4 a0 F E0 / (N0 t) * integral]^(-1/2)`` with ``kk_integral_per_eV`` = integral/N0
    (1/eV, the ``kk_integral`` output), t in nm, E0 in keV. NaN where the bracket is not positive
    (the data say "metal or worse": Re[1/eps(0)] <= 0).
    """
    k = np.asarray(kk_integral_per_eV, dtype=np.float64)
    bracket = 1.0 - _kk_prefactor_nm(beam_energy_keV) * k / float(thickness_nm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bracket > 0, bracket**-0.5, np.nan)


# --------------------------------------------------------------------------- public
_MAP_UNITS = {
    "t_over_lambda": ("", "relative thickness t/lambda"),
    "thickness_nm": ("nm", "thickness"),
    "zlp_intensity": ("counts", "zero-loss intensity N0"),
    "zlp_centre_eV": ("eV", "zero-loss peak centre"),
    "total_intensity": ("counts", "total intensity I_t (with the tail)"),
    "tail_fraction": ("", "share of I_t beyond the window"),
    "kk_integral": ("1/eV", "KK sum-rule integral / N0 (eq. 29)"),
}


def _output(name: str, dtype: str = "float") -> engine.Output:
    units, long_name = _MAP_UNITS.get(name, ("", name))
    return engine.Output(name, units=units, long_name=long_name, dtype=dtype)


def _lr_block(block, energy_eV, *, zlp_cube=None, **params):
    out = log_ratio_kernel(block, energy_eV, zlp_cube=zlp_cube, **params)
    out.pop("zlp")
    return out


def _kk_block(block, energy_eV, *, zlp_cube=None, **params):
    return kk_thickness_kernel(block, energy_eV, zlp_cube=zlp_cube, **params)


def thickness(
    si: xr.DataArray,
    method: str = "log-ratio",
    zlp: Any = "threshold",
    *,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    density_g_cm3: float | None = None,
    mean_free_path_nm: float | None = None,
    zeff: float | None = None,
    refractive_index: float | None = None,
    metal: bool = False,
    kk_constant_nm_eV: float | None = None,
    tail: str = "auto",
    search_eV: tuple[float, float] = SEARCH_EV,
    device: str = "auto",
) -> xr.Dataset:
    """Thickness maps of a low-loss spectrum image (lazy; ``.compute()`` or write it).

    Parameters
    ----------
    si : xarray.DataArray
        Low-loss spectrum image (..., energy), counts, uniform increasing axis in eV, with the ZLP.
    method : {"log-ratio", "kk"}
        ``"log-ratio"``: t/lambda = ln(I_t/N0) (Egerton 2011, 5.1.1), absolute with a mean free
        path. ``"kk"``: the Kramers-Kronig sum rule on the Fourier-log SSD (kk-theory.md eq. 26),
        absolute without a mean free path, needing ``refractive_index``, ``metal=True`` or a
        calibrated ``kk_constant_nm_eV``, and the beam energy and collection angle.
    zlp : str or array
        Zero-loss model: ``"threshold"`` (default: truncation at the first minimum, robust to
        any ZLP shape, exspy's and Egerton's log-ratio recipe), ``"mirror"`` (for a symmetric
        ZLP), ``"fit"``, a reference spectrum, or a per-pixel ZLP cube (see
        :func:`eelsgpu.zlp.resolve_zlp`). ``method="kk"`` deconvolves with R, so there
        ``"threshold"`` (no ZLP shape) stands for ``"mirror"``.
    beam_energy_keV, collection_angle_mrad, convergence_angle_mrad : float, optional
        Override the file's calibration (keV, mrad); required only where used.
    density_g_cm3 : float, optional
        For the Iakoubovskii mean free path with its angular correction (needs E0, beta, alpha).
    mean_free_path_nm : float, optional
        A known mean free path for the measured conditions (nm); takes precedence.
    zeff : float, optional
        For the Malis mean free path (needs E0 and beta).
    refractive_index, metal : float, bool
        KK: Re[1/eps(0)] = 1/n^2 (eq. 28) or 0.
    kk_constant_nm_eV : float, optional
        KK: A of eq. 29 from :func:`calibrate_kk_constant` (replaces n / metal).
    tail : {"auto", "power-law", "fourier-log", "none"}
        Log-ratio: how scattering beyond the window is counted (:func:`log_ratio_kernel`).
    search_eV : (float, float)
        Where the ZLP maximum may be (eV on the stored axis).
    device : {"auto", "cpu", "gpu"}

    Returns
    -------
    xarray.Dataset
        ``t_over_lambda``, ``thickness_nm`` (when absolute is possible), ``zlp_intensity``,
        ``zlp_centre_eV``, ``valid`` (and ``total_intensity``, ``tail_fraction``, ``tail_trusted``
        for log-ratio, ``kk_integral`` for kk); the run's parameters in ``attrs``.

    Raises
    ------
    NoZeroLossPeakError
        When no pixel has a zero-loss peak (checked on the first block of pixels, cheaply).
    MissingParameterError
        A calibration value that is needed and neither given nor in the file.
    """
    if method not in ("log-ratio", "kk"):
        raise ValueError(f"method must be 'log-ratio' or 'kk', not {method!r}")
    energy_axis(si["energy"].values, require_uniform=True, source=si.attrs.get("source"))
    zparams, extras = resolve_zlp(si, zlp)
    params: dict[str, Any] = {**zparams, "search_eV": tuple(search_eV)}
    attrs: dict[str, Any] = {
        "thickness_method": method,
        "zlp_method": zparams["method"],
        "zlp_search_eV": list(search_eV),
    }
    _precheck(si, zparams, search_eV)
    if method == "log-ratio":
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
        params["tail"] = tail
        attrs["tail"] = tail
        outputs = [
            _output("t_over_lambda"),
            _output("zlp_intensity"),
            _output("zlp_centre_eV"),
            _output("valid", "bool"),
            _output("total_intensity"),
            _output("tail_fraction"),
            engine.Output("tail_trusted", long_name="tail extrapolation trusted", dtype="bool"),
        ]
        # whole blocks: the kernel's per-call work (host checks, the bisections, the Fourier-log
        # subset) does not pay on cache-sized tiles of 128 spectra (measured 2.4x slower)
        ds = engine.apply_kernel(
            engine.BlockKernel(_lr_block, outputs),
            si,
            device=device,
            extras=extras,
            attrs=attrs,
            tile_pixels=_LR_TILE_PIXELS,
            **params,
        )
        lam, how = _mean_free_path(
            si,
            beam_energy_keV,
            collection_angle_mrad,
            convergence_angle_mrad,
            density_g_cm3,
            mean_free_path_nm,
            zeff,
        )
        if lam is not None:
            ds = with_thickness_nm(ds, lam, how)
    else:
        if zparams["method"] == "threshold":
            attrs["zlp_method"] = "mirror (the threshold model is no resolution function)"
        e0 = require_param(si, "beam_energy_keV", beam_energy_keV)
        beta = require_param(si, "collection_angle_mrad", collection_angle_mrad)
        if kk_constant_nm_eV is not None:
            a_const = float(kk_constant_nm_eV)
            attrs["kk_normalisation"] = "calibrated A"
        elif metal:
            a_const = _kk_prefactor_nm(e0)
            attrs["kk_normalisation"] = "metal (Re[1/eps(0)] = 0)"
        elif refractive_index is not None:
            n = float(refractive_index)
            if not n > 1:
                raise InputError(f"refractive_index must be above 1, not {refractive_index!r}")
            a_const = _kk_prefactor_nm(e0) / (1.0 - 1.0 / n**2)
            attrs["kk_normalisation"] = f"refractive index n = {n:g}"
            attrs["refractive_index"] = n
        else:
            raise InputError(
                "the KK thickness needs the static refractive index (refractive_index=..., "
                "--refractive-index) for an insulator or semiconductor, metal=True (--metal), or "
                "a calibrated kk_constant_nm_eV= (--kk-constant)"
            )
        attrs.update(beam_energy_keV=e0, collection_angle_mrad=beta, kk_constant_nm_eV=a_const)
        params.update(beam_energy_keV=e0, collection_angle_mrad=beta, kk_constant_nm_eV=a_const)
        outputs = [
            _output("thickness_nm"),
            _output("t_over_lambda"),
            _output("kk_integral"),
            _output("zlp_intensity"),
            _output("zlp_centre_eV"),
            _output("valid", "bool"),
        ]
        ds = engine.apply_kernel(
            engine.BlockKernel(_kk_block, outputs),
            si,
            device=device,
            extras=extras,
            attrs=attrs,
            **params,
        )
    return ds


def _precheck(si: xr.DataArray, zparams: Mapping[str, Any], search_eV) -> None:
    """Raise NoZeroLossPeakError early, and cheaply, when no pixel can have a ZLP: the window does
    not reach the search range, or the image is one block of pixels and none of them has one.
    (A larger image is checked block by block as it is computed: its pixels get valid=False.)"""
    e = np.asarray(si["energy"].values)
    if not ((e >= search_eV[0]) & (e <= search_eV[1])).any():
        check_any_valid(np.zeros(1, bool), si, search_eV)
    data = si.data
    if hasattr(data, "blocks"):
        if data.npartitions > 1:
            return
        data = data.compute()
    sample = np.asarray(data, dtype=np.float64).reshape(-1, si.shape[-1])
    from .zlp import centre_kernel

    check_any_valid(centre_kernel(sample, e, search_eV=tuple(search_eV))["valid"], si, search_eV)


def with_thickness_nm(ds: xr.Dataset, mean_free_path_nm: float, how: str) -> xr.Dataset:
    """``ds`` with ``thickness_nm`` = ``t_over_lambda`` x the mean free path (nm), which the
    variable's and the dataset's attributes record (with ``how`` it was found)."""
    ds["thickness_nm"] = ds["t_over_lambda"] * mean_free_path_nm
    ds["thickness_nm"].attrs = {
        "units": "nm",
        "long_name": "thickness",
        "mean_free_path_nm": mean_free_path_nm,
    }
    ds.attrs["mean_free_path_nm"] = mean_free_path_nm
    ds.attrs["mean_free_path_from"] = how
    return ds


def _mean_free_path(si, e0, beta, alpha, density, mfp, zeff) -> tuple[float | None, str]:
    if mfp is not None:
        return float(mfp), "given"
    if density is not None:
        e0 = require_param(si, "beam_energy_keV", e0)
        beta = require_param(si, "collection_angle_mrad", beta)
        alpha = require_param(si, "convergence_angle_mrad", alpha)
        return (
            mean_free_path_iakoubovskii_nm(density, e0, beta, alpha),
            f"Iakoubovskii 2008, density {density:g} g/cm3, angular correction",
        )
    if zeff is not None:
        e0 = require_param(si, "beam_energy_keV", e0)
        beta = require_param(si, "collection_angle_mrad", beta)
        return mean_free_path_malis_nm(e0, beta, zeff=zeff), f"Malis 1988, Zeff {zeff:g}"
    return None, ""


# `eelsgpu.thickness(...)` calls thickness() (see eelsgpu._callable)
from ._callable import make_module_callable  # noqa: E402

make_module_callable(__name__)
