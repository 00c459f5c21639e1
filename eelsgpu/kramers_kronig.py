"""Kramers-Kronig analysis: the complex dielectric function and absolute thickness of every pixel.

From the single-scattering distribution (SSD) of a low-loss spectrum image this module computes,
per pixel (kk-theory.md eqs. 26-36; Egerton 2011, section 4.2, his program KRAKRO):

* the loss function Im[-1/eps(E)] from the SSD with the angular and relativistic factors of
  eq. 31, normalised by the Kramers-Kronig sum rule (eq. 33) from a refractive index n (eq. 28),
  as a metal (Re[1/eps(0)] = 0), or from a known thickness;
* Re[1/eps(E)] by eq. 32 as a discrete Hilbert transform done with FFTs (Maclaurin's
  odd-offset formula on the odd extension, as a *linear* convolution: the FFT length is at least
  twice the loss window, so nothing wraps around) and eps1, eps2 by eq. 34;
* the absolute thickness from the normalisation (eq. 26);
* the surface-loss correction of eqs. 35-36 by safeguarded Newton steps (a Riemann-Hilbert
  solve with FFTs, see :func:`kk_kernel`), stopping per pixel;
* derived optical quantities: the absorption coefficient mu(E) = (E/hbar c) [2(|eps| - eps1)]^1/2
  in 1/nm (kk-theory.md after eq. 34; x 1e7 for 1/cm), n(E) and k(E) (n + ik = sqrt(eps)),
  n_eff(E) = (2 eps0 m0 / (pi hbar^2 e^2)) int_0^E E' eps2(E') dE' from the f-sum rule
  (electrons per nm^3, or per atom given the atom density; Egerton 2011 eq. 4.29; for a metal it
  is dominated by the Drude peak of eps2 at E -> 0, i.e. by the low-energy extrapolation), the
  energy where eps1 crosses 0 upwards (of several crossings, the one with the largest loss
  function), the loss-function maximum, and a Cerenkov flag (median eps1 over [E_c, 5 eV] above
  (c/v)^2).

Numerical treatment, and why
----------------------------
*Energy origin.* The analysis runs on the loss grid E_k = k dE, k = 0..K-1, with E_0 = 0 kept
explicitly (Im[-1/eps(0)] = 0; the odd extension puts -E_k beside E_k). When no input channel sits
exactly at 0 eV the SSD is linearly interpolated onto that grid (a shift of less than a channel,
the same for all pixels).

*Low energies.* The sum rule weights the SSD by 1/E, so the residue of the zero-loss peak near
0 eV in deconvolved, noisy data swings the thickness by tens of percent. Both metals and
insulators have Im[-1/eps] proportional to E at small E (Drude: E Gamma/Ep^2; an insulator:
eps2 / eps1(0)^2 with eps2 ~ E), so Im[-1/eps]/E is flat there. Below a cut-off
``low_energy_cutoff_eV`` (default 1.5 eV, three times a typical 0.5 eV ZLP FWHM; the public
function takes 3 FWHM where it knows the FWHM) the loss function is replaced by c E, with c the
mean of Im[-1/eps]/E over [E_c, 2 E_c) of the same pixel. On exact data this changes the sum rule
by O(E_c^2/Ep^2) of the part below E_c (< 0.05 % for the tested models); on noisy data it removes
the 1/E amplification of the residue.

*High energies.* Beyond the window the loss function is extrapolated as A/E^3 (the asymptote of
every damped oscillator, Drude or Lorentz), A fitted by least squares over the last 10 % of the
window. Its contributions to the sum rule (A/(3 E_m^3)) and to Re[1/eps] (closed form, see
:func:`_tail_re_inverse`) are added analytically, so no padding with model values is needed.
Pixels whose loss function has not decayed at the end of the window are flagged
(``tail_decayed`` False).

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=0.5,
...     beam_energy_keV=300.0, collection_angle_mrad=10.0, dtype=np.float64)
>>> ssd = sim["true_ssd"].values[None, :]
>>> t = sum_rule_thickness_nm(ssd, sim["energy"].values, np.array([float(sim["true_zlp_intensity"])]),
...     beam_energy_keV=300.0, collection_angle_mrad=10.0, metal=True)
>>> bool(abs(t[0] / float(sim["true_t_nm"]) - 1) < 0.01)
True
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.constants as _c
import scipy.fft as _sfft
import xarray as xr

from . import physics
from ._xp import array_namespace
from .errors import EnergyAxisError, InputError, MissingParameterError

__all__ = [
    "DEFAULT_LOW_ENERGY_CUTOFF_EV",
    "KKWarning",
    "kk_kernel",
    "kramers_kronig",
    "loss_grid",
    "re_inverse_eps",
    "sum_rule_thickness_nm",
]

#: Default low-energy cut-off (eV): three FWHM of a typical 0.5 eV zero-loss peak.
DEFAULT_LOW_ENERGY_CUTOFF_EV: float = 1.5
#: Minimum positive-loss range (eV) an analysis accepts.
MIN_LOSS_RANGE_EV: float = 1.0
#: Fraction of the window (at its high end) used to fit the A/E^3 tail.
TAIL_FRACTION: float = 0.1
#: electrons per nm^3 per eV^2 of Ep^2: n = eps0 m0 Ep^2 / hbar^2 (Ep = hbar omega_p).
_DENSITY_PER_EP2_NM3: float = _c.epsilon_0 * _c.m_e * _c.e**2 / (_c.hbar**2 * _c.e**2) * 1e-27


class KKWarning(UserWarning):
    """A Kramers-Kronig result that is computed but deserves care (flagged pixels)."""


# ------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class LossGrid:
    """Where the loss grid E_k = k dE (k = 0..n-1) sits on the input channels.

    ``pad`` zero channels are prepended (an axis starting above 0 eV), then
    E_k = (1 - frac) channel[start + k] + frac channel[start + k + 1].
    """

    start: int
    frac: float
    n: int
    dispersion_eV: float
    pad: int

    @property
    def energy_eV(self) -> np.ndarray:
        return np.arange(self.n) * self.dispersion_eV


def loss_grid(energy_eV: Any, *, source: str | None = None) -> LossGrid:
    """The loss grid (E = 0, dE, 2 dE, ...) of a uniform input energy axis.

    Parameters
    ----------
    energy_eV : array (n_E,)
        Uniform, increasing energy axis in eV, loss positive.
    source : str, optional
        File name for error messages.

    Raises
    ------
    EnergyAxisError
        If the axis does not reach ``MIN_LOSS_RANGE_EV`` (1 eV) of positive loss, or starts more
        than 10 channels above 0 eV.
    """
    n_e = int(energy_eV.shape[0])
    where = f" in {source}" if source else ""
    if n_e < 2:
        raise EnergyAxisError(f"the energy axis{where} needs at least 2 channels")
    e_first = float(energy_eV[0])
    e_last = float(energy_eV[n_e - 1])
    de = (e_last - e_first) / (n_e - 1)
    if not de > 0:
        raise EnergyAxisError(f"the energy axis{where} must increase")
    if e_last < MIN_LOSS_RANGE_EV:
        raise EnergyAxisError(
            f"the energy axis{where} ends at {e_last:g} eV: a Kramers-Kronig analysis needs "
            f"losses up to well beyond the plasmon (at least {MIN_LOSS_RANGE_EV:g} eV, in "
            "practice several times the plasmon energy)"
        )
    i_zero = -e_first / de  # fractional channel of 0 eV
    pad = 0
    if i_zero < 0:
        if i_zero < -10.5:
            raise EnergyAxisError(
                f"the energy axis{where} starts at {e_first:g} eV, far above 0 eV: the sum rule "
                "needs the loss function from 0 eV (give the SSD from 0 eV)"
            )
        pad = int(math.ceil(-i_zero - 1e-9))
        i_zero += pad
    start = int(math.floor(i_zero + 1e-6))
    frac = i_zero - start
    if frac < 1e-6:
        frac = 0.0
    n = n_e + pad - start - (1 if frac > 0 else 0)
    return LossGrid(start=start, frac=float(frac), n=int(n), dispersion_eV=float(de), pad=pad)


def _on_loss_grid(xp, block, grid: LossGrid):
    """The block's channels resampled onto the loss grid, (n_pix, grid.n)."""
    if grid.pad:
        zeros = xp.zeros((block.shape[0], grid.pad), dtype=block.dtype)
        block = xp.concat([zeros, block], axis=-1)
    a = block[:, grid.start : grid.start + grid.n]
    if grid.frac == 0.0:
        return a
    b = block[:, grid.start + 1 : grid.start + 1 + grid.n]
    return (1.0 - grid.frac) * a + grid.frac * b


