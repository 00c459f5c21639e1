"""Band-gap maps: the energy and type of the absorption onset, fitted per pixel.

:func:`bandgap` fits ``I(E) = A (E - Eg)^b + background`` (Rafferty & Brown, Phys. Rev. B 58,
10326 (1998)) to every pixel: it picks the spectra and the fit window (eV), builds the Eg and b
grids, runs :func:`eelsgpu.kernels.bandgap.bandgap_block` (the equations and the fit are
described in :mod:`eelsgpu.kernels.bandgap`) over the pixel blocks through the engine, and flags
pixels the model does not describe. :func:`fit_curves` redraws the fits of a few spectra from a
result's attrs.

The reference-ZLP route (recipe). The band gap of a semiconductor a few eV above a bright,
monochromated zero-loss peak is best fitted after a *measured* ZLP is taken off: record vacuum
spectra under the same conditions, average them, and give the average as ``zlp=``. Each pixel's
ZLP model is then the vacuum spectrum shifted to its centre and scaled to its peak
(:func:`eelsgpu.kernels.zlp.reference_model`), subtracted, and the rest fitted on energy
relative to the ZLP, weighted by the raw counts. Start the window where the subtraction's
residue has come down (the result's ``zlp_residue_end_eV``; by default the window is found so),
and use a ``"constant"`` background for the flat floor under the onset::

    vacuum = xr.DataArray(np.mean(vacuum_spectra, axis=0), dims="energy",
                          coords={"energy": energy})
    gap = eelsgpu.bandgap(specimen, zlp=vacuum, background="constant", window_eV=(1.0, 3.5))

On the WS2 spectra of EELSfitter (Specimen 3, the three vacuum spectra averaged; benchmarks/
real_data.py measures it) this gives 1.55-1.68 eV on 9 of the 10 specimen spectra (EELSfitter
reports about 1.6 eV). A window that starts on the residue is flagged (WINDOW_IN_ZLP_RESIDUE):
the window the old heuristic found (from 0.4-0.5 eV) puts 2 of the 10 gaps at 0.69 and 0.71 eV,
at the residue's foot; those and every other such fit are not valid.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.model import spectrum_image
>>> e = np.arange(0.0, 6.0, 0.02)
>>> y = 1.0 + 400.0 * np.clip(e - 2.5, 0, None) ** 1.5
>>> ds = bandgap(spectrum_image(y, e), window_eV=(1.0, 5.0), model="indirect",
...              background="constant", device="cpu")
>>> round(float(ds["bandgap_eV"]), 2), int(ds["gap_type"])
(2.5, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ..engine import apply_kernel
from ..errors import InputError
from ..kernels import quality as qbits
from ..kernels.bandgap import (
    B_DIRECT,
    B_FREE,
    B_INDIRECT,
    BACKGROUNDS,
    BANDGAP_BLOCK,
    MODELS,
    RESIDUE_LIMIT,
    TAIL_EXPONENTS,
    auto_window,
    bandgap_kernel,
)
from ..kernels.blocks_replicas import with_replicas
from ..kernels.zlp import SEARCH_EV, shift_kernel, zlp_kernel
from . import _checks as chk
from ._lowloss import energy_range, spectrum_input, survey_counts
from ._uncertainty import parse_uncertainty

__all__ = ["bandgap", "fit_curves", "zlp_subtracted"]


def _spectra(si_or_ssd: xr.DataArray | xr.Dataset) -> xr.DataArray:
    if isinstance(si_or_ssd, xr.Dataset):
        for name in ("ssd", "single_scattering", "signal"):
            if name in si_or_ssd.data_vars:
                return si_or_ssd[name]
        cand = [v for v in si_or_ssd.data_vars.values() if v.dims and v.dims[-1] == "energy"]
        if len(cand) != 1:
            raise InputError(
                f"{si_or_ssd.attrs.get('source', 'the dataset')}: pass the spectra to fit (an "
                "'ssd' or 'signal' variable was not found)"
            )
        return cand[0]
    return si_or_ssd


def _mean_spectrum(spectra: xr.DataArray) -> np.ndarray:
    """The mean over the navigation dims (host NumPy), for :func:`auto_window`."""
    nav = [d for d in spectra.dims if d != "energy"]
    return np.asarray(spectra.mean(dim=nav).values if nav else spectra.values, float)


def _window_channels(
    energy: np.ndarray, lo: float, hi: float, background: str, where: str
) -> tuple[int, int]:
    """The channel slice ``[i0, i1)`` of the fit window ``lo..hi`` (eV), checked."""
    if not hi > lo:
        raise InputError(f"{where}the band-gap window {lo:g}:{hi:g} eV is empty")
    i0 = int(np.searchsorted(energy, lo, side="left"))
    i1 = int(np.searchsorted(energy, hi, side="right"))
    if i1 - i0 < 20:
        raise InputError(
            f"{where}the band-gap window {lo:g}:{hi:g} eV holds {i1 - i0} channels of the axis "
            f"{energy[0]:g}..{energy[-1]:g} eV; at least 20 are needed"
        )
    if background == "power-law" and energy[i0] <= 0:
        raise InputError(f"{where}a power-law background needs a window above 0 eV, not {lo:g}")
    return i0, i1


def _eg_grid(
    e_win: np.ndarray,
    disp: float,
    eg_range_eV: tuple[float, float] | None,
    eg_step_eV: float | None,
    where: str,
) -> tuple[float, np.ndarray]:
    """The Eg search grid (eV) over the window's energies ``e_win``: its step and its points."""
    # the grid's cost grows with its length: at most ~300 points unless asked (the parabolic
    # refinement reaches far below the step)
    step = float(eg_step_eV) if eg_step_eV else max(disp, (e_win[-1] - e_win[0]) / 300.0)
    g_lo, g_hi = eg_range_eV if eg_range_eV else (e_win[0], e_win[-1] - 10 * disp)
    g_lo, g_hi = max(float(g_lo), e_win[0] - 2 * step), min(float(g_hi), e_win[-1] - 4 * disp)
    n_eg = int(math.floor((g_hi - g_lo) / step)) + 1
    if n_eg < 5:
        raise InputError(f"{where}the Eg search range {g_lo:g}..{g_hi:g} eV is too short")
    return step, g_lo + step * np.arange(n_eg)


