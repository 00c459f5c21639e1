"""Forward models of a film's single-scattering distribution (SSD) from its dielectric function.

The physics is thin-film-theory.md section 1 (checked there against an independent solver of
Maxwell's equations); kk-theory.md eqs. 26-36 for the classic parts. Convention exp(-i omega t),
eps = eps1 + i eps2 with eps2 > 0. Every model gives dP/dE (1/eV, per incident electron) as
``Im[Phi] / P0`` with ``P0 = pi^2 a0 m0 v^2`` (nm eV, :attr:`Beam.prefactor_nm_eV`) and a complex
``Phi`` that is a *holomorphic* function of each medium's eps: so d(dP/dE)/d eps1 = Im[Phi'] and
d/d eps2 = Re[Phi'] follow from one complex derivative (the Jacobian shortcut of section 3.2).

==========================  ==================================================================
function                    what (thin-film-theory.md section; Egerton 2011)
==========================  ==================================================================
:func:`bulk_integrand`      bulk loss per solid angle, retarded (1.2) or not (1.1, eq. 31)
:func:`bulk_closed`         its exact aperture integral (1.2: principal logs, Cerenkov exact)
:func:`interface_integrand` one uncoupled NR interface a|b; vacuum|eps twice is eq. 36 (1.3)
:func:`interface_closed`    its aperture integral (eq. 36 [4.31] for two vacuum faces)
:func:`ritchie_surface`     coupled NR film (1.4, Ritchie 1957)
:func:`kroger_surface`      retarded slab in a medium eps_a (1.5, Kroger 1968)
:func:`layered_phi`         any stack of layers between two half-spaces, e.g. oxide/metal/oxide
                            (1.6: TM fields with boundary-referenced exponentials)
:func:`aperture_overlap`    the convergent-beam aperture function K(theta) (1.0)
:func:`angular_rule`        the production theta rule (3.3): Gauss-Legendre panels in
                            s = sqrt(|theta^2 - theta_L^2|), per-pixel pole panels
:func:`film_loss`           dP/dE of a film: closed forms + the quadrature of what they miss
:func:`channel_nodes`,      channel integration and the resolution kernel R the Fourier-log
:func:`channel_matrix`      leaves (S_i = N0 int_channel R (x) dP/dE dE), as one matrix
==========================  ==================================================================

How the aperture integral is done (why it is accurate and cheap): the bulk term has the closed
form of section 1.2, and far from theta_E (theta >~ 300 theta_E, or where every layer is thick on
the scale 1/q, k0 theta d/2 > 30) every model reduces to uncoupled non-retarded interfaces, whose
integral is closed too (eq. 36's angular factor). So only the difference Delta = model - (closed
parts) is integrated numerically, over theta < theta_hi (:func:`theta_hi`), where it lives;
it carries the branch point at the light line theta_L = beta_v theta_E and the film-mode poles
(widths ~ eps2), which get their own panels (:func:`pole_breakpoints`).

Angles: u = sin(theta) is the transverse wavevector over k0 and the solid angle is
2 pi u du / cos(theta) (section 1.0, "above 50 mrad use sin(theta)"); the interface closed form
neglects the 1/cos factor on its theta^-3 tail (< 1e-5 of it). Units: E in eV, E0 in keV,
angles in rad inside (mrad at the public edges), lengths in nm.

Examples
--------
>>> import numpy as np
>>> beam = Beam.at(200.0)
>>> round(beam.k0_per_nm, 0), round(beam.gamma_m0v2_eV / 1e3, 1)
(2505.0, 343.7)
>>> e = np.array([10.0, 15.0])
>>> eps = 1 - 15.0**2 / (e**2 + 1j * e)
>>> p = bulk_closed(np, eps, beam.theta_e(e), 20.0, beam, 0.1, retarded=False).imag / beam.prefactor_nm_eV
>>> bool(p[1] > p[0] > 0)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .. import physics
from .._xp import erf

__all__ = [
    "KINDS",
    "POLE_OFFSETS",
    "AngularRule",
    "Beam",
    "FilmLoss",
    "FilmSetup",
    "angular_rule",
    "aperture_overlap",
    "branch_sqrt",
    "bulk_closed",
    "bulk_integrand",
    "centre_channel_matrix",
    "channel_matrix",
    "channel_nodes",
    "film_loss",
    "film_nodes",
    "film_setup",
    "interface_closed",
    "interface_integrand",
    "kroger_surface",
    "layered_phi",
    "pole_breakpoints",
    "ritchie_surface",
    "theta_hi",
]

#: The models: ``none`` (bulk only), ``eq36`` (bulk + two uncoupled NR surfaces, eq. 36),
#: ``coupled`` (Ritchie's NR film), ``kroger`` (the retarded slab), ``layered`` (oxide/film/oxide).
KINDS = ("none", "eq36", "coupled", "kroger", "layered")
#: Pole panels: breakpoints at theta_p + w x these (and their negatives), w the pole's width
#: (section 3.3).
POLE_OFFSETS = (0.0, 0.5, 1.5, 4.0, 12.0, 40.0)
#: Floor of eps2 (section 5: the Cerenkov singularity phi^2 -> 0 as eps2 -> 0).
EPS2_FLOOR = 1e-6


# --------------------------------------------------------------------------- kinematics
@dataclass(frozen=True)
class Beam:
    """Kinematics of the fast electron (thin-film-theory.md section 1.0; m0 the rest mass).

    Attributes: ``beam_energy_keV`` E0, ``gamma``, ``beta_v2`` (v/c)^2, ``k0_per_nm``
    gamma m0 v / hbar, ``m0v2_eV`` m0 v^2 = 2T, ``gamma_m0v2_eV`` (eq. 27's denominator).
    """

    beam_energy_keV: float
    gamma: float
    beta_v2: float
    k0_per_nm: float
    m0v2_eV: float
    gamma_m0v2_eV: float

    @classmethod
    def at(cls, beam_energy_keV: float) -> Beam:
        e0 = float(beam_energy_keV)
        gamma = 1.0 + e0 / physics.ELECTRON_REST_ENERGY_KEV
        return cls(
            beam_energy_keV=e0,
            gamma=gamma,
            beta_v2=1.0 - 1.0 / gamma**2,
            k0_per_nm=physics.electron_wavenumber_per_nm(e0),
            m0v2_eV=2.0 * physics.kinetic_energy_T_keV(e0) * 1e3,
            gamma_m0v2_eV=physics.gamma_m0_v2_keV(e0) * 1e3,
        )

    @property
    def prefactor_nm_eV(self) -> float:
        """P0 = pi^2 a0 m0 v^2 (nm eV): d^2P/dOmega dE = Im[Phi] / P0 (1/(eV sr))."""
        return math.pi**2 * physics.BOHR_RADIUS_NM * self.m0v2_eV

    def theta_e(self, energy_eV: Any) -> Any:
        """theta_E = E / (gamma m0 v^2) in rad (eq. 27)."""
        return energy_eV / self.gamma_m0v2_eV

    @property
    def cerenkov_eps1(self) -> float:
        """1/beta_v^2: eps1 above it makes Cerenkov radiation (section 1.0)."""
        return 1.0 / self.beta_v2


def branch_sqrt(xp: Any, w: Any) -> Any:
    """sqrt(w) with Re >= 0, and -i sqrt(|w|) on the negative real axis (the exp(-i omega t)
    form of the light-cone branch, lambda_a = -i|lambda_a| inside it, section 1.5); away from the
    axis the principal root, which has Im < 0 whenever Im w < 0 (an absorbing medium)."""
    r = xp.sqrt(w)
    on_axis = (xp.imag(w) == 0) & (xp.real(w) < 0)
    return xp.where(on_axis, -1j * xp.sqrt(xp.abs(xp.real(w))), r)


# --------------------------------------------------------------------------- integrands
def bulk_integrand(eps: Any, th: Any, th_e: Any, t_nm: Any, beta_v2: float) -> Any:
    """Phi of the bulk loss per solid angle (sections 1.1-1.2): d^2P/dOmega dE = Im[Phi] / P0.

    Phi = -t mu^2 / (eps phi^2), mu^2 = 1 - eps beta_v^2, phi^2 = theta^2 + theta_E^2 mu^2;
    ``beta_v2 = 0`` gives eq. 31's integrand -t / (eps (theta^2 + theta_E^2)). ``t_nm`` in nm,
    angles in rad.
    """
    mu2 = 1.0 - eps * beta_v2
    return -t_nm * mu2 / (eps * (th * th + th_e * th_e * mu2))


def interface_integrand(ea: Any, eb: Any, th: Any, th_e: Any, k0: float) -> Any:
    """Phi of one uncoupled non-retarded interface between media a and b (section 1.3):
    theta (ea - eb)^2 / (ea eb (ea + eb)) / (k0 (theta^2 + theta_E^2)^2). Two vacuum|eps faces
    are eq. 36's integrand, 2 theta Im[(eps-1)^2/(eps(eps+1))] / (P0 k0 (theta^2+theta_E^2)^2),
    which includes the begrenzungs term."""
    p2 = th * th + th_e * th_e
    return th * (ea - eb) ** 2 / (ea * eb * (ea + eb)) / (k0 * p2 * p2)


def _i_sin(xp: Any, c: Any, u_max: float) -> Any:
    """int_0^u_max 2u du / ((u^2 + c) sqrt(1 - u^2)), exact (u = sin theta), without the
    cancellations of the naive form: (1/s)[ln((s+1)^2 / c) - ln((s + cos)^2 / (c + u^2))],
    s = sqrt(1 + c); the small-angle limit is ln(1 + u_max^2 / c)."""
    s = xp.sqrt(1.0 + c)
    cb = math.sqrt(1.0 - u_max * u_max)
    return (2.0 * xp.log(s + 1.0) - xp.log(c) - 2.0 * xp.log(s + cb) + xp.log(c + u_max**2)) / s


def bulk_closed(
    xp: Any, eps: Any, th_e: Any, t_nm: Any, beam: Beam, u_max: float, *, retarded: bool
) -> Any:
    """The bulk term integrated over the aperture (0 < theta < asin(u_max)), exactly.

    Retarded (section 1.2): Im[-(mu^2/eps) (Log(beta^2 + theta_E^2 mu^2) - Log(theta_E^2
    mu^2))] t / (pi a0 m0 v^2), principal logs (Im(theta_E^2 mu^2) != 0: the path never crosses
    the cut, and the Cerenkov peak at theta_C = theta_E sqrt(eps1 beta_v^2 - 1) is held exactly);
    with ``retarded=False`` it is eq. 31, t Im[-1/eps] ln(1 + beta^2/theta_E^2) / (pi a0 m0
    v^2) (here with the exact solid angle, :func:`_i_sin`). Returns Phi integrated (times P0 the
    probability per eV).
    """
    bv2 = beam.beta_v2 if retarded else 0.0
    mu2 = 1.0 - eps * bv2
    c = th_e * th_e * mu2
    if not retarded:
        c = c + 0j * eps  # complex, like the retarded one
    return -math.pi * t_nm * mu2 / eps * _i_sin(xp, c, u_max)


def interface_closed(xp: Any, ea: Any, eb: Any, th_e: Any, beam: Beam, u_max: float) -> Any:
    """One uncoupled NR interface integrated over the aperture: (ea-eb)^2/(ea eb (ea+eb)) / k0
    x pi [atan(u/theta_E)/theta_E - u/(u^2 + theta_E^2)]; two vacuum faces give eq. 36 [4.31]."""
    ang = math.pi * (xp.atan(u_max / th_e) / th_e - u_max / (u_max * u_max + th_e * th_e))
    return (ea - eb) ** 2 / (ea * eb * (ea + eb)) / beam.k0_per_nm * ang


def ritchie_surface(eps: Any, th: Any, th_e: Any, t_nm: Any, k0: float, xp: Any = None) -> Any:
    """Phi of the surface part of Ritchie's coupled non-retarded film in vacuum (section 1.4):

    2 theta (eps-1)^2 / (k0 eps phi0^4) [sin^2 psi / (eps + tanh x) + cos^2 psi / (eps + coth x)],
    phi0^2 = theta^2 + theta_E^2, x = k0 theta t/2, psi = k0 theta_E t/2 (the tanh branch is
    driven with weight sin^2 psi, the coth branch with cos^2 psi). As x -> infinity both
    brackets tend to 1/(eps + 1): eq. 36's two uncoupled surfaces.
    """
    if xp is None:
        from .._xp import array_namespace

        xp = array_namespace(eps, th)
    x = 0.5 * k0 * th * t_nm
    psi = 0.5 * k0 * th_e * t_nm
    tx = xp.tanh(x)
    s2 = xp.sin(psi) ** 2
    c2 = 1.0 - s2
    p2 = th * th + th_e * th_e
    # cos^2/(eps + coth) = cos^2 tanh / (eps tanh + 1): finite at x -> 0
    bracket = s2 / (eps + tx) + c2 * tx / (eps * tx + 1.0)
    return 2.0 * th * (eps - 1.0) ** 2 / (k0 * eps * p2 * p2) * bracket


def kroger_surface(
    xp: Any,
    eps: Any,
    th: Any,
    th_e: Any,
    t_nm: Any,
    k0: float,
    beta_v2: float,
    eps_a: Any = 1.0,
) -> Any:
    """Phi of the surface and guided-mode part of Kroger's retarded slab (section 1.5).

    The film (eps, t) between two half-spaces eps_a (their own bulk loss left out); its bulk
    part is :func:`bulk_integrand`. In the exp(-i omega t) convention the formula of section 1.5
    (written there for exp(+i omega t), evaluated at conj(eps)) becomes Phi = -K~(eps) with K~
    the same algebra and lambda_a = -i|lambda_a| inside the light cone:

    Phi = [2 theta^2 (eps - eps_a)^2 / (k0 phi_a^4 phi^4)] (A + B + C),
    lambda^2 = theta^2 - eps theta_E^2 beta_v^2, phi^2 = lambda^2 + theta_E^2 (a: eps_a),
    phi_ea^2 = theta^2 + theta_E^2 [1 - (eps + eps_a) beta_v^2] (not "eps - 1": 10-370 % off),
    x = lambda k0 t/2, psi = k0 theta_E t/2, L+- = lambda_a eps + eps_a lambda tanh^(+-1) x,
    A = phi_ea^4 / (eps eps_a) (sin^2 psi / L+ + cos^2 psi / L-),
    B = beta_v^2 lambda_a theta_E phi_ea^2 / eps_a (1/L+ - 1/L-) sin 2 psi,
    C = -beta_v^4 lambda_a lambda theta_E^2 (cos^2 psi tanh x / L+ + sin^2 psi coth x / L-).

    ``beta_v2 -> 0`` gives :func:`ritchie_surface` (check F2). Principal roots (Re >= 0); the
    light-cone branch by :func:`branch_sqrt` (never clamp lambda_a^2 to 0: section 5).
    """
    th_l2 = th_e * th_e * beta_v2
    th2 = th * th
    lam = branch_sqrt(xp, th2 - eps * th_l2)
    lam_a = branch_sqrt(xp, th2 - eps_a * th_l2 + 0j * th)
    te2 = th_e * th_e
    phi2 = lam * lam + te2
    phia2 = lam_a * lam_a + te2
    phiea2 = th2 + te2 * (1.0 - (eps + eps_a) * beta_v2)
    x = 0.5 * k0 * t_nm * lam
    psi = 0.5 * k0 * th_e * t_nm
    tx = xp.tanh(x)
    s2 = xp.sin(psi) ** 2
    c2 = 1.0 - s2
    sin2psi = xp.sin(2.0 * psi)
    # 1/L- = tanh / (lambda_a eps tanh + eps_a lambda) and coth/L- = 1/(lambda_a eps tanh +
    # eps_a lambda): finite where tanh x -> 0
    inv_lp = 1.0 / (lam_a * eps + eps_a * lam * tx)
    den_m = lam_a * eps * tx + eps_a * lam
    inv_lm = tx / den_m
    a = phiea2 * phiea2 / (eps * eps_a) * (s2 * inv_lp + c2 * inv_lm)
    b = beta_v2 * lam_a * th_e * phiea2 / eps_a * (inv_lp - inv_lm) * sin2psi
    c = -(beta_v2**2) * lam_a * lam * te2 * (c2 * tx * inv_lp + s2 / den_m)
    return 2.0 * th2 * (eps - eps_a) ** 2 / (k0 * phia2 * phia2 * phi2 * phi2) * (a + b + c)


def layered_phi(
    xp: Any,
    eps_regions: list[Any],
    d_nm: list[Any],
    th: Any,
    th_e: Any,
    k0: float,
    beta_v2: float,
) -> Any:
    """Phi (bulk of every layer + everything induced) of a stratified film at normal incidence
    (thin-film-theory.md section 1.6, derived and checked against Kroger there and in F1).

    Regions j = 0..N: the entrance half-space, the layers 1..N-1 of thicknesses ``d_nm`` (nm),
    the exit half-space; ``eps_regions[j]`` broadcasts against ``th``. In scaled units z~ = k0 z
    each region holds the electron's field in the infinite medium (E_z = i(1/eps - beta_v^2)/phi^2
    e^{i theta_E z~}, E_x = i (theta/theta_E)/(eps phi^2) e^{i theta_E z~}) plus the induced
    field a e^{lambda(z~ - z~_top)} + b e^{-lambda(z~ - z~_bottom)} (E_x = (i lambda/theta)(a-term
    - b-term)), each exponential referenced to its own boundary so that |e^...| <= 1 (no overflow
    for thick layers: section 5). E_x and eps E_z are continuous at each interface; the 2N
    equations are solved by elimination from the entrance side (b_j = R_j a_j + c_j, a 2 x 2
    solve per interface, then back substitution): no matrices, no pivoting, every element
    independent. The loss is F = Re[sum_layers i(1/eps_j - beta_v^2) k0 d_j/phi_j^2 + sum_regions
    int e^{-i theta_E z~} E_z^ind dz~] and d^2P/dOmega dE = F/(P0 k0) = Im[i F~]/(P0 k0).
    ``beta_v2 = 0``: the non-retarded film.
    """
    n = len(eps_regions) - 1
    if n < 1 or len(d_nm) != n - 1:
        raise ValueError("layered_phi needs N+1 regions and N-1 layer thicknesses")
    te = th_e
    th2 = th * th
    zero = 0.0 * th + 0j
    lam = [branch_sqrt(xp, th2 - e * te * te * beta_v2 + zero) for e in eps_regions]
    phi2 = [th2 + te * te * (1.0 - e * beta_v2) for e in eps_regions]
    sz = [1j * (1.0 / e - beta_v2) / p for e, p in zip(eps_regions, phi2, strict=True)]
    sx = [1j * (th / te) / (e * p) for e, p in zip(eps_regions, phi2, strict=True)]
    dz = [k0 * d for d in d_nm]  # scaled thicknesses of layers 1..N-1
    z = [0.0 * th]  # interfaces z~_1 .. z~_N
    for d in dz:
        z.append(z[-1] + d)
    ex = [zero] + [xp.exp(-lam[j] * dz[j - 1]) for j in range(1, n)] + [zero]
    r_ = [zero]
    c_ = [zero]
    al = [zero]
    al0 = [zero]
    for k in range(1, n + 1):
        lo, up = k - 1, k
        ph = xp.exp(1j * te * z[k - 1])
        e_lo = ex[lo]
        p_ = 1.0 + r_[lo] * e_lo
        q_ = 1.0 - r_[lo] * e_lo
        e_up = ex[up] if up < n else zero
        l_lo, l_up = lam[lo], lam[up]
        ep_lo, ep_up = eps_regions[lo], eps_regions[up]
        r1 = l_lo * c_[lo] * e_lo + 1j * th * (sx[lo] - sx[up]) * ph
        r2 = (ep_up * sz[up] - ep_lo * sz[lo]) * ph - ep_lo * c_[lo] * e_lo
        m11, m12, m21, m22 = l_lo * q_, l_up, ep_lo * p_, -ep_up + zero
        inv_det = 1.0 / (m11 * m22 - m12 * m21)
        g1, g2 = l_up * e_up, ep_up * e_up
        al.append((g1 * m22 - m12 * g2) * inv_det)
        al0.append((r1 * m22 - m12 * r2) * inv_det)
        r_.append((m11 * g2 - m21 * g1) * inv_det)
        c_.append((m11 * r2 - m21 * r1) * inv_det)
    a = [zero] * (n + 1)
    b = [zero] * (n + 1)
    b[n] = c_[n]
    for k in range(n, 0, -1):
        a[k - 1] = al[k] * a[k] + al0[k]
        if k - 1 > 0:
            b[k - 1] = r_[k - 1] * a[k - 1] + c_[k - 1]
    total = a[0] / (lam[0] - 1j * te) * xp.exp(-1j * te * z[0])
    for j in range(1, n):
        d = dz[j - 1]
        km, kp = lam[j] - 1j * te, lam[j] + 1j * te
        total = total + a[j] * xp.exp(-1j * te * z[j]) * (1.0 - xp.exp(-km * d)) / km
        total = total + b[j] * xp.exp(-1j * te * z[j - 1]) * (1.0 - xp.exp(-kp * d)) / kp
        total = total + sz[j] * d
    total = total + b[n] * xp.exp(-1j * te * z[n - 1]) / (lam[n] + 1j * te)
    return 1j * total / k0


def aperture_overlap(theta: Any, beta: float, alpha: float, xp: Any = np) -> Any:
    """K(theta): the share of a convergent beam (uniform in a disc of semi-angle ``alpha``) that a
    collection aperture of semi-angle ``beta`` accepts after scattering by ``theta`` (all rad):
    the overlap area of disc(0, beta) and disc(theta, alpha) over pi alpha^2 (section 1.0);
    alpha = 0: 1 for theta < beta.

    >>> float(aperture_overlap(np.array(0.0), 0.01, 0.005)), float(aperture_overlap(np.array(0.02), 0.01, 0.005))
    (1.0, 0.0)
    """
    if alpha <= 0:
        return xp.where(theta < beta, 1.0, 0.0)
    d = xp.maximum(theta, 1e-300)
    r1, r2 = beta, alpha
    c1 = xp.clip((d * d + r1 * r1 - r2 * r2) / (2 * d * r1), -1.0, 1.0)
    c2 = xp.clip((d * d + r2 * r2 - r1 * r1) / (2 * d * r2), -1.0, 1.0)
    k = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
    area = r1 * r1 * xp.acos(c1) + r2 * r2 * xp.acos(c2) - 0.5 * xp.sqrt(xp.maximum(k, 0.0))
    inside = (min(r1, r2) / r2) ** 2
    out = area / (math.pi * r2 * r2)
    out = xp.where(d <= abs(r1 - r2), inside, out)
    return xp.where(d >= r1 + r2, 0.0, out)


# --------------------------------------------------------------------------- the theta rule
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1.0) / 2.0, w / 2.0


def theta_hi(th_e: Any, beam: Beam, u_max: float, d_min_nm: float) -> Any:
    """Where the numerical part of the aperture integral may stop (rad): past
    max(300 theta_E, 30/(k0 d_min)) every layer is thick on the scale 1/q (its coupling falls as
    e^{-k0 theta d} < e^{-60}) and retardation is below (theta_L/theta)^2 < 1e-5, so the model
    equals its closed parts; at most the aperture."""
    return np.minimum(u_max, np.maximum(300.0 * th_e, 30.0 / (beam.k0_per_nm * d_min_nm)))


@dataclass(frozen=True)
class AngularRule:
    """The shared (pixel-independent) part of the theta rule, per energy node (host arrays).

    ``theta_e``, ``theta_l`` (NE,): theta_E and the light line beta_v theta_E (0 without
    retardation), rad; ``s_hi`` (NE,): the end of the rule in s = sqrt(theta^2 - theta_L^2);
    ``breaks`` (NE, Nb): panel breakpoints in s from 0 to s_hi; ``below_theta``, ``below_weight``
    (NE, nb): the nodes inside the light cone (Gauss-Legendre in s' = sqrt(theta_L^2 -
    theta^2)) and their weights (solid angle included); ``gl_x``, ``gl_w``: the n-point rule
    on [0, 1] used in every panel.
    """

    theta_e: np.ndarray
    theta_l: np.ndarray
    s_hi: np.ndarray
    breaks: np.ndarray
    below_theta: np.ndarray
    below_weight: np.ndarray
    gl_x: np.ndarray
    gl_w: np.ndarray
    u_max: float

    @property
    def n_nodes(self) -> int:
        """Shared nodes per energy (without pole panels)."""
        return self.below_theta.shape[1] + (self.breaks.shape[1] - 1) * self.gl_x.size


def angular_rule(
    energy_eV: np.ndarray,
    beam: Beam,
    u_max: float,
    *,
    retarded: bool,
    d_min_nm: float,
    panels_per_decade: float = 4.0,
    core_panels_per_decade: float = 8.0,
    order: int = 8,
    below_panels: int = 4,
) -> AngularRule:
    """The shared theta rule of section 3.3, per energy (host NumPy).

    Inside the light cone (retarded only): ``below_panels`` equal Gauss-Legendre panels in
    s' = sqrt(theta_L^2 - theta^2). Above it: Gauss-Legendre panels of ``order`` nodes in
    s = sqrt(theta^2 - theta_L^2) (both take out the square-root branch point), with breakpoints
    log-spaced from 1e-4 theta_L (1e-2 theta_E without retardation, below which Delta ~ theta^2
    holds < 1e-6 of it) to s_hi = :func:`theta_hi`, ``panels_per_decade``, denser
    (``core_panels_per_decade``) over theta_E/10 .. 10 theta_E where the Lorentzian of width
    theta_E lives. Pole panels are added per pixel (:func:`pole_breakpoints`).
    """
    e = np.asarray(energy_eV, dtype=np.float64)
    th_e = beam.theta_e(e)
    th_l = math.sqrt(beam.beta_v2) * th_e if retarded else np.zeros_like(th_e)
    hi = theta_hi(th_e, beam, u_max, d_min_nm)
    s_hi = np.sqrt(np.maximum(hi * hi - th_l * th_l, 0.0))
    lo = 1e-4 * th_l if retarded else 1e-2 * th_e
    rows = []
    for i in range(e.size):
        a, b = lo[i], s_hi[i]
        if not b > a:
            rows.append(np.array([0.0, b]))
            continue
        c_lo, c_hi = max(a, 0.1 * th_e[i]), min(b, 10.0 * th_e[i])
        pieces = [np.array([0.0])]
        for p, q, dens in (
            (a, c_lo, panels_per_decade),
            (c_lo, c_hi, core_panels_per_decade),
            (c_hi, b, panels_per_decade),
        ):
            if q > p * (1 + 1e-12):
                m = max(1, int(math.ceil(dens * math.log10(q / p))))
                pieces.append(np.geomspace(p, q, m + 1))
        rows.append(np.unique(np.concatenate(pieces)))
    nb = max(r.size for r in rows)
    breaks = np.empty((e.size, nb))
    for i, r in enumerate(rows):
        breaks[i, : r.size] = r
        breaks[i, r.size :] = r[-1]  # zero-width panels
    x, w = _gauss_legendre(order)
    if retarded:
        # equal panels in s': inside the cone a thick film's lambda k0 t/2 reaches a few pi when
        # eps1 > 0 (tan oscillations of the guided waves, 3e-3 errors with one 16-node panel at
        # 100 nm, 30 eV)
        xg, wg = _gauss_legendre(order)
        xb = ((np.arange(below_panels)[:, None] + xg[None, :]) / below_panels).reshape(-1)
        wb = np.broadcast_to(wg / below_panels, (below_panels, order)).reshape(-1)
        s = th_l[:, None] * xb[None, :]
        below_theta = np.sqrt(np.maximum(th_l[:, None] ** 2 - s * s, 0.0))
        # d Omega = 2 pi u du / cos = 2 pi s ds / cos (u = sqrt(theta_L^2 - s^2))
        below_weight = 2 * math.pi * s * th_l[:, None] * wb[None, :] / np.sqrt(1 - below_theta**2)
    else:
        below_theta = np.zeros((e.size, 0))
        below_weight = np.zeros((e.size, 0))
    return AngularRule(th_e, th_l, s_hi, breaks, below_theta, below_weight, x, w, float(u_max))


def panel_nodes(xp: Any, breaks: Any, th_l: Any, gl_x: Any, gl_w: Any) -> tuple[Any, Any]:
    """Nodes theta (rad) and weights (solid angle, 2 pi s ds / cos theta) of Gauss-Legendre panels
    between consecutive ``breaks`` (..., Nb) in s = sqrt(theta^2 - theta_L^2); ``th_l``
    broadcasts against ``breaks[..., :1]``. Zero-width panels have zero weights."""
    a = breaks[..., :-1, None]
    h = breaks[..., 1:, None] - a
    s = a + h * gl_x
    ws = h * gl_w
    shape = s.shape[:-2] + (s.shape[-2] * s.shape[-1],)
    s = xp.reshape(s, shape)
    ws = xp.reshape(ws, shape)
    th = xp.sqrt(th_l * th_l + s * s)
    th = xp.minimum(th, 0.999999)
    return th, 2.0 * math.pi * s * ws / xp.sqrt(1.0 - th * th)


def pole_breakpoints(
    xp: Any,
    kind: str,
    eps: Any,
    t_nm: Any,
    rule_theta_e: Any,
    rule_theta_l: Any,
    s_hi: Any,
    beam: Beam,
    *,
    eps_a: Any = 1.0,
    scan: Any = None,
    n_poles: int = 2,
    offsets: Any = None,
) -> Any:
    """Per-pixel breakpoints (B, NE, n) in s around the film-mode poles (section 3.3).

    ``coupled``: closed form. The tanh branch eps + tanh x = 0 exists for -1 < eps1 < 0 at
    x_p = atanh(-eps1), width w_x = eps2/(1 - eps1^2); the coth branch for eps1 < -1 at
    x_p = atanh(-1/eps1), w_x = eps2/(eps1^2 - 1); theta = 2x/(k0 t).
    ``kroger``: the real roots of Re L+-(theta) (L+- of :func:`kroger_surface`) bracketed on the
    ``scan`` points (NE, M) in s, the first ``n_poles`` per branch, refined by 6 safeguarded
    Newton steps; width |Im L / L'|. Breakpoints at theta_p +- w x :data:`POLE_OFFSETS`, clipped
    to [0, s_hi]; poles not found put theirs at s_hi (zero-width panels).
    """
    offs = np.array(POLE_OFFSETS if offsets is None else offsets)
    offs = np.concatenate([-offs[:0:-1], offs])  # -40 .. 0 .. 40
    k0 = beam.k0_per_nm
    th_e = rule_theta_e[None, :]
    th_l = rule_theta_l[None, :]
    s_top = s_hi[None, :]
    e1 = xp.real(eps)
    e2 = xp.imag(eps)
    t = t_nm[:, None]
    if kind == "coupled":
        one = xp.ones_like(e1)
        tanh_ok = (e1 > -1.0) & (e1 < 0.0)
        coth_ok = e1 < -1.0
        tp = xp.where(tanh_ok, -e1, xp.where(coth_ok, -1.0 / xp.where(coth_ok, e1, -2 * one), 0.5))
        tp = xp.clip(tp, 0.0, 1.0 - 1e-15)
        xpole = 0.5 * xp.log((1.0 + tp) / (1.0 - tp))
        wx = xp.where(
            tanh_ok, e2 / xp.maximum(1.0 - e1 * e1, 1e-300), e2 / xp.maximum(e1 * e1 - 1.0, 1e-300)
        )
        found = tanh_ok | coth_ok
        centres = [2.0 * xpole / (k0 * t)]
        widths = [2.0 * wx / (k0 * t)]
        oks = [found]
    elif kind == "kroger":
        centres, widths, oks = _kroger_poles(xp, eps, t, th_e, th_l, beam, eps_a, scan, n_poles)
    else:
        raise ValueError(f"no pole panels for kind {kind!r}")
    out = []
    for c, w, ok in zip(centres, widths, oks, strict=True):
        # a flat Re L (no resonance) gives a huge width: cap it at the rule's end (no overflow)
        w = xp.minimum(xp.maximum(w, 1e-12 * c), s_top + th_l)
        for o in offs.tolist():
            th = c + o * w
            s = xp.sqrt(xp.maximum(th * th - th_l * th_l, 0.0))
            s = xp.clip(s, 0.0, s_top)
            out.append(xp.where(ok & (th > th_l), s, s_top + 0.0 * s))
    return xp.stack(out, axis=-1)


def _kroger_l(xp, th, eps, t, th_e, th_l2, k0, eps_a, sign):
    """L+- of Kroger's formula at real theta and its theta-derivative."""
    lam2 = th * th - eps * th_l2
    lam = branch_sqrt(xp, lam2)
    lam_a = branch_sqrt(xp, th * th - eps_a * th_l2 + 0j * th)
    x = 0.5 * k0 * t * lam
    tx = xp.tanh(x)
    dlam = th / lam
    dlam_a = th / lam_a
    dt = (1.0 - tx * tx) * 0.5 * k0 * t * dlam
    if sign > 0:
        val = lam_a * eps + eps_a * lam * tx
        der = dlam_a * eps + eps_a * (dlam * tx + lam * dt)
    else:
        ct = 1.0 / tx
        val = lam_a * eps + eps_a * lam * ct
        der = dlam_a * eps + eps_a * (dlam * ct - lam * ct * ct * dt)
    return val, der


