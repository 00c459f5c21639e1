"""Pictures of maps and spectra (matplotlib, no screen needed).

A map picture is what a microscopist looks at first, so each one has

* the quantity and its unit in the title and on the colour bar;
* a scale bar of a round length (1, 2 or 5 x 10^n nm, about a fifth of the field of view) from
  the pixel calibration, or a note that the pixels are not calibrated;
* flagged pixels (NaN, or -1 in a label map) in grey, with their count in the corner;
* robust colour limits (the 1st and 99th percentiles of maps of 100 pixels or more, so a few
  hot pixels do not wash the map out), with the colour bar's arrows showing values beyond;
* a figure shaped like the map, square pixels, no tick clutter;
* label maps (integers: clusters, gap type; booleans: valid) drawn with discrete colours and one
  colour-bar tick per label, named from ``flag_meanings`` when the variable has it.

:func:`plot_spectra` overlays spectra; :func:`plot_decomposition` draws the scree plot and the
components of :func:`eelsgpu.decompose`. :func:`plot_quality` draws a ``quality`` bitmask
(:mod:`eelsgpu.kernels.quality`) as a picture of which bits are set where: a panel of the whole
verdict (no bit, warnings only, fatal) and one panel per bit that is set anywhere, each with its
pixel count; a line scan or a single spectrum becomes a grid of bits against position.
:func:`plot_map` draws a quality map that way too, so every PNG of maps shows it.
Analyses never import this module; the CLI and the report do.

Examples
--------
>>> import numpy as np, xarray as xr
>>> m = xr.DataArray(np.random.default_rng(0).random((20, 30)), dims=("y", "x"),
...                  coords={"y": np.arange(20) * 0.5, "x": np.arange(30) * 0.5},
...                  attrs={"units": "nm", "long_name": "thickness"})
>>> m["x"].attrs["units"] = m["y"].attrs["units"] = "nm"
>>> fig = plot_map(m)
>>> scale_bar_label(fig.axes[0])
'2 nm'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = [
    "FILM_PARTS",
    "FLAGGED_GREY",
    "optical_at",
    "plot_film_fit",
    "read_optical_table",
    "map_variables",
    "paired_map_variables",
    "uncertainty_map",
    "nice_length",
    "plot_decomposition",
    "is_quality",
    "plot_map",
    "plot_maps",
    "plot_quality",
    "plot_spectra",
    "quality_bits",
    "quality_summary",
    "scale_bar_label",
]

#: Colour of flagged (NaN) pixels.
FLAGGED_GREY = "0.72"
_SPATIAL_UNITS = {"nm": 1.0, "um": 1e3, "µm": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def nice_length(span: float, fraction: float = 0.2) -> float:
    """The round length (1, 2 or 5 x 10^n) nearest below ``fraction`` of ``span``.

    >>> nice_length(37.0), nice_length(100.0), nice_length(0.9)
    (5.0, 20.0, 0.1)
    """
    target = span * fraction
    if not np.isfinite(target) or target <= 0:
        return 0.0
    exp = np.floor(np.log10(target))
    for m in (5.0, 2.0, 1.0):
        if m * 10**exp <= target * (1 + 1e-9):
            return float(m * 10**exp)
    return float(10**exp)


# kept for callers of the first version
_nice_length = nice_length


def _fmt_length(length: float, unit: str) -> str:
    if unit == "nm" and length >= 1000:
        return f"{length / 1000:g} µm"
    if unit == "nm" and length < 1:
        return f"{length * 10:g} Å"
    return f"{length:g} {unit}"


def _unit(da: xr.DataArray) -> str:
    return str(da.attrs.get("units", "") or "")


def _quantity(da: xr.DataArray) -> str:
    return str(da.attrs.get("long_name") or da.name or "")


def _unit_label(da: xr.DataArray) -> str:
    unit = _unit(da)
    name = _quantity(da)
    return f"{name} ({unit})" if unit else name


def _title(da: xr.DataArray, title: str | None) -> str:
    if title:
        return title
    return _unit_label(da)


def _coord(da: xr.DataArray, dim: str, n: int) -> tuple[np.ndarray, str]:
    if dim in da.coords:
        return np.asarray(da[dim].values, dtype=float), str(da[dim].attrs.get("units", "px"))
    return np.arange(n, dtype=float), "px"


def _is_labels(da: xr.DataArray, values: np.ndarray) -> bool:
    if np.issubdtype(da.dtype, np.bool_) or "flag_meanings" in da.attrs:
        return True
    if np.issubdtype(da.dtype, np.integer):
        return np.unique(values[np.isfinite(values)]).size <= 20
    return False


def scale_bar_label(ax) -> str | None:
    """The text of the scale bar drawn on ``ax`` by :func:`plot_map` (None if there is none)."""
    for t in ax.texts:
        if t.get_gid() == "scalebar-label":
            return t.get_text()
    return None


def _draw_scale_bar(ax, extent, unit: str) -> None:
    left, right, bottom, top = extent
    span_x = abs(right - left)
    span_y = abs(bottom - top)
    length = nice_length(span_x)
    if length <= 0:
        return
    from matplotlib.patches import Rectangle

    x0 = min(left, right) + 0.05 * span_x
    height = 0.022 * span_y
    # y grows downwards in the picture: the bottom of the map is at max(y)
    y_bar = max(bottom, top) - 0.06 * span_y
    ax.add_patch(
        Rectangle(
            (x0 - 0.012 * span_x, y_bar - 0.085 * span_y),
            length + 0.024 * span_x,
            0.085 * span_y + height + 0.02 * span_y,
            facecolor="black",
            alpha=0.45,
            edgecolor="none",
            gid="scalebar-background",
            zorder=4,
        )
    )
    ax.add_patch(
        Rectangle(
            (x0, y_bar),
            length,
            height,
            facecolor="white",
            edgecolor="none",
            gid="scalebar",
            zorder=5,
        )
    )
    ax.text(
        x0 + length / 2,
        y_bar - 0.012 * span_y,
        _fmt_length(length, unit),
        ha="center",
        va="bottom",
        color="white",
        fontsize=9,
        fontweight="bold",
        gid="scalebar-label",
        zorder=6,
    )


def plot_map(
    da: xr.DataArray,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    cmap: str | None = None,
    robust: bool = True,
    ax=None,
    vmin: float | None = None,
    vmax: float | None = None,
    sigma: xr.DataArray | None = None,
):
    """Draw a 2-D map (dims ``y, x``) with colour bar and scale bar; save it if ``path`` is given.

    A 1-D map (a line scan) is drawn as a profile against its coordinate. With ``sigma`` (its
    ``<name>_sigma``, issue 14) the map is drawn beside its uncertainty (:func:`uncertainty_map`:
    the relative sigma in % for a positive quantity, the sigma itself for energies and signed
    quantities); a profile gets +-1 sigma error bars.

    Parameters
    ----------
    da : xarray.DataArray
        The map; its ``units`` and ``long_name`` attributes label the title and colour bar, its
        ``y``/``x`` coordinates (with ``units`` "nm") give the scale bar.
    path : path, optional
        Where to write the PNG.
    title : str, optional
        Replaces the default title "long_name (units)".
    cmap : str, optional
        Colour map for continuous maps (label maps use discrete colours). Default "viridis", or
        "RdBu_r" centred on 0 when the values run well into both signs (a PCA loading, a shift).
    robust : bool
        Colour limits from the 1st and 99th percentiles (outliers do not wash the map out).
    ax : matplotlib Axes, optional
        Draw into it instead of a new figure.
    vmin, vmax : float, optional
        Fixed colour limits.
    sigma : xarray.DataArray, optional
        One standard deviation of ``da`` (same dims and units).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if is_quality(da):
        return plot_quality(da, path, title=title, ax=ax)
    plt = _pyplot()
    values = np.asarray(da.values, dtype=float)
    if values.ndim not in (1, 2):
        raise ValueError(f"plot_map draws 1-D or 2-D maps, not {values.ndim}-D {da.dims}")
    own = ax is None
    if values.ndim == 1:
        if own:
            fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=120, layout="constrained")
        err = None if sigma is None else np.asarray(sigma.values, dtype=float)
        _draw_profile(ax, da, values, title, err)
        return _finish(ax.figure, path, own, plt)
    if sigma is not None and own:
        return _plot_map_and_sigma(plt, da, sigma, path, title, cmap, robust, vmin, vmax)

    grid = _MapGrid.of(da, values)
    if own:
        fig, ax = _map_figure(plt, grid)
    if _is_labels(da, values):
        cb, bad = _draw_labels(plt, ax, da, values, grid.extent)
    else:
        cb, bad = _draw_continuous(plt, ax, da, values, grid.extent, cmap, robust, vmin, vmax)
    cb.set_label(_unit_label(da))
    _bare_axes(ax)
    _draw_calibration(ax, grid)
    _draw_flagged_count(ax, int(bad.sum()))
    ax.set_title(_title(da, title), fontsize=11)
    return _finish(ax.figure, path, own, plt)