def bandgap(
    si_or_ssd: xr.DataArray | xr.Dataset,
    window_eV: tuple[float, float] | None = None,
    model: str = "free",
    *,
    background: str = "power-law",
    eg_range_eV: tuple[float, float] | None = None,
    eg_step_eV: float | None = None,
    min_significance: float = 5.0,
    max_quality_ratio: float | None = 10.0,
    variance: xr.DataArray | None = None,
    zlp: Any = None,
    search_eV: tuple[float, float] = SEARCH_EV,
    zlp_removed: bool | None = None,
    residue_limit: float | None = RESIDUE_LIMIT,
    device: str = "auto",
    uncertainty: str | None = None,
    n_replicas: int | None = None,
    gain: float | None = None,
    noise_variance: Any = None,
    seed: int = 0,
) -> xr.Dataset:
    """Band-gap energy, exponent and type of every pixel (Rafferty & Brown, PRB 58, 10326).

    Fits I(E) = A (E - Eg)^b + background over ``window_eV`` (see the module docstring).

    Parameters
    ----------
    si_or_ssd : xarray.DataArray or Dataset
        The single-scattering distribution (:func:`eelsgpu.deconvolve`) or a ZLP-subtracted
        spectrum image, counts per channel, energy in eV; a Dataset gives its ``ssd`` or
        ``signal`` variable.
    window_eV : (float, float), optional
        The fit window in eV; by default found from the mean spectrum (:func:`auto_window`).
    model : {"direct", "indirect", "free"}
        b fixed to 0.5, fixed to 1.5, or fitted (0.3 to 2.0); with "free" the type is the
        better-fitting of b = 0.5 and b = 1.5 (a likelihood-ratio choice).
    background : {"power-law", "constant", "linear", "none"}
        Under the onset: c0 + c1 (E/E_lo)^-r with r in 1..6 (a ZLP tail), a constant, a line,
        or nothing (a clean SSD).
    eg_range_eV : (float, float), optional
        Range searched for Eg (default: the window, less 10 channels at its top).
    eg_step_eV : float, optional
        Grid step of the Eg search (default: the channel width, or 1/300 of the window if
        that is coarser).
    min_significance : float
        Onsets improving chi^2 by less than this many sigma are flagged.
    max_quality_ratio : float or None
        Pixels whose reduced chi^2 exceeds this many times the median of the valid pixels'
        are flagged too: the model does not describe them (an artefact, a different material),
        whatever the onset's significance. The median, not 1, is the yardstick because real
        detectors' noise is rarely Poisson (gain) and real onsets are not pure power laws.
        None: no such check.
    variance : xarray.DataArray, optional
        Per-channel variance (same shape as the spectra); default Poisson (of the raw counts on
        the reference-ZLP route).
    zlp : str or array, optional
        The reference-ZLP route (module docstring): the spectra are raw low-loss spectra and
        this ZLP is taken off each first: a measured vacuum spectrum (1-D array on the data's
        channels, or a DataArray with an ``energy`` coordinate), a per-pixel ZLP cube, or a
        model name (``"threshold"``, ``"mirror"``, ``"fit"``). The window and Eg are then on
        energy relative to each pixel's ZLP centre.
    search_eV : (float, float)
        Where the ZLP maximum is looked for (eV on the stored axis), with ``zlp``.
    zlp_removed : bool, optional
        Whether the spectra had a ZLP taken off (an SSD, a ZLP-subtracted spectrum): their
        residue is then checked at the window's start (WINDOW_IN_ZLP_RESIDUE). Default: True
        with ``zlp`` or for the Dataset of :func:`eelsgpu.deconvolve`, False for a bare
        DataArray (a raw spectrum's ZLP tail is a background the power law models).
    residue_limit : float or None
        The largest residue at the window's start, in units of the onset's rise within the
        window (:func:`eelsgpu.kernels.bandgap.zlp_residue`); None: no residue check.
    device : {"auto", "cpu", "gpu"}
    uncertainty : {None, "replicas", "replicas:K"}
        Counting sigmas (:mod:`eelsgpu.analysis._uncertainty`; none by default: K replicas cost
        K fits): ``n_replicas`` Poisson replicas (``g Poisson(x / g)`` of the spectra as given,
        with ``gain`` g their data units per electron; Gaussian with ``noise_variance``) of every
        pixel refitted by the same block kernel
        (:func:`eelsgpu.kernels.blocks_replicas.with_replicas`), giving ``bandgap_eV_sigma`` and,
        with ``model="free"``, ``exponent_b_sigma`` (both proven honest with b free or fixed:
        tests/analysis/test_bandgap_coverage.py): the whole fit's counting noise, the grid
        search, the background and (on the reference-ZLP route) the ZLP subtraction included;
        not the model's systematic error (a wrong b, a background the model lacks). Unlike
        ``bandgap_error_eV`` (the fit's own error from the chi^2 surface's curvature: with b
        free the (Eg, b) Hessian at the minimum, widened where the profile is flatter; within
        20 % of the replicas' in the coverage tests) it is the scatter of refits. For an SSD the replicas take its
        values as counts (as :func:`eelsgpu.kramers_kronig` does; the deconvolution's own noise
        is not in it). ``"analytic"`` is refused (Eg is a grid search: no linearisation).
        Not with ``variance=`` (each replica is weighted by its own Poisson variance).
    n_replicas, gain, noise_variance, seed
        Replicas per pixel (default 100); g (default: estimated from the spectra's channel
        noise); a measured variance (data units squared); the replica seed.

    Returns
    -------
    xarray.Dataset
        ``bandgap_eV``, ``bandgap_error_eV`` (eV), ``exponent_b``, ``exponent_error``,
        ``gap_type`` (0 direct, 1 indirect, -1 flagged; with a fixed model, the type assumed),
        ``fit_quality`` (reduced chi^2), ``r_squared``, ``onset_significance`` (sigma, also for
        flagged pixels, as a diagnostic), ``residue_excess``, ``zlp_residue_end_eV`` (eV, where
        the window could start), ``quality`` (uint32 bitmask, :mod:`eelsgpu.kernels.quality`)
        and ``valid`` (a meaningful fit and no fatal bit); with ``zlp`` also ``zlp_intensity``
        and ``zlp_centre_eV``; attrs give the window, model, background and grids (what
        :func:`fit_curves` needs to redraw the fits). With ``uncertainty``: ``bandgap_eV_sigma``
        (eV) and ``exponent_b_sigma`` (model "free"), and the attrs ``uncertainty``,
        ``noise_model``, ``gain_per_electron``, ``gain_source``.

    Raises
    ------
    InputError
        A number or energy range out of range (naming it and its unit), an empty or too short
        window, not a spectrum image (a NumPy array, empty or complex data, no energy axis), a
        negative baseline (but in a deconvolution's result); on the reference-ZLP route also an
        axis in meV or keV labelled eV.

    Examples
    --------
    >>> ds = bandgap(ssd, window_eV=(1.0, 4.0), model="free")  # doctest: +SKIP
    >>> ds = bandgap(specimen, zlp=vacuum, background="constant")  # doctest: +SKIP
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {model!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, not {background!r}")
    min_significance = chk.positive("min_significance", min_significance, "sigma")
    max_quality_ratio = chk.optional(chk.positive, "max_quality_ratio", max_quality_ratio)
    eg_step_eV = chk.optional(chk.positive, "eg_step_eV", eg_step_eV, "eV")
    residue_limit = chk.optional(chk.positive, "residue_limit", residue_limit)
    search_eV = energy_range("search_eV", search_eV)
    if eg_range_eV is not None:
        eg_range_eV = energy_range("eg_range_eV", eg_range_eV)
    if window_eV is not None:
        window_eV = energy_range("window_eV", window_eV)
    # a DataArray with an energy axis (moved last), real, not empty; raw spectra (the
    # reference-ZLP route) have their energy scale checked, and every input but a
    # deconvolution's result its baseline (counts negative under most channels)
    spectra = spectrum_input(_spectra(si_or_ssd), "bandgap", raw=zlp is not None)
    deconvolved = isinstance(si_or_ssd, xr.Dataset) and (
        "ssd" in si_or_ssd.data_vars or "deconvolution_output" in si_or_ssd.attrs
    )
    if not deconvolved:
        survey_counts(spectra)
    source = spectra.attrs.get("source") or getattr(si_or_ssd, "attrs", {}).get("source", "")
    where = f"{source}: " if source else ""
    energy = np.asarray(spectra["energy"].values, float)
    disp = float(np.mean(np.diff(energy)))
    zparams: dict[str, Any] = {}
    extras: dict[str, Any] = {} if variance is None else {"variance": variance}
    if zlp is not None:
        from .zlp import resolve_zlp

        params, zextras = resolve_zlp(spectra, zlp)
        zparams = {
            "zlp_method": params["method"],
            "reference": params.get("reference"),
            "search_eV": tuple(float(v) for v in search_eV),
        }
        extras.update(zextras)
    if zlp_removed is None:
        zlp_removed = zlp is not None or deconvolved
    if isinstance(si_or_ssd, xr.Dataset) and "quality" in si_or_ssd.data_vars:
        extras["upstream_quality"] = si_or_ssd["quality"].astype(np.float64)
    if window_eV is None:
        mean = _mean_spectrum(spectra) if zlp is None else _mean_subtracted(spectra, zparams)
        window_eV = auto_window(energy, mean, after_residue=bool(zlp_removed))
        window_source = "auto"
    else:
        window_source = "user"
    lo, hi = (chk.in_range(f"window_eV[{i}]", v, -1e6, 1e6, "eV") for i, v in enumerate(window_eV))
    i0, i1 = _window_channels(energy, lo, hi, background, where)
    step, eg_grid = _eg_grid(energy[i0:i1], disp, eg_range_eV, eg_step_eV, where)
    b_values = {"direct": (B_DIRECT,), "indirect": (B_INDIRECT,), "free": B_FREE}[model]

    attrs = {
        "analysis": "bandgap",
        "bandgap_window_eV": [lo, hi],
        "bandgap_window_source": window_source,
        "bandgap_model": model,
        "bandgap_background": background,
        "bandgap_eg_range_eV": [float(eg_grid[0]), float(eg_grid[-1])],
        "bandgap_eg_step_eV": step,
        "bandgap_b_values": list(b_values),
        "bandgap_min_significance": float(min_significance),
        "bandgap_reference": "Rafferty & Brown, Phys. Rev. B 58, 10326 (1998)",
        "bandgap_zlp": "none (the spectra as given)"
        if zlp is None
        else f"{zparams['zlp_method']} ZLP subtracted; energies relative to each ZLP centre",
        "bandgap_zlp_removed": bool(zlp_removed),
        "bandgap_residue_limit": "none" if residue_limit is None else float(residue_limit),
    }
    attrs["bandgap_max_quality_ratio"] = (
        "none" if max_quality_ratio is None else float(max_quality_ratio)
    )
    decl = BANDGAP_BLOCK
    unc_params: dict[str, Any] = {}
    unc = parse_uncertainty(spectra, uncertainty, n_replicas, gain, noise_variance, seed)
    if unc.method == "analytic":
        raise InputError(
            "uncertainty='analytic' is not offered for the band gap: Eg is found by a grid "
            "search, which has no linearisation; use uncertainty='replicas' (or 'replicas:K')"
        )
    if unc.method == "replicas":
        if variance is not None:
            raise InputError(
                "uncertainty='replicas' with variance=: each replica is weighted by its own "
                "Poisson variance; give noise_variance= for the replicas' noise instead"
            )
        targets = ("bandgap_eV",) + (("exponent_b",) if model == "free" else ())
        decl = with_replicas(BANDGAP_BLOCK, targets, per_pixel=("zlp_cube", "upstream_quality"))
        extras.update(unc.extras(spectra))
        unc_params = unc.kernel_params()
        attrs.update(unc.attrs())
    ds = apply_kernel(
        decl,
        spectra,
        device=device,
        extras=extras,
        attrs=attrs,
        window=(i0, i1),
        eg_grid_eV=eg_grid,
        b_values=b_values,
        background=background,
        tail_exponents=TAIL_EXPONENTS,
        min_significance=float(min_significance),
        zlp_removed=bool(zlp_removed),
        residue_limit=residue_limit,
        dispersion_eV=disp,
        **zparams,
        **unc_params,
    )
    if unc.method == "replicas" and model == "free":
        # measured (tests/analysis/test_bandgap_coverage.py): with the free model's (Eg, b)
        # minimum found off the b grid (issue 14; on the 0.1 grid alone Eg's replica sigma /
        # scatter was 1.44-1.68 at b = 1.5), 300 onsets at b 0.5 and 1.5, A 1000 and 4000
        ds["bandgap_eV_sigma"].attrs["coverage"] = (
            "sigma/scatter within 0.85-1.15 with b free and fixed (tests/analysis/"
            "test_bandgap_coverage.py); +-1 / +-2 sigma 62-74 / 92-98 % where the bias is small"
        )
    if max_quality_ratio is not None and ds["valid"].ndim:
        ds = _flag_poor_fits(ds, float(max_quality_ratio))
    return ds


def _mean_subtracted(spectra: xr.DataArray, zparams: dict[str, Any]) -> np.ndarray:
    """The mean of up to 64 spectra of the first block with their ZLP model subtracted and
    their centres moved to 0 eV (host NumPy), for :func:`auto_window` on the reference route."""
    nav = spectra.dims[:-1]
    flat = spectra.stack(_px=nav) if nav else spectra.expand_dims(_px=1)
    flat = flat.transpose("_px", "energy")
    n = min(64, flat.sizes["_px"])
    y = np.asarray(flat.isel(_px=slice(0, n)).values, dtype=np.float64)
    energy = np.asarray(spectra["energy"].values, np.float64)
    method = zparams["zlp_method"]
    if method == "cube":  # a per-pixel cube: the plain mean is the best host guess
        return y.mean(axis=0)
    z = zlp_kernel(
        y, energy, method=method, reference=zparams["reference"], search_eV=zparams["search_eV"]
    )
    ok = np.asarray(z["valid"])
    if not ok.any():
        return y.mean(axis=0)
    c = np.asarray(z["zlp_centre_eV"])[ok]
    sub = y[ok] - np.nan_to_num(np.asarray(z["zlp"])[ok])
    d = float(energy[1] - energy[0])
    return shift_kernel(sub, c, "linear", dispersion_eV=d, fill_value=0.0).mean(axis=0)


def zlp_subtracted(
    spectra: xr.DataArray, zlp: Any, search_eV: tuple[float, float] = SEARCH_EV
) -> xr.DataArray:
    """A few raw spectra with their ZLP model (``zlp=`` as in :func:`bandgap`) subtracted and
    each ZLP centre moved to 0 eV: what the reference-ZLP route fits, to draw the fits over
    (:func:`fit_curves`). Host NumPy, meant for the handful of pixels one plots; counts per
    channel, energy relative to the ZLP (eV); pixels without a usable ZLP are NaN."""
    from .zlp import resolve_zlp

    params, extras = resolve_zlp(spectra, zlp)
    energy = np.asarray(spectra["energy"].values, np.float64)
    data = np.asarray(spectra.values, dtype=np.float64)
    flat = data.reshape(-1, energy.size)
    cube = extras.get("zlp_cube")
    z = zlp_kernel(
        flat,
        energy,
        method=params["method"],
        reference=params.get("reference"),
        zlp_cube=None if cube is None else np.asarray(cube, np.float64).reshape(flat.shape),
        search_eV=tuple(search_eV),
    )
    ok = np.asarray(z["valid"])
    c = np.where(ok, np.asarray(z["zlp_centre_eV"]), 0.0)
    sub = flat - np.where(ok[:, None], np.nan_to_num(np.asarray(z["zlp"])), 0.0)
    d = float(energy[1] - energy[0])
    out = shift_kernel(sub, c, "linear", dispersion_eV=d, fill_value=0.0)
    out = np.where(ok[:, None], out, np.nan)
    return xr.DataArray(
        out.reshape(data.shape),
        dims=spectra.dims,
        coords=spectra.coords,
        attrs={"units": "counts", "long_name": "spectrum less its ZLP model"},
    )


def _flag_poor_fits(ds: xr.Dataset, ratio: float) -> xr.Dataset:
    """Flag pixels whose reduced chi^2 is over ``ratio`` times the image's median (bit
    NO_ONSET; lazy for a lazy result, at once for the engine's eager one)."""
    import dask.array as da

    fq = ds["fit_quality"]
    if isinstance(fq.data, da.Array):
        data = fq.data
        flat = data.reshape(-1).rechunk(-1)
        median = da.nanmedian(flat, axis=0) if flat.size else np.nan
    else:  # computed in memory (eelsgpu.engine's eager path): stays NumPy
        data = np.asarray(fq.data)
        median = np.nanmedian(data.reshape(-1)) if data.size else np.nan
    poor = xr.DataArray(data > ratio * median, dims=fq.dims, coords=fq.coords)
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if name == "valid":
            out[name] = (var & ~poor).assign_attrs(var.attrs)
        elif name == "quality":
            flagged = xr.where(poor, var | np.uint32(qbits.NO_ONSET), var)
            out[name] = flagged.astype(var.dtype).assign_attrs(var.attrs)
        elif name in ("residue_excess", "zlp_residue_end_eV", "zlp_intensity", "zlp_centre_eV"):
            out[name] = var
        elif name == "gap_type":
            out[name] = xr.where(poor, -1, var).astype(var.dtype).assign_attrs(var.attrs)
        elif name != "onset_significance":
            out[name] = xr.where(poor, np.nan, var).astype(var.dtype).assign_attrs(var.attrs)
    return out