def _kroger_poles(xp, eps, t, th_e, th_l, beam, eps_a, scan, n_poles):
    k0 = beam.k0_per_nm
    th_l2 = th_l * th_l / 1.0
    s_scan = scan[None, :, :]  # (1, NE, M)
    th_scan = xp.sqrt(th_l[..., None] ** 2 + s_scan * s_scan)
    ep = eps[..., None]
    tt = t[..., None]
    centres, widths, oks = [], [], []
    for sign in (1, -1):
        ea_scan = eps_a if isinstance(eps_a, (int, float, complex)) else eps_a[..., None]
        val, _ = _kroger_l(
            xp, th_scan, ep, tt, th_e[..., None], th_l2[..., None], k0, ea_scan, sign
        )
        re = xp.real(val)
        change = (re[..., 1:] * re[..., :-1]) < 0
        # the poles are the sign changes where |Im L| is smallest (a sign change of Re L where
        # Im L is large is no resonance): take the n_poles best
        score = xp.where(
            change, xp.abs(xp.imag(val[..., 1:])) + xp.abs(xp.imag(val[..., :-1])), xp.inf
        )
        th_b = th_scan * (0.0 * re + 1.0)
        pos = xp.arange(score.shape[-1])
        for _ in range(n_poles):
            idx = xp.argmin(score, axis=-1)
            best = xp.min(score, axis=-1)
            ok = xp.isfinite(best)
            score = xp.where(pos == idx[..., None], xp.inf, score)
            lo = xp.take_along_axis(th_b, idx[..., None], axis=-1)[..., 0]
            hi = xp.take_along_axis(th_b[..., 1:], idx[..., None], axis=-1)[..., 0]
            f_lo = xp.take_along_axis(re, idx[..., None], axis=-1)[..., 0]
            th = 0.5 * (lo + hi)
            for _ in range(6):
                v, d = _kroger_l(xp, th, eps, t, th_e, th_l2, k0, eps_a, sign)
                fr = xp.real(v)
                dr = xp.real(d)
                same = (fr * f_lo) > 0
                lo = xp.where(same, th, lo)
                f_lo = xp.where(same, fr, f_lo)
                hi = xp.where(same, hi, th)
                step = th - fr / xp.where(dr != 0, dr, 1e-300)
                inside = (step > lo) & (step < hi)
                th = xp.where(inside, step, 0.5 * (lo + hi))
            v, d = _kroger_l(xp, th, eps, t, th_e, th_l2, k0, eps_a, sign)
            centres.append(th)
            widths.append(xp.abs(xp.imag(v)) / xp.maximum(xp.abs(d), 1e-300))
            oks.append(ok)
    return centres, widths, oks