def uncertainty_map(da: xr.DataArray, sigma: xr.DataArray) -> xr.DataArray:
    """What to draw beside a map: its relative sigma (%) or its sigma.

    Relative (``100 sigma / |value|``, unit %) for a quantity that is positive over the map and
    not an energy (intensities, ratios, thickness); the sigma itself (the map's unit) for
    energies (a peak position's relative error says nothing) and for signed quantities.

    Examples
    --------
    >>> v = xr.DataArray(np.array([100.0, 400.0]), dims="x", attrs={"units": "counts"})
    >>> uncertainty_map(v, np.sqrt(v)).values.tolist()
    [10.0, 5.0]
    """
    values = np.asarray(da.values, dtype=float)
    finite = values[np.isfinite(values)]
    unit = str(da.attrs.get("units", ""))
    name = da.attrs.get("long_name") or da.name or "value"
    if unit != "eV" and finite.size and np.all(finite > 0):
        rel = 100.0 * sigma / abs(da)
        rel.attrs = {"units": "%", "long_name": f"relative sigma of {name}"}
        return rel
    out = sigma.copy()
    out.attrs = {"units": unit, "long_name": f"sigma of {name}"}
    return out


def _plot_map_and_sigma(plt, da, sigma, path, title, cmap, robust, vmin, vmax):
    """The map (left) beside its uncertainty (right), one figure."""
    values = np.asarray(da.values, dtype=float)
    grid = _MapGrid.of(da, values)
    aspect = (grid.ny * abs(grid.step_y)) / max(grid.nx * abs(grid.step_x), 1e-12)
    height = float(np.clip(5.0 * aspect * 0.86 + 0.8, 2.4, 7.5))
    fig, axes = plt.subplots(1, 2, figsize=(10.4, height), dpi=130, layout="constrained")
    unc = uncertainty_map(da, sigma)
    for a, d, t, cm, lo, hi in (
        (axes[0], da, title, cmap, vmin, vmax),
        (axes[1], unc, None, "magma", None, None),
    ):
        vals = np.asarray(d.values, dtype=float)
        cb, bad = _draw_continuous(plt, a, d, vals, grid.extent, cm, robust, lo, hi)
        cb.set_label(_unit_label(d))
        _bare_axes(a)
        _draw_calibration(a, grid)
        _draw_flagged_count(a, int(bad.sum()))
        a.set_title(_title(d, t), fontsize=10)
    axes[1].set_gid("sigma")
    return _finish(fig, path, True, plt)


