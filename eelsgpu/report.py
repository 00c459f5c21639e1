"""One self-contained HTML page of a result store: every map, chosen spectra, the run's parameters.

The page needs nothing beside itself: the pictures are PNGs embedded as base64 ``data:`` URIs,
the style is inline, and there are no scripts, links or network references, so it can be mailed,
archived with the data or opened on a machine with no network.

A ``quality`` bitmask (:mod:`eelsgpu.kernels.quality`) gets its own section: the picture of
which bits are set where (:func:`eelsgpu.plotting.plot_quality`) and a table with, for every
bit that is set, its pixel count, whether it is fatal, what it means and what to do about it
(:data:`FLAG_ADVICE`).

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({"t_over_lambda": (("y", "x"), np.ones((4, 5)), {"units": ""})})
>>> html = report_html(ds, title="demo")
>>> html.count("data:image/png;base64,")
1
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import __version__
from .errors import InputError
from .plotting import (
    _pyplot,
    is_quality,
    paired_map_variables,
    plot_map,
    plot_quality,
    plot_spectra,
    quality_bits,
    quality_summary,
    uncertainty_map,
)

__all__ = ["FLAG_ADVICE", "cube_variables", "parse_pixels", "report_html", "write_report"]

#: What each quality bit means and what to do about it (the report's table, the README's list).
FLAG_ADVICE: dict[str, str] = {
    "NO_ZLP": "No usable zero-loss peak in this pixel (none in the search window, not "
    "significant above the noise, saturated, cut by the window's edge, or NaN counts): the "
    "pixel has no result. Check the search range (search_eV, --search) and the acquisition.",
    "ZLP_MISMATCH": "The ZLP model does not fit this pixel (its N0 against truncation's, or an "
    "excess over the data on the loss side beyond counting noise). Use zlp='threshold' for "
    "monochromated or asymmetric ZLPs, or a measured vacuum reference.",
    "NEGATIVE_TAIL": "The counts extrapolated beyond the window came out negative and were "
    "dropped: t/lambda counts the window only. A longer energy window helps.",
    "TAIL_UNTRUSTED": "The tail beyond the window is no larger than its own uncertainty: "
    "t/lambda counts the window only (a lower bound). Record a longer energy window.",
    "RINGING": "The raw SSD rings above 0.1 of its peak. Use the band-limited SSD (the default "
    "Kramers-Kronig input) or another ZLP model.",
    "NEGATIVE_LOBE": "The SSD has a negative lobe below -0.1 of its peak beyond 3 ZLP FWHM: "
    "the spectrum breaks the Fourier-log model (off-axis or q-resolved acquisition, a "
    "background under the spectrum). Acquire on axis or remove the background first.",
    "NEGATIVE_T_OVER_LAMBDA": "t/lambda < 0 (N0 above the total counts): the ZLP model "
    "over-subtracts. Try zlp='threshold'.",
    "EPS2_NEGATIVE": "The SSD's negative channels took more than 10 % of the Kramers-Kronig "
    "sum rule (eps2_negative_weight): the sign constraint Im[-1/eps] >= 0 changed the result by "
    "more than counting noise explains (noisy synthetic spectra: at most 1.5 %). eps and the "
    "thickness are not trusted; look at the SSD (a negative lobe, an over-subtracted ZLP).",
    "KK_THICKNESS_DISAGREES": "The Kramers-Kronig thickness and the log-ratio thickness "
    "(t/lambda x the mean free path) differ by more than a factor 1.5 (thickness_ratio). The "
    "numbers are kept: check the normalisation (refractive index, or metal) and the density "
    "behind the mean free path, then the SSD.",
    "SURFACE_NOT_CORRECTED": "For a film this thin, surface losses (eq. 36) would make more "
    "than 5 % of the SSD below the plasmon (surface_share), and the surface correction did not "
    "converge (not asked, too thin, or failed: surface_status). eps below eps_trusted_from_eV "
    "(the plasmon) is not to be trusted; use eps above it, or run with iterations=10-20.",
    "UNPHYSICAL_BACKGROUND": "Counts far from the ZLP (below its gain side, or at the window's "
    "high end) well above what the spectrum's E^-3 tail allows: a dark-current or background "
    "offset, which t/lambda counts. Subtract a dark reference first.",
    "WINDOW_IN_ZLP_RESIDUE": "The band-gap fit window starts where the zero-loss peak's residue "
    "(what the ZLP subtraction or deconvolution left) still dominates the spectrum: the onset "
    "found may be the residue's edge. Start the window above the residue (bandgap_residue_end_eV).",
    "AXIS_OFFSET": "The ZLP sits far from 0 eV on the stored energy axis (an uncalibrated "
    "axis); every result is on energy relative to the ZLP. Calibrate the axis for other "
    "programs.",
    "NO_ONSET": "The band-gap fit failed: no onset significant above the noise, the best Eg or "
    "b at the edge of its search range, or a fit far worse than the image's median. Widen the "
    "window or the Eg range, or choose another background model; look at the fits.",
    "FIT_NOT_CONVERGED": "(film fit) The dielectric-model fit still gained deviance at its last "
    "Levenberg-Marquardt step, or found no finite fit: eps and the thickness are not returned as "
    "good. Raise iterations, seed it from the classic KK result (kk=), or give oscillators.",
    "FIT_AT_BOUND": "(film fit) A parameter ended on its box bound: that parameter (and its "
    "sigma) is a limit, not an estimate. Widen the window, or drop the oscillator that ran away.",
    "FIT_NON_UNIQUE": "(film fit) Another start fits as well (deviance within 2) with parameters "
    "more than 3 sigma away: the data do not settle eps (thin-film-theory.md, non-uniqueness). "
    "Fix the oxide thickness or an oscillator, or widen the window.",
    "FIT_BAD": "(film fit) Reduced deviance above 2: the model misses the data. Add an "
    "oscillator, an oxide (oxide_nm='fit'), or retardation; look at the data and model beside "
    "each other.",
    "CERENKOV_NO_RETARDATION": "(film fit) eps1 > 1/beta_v^2 (Cerenkov losses) fitted without "
    "retardation: the non-retarded model cannot describe such a spectrum. Refit with "
    "retardation=True.",
    "THIN_UNCOUPLED": "(film fit) A film thinner than 2 v/omega_p fitted with eq. 36's "
    "uncoupled surfaces: the surface modes couple at this thickness. Use model='film'.",
    "METAL_LOW_E_NO_RETARDATION": "(film fit) A metal fitted below 8 eV without retardation: "
    "its guided modes and retarded surface losses shape the spectrum there. Use "
    "retardation=True, or start the window above 8 eV.",
    "OSCILLATOR_OUTSIDE_WINDOW": "(film fit) An oscillator lies outside the fit window and was "
    "held fixed: its parameters are assumptions, not results.",
    "QUADRATURE": "(film fit) The fine angular quadrature moves a model channel by more than "
    "0.3 sigma: the sharp plasmon needs more nodes (nodes_per_channel).",
    "BETA_EXCEEDS_CUTOFF": "(film fit) The collection angle is beyond the plasmon cut-off "
    "q_c/k0: the bulk term counts losses the plasmon does not have there. Give cutoff_mrad.",
}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;
 background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}
main{padding:18px 28px} h2{font-size:17px;border-bottom:1px solid #ccd;padding-bottom:4px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{background:#fff;margin:0;padding:8px;border-radius:6px;box-shadow:0 1px 3px #0002;
 max-width:560px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#444;margin-top:4px}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #dde;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4} code{font-size:12px}
"""