# --------------------------------------------------------------------------- the film
@dataclass(frozen=True)
class FilmSetup:
    """Everything about a film model that does not depend on the pixel (host side).

    ``kind`` one of :data:`KINDS`; ``retarded``; ``energy_eV`` (NE,) the energy nodes (eV);
    ``beam``; ``u_max`` sin(beta); ``alpha`` the convergence semi-angle (rad); ``u_cut`` sin of
    the plasmon cut-off of the bulk term (rad; = ``u_max`` when none, section 5); ``rule``
    (:class:`AngularRule`, None for ``none``/``eq36``); ``scan`` (NE, M) pole-search points in s
    (kroger); ``correction`` (theta, weight) of the convergent-beam panels (NE, 32), or None.
    """

    kind: str
    retarded: bool
    energy_eV: np.ndarray
    beam: Beam
    u_max: float
    alpha: float
    u_cut: float
    rule: AngularRule | None
    scan: np.ndarray | None
    correction: tuple[np.ndarray, np.ndarray] | None
    eps_ambient: complex = 1.0
    n_poles: int = 2
    pole_offsets: tuple = POLE_OFFSETS
    device: dict = field(default_factory=dict, compare=False)

    def on(self, xp: Any, name: str) -> Any:
        """A host array of the setup as an array of ``xp`` (cached per namespace)."""
        key = (xp.__name__, name)
        if key not in self.device:
            value = getattr(self, name) if hasattr(self, name) else None
            if value is None:
                value = _rule_arrays(self)[name]
            self.device[key] = xp.asarray(np.ascontiguousarray(value))
        return self.device[key]


