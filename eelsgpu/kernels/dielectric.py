"""The dielectric function from the single-scattering distribution (kk-theory.md eqs. 31-34).

Egerton 2011, section 4.2 (his program KRAKRO):

* eq. 31, the loss function from the SSD: Im[-1/eps(E)] = pi a0 m0 v^2 / (N0 t) I_SSD(E) /
  ln(1 + (beta/theta_E)^2) (:func:`loss_function_from_ssd`), and its inverse, the SSD from a loss
  function (:func:`ssd_from_loss_function`; per eV and nm of thickness,
  :func:`bulk_loss_per_eV_nm`), with the prefactor pi a0 m0 v^2 = 2 pi a0 T
  (:func:`loss_prefactor_nm_eV`);
* eq. 32, Re[1/eps(E)] from Im[-1/eps(E)] as a discrete Hilbert transform done with FFTs
  (:func:`re_inverse_eps`: Maclaurin's odd-offset formula on the odd extension, as a *linear*
  convolution -- the FFT length is at least twice the loss window, so nothing wraps around --
  plus the closed-form contribution of the A/E^3 tail beyond the window,
  :func:`tail_re_inverse`);
* eq. 33, the sum rule Re[1/eps(0)] = 1 - (2/pi) int Im[-1/eps]/E dE, which normalises the loss
  function from n, as a metal, or from a known thickness (in :func:`kk_single_pass`);
* eq. 34, eps from Re[1/eps] and Im[-1/eps] (:func:`eps_from_inverse`).

:func:`kk_single_pass` is one Kramers-Kronig analysis of a block of SSDs on the loss grid
(:mod:`eelsgpu.kernels.loss_grid`): eqs. 31 and 33 (or a known thickness), 32, and the
thickness of eq. 26 it implies; the surface correction (eqs. 35-36) iterates it
(:mod:`eelsgpu.kernels.surface`).

Units: energies in eV, SSD in counts per channel, N0 in counts, thickness in nm, E0 in keV,
angles in mrad; the loss function and eps are dimensionless.

Examples
--------
>>> import numpy as np
>>> e = np.arange(4096) * 0.05
>>> eps = 1 - 15.0**2 / (e**2 + 1j * e * 1.0 + 1e-300)
>>> loss = np.where(e > 0, np.imag(-1 / eps), 0.0)[None, :]
>>> e1, e2 = eps_from_inverse(re_inverse_eps(loss, 0.05), loss)
>>> bool(abs(e1[0, 300] - eps[300].real) < 1e-2 and abs(e2[0, 300] - eps[300].imag) < 1e-2)
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import physics
from .._xp import array_namespace, fast_length, fft_module
from ._device_cache import cached
from .loss_grid import LossGrid
from .sum_rule import angular_factor, sum_rule_integral_rows, thickness_from_integral_nm

__all__ = [
    "KKPass",
    "KKSetup",
    "bulk_loss_per_eV_nm",
    "eps_from_inverse",
    "hilbert_odd",
    "kk_single_pass",
    "loss_function_from_ssd",
    "loss_prefactor_nm_eV",
    "re_inverse_eps",
    "ssd_from_loss_function",
    "tail_re_inverse",
]


# ------------------------------------------------------------------------------- eq. 31
def loss_prefactor_nm_eV(beam_energy_keV: float) -> float:
    """pi a0 m0 v^2 of eq. 31 in nm eV: 2 pi a0 T = 332.5 nm eV/keV x T (T = m0 v^2 / 2 in keV,
    Egerton 2011 eq. 4.26; :data:`eelsgpu.physics.KK_PREFACTOR_NM_EV_PER_KEV`).

    Examples
    --------
    >>> round(loss_prefactor_nm_eV(200.0), 1)  # 332.5 nm eV/keV x T = 123.5 keV
    41070.8
    """
    return physics.KK_PREFACTOR_NM_EV_PER_KEV * physics.kinetic_energy_T_keV(beam_energy_keV)


def bulk_loss_per_eV_nm(
    loss_function, energy_loss_eV, beam_energy_keV: float, collection_angle_mrad: float
):
    """Single-scattering probability per eV and per nm of thickness (the inverse of kk-theory.md
    eq. 31).

    dP/dE = Im[-1/eps(E)] ln(1 + (beta/theta_E)^2) / (pi a0 m0 v^2), with pi a0 m0 v^2 = 332.5 T
    (T in keV, Egerton 2011 eq. 4.26). Multiply by N0 t (t in nm) and the channel width (eV) for
    counts per channel. Zero at E <= 0 (energy gain is not a loss).

    Parameters
    ----------
    loss_function : array
        Im[-1/eps] at ``energy_loss_eV`` (dimensionless).
    energy_loss_eV : array
        Energy loss E in eV.
    beam_energy_keV, collection_angle_mrad : float
        E0 in keV and the collection semi-angle beta in mrad.

    Returns
    -------
    array
        Probability per eV per nm (1/(eV nm)), in the inputs' array namespace.
    """
    xp = array_namespace(energy_loss_eV)
    e = energy_loss_eV
    positive = e > 0
    angular = angular_factor(xp, e, beam_energy_keV, collection_angle_mrad)
    p = loss_function * angular / loss_prefactor_nm_eV(beam_energy_keV)
    return xp.where(positive, p, xp.zeros_like(p))


def loss_function_from_ssd(ssd: Any, weight: Any, kappa: Any) -> Any:
    """Eq. 31: Im[-1/eps(E)] = kappa SSD(E) / (dE ln(1 + (beta/theta_E)^2)), per channel.

    Parameters
    ----------
    ssd : array (n, K)
        SSD in counts per channel on the loss grid.
    weight : array (K,)
        1 / (dE ln(1 + (beta/theta_E)^2)) per channel (1/eV; ``weight`` of
        :func:`~eelsgpu.kernels.sum_rule.sum_rule_integral_rows`), which turns counts per channel
        into counts per eV over the angular factor.
    kappa : array (n,)
        pi a0 m0 v^2 / (N0 t) (:func:`loss_prefactor_nm_eV` over N0 t; eV per count), or the sum
        rule's normalisation (eq. 33) where t is not known.

    Returns
    -------
    array (n, K)
        Im[-1/eps], dimensionless.

    Examples
    --------
    >>> import numpy as np
    >>> s, w, k = np.array([[2.0, 4.0]]), np.array([0.5, 0.25]), np.array([3.0])
    >>> loss_function_from_ssd(s, w, k).tolist()
    [[3.0, 3.0]]
    >>> ssd_from_loss_function(loss_function_from_ssd(s, w, k), w, k).tolist()
    [[2.0, 4.0]]
    """
    loss = ssd * weight
    loss *= kappa[:, None]
    return loss


def ssd_from_loss_function(loss_function: Any, weight: Any, kappa: Any) -> Any:
    """The inverse of eq. 31: the SSD (counts per channel, (n, K)) of a loss function
    Im[-1/eps] (n, K), SSD = Im[-1/eps] / (kappa weight); ``weight`` and ``kappa`` as in
    :func:`loss_function_from_ssd`. (Per eV and nm of thickness and per incident electron:
    :func:`bulk_loss_per_eV_nm`.)"""
    return loss_function / kappa[:, None] / weight


# ------------------------------------------------------------------------------- eq. 32
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


def tail_re_inverse(xp: Any, a_loss: Any, e: Any, e_m: float) -> Any:
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


def _hilbert(xp: Any, v: Any, sign: float, offset: float = 0.0) -> Any:
    """``offset + sign`` x H[v]: the odd-extension Hilbert sum of eq. 32 of rows ``v`` (n, K) (0
    at E = 0), as a linear convolution by FFTs; the sign is folded into the device-cached kernel
    spectra and the constant ``offset`` into the zero-frequency bin (offset x m there adds
    offset to every sample of the inverse transform: one column instead of a pass over the
    rows). A view (n, K) into the inverse FFT's rows."""
    n_k = v.shape[-1]
    m = fast_length(2 * n_k - 1)  # the Hilbert transform's FFT length: linear, no wrap
    cdtype = xp.complex64 if v.dtype == xp.float32 else xp.complex128

    def make():
        ah, bh = _hilbert_spectra(n_k, m)
        return xp.asarray(sign * ah, dtype=cdtype), xp.asarray(sign * bh, dtype=cdtype)

    # on the device once per grid, dtype and sign, not copied every block
    ah, bh = cached(xp, ("hilbert", n_k, m, str(cdtype), float(sign)), make)
    fft = fft_module(xp)
    lh = fft.rfft(v, n=m, axis=-1)
    # lh ah + conj(lh) bh with in-place updates (no large temporaries: they cost page faults)
    p = xp.conj(lh)
    p *= bh
    lh *= ah
    lh += p
    del p
    if offset:
        lh[:, 0] += offset * m
    return fft.irfft(lh, n=m, axis=-1)[:, :n_k]


