"""Pictures of maps and spectra (matplotlib, no screen needed).

Every map picture has a colour bar labelled with the quantity and its unit, a scale bar from the
pixel calibration when the pixels are in nm, and NaN (flagged) pixels shown in grey.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_map", "plot_spectra"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _nice_length(span: float) -> float:
    """A round scale-bar length of about a fifth of ``span``."""
    target = span / 5.0
    if target <= 0:
        return 0.0
    exp = np.floor(np.log10(target))
    for m in (5.0, 2.0, 1.0):
        if m * 10**exp <= target:
            return float(m * 10**exp)
    return float(10**exp)


def _title(da: xr.DataArray, title: str | None) -> str:
    if title:
        return title
    name = da.attrs.get("long_name") or da.name or ""
    return str(name)


def _unit_label(da: xr.DataArray) -> str:
    unit = da.attrs.get("units", "")
    name = da.attrs.get("long_name") or da.name or ""
    return f"{name} ({unit})" if unit else str(name)


def plot_map(
    da: xr.DataArray,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    cmap: str = "viridis",
    robust: bool = True,
    ax=None,
):
    """Draw a 2-D map (dims ``y, x``) with colour bar and scale bar; save it if ``path`` is given.

    A 1-D map (a line scan) is drawn as a profile against x.

    Parameters
    ----------
    da : xarray.DataArray
        The map; its ``units`` and ``long_name`` attributes label the colour bar.
    path : path, optional
        Where to write the PNG.
    robust : bool
        Colour limits from the 1st and 99th percentiles (outliers do not wash the map out).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    values = np.asarray(da.values, dtype=float)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.6, 4.6), dpi=120, layout="constrained")
    else:
        fig = ax.figure
    if values.ndim == 1:
        dim = da.dims[0]
        coord = da[dim].values if dim in da.coords else np.arange(values.size)
        ax.plot(coord, values, "o-", ms=3)
        unit = da[dim].attrs.get("units", "px") if dim in da.coords else "px"
        ax.set_xlabel(f"{dim} ({unit})")
        ax.set_ylabel(_unit_label(da))
    elif values.ndim == 2:
        finite = values[np.isfinite(values)]
        vmin = vmax = None
        if robust and finite.size:
            vmin, vmax = np.percentile(finite, [1, 99])
            if vmin == vmax:
                vmin, vmax = None, None
        cm = plt.get_cmap(cmap).copy()
        cm.set_bad("0.75")
        ydim, xdim = da.dims
        xs = da[xdim].values if xdim in da.coords else np.arange(values.shape[1])
        ys = da[ydim].values if ydim in da.coords else np.arange(values.shape[0])
        unit = da[xdim].attrs.get("units", "px") if xdim in da.coords else "px"
        step_x = float(xs[1] - xs[0]) if xs.size > 1 else 1.0
        step_y = float(ys[1] - ys[0]) if ys.size > 1 else 1.0
        extent = (xs[0] - step_x / 2, xs[-1] + step_x / 2, ys[-1] + step_y / 2, ys[0] - step_y / 2)
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=vmin, vmax=vmax,
                       extent=extent, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, shrink=0.9)
        cb.set_label(_unit_label(da))
        ax.set_axis_off()
        span = abs(extent[1] - extent[0])
        length = _nice_length(span)
        if length > 0:
            x0 = extent[0] + 0.05 * span
            y0 = extent[2] - 0.06 * abs(extent[2] - extent[3])
            ax.plot([x0, x0 + length], [y0, y0], color="white", lw=4, solid_capstyle="butt")
            ax.plot([x0, x0 + length], [y0, y0], color="black", lw=1.5, solid_capstyle="butt")
            ax.text(x0 + length / 2, y0 - 0.03 * abs(extent[2] - extent[3]),
                    f"{length:g} {unit}", ha="center", va="bottom", color="black",
                    fontsize=9, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
        n_bad = int(np.sum(~np.isfinite(values)))
        if n_bad:
            ax.text(0.99, 0.01, f"{n_bad} flagged px (grey)", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=8, color="0.2")
    else:
        raise ValueError(f"plot_map draws 1-D or 2-D maps, not {values.ndim}-D {da.dims}")
    ax.set_title(_title(da, title))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        if own:
            plt.close(fig)
    return fig


def plot_spectra(
    spectra: dict[str, xr.DataArray],
    path: str | os.PathLike | None = None,
    *,
    title: str = "",
    xlim: tuple[float, float] | None = None,
    ylabel: str | None = None,
):
    """Overlay labelled 1-D spectra (dim ``energy``) and save the figure if ``path`` is given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120, layout="constrained")
    unit = ""
    for label, da in spectra.items():
        dim = da.dims[-1]
        ax.plot(da[dim].values, np.asarray(da.values), label=label, lw=1.2)
        unit = da.attrs.get("units", unit)
        xunit = da[dim].attrs.get("units", "eV")
        ax.set_xlabel(f"{dim} ({xunit})")
    ax.set_ylabel(ylabel or unit)
    if xlim:
        ax.set_xlim(*xlim)
    ax.legend(frameon=False)
    ax.set_title(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
    return fig