def _rule_arrays(setup: FilmSetup) -> dict[str, np.ndarray]:
    r = setup.rule
    out = {"theta_e": setup.beam.theta_e(setup.energy_eV)}
    if r is not None:
        out.update(
            theta_l=r.theta_l,
            s_hi=r.s_hi,
            breaks=r.breaks,
            below_theta=r.below_theta,
            below_weight=r.below_weight,
            gl_x=r.gl_x,
            gl_w=r.gl_w,
        )
    if setup.scan is not None:
        out["scan"] = setup.scan
    if setup.correction is not None:
        out["corr_theta"], out["corr_weight"] = setup.correction
    return out


def film_setup(
    energy_eV: Any,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    *,
    kind: str = "coupled",
    retarded: bool = False,
    convergence_angle_mrad: float = 0.0,
    cutoff_mrad: float | None = None,
    d_min_nm: float = 1.0,
    eps_ambient: complex = 1.0,
    panels_per_decade: float = 4.0,
    core_panels_per_decade: float = 8.0,
    order: int = 8,
    n_poles: int = 2,
    pole_offsets: tuple = POLE_OFFSETS,
) -> FilmSetup:
    """The pixel-independent part of a film model on the energy nodes ``energy_eV`` (eV, > 0).

    ``kind`` (:data:`KINDS`); ``retarded`` applies to ``none``, ``eq36`` and ``layered``
    (``coupled`` is non-retarded, ``kroger`` retarded, by definition); ``d_min_nm`` the
    thinnest layer the rule must resolve (:func:`theta_hi`); ``cutoff_mrad`` the plasmon cut-off
    of the bulk term (section 5; None: none); ``eps_ambient`` the medium around a ``kroger``
    film. The convergent-beam correction needs ``convergence_angle_mrad`` <= the collection
    angle.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if kind == "coupled":
        retarded = False
    if kind == "kroger":
        retarded = True
    e = np.asarray(energy_eV, dtype=np.float64)
    beam = Beam.at(beam_energy_keV)
    beta = float(collection_angle_mrad) * 1e-3
    alpha = float(convergence_angle_mrad) * 1e-3
    if alpha > beta:
        raise ValueError(
            f"the film models need a convergence semi-angle ({convergence_angle_mrad} mrad) no "
            f"larger than the collection semi-angle ({collection_angle_mrad} mrad)"
        )
    u_max = math.sin(beta)
    u_cut = u_max if cutoff_mrad is None else min(u_max, math.sin(float(cutoff_mrad) * 1e-3))
    rule = None
    scan = None
    if kind in ("coupled", "kroger", "layered"):
        rule = angular_rule(
            e,
            beam,
            u_max,
            retarded=retarded,
            d_min_nm=d_min_nm,
            panels_per_decade=panels_per_decade,
            core_panels_per_decade=core_panels_per_decade,
            order=order,
        )
        if kind in ("kroger", "layered") and retarded:
            # pole search points: 12 per decade in s, from 1e-4 theta_L to s_hi
            lo = np.maximum(1e-4 * rule.theta_l, 1e-12)
            m = 12 * int(math.ceil(np.max(np.log10(np.maximum(rule.s_hi / lo, 10.0))))) + 1
            scan = np.geomspace(lo, np.maximum(rule.s_hi, lo * 10), m, axis=-1)
    correction = None
    if alpha > 0:
        x, w = _gauss_legendre(16)
        lo, hi = max(beta - alpha, 0.0), beta + alpha
        th = np.concatenate([lo + (beta - lo) * x, beta + (hi - beta) * x])
        wt = np.concatenate([(beta - lo) * w, (hi - beta) * w])
        k = aperture_overlap(th, beta, alpha) - (th < beta)
        weight = 2 * math.pi * np.sin(th) * wt * k
        correction = (
            np.broadcast_to(np.sin(th), (e.size, th.size)).copy(),
            np.broadcast_to(weight, (e.size, th.size)).copy(),
        )
    return FilmSetup(
        kind,
        bool(retarded),
        e,
        beam,
        u_max,
        alpha,
        u_cut,
        rule,
        scan,
        correction,
        complex(eps_ambient),
        int(n_poles),
        tuple(pole_offsets),
    )


class FilmLoss(NamedTuple):
    """Phi of a film's parts, integrated over the aperture, (B, NE) complex: dP/dE (1/eV) of a
    part is Im[part] / P0 (:attr:`Beam.prefactor_nm_eV`). ``bulk`` the film material's volume
    loss, ``oxide`` the oxide layers' volume loss (0 without), ``surface`` everything else
    (surface, interface and guided modes, begrenzungs terms)."""

    bulk: Any
    oxide: Any
    surface: Any

    @property
    def total(self) -> Any:
        return self.bulk + self.oxide + self.surface


def film_nodes(
    xp: Any,
    setup: FilmSetup,
    eps: Any,
    t_nm: Any,
    *,
    eps_oxide: Any = None,
) -> tuple[Any, Any] | None:
    """The theta nodes and weights (B, NE, NQ) of one pixel batch: the shared rule plus pole
    panels from the film's eps (B, NE) and thickness (B,) (reused for the derivatives)."""
    if setup.rule is None:
        return None
    base = setup.on(xp, "breaks")
    th_l = setup.on(xp, "theta_l")
    s_hi = setup.on(xp, "s_hi")
    th_e = setup.on(xp, "theta_e")
    b = eps.shape[0]
    if setup.kind == "coupled":
        extra = pole_breakpoints(
            xp, "coupled", eps, t_nm, th_e, th_l, s_hi, setup.beam, offsets=setup.pole_offsets
        )
    elif setup.retarded:
        parts = [
            pole_breakpoints(
                xp,
                "kroger",
                eps,
                t_nm,
                th_e,
                th_l,
                s_hi,
                setup.beam,
                eps_a=setup.eps_ambient,
                scan=setup.on(xp, "scan"),
                n_poles=setup.n_poles,
                offsets=setup.pole_offsets,
            )
        ]
        if setup.kind == "layered" and eps_oxide is not None:
            parts.append(
                pole_breakpoints(
                    xp,
                    "kroger",
                    eps,
                    t_nm,
                    th_e,
                    th_l,
                    s_hi,
                    setup.beam,
                    eps_a=eps_oxide,
                    scan=setup.on(xp, "scan"),
                    n_poles=1,
                    offsets=setup.pole_offsets,
                )
            )
        extra = xp.concat(parts, axis=-1)
    else:  # non-retarded layered: the bare film's poles
        extra = pole_breakpoints(
            xp, "coupled", eps, t_nm, th_e, th_l, s_hi, setup.beam, offsets=setup.pole_offsets
        )
    breaks = xp.concat([xp.broadcast_to(base[None, ...], (b,) + tuple(base.shape)), extra], axis=-1)
    breaks = xp.sort(breaks, axis=-1)
    th, w = panel_nodes(xp, breaks, th_l[None, :, None], setup.on(xp, "gl_x"), setup.on(xp, "gl_w"))
    if setup.rule.below_theta.shape[1]:
        bt = setup.on(xp, "below_theta")
        bw = setup.on(xp, "below_weight")
        th = xp.concat([xp.broadcast_to(bt[None, ...], (b,) + tuple(bt.shape)), th], axis=-1)
        w = xp.concat([xp.broadcast_to(bw[None, ...], (b,) + tuple(bw.shape)), w], axis=-1)
    return th, w