def _tail_shape(xp: Any, n_k: int, dispersion_eV: float, dtype: Any) -> Any:
    """-(2/pi) shape(E)/E_m^3 of :func:`tail_re_inverse` on the grid k dE (K,), made on the host
    in float64 and kept on the device: the A/E^3 tail's term of eq. 32 per unit A, negated."""

    def make():
        e = np.arange(n_k, dtype=np.float64) * dispersion_eV
        shape = tail_re_inverse(np, np.ones(1), e, (n_k - 0.5) * dispersion_eV)[0]
        return xp.asarray(-shape, dtype=dtype)

    return cached(xp, ("kk-tail", n_k, float(dispersion_eV), str(dtype)), make)


def _re_inverse(xp, loss0, dispersion_eV: float, tail_coefficient):
    """:func:`re_inverse_eps` for a loss function already 0 at E = 0."""
    h = _hilbert(xp, loss0, -1.0, 1.0)  # 1 - H[loss]
    if tail_coefficient is None:
        return h
    # 1 - H - A (2/pi) shape/E_m^3, with one temporary
    re = tail_coefficient[:, None] * _tail_shape(xp, loss0.shape[-1], dispersion_eV, loss0.dtype)
    re += h
    return re


def hilbert_odd(xp: Any, v: Any, dispersion_eV: float) -> Any:
    """Hd[v]: the discrete Hilbert transform of eq. 32 (Re f = Hd[Im f] for f analytic in the
    upper half plane, Hermitian), of rows ``v`` (n, K) that are 0 at E = 0 (odd extension)."""
    return _hilbert(xp, v, 1.0)