def _draw_profile(
    ax, da: xr.DataArray, values: np.ndarray, title: str | None, err: np.ndarray | None = None
) -> None:
    """A 1-D map as a profile against its coordinate, flagged points as grey vertical lines;
    ``err``: +-1 sigma error bars."""
    dim = da.dims[0]
    coord, unit = _coord(da, dim, values.size)
    if err is None:
        ax.plot(coord, values, "o-", ms=3, lw=1.2)
    else:
        ax.errorbar(coord, values, yerr=err, fmt="o-", ms=3, lw=1.2, capsize=2, label="+-1 sigma")
        ax.legend(frameon=False, fontsize=8)
    bad = ~np.isfinite(values)
    if bad.any():
        for c in coord[bad]:
            ax.axvline(c, color=FLAGGED_GREY, lw=2, zorder=0)
        ax.text(
            0.99,
            0.02,
            f"{int(bad.sum())} flagged px (grey)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
    ax.set_xlabel(f"{dim} ({unit})")
    ax.set_ylabel(_unit_label(da))
    ax.grid(alpha=0.3)
    ax.set_title(_title(da, title))


@dataclass(frozen=True)
class _MapGrid:
    """Where a 2-D map's pixels lie: size, spatial units, pixel steps and the imshow extent."""

    nx: int
    ny: int
    xunit: str
    yunit: str
    step_x: float
    step_y: float
    extent: tuple[float, float, float, float]

    @classmethod
    def of(cls, da: xr.DataArray, values: np.ndarray) -> _MapGrid:
        ydim, xdim = da.dims
        ny, nx = values.shape
        xs, xunit = _coord(da, xdim, nx)
        ys, yunit = _coord(da, ydim, ny)
        step_x = float(xs[1] - xs[0]) if xs.size > 1 else 1.0
        step_y = float(ys[1] - ys[0]) if ys.size > 1 else 1.0
        extent = (
            xs[0] - step_x / 2,
            xs[-1] + step_x / 2,
            ys[-1] + step_y / 2,
            ys[0] - step_y / 2,
        )
        return cls(nx, ny, xunit, yunit, step_x, step_y, extent)


def _map_figure(plt, grid: _MapGrid):
    """A figure shaped like the map (square pixels), 5.6 in wide."""
    aspect = (grid.ny * abs(grid.step_y)) / max(grid.nx * abs(grid.step_x), 1e-12)
    width = 5.6
    height = float(np.clip(width * aspect * 0.86 + 0.7, 2.4, 7.5))
    return plt.subplots(figsize=(width, height), dpi=130, layout="constrained")


def _draw_labels(plt, ax, da: xr.DataArray, values: np.ndarray, extent):
    """A label map in discrete colours, one colour-bar tick per label (named from
    ``flag_meanings``); negative labels are flagged. Returns the colour bar and the flags."""
    fig = ax.figure
    bad = ~np.isfinite(values) | (values < 0)
    shown = np.where(bad, np.nan, values)
    levels = np.unique(shown[np.isfinite(shown)]).astype(int)
    named = [v for v in _flag_names(da)]
    if np.issubdtype(da.dtype, np.bool_):
        levels = np.array([0, 1])
    elif named:  # every named label gets its colour, present or not
        levels = np.union1d(levels, named).astype(int)
    lo, hi = (int(levels.min()), int(levels.max())) if levels.size else (0, 1)
    n_col = hi - lo + 1
    base = plt.get_cmap("tab10" if n_col <= 10 else "tab20")
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cm = ListedColormap([base(i % base.N) for i in range(n_col)]).with_extremes(bad=FLAGGED_GREY)
    norm = BoundaryNorm(np.arange(lo - 0.5, hi + 1.5), n_col)
    im = ax.imshow(
        np.ma.masked_invalid(shown), cmap=cm, norm=norm, extent=extent, interpolation="nearest"
    )
    cb = fig.colorbar(im, ax=ax, shrink=0.9, ticks=np.arange(lo, hi + 1))
    names = _flag_names(da)
    if np.issubdtype(da.dtype, np.bool_):
        names = {0: "False", 1: "True"}
    if names:
        cb.set_ticklabels([names.get(i, str(i)) for i in range(lo, hi + 1)])
    return cb, bad


def _colour_limits(
    finite: np.ndarray, vmin: float | None, vmax: float | None, robust: bool
) -> tuple[float | None, float | None]:
    """Colour limits: those given, else the 1st/99th percentiles (``robust``, 100 pixels or
    more) or the extremes of the finite values; never an empty range."""
    lo_v, hi_v = vmin, vmax
    if finite.size and (lo_v is None or hi_v is None):
        # percentiles only where there are enough pixels for a few to be outliers
        if robust and finite.size >= 100:
            p_lo, p_hi = np.percentile(finite, [1, 99])
        else:
            p_lo, p_hi = finite.min(), finite.max()
        lo_v = p_lo if lo_v is None else lo_v
        hi_v = p_hi if hi_v is None else hi_v
        if hi_v <= lo_v:
            lo_v, hi_v = float(finite.min()), float(finite.max())
            if hi_v <= lo_v:
                lo_v, hi_v = lo_v - 0.5 * (abs(lo_v) or 1), hi_v + 0.5 * (abs(hi_v) or 1)
    return lo_v, hi_v


def _draw_continuous(
    plt,
    ax,
    da: xr.DataArray,
    values: np.ndarray,
    extent,
    cmap: str | None,
    robust: bool,
    vmin: float | None,
    vmax: float | None,
):
    """A continuous map with robust limits, a diverging map centred on 0 for signed values,
    and colour-bar arrows for values beyond the limits. Returns the colour bar and the flags."""
    fig = ax.figure
    bad = ~np.isfinite(values)
    finite = values[~bad]
    lo_v, hi_v = _colour_limits(finite, vmin, vmax, robust)
    if cmap is None and lo_v is not None and lo_v < 0 < hi_v:
        if min(-lo_v, hi_v) > 0.2 * (hi_v - lo_v) and vmin is None and vmax is None:
            cmap = "RdBu_r"
            lo_v, hi_v = -max(-lo_v, hi_v), max(-lo_v, hi_v)
    cm = plt.get_cmap(cmap or "viridis").with_extremes(bad=FLAGGED_GREY)
    im = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=cm,
        vmin=lo_v,
        vmax=hi_v,
        extent=extent,
        interpolation="nearest",
    )
    extend = "neither"
    if finite.size and lo_v is not None:
        below, above = finite.min() < lo_v, finite.max() > hi_v
        extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
            (bool(below), bool(above)), "neither"
        )
    cb = fig.colorbar(im, ax=ax, shrink=0.9, extend=extend)
    return cb, bad


