"""Dielectric-model fits of thin films: eps of films where the surface iteration cannot go.

:func:`fit_dielectric` fits a causal parametric eps (a Drude term and Lorentz oscillators,
thin-film-theory.md section 2) through a forward model of the whole film (section 1: bulk,
surfaces and guided modes, coupled or retarded, with an oxide on both faces if asked) to each
pixel's single-scattering distribution, by the Poisson deviance (section 3), with batched
fixed-iteration Levenberg-Marquardt (:mod:`eelsgpu.kernels.film_fit`). It returns eps1, eps2
and the loss function on the SSD's energy axis with their sigmas, maps of every parameter with
its sigma, the reduced deviance, the fit's flags, and the model spectrum (and its parts) beside
the data.

Why: the classic surface correction (kk-theory.md eqs. 35-36) amplifies its own error near
eps1 = -1 and cannot converge for sharp plasmons (a Drude metal 15/1 eV at 96 nm keeps 9 % RMS
in eps); a real Al film's oxide-interface (7 eV) and surface (10.6 eV) plasmons are taken as
bulk losses and give eps1 > 0 at 8-10 eV where optics give -2.7 and -1.3. The fit gets them right.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from eelsgpu.kernels import film_fit
>>> lo = np.arange(4.0, 30.0, 0.2)
>>> fm = film_fit.fit_model(lo, lo + 0.2, 200.0, 100.0, kind="coupled")
>>> mu = film_fit.model_counts(np, fm, np.log([[20.0, 15.0, 1.0]]), np.array([1e6]))
>>> ssd = xr.DataArray(mu, dims=("x", "energy"), coords={"energy": lo + 0.1},
...                    attrs={"beam_energy_keV": 200.0, "collection_angle_mrad": 100.0})
>>> ds = fit_dielectric(ssd, zlp_intensity=1e6, window_eV=(4.0, 30.0), retardation=False,
...                     bin_eV=0.2)
>>> round(float(ds["thickness_nm"][0]), 3), round(float(ds["plasmon_energy_eV"][0]), 4)
(20.0, 15.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..errors import InputError
from ..kernels import film_fit as FF
from ..kernels import quality as Q
from ..kernels.blocks_film import FILM_PARTS, film_declaration
from ..kernels.blocks_lowloss import ALIGNED_OUTPUTS
from ..model import require_param
from . import _checks as chk
from ._lowloss import spectrum_input, ssd_input

__all__ = ["fit_dielectric"]

#: Units of the parameters by the ending of their names.
_UNITS = {"_nm": "nm", "_eV": "eV", "_eV2": "eV^2"}


def _unit(name: str) -> str:
    for end, unit in _UNITS.items():
        if name.endswith(end):
            return unit
    return ""


def fit_dielectric(
    ssd: xr.Dataset | xr.DataArray,
    zlp_intensity: Any = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    *,
    model: str = "film",
    retardation: bool = True,
    oxide_nm: Any = None,
    n_oscillators: int = 0,
    oscillators: Sequence[Sequence[float]] = (),
    fixed_oscillators: Sequence[Sequence[float]] = (),
    drude: bool = True,
    window_eV: tuple[float, float] | None = None,
    bin_eV: float = 0.1,
    convergence_angle_mrad: float | None = None,
    resolution_eV: float | None = None,
    cutoff_mrad: float | None = None,
    iterations: int = 20,
    jitter: float = 0.2,
    check_quadrature: bool = True,
    kk: xr.Dataset | None = None,
    nodes_per_channel: int = 1,
    batch: int = 64,
    energy_eV: Any = None,
    device: str = "auto",
) -> xr.Dataset:
    """Fit a film's dielectric function to every pixel's SSD (thin-film-theory.md sections 1-3).

    Parameters
    ----------
    ssd : xarray.Dataset or DataArray
        :func:`eelsgpu.deconvolve`'s result with zero loss at 0 eV (``output`` ``"ssd"``,
        ``"band-limited"`` (best) or ``"reconvolved-gaussian"``), or an SSD DataArray (counts per
        channel, ``energy`` in eV of loss).
    zlp_intensity : number or map, optional
        N0 (counts); default the Dataset's ``zlp_intensity``.
    beam_energy_keV, collection_angle_mrad : float, optional
        E0 (keV) and beta (mrad); default the data's attributes.
    model : {"film", "eq36", "bulk"}
        ``film``: the coupled film (Ritchie) without retardation, Kroger's slab with it, the
        layered oxide/film/oxide slab when ``oxide_nm`` is given; ``eq36``: bulk + two
        uncoupled surfaces (eq. 36); ``bulk``: eq. 31 only.
    retardation : bool
        Retarded (relativistic) model: needed for Cerenkov losses (eps1 > 1/beta_v^2) and metals
        below about 8 eV (section 1.5); about 5 x slower.
    oxide_nm : "fit", number or None
        An oxide on both faces (nm per face; the oxide's eps is the notes' Lorentz at 13 eV,
        f = 2.2 x 13^2 eV^2, Gamma 6 eV): fitted, fixed, or none.
    n_oscillators : int
        Free Lorentz oscillators (3 parameters each); ``oscillators`` their starts
        ((E eV, f eV^2, Gamma eV) each); ``fixed_oscillators`` held fixed (those outside the
        window, section 2).
    drude : bool
        Include the Drude term (metals).
    window_eV : (lo, hi), optional
        The fitted energy range (eV); default from max(3 FWHM of the ZLP, 3 eV; 5 eV for a
        non-retarded metal) to 25 eV.
    bin_eV : float
        Channels are summed to about this width before the fit (the SSD's own width if larger).
    convergence_angle_mrad, resolution_eV, cutoff_mrad : float, optional
        alpha (mrad; default the data's, else 0), the FWHM (eV) of the Gaussian the SSD carries
        (default the median of the Dataset's ``resolution_eV``, else 0), the plasmon cut-off of
        the bulk term (mrad; section 5; default none, flagged ``BETA_EXCEEDS_CUTOFF``).
    iterations, jitter : int, float
        Levenberg-Marquardt steps per pixel, and the jittered starts' factor (section 2).
    check_quadrature : bool
        Re-evaluate each fit with the fine angular rule (``QUADRATURE`` flag).
    kk : xarray.Dataset, optional
        A :func:`eelsgpu.kramers_kronig` result of the same pixels: its eps1 zero crossing
        (``plasmon_energy_eV``; Drude Ep = sqrt(E_0^2 + Gamma^2)) and ``thickness_nm`` seed Ep and
        t where finite (section 2: "seed from the classic KK output"); default: from the SSD
        (the loss peak, its FWHM, eq. 26 over the window).
    nodes_per_channel : int
        Model nodes per fitted channel. 1 (default): the channel centres, the model between them
        by quartics through five centres (:func:`eelsgpu.kernels.film.centre_channel_matrix`):
        1.3e-4 of a 0.6 eV wide plasmon's peak at 0.1 eV channels, 4e-4 at 0.3 eV (parameter
        bias 0 and 0.2-0.4 sigma at N0 = 1e6); 2: Gauss-Legendre pairs, 4e-5 and 1.7e-4, twice
        the cost. ``check_quadrature`` refits nothing but flags ``QUADRATURE`` where twice the
        nodes and the fine angular rule would move a channel or a parameter by more than 0.3
        sigma (at 0.1 eV channels and N0 = 1e6: Gamma 0.3 eV flagged, 0.6 eV not).
    batch : int
        Pixels per batch.
    energy_eV : array, optional
        The energies (eV, > 0) of the ``energy`` axis of eps; default the SSD's channels above
        0.05 eV (:func:`eelsgpu.kramers_kronig` with ``surface="fit"`` gives its own axis).
    device : {"auto", "cpu", "gpu"}
        Where the fit runs (:func:`eelsgpu.engine.apply_kernel` maps
        :mod:`eelsgpu.kernels.blocks_film` over pixel blocks; an SSD held in memory gives a
        result in memory, a store's SSD a lazy one that ``eelsgpu.io.write_store`` streams).

    Returns
    -------
    xarray.Dataset
        ``eps1``, ``eps2``, ``loss_function`` and ``eps1_sigma``, ``eps2_sigma`` on ``energy``
        (E > 0 of the SSD's axis); a map per parameter (``thickness_nm``, ``plasmon_energy_eV``,
        ``damping_eV``, ``osc<j>_energy_eV``/``_strength_eV2``/``_width_eV``, ``oxide_nm``) and
        its ``_sigma`` (from C max(1, D/dof), section 3.5); ``n_eff_per_nm3`` and its sigma;
        ``deviance_reduced``; ``fit_flags`` (uint32, the table of
        :data:`eelsgpu.kernels.film_fit.FIT_BITS` in its attributes), the upstream ``quality``,
        ``valid``; on ``energy_fit`` (the fitted channels' centres) ``data``, ``model`` and its
        parts ``model_bulk``, ``model_oxide``, ``model_surface`` (counts per fitted channel).

    Raises
    ------
    InputError
        Not an SSD, an output on the data's axis (``reconvolved-zlp``), a number out of range,
        no N0, an empty window.
    """
    dataset, si, attrs = ssd_input(ssd, "fit_dielectric")
    output = attrs.get("deconvolution_output", attrs.get("output"))
    if output is not None and output not in ALIGNED_OUTPUTS:
        raise InputError(
            f"fit_dielectric needs an SSD with zero loss at 0 eV ({', '.join(ALIGNED_OUTPUTS)}), "
            f"not deconvolve's {output!r} output: deconvolve with output='band-limited'"
        )
    si = spectrum_input(si, "fit_dielectric", raw=False).copy()
    si.attrs = {k: v for k, v in attrs.items() if k not in ("long_name", "units", "output")}
    e0 = chk.positive("beam_energy_keV", require_param(si, "beam_energy_keV", beam_energy_keV))
    beta = chk.positive(
        "collection_angle_mrad",
        require_param(si, "collection_angle_mrad", collection_angle_mrad),
        "mrad",
    )
    alpha = convergence_angle_mrad
    if alpha is None:
        alpha = float(attrs.get("convergence_angle_mrad") or 0.0)
    alpha = chk.in_range("convergence_angle_mrad", alpha, 0.0, beta, "mrad")
    if model not in ("film", "eq36", "bulk"):
        raise InputError(f"model must be 'film', 'eq36' or 'bulk', not {model!r}")
    n_osc = chk.positive_int("n_oscillators", n_oscillators, 0)
    iterations = chk.positive_int("iterations", iterations, 1)
    batch = chk.positive_int("batch", batch, 1)
    nodes_per_channel = chk.positive_int("nodes_per_channel", nodes_per_channel, 1)
    bin_eV = chk.positive("bin_eV", bin_eV, "eV")
    jitter = chk.in_range("jitter", jitter, 0.0, 0.9)
    cutoff_mrad = chk.optional(chk.positive, "cutoff_mrad", cutoff_mrad, "mrad")
    if not drude and n_osc == 0:
        raise InputError("without the Drude term give at least one oscillator (n_oscillators)")
    fit_oxide = isinstance(oxide_nm, str)
    if fit_oxide and oxide_nm != "fit":
        raise InputError(f"oxide_nm must be 'fit', a number of nm or None, not {oxide_nm!r}")
    fixed_d = None
    if oxide_nm is not None and not fit_oxide:
        fixed_d = chk.positive("oxide_nm", oxide_nm, "nm")
    if oxide_nm is not None and model != "film":
        raise InputError("an oxide (oxide_nm) needs model='film'")
    kind = {"eq36": "eq36", "bulk": "none"}.get(model)
    if kind is None:
        kind = "layered" if oxide_nm is not None else ("kroger" if retardation else "coupled")

    # the SSD stays as it is (lazy for a store: the engine streams it); N0 is a map
    nav = tuple(d for d in si.dims if d != "energy")
    shape = tuple(si.shape[:-1])
    n_pix = int(np.prod(shape, dtype=np.int64))
    energy = np.asarray(si["energy"].values, dtype=np.float64)
    n0 = zlp_intensity
    if n0 is None and dataset is not None and "zlp_intensity" in dataset:
        n0 = dataset["zlp_intensity"]
    if n0 is None:
        raise InputError(
            "fit_dielectric needs N0: give zlp_intensity= (counts) or deconvolve's Dataset"
        )
    n0 = np.broadcast_to(np.asarray(getattr(n0, "values", n0), dtype=np.float64), shape)
    if resolution_eV is None:
        resolution_eV = 0.0
        if dataset is not None and "resolution_eV" in dataset:
            r = np.asarray(dataset["resolution_eV"].values, dtype=np.float64)
            r = r[np.isfinite(r) & (r > 0)]
            resolution_eV = float(np.median(r)) if r.size else 0.0
    resolution_eV = chk.at_least("resolution_eV", resolution_eV, 0.0, "eV")

    # the window and the channels
    step = float(np.median(np.diff(energy)))
    if window_eV is None:
        fwhm = 0.0
        if dataset is not None and "zlp_fwhm_eV" in dataset:
            fw = np.asarray(dataset["zlp_fwhm_eV"].values, dtype=np.float64)
            fw = fw[np.isfinite(fw)]
            fwhm = float(np.median(fw)) if fw.size else 0.0
        start = max(3.0 * fwhm, 5.0 if (drude and not retardation) else 3.0)
        window_eV = (start, 25.0)
    lo_w = chk.positive("window_eV[0]", window_eV[0], "eV")
    hi_w = chk.positive("window_eV[1]", window_eV[1], "eV")
    k = max(1, int(round(bin_eV / step)))
    sel = np.nonzero(
        (energy - step / 2 >= lo_w - 1e-9 * step) & (energy + step / 2 <= hi_w + 1e-9)
    )[0]
    n_bins = sel.size // k
    if n_bins < 4 * (3 + 3 * n_osc):
        raise InputError(
            f"the window {lo_w}-{hi_w} eV holds {n_bins} channels of {k * step:.3g} eV: too few "
            "for the fit"
        )
    idx = sel[: n_bins * k]
    c_lo = energy[idx].reshape(n_bins, k)[:, 0] - step / 2
    c_hi = energy[idx].reshape(n_bins, k)[:, -1] + step / 2

    common = dict(
        kind=kind,
        retarded=bool(retardation),
        n_oscillators=n_osc,
        drude=bool(drude),
        fixed_oscillators=fixed_oscillators,
        oxide_nm=fixed_d,
        fit_oxide=fit_oxide,
        resolution_fwhm_eV=resolution_eV,
        convergence_angle_mrad=alpha,
        cutoff_mrad=cutoff_mrad,
        n_sub=nodes_per_channel,
    )
    fm = FF.fit_model(c_lo, c_hi, e0, beta, **common)
    fine = None
    if check_quadrature:
        # the check's model: the fine angular rule and twice the channel nodes (the channel
        # rule's error on a sharp plasmon is what it must also catch)
        fine_kw = {**common, "n_sub": 2 * nodes_per_channel}
        fine = FF.fit_model(c_lo, c_hi, e0, beta, rule="fine", **fine_kw)

    names = fm.names
    extras: dict[str, Any] = {"zlp_intensity": np.ascontiguousarray(n0)}
    if kk is not None:
        for v, key in (
            ("plasmon_energy_eV", "kk_plasmon_energy_eV"),
            ("thickness_nm", "kk_thickness_nm"),
        ):
            seed = np.asarray(kk[v].values, dtype=np.float64) if v in kk else np.full(shape, np.nan)
            if seed.size != n_pix:
                raise InputError("kk= must be the kramers_kronig result of the same pixels")
            extras[key] = seed.reshape(shape)
    e_out = energy[energy > 0.05]
    if energy_eV is not None:
        e_out = np.asarray(energy_eV, dtype=np.float64).reshape(-1)
        if e_out.size == 0 or not np.all(np.isfinite(e_out) & (e_out > 0)):
            raise InputError("energy_eV must be finite energies > 0 eV")
    fixed_f = float(np.sum(np.asarray(fixed_oscillators, dtype=float).reshape(-1, 3)[:, 1]))
    res = engine.apply_kernel(
        film_declaration(names, e_out, 0.5 * (c_lo + c_hi), batch),
        si,
        device=device,
        extras=extras,
        fm=fm,
        fine=fine,
        channels=np.asarray(idx, dtype=np.int64),
        bin_width=int(k),
        energy_out_eV=e_out,
        oscillators=tuple(tuple(float(x) for x in o) for o in oscillators),
        fixed_strength_eV2=fixed_f,
        iterations=iterations,
        jitter=jitter,
    )
    if si.chunks is None:  # in memory in, in memory out (a store's SSD stays lazy)
        res = res.compute()

    flags = res["fit_flags"].astype(np.uint32)
    if dataset is not None and "quality" in dataset:
        upstream = dataset["quality"].astype(np.uint32)
    else:
        upstream = xr.zeros_like(flags)
    # the fit's flags join the upstream bits at quality bits 14-23 (same order as FIT_BITS)
    quality = np.bitwise_or(upstream, np.left_shift(flags, np.uint32(Q.FIT_SHIFT)))
    valid = np.bitwise_and(quality, np.uint32(Q.FATAL)) == 0
    if dataset is not None and "valid" in dataset:
        valid = valid & dataset["valid"].astype(bool)

    out = xr.Dataset(coords={k_: si.coords[k_] for k_ in nav if k_ in si.coords})
    out = out.assign_coords(
        energy=("energy", e_out, {"units": "eV"}),
        energy_fit=("energy_fit", 0.5 * (c_lo + c_hi), {"units": "eV"}),
    )
    for name in ("eps1", "eps2", "loss_function", "eps1_sigma", "eps2_sigma"):
        out[name] = res[name].transpose(*nav, "energy")
    for name in names:
        out[name] = res[name]
        out[name + "_sigma"] = res[name + "_sigma"]
    if fixed_d is not None:
        out["oxide_nm"] = (
            nav,
            np.full(shape, fixed_d),
            {"units": "nm", "long_name": "oxide_nm (fixed)"},
        )
    for name in ("n_eff_per_nm3", "n_eff_per_nm3_sigma", "deviance_reduced"):
        out[name] = res[name]
    out["fit_flags"] = flags.assign_attrs(bits=_bit_table())
    out["quality"] = quality.transpose(*nav).assign_attrs(
        {"long_name": "quality bits (upstream, and fit_flags at 14-23)", **Q.describe()}
    )
    out["valid"] = valid.transpose(*nav)
    for name in FILM_PARTS:
        out[name] = res[name].transpose(*nav, "energy_fit")
    out.attrs = {
        "analysis": "fit_dielectric",
        "film_model": kind,
        "retardation": int(bool(fm.setup.retarded)),
        "parameters": list(names),
        "window_eV": [float(c_lo[0]), float(c_hi[-1])],
        "bin_eV": float(k * step),
        "beam_energy_keV": e0,
        "collection_angle_mrad": beta,
        "convergence_angle_mrad": alpha,
        "resolution_eV": resolution_eV,
        "iterations": iterations,
        "oxide_eps": "Lorentz 13 eV, f = 2.2 x 13^2 eV^2, Gamma 6 eV" if kind == "layered" else "",
        "fixed_oscillators": [list(map(float, o)) for o in fixed_oscillators],
        "source": str(attrs.get("source", "")),
        "references": "thin-film-theory.md sections 1-3; kk-theory.md eqs. 31, 36",
    }
    return out


def _bit_table() -> str:
    """The fit flags' table as text (JSON-safe attribute)."""
    return "; ".join(
        f"{int(math.log2(b))}={n}{' (fatal)' if fatal else ''}"
        for n, (b, fatal, _) in FF.FIT_BITS.items()
    )


#: The values of ``surface_method`` (:func:`eelsgpu.kramers_kronig` with ``surface="fit"``).
SURFACE_METHODS: dict[int, str] = {
    0: "Kramers-Kronig (its surface iteration as asked)",
    1: "dielectric-model fit (fit_dielectric) where KK flagged SURFACE_NOT_CORRECTED",
    2: "the fit failed (a fatal fit flag): Kramers-Kronig kept, still SURFACE_NOT_CORRECTED",
}

#: The per-channel KK outputs the fit's eps re-derives at the fitted pixels (kk-theory.md eq. 34,
#: Egerton 2011 eq. 4.29), and those it cannot (NaN there).
_DERIVED = ("refractive_index", "extinction_coefficient", "absorption_coefficient", "n_eff")
_NOT_DERIVED = ("surface_intensity", "re_inverse_eps0", "static_refractive_index")


def surface_fit(
    kk: xr.Dataset,
    ssd: xr.Dataset | xr.DataArray,
    zlp_intensity: Any = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """``kramers_kronig(..., surface="fit")``: refit the pixels whose surface iteration failed.

    Where ``kk`` (a :func:`eelsgpu.kramers_kronig` result) flags SURFACE_NOT_CORRECTED, or its
    ``surface_status`` is 3 (did not converge), :func:`fit_dielectric` fits those pixels of
    ``ssd`` (seeded from KK's plasmon energy and thickness, thin-film-theory.md section 2); where
    the fit is valid its eps1, eps2, loss function (on KK's energy axis) and thickness replace
    KK's, the optical cubes are re-derived from them (n, k, mu, n_eff; plasmon and loss-peak
    energies), SURFACE_NOT_CORRECTED is cleared and the fit's flags join ``quality`` at bits
    14-23. ``surface_method`` (uint8, :data:`SURFACE_METHODS`) says which pixels were fitted;
    ``surface_fit_deviance_reduced`` the fit's reduced deviance there. ``options`` are keyword
    arguments of :func:`fit_dielectric` (``model``, ``retardation``, ``oxide_nm``, ...).

    Examples
    --------
    >>> sorted(SURFACE_METHODS)
    [0, 1, 2]
    """
    from ..kernels import optics

    options = dict(options or {})
    fixed = {"kk", "energy_eV", "zlp_intensity", "beam_energy_keV", "collection_angle_mrad"}
    if fixed & set(options):
        raise InputError(
            f"surface_fit options cannot set {sorted(fixed & set(options))}: "
            "kramers_kronig gives them"
        )
    nav = tuple(d for d in kk["eps1"].dims if d != "energy")
    shape = tuple(int(kk.sizes[d]) for d in nav)
    n_pix = int(np.prod(shape, dtype=np.int64))

    def flat(name: str, src: xr.Dataset = kk) -> np.ndarray:
        v = src[name]
        order = nav + (("energy",) if "energy" in v.dims else ())
        return np.asarray(v.transpose(*order).values).reshape(n_pix, -1).squeeze(-1)

    def flat_cube(name: str) -> np.ndarray:
        return np.array(kk[name].transpose(*nav, "energy").values, dtype=np.float64).reshape(
            n_pix, -1
        )

    qual = flat("quality").astype(np.uint32)
    todo = (qual & Q.SURFACE_NOT_CORRECTED) != 0
    if "surface_status" in kk:
        todo |= flat("surface_status") == 3
    method = np.zeros(n_pix, dtype=np.uint8)
    dev = np.full(n_pix, np.nan)
    out = kk.copy()
    rows = np.nonzero(todo)[0]
    if rows.size:
        sub, n0 = _pixels(ssd, nav, shape, rows, zlp_intensity)
        seed = xr.Dataset(
            {
                v: ("pixel", flat(v)[rows].astype(np.float64))
                for v in ("plasmon_energy_eV", "thickness_nm")
                if v in kk
            }
        )
        e = np.asarray(kk["energy"].values, dtype=np.float64)
        fit = fit_dielectric(
            sub,
            zlp_intensity=n0,
            beam_energy_keV=beam_energy_keV,
            collection_angle_mrad=collection_angle_mrad,
            kk=seed,
            energy_eV=e,
            **options,
        )
        ok = np.asarray(fit["valid"].values, dtype=bool)
        good, bad = rows[ok], rows[~ok]
        method[good], method[bad] = 1, 2
        dev[rows] = np.asarray(fit["deviance_reduced"].values)
        cubes = {}
        for name in ("eps1", "eps2", "loss_function"):
            if name in kk:
                cubes[name] = flat_cube(name)
                cubes[name][good] = np.asarray(fit[name].values)[ok]
        e1 = np.asarray(fit["eps1"].values)[ok]
        e2 = np.asarray(fit["eps2"].values)[ok]
        n_e, k_e = optics.refractive_index_nk(e1, e2)
        derived = {
            "refractive_index": n_e,
            "extinction_coefficient": k_e,
            "absorption_coefficient": optics.absorption_coefficient_per_nm(k_e, e),
        }
        if "n_eff" in kk and kk["n_eff"].attrs.get("units", "electrons/nm^3") == "electrons/nm^3":
            derived["n_eff"] = optics.effective_electron_density(e2, e, float(e[1] - e[0]))
        for name in _DERIVED + _NOT_DERIVED:
            if name in kk and "energy" in kk[name].dims:
                cubes[name] = flat_cube(name)
                cubes[name][good] = derived.get(name, np.nan)
        for name, arr in cubes.items():
            out[name] = (nav + ("energy",), arr.reshape(shape + (e.size,)), kk[name].attrs)
        maps = {"thickness_nm": np.asarray(fit["thickness_nm"].values)[ok]}
        if "low_energy_cutoff_eV" in kk:
            lo = e[None, :] >= flat("low_energy_cutoff_eV")[good][:, None]
        else:
            lo = np.ones((good.size, e.size), dtype=bool)
        loss = np.asarray(fit["loss_function"].values)[ok]
        maps["plasmon_energy_eV"] = optics.plasmon_energy_eV(np, e1, loss, e, lo)
        maps["loss_peak_eV"] = optics.loss_peak_eV(np, loss, e, lo)
        for name in _NOT_DERIVED:
            if name in kk and "energy" not in kk[name].dims:
                maps[name] = np.nan
        for name, value in maps.items():
            if name in kk:
                arr = flat(name).astype(np.float64)
                arr[good] = value
                out[name] = (nav, arr.reshape(shape), kk[name].attrs)
        fit_q = np.asarray(fit["fit_flags"].values, dtype=np.uint32)[ok]
        qual = qual.copy()
        qual[good] = (qual[good] & ~np.uint32(Q.SURFACE_NOT_CORRECTED)) | (
            fit_q << np.uint32(Q.FIT_SHIFT)
        )
        kk_q = flat("quality").astype(np.uint32)
        analysed = flat("valid").astype(bool) | ((kk_q & Q.FATAL) != 0)
        out["quality"] = (nav, qual.reshape(shape), {**kk["quality"].attrs, **Q.describe()})
        out["valid"] = (nav, (analysed & ((qual & Q.FATAL) == 0)).reshape(shape), kk["valid"].attrs)
    out["surface_method"] = (
        nav,
        method.reshape(shape),
        {"long_name": "surface treatment", **{str(k): v for k, v in SURFACE_METHODS.items()}},
    )
    out["surface_fit_deviance_reduced"] = (
        nav,
        dev.reshape(shape),
        {"long_name": "the surface fit's Poisson deviance / (channels - parameters)"},
    )
    out.attrs["kk_surface"] = "fit"
    out.attrs["kk_surface_fit_options"] = repr(options)
    out.attrs["kk_surface_fit_pixels"] = int(np.sum(method == 1))
    return out


def _pixels(ssd, nav, shape, rows, zlp_intensity):
    """The SSD (and its deconvolve maps) at the flat pixels ``rows`` on one ``pixel`` dim, and N0
    there (``zlp_intensity`` given, else None: the Dataset's)."""
    n_pix = int(np.prod(shape, dtype=np.int64))

    def take(v: xr.DataArray) -> xr.DataArray:
        extra = tuple(d for d in v.dims if d not in nav)
        arr = np.asarray(v.transpose(*nav, *extra).values)
        arr = np.broadcast_to(arr, shape + arr.shape[len(nav) :]) if arr.ndim else arr
        arr = arr.reshape((n_pix,) + arr.shape[len(shape) :])[rows]
        coords = {d: v.coords[d] for d in extra if d in v.coords}
        return xr.DataArray(arr, dims=("pixel",) + extra, coords=coords, attrs=v.attrs)

    if isinstance(ssd, xr.Dataset):
        keep = ("ssd", "zlp_intensity", "zlp_fwhm_eV", "resolution_eV", "quality", "valid")
        sub: Any = xr.Dataset(
            {v: take(ssd[v]) for v in keep if v in ssd and set(nav) <= set(ssd[v].dims)},
            attrs=ssd.attrs,
        )
    else:
        sub = take(ssd)
    n0 = zlp_intensity
    if n0 is not None:
        n0 = np.broadcast_to(np.asarray(getattr(n0, "values", n0), dtype=np.float64), shape)
        n0 = n0.reshape(-1)[rows]
    return sub, n0