def _png(fig) -> str:
    plt = _pyplot()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(b64: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(alt, quote=True)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def cube_variables(ds: xr.Dataset) -> list[str]:
    """Variables of ``ds`` that hold a spectrum per pixel (last dim ``energy``, nav dims too)."""
    return [
        str(n)
        for n, v in ds.data_vars.items()
        if v.ndim >= 2 and v.dims[-1] == "energy" and set(v.dims[:-1]) <= {"y", "x"}
    ]


def parse_pixels(text: str | None) -> list[tuple[int, ...]]:
    """``"Y,X;Y,X"`` -> [(y, x), ...] (pixel indices); ``"X;X"`` for a line scan."""
    if not text:
        return []
    out = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            out.append(tuple(int(v) for v in part.split(",")))
        except ValueError:
            raise InputError(f"--pixels takes indices like 3,4;10,12, not {text!r}") from None
    return out


def _map_order(name: str) -> tuple[int, str]:
    """Main quantities first, then their errors and fit measures, the valid mask last."""
    n = name.lower()
    if n == "valid" or n.endswith("_valid"):
        return (3, n)
    if any(w in n for w in ("error", "quality", "significance", "r_squared", "distance")):
        return (2, n)
    if n.startswith("true_"):
        return (1, n)
    return (0, n)


def _stats(da: xr.DataArray) -> str:
    v = np.asarray(da.values, dtype=float)
    finite = v[np.isfinite(v)]
    n_bad = v.size - finite.size
    if not finite.size:
        return "all pixels flagged"
    unit = da.attrs.get("units", "")
    u = f" {html.escape(str(unit))}" if unit else ""
    if np.issubdtype(da.dtype, np.integer) or np.issubdtype(da.dtype, np.bool_):
        vals, counts = np.unique(finite, return_counts=True)
        body = ", ".join(f"{int(a)}: {c} px" for a, c in zip(vals[:12], counts[:12], strict=True))
        return body + (f"; {n_bad} flagged" if n_bad else "")
    p5, med, p95 = np.percentile(finite, [5, 50, 95])
    return f"median {med:.4g}{u} (5-95 %: {p5:.4g} to {p95:.4g}{u})" + (
        f"; {n_bad} flagged px" if n_bad else ""
    )


def _attr_text(v: Any) -> str:
    if isinstance(v, str):
        try:  # pretty-print JSON held in a string attribute
            parsed = json.loads(v)
            if isinstance(parsed, dict | list):
                return "<code>" + html.escape(json.dumps(parsed, indent=1)) + "</code>"
        except (ValueError, TypeError):
            pass
        return html.escape(v)
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, float):
        return html.escape(f"{v:.6g}")
    return html.escape(str(v))