def fit_curves(spectra: xr.DataArray, result: xr.Dataset | Mapping[str, Any]) -> xr.DataArray:
    """The fitted onset curves A (E - Eg)^b + background of a few spectra, to draw over them.

    Re-runs the fit of :func:`bandgap` with the settings recorded in ``result`` (its attrs: the
    window, model, background and Eg grid) on ``spectra`` (host, NumPy; meant for the handful
    of pixels one plots, not for whole images).

    Parameters
    ----------
    spectra : xarray.DataArray (..., energy)
        The spectra that were fitted (the same energy axis).
    result : xarray.Dataset or mapping
        The output of :func:`bandgap` or its attrs.

    Returns
    -------
    xarray.DataArray
        Same dims as ``spectra``: the best-fitting curve (counts per channel) inside the fit
        window, NaN outside it and for pixels with non-finite data.
    """
    attrs = result.attrs if isinstance(result, xr.Dataset) else result
    if attrs.get("analysis") != "bandgap":
        raise InputError("fit_curves needs the result of eelsgpu.bandgap (its attrs)")
    energy = np.asarray(spectra["energy"].values, float)
    lo, hi = attrs["bandgap_window_eV"]
    i0 = int(np.searchsorted(energy, lo, side="left"))
    i1 = int(np.searchsorted(energy, hi, side="right"))
    g0, g1 = attrs["bandgap_eg_range_eV"]
    step = float(attrs["bandgap_eg_step_eV"])
    grid = g0 + step * np.arange(int(round((g1 - g0) / step)) + 1)
    data = np.asarray(spectra.values, dtype=np.float64)
    flat = data.reshape(-1, energy.size)
    out = bandgap_kernel(
        flat,
        energy,
        window=(i0, i1),
        eg_grid_eV=grid,
        b_values=tuple(float(b) for b in np.atleast_1d(attrs["bandgap_b_values"])),
        background=str(attrs["bandgap_background"]),
        tail_exponents=TAIL_EXPONENTS,
        min_significance=float(attrs.get("bandgap_min_significance", 5.0)),
        return_model=True,
    )
    curves = np.full(flat.shape, np.nan)
    curves[:, i0:i1] = np.asarray(out["model"])
    return xr.DataArray(
        curves.reshape(data.shape),
        dims=spectra.dims,
        coords=spectra.coords,
        attrs={"units": spectra.attrs.get("units", "counts"), "long_name": "onset fit"},
    )