def _delta(xp, setup, eps, t, th, th_e, eps_ox, d_ox):
    """Phi of the model minus its closed parts at nodes ``th`` (B, NE, NQ)."""
    beam = setup.beam
    k0 = beam.k0_per_nm
    bv2 = beam.beta_v2 if setup.retarded else 0.0
    e = eps[..., None]
    te = th_e[..., None]
    tt = t[:, None, None]
    if setup.kind == "coupled":
        return ritchie_surface(e, th, te, tt, k0, xp) - 2.0 * interface_integrand(
            1.0, e, th, te, k0
        )
    if setup.kind == "kroger":
        ea = setup.eps_ambient
        return kroger_surface(xp, e, th, te, tt, k0, bv2, ea) - 2.0 * interface_integrand(
            ea, e, th, te, k0
        )
    # layered: vacuum | oxide | film | oxide | vacuum
    eo = eps_ox[..., None]
    dd = d_ox[:, None, None]
    total = layered_phi(xp, [1.0, eo, e, eo, 1.0], [dd, tt, dd], th, te, k0, bv2)
    total = total - bulk_integrand(e, th, te, tt, bv2) - 2.0 * bulk_integrand(eo, th, te, dd, bv2)
    return total - 2.0 * (
        interface_integrand(1.0, eo, th, te, k0) + interface_integrand(eo, e, th, te, k0)
    )


