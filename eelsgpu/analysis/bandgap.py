"""Band-gap maps: the energy and type of the absorption onset, fitted per pixel.

:func:`bandgap` fits ``I(E) = A (E - Eg)^b + background`` (Rafferty & Brown, Phys. Rev. B 58,
10326 (1998)) to every pixel: it picks the spectra and the fit window (eV), builds the Eg and b
grids, runs :func:`eelsgpu.kernels.bandgap.bandgap_kernel` (the equations and the fit are
described there) over the pixel blocks through the engine, and flags pixels the model does not
describe. :func:`fit_curves` redraws the fits of a few spectra from a result's attrs.

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
from ..kernels.bandgap import (
    B_DIRECT,
    B_FREE,
    B_INDIRECT,
    BACKGROUNDS,
    BANDGAP_BLOCK,
    MODELS,
    TAIL_EXPONENTS,
    auto_window,
    bandgap_kernel,
)

__all__ = ["bandgap", "fit_curves"]


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
    device: str = "auto",
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
        Per-channel variance (same shape as the spectra); default Poisson.
    device : {"auto", "cpu", "gpu"}

    Returns
    -------
    xarray.Dataset
        ``bandgap_eV``, ``bandgap_error_eV`` (eV), ``exponent_b``, ``exponent_error``,
        ``gap_type`` (0 direct, 1 indirect, -1 flagged; with a fixed model, the type assumed),
        ``fit_quality`` (reduced chi^2), ``r_squared``, ``onset_significance`` (sigma, also for
        flagged pixels, as a diagnostic), ``valid``; attrs give the window, model, background
        and grids (what :func:`fit_curves` needs to redraw the fits).

    Examples
    --------
    >>> ds = bandgap(ssd, window_eV=(1.0, 4.0), model="free")  # doctest: +SKIP
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {model!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, not {background!r}")
    spectra = _spectra(si_or_ssd)
    source = spectra.attrs.get("source") or getattr(si_or_ssd, "attrs", {}).get("source", "")
    where = f"{source}: " if source else ""
    energy = np.asarray(spectra["energy"].values, float)
    disp = float(np.mean(np.diff(energy)))
    if window_eV is None:
        window_eV = auto_window(energy, _mean_spectrum(spectra))
        window_source = "auto"
    else:
        window_source = "user"
    lo, hi = (float(v) for v in window_eV)
    i0, i1 = _window_channels(energy, lo, hi, background, where)
    step, eg_grid = _eg_grid(energy[i0:i1], disp, eg_range_eV, eg_step_eV, where)
    b_values = {"direct": (B_DIRECT,), "indirect": (B_INDIRECT,), "free": B_FREE}[model]

    extras = {} if variance is None else {"variance": variance}
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
    }
    attrs["bandgap_max_quality_ratio"] = (
        "none" if max_quality_ratio is None else float(max_quality_ratio)
    )
    ds = apply_kernel(
        BANDGAP_BLOCK,
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
    )
    if max_quality_ratio is not None and ds["valid"].ndim:
        ds = _flag_poor_fits(ds, float(max_quality_ratio))
    return ds


def _flag_poor_fits(ds: xr.Dataset, ratio: float) -> xr.Dataset:
    """Flag pixels whose reduced chi^2 is over ``ratio`` times the image's median (lazy)."""
    import dask.array as da

    fq = ds["fit_quality"]
    data = fq.data if isinstance(fq.data, da.Array) else da.from_array(np.asarray(fq.data))
    flat = data.reshape(-1).rechunk(-1)
    median = da.nanmedian(flat, axis=0) if flat.size else np.nan
    poor = xr.DataArray(data > ratio * median, dims=fq.dims, coords=fq.coords)
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if name == "valid":
            out[name] = (var & ~poor).assign_attrs(var.attrs)
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
