"""Per-pixel fits of a film's dielectric function to its SSD: batched, fixed-iteration
Levenberg-Marquardt on the Poisson deviance, written against the array API (thin-film-theory.md
sections 2-3).

The model of channel i of a pixel is mu_i = N0 sum_j M_ij dP/dE(x_j): the film model
(:func:`eelsgpu.kernels.film.film_response`) on the energy nodes x_j of the fitted channels,
integrated over each channel and convolved with the resolution the Fourier-log leaves
(:func:`eelsgpu.kernels.film.channel_matrix`). The parameters are the logarithms of the film
thickness t (nm), the Drude Ep, Gamma_D (eV), each free Lorentz oscillator's E_j, f_j (eV^2),
Gamma_j and, for the layered film, the oxide thickness d per face (nm): positive by construction
(section 2: "Use box bounds or log-parameters"), with box bounds on the logarithms.

Objective (section 3.1): the Poisson deviance D = 2 sum_i [mu_i - y_i + y_i ln(y_i/mu_i)]
(y ln y = 0 at y = 0; negative SSD values, which a deconvolved SSD can have, count as 0). Step:
Fisher scoring with Marquardt damping, (J^T W J + lambda diag(J^T W J)) delta = -J^T (1 - y/mu),
W = 1/mu, a batched solve of P x P systems (P <= 12); per pixel lambda x 0.3 on accept and x 10 on
reject through masks: no host syncs, a fixed number of iterations (section 3.2). The Jacobian
uses the shortcut of section 3.2: d mu/d p_k = Im[G'(eps) d eps/d p_k] with G' one complex
derivative of the film model (analytic for the coupled film) and d eps/d ln p analytic
(:func:`eelsgpu.kernels.oscillators.eps_and_derivatives`).

Covariance (section 3.5): C = (J^T W J)^-1 at the optimum (log parameters; sigma_p = p
sqrt(C_pp)), also reported as C max(1, D/dof); eps1, eps2 sigmas by the delta method.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels import film
>>> lo = np.arange(6.0, 30.0, 0.2)
>>> fm = fit_model(lo, lo + 0.2, 200.0, 100.0, kind="coupled", n_oscillators=0)
>>> truth = np.log(np.array([[20.0, 15.0, 1.0]]))
>>> mu = model_counts(np, fm, truth, np.array([1e6]))[0]
>>> res = lm_fit(np, fm, mu, np.array([1e6]), truth + 0.1, iterations=12)
>>> bool(np.allclose(np.exp(res.p_log), [[20.0, 15.0, 1.0]], rtol=1e-5))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._xp import is_numpy
from . import film as F
from .oscillators import eps_and_derivatives

__all__ = [
    "FitModel",
    "FitResult",
    "covariance",
    "deviance",
    "deviance_inflation",
    "eps_sigma",
    "fit_model",
    "lm_fit",
    "model_counts",
    "parameter_names",
]

#: Box bounds on the parameters (their units), applied to the logarithms.
BOUNDS = {
    "thickness_nm": (0.3, 3000.0),
    "plasmon_energy_eV": (0.5, 100.0),
    "damping_eV": (0.005, 30.0),
    "energy_eV": (0.05, 150.0),
    "strength_eV2": (1e-3, 1e5),
    "width_eV": (0.005, 60.0),
    "oxide_nm": (0.05, 30.0),
}


#: The angular rules of :func:`fit_model` (arguments of :func:`eelsgpu.kernels.film.film_setup`).
RULES = {
    "fast": {"panels_per_decade": 2.0, "core_panels_per_decade": 4.0, "order": 6},
    "fine": {"panels_per_decade": 4.0, "core_panels_per_decade": 8.0, "order": 8},
}


def parameter_names(n_oscillators: int, *, drude: bool = True, oxide: bool = False) -> list[str]:
    """The fitted parameters in order: thickness, Drude Ep and Gamma, oscillators j = 1..n
    (energy, strength, width), oxide thickness.

    >>> parameter_names(1, oxide=True)  # doctest: +NORMALIZE_WHITESPACE
    ['thickness_nm', 'plasmon_energy_eV', 'damping_eV', 'osc1_energy_eV', 'osc1_strength_eV2',
     'osc1_width_eV', 'oxide_nm']
    """
    names = ["thickness_nm"]
    if drude:
        names += ["plasmon_energy_eV", "damping_eV"]
    for j in range(1, n_oscillators + 1):
        names += [f"osc{j}_energy_eV", f"osc{j}_strength_eV2", f"osc{j}_width_eV"]
    if oxide:
        names.append("oxide_nm")
    return names


def _bound_of(name: str) -> tuple[float, float]:
    for key, b in BOUNDS.items():
        if name.endswith(key):
            return b
    raise KeyError(name)


@dataclass(frozen=True)
class FitModel:
    """The pixel-independent part of a fit (host arrays; :meth:`FilmSetup.on` moves them).

    ``setup`` the film model on the energy nodes; ``matrix`` (NE, NC) channel integration
    (with the resolution kernel); ``names`` the parameters; ``lower``/``upper`` their log
    bounds; ``fixed`` (E, f, Gamma) arrays of the fixed oscillators (section 2: those outside
    the window); ``eps_oxide`` (NE,) the fixed oxide eps of a layered film (None otherwise);
    ``oxide_nm`` the fixed oxide thickness when not fitted.
    """

    setup: F.FilmSetup
    matrix: np.ndarray
    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    n_oscillators: int
    drude: bool
    fixed: tuple[np.ndarray, np.ndarray, np.ndarray]
    eps_oxide: np.ndarray | None
    oxide_fitted: bool
    oxide_nm: float
    channel_lo: np.ndarray
    channel_hi: np.ndarray
    chunk: int | None = None
    theta_nodes: int = 1

    @property
    def n_params(self) -> int:
        return len(self.names)

    @property
    def energy_eV(self) -> np.ndarray:
        return self.setup.energy_eV

    def on(self, xp: Any, name: str) -> Any:
        """Host arrays of the fit (matrix, bounds, fixed oscillators) in namespace ``xp``."""
        key = (xp.__name__, "fit:" + name)
        cache = self.setup.device
        if key not in cache:
            value = {
                "matrix": self.matrix,
                "lower": self.lower,
                "upper": self.upper,
                "fixed_e": self.fixed[0],
                "fixed_f": self.fixed[1],
                "fixed_g": self.fixed[2],
                "eps_oxide": self.eps_oxide,
            }[name]
            cache[key] = xp.asarray(np.ascontiguousarray(value))
        return cache[key]


def fit_model(
    channel_lo_eV: Any,
    channel_hi_eV: Any,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    *,
    kind: str = "coupled",
    retarded: bool = False,
    n_oscillators: int = 0,
    drude: bool = True,
    fixed_oscillators: Any = (),
    eps_oxide: Any = None,
    oxide_nm: float | None = None,
    fit_oxide: bool = False,
    resolution_fwhm_eV: float = 0.0,
    convergence_angle_mrad: float = 0.0,
    cutoff_mrad: float | None = None,
    n_sub: int = 2,
    d_min_nm: float | None = None,
    rule: str = "fast",
    chunk: int | None = None,
) -> FitModel:
    """Build the pixel-independent part of a fit on the channels [lo, hi] (eV).

    ``kind``/``retarded`` as :func:`eelsgpu.kernels.film.film_setup`; ``fixed_oscillators`` a
    sequence of (E eV, f eV^2, Gamma eV) held fixed; ``eps_oxide`` a callable E -> eps of the
    oxide (``layered``: default the notes' Lorentz oxide, 13 eV, f = 2.2 x 13^2, Gamma 6 eV);
    ``oxide_nm`` its thickness when not fitted; ``resolution_fwhm_eV`` the Gaussian the SSD
    carries (0: none); ``n_sub`` Gauss-Legendre nodes per channel (2: 4e-5 of the peak on a 0.6 eV
    wide plasmon at 0.1 eV channels; 1: the channel centres with the quadratic rule of
    :func:`eelsgpu.kernels.film.centre_channel_matrix`, 5e-4, half the cost); ``rule`` the angular rule: ``"fast"`` (2 / 4 panels per decade,
    6 nodes: about 156 nodes per energy, 2e-6 from a 12-node rule on Al films 5-100 nm, Gamma
    0.1-1 eV) or ``"fine"`` (the production rule of :func:`eelsgpu.kernels.film.angular_rule`,
    used for the ``QUADRATURE`` check); ``chunk`` pixels per model evaluation (None: on
    NumPy as many as keep the (rows, energy nodes, theta nodes) temporaries within
    :data:`CACHE_ELEMENTS`, e.g. 2 rows at 1 node per 0.1 eV channel and 1 row at 2 nodes; on
    other namespaces -- a GPU -- all rows at once).
    """
    lo = np.asarray(channel_lo_eV, dtype=np.float64)
    hi = np.asarray(channel_hi_eV, dtype=np.float64)
    width = float(np.median(hi - lo))
    sigma = float(resolution_fwhm_eV) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    n_pad = int(math.ceil(4.0 * sigma / width)) if sigma > 0 else 0
    # nodes extend 4 sigma beyond the fitted channels so the convolution at the edges is complete
    pad_lo = lo[0] - width * np.arange(n_pad, 0, -1)
    pad_hi = hi[-1] + width * np.arange(n_pad)
    all_lo = np.concatenate([pad_lo, lo, pad_hi])
    keep = all_lo > 0.05
    all_lo = all_lo[keep]
    all_hi = all_lo + np.concatenate([np.full(n_pad, width), hi - lo, np.full(n_pad, width)])[keep]
    nodes, weights, _ = F.channel_nodes(all_lo, all_hi, n_sub)
    oxide = kind == "layered"
    if d_min_nm is None:
        d_min_nm = 1.0 if oxide else 2.0
    setup = F.film_setup(
        nodes,
        beam_energy_keV,
        collection_angle_mrad,
        kind=kind,
        retarded=retarded,
        convergence_angle_mrad=convergence_angle_mrad,
        cutoff_mrad=cutoff_mrad,
        d_min_nm=d_min_nm,
        **RULES[rule],
    )
    if n_sub == 1:
        # one node per channel: the model between the centres by quadratics (the corrected
        # midpoint rule, 15x closer than the bare midpoint on a sharp plasmon)
        matrix = F.centre_channel_matrix(
            all_lo, all_hi, lo, hi, max(resolution_fwhm_eV, 0.0), points=5
        )
    else:
        matrix = F.channel_matrix(
            np, nodes, weights, lo, hi, None if sigma <= 0 else np.array([resolution_fwhm_eV])
        )[0]
    names = parameter_names(n_oscillators, drude=drude, oxide=oxide and fit_oxide)
    bounds = np.log(np.array([_bound_of(n) for n in names]))
    fx = np.asarray(fixed_oscillators, dtype=np.float64).reshape(-1, 3)
    eo = None
    if oxide:
        fn = eps_oxide or (lambda e: 1.0 + 2.2 * 169.0 / (169.0 - e**2 - 6j * e))
        eo = np.asarray(fn(nodes), dtype=np.complex128)
    # theta nodes per energy node: fixed by the rule and the kind's pole panels, not by eps
    nq = 1
    if setup.rule is not None:
        probe_eps = np.full((1, nodes.size), -1.0 + 1.0j)
        probe_ox = None if eo is None else eo[None, :]
        nq = int(
            F.film_nodes(np, setup, probe_eps, np.array([20.0]), eps_oxide=probe_ox)[0].shape[-1]
        )
    return FitModel(
        setup,
        matrix,
        tuple(names),
        bounds[:, 0].copy(),
        bounds[:, 1].copy(),
        int(n_oscillators),
        bool(drude),
        (fx[:, 0].copy(), fx[:, 1].copy(), fx[:, 2].copy()),
        eo,
        bool(oxide and fit_oxide),
        float(oxide_nm if oxide_nm is not None else 2.5),
        lo,
        hi,
        chunk,
        nq,
    )


def _split(xp: Any, fm: FitModel, p: Any) -> dict[str, Any]:
    """The (B,) parameters of p_log (B, P), exponentiated, by role."""
    v = xp.exp(p)
    out = {"t": v[:, 0]}
    k = 1
    b = p.shape[0]
    if fm.drude:
        out["ep"], out["gd"] = v[:, 1], v[:, 2]
        k = 3
    else:
        out["ep"] = xp.zeros((b,), dtype=p.dtype)
        out["gd"] = xp.ones((b,), dtype=p.dtype)
    n = fm.n_oscillators
    if n:
        osc = xp.reshape(v[:, k : k + 3 * n], (b, n, 3))
        out["e_j"], out["f_j"], out["g_j"] = osc[:, :, 0], osc[:, :, 1], osc[:, :, 2]
    else:
        z = xp.zeros((b, 0), dtype=p.dtype)
        out["e_j"] = out["f_j"] = out["g_j"] = z
    k += 3 * n
    out["d"] = v[:, k] if fm.oxide_fitted else None
    return out


def film_eps(xp: Any, fm: FitModel, p_log: Any, energy_eV: Any = None) -> tuple[Any, Any]:
    """eps (B, NE) of the parametric model on the nodes (or ``energy_eV``) and d eps/d p_log
    (B, P, NE) (zero columns for t and d, which eps does not depend on)."""
    q = _split(xp, fm, p_log)
    e = fm.setup.on(xp, "energy_eV") if energy_eV is None else energy_eV
    eps, d = eps_and_derivatives(xp, e, q["ep"], q["gd"], q["e_j"], q["f_j"], q["g_j"])
    if fm.fixed[0].size:
        fe, ff, fg = fm.on(xp, "fixed_e"), fm.on(xp, "fixed_f"), fm.on(xp, "fixed_g")
        ee = e[None, :]
        eps = (
            eps
            + xp.sum(ff[:, None] / (fe[:, None] ** 2 - ee * ee - 1j * fg[:, None] * ee), axis=0)[
                None, :
            ]
        )
    if not fm.drude:
        d = d[:, 2:, :]
    zero = 0.0 * d[:, :1, :]
    cols = [zero, d]
    if fm.oxide_fitted:
        cols.append(zero)
    return eps, xp.concat(cols, axis=1)


def model_counts(
    xp: Any,
    fm: FitModel,
    p_log: Any,
    n0: Any,
    *,
    jacobian: bool = False,
    parts: bool = False,
) -> Any:
    """mu (B, NC): the model's counts per channel (N0 times the channel integrals of dP/dE).

    With ``jacobian``: (mu, J) with J (B, P, NC) = d mu / d p_log. With ``parts``: (mu, bulk,
    oxide, surface) counts per channel. ``fm.chunk`` rows at a time (host CPUs: the (rows, NE,
    nodes) temporaries then stay in cache, twice as fast; None on a GPU: all rows at once).
    """
    b = p_log.shape[0]
    step = _rows_per_call(xp, fm, b)
    if step < b:
        outs = [
            _model_counts(
                xp, fm, p_log[i : min(i + step, b), ...], n0[i : min(i + step, b)], jacobian, parts
            )
            for i in range(0, b, step)
        ]
        if not (jacobian or parts):
            return xp.concat(outs, axis=0)
        return tuple(xp.concat([o[k] for o in outs], axis=0) for k in range(len(outs[0])))
    return _model_counts(xp, fm, p_log, n0, jacobian, parts)


#: Elements of one (rows, energy nodes, theta nodes) float64 temporary on a host CPU: 64 Ki
#: (512 KiB) keeps the model's ~60 passes over them in the L2 cache (measured, 0.1 eV channels
#: 4.5-25 eV, 156 theta nodes: 1 row at 2 nodes per channel 7.9 ms per pixel and evaluation
#: against 15.2 ms for 2 rows; 2 rows at 1 node 3.6 ms against 4.0 for 1 and 4.2 for 4).
CACHE_ELEMENTS = 1 << 16


def _rows_per_call(xp: Any, fm: FitModel, b: int) -> int:
    """Pixels per model evaluation: ``fm.chunk`` when given; on NumPy as many as keep the
    temporaries within :data:`CACHE_ELEMENTS`; elsewhere (a GPU) all ``b``."""
    if fm.chunk is not None:
        return int(fm.chunk)
    if not is_numpy(xp):
        return b
    per_row = len(fm.setup.energy_eV) * fm.theta_nodes
    return max(1, CACHE_ELEMENTS // per_row)


def _model_counts(xp: Any, fm: FitModel, p_log: Any, n0: Any, jacobian: bool, parts: bool) -> Any:
    q = _split(xp, fm, p_log)
    eps, deps = film_eps(xp, fm, p_log)
    eo = None
    d = None
    if fm.setup.kind == "layered":
        eo = xp.broadcast_to(fm.on(xp, "eps_oxide")[None, :], eps.shape)
        d = q["d"] if fm.oxide_fitted else fm.oxide_nm + 0.0 * q["t"]
    # the oxide's eps is fixed: no derivative in it; in d only where d is fitted
    r = F.film_response(
        xp,
        fm.setup,
        eps,
        q["t"],
        eps_oxide=eo,
        oxide_nm=d,
        derivatives=jacobian,
        oxide_derivatives=(False, fm.oxide_fitted),
    )
    m = fm.on(xp, "matrix")
    scale = (n0 / fm.setup.beam.prefactor_nm_eV)[:, None]
    mu = scale * (xp.imag(r.loss.total) @ m)
    if parts:
        return (
            mu,
            scale * (xp.imag(r.loss.bulk) @ m),
            scale * (xp.imag(r.loss.oxide) @ m),
            scale * (xp.imag(r.loss.surface) @ m),
        )
    if not jacobian:
        return mu
    # d mu / d ln p = scale Im[G' d eps/d ln p] M; t and d: scale Im[dG/dt] t M
    g = xp.imag(r.d_eps[:, None, :] * deps)
    cols = [xp.imag(r.d_t) * q["t"][:, None]]
    n_eps = deps.shape[1] - 1 - int(fm.oxide_fitted)
    cols.append(None)  # placeholder for the eps columns
    if fm.oxide_fitted:
        cols.append(xp.imag(r.d_oxide) * q["d"][:, None])
    first = cols[0][:, None, :]
    mid = g[:, 1 : 1 + n_eps, :]
    stack = [first, mid]
    if fm.oxide_fitted:
        stack.append(cols[2][:, None, :])
    jac = xp.concat(stack, axis=1)
    jac = scale[:, :, None] * xp.matmul(jac, m)
    return mu, jac


def deviance(xp: Any, y: Any, mu: Any, mask: Any = None) -> Any:
    """Poisson deviance per row, 2 sum [mu - y + y ln(y/mu)] (y < 0 counts as 0)."""
    yy = xp.maximum(y, 0.0)
    mu = xp.maximum(mu, 1e-300)
    term = mu - yy + xp.where(yy > 0, yy * xp.log(xp.where(yy > 0, yy, 1.0) / mu), 0.0)
    if mask is not None:
        term = term * mask
    return 2.0 * xp.sum(term, axis=-1)


class FitResult(NamedTuple):
    """A batched fit: ``p_log`` (B, P), ``deviance`` (B,), ``mu`` (B, NC), ``jac`` (B, P, NC)
    at the optimum, ``hessian`` J^T W J (B, P, P), ``predicted_decrease`` (B,) the deviance a
    further Gauss-Newton step would still gain (convergence test), ``at_bound`` (B,) bool."""

    p_log: Any
    deviance: Any
    mu: Any
    jac: Any
    hessian: Any
    predicted_decrease: Any
    at_bound: Any


def _normal(xp, y, mu, jac):
    w = 1.0 / xp.maximum(mu, 1e-300)
    jw = jac * w[:, None, :]
    h = xp.matmul(jw, xp.permute_dims(jac, (0, 2, 1)))
    g = xp.sum(jac * (1.0 - xp.maximum(y, 0.0) * w)[:, None, :], axis=-1)
    return h, g


def lm_fit(
    xp: Any,
    fm: FitModel,
    y: Any,
    n0: Any,
    p0_log: Any,
    *,
    iterations: int = 30,
    damping: float = 1e-3,
) -> FitResult:
    """Levenberg-Marquardt on the Poisson deviance, ``iterations`` fixed steps for every row.

    Parameters
    ----------
    xp : namespace
    fm : FitModel
    y : array (B, NC)
        Counts per channel of the fitted channels (the SSD).
    n0 : array (B,)
        ZLP counts N0.
    p0_log : array (B, P)
        Starting parameters (logarithms of :attr:`FitModel.names`' values).

    Returns
    -------
    FitResult
    """
    lower = fm.on(xp, "lower")
    upper = fm.on(xp, "upper")
    p = xp.clip(p0_log, lower, upper)
    mu, jac = model_counts(xp, fm, p, n0, jacobian=True)
    dev = deviance(xp, y, mu)
    lam = damping + 0.0 * dev
    n_p = p.shape[1]
    eye = xp.eye(n_p, dtype=p.dtype)
    for _ in range(int(iterations)):
        h, g = _normal(xp, y, mu, jac)
        diag = xp.sum(h * eye, axis=-1)
        a = h + (lam[:, None, None] * diag[:, None, :]) * eye + 1e-12 * eye
        step = -xp.linalg.solve(a, g[:, :, None])[:, :, 0]
        # at most a factor e per step in any parameter (log space), and inside the bounds
        big = xp.max(xp.abs(step), axis=-1)
        step = step / xp.maximum(big, 1.0)[:, None]
        trial = xp.clip(p + step, lower, upper)
        mu_t, jac_t = model_counts(xp, fm, trial, n0, jacobian=True)
        dev_t = deviance(xp, y, mu_t)
        ok = xp.isfinite(dev_t) & (dev_t <= dev)
        p = xp.where(ok[:, None], trial, p)
        mu = xp.where(ok[:, None], mu_t, mu)
        jac = xp.where(ok[:, None, None], jac_t, jac)
        dev = xp.where(ok, dev_t, dev)
        lam = xp.where(ok, xp.maximum(lam * 0.3, 1e-9), xp.minimum(lam * 10.0, 1e9))
    h, g = _normal(xp, y, mu, jac)
    a = h + 1e-12 * eye
    newton = xp.linalg.solve(a, g[:, :, None])[:, :, 0]
    # deviance = 2 x (half-deviance): a Gauss-Newton step gains about g^T H^-1 g
    predicted = xp.sum(g * newton, axis=-1)
    at_bound = xp.any((p <= lower + 1e-9) | (p >= upper - 1e-9), axis=-1)
    return FitResult(p, dev, mu, jac, h, predicted, at_bound)


def deviance_inflation(xp: Any, deviance: Any, dof: float) -> Any:
    """max(D / dof, 1) per pixel: the factor by which the fit's quoted covariance exceeds the
    Poisson one (data not in counts, an unknown gain, a model that misses the data); never below
    the counting noise."""
    return xp.maximum(deviance / dof, xp.ones_like(deviance))


def covariance(xp: Any, hessian: Any) -> Any:
    """C = (J^T W J)^-1 (B, P, P) of the log parameters (section 3.5)."""
    n_p = hessian.shape[-1]
    eye = xp.eye(n_p, dtype=hessian.dtype)
    return xp.linalg.solve(hessian + 1e-300 * eye, xp.broadcast_to(eye, hessian.shape))


def eps_sigma(xp: Any, fm: FitModel, p_log: Any, cov: Any, energy_eV: Any) -> tuple[Any, ...]:
    """eps (B, NE) on ``energy_eV`` and sigma(eps1), sigma(eps2) by the delta method:
    sigma^2 = g^T C g with g = d eps/d ln p (section 3.5)."""
    eps, d = film_eps(xp, fm, p_log, energy_eV)
    out = []
    for part in (xp.real(d), xp.imag(d)):
        cg = xp.matmul(cov, part)
        out.append(xp.sqrt(xp.maximum(xp.sum(part * cg, axis=1), 0.0)))
    return eps, out[0], out[1]


# --------------------------------------------------------------------------- the flags
#: The film fit's own per-pixel flags (thin-film-theory.md section 3.5): name -> (bit, fatal,
#: meaning). A result carries them as ``fit_flags`` (uint32); ``valid`` needs no fatal one. At the
#: merge they become bits 14-23 of :mod:`eelsgpu.kernels.quality` (same order).
FIT_BITS: dict[str, tuple[int, bool, str]] = {
    "FIT_NOT_CONVERGED": (1 << 0, True, "still gains deviance at the last step, or no finite fit"),
    "FIT_AT_BOUND": (1 << 1, False, "a parameter ended on its box bound"),
    "FIT_NON_UNIQUE": (1 << 2, False, "another start fits as well (delta D < 2), > 3 sigma away"),
    "FIT_BAD": (1 << 3, False, "reduced deviance > 2: the model misses the data"),
    "CERENKOV_NO_RETARDATION": (1 << 4, True, "eps1 > 1/beta_v^2 fitted without retardation"),
    "THIN_UNCOUPLED": (1 << 5, False, "t < 2 v/omega_p fitted with eq. 36's uncoupled surfaces"),
    "METAL_LOW_E_NO_RETARDATION": (1 << 6, False, "a metal fitted below 8 eV without retardation"),
    "OSCILLATOR_OUTSIDE_WINDOW": (1 << 7, False, "an oscillator outside the window (fixed)"),
    "QUADRATURE": (
        1 << 8,
        False,
        "the fine rule (angles, and channel nodes) moves a channel or a parameter by > 0.3 sigma",
    ),
    "BETA_EXCEEDS_CUTOFF": (1 << 9, False, "collection angle beyond the plasmon cut-off q_c/k0"),
}
FIT_FATAL: int = sum(b for b, fatal, _ in FIT_BITS.values() if fatal)


def fit_flag_names(mask: int) -> list[str]:
    """Names of the film-fit flags set in ``mask``.

    >>> fit_flag_names(FIT_BITS["FIT_BAD"][0] | FIT_BITS["QUADRATURE"][0])
    ['FIT_BAD', 'QUADRATURE']
    """
    return [n for n, (b, _, _) in FIT_BITS.items() if int(mask) & b]


class PixelFit(NamedTuple):
    """The best of the starts per pixel: ``p_log`` (B, P), ``cov`` (B, P, P) of the log
    parameters, ``deviance`` (B,), ``dof`` (int), ``mu`` (B, NC) the model counts, ``flags``
    (B,) uint32 of :data:`FIT_BITS`, ``start_deviance`` (S, B) every start's deviance."""

    p_log: Any
    cov: Any
    deviance: Any
    dof: int
    mu: Any
    flags: Any
    start_deviance: Any


def seed_from_ssd(xp: Any, fm: FitModel, y: Any, n0: Any, oscillators: Any = ()) -> Any:
    """Starting parameters (B, P) of log values from the SSD alone (vector ops, no host sync).

    Ep: the energy of the largest channel (the loss peak of a Drude metal sits at
    sqrt(Ep^2 - Gamma^2/2), within a few per cent); Gamma: the loss peak's FWHM from the number of
    channels above half its height; t: eq. 26 over the window with Re[1/eps(0)] = 0
    (t = 2 a0 m0 v^2 / N0 sum y / (E ln(1 + beta^2/theta_E^2))); oscillators from ``oscillators``
    ((E, f, Gamma) each, eV, eV^2, eV) or spread over the window; oxide 2.5 nm.
    """
    lo = xp.asarray(fm.channel_lo)
    hi = xp.asarray(fm.channel_hi)
    e = 0.5 * (lo + hi)
    width = hi - lo
    beam = fm.setup.beam
    th_e = beam.theta_e(e)
    beta = math.asin(fm.setup.u_max)
    ang = xp.log(1.0 + beta * beta / (th_e * th_e))
    yy = xp.maximum(y, 0.0)
    j = xp.sum(yy / (e * ang), axis=-1)
    # t = pi a0 m0 v^2 (2/pi) J / N0 (eq. 26 with Re[1/eps(0)] = 0; J in counts/eV^... per eV)
    t = 2.0 * (math.pi * F.physics.BOHR_RADIUS_NM * beam.m0v2_eV) / math.pi * j / n0
    t = xp.clip(t, 1.0, 1000.0)
    cols = [xp.log(t)]
    if fm.drude:
        top = xp.max(yy, axis=-1)
        idx = xp.argmax(yy, axis=-1)
        ep = xp.take(e, idx)
        above = xp.sum(xp.astype(yy > 0.5 * top[:, None], e.dtype) * width, axis=-1)
        cols += [xp.log(xp.clip(ep, 1.0, 90.0)), xp.log(xp.clip(above, 0.05, 20.0))]
    n = fm.n_oscillators
    osc = list(oscillators)
    span_lo, span_hi = float(fm.channel_lo[0]), float(fm.channel_hi[-1])
    for k in range(n):
        if k < len(osc):
            ej, fj, gj = (float(v) for v in osc[k])
        else:
            ej = span_lo + (k + 1) * (span_hi - span_lo) / (n + 1)
            fj, gj = 0.2 * ej * ej, 2.0
        cols += [math.log(ej) + 0.0 * t, math.log(fj) + 0.0 * t, math.log(gj) + 0.0 * t]
    if fm.oxide_fitted:
        cols.append(math.log(2.5) + 0.0 * t)
    return xp.stack(cols, axis=-1)


def _jitter(xp: Any, fm: FitModel, p: Any, factor: float) -> Any:
    """Multiply t, Ep and Gamma_D (or the first oscillator's E, Gamma) by ``factor``."""
    cols = [0, 1, 2] if fm.drude else [0] + ([1, 3] if fm.n_oscillators else [])
    shift = [math.log(factor) if k in cols else 0.0 for k in range(p.shape[1])]
    return p + xp.asarray(shift, dtype=p.dtype)[None, :]


def fit_pixels(
    xp: Any,
    fm: FitModel,
    y: Any,
    n0: Any,
    seeds_log: Any,
    *,
    iterations: int = 20,
    start_iterations: int = 6,
    jitter: float = 0.2,
    fine: FitModel | None = None,
) -> PixelFit:
    """Fit every pixel from its seed and two jittered starts (x (1 +- ``jitter``) on t, Ep,
    Gamma: section 2), keep the best deviance, and set the flags of section 3.5. All starts run
    ``start_iterations`` steps, the best continues to ``iterations`` in all.

    Parameters
    ----------
    xp : namespace
    fm : FitModel
    y : array (B, NC)
        The SSD (counts per channel) on the fitted channels.
    n0 : array (B,)
        ZLP counts.
    seeds_log : array (B, P)
        Starting log parameters (e.g. :func:`seed_from_ssd`).
    fine : FitModel, optional
        The same model with the fine angular rule: the ``QUADRATURE`` check.

    Returns
    -------
    PixelFit
    """
    b, n_p = seeds_log.shape
    starts = [seeds_log]
    if jitter > 0:
        starts += [
            _jitter(xp, fm, seeds_log, 1.0 + jitter),
            _jitter(xp, fm, seeds_log, 1.0 - jitter),
        ]
    s = len(starts)
    # every start runs ``start_iterations`` steps; the best of them per pixel then runs the rest
    # (fixed counts: no host sync; half the cost of running every start to the end)
    first = min(int(start_iterations), int(iterations)) if s > 1 else int(iterations)
    res = lm_fit(
        xp,
        fm,
        xp.concat([y] * s, axis=0),
        xp.concat([n0] * s, axis=0),
        xp.concat(starts, axis=0),
        iterations=first,
    )
    dev = xp.reshape(res.deviance, (s, b))
    dev = xp.where(xp.isfinite(dev), dev, xp.inf)
    best = xp.argmin(dev, axis=0)
    pick = xp.arange(s)[:, None] == best[None, :]  # (S, B)

    def choose(a: Any) -> Any:
        a = xp.reshape(a, (s, b) + tuple(a.shape[1:]))
        m = xp.reshape(pick, (s, b) + (1,) * (a.ndim - 2))
        return xp.sum(xp.where(m, a, 0.0 * a), axis=0)

    p = choose(res.p_log)
    if s > 1 and iterations > first:
        res_b = lm_fit(xp, fm, y, n0, p, iterations=int(iterations) - first)
        p, mu, hess, d_best = res_b.p_log, res_b.mu, res_b.hessian, res_b.deviance
        jac = res_b.jac
        predicted = res_b.predicted_decrease
        at_bound = res_b.at_bound
        # the other starts' end points (for non-uniqueness) stay those of the start phase
        dev = xp.where(pick, d_best[None, :], dev)
    else:
        mu = choose(res.mu)
        jac = choose(res.jac)
        hess = choose(res.hessian)
        d_best = xp.min(dev, axis=0)
        predicted = choose(res.predicted_decrease)
        at_bound = choose(xp.astype(res.at_bound, p.dtype)) > 0.5
    cov = covariance(xp, hess)
    sig = xp.sqrt(xp.maximum(xp.sum(cov * xp.eye(n_p, dtype=p.dtype), axis=-1), 0.0))
    n_c = y.shape[-1]
    dof = max(n_c - n_p, 1)
    flags = xp.zeros((b,), dtype=xp.uint32)

    def flag(cond: Any, name: str) -> Any:
        return xp.where(cond, flags | FIT_BITS[name][0], flags)

    # converged: a further Gauss-Newton step would gain < 0.01 in deviance (about 1e-4 sigma^2)
    flags = flag(~xp.isfinite(d_best) | ~(predicted < 0.01), "FIT_NOT_CONVERGED")
    flags = flag(at_bound, "FIT_AT_BOUND")
    p_all = xp.reshape(res.p_log, (s, b, n_p))
    far = xp.any(xp.abs(p_all - p[None, :, :]) > 3.0 * sig[None, :, :], axis=-1)
    # the other starts only (the best one's stored point is that of the start phase)
    close = ((dev - d_best[None, :]) < 2.0) & ~pick
    flags = flag(xp.any(far & close, axis=0), "FIT_NON_UNIQUE")
    flags = flag(d_best / dof > 2.0, "FIT_BAD")
    flags = _physics_flags(xp, fm, p, flags)
    if not fm.setup.retarded:
        # an NR fit to Cerenkov data invents a metal (section 1.5 (i), T4): the start (the classic
        # KK eps) shows eps1 > 1/beta_v^2 even where the fitted eps no longer does
        eps0, _ = film_eps(xp, fm, seeds_log)
        cer = xp.any(xp.real(eps0) > fm.setup.beam.cerenkov_eps1, axis=-1)
        flags = flag(cer, "CERENKOV_NO_RETARDATION")
    if fine is not None:
        mu_f = model_counts(xp, fine, p, n0)
        # against the noise the results quote: Poisson scaled by the reduced deviance where it
        # exceeds 1 (data not in counts, an unknown gain: blocks_film scales the sigmas so)
        inflate = deviance_inflation(xp, d_best, dof)[:, None]
        moved = xp.any(xp.abs(mu_f - mu) > 0.3 * xp.sqrt(xp.maximum(mu, 1.0) * inflate), axis=-1)
        # small per channel, a change can still move a parameter coherently: the fine model's
        # fit would sit a Gauss-Newton step away, dp = C J W (mu - mu_fine) (W = 1/mu, the
        # Poisson weights of the fit's normal equations)
        g_diff = xp.sum(jac * ((mu - mu_f) / xp.maximum(mu, 1e-300))[:, None, :], axis=-1)
        dp = xp.matmul(cov, g_diff[:, :, None])[:, :, 0]
        shifted = xp.any(xp.abs(dp) > 0.3 * sig * xp.sqrt(inflate), axis=-1)
        flags = flag(moved | shifted, "QUADRATURE")
    return PixelFit(p, cov, d_best, dof, mu, flags, dev)


def _physics_flags(xp: Any, fm: FitModel, p: Any, flags: Any) -> Any:
    """The model-choice flags of section 3.5 (Cerenkov, thin uncoupled, low-E metal, oscillators
    outside the window, the plasmon cut-off)."""
    setup = fm.setup
    beam = setup.beam
    q = _split(xp, fm, p)
    lo, hi = float(fm.channel_lo[0]), float(fm.channel_hi[-1])

    def flag(cond: Any, name: str) -> Any:
        return xp.where(cond, flags | FIT_BITS[name][0], flags)

    if not setup.retarded:
        eps, _ = film_eps(xp, fm, p)
        flags = flag(xp.any(xp.real(eps) > beam.cerenkov_eps1, axis=-1), "CERENKOV_NO_RETARDATION")
    ep_tot2 = q["ep"] ** 2 + xp.sum(q["f_j"], axis=-1)
    ep_tot = xp.sqrt(ep_tot2 + float(fm.fixed[1].sum()))
    if setup.kind == "eq36" and fm.drude:
        # 2 v / omega_p in nm: 2 hbar v / Ep with hbar v = hbar c beta_v
        hbar_v = F.physics.HBAR_C_EV_NM * math.sqrt(beam.beta_v2)
        flags = flag(q["t"] < 2.0 * hbar_v / ep_tot, "THIN_UNCOUPLED")
    if fm.drude and not setup.retarded and lo < 8.0:
        flags = flag(q["t"] > 0.0, "METAL_LOW_E_NO_RETARDATION")
    outside = q["t"] < 0.0
    if fm.fixed[0].size:
        outside = q["t"] > 0.0
    if fm.n_oscillators:
        outside = outside | xp.any((q["e_j"] < lo) | (q["e_j"] > hi), axis=-1)
    flags = flag(outside, "OSCILLATOR_OUTSIDE_WINDOW")
    if fm.drude and setup.u_cut >= setup.u_max:
        from .oscillators import free_electron_cutoff_per_nm

        theta_c = free_electron_cutoff_per_nm(q["ep"]) / beam.k0_per_nm
        flags = flag(theta_c < math.asin(setup.u_max), "BETA_EXCEEDS_CUTOFF")
    return flags
