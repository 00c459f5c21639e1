"""Surface losses (kk-theory.md eqs. 35-36) and the surface-corrected Kramers-Kronig solve.

A thin film's spectrum holds, beside the bulk losses, the losses at its two surfaces (eq. 35):
``I_EELS = I_ZLP + I_inel + I_S``, with I_S of eq. 36 (Egerton 2011 eq. 4.31,
:func:`surface_loss_per_eV`), which depends on eps, itself the Kramers-Kronig analysis of the bulk
part. :func:`solve_surface` finds the bulk SSD b with b + I_S(eps(b)) = SSD by safeguarded,
approximate Newton steps (:func:`newton_step`, a Riemann-Hilbert solve with two Hilbert
transforms), per pixel, each followed by one Kramers-Kronig pass
(:func:`eelsgpu.kernels.dielectric.kk_single_pass`). Why Newton and not the fixed point of the
textbook, and when it fails: see :func:`eelsgpu.kernels.blocks_kk.kk_kernel`.

Units: energies in eV, SSD and I_S in counts per channel, N0 in counts, thickness in nm, E0 in
keV, beta in mrad; eps dimensionless.

Examples
--------
>>> import numpy as np
>>> e = np.array([-1.0, 5.0, 10.0])
>>> p = surface_loss_per_eV(np.full(3, -1.0), np.full(3, 0.5), e, 200.0, 10.0)
>>> bool(p[0] == 0.0 and np.all(p[1:] > 0))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import physics
from .._xp import array_namespace, moving_average
from .dielectric import (
    KKSetup,
    eps_from_inverse,
    hilbert_odd,
    kk_single_pass,
    loss_prefactor_nm_eV,
)

__all__ = [
    "NEWTON_SMOOTHING_EV",
    "KKState",
    "SurfaceResult",
    "SurfaceSettings",
    "newton_step",
    "solve_surface",
    "surface_bracket",
    "surface_factor",
    "surface_loss_per_eV",
]


def surface_loss_per_eV(
    eps1, eps2, energy_loss_eV, beam_energy_keV: float, collection_angle_mrad: float
):
    """Surface-loss probability per eV of a film with two surfaces (kk-theory.md eq. 36).

    I_S(E)/N0 = 1/(pi a0 k0 T) [atan(beta/theta_E)/theta_E - beta/(beta^2 + theta_E^2)]
    [4 eps2/((eps1 + 1)^2 + eps2^2) - Im(-1/eps)],
    Egerton 2011 eq. 4.31 (angles in rad, a0 and 1/k0 in nm, T = m0 v^2/2 in eV). Independent of
    thickness; zero at E <= 0.

    Returns
    -------
    array
        Probability per eV (1/eV), in the inputs' array namespace.
    """
    xp = array_namespace(energy_loss_eV)
    e = energy_loss_eV
    positive = e > 0
    e_safe = xp.where(positive, e, xp.ones_like(e))
    theta = physics.characteristic_angle_mrad(e_safe, beam_energy_keV) * 1e-3  # rad
    beta = float(collection_angle_mrad) * 1e-3
    angular = xp.atan(beta / theta) / theta - beta / (beta**2 + theta**2)
    loss = eps2 / (eps1**2 + eps2**2)
    surface = 4.0 * eps2 / ((eps1 + 1.0) ** 2 + eps2**2) - loss
    t_ev = physics.kinetic_energy_T_keV(beam_energy_keV) * 1e3
    p = (
        angular
        * surface
        / (
            math.pi
            * physics.BOHR_RADIUS_NM
            * physics.electron_wavenumber_per_nm(beam_energy_keV)
            * t_ev
        )
    )
    return xp.where(positive, p, xp.zeros_like(p))


def surface_factor(
    xp: Any,
    grid: Any,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    dtype: Any,
    step: int = 1,
) -> Any:
    """Eq. 36's factor that does not depend on eps, on every ``step``-th channel of the loss grid
    ``grid`` (1/eV): :func:`surface_loss_per_eV` = this x :func:`surface_bracket`, 0 at E = 0.

    It depends on the grid and the microscope only, so it is made once on the host in float64
    and kept on the device (:func:`~._device_cache.cached`): the surface correction's every
    iteration and the surface check then pay no launches for eq. 27's theta_E and the arctan.
    """
    import numpy as np

    from ._device_cache import cached

    def make():
        e = np.arange(0, grid.n, step, dtype=np.float64) * grid.dispersion_eV
        # the bracket is 1 at eps = i (4 / 2 - 1)
        unit = surface_loss_per_eV(
            np.zeros_like(e), np.ones_like(e), e, beam_energy_keV, collection_angle_mrad
        )
        return xp.asarray(unit, dtype=dtype)

    key = ("surface-factor", grid, int(step), float(beam_energy_keV), float(collection_angle_mrad))
    return cached(xp, key + (str(dtype),), make)


def surface_bracket(re_inverse: Any, loss: Any) -> Any:
    """Eq. 36's dielectric bracket 4 eps2 / ((eps1 + 1)^2 + eps2^2) - Im[-1/eps], from
    Re[1/eps] = R and Im[-1/eps] = L (eq. 34: eps2 / |eps + 1|^2 = L / ((1 + R)^2 + L^2)), so
    that eps itself is not needed (dimensionless)."""
    d = re_inverse + 1.0
    d *= d
    d += loss * loss
    out = (4.0 * loss) / d
    out -= loss
    return out


#: Half-width (eV) of the moving average applied to M in the Newton step (noise, see there).
NEWTON_SMOOTHING_EV: float = 0.1


def newton_step(
    xp: Any,
    f_res: Any,
    loss: Any,
    re_inv: Any,
    kappa: Any,
    e: Any,
    ang: Any,
    surf_scale: Any,
    dispersion_eV: float,
) -> tuple[Any, Any]:
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
        m_re = moving_average(xp, m_re, h)  # (the same running mean as the SSD tail fit's)
        m_im = moving_average(xp, m_im, h)
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
    e_gamma = xp.exp(hilbert_odd(xp, theta, dispersion_eV))  # (its FFT rows freed at once)
    q = f_res * e_gamma / mod
    psi_re = hilbert_odd(xp, q, dispersion_eV)
    # Im dw = e^-gamma (q cos theta - Re Psi sin theta);  db = -Im dw / Kp
    im_dw = f_res * xp.cos(theta) / mod - psi_re * xp.sin(theta) / e_gamma
    db = xp.where(index0, -im_dw * inv_kp, xp.zeros_like(im_dw))
    return db, winding


class KKState(NamedTuple):
    """The Kramers-Kronig result of a block that the surface correction updates: ``eps1``,
    ``eps2``, ``loss`` Im[-1/eps] and ``re_inverse`` Re[1/eps] (n, K), ``thickness_nm`` (n,) in
    nm and ``re_inverse_eps0`` (n,) Re[1/eps(0)]."""

    eps1: Any
    eps2: Any
    loss: Any
    re_inverse: Any
    thickness_nm: Any
    re_inverse_eps0: Any


@dataclass(frozen=True)
class SurfaceSettings:
    """How :func:`solve_surface` iterates: ``collection_angle_mrad`` beta (mrad, for eq. 36);
    ``iterations`` the most Newton steps; ``min_thickness_nm`` thinner pixels are not corrected;
    ``thickness_tolerance`` and ``eps_tolerance`` the relative convergence criteria on t and eps
    (see :func:`eelsgpu.kernels.blocks_kk.kk_kernel`)."""

    collection_angle_mrad: float
    iterations: int
    min_thickness_nm: float = 20.0
    thickness_tolerance: float = 1e-3
    eps_tolerance: float = 1e-2


class SurfaceResult(NamedTuple):
    """What :func:`solve_surface` returns: ``state`` the corrected :class:`KKState` (the
    uncorrected one exactly where the correction failed or was not asked); ``surface`` (n, K)
    I_S in counts per channel (0 where not corrected); ``iterations`` (n,) int32 steps done;
    ``status`` (n,) int32, 0 not analysed, 1 converged, 2 too thin, 3 did not converge;
    ``converged`` (n,) bool."""

    state: KKState
    surface: Any
    iterations: Any
    status: Any
    converged: Any


def solve_surface(
    setup: KKSetup, s0: Any, start: KKState, ok: Any, settings: SurfaceSettings
) -> SurfaceResult:
    """Surface-loss correction (eqs. 35-36) by safeguarded Riemann-Hilbert Newton steps.

    Solves b + I_S(eps(b)) = SSD for the bulk SSD b (see :func:`newton_step` and
    :func:`eelsgpu.kernels.blocks_kk.kk_kernel`),
    per pixel, starting from b = SSD (I_S = 0). One iteration: a Newton step (two Hilbert
    transforms), then one KK single pass of the trial b. The step is accepted only if the
    residual norm ||F|| (channels >= E_c) decreases; otherwise the pixel's step length is halved
    (down to 1/8, then the pixel fails) and doubled again after a success.

    Parameters
    ----------
    setup : KKSetup
        The block's loss grid, N0 (counts), E0 and normalisation (as for the uncorrected pass).
    s0 : array (n, K)
        The measured SSD on the loss grid (counts per channel).
    start : KKState
        The uncorrected result (:func:`~eelsgpu.kernels.dielectric.kk_single_pass` of ``s0``).
    ok : array (n,) bool
        Pixels analysed.
    settings : SurfaceSettings

    Returns
    -------
    SurfaceResult
    """
    xp, n0, e, grid = setup.xp, setup.n0, setup.e, setup.grid
    kc = setup.kc
    beam_energy_keV = setup.beam_energy_keV
    collection_angle_mrad = settings.collection_angle_mrad
    iterations = settings.iterations
    min_thickness_nm = settings.min_thickness_nm
    thickness_tolerance = settings.thickness_tolerance
    eps_tolerance = settings.eps_tolerance
    eps1, eps2, loss, re_inv, t, re0 = start
    n_pix = s0.shape[0]
    de = grid.dispersion_eV
    n0_ok = xp.isfinite(n0) & (n0 > 0)
    thick = ok & n0_ok & (t >= min_thickness_nm)
    n0_safe = xp.where(n0_ok, n0, xp.zeros_like(n0))
    pref = loss_prefactor_nm_eV(beam_energy_keV)
    k_all = xp.arange(grid.n)[None, :]
    band = k_all >= kc if isinstance(kc, int) else k_all >= kc[:, None]
    zero = xp.zeros_like(s0)
    # S: eq. 36's prefactor in counts per channel, P_S at eps = i (where the bracket is 1)
    p_unit = surface_factor(xp, grid, beam_energy_keV, collection_angle_mrad, s0.dtype)
    surf_scale = (n0_safe * de)[:, None] * p_unit[None, :]

    def analyse(b):
        new_loss, new_re, new_t, new_re0, new_ok, _, _ = kk_single_pass(setup, b)
        n1, n2 = eps_from_inverse(new_re, new_loss)
        i_s = surf_scale * surface_bracket(new_re, new_loss)  # eq. 36, counts per channel
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
    i_s = surf_scale * surface_bracket(re_inv, loss)
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
        db, winding = newton_step(xp, f_res, cur[2], cur[3], kappa, e, setup.ang, surf_scale, de)
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
    return SurfaceResult(KKState(*out), surface, n_iter, status, keep)