def film_loss(
    xp: Any,
    setup: FilmSetup,
    eps: Any,
    t_nm: Any,
    *,
    eps_oxide: Any = None,
    oxide_nm: Any = None,
    nodes: tuple[Any, Any] | None = None,
) -> FilmLoss:
    """dP/dE of a film (per eV: ``Im[...] / P0``) on the setup's energy nodes.

    Parameters
    ----------
    xp : namespace
    setup : FilmSetup
    eps : array (B, NE), complex
        The film's eps on ``setup.energy_eV`` (eps2 is floored at 1e-6, section 5).
    t_nm : array (B,)
        Film thickness (nm) (the metal alone for ``layered``).
    eps_oxide, oxide_nm : array (B, NE) complex, array (B,)
        The oxide's eps and thickness per face (``layered`` only).
    nodes : (theta, weight), optional
        From :func:`film_nodes` (computed here when not given).

    Returns
    -------
    FilmLoss
        bulk, oxide and surface parts; the sum is the model (section 1).
    """
    beam = setup.beam
    eps = xp.real(eps) + 1j * xp.maximum(xp.imag(eps), EPS2_FLOOR)
    th_e = setup.on(xp, "theta_e")[None, :]
    t = t_nm[:, None]
    bulk = bulk_closed(xp, eps, th_e, t, beam, setup.u_cut, retarded=setup.retarded)
    zero = 0.0 * bulk
    oxide = zero
    kind = setup.kind
    if kind == "none":
        return FilmLoss(bulk, oxide, zero)
    if kind == "layered":
        eps_oxide = xp.real(eps_oxide) + 1j * xp.maximum(xp.imag(eps_oxide), EPS2_FLOOR)
        d = oxide_nm[:, None]
        oxide = 2.0 * bulk_closed(
            xp, eps_oxide, th_e, d, beam, setup.u_cut, retarded=setup.retarded
        )
        surface = 2.0 * (
            interface_closed(xp, 1.0, eps_oxide, th_e, beam, setup.u_max)
            + interface_closed(xp, eps_oxide, eps, th_e, beam, setup.u_max)
        )
    else:
        ea = setup.eps_ambient if kind == "kroger" else 1.0
        surface = 2.0 * interface_closed(xp, ea, eps, th_e, beam, setup.u_max)
    if kind == "eq36":
        return FilmLoss(bulk, oxide, surface)
    if nodes is None:
        nodes = film_nodes(xp, setup, eps, t_nm, eps_oxide=eps_oxide)
    th, w = nodes
    delta = _delta(xp, setup, eps, t_nm, th, th_e[0, ...], eps_oxide, oxide_nm)
    surface = surface + xp.sum(w * delta, axis=-1)
    if setup.correction is not None:
        surface, bulk, oxide = _aperture_correction(
            xp, setup, eps, t_nm, eps_oxide, oxide_nm, surface, bulk, oxide
        )
    return FilmLoss(bulk, oxide, surface)


def _aperture_correction(xp, setup, eps, t, eps_ox, d_ox, surface, bulk, oxide):
    """Add int [K(theta) - 1(theta < beta)] d^2P/dOmega dE dOmega over beta -+ alpha (the
    convergent beam, section 1.0): what the closed forms over the disc of beta leave out."""
    beam = setup.beam
    bv2 = beam.beta_v2 if setup.retarded else 0.0
    th = setup.on(xp, "corr_theta")[None, ...]
    w = setup.on(xp, "corr_weight")[None, ...]
    te = setup.on(xp, "theta_e")[None, :, None]
    # the plasmon cut-off (section 5) limits the bulk term only when one is set: without it the
    # convergent beam carries bulk losses past beta too
    limit = setup.u_cut if setup.u_cut < setup.u_max else 2.0
    cut = xp.astype(th <= limit, th.dtype)
    e = eps[..., None]
    tt = t[:, None, None]
    bulk = bulk + xp.sum(w * cut * bulk_integrand(e, th, te, tt, bv2), axis=-1)
    k0 = beam.k0_per_nm
    if setup.kind == "layered":
        eo = eps_ox[..., None]
        dd = d_ox[:, None, None]
        oxide = oxide + xp.sum(w * cut * 2.0 * bulk_integrand(eo, th, te, dd, bv2), axis=-1)
        total = layered_phi(xp, [1.0, eo, e, eo, 1.0], [dd, tt, dd], th, te, k0, bv2)
        surf = (
            total - bulk_integrand(e, th, te, tt, bv2) - 2.0 * bulk_integrand(eo, th, te, dd, bv2)
        )
    elif setup.kind == "kroger":
        surf = kroger_surface(xp, e, th, te, tt, k0, bv2, setup.eps_ambient)
    elif setup.kind == "coupled":
        surf = ritchie_surface(e, th, te, tt, k0, xp)
    else:
        surf = 2.0 * interface_integrand(1.0, e, th, te, k0)
    return surface + xp.sum(w * surf, axis=-1), bulk, oxide


