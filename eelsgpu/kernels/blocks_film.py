"""The film fit as a block kernel: :func:`eelsgpu.fit_dielectric` mapped over pixel blocks by the
engine (dask, stores, a GPU) like the other analyses (thin-film-theory.md sections 2-3).

Each block's SSDs are summed to the fit's channels, seeded (from the SSD, or from the classic KK
result's plasmon energy and thickness where given), fitted by the batched Levenberg-Marquardt of
:func:`eelsgpu.kernels.film_fit.fit_pixels`, and the fit's eps with sigma, parameters with sigma,
n_eff (f-sum rule), reduced deviance, flags and model spectrum are returned per pixel. A pixel
with non-finite counts or N0 <= 0 is fitted on a stand-in (so the batch keeps its shape, no host
sync) and returned as NaN with FIT_NOT_CONVERGED.

Examples
--------
>>> decl = film_declaration(("thickness_nm", "plasmon_energy_eV", "damping_eV"),
...                         energy_eV=[1.0, 2.0], energy_fit_eV=[4.05, 4.15])
>>> [o.name for o in decl.outputs_for({})][:4]
['eps1', 'eps2', 'loss_function', 'eps1_sigma']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._xp import array_namespace
from . import film_fit as FF
from .declare import BlockKernel, Output
from .oscillators import n_eff_per_nm3

__all__ = ["FILM_PARTS", "film_declaration", "film_kernel"]

#: The model spectrum and its parts on ``energy_fit`` (counts per fitted channel).
FILM_PARTS: tuple[str, ...] = ("data", "model", "model_bulk", "model_oxide", "model_surface")

_UNITS = {"_nm": "nm", "_eV": "eV", "_eV2": "eV^2"}


def _unit(name: str) -> str:
    return next((u for end, u in _UNITS.items() if name.endswith(end)), "")


def film_kernel(
    block: Any,
    energy_eV: Any,
    *,
    zlp_intensity: Any,
    fm: FF.FitModel,
    fine: FF.FitModel | None,
    channels: Any,
    bin_width: int,
    energy_out_eV: Any,
    oscillators: Sequence[Sequence[float]] = (),
    fixed_strength_eV2: float = 0.0,
    iterations: int = 20,
    jitter: float = 0.2,
    kk_plasmon_energy_eV: Any = None,
    kk_thickness_nm: Any = None,
) -> dict[str, Any]:
    """Fit a block (B, E) of SSDs (counts per channel on ``energy_eV``, eV) with N0
    ``zlp_intensity`` (B,): ``channels`` (NC * ``bin_width``,) the indices summed to the NC fitted
    channels of ``fm``; eps on ``energy_out_eV`` (eV). Returns the maps and cubes of
    :func:`film_declaration` (thin-film-theory.md sections 2-3.5)."""
    xp = array_namespace(block)
    # one row per spectrum whatever the engine's block shape (a lone spectrum comes as (1, 1, E))
    raw = xp.reshape(xp.astype(block, xp.float64), (-1, block.shape[-1]))
    b = raw.shape[0]
    nc = len(fm.channel_lo)
    y = xp.sum(xp.reshape(xp.take(raw, channels, axis=-1), (b, nc, bin_width)), axis=-1)
    n0 = xp.reshape(xp.astype(zlp_intensity, xp.float64), (-1,))
    good = xp.isfinite(n0) & (n0 > 0) & xp.all(xp.isfinite(y), axis=-1)
    # a bad pixel is fitted on a stand-in (the block's shape stays, no host sync), then NaN
    y_fit = xp.where(good[:, None], y, xp.ones_like(y))
    n0_fit = xp.where(good, n0, xp.full_like(n0, 1e6))
    seed = FF.seed_from_ssd(xp, fm, y_fit, n0_fit, oscillators)
    names = fm.names
    cols = [seed[:, j] for j in range(len(names))]
    if kk_thickness_nm is not None:
        t = xp.reshape(xp.astype(kk_thickness_nm, xp.float64), (-1,))
        ok = xp.isfinite(t) & (t > 0)
        cols[0] = xp.where(ok, xp.log(xp.where(ok, t, xp.ones_like(t))), cols[0])
    if kk_plasmon_energy_eV is not None and "plasmon_energy_eV" in names:
        j = names.index("plasmon_energy_eV")
        e0 = xp.reshape(xp.astype(kk_plasmon_energy_eV, xp.float64), (-1,))
        gamma = xp.exp(cols[names.index("damping_eV")])
        ok = xp.isfinite(e0) & (e0 > 0)
        ep = xp.sqrt(xp.where(ok, e0, xp.ones_like(e0)) ** 2 + gamma**2)
        cols[j] = xp.where(ok, xp.log(ep), cols[j])
    seed = xp.stack(cols, axis=-1)
    fit = FF.fit_pixels(
        xp, fm, y_fit, n0_fit, seed, iterations=iterations, jitter=jitter, fine=fine
    )
    dof = float(fit.dof)
    cov = fit.cov * FF.deviance_inflation(xp, fit.deviance, dof)[:, None, None]
    p = xp.exp(fit.p_log)
    diag = xp.stack([cov[:, j, j] for j in range(len(names))], axis=-1)
    sig = p * xp.sqrt(xp.maximum(diag, xp.zeros_like(diag)))
    e_out = xp.asarray(energy_out_eV, dtype=xp.float64)
    eps, s1, s2 = FF.eps_sigma(xp, fm, fit.p_log, cov, e_out)
    mu, bulk, oxide, surf = FF.model_counts(xp, fm, fit.p_log, n0_fit, parts=True)
    # n_eff from Ep_tot^2 = Ep^2 + sum f (section 2), sigma by the delta method
    ep2 = xp.zeros_like(fit.deviance) + float(fixed_strength_eV2)
    grads = []
    for j, name in enumerate(names):
        if name == "plasmon_energy_eV":
            ep2 = ep2 + p[:, j] ** 2
            grads.append(2.0 * p[:, j] ** 2)
        elif name.endswith("_strength_eV2"):
            ep2 = ep2 + p[:, j]
            grads.append(p[:, j])
        else:
            grads.append(xp.zeros_like(p[:, j]))
    g = xp.stack(grads, axis=-1)
    var = xp.sum(g[:, :, None] * cov * g[:, None, :], axis=(1, 2))
    neff = n_eff_per_nm3(xp.sqrt(ep2))
    nan = xp.full_like(fit.deviance, math.nan)

    def m(v):
        return xp.where(good, v, nan)

    def c(v):
        return xp.where(good[:, None], v, xp.full_like(v, math.nan))

    out = {
        "eps1": c(xp.real(eps)),
        "eps2": c(xp.imag(eps)),
        "loss_function": c(xp.imag(-1.0 / eps)),
        "eps1_sigma": c(s1),
        "eps2_sigma": c(s2),
        "n_eff_per_nm3": m(neff),
        "n_eff_per_nm3_sigma": m(neff * xp.sqrt(xp.maximum(var, xp.zeros_like(var))) / ep2),
        "deviance_reduced": m(fit.deviance / dof),
        "fit_flags": xp.where(
            good,
            xp.astype(fit.flags, xp.int32),
            xp.full_like(xp.astype(fit.flags, xp.int32), FF.FIT_BITS["FIT_NOT_CONVERGED"][0]),
        ),
        "data": y,
        "model": c(mu),
        "model_bulk": c(bulk),
        "model_oxide": c(oxide),
        "model_surface": c(surf),
    }
    for j, name in enumerate(names):
        out[name] = m(p[:, j])
        out[name + "_sigma"] = m(sig[:, j])
    return out


def film_declaration(
    names: Sequence[str], energy_eV: Any, energy_fit_eV: Any, batch: int = 64
) -> BlockKernel:
    """The film fit's :class:`BlockKernel`: eps cubes on ``energy`` (``energy_eV``), the model
    and data on ``energy_fit`` (``energy_fit_eV``, the fitted channels' centres), a map per
    parameter ``names`` and its sigma; ``batch`` pixels per kernel call on a CPU."""
    e = np.asarray(energy_eV, dtype=np.float64)
    ef = np.asarray(energy_fit_eV, dtype=np.float64)
    outs = [
        Output("eps1", "", "eps1 (fitted model)", axis="energy", coord=e),
        Output("eps2", "", "eps2 (fitted model)", axis="energy", coord=e),
        Output("loss_function", "", "Im[-1/eps]", axis="energy", coord=e),
        Output("eps1_sigma", "", "sigma of eps1", axis="energy", coord=e),
        Output("eps2_sigma", "", "sigma of eps2", axis="energy", coord=e),
    ]
    for name in names:
        outs.append(Output(name, _unit(name), name, dtype="float64"))
        outs.append(Output(name + "_sigma", _unit(name), f"sigma of {name}", dtype="float64"))
    outs += [
        Output("n_eff_per_nm3", "1/nm^3", "n_eff from the f-sum rule", dtype="float64"),
        Output("n_eff_per_nm3_sigma", "1/nm^3", "sigma of n_eff", dtype="float64"),
        Output("deviance_reduced", "", "Poisson deviance / (channels - parameters)", "float64"),
        Output("fit_flags", "", "film-fit flags (film_fit.FIT_BITS)", dtype="int32"),
    ]
    outs += [Output(n, "counts", n, axis="energy_fit", coord=ef) for n in FILM_PARTS]
    return BlockKernel(
        film_kernel,
        outputs=tuple(outs),
        tile_pixels=int(batch),
        # tenths of a second per spectrum: a few hundred pixels still go to every core
        min_block_pixels=1,
        extras=("zlp_intensity", "kk_plasmon_energy_eV", "kk_thickness_nm"),
        name="film_fit",
    )