def _bare_axes(ax) -> None:
    """No ticks, no frame: the scale bar gives the lengths."""
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _draw_calibration(ax, grid: _MapGrid) -> None:
    """A scale bar where both axes share a length unit, else a note that there is none."""
    calibrated = grid.xunit in _SPATIAL_UNITS and grid.xunit == grid.yunit
    if calibrated:
        _draw_scale_bar(ax, grid.extent, grid.xunit)
    else:
        ax.text(
            0.01,
            -0.01,
            f"{grid.nx} x {grid.ny} px (no spatial calibration)",
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=8,
            color="0.3",
            gid="no-calibration",
        )


def _draw_flagged_count(ax, n_bad: int) -> None:
    """The number of flagged (grey) pixels in the lower right corner, if any."""
    if n_bad:
        ax.text(
            1.0,
            -0.01,
            f"{n_bad} flagged px (grey)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="0.25",
            gid="flagged-count",
        )


def _flag_names(da: xr.DataArray) -> dict[int, str]:
    meanings = da.attrs.get("flag_meanings")
    values = da.attrs.get("flag_values")
    if not meanings:
        return {}
    words = str(meanings).split()
    if values is None:
        return {}
    vals = np.atleast_1d(np.asarray(values)).astype(int).tolist()
    if len(vals) != len(words):
        return {}
    return {v: w.replace("_", " ") for v, w in zip(vals, words, strict=True) if v >= 0}


def _finish(fig, path, own, plt):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        if own:
            plt.close(fig)
    return fig


# --------------------------------------------------------------------------- quality bitmask
#: Colours of the quality pictures: no bit set, a warning (non-fatal bit), a fatal bit.
QUALITY_COLOURS = {"good": "#f2f2f2", "warning": "#f0a030", "fatal": "#c8202a"}


def is_quality(da: xr.DataArray) -> bool:
    """Whether ``da`` is a quality bitmask (named ``quality``, or an integer map whose attributes
    hold the bit table of :func:`eelsgpu.kernels.quality.describe`)."""
    if not (np.issubdtype(da.dtype, np.integer) or np.issubdtype(da.dtype, np.floating)):
        return False
    if da.name == "quality":
        return True
    return np.issubdtype(da.dtype, np.integer) and any(
        isinstance(v, Mapping) and "bit" in v for v in da.attrs.values()
    )


def quality_bits(da: xr.DataArray) -> list[tuple[str, int, bool, str, int]]:
    """The bits of a quality map: (name, bit value, fatal, meaning, pixels set), in bit order,
    from the map's attributes (the table it was written with) or else
    :data:`eelsgpu.kernels.quality.BITS`."""
    from .kernels import quality

    table = {
        str(k): (int(v["bit"]), bool(v.get("fatal", False)), str(v.get("meaning", "")))
        for k, v in da.attrs.items()
        if isinstance(v, Mapping) and "bit" in v
    } or {k: (bit, fatal, meaning) for k, (bit, fatal, meaning) in quality.BITS.items()}
    values = _quality_values(da)
    out = []
    for name, (bit, fatal, meaning) in sorted(table.items(), key=lambda kv: kv[1][0]):
        out.append((name, bit, fatal, meaning, int(np.sum((values & bit) > 0))))
    return out