# ------------------------------------------------------------------------------- eq. 34
def eps_from_inverse(re_inv: Any, loss: Any) -> tuple[Any, Any]:
    """eps1, eps2 from Re[1/eps] and Im[-1/eps] (eq. 34): eps = (Re[1/eps] + i Im[-1/eps]) /
    (Re[1/eps]^2 + Im[-1/eps]^2). Arrays of any shape; dimensionless."""
    d = re_inv * re_inv
    d += loss * loss
    d = 1.0 / d
    return re_inv * d, loss * d


# ------------------------------------------------------------------------------ one pass
@dataclass(frozen=True)
class KKSetup:
    """What a Kramers-Kronig pass needs beside the SSD rows, the same for every pass of a block.

    ``n0`` (n,) N0 in counts (NaN where unknown); ``e`` (K,) the loss grid in eV and ``ang`` (K,)
    its angular factor (:func:`~eelsgpu.kernels.sum_rule.ssd_on_loss_grid`); ``grid``, ``kc`` and
    ``kf`` the grid and its low-energy channels (ints shared by the block, or integer arrays (n,)
    of each pixel's); ``beam_energy_keV`` E0; ``one_minus`` 1 - Re[1/eps(0)] (eq. 28) when no
    thickness is known; ``thickness_nm`` (n,) the known thickness (nm) or None; ``nonnegative``
    the sign constraint Im[-1/eps] >= 0 of :func:`kk_single_pass`.

    Made once per block and kept for every pass (the surface correction makes 1 + iterations):
    ``weights`` the sum rule's per-channel vectors
    (:func:`~eelsgpu.kernels.sum_rule.sum_rule_weights`), ``cut`` the per-pixel cut-off's gather
    indices (:func:`~eelsgpu.kernels.sum_rule.cutoff_channels`), ``low`` (K,) or (n, K) bool
    the channels below E_c, ``n0_ok`` (n,) N0 finite and positive and ``n0_safe`` (n,) N0 there,
    1 elsewhere. Left None, each pass makes them.
    """

    xp: Any
    n0: Any
    e: Any
    ang: Any
    grid: LossGrid
    kc: int
    kf: int
    beam_energy_keV: float
    one_minus: float = 1.0
    thickness_nm: Any = None
    nonnegative: bool = False
    weights: Any = None
    cut: Any = None
    low: Any = None
    n0_ok: Any = None
    n0_safe: Any = None


class KKPass(NamedTuple):
    """One Kramers-Kronig pass (:func:`kk_single_pass`): ``loss`` Im[-1/eps] and ``re_inverse``
    Re[1/eps] (n, K); ``thickness_nm`` (n,) (eq. 26, NaN where N0 is unknown); ``re_inverse_eps0``
    (n,) Re[1/eps(0)]; ``ok`` (n,) usable; ``tail_coefficient`` (n,) A of the SSD's A/E^3 tail
    and ``integral`` (n,) the sum-rule integral J (:class:`~eelsgpu.kernels.sum_rule.SumRuleParts`).
    """

    loss: Any
    re_inverse: Any
    thickness_nm: Any
    re_inverse_eps0: Any
    ok: Any
    tail_coefficient: Any
    integral: Any