# --------------------------------------------------------------------------- channels
def channel_nodes(lo_eV: np.ndarray, hi_eV: np.ndarray, n_sub: int) -> tuple[np.ndarray, ...]:
    """Gauss-Legendre nodes inside each channel [lo, hi] (eV): ``(nodes (NC * n_sub,), weights,
    channel index)``; n_sub = 2 integrates a Lorentzian of width 0.6 eV over 0.1 eV channels to
    7e-5 (error ~ h^4 f''''/4320)."""
    x, w = _gauss_legendre(int(n_sub))
    lo = np.asarray(lo_eV, dtype=np.float64)[:, None]
    h = np.asarray(hi_eV, dtype=np.float64)[:, None] - lo
    nodes = (lo + h * x).reshape(-1)
    weights = (h * w).reshape(-1)
    index = np.repeat(np.arange(lo.shape[0]), x.size)
    return nodes, weights, index


def channel_matrix(
    xp: Any,
    nodes_eV: Any,
    weights_eV: Any,
    lo_eV: Any,
    hi_eV: Any,
    fwhm_eV: Any = None,
) -> Any:
    """M (B or 1, NE, NC): S_i = sum_j M_ij dP/dE(x_j) is the channel integral of the model
    convolved with a unit-area Gaussian of ``fwhm_eV`` (the resolution the Fourier-log leaves in
    the SSD, e.g. the ``band-limited`` output; None or 0: none).

    M_ij = w_j G_i(x_j), G_i(x) = int_{lo_i}^{hi_i} R(E - x) dE = Phi((hi_i - x)/sigma) -
    Phi((lo_i - x)/sigma): exact up to the node rule of x (the model's nodes should extend
    about 3 sigma beyond the channels fitted). Without resolution, the indicator of x in
    channel i. ``fwhm_eV`` (B,) gives one matrix per pixel.
    """
    x = nodes_eV[None, :, None]
    lo = lo_eV[None, None, :]
    hi = hi_eV[None, None, :]
    w = weights_eV[None, :, None]
    if fwhm_eV is None:
        inside = (x >= lo) & (x < hi)
        return w * xp.astype(inside, nodes_eV.dtype)
    sigma = xp.reshape(xp.asarray(fwhm_eV, dtype=nodes_eV.dtype), (-1, 1, 1)) / (
        2.0 * math.sqrt(2.0 * math.log(2.0))
    )
    safe = xp.maximum(sigma, 1e-9)
    g = 0.5 * (
        erf(xp, (hi - x) / (math.sqrt(2.0) * safe)) - erf(xp, (lo - x) / (math.sqrt(2.0) * safe))
    )
    box = xp.astype((x >= lo) & (x < hi), nodes_eV.dtype)
    return w * xp.where(sigma > 1e-6, g, box)


def centre_channel_matrix(
    lo_all_eV: np.ndarray,
    hi_all_eV: np.ndarray,
    lo_eV: np.ndarray,
    hi_eV: np.ndarray,
    fwhm_eV: float = 0.0,
    n_fine: int = 4,
    points: int = 3,
) -> np.ndarray:
    """M (NE, NC) for ONE node per channel, at the centres of [lo_all, hi_all] (eV): S = f @ M.

    Between the centres the model is the quadratic through the three nearest centres (Lagrange;
    the first or last three at the ends), integrated over each fitted channel [lo, hi] with
    ``n_fine`` Gauss-Legendre nodes per channel and the resolution of :func:`channel_matrix`
    (host NumPy, built once per fit). For box channels this is the corrected midpoint rule
    h (f[i-1] + 22 f[i] + f[i+1]) / 24, error -0.0030 h^5 f^(4) against h^3 f^(2) / 24 for the
    bare midpoint: on a 0.6 eV wide Lorentzian at 0.1 eV channels about 1e-4 of the peak
    instead of 0.9 % (two Gauss nodes per channel: 7e-6, at twice the model's cost).
    """
    lo_all = np.asarray(lo_all_eV, dtype=np.float64)
    hi_all = np.asarray(hi_all_eV, dtype=np.float64)
    c = 0.5 * (lo_all + hi_all)
    n = c.size
    half = int(points) // 2
    if n < 2 * half + 1:
        raise ValueError(f"the centre rule needs at least {2 * half + 1} channels")
    fine, w, idx = channel_nodes(lo_all, hi_all, n_fine)
    # the stencil's middle node: the channel's own, moved in at the ends
    k = np.clip(idx, half, n - 1 - half)
    cols = k[:, None] + np.arange(-half, half + 1)[None, :]
    nodes = c[cols]
    interp = np.zeros((fine.size, n))
    rows = np.arange(fine.size)
    for a in range(2 * half + 1):
        basis = np.ones_like(fine)
        for b in range(2 * half + 1):
            if b != a:
                basis *= (fine - nodes[:, b]) / (nodes[:, a] - nodes[:, b])
        np.add.at(interp, (rows, cols[:, a]), basis)
    fw = np.array([float(fwhm_eV)]) if fwhm_eV > 0 else None
    lo = np.asarray(lo_eV, dtype=np.float64)
    hi = np.asarray(hi_eV, dtype=np.float64)
    return interp.T @ channel_matrix(np, fine, w, lo, hi, fw)[0]


# --------------------------------------------------------------------------- with derivatives
class FilmResponse(NamedTuple):
    """A film model and its derivatives on the energy nodes (all (B, NE) complex Phi sums:
    dP/dE = Im[.]/P0): ``loss`` (:class:`FilmLoss`), ``d_eps`` dPhi/d eps (the film's eps),
    ``d_t`` dPhi/dt (1/nm), ``d_eps_oxide``, ``d_oxide`` (1/nm; None without oxide). The
    derivative of dP/dE along d eps is Im[d_eps d eps] / P0 (Phi is holomorphic in eps)."""

    loss: FilmLoss
    d_eps: Any
    d_t: Any
    d_eps_oxide: Any = None
    d_oxide: Any = None