def _quality_values(da: xr.DataArray) -> np.ndarray:
    v = np.asarray(da.values)
    if np.issubdtype(v.dtype, np.floating):
        v = np.where(np.isfinite(v), v, 0)
    return v.astype(np.uint64)


def _fatal_mask(da: xr.DataArray) -> int:
    return sum(bit for _, bit, fatal, _, _ in quality_bits(da) if fatal)


def quality_summary(da: xr.DataArray) -> str:
    """One line: how many pixels have no fatal bit, and each bit that is set with its count.

    >>> import numpy as np, xarray as xr
    >>> from eelsgpu.kernels import quality as q
    >>> m = xr.DataArray(np.array([0, q.EPS2_NEGATIVE, q.SURFACE_NOT_CORRECTED], np.uint32),
    ...                  dims="x", name="quality")
    >>> quality_summary(m)
    'quality: 2 of 3 pixels without a fatal bit; EPS2_NEGATIVE (fatal) 1 px, SURFACE_NOT_CORRECTED 1 px'
    """
    values = _quality_values(da)
    fatal = (values & _fatal_mask(da)) > 0
    parts = [
        f"{name}{' (fatal)' if is_fatal else ''} {count} px"
        for name, _, is_fatal, _, count in quality_bits(da)
        if count
    ]
    head = f"quality: {int(values.size - fatal.sum())} of {values.size} pixels without a fatal bit"
    return head + ("; " + ", ".join(parts) if parts else "; no bit set")