def _position(ds: xr.Dataset, pix: tuple[int, ...], nav: Sequence[str]) -> str:
    parts = []
    for d, i in zip(nav, pix, strict=True):
        if d in ds.coords:
            unit = ds[d].attrs.get("units", "px")
            parts.append(f"{d} = {float(ds[d].values[i]):g} {unit}")
    return ", ".join(parts)


def report_html(
    ds: xr.Dataset,
    *,
    pixels: Sequence[tuple[int, ...]] | None = None,
    clusters: bool = False,
    title: str | None = None,
    source: str | None = None,
    xlim_eV: tuple[float, float] | None = None,
    spectra: xr.DataArray | None = None,
    optical: xr.Dataset | str | os.PathLike | None = None,
) -> str:
    """The HTML text of the report of ``ds`` (see :func:`write_report`)."""
    if spectra is not None:
        name = str(spectra.name or "signal")
        if name in ds.data_vars:
            name = f"{name}_spectra"
        spectra = spectra.rename(name)
        nav = spectra.dims[:-1]
        for d in nav:
            if d not in ds.dims or ds.sizes[d] != spectra.sizes[d]:
                raise InputError(
                    f"the spectra ({dict(spectra.sizes)}) do not match the maps' pixels "
                    f"({dict(ds.sizes)})"
                )
        ds = ds.assign({name: spectra.drop_vars([c for c in nav if c in spectra.coords])})
    sections = []
    qualities = [str(n) for n, v in ds.data_vars.items() if is_quality(v) and v.ndim <= 2]
    maps = sorted((m for m in paired_map_variables(ds) if m not in qualities), key=_map_order)
    figs = []
    for name in maps:
        da = ds[name]
        unit = da.attrs.get("units", "")
        quantity = da.attrs.get("long_name") or name
        label = f"{quantity} ({unit})" if unit else str(quantity)
        sigma = ds.get(f"{name}_sigma")
        fig = plot_map(da, sigma=sigma)
        caption = (
            f"<b>{html.escape(label)}</b> &mdash; <code>{html.escape(name)}</code><br>{_stats(da)}"
        )
        if sigma is not None:
            unc = uncertainty_map(da, sigma)
            caption += (
                f"<br>beside it: {html.escape(str(unc.attrs['long_name']))} "
                f"(<code>{html.escape(name)}_sigma</code>, "
                f"{html.escape(str(sigma.attrs.get('uncertainty', ds.attrs.get('uncertainty', ''))))}"
                f"): {_stats(unc)}"
            )
        figs.append(_figure(_png(fig), f"map of {name}: {label}", caption))
    if figs:
        sections.append("<h2>Maps</h2><div class='grid'>" + "".join(figs) + "</div>")
    for name in qualities:
        sections.append(_quality_section(ds[name], name))
    if ds.attrs.get("analysis") == "fit_dielectric" and "model" in ds:
        sections.append(_film_section(ds, pixels, optical, xlim_eV))
    elif optical is not None:
        raise InputError("--optical draws beside a film fit: the store is not fit_dielectric's")

    all_cubes = cube_variables(ds)
    cubes = [
        c for c in all_cubes if not (c.endswith("_sigma") and c[: -len("_sigma")] in all_cubes)
    ]
    spec_figs = []
    if pixels and not cubes:
        raise InputError(
            "--pixels needs spectra: the store holds none (give the spectrum image with --spectra)"
        )
    if cubes and pixels:
        nav = ds[cubes[0]].dims[:-1]
        for pix in pixels:
            if len(pix) != len(nav):
                raise InputError(f"pixel {pix} needs {len(nav)} indices ({', '.join(nav)})")
            for d, i in zip(nav, pix, strict=True):
                if not 0 <= i < ds.sizes[d]:
                    raise InputError(f"pixel {pix}: {d} index {i} is outside 0..{ds.sizes[d] - 1}")
        floats = [m for m in maps if np.issubdtype(ds[m].dtype, np.floating)] or maps
        if floats and ds[floats[0]].ndim == 2:
            spec_figs.append(_pixel_overview(ds, floats[0], pixels))
        for pix in pixels:
            sel = dict(zip(nav, pix, strict=True))
            spectra = {n: ds[n].isel(sel).compute() for n in cubes}
            if ds.attrs.get("analysis") == "bandgap":  # the onset fit over the data
                from .analysis.bandgap import fit_curves

                curve = fit_curves(spectra[cubes[0]], ds.attrs)
                eg = ds["bandgap_eV"].isel(sel).values if "bandgap_eV" in ds else np.nan
                label = "onset fit" + (f" (Eg = {float(eg):.3f} eV)" if np.isfinite(eg) else "")
                spectra[label] = curve
                styles = {
                    cubes[0]: {"color": "C0", "lw": 0.9, "alpha": 0.6},
                    label: {"color": "C3", "lw": 2.0, "ls": "--"},
                }
            else:
                styles = None
            where = _position(ds, pix, nav)
            bands = {
                n: ds[f"{n}_sigma"].isel(sel).compute() for n in cubes if f"{n}_sigma" in all_cubes
            }
            fig = plot_spectra(
                spectra,
                title=f"pixel {pix}",
                xlim=xlim_eV,
                styles=styles,
                spans=_spans(ds, maps),
                bands=bands or None,
            )
            values = "; ".join(
                f"{html.escape(m)} = {float(ds[m].isel(sel).values):.4g} "
                f"{html.escape(str(ds[m].attrs.get('units', '')))}"
                for m in maps[:8]
                if ds[m].dims == tuple(nav)
            )
            caption = f"<b>pixel {pix}</b> {html.escape(where)}<br>{values}"
            if bands:  # issue 14: say what the shading is
                how = next(iter(bands.values())).attrs.get("uncertainty", "")
                caption += (
                    "<br>shaded: +-1 sigma (counting"
                    + (f", {html.escape(str(how))}" if how else "")
                    + ") of "
                    + ", ".join(f"<code>{html.escape(n)}</code>" for n in bands)
                )
            spec_figs.append(_figure(_png(fig), f"spectra at pixel {pix}", caption))
    if clusters:
        spec_figs.extend(_cluster_figures(ds, cubes, xlim_eV))
    if spec_figs:
        sections.append("<h2>Spectra</h2><div class='grid'>" + "".join(spec_figs) + "</div>")

    rows = "".join(
        f"<tr><td><code>{html.escape(str(k))}</code></td><td>{_attr_text(v)}</td></tr>"
        for k, v in sorted(ds.attrs.items())
    )
    sections.append(
        "<h2>Parameters of the run</h2>"
        + (
            f"<table><tr><th>parameter</th><th>value</th></tr>{rows}</table>"
            if rows
            else "<p>(the store records no parameters)</p>"
        )
    )
    var_rows = "".join(
        f"<tr><td><code>{html.escape(str(n))}</code></td><td>{html.escape(str(v.dims))}</td>"
        f"<td>{html.escape(str(v.attrs.get('units', '')))}</td>"
        f"<td>{html.escape(str(v.attrs.get('long_name', '')))}</td></tr>"
        for n, v in ds.data_vars.items()
    )
    sections.append(
        "<h2>Variables</h2><table><tr><th>name</th><th>dims</th><th>units</th>"
        f"<th>meaning</th></tr>{var_rows}</table>"
    )
    head_title = html.escape(title or f"eelsgpu report: {source or 'result'}")
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sub = html.escape(f"{source + ' · ' if source else ''}eelsgpu {__version__} · {stamp}")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{head_title}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{head_title}</h1><p>{sub}</p></header><main>"
        + "".join(sections)
        + "</main></body></html>"
    )