# ------------------------------------------------------------------------------ ingredients
def _angular(xp, e, beam_energy_keV: float, collection_angle_mrad: float):
    """ln(1 + (beta/theta_E)^2) on the loss grid (eq. 31); 1 at E = 0 (unused there)."""
    positive = e > 0
    e_safe = xp.where(positive, e, xp.ones_like(e))
    theta = physics.characteristic_angle_mrad(e_safe, beam_energy_keV)
    ang = xp.log(1.0 + (float(collection_angle_mrad) / theta) ** 2)
    return xp.where(positive, ang, xp.ones_like(ang))


def _cutoff_index(grid: LossGrid, low_energy_cutoff_eV: float) -> tuple[int, int]:
    """(kc, kf): channels below kc are extrapolated, c is fitted over [kc, kf)."""
    if low_energy_cutoff_eV < 0 or not math.isfinite(low_energy_cutoff_eV):
        raise ValueError(f"low_energy_cutoff_eV must be >= 0, not {low_energy_cutoff_eV!r}")
    kc = max(1, int(round(low_energy_cutoff_eV / grid.dispersion_eV)))
    kf = max(2 * kc, kc + 3)
    if kf > grid.n // 2:
        raise EnergyAxisError(
            f"the low-energy cut-off {low_energy_cutoff_eV:g} eV is too high for a loss window "
            f"ending at {(grid.n - 1) * grid.dispersion_eV:g} eV"
        )
    return kc, kf


def _low_energy_fill(xp, f, e, kc: int, kf: int):
    """Replace f (proportional to Im[-1/eps]) below channel kc by c E (linear at small E).

    Returns (f_ext, c) with c the mean of f/E over channels [kc, kf).
    """
    c = xp.mean(f[:, kc:kf] / e[kc:kf], axis=-1)
    k = xp.arange(f.shape[-1])
    low = k < kc
    return xp.where(low, c[:, None] * e, f), c


def _tail_fit(xp, f, e, k_tail: int):
    """A of f ~ A / E^3 by least squares over channels [k_tail, K); clamped >= 0."""
    et = e[k_tail:]
    w = et ** (-3)
    a = xp.sum(f[:, k_tail:] * w, axis=-1) / xp.sum(w * w)
    return xp.where(a > 0, a, xp.zeros_like(a))


def _tail_start(n: int) -> int:
    return n - max(8, int(round(TAIL_FRACTION * n)))


def _sum_rule_integral(xp, f_ext, c, a_tail, e, grid: LossGrid):
    """J = integral_0^inf f(E)/E dE (f per eV): channels >= 1, half channel 0, and the A/E^3 tail."""
    de = grid.dispersion_eV
    e_safe = xp.where(e > 0, e, xp.ones_like(e))
    body = xp.sum(f_ext[:, 1:] / e_safe[1:], axis=-1) * de
    e_m = (grid.n - 0.5) * de
    return body + c * (0.5 * de) + a_tail / (3.0 * e_m**3)


def _normalisation(re_inv_eps0: float | None, refractive_index, metal: bool) -> float:
    """1 - Re[1/eps(0)] from n (eq. 28) or a metal."""
    if metal:
        if refractive_index is not None:
            raise ValueError("give either refractive_index or metal=True, not both")
        return 1.0
    if refractive_index is None:
        raise MissingParameterError(
            "the Kramers-Kronig sum rule needs refractive_index=n (insulator or semiconductor), "
            "metal=True, or a known thickness"
        )
    n = float(refractive_index)
    if math.isnan(n) or n < 1.0:
        raise InputError(f"refractive_index must be >= 1 (n^2 = eps(0) >= 1), not {n!r}")
    if math.isinf(n):
        return 1.0
    return 1.0 - 1.0 / n**2


def _prepare(block, energy_eV, *, beam_energy_keV, collection_angle_mrad, low_energy_cutoff_eV):
    """SSD on the loss grid as f = SSD / (dE ln(1 + beta^2/theta_E^2)), extrapolated pieces."""
    xp = array_namespace(block)
    grid = loss_grid(energy_eV)
    kc, kf = _cutoff_index(grid, low_energy_cutoff_eV)
    s = _on_loss_grid(xp, block, grid)
    e = xp.arange(grid.n, dtype=s.dtype) * grid.dispersion_eV
    ang = _angular(xp, e, beam_energy_keV, collection_angle_mrad)
    return xp, grid, kc, kf, s, e, ang


def sum_rule_thickness_nm(
    ssd,
    energy_eV,
    zlp_intensity,
    *,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    refractive_index: float | None = None,
    metal: bool = False,
    low_energy_cutoff_eV: float = DEFAULT_LOW_ENERGY_CUTOFF_EV,
):
    """Absolute thickness (nm) from the Kramers-Kronig sum rule (kk-theory.md eq. 26).

    t = 4 a0 F E0 / (N0 (1 - Re[1/eps(0)])) integral_0^inf I_SSD(E) / (E ln(1 + beta^2/theta_E^2)) dE

    with F and theta_E of eq. 27 (relativistic), Re[1/eps(0)] = 1/n^2 (eq. 28) or 0 for a metal.
    The integrand below ``low_energy_cutoff_eV`` is replaced by its small-E form (Im[-1/eps]
    linear in E, fitted over [E_c, 2 E_c) per pixel) so the zero-loss residue of deconvolved data
    is not amplified by 1/E; above the window the SSD is continued as A/E^3 (module docstring).
    Array-API kernel: any namespace, no data-dependent shapes.

    Parameters
    ----------
    ssd : array (n, n_E)
        Single-scattering distribution, counts per channel, on a uniform loss axis
        ``energy_eV`` (eV) that holds 0 eV (or starts within 10 channels of it).
    energy_eV : array (n_E,)
        Energy loss in eV.
    zlp_intensity : array (n,)
        N0, the zero-loss intensity (counts) of each spectrum.
    beam_energy_keV, collection_angle_mrad : float
        E0 (keV) and the collection semi-angle beta (mrad).
    refractive_index : float, optional
        Static refractive index n >= 1 of an insulator or semiconductor.
    metal : bool
        Metal or semi-metal: Re[1/eps(0)] = 0.
    low_energy_cutoff_eV : float
        E_c in eV (0 switches the low-energy treatment off).

    Returns
    -------
    array (n,)
        Thickness in nm; NaN where N0 <= 0 or the integral is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-100, 1948) * 0.05
    >>> ssd = np.where(e > 0, 1e3 * np.exp(-((e - 15) / 2) ** 2), 0.0)[None, :]
    >>> t = sum_rule_thickness_nm(ssd, e, np.array([1e6]), beam_energy_keV=200.0,
    ...                           collection_angle_mrad=10.0, metal=True)
    >>> t.shape
    (1,)
    """
    one_minus = _normalisation(None, refractive_index, metal)
    xp, grid, kc, kf, s, e, ang = _prepare(
        ssd,
        energy_eV,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
    )
    f = s / (grid.dispersion_eV * ang)
    f_ext, c = _low_energy_fill(xp, f, e, kc, kf)
    a_tail = _tail_fit(xp, f, e, _tail_start(grid.n))
    j = _sum_rule_integral(xp, f_ext, c, a_tail, e, grid)
    t_ev = physics.kinetic_energy_T_keV(beam_energy_keV) * 1e3
    n0 = xp.asarray(zlp_intensity, dtype=j.dtype)
    ok = (n0 > 0) & (j > 0)
    n0_safe = xp.where(ok, n0, xp.ones_like(n0))
    t = 4.0 * physics.BOHR_RADIUS_NM * t_ev * j / (n0_safe * one_minus)
    return xp.where(ok, t, xp.full_like(t, math.nan))


# ------------------------------------------------------------------------------- Hilbert
def _odd_offsets(m: np.ndarray) -> np.ndarray:
    """Maclaurin's kernel g(m) = 2/(pi m) for odd m, 0 for even m."""
    m = np.asarray(m, dtype=np.float64)
    odd = (np.abs(m) % 2) == 1
    out = np.zeros_like(m)
    out[odd] = 2.0 / (np.pi * m[odd])
    return out