def plot_quality(
    da: xr.DataArray,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    ax=None,
):
    """Draw a quality bitmask: which bits are set, and where.

    A 2-D map gives one panel of the verdict per pixel (grey: no bit; orange: warnings only;
    red: a fatal bit, not valid) and one panel per bit that is set anywhere (its pixels in red
    for a fatal bit, orange for a warning), titled with the bit's name and pixel count; the
    first panel has the scale bar. A line scan (1-D) or a single spectrum (0-D) is drawn as a
    grid: one row per bit set anywhere (and the verdict), one column per pixel.

    Parameters
    ----------
    da : xarray.DataArray
        The ``quality`` map (uint32 bits of :mod:`eelsgpu.kernels.quality`).
    path : path, optional
        Where to write the PNG.
    title : str, optional
    ax : matplotlib Axes, optional
        Ignored for 2-D maps with bits set (they need several panels); used otherwise.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    values = _quality_values(da)
    bits = [b for b in quality_bits(da) if b[4]]
    fatal = (values & _fatal_mask(da)) > 0
    verdict = np.where(fatal, 2, np.where(values > 0, 1, 0))
    n_bad = int(fatal.sum())
    head = title or (
        f"quality: {values.size - n_bad} of {values.size} px without a fatal bit"
        if values.size > 1
        else "quality"
    )
    colours = [QUALITY_COLOURS["good"], QUALITY_COLOURS["warning"], QUALITY_COLOURS["fatal"]]
    cmap = ListedColormap(colours)
    if values.ndim == 2:
        grid = _MapGrid.of(da, values.astype(float))
        n_panels = 1 + len(bits)
        ncols = min(4, n_panels)
        nrows = -(-n_panels // ncols)
        aspect = (grid.ny * abs(grid.step_y)) / max(grid.nx * abs(grid.step_x), 1e-12)
        width = 3.0 * ncols
        height = nrows * float(np.clip(3.0 * aspect, 1.2, 4.0)) + 0.9
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width, height), dpi=120, layout="constrained", squeeze=False
        )
        panels = [("verdict", verdict, None)] + [
            (f"{n}{' (fatal)' if f else ''}: {c} px", ((values & b) > 0) * (2 if f else 1), m)
            for n, b, f, m, c in bits
        ]
        for i, a in enumerate(axes.flat):
            if i >= len(panels):
                a.set_visible(False)
                continue
            label, img, _ = panels[i]
            a.imshow(
                img, cmap=cmap, vmin=-0.5, vmax=2.5, extent=grid.extent, interpolation="nearest"
            )
            _bare_axes(a)
            a.set_title(label, fontsize=8)
            if i == 0:
                _draw_calibration(a, grid)
        from matplotlib.patches import Patch

        fig.legend(
            handles=[
                Patch(color=colours[0], label="no bit"),
                Patch(color=colours[1], label="warning"),
                Patch(color=colours[2], label="fatal (not valid)"),
            ],
            loc="outside lower center",
            ncol=3,
            fontsize=8,
        )
        fig.suptitle(head, fontsize=11)
        return _finish(fig, path, True, plt)
    # 0-D or 1-D: bits against position
    flat = values.reshape(-1)
    rows = [("verdict", np.where((flat & _fatal_mask(da)) > 0, 2, np.where(flat > 0, 1, 0)))]
    rows += [
        (f"{n}{' (fatal)' if f else ''}", ((flat & b) > 0) * (2 if f else 1))
        for n, b, f, _, _ in bits
    ]
    img = np.stack([r[1] for r in rows])
    own = ax is None
    if own:
        width = 6.4 if values.ndim == 1 else 3.6
        fig, ax = plt.subplots(
            figsize=(width, 1.0 + 0.32 * len(rows)), dpi=120, layout="constrained"
        )
    if values.ndim == 1:
        dim = da.dims[0]
        coord, unit = _coord(da, dim, flat.size)
        step = float(coord[1] - coord[0]) if coord.size > 1 else 1.0
        extent = (coord[0] - step / 2, coord[-1] + step / 2, len(rows) - 0.5, -0.5)
        ax.set_xlabel(f"{dim} ({unit})")
    else:
        extent = (-0.5, 0.5, len(rows) - 0.5, -0.5)
        ax.set_xticks([])
    ax.imshow(
        img, cmap=cmap, vmin=-0.5, vmax=2.5, extent=extent, aspect="auto", interpolation="nearest"
    )
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.set_title(head, fontsize=10)
    return _finish(ax.figure, path, own, plt)


def map_variables(ds: xr.Dataset) -> list[str]:
    """Names of the variables of ``ds`` that are maps (2-D over y, x, or 1-D over x/y)."""
    out = []
    for name, var in ds.data_vars.items():
        if var.ndim == 2 and var.dims[-1] == "x" and var.dims[0] == "y":
            out.append(str(name))
        elif var.ndim == 1 and var.dims[0] in ("x", "y") and ds.sizes[var.dims[0]] > 1:
            out.append(str(name))
    return out


def plot_maps(
    ds: xr.Dataset,
    path_pattern: str | os.PathLike,
    names: list[str] | None = None,
) -> list[Path]:
    """Write one PNG per map of ``ds``; ``path_pattern`` holds ``{name}`` (or is a folder)."""
    pattern = str(path_pattern)
    if "{name}" not in pattern:
        pattern = str(Path(pattern) / "{name}.png")
    written = []
    for name in names or paired_map_variables(ds):
        p = Path(pattern.format(name=name))
        plot_map(ds[name], p, sigma=ds.get(f"{name}_sigma"))
        written.append(p)
    return written


def paired_map_variables(ds: xr.Dataset) -> list[str]:
    """:func:`map_variables` less each ``<name>_sigma`` whose ``<name>`` is a map too (it is drawn
    beside that map)."""
    maps = map_variables(ds)
    have = set(maps)
    return [m for m in maps if not (m.endswith("_sigma") and m[: -len("_sigma")] in have)]


def plot_spectra(
    spectra: Mapping[str, xr.DataArray],
    path: str | os.PathLike | None = None,
    *,
    title: str = "",
    xlim: tuple[float, float] | None = None,
    ylabel: str | None = None,
    logy: bool | str = "auto",
    ax=None,
    styles: Mapping[str, Mapping] | None = None,
    spans: Sequence[tuple[float, float, str]] | None = None,
    bands: Mapping[str, xr.DataArray] | None = None,
):
    """Overlay labelled 1-D spectra (dim ``energy``) and save the figure if ``path`` is given.

    ``bands`` (label -> one standard deviation on the same axis, e.g. an ``ssd_sigma``) shades
    each named spectrum's +-1 sigma band.

    Parameters
    ----------
    spectra : mapping label -> DataArray
        Each 1-D over its energy coordinate.
    path : path, optional
        Where to write the PNG.
    title, ylabel : str
        Labels (the y label defaults to the spectra's ``long_name (units)``).
    xlim : (float, float), optional
        Energy range shown (eV); the y range follows what is shown.
    logy : bool or "auto"
        Logarithmic intensity axis; ``"auto"`` chooses it when a spectrum that starts below
        0 eV has a zero-loss peak (a maximum within 2 eV of 0) over 20 times higher than
        anything beyond 3 eV, so the losses show.
    ax : matplotlib Axes, optional
        Draw into it instead of a new figure.
    styles : mapping label -> dict, optional
        Matplotlib line keywords per label (e.g. a fit dashed in its data's colour).
    spans : sequence of (lo_eV, hi_eV, label), optional
        Energy ranges to shade (integration windows, background-fit ranges), labelled on top;
        a label starting with "bg" is shaded grey.
    """
    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.6, 4.0), dpi=130, layout="constrained")
    fig = ax.figure
    ylab = ""
    lo_y, hi_y, lo_pos = np.inf, -np.inf, np.inf
    for label, da in spectra.items():
        dim = da.dims[-1]
        x = np.asarray(da[dim].values, float) if dim in da.coords else np.arange(da.shape[-1])
        y = np.asarray(da.values, float)
        kw = {"lw": 1.2, **dict((styles or {}).get(label, {}))}
        (line,) = ax.plot(x, y, label=str(label), **kw)
        if bands and label in bands:
            err = np.asarray(bands[label].values, float)
            ax.fill_between(
                x,
                y - err,
                y + err,
                color=line.get_color(),
                alpha=0.25,
                lw=0,
                gid="band",
                label=f"{label} +-1 sigma",
            )
        ylab = ylab or _unit_label(da)
        xunit = da[dim].attrs.get("units", "eV") if dim in da.coords else "channel"
        xname = da[dim].attrs.get("long_name", dim) if dim in da.coords else dim
        ax.set_xlabel(f"{xname} ({xunit})")
        sel = np.isfinite(y) & ((x >= xlim[0]) & (x <= xlim[1]) if xlim else True)
        if sel.any():
            lo_y, hi_y = min(lo_y, float(y[sel].min())), max(hi_y, float(y[sel].max()))
            pos = y[sel][y[sel] > 0]
            if pos.size:
                lo_pos = min(lo_pos, float(np.percentile(pos, 0.5)))
    ax.set_ylabel(ylabel or ylab)
    for k, (lo, hi, text) in enumerate(spans or ()):
        grey = str(text).startswith("bg")
        ax.axvspan(lo, hi, color="0.5" if grey else f"C{(k % 8) + 1}", alpha=0.12, lw=0, gid="span")
        # inside the axes, staggered, so neighbouring windows' labels do not collide
        ax.text(
            (lo + hi) / 2,
            0.98 - 0.06 * (k % 4),
            str(text),
            ha="center",
            va="top",
            transform=ax.get_xaxis_transform(),
            fontsize=8,
            color="0.25",
        )
    if logy == "auto":
        logy = _has_dominant_zlp(spectra)
    if xlim:
        ax.set_xlim(*xlim)
        if np.isfinite(lo_y) and hi_y > lo_y and not logy:
            pad = 0.05 * (hi_y - lo_y)
            ax.set_ylim(lo_y - pad, hi_y + pad)
    if logy:
        ax.set_yscale("log")
        if np.isfinite(hi_y) and hi_y > 0:
            floor = lo_pos * 0.5 if np.isfinite(lo_pos) else hi_y * 1e-6
            ax.set_ylim(max(floor, hi_y * 1e-7), hi_y * 2)
    ax.grid(alpha=0.3)
    if len(spectra) > 1 or any(str(k) for k in spectra):
        ax.legend(frameon=False, fontsize=9)
    ax.set_title(title)
    return _finish(fig, path, own, plt)


def plot_decomposition(
    decomposition: xr.Dataset, png_dir: str | os.PathLike, *, max_components: int | None = None
) -> list[Path]:
    """Write the scree plot (PCA) and one picture per component (loading map + factor).

    Parameters
    ----------
    decomposition : xarray.Dataset
        From :func:`eelsgpu.decompose`.
    png_dir : path
        Folder of the pictures (made if missing): ``scree.png`` (PCA) and
        ``component_NN.png``.
    max_components : int, optional
        Draw at most this many components.

    Returns
    -------
    list of Path
        The paths written.
    """
    plt = _pyplot()
    out_dir = Path(png_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    method = str(decomposition.attrs.get("method", "")).upper()
    if "explained_variance_ratio" in decomposition:
        ev = decomposition["explained_variance_ratio"]
        fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=120, layout="constrained")
        kept = decomposition.sizes["component"]
        ax.semilogy(ev["rank"].values, ev.values, "o-", ms=4, label="all")
        ax.semilogy(
            ev["rank"].values[:kept],
            ev.values[:kept],
            "o",
            ms=7,
            color="C3",
            label=f"kept ({kept})",
        )
        ax.set_xlabel("component")
        ax.set_ylabel("explained variance ratio")
        ax.set_title(f"{method} scree plot")
        ax.legend(frameon=False)
        path = out_dir / "scree.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    n = decomposition.sizes["component"]
    if max_components is not None:
        n = min(n, int(max_components))
    for c in range(n):
        fig, (ax_map, ax_spec) = plt.subplots(
            1, 2, figsize=(10, 4.2), dpi=120, layout="constrained"
        )
        loading = decomposition["loadings"].isel(component=c)
        loading.attrs.update({"long_name": f"{method} loading {c}"})
        if loading.ndim == 2:
            plot_map(loading, ax=ax_map, title=f"{method} component {c}: loading")
        else:
            ax_map.plot(np.asarray(loading.values))
            ax_map.set_title(f"{method} component {c}: loading")
        factor = decomposition["factors"].isel(component=c)
        ax_spec.plot(factor["energy"].values, factor.values, lw=1.2)
        ax_spec.set_xlabel(f"energy ({factor['energy'].attrs.get('units', 'eV')})")
        ax_spec.set_ylabel("factor (max 1)")
        ax_spec.set_title(f"{method} component {c}: factor")
        path = out_dir / f"component_{c:02d}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _has_dominant_zlp(spectra: Mapping[str, xr.DataArray]) -> bool:
    for da in spectra.values():
        dim = da.dims[-1]
        if dim not in da.coords:
            continue
        x = np.asarray(da[dim].values, float)
        y = np.asarray(da.values, float)
        if x.min() >= 0:  # no energy-gain side: no zero-loss peak in the spectrum
            continue
        near, far = (np.abs(x) <= 2.0) & np.isfinite(y), (x > 3.0) & np.isfinite(y)
        if near.any() and far.any():
            peak = np.nanmax(y[near])
            rest = np.nanmax(y[far])
            if peak > 0 and peak > 20 * max(rest, 0):
                return True
    return False


# --------------------------------------------------------------------------- film fits
#: How the film fit's spectra are drawn: the data as points, the model and its parts as lines.
FILM_PARTS: dict[str, dict] = {
    "model": {"color": "C3", "lw": 1.8, "label": "model"},
    "model_bulk": {"color": "C0", "lw": 1.0, "ls": "--", "label": "bulk"},
    "model_surface": {"color": "C2", "lw": 1.0, "ls": "--", "label": "surface / guided"},
    "model_oxide": {"color": "C4", "lw": 1.0, "ls": "--", "label": "oxide / interface"},
}


def read_optical_table(path: str | os.PathLike) -> xr.Dataset:
    """An optical-constants table (CSV with ``#`` comment lines and a header naming at least
    ``energy_eV``, ``eps1``, ``eps2``; the tables of shared/data/reference/optical_constants)
    as a Dataset on ``energy`` (eV, increasing); its ``name`` attribute is the file's stem.

    Raises
    ------
    InputError
        Not readable, or no energy_eV / eps1 / eps2 columns.
    """
    from .errors import InputError

    p = Path(path)
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
        header = [h.strip() for h in lines[0].split(",")]
        table = np.loadtxt(lines[1:], delimiter=",", ndmin=2)
    except (OSError, ValueError, IndexError) as exc:
        raise InputError(f"{p}: not an optical-constants CSV ({exc})") from None
    need = ("energy_eV", "eps1", "eps2")
    if any(n not in header for n in need) or table.shape[1] != len(header):
        raise InputError(f"{p}: an optical table needs the columns {', '.join(need)}")
    col = {n: table[:, header.index(n)] for n in header}
    order = np.argsort(col["energy_eV"])
    ds = xr.Dataset(
        {n: ("energy", v[order]) for n, v in col.items() if n != "energy_eV"},
        coords={"energy": ("energy", col["energy_eV"][order], {"units": "eV"})},
        attrs={"name": p.stem, "source": str(p)},
    )
    return ds


def optical_at(table: xr.Dataset, energy_eV: np.ndarray, name: str) -> np.ndarray:
    """The table's column ``name`` linearly interpolated at ``energy_eV`` (eV); NaN outside the
    table's range (never extrapolated)."""
    e = np.asarray(table["energy"].values, float)
    return np.interp(energy_eV, e, np.asarray(table[name].values, float), left=np.nan, right=np.nan)


def plot_film_fit(
    ds: xr.Dataset,
    pixel: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
    *,
    optical: xr.Dataset | str | os.PathLike | None = None,
    xlim: tuple[float, float] | None = None,
):
    """The film fit of one pixel of a :func:`eelsgpu.fit_dielectric` result: on the left the SSD
    (points) and the model with its parts (bulk, surface or guided modes, oxide or interface) on
    ``energy_fit``; on the right eps1 and eps2 with +-1 sigma bands on ``energy``, beside the
    optical table ``optical`` (a path or :func:`read_optical_table`'s Dataset) read at the same
    energies, dashed.

    ``pixel`` (indices of the navigation dims) defaults to the centre pixel. Returns the figure
    (saved at ``path`` if given). Lines carry their labels (``ax.get_lines()``).
    """
    from .errors import InputError

    if ds.attrs.get("analysis") != "fit_dielectric" or "model" not in ds:
        raise InputError("plot_film_fit needs an eelsgpu.fit_dielectric result")
    nav = tuple(d for d in ds["model"].dims if d != "energy_fit")
    if pixel is None:
        pixel = tuple(ds.sizes[d] // 2 for d in nav)
    pixel = tuple(int(i) for i in pixel)
    if len(pixel) != len(nav) or any(
        not 0 <= i < ds.sizes[d] for d, i in zip(nav, pixel, strict=False)
    ):
        raise InputError(f"pixel {pixel} is not one of the fit's pixels ({dict(ds.sizes)})")
    sel = dict(zip(nav, pixel, strict=True))
    px = ds.isel(sel)
    if isinstance(optical, str | os.PathLike):
        optical = read_optical_table(optical)
    plt = _pyplot()
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=120, layout="constrained")
    ef = np.asarray(px["energy_fit"].values, float)
    ax_s.plot(ef, np.asarray(px["data"].values, float), ".", ms=3, color="0.25", label="data")
    for name, style in FILM_PARTS.items():
        if name in px:
            y = np.asarray(px[name].values, float)
            if np.any(np.isfinite(y) & (y != 0)):
                ax_s.plot(ef, y, **style)
    ax_s.set_xlabel("energy loss (eV)")
    ax_s.set_ylabel("counts per channel")
    model = ds.attrs.get("film_model", "")
    dev = float(px["deviance_reduced"]) if "deviance_reduced" in px else float("nan")
    ax_s.set_title(f"pixel {pixel}: {model} model, reduced deviance {dev:.3g}", fontsize=10)
    ax_s.legend(fontsize=8)
    e = np.asarray(px["energy"].values, float)
    show = (e >= ef[0] - 1.0) if xlim is None else (e >= xlim[0]) & (e <= xlim[1])
    for name, colour in (("eps1", "C0"), ("eps2", "C1")):
        y = np.asarray(px[name].values, float)
        ax_e.plot(e[show], y[show], color=colour, lw=1.5, label=f"{name} (fit)")
        if f"{name}_sigma" in px:
            s = np.asarray(px[f"{name}_sigma"].values, float)
            ax_e.fill_between(
                e[show], (y - s)[show], (y + s)[show], color=colour, alpha=0.25, lw=0, gid="band"
            )
        if optical is not None:
            ref = optical_at(optical, e[show], name)
            ax_e.plot(
                e[show],
                ref,
                color=colour,
                ls="--",
                lw=1.0,
                label=f"{name} ({optical.attrs.get('name', 'optical')})",
            )
    ax_e.axhline(0.0, color="0.6", lw=0.6)
    ax_e.set_xlabel("energy (eV)")
    ax_e.set_ylabel("eps (+-1 sigma)")
    ax_e.set_title("dielectric function", fontsize=10)
    ax_e.legend(fontsize=8)
    if xlim is not None:
        ax_s.set_xlim(*xlim)
        ax_e.set_xlim(*xlim)
    return _finish(fig, path, True, plt)