def _film_section(ds: xr.Dataset, pixels, optical, xlim_eV) -> str:
    """The film fit (thin-film-theory.md) of the chosen pixels (default the centre one): the data,
    the model and its parts, eps with +-1 sigma beside the optical table when one is named."""
    from .plotting import plot_film_fit, read_optical_table

    nav = tuple(d for d in ds["model"].dims if d != "energy_fit")
    if isinstance(optical, str | os.PathLike):
        optical = read_optical_table(optical)
    chosen = list(pixels or [tuple(ds.sizes[d] // 2 for d in nav)])
    figs = []
    for pix in chosen:
        fig = plot_film_fit(ds, pix, optical=optical, xlim=xlim_eV)
        sel = dict(zip(nav, pix, strict=True))
        values = "; ".join(
            f"{html.escape(n)} = {float(ds[n].isel(sel)):.4g}"
            + (f" +- {float(ds[n + '_sigma'].isel(sel)):.2g}" if f"{n}_sigma" in ds else "")
            + f" {html.escape(str(ds[n].attrs.get('units', '')))}"
            for n in ds.attrs.get("parameters", [])
            if n in ds
        )
        ref = (
            f" beside {html.escape(str(optical.attrs.get('name')))}" if optical is not None else ""
        )
        caption = (
            f"<b>film fit, pixel {pix}</b>: data (points), model and its parts; eps1, eps2 "
            f"with +-1 sigma{ref}<br>{values}"
        )
        figs.append(_figure(_png(fig), f"film fit at pixel {pix}", caption))
    return "<h2>Film fit</h2><div class='grid'>" + "".join(figs) + "</div>"


def _quality_section(da: xr.DataArray, name: str) -> str:
    """The quality picture and the table of the bits set: count, fatal, meaning, what to do."""
    fig = plot_quality(da)
    caption = f"<b>{html.escape(name)}</b>: {html.escape(quality_summary(da))}"
    rows = []
    for bit_name, bit, fatal, meaning, count in quality_bits(da):
        if not count:
            continue
        advice = FLAG_ADVICE.get(bit_name, meaning)
        rows.append(
            f"<tr><td><code>{html.escape(bit_name)}</code> (bit {bit.bit_length() - 1})</td>"
            f"<td>{'fatal: not valid' if fatal else 'warning'}</td><td>{count}</td>"
            f"<td>{html.escape(advice)}</td></tr>"
        )
    table = (
        "<table><tr><th>flag</th><th>kind</th><th>pixels</th><th>what it means, what to do"
        f"</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p>No quality bit is set: every pixel passed every check.</p>"
    )
    return (
        f"<h2>Quality ({html.escape(name)})</h2><div class='grid'>"
        + _figure(_png(fig), f"quality bits of {name}", caption)
        + f"</div>{table}"
    )


def _spans(ds: xr.Dataset, maps: Sequence[str]) -> list[tuple[float, float, str]]:
    """Energy windows the maps were integrated over (and their background ranges), from the
    variables' ``window_eV`` / ``background_eV`` attributes, to shade on the spectra."""
    out: list[tuple[float, float, str]] = []
    seen = set()
    for name in maps:
        a = ds[name].attrs
        w = a.get("window_eV")
        if w is not None and np.size(w) == 2 and (float(w[0]), float(w[1])) not in seen:
            seen.add((float(w[0]), float(w[1])))
            out.append((float(w[0]), float(w[1]), str(name)))
        for bg in np.asarray(a.get("background_eV", []), dtype=float).reshape(-1, 2)[:4]:
            if (bg[0], bg[1]) not in seen:
                seen.add((bg[0], bg[1]))
                out.append((float(bg[0]), float(bg[1]), f"bg {name}"))
    return out


def _pixel_overview(ds: xr.Dataset, name: str, pixels: Sequence[tuple[int, ...]]) -> str:
    """The first map with the chosen pixels marked and numbered."""
    fig = plot_map(ds[name], title=f"chosen pixels on {ds[name].attrs.get('long_name', name)}")
    ax = fig.axes[0]
    ydim, xdim = ds[name].dims
    for pix in pixels:
        if len(pix) != 2:
            continue
        yv = ds[ydim].values[pix[0]] if ydim in ds.coords else pix[0]
        xv = ds[xdim].values[pix[1]] if xdim in ds.coords else pix[1]
        ax.plot([xv], [yv], marker="s", ms=9, mfc="none", mec="red", mew=2)
        ax.annotate(
            f"{pix}",
            (xv, yv),
            xytext=(6, 6),
            textcoords="offset points",
            color="red",
            fontsize=9,
            fontweight="bold",
        )
    return _figure(_png(fig), "chosen pixels", "<b>where the spectra below come from</b>")


def _cluster_figures(ds: xr.Dataset, cubes: list[str], xlim_eV) -> list[str]:
    if "cluster_mean_spectrum" in ds:
        means = ds["cluster_mean_spectrum"]
    elif "cluster" in ds and cubes:
        from .analysis.clustering import cluster_sums

        lab = np.asarray(ds["cluster"].values)
        k = int(lab.max()) + 1
        sums = cluster_sums(ds[cubes[0]], lab, k)
        sizes = np.array([(lab == i).sum() for i in range(k)])
        means = xr.DataArray(
            sums / np.maximum(sizes, 1)[:, None],
            dims=("cluster_id", "energy"),
            coords={"energy": ds["energy"].values},
            attrs=ds[cubes[0]].attrs,
        )
        means["energy"].attrs.update(ds["energy"].attrs)
    else:
        raise InputError(
            "--clusters needs a clustered store (a 'cluster' map with spectra, or "
            "'cluster_mean_spectrum'); run `eelsgpu cluster` first"
        )
    dim = means.dims[0]
    sizes = ds["cluster_size"].values if "cluster_size" in ds else None
    spectra = {}
    for i in range(means.sizes[dim]):
        n = f", {int(sizes[i])} px" if sizes is not None else ""
        spectra[f"cluster {i}{n}"] = means.isel({dim: i})
    fig = plot_spectra(spectra, title="cluster-mean spectra", xlim=xlim_eV)
    return [
        _figure(
            _png(fig),
            "cluster-mean spectra",
            "<b>cluster-mean spectra</b> (mean per pixel of each cluster)",
        )
    ]


def write_report(
    store_or_ds: str | os.PathLike | xr.Dataset,
    output: str | os.PathLike,
    *,
    pixels: Sequence[tuple[int, ...]] | None = None,
    clusters: bool = False,
    title: str | None = None,
    xlim_eV: tuple[float, float] | None = None,
    spectra: xr.DataArray | str | os.PathLike | None = None,
    optical: xr.Dataset | str | os.PathLike | None = None,
) -> Path:
    """Write one self-contained HTML page of all maps of a result store.

    Parameters
    ----------
    store_or_ds : path or xarray.Dataset
        A result zarr store (or Dataset): every 2-D (y, x) variable is drawn as a map with
        colour bar, scale bar and its quantity and unit.
    output : path
        The HTML file to write.
    pixels : sequence of (y, x), optional
        Pixels whose spectra (every per-pixel spectrum variable of the store) are drawn.
    clusters : bool
        Draw the cluster-mean spectra (from ``eelsgpu cluster``).
    title : str, optional
    xlim_eV : (float, float), optional
        Energy range of the spectrum plots.
    spectra : DataArray or path, optional
        A spectrum image (or a file :func:`eelsgpu.open` reads) with the maps' pixels, for the
        pixel and cluster spectra when the store holds none.
    optical : path or Dataset, optional
        An optical-constants table (CSV: ``energy_eV``, ``eps1``, ``eps2`` columns, as in
        shared/data/reference/optical_constants) drawn beside a film fit's eps
        (:func:`eelsgpu.plotting.plot_film_fit`; a :func:`eelsgpu.fit_dielectric` store draws
        its data, model and parts, and eps with sigma bands, for ``pixels`` or the centre).

    Returns
    -------
    Path
        The file written.
    """
    source = None
    if isinstance(store_or_ds, xr.Dataset):
        ds = store_or_ds
        source = ds.attrs.get("source")
    else:
        from .io import open_store

        ds = open_store(store_or_ds)
        source = str(store_or_ds)
    if spectra is not None and not isinstance(spectra, xr.DataArray):
        from .io import open as open_si

        spectra = open_si(spectra)
    text = report_html(
        ds,
        pixels=pixels,
        clusters=clusters,
        title=title,
        source=source,
        xlim_eV=xlim_eV,
        spectra=spectra,
        optical=optical,
    )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