@functools.lru_cache(maxsize=16)
def _hilbert_spectra(k: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """rfft of the two circular kernels of the odd-extension Hilbert transform (host, cached).

    H_i = sum_j L_j g(j - i) + sum_j L_j g(j + i), i, j in [0, K): a convolution with
    a[r] = g(-r) (r in (-K, K)) and a correlation with b[s] = g(s) (s in [0, 2K - 1)); both
    fit without overlap in a period m >= 2K - 1, so the circular result is the linear one.
    """
    if m < 2 * k - 1:
        raise ValueError("FFT length too short for a linear Hilbert convolution")
    a = np.zeros(m)
    r = np.arange(k)
    a[:k] = _odd_offsets(-r)
    a[m - k + 1 :] = _odd_offsets(np.arange(k - 1, 0, -1))  # r = -(k-1)..-1: g(-r) = g(|r|)
    b = np.zeros(m)
    b[: 2 * k - 1] = _odd_offsets(np.arange(2 * k - 1))
    return np.fft.rfft(a), np.fft.rfft(b)


def _fft_module(xp):
    """``xp.fft``, except for NumPy arrays: scipy.fft there (same results, pocketfft in C++ with
    native float32, about twice NumPy's speed); one worker, as dask already runs a block per core."""
    if xp.__name__.startswith("array_api_compat.numpy") or xp.__name__ == "numpy":
        return _ScipyFFT
    return xp.fft


class _ScipyFFT:
    @staticmethod
    def rfft(x, n, axis):
        return _sfft.rfft(x, n=n, axis=axis, workers=1)

    @staticmethod
    def irfft(x, n, axis):
        return _sfft.irfft(x, n=n, axis=axis, workers=1)


def fft_length(k: int) -> int:
    """FFT length of the Hilbert transform of a K-channel loss grid: next fast length >= 2K-1."""
    return int(_sfft.next_fast_len(2 * k - 1, real=True))


def _tail_re_inverse(xp, a_loss, e, e_m: float):
    """Contribution of Im[-1/eps] = A/E^3 beyond E_m to the KK integral of eq. 32.

    (2/pi) int_{E_m}^inf (A/E'^3) E'/(E'^2 - E^2) dE'
        = (2A/pi) [ln((E_m + E)/(E_m - E)) / (2E) - 1/E_m] / E^2,
    which is (2A/pi) (1/3 + x^2/5 + x^4/7 + x^6/9 + ...)/E_m^3 for x = E/E_m (used for x < 0.2).
    """
    x = e / e_m
    x = xp.where(x < 1.0 - 1e-3, x, xp.full_like(x, 1.0 - 1e-3))
    x2 = x * x
    series = 1.0 / 3.0 + x2 * (1.0 / 5.0 + x2 * (1.0 / 7.0 + x2 * (1.0 / 9.0 + x2 / 11.0)))
    xs = xp.where(x > 0.2, x, xp.full_like(x, 0.5))
    closed = (xp.log((1.0 + xs) / (1.0 - xs)) / (2.0 * xs) - 1.0) / (xs * xs)
    shape = xp.where(x > 0.2, closed, series) / e_m**3
    return (2.0 / math.pi) * a_loss[:, None] * shape[None, :]


def re_inverse_eps(loss, dispersion_eV: float, *, tail_coefficient=None):
    """Re[1/eps(E)] from Im[-1/eps(E)] on the grid E_k = k dE by eq. 32, with FFTs.

    Re[1/eps(E)] = 1 - (2/pi) P int_0^inf Im[-1/eps(E')] E'/(E'^2 - E^2) dE', evaluated as
    (1/pi) P int over the odd extension with Maclaurin's formula (odd offsets only, Ohta &
    Ishida 1988) as a linear convolution on an FFT length >= 2K - 1 (no wrap-around), plus the
    analytic contribution of an A/E^3 tail beyond the window.

    Parameters
    ----------
    loss : array (n, K)
        Im[-1/eps] at E_k = k dE, E_0 = 0 (its value there is ignored: the odd extension is 0).
    dispersion_eV : float
        dE in eV.
    tail_coefficient : array (n,), optional
        A (eV^3) of Im[-1/eps] ~ A/E^3 beyond the window.

    Returns
    -------
    array (n, K)
        Re[1/eps] (dimensionless).

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(4096) * 0.05
    >>> eps = 1 - 15.0**2 / (e**2 + 1j * e * 1.0 + 1e-300)
    >>> loss = np.where(e > 0, np.imag(-1 / eps), 0.0)[None, :]
    >>> re = re_inverse_eps(loss, 0.05)
    >>> bool(abs(re[0, 200] - np.real(1 / eps[200])) < 1e-3)
    True
    """
    xp = array_namespace(loss)
    k = xp.arange(loss.shape[-1])
    loss0 = xp.where(k == 0, xp.zeros_like(loss), loss)
    return _re_inverse(xp, loss0, dispersion_eV, tail_coefficient)


def _re_inverse(xp, loss0, dispersion_eV: float, tail_coefficient):
    """:func:`re_inverse_eps` for a loss function already 0 at E = 0."""
    n_k = loss0.shape[-1]
    m = fft_length(n_k)
    ah, bh = _hilbert_spectra(n_k, m)
    cdtype = xp.complex64 if loss0.dtype == xp.float32 else xp.complex128
    ah = xp.asarray(ah, dtype=cdtype)
    bh = xp.asarray(bh, dtype=cdtype)
    fft = _fft_module(xp)
    lh = fft.rfft(loss0, n=m, axis=-1)
    # lh ah + conj(lh) bh with in-place updates (no large temporaries: they cost page faults)
    p = xp.conj(lh)
    p *= bh
    lh *= ah
    lh += p
    del p
    h = fft.irfft(lh, n=m, axis=-1)[:, :n_k]
    if tail_coefficient is None:
        return 1.0 - h
    e = xp.arange(n_k, dtype=loss0.dtype) * dispersion_eV
    re = _tail_re_inverse(xp, tail_coefficient, e, (n_k - 0.5) * dispersion_eV)
    re += h
    re *= -1.0
    re += 1.0
    return re


# --------------------------------------------------------------------------------- kernel
#: Map outputs of the kernel (one value per pixel) and their (units, long name, dtype).
MAP_OUTPUTS: dict[str, tuple[str, str, str]] = {
    "thickness_nm": ("nm", "thickness (Kramers-Kronig sum rule)", "float"),
    "re_inverse_eps0": ("", "Re[1/eps(0)]", "float"),
    "static_refractive_index": ("", "static refractive index n = Re[1/eps(0)]^-1/2", "float"),
    "plasmon_energy_eV": ("eV", "eps1 = 0 crossing with positive slope", "float"),
    "loss_peak_eV": ("eV", "energy of the loss-function maximum", "float"),
    "iterations": ("", "surface-correction iterations done", "int32"),
    "converged": ("", "surface correction converged (and applied)", "bool"),
    "surface_status": (
        "",
        "surface correction: 0 not asked, 1 converged, 2 too thin (uncorrected), "
        "3 did not converge (uncorrected)",
        "int32",
    ),
    "cerenkov": ("", "Cerenkov condition v > c/sqrt(eps1) met at low energy", "bool"),
    "tail_decayed": ("", "loss function decayed before the window ends", "bool"),
    "valid": ("", "pixel analysed (N0, SSD and normalisation usable)", "bool"),
}
#: Per-pixel spectra of the kernel, on the loss grid E_k = k dE, k >= 1.
CUBE_OUTPUTS: dict[str, tuple[str, str]] = {
    "eps1": ("", "eps1 = Re[eps]"),
    "eps2": ("", "eps2 = Im[eps]"),
    "loss_function": ("", "Im[-1/eps]"),
    "surface_intensity": ("counts", "surface-loss intensity I_S per channel (eq. 36)"),
    "refractive_index": ("", "refractive index n(E)"),
    "extinction_coefficient": ("", "extinction coefficient k(E)"),
    "absorption_coefficient": ("1/nm", "optical absorption coefficient mu(E)"),
    "n_eff": ("electrons/nm^3", "effective electron density n_eff(E) (f-sum rule)"),
}
DEFAULT_VARIABLES: tuple[str, ...] = tuple(CUBE_OUTPUTS) + tuple(MAP_OUTPUTS)


def _single_pass(xp, s, n0, e, ang, grid, kc, kf, *, beam_energy_keV, one_minus, thickness_nm):
    """One KK analysis of SSD rows ``s`` (n, K): (loss, re_inv, thickness, re0, ok, a_tail, j)."""
    de = grid.dispersion_eV
    # f = s / (dE ang) is proportional to Im[-1/eps]; the reductions below are matrix-vector
    # products on s itself (one pass each, no temporaries), the same sums as
    # _low_energy_fill / _tail_fit / _sum_rule_integral
    inv = 1.0 / (de * ang)
    e_safe = xp.where(e > 0, e, xp.ones_like(e))
    w_e = inv / e_safe
    n_fit = kf - kc
    c = (s[:, kc:kf] @ w_e[kc:kf]) / n_fit
    kt = _tail_start(grid.n)
    w3 = e_safe[kt:] ** (-3)
    a_tail = (s[:, kt:] @ (inv[kt:] * w3)) / xp.sum(w3 * w3)
    a_tail = xp.where(a_tail > 0, a_tail, xp.zeros_like(a_tail))
    e_m = (grid.n - 0.5) * de
    j = (s[:, kc:] @ w_e[kc:]) * de + c * ((kc - 0.5) * de) + a_tail / (3.0 * e_m**3)
    t_kev = physics.kinetic_energy_T_keV(beam_energy_keV)
    pref = physics.KK_PREFACTOR_NM_EV_PER_KEV * t_kev  # pi a0 m0 v^2, nm eV
    ok = xp.isfinite(j) & (j > 0)
    j_safe = xp.where(ok, j, xp.ones_like(j))
    n0_ok = xp.isfinite(n0) & (n0 > 0)
    n0_safe = xp.where(n0_ok, n0, xp.ones_like(n0))
    nan = xp.full_like(j, math.nan)
    if thickness_nm is None:
        # kappa = pi (1 - Re[1/eps(0)]) / (2 J): Im[-1/eps] = kappa f (eq. 33)
        kappa = (math.pi * one_minus / 2.0) / j_safe
        t = xp.where(n0_ok, pref / (n0_safe * kappa), nan)
        re0 = xp.full_like(j, 1.0 - one_minus)
    else:
        t_ok = xp.isfinite(thickness_nm) & (thickness_nm > 0)
        ok = ok & t_ok & n0_ok
        t = xp.where(ok, thickness_nm, nan)
        kappa = pref / (n0_safe * xp.where(t_ok, thickness_nm, xp.ones_like(thickness_nm)))
        re0 = 1.0 - (2.0 / math.pi) * kappa * j
    # Im[-1/eps] = kappa f above E_c, kappa c E below (0 at E = 0)
    low = xp.arange(grid.n) < kc
    loss = s * inv
    loss *= kappa[:, None]
    loss = xp.where(low, (kappa * c)[:, None] * e, loss)
    a_loss = kappa * a_tail
    re_inv = _re_inverse(xp, loss, de, a_loss)
    return loss, re_inv, t, re0, ok, a_tail, j


def _eps(re_inv, loss):
    """eps1, eps2 from Re[1/eps] and Im[-1/eps] (eq. 34)."""
    d = re_inv * re_inv
    d += loss * loss
    d = 1.0 / d
    return re_inv * d, loss * d


def kk_kernel(
    block,
    energy_eV,
    *,
    zlp_intensity=None,
    thickness_nm=None,
    valid=None,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    refractive_index: float | None = None,
    metal: bool = False,
    iterations: int = 0,
    low_energy_cutoff_eV: float = DEFAULT_LOW_ENERGY_CUTOFF_EV,
    min_thickness_nm: float = 20.0,
    thickness_tolerance: float = 1e-3,
    eps_tolerance: float = 1e-2,
    cerenkov_max_eV: float = 5.0,
    atom_density_per_nm3: float | None = None,
    variables: Sequence[str] = DEFAULT_VARIABLES,
) -> dict[str, Any]:
    """Kramers-Kronig analysis of a block of SSDs (array-API kernel for :func:`engine.apply_kernel`).

    Implements kk-theory.md eqs. 26, 28, 31-36 (Egerton 2011 section 4.2): the loss function from
    the SSD (eq. 31), normalised by the sum rule (eq. 33) from n, as a metal, or from a known
    thickness; Re[1/eps] by eq. 32 (:func:`re_inverse_eps`); eps by eq. 34; the thickness by
    eq. 26; and, with ``iterations`` > 0, the surface correction of eqs. 35-36.

    Surface correction (eqs. 35-36): find the bulk SSD b with b + I_S(eps(b)) = SSD, where
    eps(b) is the KK analysis of b (eps, t by the single pass above) and
    I_S = N0 dE P_S(eps) (eq. 36, :func:`physics.surface_loss_per_eV`); start: b = SSD
    (I_S = 0, the uncorrected result). The plain fixed point b <- SSD - I_S(eps(b)) diverges for
    thin films (measured: 30 nm and below for a Si-like film; the eigenvalues of its Jacobian
    reach -2.2 at 20 nm and one has a real part above 1, so no damping can cure it), so each
    iteration is an approximate Newton step on the residual F(b) = b + I_S - SSD (channels
    >= E_c): with w = 1/eps (analytic, Re w = Hilbert transform of Im w, eq. 32) the linearised
    equation is a Riemann-Hilbert problem Im[M dw] = F, M = 1/Kp - S g'(w) (Kp the SSD-to-loss
    factor of eq. 31, S eq. 36's prefactor, g(w) = w - 4w/(1 + w)), solved exactly by two
    Hilbert transforms (:func:`_newton_step`). The neglected parts (the sum-rule factor's
    variation, the extrapolations below E_c and beyond the window, discretisation) make the
    convergence linear (||F|| falls by a factor 0.1-0.5 per step, measured on 20-100 nm films).
    Safeguard: a step is accepted only if ||F|| decreases; otherwise that pixel's step length is
    halved (after a success it doubles again, up to 1) and the pixel fails when it would drop
    below 1/8.

    One iteration = one Newton step (2 Hilbert transforms) + one KK single pass of the trial b,
    i.e. about three single passes of FFT work; ``iterations`` is the maximum number of
    iterations (steps, accepted or not). Converged films of 20-100 nm take 3-6 (9-18 passes).

    Convergence criterion, per pixel, after an accepted step i: |t^(i) - t^(i-1)| <=
    ``thickness_tolerance`` t^(i) and max_E |eps^(i) - eps^(i-1)| <= ``eps_tolerance``
    max_E |eps^(i)| (E from E_c to the window end); the pixel then stops iterating (a per-pixel
    active mask). Pixels thinner than ``min_thickness_nm`` (from the uncorrected analysis) are
    not corrected (status 2); pixels that do not converge within ``iterations``, whose step
    length falls below 1/8, whose thickness or eps stop being finite and positive, or whose M
    winds around 0 keep the uncorrected result exactly (status 3); ``converged`` is True only
    for corrected pixels.

    When it fails, and why: M winds around 0 (the Riemann-Hilbert problem has a nonzero index)
    where the surface-plasmon term 4 S |eps|^2/|eps + 1|^2 outweighs the bulk weight 1/Kp near
    eps1 = -1, i.e. where surface losses dominate a sharp surface plasmon. With index 1 the
    continuous linearised problem loses two conditions: the inversion itself is ill-posed, not
    only the iteration (measured for a sharp Drude film, 15 eV, width 0.5 eV, at 100 nm: the
    Jacobian of F has two singular values 5e-3 and 6e-4, all others >= 0.95; two combinations
    of the spectrum are almost undetermined). Measured at the true eps (200 kV, 10 mrad): a
    Si-like Lorentz film (width 3.7 eV) winds at 15 nm but not at 20 nm; a broad Drude metal
    (16.7 eV, width 3.7 eV) at 20 nm but not at 25 nm (its 20 nm film is flagged when the step
    length collapses); the sharp Drude film at every thickness up to 400 nm (the plain fixed
    point diverges there too). Pixels whose M winds get status 3 at once, without iterating.

    Parameters
    ----------
    block : array (n, n_E)
        SSD, counts per channel, loss axis ``energy_eV`` (eV) holding 0 eV.
    zlp_intensity : array (n,), optional
        N0 (counts); needed for the thickness, for ``thickness_nm`` and for the surface term.
    thickness_nm : array (n,), optional
        Known thickness (nm) to normalise by instead of n; t <= 0 or NaN (vacuum) is flagged.
    valid : array (n,), optional
        Pixels to analyse (others give NaN and ``valid`` False).
    beam_energy_keV, collection_angle_mrad : float
        E0 (keV), beta (mrad).
    refractive_index, metal
        Normalisation by eq. 28 when no thickness is given.
    low_energy_cutoff_eV : float
        E_c (eV): Im[-1/eps] below it is extrapolated linearly to 0 (module docstring).
    cerenkov_max_eV : float
        Upper end (eV) of the low-energy range [E_c, cerenkov_max_eV] where the Cerenkov
        condition eps1 > (c/v)^2 is tested (on the median of eps1 there, robust to noise);
        5 eV by default, where Cerenkov losses fall (kk-theory.md, relativistic contributions).
    atom_density_per_nm3 : float, optional
        Atoms per nm^3: ``n_eff`` is then per atom instead of per nm^3.
    variables : sequence of str
        Outputs to return (all of :data:`CUBE_OUTPUTS` and :data:`MAP_OUTPUTS` by default).

    Returns
    -------
    dict
        Maps (n,) and cubes (n, K - 1) on E_k = k dE, k = 1..K-1.
    """
    xp, grid, kc, kf, s0, e, ang = _prepare(
        block,
        energy_eV,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
    )
    n_pix = s0.shape[0]
    dtype = s0.dtype
    one_minus = 1.0
    t_given = None
    if thickness_nm is not None:
        t_given = xp.astype(xp.asarray(thickness_nm), dtype)
    else:
        one_minus = _normalisation(None, refractive_index, metal)
    if zlp_intensity is None:
        if t_given is not None or iterations > 0:
            raise MissingParameterError(
                "zlp_intensity (N0) is needed to normalise by thickness and for the surface term"
            )
        n0 = xp.full((n_pix,), math.nan, dtype=dtype)
    else:
        n0 = xp.astype(xp.asarray(zlp_intensity), dtype)
    ok_in = xp.ones((n_pix,), dtype=xp.bool)
    if valid is not None:
        ok_in = xp.asarray(valid) > 0.5 if valid.dtype != xp.bool else valid
    # any NaN in the SSD makes the pixel invalid; it is zeroed so it cannot poison the FFT
    finite = xp.all(xp.isfinite(s0), axis=-1)
    ok_in = ok_in & finite
    if not bool(xp.all(ok_in)):
        s0 = xp.where(ok_in[:, None], s0, xp.zeros_like(s0))

    common = dict(beam_energy_keV=beam_energy_keV, one_minus=one_minus, thickness_nm=t_given)
    loss, re_inv, t, re0, ok, a_tail, j = _single_pass(xp, s0, n0, e, ang, grid, kc, kf, **common)
    ok = ok & ok_in
    eps1, eps2 = _eps(re_inv, loss)
    surface = xp.zeros_like(s0)
    n_iter = xp.zeros((n_pix,), dtype=xp.int32)
    status = xp.zeros((n_pix,), dtype=xp.int32)
    converged = xp.zeros((n_pix,), dtype=xp.bool)
    if iterations > 0:
        eps1, eps2, loss, re_inv, t, re0, surface, n_iter, status, converged = _surface_loop(
            xp,
            s0,
            n0,
            e,
            ang,
            grid,
            kc,
            kf,
            eps1,
            eps2,
            loss,
            re_inv,
            t,
            re0,
            ok,
            common,
            beam_energy_keV=beam_energy_keV,
            collection_angle_mrad=collection_angle_mrad,
            iterations=int(iterations),
            min_thickness_nm=min_thickness_nm,
            thickness_tolerance=thickness_tolerance,
            eps_tolerance=eps_tolerance,
        )

    want = set(variables)
    out: dict[str, Any] = {}
    sl = slice(1, grid.n)  # output grid: k >= 1 (eps is undefined at E = 0 for a metal)
    e_out = e[sl]
    all_ok = bool(xp.all(ok))  # skips the NaN masking passes in the usual case

    def cube(x):
        x = x[:, sl]
        return x if all_ok else xp.where(ok[:, None], x, xp.full_like(x, math.nan))

    def pmap(x):
        return xp.where(ok, x, xp.full_like(x, math.nan))

    out["eps1"] = cube(eps1)
    out["eps2"] = cube(eps2)
    out["loss_function"] = cube(loss)
    out["surface_intensity"] = cube(surface)
    out["thickness_nm"] = pmap(t)
    out["re_inverse_eps0"] = pmap(re0)
    re0_safe = xp.where(re0 > 0, re0, xp.full_like(re0, math.nan))
    out["static_refractive_index"] = pmap(1.0 / xp.sqrt(re0_safe))
    out["iterations"] = n_iter
    out["converged"] = converged & ok
    out["surface_status"] = status
    out["valid"] = ok
    e1, e2 = out["eps1"], out["eps2"]  # NaN where not ok, so the derived cubes are too
    if want & {"refractive_index", "extinction_coefficient", "absorption_coefficient"}:
        mod = xp.sqrt(e1 * e1 + e2 * e2)
        n_e = xp.sqrt(xp.clip(mod + e1, 0.0, None) / 2.0)
        k_e = xp.sqrt(xp.clip(mod - e1, 0.0, None) / 2.0)
        out["refractive_index"] = n_e
        out["extinction_coefficient"] = k_e
        # mu = (E / hbar c) [2 (|eps| - eps1)]^(1/2) = 2 k E / (hbar c), in 1/nm
        out["absorption_coefficient"] = 2.0 * k_e * e_out / physics.HBAR_C_EV_NM
    if "n_eff" in want:
        de = grid.dispersion_eV
        integrand = e_out * e2
        # integral_0^E E' eps2 dE': trapezoid on k >= 1, plus [0, dE] with E eps2 flat
        cum = xp.cumulative_sum(integrand, axis=-1) * de - 0.5 * de * integrand
        cum = cum + 0.5 * de * integrand[:, :1] + 0.5 * de * integrand[:, :1]
        dens = (2.0 / math.pi) * _DENSITY_PER_EP2_NM3 * cum
        if atom_density_per_nm3 is not None:
            dens = dens / float(atom_density_per_nm3)
        out["n_eff"] = dens
    lo = xp.arange(grid.n - 1) >= (kc - 1)  # E >= E_c on the output grid
    if "plasmon_energy_eV" in want:
        out["plasmon_energy_eV"] = pmap(_plasmon_energy(xp, e1, loss[:, sl], e_out, lo))
    if "loss_peak_eV" in want:
        out["loss_peak_eV"] = pmap(_loss_peak(xp, loss[:, sl], e_out, lo))
    if "cerenkov" in want:
        beta_v = physics.speed_ratio_v_over_c(beam_energy_keV)
        # median of eps1 over [E_c, cerenkov_max_eV]: a single noisy channel where Re[1/eps]
        # passes near 0 (eps1 -> +-inf, common for metals at low energy) must not flag a pixel
        k0 = kc - 1
        k1 = max(k0 + 1, min(grid.n - 1, int(math.floor(cerenkov_max_eV / grid.dispersion_eV))))
        low = xp.sort(e1[:, k0:k1], axis=-1)
        median = low[:, (k1 - k0) // 2]
        out["cerenkov"] = ok & (median > 1.0 / beta_v**2)
    if "tail_decayed" in want:
        f_tail = xp.mean(loss[:, _tail_start(grid.n) :], axis=-1)
        f_max = xp.max(xp.where(lo[None, :], loss[:, sl], xp.zeros_like(loss[:, sl])), axis=-1)
        tail_part = (a_tail / (3.0 * ((grid.n - 0.5) * grid.dispersion_eV) ** 3)) / xp.where(
            j > 0, j, xp.ones_like(j)
        )
        out["tail_decayed"] = ok & (f_tail <= 0.05 * f_max) & (tail_part <= 0.02)
    return {k: v for k, v in out.items() if k in want}


def _plasmon_energy(xp, e1, loss, e, lo):
    """Energy (eV) where eps1 crosses 0 upwards; of several crossings, the one where the loss
    function is largest (the bulk plasmon); NaN when there is none."""
    a, b = e1[:, :-1], e1[:, 1:]
    cross = (a < 0) & (b >= 0) & lo[None, :-1]
    score = xp.where(cross, loss[:, :-1], xp.full_like(a, -1.0))
    idx = xp.argmax(score, axis=-1)[:, None]
    has = xp.max(score, axis=-1) >= 0
    a_i = xp.take_along_axis(a, idx, axis=-1)[:, 0]
    b_i = xp.take_along_axis(b, idx, axis=-1)[:, 0]
    e_i = xp.take(e, idx[:, 0])
    de = e[1] - e[0]
    denom = xp.where(b_i - a_i > 0, b_i - a_i, xp.ones_like(a_i))
    ec = e_i + de * (-a_i) / denom
    return xp.where(has, ec, xp.full_like(ec, math.nan))


def _loss_peak(xp, loss, e, lo):
    """Energy (eV) of the loss-function maximum above E_c, refined by a parabola through 3 points."""
    masked = xp.where(lo[None, :], loss, xp.full_like(loss, -math.inf))
    n = loss.shape[-1]
    idx = xp.argmax(masked, axis=-1)
    idx = xp.clip(idx, 1, n - 2)
    i2 = idx[:, None]
    y0 = xp.take_along_axis(loss, i2 - 1, axis=-1)[:, 0]
    y1 = xp.take_along_axis(loss, i2, axis=-1)[:, 0]
    y2 = xp.take_along_axis(loss, i2 + 1, axis=-1)[:, 0]
    den = y0 - 2.0 * y1 + y2
    shift = xp.where(
        den < 0, 0.5 * (y0 - y2) / xp.where(den < 0, den, -xp.ones_like(den)), 0.0 * den
    )
    shift = xp.clip(shift, -0.5, 0.5)
    de = e[1] - e[0]
    return xp.take(e, idx) + shift * de


def _hilbert_odd(xp, v, dispersion_eV: float):
    """Hd[v]: the discrete Hilbert transform of eq. 32 (Re f = Hd[Im f] for f analytic in the
    upper half plane, Hermitian), of rows ``v`` (n, K) that are 0 at E = 0 (odd extension)."""
    return 1.0 - _re_inverse(xp, v, dispersion_eV, None)


#: Half-width (eV) of the moving average applied to M in the Newton step (noise, see there).
NEWTON_SMOOTHING_EV: float = 0.1


def _newton_step(xp, f_res, loss, re_inv, kappa, e, ang, surf_scale, dispersion_eV):
    """Approximate Newton step of the surface-corrected KK problem by a Riemann-Hilbert solve.

    Unknown: the bulk SSD b (counts/channel); residual F(b) = b + I_S(eps(b)) - SSD (channels
    >= E_c). With w = 1/eps = Re[1/eps] - i Im[-1/eps] (analytic in the upper half plane; its
    real part is the Hilbert transform of its imaginary part, eq. 32) the surface term of eq. 36
    is I_S = S(E) Im[g(w)], g(w) = w - 4 w/(1 + w), S = N0 dE x (eq. 36's prefactor), and the bulk
    SSD is b = Im[-w]/Kp, Kp = kappa/(dE ln(1 + beta^2/theta_E^2)) (eq. 31; the sum-rule factor
    kappa held fixed). The Newton equation dF = -F is then Im[M dw] = F with
    M = 1/Kp - S g'(w), a Riemann-Hilbert problem for the analytic dw. With M = |M| e^{i theta}
    (theta continuous, 0 at E = 0 and at the window end when M does not wind around 0) and
    X = exp(Hd[theta] + i theta) (analytic, arg X = theta), Psi = X dw is analytic with
    Im Psi = q = F |X| / |M|, so Re Psi = Hd[q] and dw = Psi / X: two Hilbert transforms (FFTs)
    solve the linearised problem for all channels at once. What it leaves out (the variation of
    kappa, the low-energy extrapolation below E_c, the A/E^3 tail, the discretisation) makes
    the step inexact: the iteration converges linearly (||F|| falls by a factor 0.1-0.5 per
    step on the tested 20-100 nm films), where the plain fixed point diverges.

    M is smoothed over +-``NEWTON_SMOOTHING_EV`` (0.1 eV): on noise-free data this changes
    nothing measurable; on Poisson-noisy SSDs (1e6 counts, Si-like film, 4 pixels each) it
    raises the converged pixels from 0 to 2 at 20 nm and from 2 to 3 at 30 nm.

    Returns (db, winding): the step for b (0 below E_c) and the per-pixel total phase of M
    (about 0 when the problem has index 0; +-2 pi k when M winds, e.g. for a sharp surface
    plasmon whose surface peak dominates -- then this step is not valid).
    """
    # 1 + w = (1 + R) - i L;  (1 + w)^2 = u + i v;  g'(w) = 1 - 4 (u - i v) / (u^2 + v^2)
    one_r = 1.0 + re_inv
    u = one_r * one_r - loss * loss
    v = -2.0 * one_r * loss
    d = u * u + v * v
    d = xp.where(d > 0, d, xp.full_like(d, math.inf))
    inv_kp = (dispersion_eV * ang)[None, :] / kappa[:, None]
    m_re = inv_kp - surf_scale * (1.0 - 4.0 * u / d)
    m_im = -surf_scale * (4.0 * v / d)
    # M from noisy spectra turns fast near the surface plasmon, and noise can add spurious loops
    # around 0; M only shapes the step (the residual is exact), so a light smoothing is safe
    h = int(round(NEWTON_SMOOTHING_EV / dispersion_eV))
    if h > 0:
        from .thickness import _moving_average  # (the same running mean as the tail fit's)

        m_re = _moving_average(xp, m_re, h)
        m_im = _moving_average(xp, m_im, h)
    mod = xp.sqrt(m_re * m_re + m_im * m_im)
    mod = xp.where(mod > 0, mod, xp.full_like(mod, math.inf))
    # continuous phase: cumulative sum of the (wrapped) phase steps between channels
    p_re = xp.concat([m_re[:, :1], m_re[:, :-1]], axis=-1)  # M of the previous channel
    p_im = xp.concat([m_im[:, :1], m_im[:, :-1]], axis=-1)
    step = xp.atan2(m_im * p_re - m_re * p_im, m_re * p_re + m_im * p_im)
    theta = xp.cumulative_sum(step, axis=-1) + xp.atan2(m_im[:, :1], m_re[:, :1])
    winding = theta[:, -1]
    # only index-0 rows are solved (theta decays to 0 at the window end); the others get 0
    index0 = (xp.abs(winding) < math.pi / 2)[:, None]
    k = xp.arange(theta.shape[-1])[None, :]
    theta = xp.where(index0 & (k > 0), theta, xp.zeros_like(theta))
    gamma = _hilbert_odd(xp, theta, dispersion_eV)
    q = f_res * xp.exp(gamma) / mod
    psi_re = _hilbert_odd(xp, q, dispersion_eV)
    # Im dw = e^-gamma (q cos theta - Re Psi sin theta);  db = -Im dw / Kp
    im_dw = f_res * xp.cos(theta) / mod - xp.exp(-gamma) * psi_re * xp.sin(theta)
    db = xp.where(index0, -im_dw * inv_kp, xp.zeros_like(im_dw))
    return db, winding


def _surface_loop(
    xp,
    s0,
    n0,
    e,
    ang,
    grid,
    kc,
    kf,
    eps1,
    eps2,
    loss,
    re_inv,
    t,
    re0,
    ok,
    common,
    *,
    beam_energy_keV,
    collection_angle_mrad,
    iterations,
    min_thickness_nm,
    thickness_tolerance,
    eps_tolerance,
):
    """Surface-loss correction (eqs. 35-36) by safeguarded Riemann-Hilbert Newton steps.

    Solves b + I_S(eps(b)) = SSD for the bulk SSD b (see :func:`_newton_step` and kk_kernel),
    per pixel, starting from b = SSD (I_S = 0). One iteration: a Newton step (two Hilbert
    transforms), then one KK single pass of the trial b. The step is accepted only if the
    residual norm ||F|| (channels >= E_c) decreases; otherwise the pixel's step length is halved
    (down to 1/8, then the pixel fails) and doubled again after a success.
    """
    n_pix = s0.shape[0]
    de = grid.dispersion_eV
    n0_ok = xp.isfinite(n0) & (n0 > 0)
    thick = ok & n0_ok & (t >= min_thickness_nm)
    n0_safe = xp.where(n0_ok, n0, xp.zeros_like(n0))
    pref = physics.KK_PREFACTOR_NM_EV_PER_KEV * physics.kinetic_energy_T_keV(beam_energy_keV)
    band = (xp.arange(grid.n) >= kc)[None, :]
    zero = xp.zeros_like(s0)
    # S: eq. 36's prefactor in counts per channel, P_S at eps = i (where 4/2 - 1 = 1)
    ones = xp.ones_like(e)
    p_unit = physics.surface_loss_per_eV(
        0.0 * ones, ones, e, beam_energy_keV, collection_angle_mrad
    )
    surf_scale = (n0_safe * de)[:, None] * p_unit[None, :]

    def analyse(b):
        new_loss, new_re, new_t, new_re0, new_ok, _, _ = _single_pass(
            xp, b, n0, e, ang, grid, kc, kf, **common
        )
        n1, n2 = _eps(new_re, new_loss)
        p_s = physics.surface_loss_per_eV(n1, n2, e, beam_energy_keV, collection_angle_mrad)
        i_s = n0_safe[:, None] * de * p_s
        f_res = xp.where(band, b + i_s - s0, zero)
        r = xp.sqrt(xp.sum(f_res * f_res, axis=-1))
        finite = (
            new_ok
            & xp.isfinite(new_t)
            & (new_t > 0)
            & xp.all(xp.isfinite(n1) | ~band, axis=-1)
            & xp.isfinite(r)
        )
        return (n1, n2, new_loss, new_re, new_t, new_re0), i_s, f_res, r, finite

    base = (eps1, eps2, loss, re_inv, t, re0)
    cur = base
    b = s0
    p_s = physics.surface_loss_per_eV(eps1, eps2, e, beam_energy_keV, collection_angle_mrad)
    i_s = n0_safe[:, None] * de * p_s
    f_res = xp.where(band, i_s, zero)  # b = SSD
    r = xp.sqrt(xp.sum(f_res * f_res, axis=-1))
    active = thick & xp.isfinite(r)
    failed = thick & ~active
    done = xp.zeros((n_pix,), dtype=xp.bool)
    lam = xp.ones((n_pix,), dtype=s0.dtype)
    n_iter = xp.zeros((n_pix,), dtype=xp.int32)
    for _ in range(iterations):
        if not bool(xp.any(active)):
            break
        t_cur = cur[4]
        t_safe = xp.where(active, t_cur, xp.ones_like(t_cur))
        kappa = pref / (xp.where(active, n0_safe, xp.ones_like(n0_safe)) * t_safe)
        db, winding = _newton_step(xp, f_res, cur[2], cur[3], kappa, e, ang, surf_scale, de)
        # M winds around 0 (index != 0): the linearised problem has no unique decaying solution
        wound = active & ~(xp.abs(winding) < math.pi / 2)
        failed = failed | wound
        active = active & ~wound
        m = active[:, None]
        trial = b + xp.where(m & band, lam[:, None] * db, zero)
        new, new_is, new_f, new_r, finite = analyse(trial)
        n_iter = n_iter + xp.astype(active, xp.int32)
        better = active & finite & (new_r < r)
        reject = active & ~better
        lam = xp.where(better, xp.clip(2.0 * lam, 0.0, 1.0), xp.where(reject, 0.5 * lam, lam))
        gave_up = reject & (lam < 0.1)
        failed = failed | gave_up
        n1, n2 = new[0], new[1]
        c1, c2 = cur[0], cur[1]
        d_t = xp.abs(new[4] - cur[4])
        d_eps = xp.max(xp.where(band, xp.sqrt((n1 - c1) ** 2 + (n2 - c2) ** 2), zero), axis=-1)
        size = xp.max(xp.where(band, xp.sqrt(n1 * n1 + n2 * n2), zero), axis=-1)
        mb = better[:, None]
        cur = tuple(
            xp.where(mb if x.ndim == 2 else better, x, c) for x, c in zip(new, cur, strict=True)
        )
        b = xp.where(mb, trial, b)
        i_s = xp.where(mb, new_is, i_s)
        f_res = xp.where(mb, new_f, f_res)
        r = xp.where(better, new_r, r)
        conv = better & (d_t <= thickness_tolerance * new[4]) & (d_eps <= eps_tolerance * size)
        done = done | conv
        active = active & ~conv & ~gave_up
    keep = done & ~failed
    mk = keep[:, None]
    out = tuple(xp.where(mk if x.ndim == 2 else keep, x, c) for x, c in zip(cur, base, strict=True))
    surface = xp.where(mk, i_s, zero)
    status = xp.where(
        keep,
        xp.ones((n_pix,), dtype=xp.int32),
        xp.where(thick, xp.full((n_pix,), 3, dtype=xp.int32), xp.full((n_pix,), 2, dtype=xp.int32)),
    )
    status = xp.where(ok, status, xp.zeros_like(status))
    return (*out[:2], out[2], out[3], out[4], out[5], surface, n_iter, status, keep)


# ------------------------------------------------------------------------------ public API
def _as_map(value, si: xr.DataArray, name: str):
    """A per-pixel map (DataArray or array of the navigation shape, or a number) as an array."""
    nav_shape = tuple(si.shape[:-1])
    if isinstance(value, xr.DataArray):
        arr = value.data
    else:
        arr = np.asarray(value, dtype=np.float64)
    if np.ndim(arr) == 0:
        return np.full(nav_shape, float(arr))
    if tuple(arr.shape) != nav_shape:
        raise InputError(f"{name} has shape {tuple(arr.shape)}; the SSD's pixels are {nav_shape}")
    return arr


def kramers_kronig(
    ssd: xr.Dataset | xr.DataArray,
    zlp_intensity: Any = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    refractive_index: float | None = None,
    metal: bool = False,
    thickness_nm: Any = None,
    iterations: int = 0,
    device: str = "auto",
    *,
    low_energy_cutoff_eV: float | None = None,
    zlp_fwhm_eV: float | None = None,
    min_thickness_nm: float = 20.0,
    thickness_tolerance: float = 1e-3,
    eps_tolerance: float = 1e-2,
    cerenkov_max_eV: float = 5.0,
    atom_density_per_nm3: float | None = None,
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """Kramers-Kronig analysis of every pixel: eps(E), thickness and optical quantities.

    kk-theory.md eqs. 26-36 (Egerton 2011 section 4.2), on array-API kernels
    (:func:`kk_kernel`) mapped over pixel blocks by :func:`eelsgpu.engine.apply_kernel`.
    Give exactly one normalisation: ``refractive_index`` n (insulator or semiconductor, eq. 28),
    ``metal=True`` (Re[1/eps(0)] = 0), or ``thickness_nm`` (a number or a map, nm; 0 or NaN
    pixels, vacuum, are flagged and get NaN).

    Parameters
    ----------
    ssd : xarray.Dataset or DataArray
        What :func:`eelsgpu.deconvolve` returns (variables ``ssd``, ``zlp_intensity``, ``valid``)
        or an SSD DataArray (counts per channel, dims ``(..., "energy")``, energy loss in eV with
        0 eV = zero loss). Use the raw SSD or one reconvolved with a ZLP narrower than the
        features of interest.
    zlp_intensity : map or number, optional
        N0 in counts (default: the Dataset's ``zlp_intensity``); needed for the thickness, for a
        thickness normalisation and for the surface correction.
    beam_energy_keV, collection_angle_mrad : float, optional
        E0 (keV) and beta (mrad); default: the data's attributes.
    refractive_index, metal, thickness_nm
        The normalisation (see above). n < 1 is an error.
    iterations : int
        Maximum surface-correction iterations (eqs. 35-36; 0: none). One iteration is one
        Newton step plus one KK pass, about three single passes of FFT work (:func:`kk_kernel`);
        films of 20-100 nm converge in 3-6, so 10-20 is a sensible limit.
    device : {"auto", "cpu", "gpu"}
    low_energy_cutoff_eV : float, optional
        E_c (eV) below which Im[-1/eps] is extrapolated linearly to 0 (module docstring);
        default 3 ZLP FWHM (``zlp_fwhm_eV``, or the data's ``zlp_fwhm_eV`` attribute), else
        1.5 eV.
    min_thickness_nm, thickness_tolerance, eps_tolerance
        Surface correction: thinner pixels are not corrected; convergence criteria on t and
        eps (relative, see :func:`kk_kernel`).
    cerenkov_max_eV : float
        Low-energy range (eV) searched for the Cerenkov condition eps1 > (c/v)^2.
    atom_density_per_nm3 : float, optional
        Gives ``n_eff`` per atom (else electrons per nm^3).
    variables : sequence of str, optional
        Which outputs to compute (default: all of :data:`CUBE_OUTPUTS` and
        :data:`MAP_OUTPUTS`); e.g. ``("eps1", "eps2", "loss_function", "thickness_nm")``.

    Returns
    -------
    xarray.Dataset
        Lazy. Cubes on ``energy`` = k dE (k >= 1, eV, the positive-loss part of the input
        axis): ``eps1``, ``eps2``, ``loss_function``, ``surface_intensity`` (counts),
        ``refractive_index``, ``extinction_coefficient``, ``absorption_coefficient`` (1/nm),
        ``n_eff``; maps: ``thickness_nm``, ``re_inverse_eps0``, ``static_refractive_index``,
        ``plasmon_energy_eV``, ``loss_peak_eV``, ``iterations``, ``converged``,
        ``surface_status``, ``cerenkov``, ``tail_decayed``, ``valid``. Units in ``attrs``.

    Examples
    --------
    >>> import numpy as np, eelsgpu
    >>> sim = eelsgpu.synthetic.low_loss_image(eelsgpu.synthetic.Drude(15.0, 1.0), shape=(2, 2),
    ...     t_over_lambda=0.5, dtype=np.float64, n_channels=1024, dispersion_eV=0.1)
    >>> ds = kramers_kronig(sim["true_ssd"], zlp_intensity=sim["true_zlp_intensity"],
    ...     beam_energy_keV=200.0, collection_angle_mrad=10.0, metal=True, device="cpu")
    >>> bool(abs(float(ds["thickness_nm"][0, 0]) / float(sim["true_t_nm"][0, 0]) - 1) < 0.01)
    True
    """
    from . import engine
    from .model import energy_axis, require_param

    if isinstance(ssd, xr.Dataset):
        if "ssd" not in ssd:
            raise InputError(
                "the Dataset has no 'ssd' variable: give eelsgpu.deconvolve's result, an SSD "
                "store, or the SSD as a DataArray"
            )
        si = ssd["ssd"]
        attrs = {**ssd.attrs, **si.attrs}
        if zlp_intensity is None and "zlp_intensity" in ssd:
            zlp_intensity = ssd["zlp_intensity"]
        valid_in = ssd["valid"] if "valid" in ssd else None
        if zlp_fwhm_eV is None:
            zlp_fwhm_eV = attrs.get("zlp_fwhm_eV")
    elif isinstance(ssd, xr.DataArray):
        si, attrs, valid_in = ssd, dict(ssd.attrs), None
        if zlp_fwhm_eV is None:
            zlp_fwhm_eV = attrs.get("zlp_fwhm_eV")
    else:
        raise InputError("kramers_kronig takes an xarray Dataset (eelsgpu.deconvolve) or DataArray")
    si = si.copy()
    si.attrs = {k: v for k, v in attrs.items() if k not in ("long_name", "units", "output")}
    source = attrs.get("source")
    where = f" ({source})" if source else ""
    if "energy" not in si.dims or si.dims[-1] != "energy":
        raise InputError(f"the SSD{where} must have 'energy' as its last dim, not {si.dims}")
    e0 = require_param(si, "beam_energy_keV", beam_energy_keV)
    beta = require_param(si, "collection_angle_mrad", collection_angle_mrad)
    energy = np.asarray(si["energy"].values, dtype=np.float64)
    energy_axis(energy, require_uniform=True, source=source)

    n_norm = sum([refractive_index is not None, bool(metal), thickness_nm is not None])
    if n_norm != 1:
        raise ValueError(
            "give exactly one normalisation: refractive_index=n, metal=True or thickness_nm=t"
        )
    if refractive_index is not None:
        _normalisation(None, refractive_index, False)  # n < 1 -> InputError now, not per block
    if low_energy_cutoff_eV is None:
        if zlp_fwhm_eV is not None and float(zlp_fwhm_eV) > 0:
            low_energy_cutoff_eV = 3.0 * float(zlp_fwhm_eV)
        else:
            low_energy_cutoff_eV = DEFAULT_LOW_ENERGY_CUTOFF_EV
    grid = loss_grid(energy, source=source)
    _cutoff_index(grid, float(low_energy_cutoff_eV))
    if iterations < 0:
        raise ValueError("iterations must be >= 0")

    extras: dict[str, Any] = {}
    if zlp_intensity is not None:
        extras["zlp_intensity"] = _as_map(zlp_intensity, si, "zlp_intensity")
    elif thickness_nm is not None or iterations > 0:
        raise MissingParameterError(
            f"zlp_intensity (N0) is needed{where} to normalise by a thickness or for the surface "
            "correction: pass zlp_intensity=... or the Dataset eelsgpu.deconvolve returns"
        )
    if thickness_nm is not None:
        extras["thickness_nm"] = _as_map(thickness_nm, si, "thickness_nm")
    if valid_in is not None:
        extras["valid"] = _as_map(valid_in.astype(np.float64), si, "valid")

    names = tuple(variables) if variables is not None else DEFAULT_VARIABLES
    unknown = set(names) - set(DEFAULT_VARIABLES)
    if unknown:
        raise ValueError(f"unknown KK variables {sorted(unknown)}; known: {DEFAULT_VARIABLES}")
    e_out = grid.energy_eV[1:]
    outputs = []
    for name in names:
        if name in CUBE_OUTPUTS:
            units, long_name = CUBE_OUTPUTS[name]
            if name == "n_eff" and atom_density_per_nm3 is not None:
                units = "electrons/atom"
            outputs.append(
                engine.Output(name, units=units, long_name=long_name, axis="energy", coord=e_out)
            )
        else:
            units, long_name, dtype = MAP_OUTPUTS[name]
            outputs.append(engine.Output(name, units=units, long_name=long_name, dtype=dtype))
    if metal:
        normalisation = "metal: Re[1/eps(0)] = 0"
    elif refractive_index is not None:
        normalisation = f"refractive index n = {float(refractive_index):g}"
    else:
        normalisation = "known thickness"
    run_attrs = {
        "kk_normalisation": normalisation,
        "kk_low_energy_cutoff_eV": float(low_energy_cutoff_eV),
        "kk_iterations_max": int(iterations),
        "kk_min_thickness_nm": float(min_thickness_nm),
        "kk_tail": "Im[-1/eps] ~ A/E^3 beyond the window, A fitted to its last 10 %",
        "kk_method": "eelsgpu.kramers_kronig (kk-theory.md eqs. 26-36)",
        "kk_ssd_kind": str(attrs.get("output", "unknown")),
        "beam_energy_keV": e0,
        "collection_angle_mrad": beta,
    }
    ds = engine.apply_kernel(
        engine.BlockKernel(kk_kernel, outputs),
        si,
        device=device,
        extras=extras,
        attrs=run_attrs,
        beam_energy_keV=e0,
        collection_angle_mrad=beta,
        refractive_index=None if refractive_index is None else float(refractive_index),
        metal=bool(metal),
        iterations=int(iterations),
        low_energy_cutoff_eV=float(low_energy_cutoff_eV),
        min_thickness_nm=float(min_thickness_nm),
        thickness_tolerance=float(thickness_tolerance),
        eps_tolerance=float(eps_tolerance),
        cerenkov_max_eV=float(cerenkov_max_eV),
        atom_density_per_nm3=None if atom_density_per_nm3 is None else float(atom_density_per_nm3),
        variables=names,
    )
    if "energy" in ds.coords:
        ds["energy"].attrs.update({"units": "eV", "long_name": "energy loss"})
    return ds


def warn_flagged(ds: xr.Dataset) -> None:
    """Warn (KKWarning) about pixels whose loss function had not decayed at the window's end, or
    that meet the Cerenkov condition (computes those two maps)."""
    for name, text in (
        ("tail_decayed", "the loss function has not decayed at the end of the window"),
        ("cerenkov", "the Cerenkov condition holds (low-energy eps not to be trusted)"),
    ):
        if name not in ds or "valid" not in ds:
            continue
        flag = np.asarray(ds[name].values)
        valid = np.asarray(ds["valid"].values)
        count = int(np.sum(valid & (~flag if name == "tail_decayed" else flag)))
        if count:
            warnings.warn(f"{count} of {valid.size} pixels: {text}", KKWarning, stacklevel=2)


from ._callable import make_module_callable  # noqa: E402

# eelsgpu.kramers_kronig is both this module and the function: the module forwards calls
make_module_callable(__name__)