def _coupled_sums(xp, e1, e2, th, w, th_e, t, k0, derivatives):
    """Ritchie's film minus its closed parts, summed over the theta nodes, in real arithmetic
    (the theta dependence of the NR film is real: x, tanh x, theta^2 + theta_E^2), with its
    analytic derivatives in eps and t (nodes held fixed).

    Sum_q w_q Delta_q = (e-1)^2/e [s^2 U + c^2 V - G/(e+1)], U = sum g/(e+T), V = sum g T/(eT+1),
    g = w 2 theta / (k0 (theta^2 + theta_E^2)^2), G = sum g, T = tanh(k0 theta t/2),
    s = sin psi, c = cos psi, psi = k0 theta_E t/2. eps2 is constant along the nodes, so it is
    taken out of every sum (fewer passes over the (B, NE, nodes) arrays: they set the cost).
    """
    te = th_e[None, :, None]
    p2 = th * th + te * te
    g = w * th / (p2 * p2) * (2.0 / k0)
    half = 0.5 * k0 * th
    tx = xp.tanh(half * t[:, None, None])
    e1n = e1[..., None]
    b2 = e2
    b22 = (e2 * e2)[..., None]
    # 1/(e + T) = (a - i b2) r, r = 1/(a^2 + b2^2), a = e1 + T
    a = e1n + tx
    a2 = a * a
    r = 1.0 / (a2 + b22)
    gr = g * r
    s_gra = xp.sum(gr * a, axis=-1)
    s_gr = xp.sum(gr, axis=-1)
    big_u = s_gra - 1j * (b2 * s_gr)
    # T/(eT + 1) = T (bb - i b2 T) r2, bb = e1 T + 1, r2 = 1/(bb^2 + b2^2 T^2)
    bb = e1n * tx + 1.0
    bb2 = bb * bb
    tx2 = tx * tx
    r2 = 1.0 / (bb2 + b22 * tx2)
    gtr2 = g * tx * r2
    big_v = xp.sum(gtr2 * bb, axis=-1) - 1j * (b2 * xp.sum(gtr2 * tx, axis=-1))
    big_g = xp.sum(g, axis=-1)
    psi = 0.5 * k0 * th_e[None, :] * t[:, None]
    s2 = xp.sin(psi) ** 2
    c2 = 1.0 - s2
    e = e1 + 1j * e2
    bracket = s2 * big_u + c2 * big_v - big_g / (e + 1.0)
    pre = (e - 1.0) ** 2 / e
    value = pre * bracket
    if not derivatives:
        return value, None, None
    bbt = bb * tx
    bsq = b2 * b2
    # d/de: -1/(e+T)^2 = -(a - i b2)^2 r^2 ; -T^2/(eT+1)^2 = -T^2 (bb - i b2 T)^2 r2^2
    q = gr * r
    s_qa2, s_q, s_qa = (xp.sum(q * a2, axis=-1), xp.sum(q, axis=-1), xp.sum(q * a, axis=-1))
    du = -(s_qa2 - bsq * s_q) + 2j * b2 * s_qa
    h = gtr2 * tx * r2
    s_hb, s_ht, s_hbt = (
        xp.sum(h * bb2, axis=-1),
        xp.sum(h * tx2, axis=-1),
        xp.sum(h * bbt, axis=-1),
    )
    dv = -(s_hb - bsq * s_ht) + 2j * b2 * s_hbt
    d_eps = (e - 1.0) * (e + 1.0) / (e * e) * bracket + pre * (
        s2 * du + c2 * dv + big_g / (e + 1.0) ** 2
    )
    # d/dt: dT/dt = (1 - T^2) k0 theta / 2 ; d(1/(e+T))/dT = -1/(e+T)^2 ;
    # d(T/(eT+1))/dT = 1/(eT+1)^2 ; ds^2/dt = sin(2 psi) psi/t
    gtp = g * (1.0 - tx2) * half
    qt = gtp * r * r
    du_t = -(xp.sum(qt * a2, axis=-1) - bsq * xp.sum(qt, axis=-1)) + 2j * b2 * xp.sum(
        qt * a, axis=-1
    )
    q2 = gtp * r2 * r2
    dv_t = (xp.sum(q2 * bb2, axis=-1) - bsq * xp.sum(q2 * tx2, axis=-1)) - 2j * b2 * xp.sum(
        q2 * bbt, axis=-1
    )
    ds2 = xp.sin(2.0 * psi) * psi / t[:, None]
    d_t = pre * (ds2 * (big_u - big_v) + s2 * du_t + c2 * dv_t)
    return value, d_eps, d_t


def _closed_parts(xp, setup, eps, t, eps_ox, d_ox):
    """The closed-form parts (bulk, oxide, surface) of :func:`film_loss`."""
    beam = setup.beam
    th_e = setup.on(xp, "theta_e")[None, :]
    tt = t[:, None]
    bulk = bulk_closed(xp, eps, th_e, tt, beam, setup.u_cut, retarded=setup.retarded)
    oxide = 0.0 * bulk
    if setup.kind == "none":
        return bulk, oxide, 0.0 * bulk
    if setup.kind == "layered":
        d = d_ox[:, None]
        oxide = 2.0 * bulk_closed(xp, eps_ox, th_e, d, beam, setup.u_cut, retarded=setup.retarded)
        surface = 2.0 * (
            interface_closed(xp, 1.0, eps_ox, th_e, beam, setup.u_max)
            + interface_closed(xp, eps_ox, eps, th_e, beam, setup.u_max)
        )
    else:
        ea = setup.eps_ambient if setup.kind == "kroger" else 1.0
        surface = 2.0 * interface_closed(xp, ea, eps, th_e, beam, setup.u_max)
    return bulk, oxide, surface


def film_response(
    xp: Any,
    setup: FilmSetup,
    eps: Any,
    t_nm: Any,
    *,
    eps_oxide: Any = None,
    oxide_nm: Any = None,
    nodes: tuple[Any, Any] | None = None,
    derivatives: bool = True,
    oxide_derivatives: tuple[bool, bool] = (True, True),
) -> FilmResponse:
    """:func:`film_loss` with the derivatives a fit needs (the Jacobian shortcut of section 3.2:
    the channels depend on the oscillators only through eps(E_i), so one complex derivative in
    eps, plus one in t (and d), gives every column, whatever the number of oscillators).

    ``coupled``: analytic derivatives in real arithmetic (:func:`_coupled_sums`). The others:
    forward differences with the same theta nodes (h = 1e-6 |eps|, 1e-6 t): an exact derivative
    of the quadrature rule, so the Jacobian of the fitted model is consistent with it.
    ``oxide_derivatives`` (in the oxide's eps, in its thickness): skip those not needed (each is
    one more evaluation of the layered model).
    """
    eps = xp.real(eps) + 1j * xp.maximum(xp.imag(eps), EPS2_FLOOR)
    if eps_oxide is not None:
        eps_oxide = xp.real(eps_oxide) + 1j * xp.maximum(xp.imag(eps_oxide), EPS2_FLOOR)
    if setup.kind == "coupled":
        bulk, oxide, surface = _closed_parts(xp, setup, eps, t_nm, None, None)
        if nodes is None:
            nodes = film_nodes(xp, setup, eps, t_nm)
        th, w = nodes
        delta, dd_eps, dd_t = _coupled_sums(
            xp,
            xp.real(eps),
            xp.imag(eps),
            th,
            w,
            setup.on(xp, "theta_e"),
            t_nm,
            setup.beam.k0_per_nm,
            derivatives,
        )
        loss = FilmLoss(bulk, oxide, surface + delta)
        if setup.correction is not None:
            s2, b2, o2 = _aperture_correction(
                xp, setup, eps, t_nm, None, None, loss.surface, bulk, oxide
            )
            loss = FilmLoss(b2, o2, s2)
        if not derivatives:
            return FilmResponse(loss, None, None)
        # closed parts by a forward difference (cheap: no theta nodes); the aperture correction
        # too when present
        h = 1e-6 * xp.abs(eps)
        moved = _coupled_total_cheap(xp, setup, eps + h, t_nm)
        base = _coupled_total_cheap(xp, setup, eps, t_nm)
        d_eps = (moved - base) / h + dd_eps
        ht = 1e-6 * t_nm
        moved_t = _coupled_total_cheap(xp, setup, eps, t_nm + ht)
        d_t = (moved_t - base) / ht[:, None] + dd_t
        return FilmResponse(loss, d_eps, d_t)
    if nodes is None and setup.rule is not None:
        nodes = film_nodes(xp, setup, eps, t_nm, eps_oxide=eps_oxide)
    loss = film_loss(xp, setup, eps, t_nm, eps_oxide=eps_oxide, oxide_nm=oxide_nm, nodes=nodes)
    if not derivatives:
        return FilmResponse(loss, None, None)
    base = loss.total
    h = 1e-6 * xp.abs(eps)
    d_eps = (
        film_loss(
            xp, setup, eps + h, t_nm, eps_oxide=eps_oxide, oxide_nm=oxide_nm, nodes=nodes
        ).total
        - base
    ) / h
    ht = 1e-6 * t_nm
    d_t = (
        film_loss(
            xp, setup, eps, t_nm + ht, eps_oxide=eps_oxide, oxide_nm=oxide_nm, nodes=nodes
        ).total
        - base
    ) / ht[:, None]
    d_eo = d_d = None
    if setup.kind == "layered" and oxide_derivatives[0]:
        ho = 1e-6 * xp.abs(eps_oxide)
        d_eo = (
            film_loss(
                xp, setup, eps, t_nm, eps_oxide=eps_oxide + ho, oxide_nm=oxide_nm, nodes=nodes
            ).total
            - base
        ) / ho
    if setup.kind == "layered" and oxide_derivatives[1]:
        hd = 1e-6 * oxide_nm
        d_d = (
            film_loss(
                xp, setup, eps, t_nm, eps_oxide=eps_oxide, oxide_nm=oxide_nm + hd, nodes=nodes
            ).total
            - base
        ) / hd[:, None]
    return FilmResponse(loss, d_eps, d_t, d_eo, d_d)


def _coupled_total_cheap(xp, setup, eps, t):
    """The coupled model's parts that have no theta nodes of their own (closed forms and the
    convergent-beam panels), for their forward differences."""
    bulk, oxide, surface = _closed_parts(xp, setup, eps, t, None, None)
    if setup.correction is not None:
        surface, bulk, oxide = _aperture_correction(
            xp, setup, eps, t, None, None, surface, bulk, oxide
        )
    return bulk + oxide + surface