def kk_single_pass(setup: KKSetup, s: Any) -> KKPass:
    """One Kramers-Kronig analysis of SSD rows ``s`` (n, K; counts per channel on the loss grid).

    The loss function by eq. 31 up to a factor kappa per pixel; kappa from the sum rule
    (eq. 33: kappa = pi (1 - Re[1/eps(0)]) / (2 J), and the thickness by eq. 26,
    :func:`~eelsgpu.kernels.sum_rule.thickness_from_integral_nm`) or from a known thickness (kappa = pi a0 m0 v^2 / (N0 t), and Re[1/eps(0)]
    from eq. 33); below E_c the loss function is kappa c E (0 at E = 0); Re[1/eps] by eq. 32
    with the A/E^3 tail. See :class:`KKPass` for what it returns.

    With ``setup.nonnegative`` the rows are first projected onto s >= 0 (the SSD, hence
    Im[-1/eps] = kappa s / (dE ln(1 + beta^2/theta_E^2)) and eps2 = Im[-1/eps] |eps|^2, cannot be
    negative: a loss is a loss); the normalisation (eq. 33), Re[1/eps] (eq. 32) and the
    thickness (eq. 26) are then those of the projected loss function, so eps1 and eps2 stay a
    Kramers-Kronig pair. Negative SSD channels are counting noise where the loss is near zero
    (below a gap, far beyond the plasmon), or an artefact of the deconvolution; how many there
    were is for the caller to measure and flag (:func:`eelsgpu.kernels.blocks_kk.kk_kernel`).
    """
    xp, n0, e, grid, kc = setup.xp, setup.n0, setup.e, setup.grid, setup.kc
    thickness_nm = setup.thickness_nm
    de = grid.dispersion_eV
    if setup.nonnegative:
        s = xp.clip(s, 0.0, None)
    # f = s / (dE ang) is proportional to Im[-1/eps]; the reductions are matrix-vector products
    # on s itself (one pass each, no temporaries)
    j, c, a_tail, inv = sum_rule_integral_rows(
        xp, s, e, setup.ang, grid, kc, setup.kf, weights=setup.weights, cut=setup.cut
    )
    pref = loss_prefactor_nm_eV(setup.beam_energy_keV)  # pi a0 m0 v^2, nm eV
    ok = xp.isfinite(j) & (j > 0)
    j_safe = xp.where(ok, j, 1.0)
    n0_ok, n0_safe = setup.n0_ok, setup.n0_safe
    if n0_ok is None:
        n0_ok = xp.isfinite(n0) & (n0 > 0)
        n0_safe = xp.where(n0_ok, n0, 1.0)
    if thickness_nm is None:
        # kappa = pi (1 - Re[1/eps(0)]) / (2 J): Im[-1/eps] = kappa f (eq. 33)
        kappa = (math.pi * setup.one_minus / 2.0) / j_safe
        t = thickness_from_integral_nm(j_safe, n0_safe, setup.one_minus, setup.beam_energy_keV)
        t = xp.where(n0_ok, t, math.nan)
        re0 = xp.full_like(j, 1.0 - setup.one_minus)
    else:
        t_ok = xp.isfinite(thickness_nm) & (thickness_nm > 0)
        ok = ok & t_ok & n0_ok
        t = xp.where(ok, thickness_nm, math.nan)
        kappa = pref / (n0_safe * xp.where(t_ok, thickness_nm, 1.0))
        re0 = 1.0 - (2.0 / math.pi) * kappa * j
    # Im[-1/eps] = kappa f above E_c, kappa c E below (0 at E = 0)
    loss = loss_function_from_ssd(s, inv, kappa)
    if isinstance(kc, int):
        # one cut-off for the block: only its first kc channels change (no pass over the rows)
        loss[:, :kc] = (kappa * c)[:, None] * e[:kc]
    else:
        low = setup.low
        if low is None:
            low = xp.arange(grid.n)[None, :] < kc[:, None]
        loss = xp.where(low, (kappa * c)[:, None] * e, loss)
    a_loss = kappa * a_tail
    re_inv = _re_inverse(xp, loss, de, a_loss)
    return KKPass(loss, re_inv, t, re0, ok, a_tail, j)
