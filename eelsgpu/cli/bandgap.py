"""``eelsgpu bandgap IN -o OUT.zarr``: band-gap energy, exponent and type of every pixel.

Fits I(E) = A (E - Eg)^b + background (Rafferty & Brown 1998) over an energy window, per pixel:
IN is a single-scattering distribution (a store from ``eelsgpu deconvolve``, variable ``ssd``),
a ZLP-subtracted spectrum image (say ``--zlp-removed``), or a raw low-loss spectrum image with
``--zlp VACUUM`` (the reference-ZLP route: a measured vacuum spectrum, .npy on the data's
channels or any file eelsgpu.open reads, is shifted and scaled to each pixel's ZLP, found in
``--search LO HI`` or ``LO:HI`` eV, and subtracted; energies are then relative to each ZLP centre). The store
holds ``bandgap_eV``, ``bandgap_error_eV``, ``exponent_b``, ``exponent_error``, ``gap_type`` (0
direct, 1 indirect, -1 flagged), ``fit_quality`` (reduced chi^2), ``r_squared``,
``onset_significance``, ``residue_excess``, ``zlp_residue_end_eV``, the ``quality`` bitmask
(WINDOW_IN_ZLP_RESIDUE where the window starts on what the ZLP left, NO_ONSET where the fit
fails) and ``valid``. ``--uncertainty replicas:K`` (with ``--gain``, ``--seed``) adds
``bandgap_eV_sigma`` (and ``exponent_b_sigma`` with ``--model free``) from K Poisson replicas of
each pixel refitted.

Examples::

    eelsgpu bandgap ssd.zarr -o gap.zarr --png gap.png
    eelsgpu bandgap ssd.zarr -o gap.zarr --window 0.8:4.0 --model indirect --background constant
    eelsgpu bandgap specimen.npy --offset -0.9275 --dispersion 0.005 --zlp vacuum.npy \
        --search=-0.5:0.5 --window 0.8:3.5 --background constant -o gap.zarr
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    add_analysis_options,
    add_input,
    add_output,
    add_png,
    output_path,
    parse_chunks,
)
from ._uncertainty import add_uncertainty_options, describe, uncertainty_kwargs
from .deconvolve import add_search_option, search_value


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"LO:HI"`` in eV -> (lo, hi)."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--window takes LO:HI in eV, e.g. 0.8:4, not {text!r}"
        ) from None
    return lo, hi


def add_parser(sub) -> argparse.ArgumentParser:

    p = sub.add_parser(
        "bandgap",
        help="band-gap energy, exponent and type per pixel (onset fit)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p, help="SSD store (eelsgpu deconvolve) or a ZLP-subtracted spectrum image")
    add_output(p)
    p.add_argument(
        "--window",
        type=parse_window,
        metavar="LO:HI",
        help="fit window in eV (default: found from the mean spectrum)",
    )
    p.add_argument(
        "--model",
        choices=("free", "direct", "indirect"),
        default="free",
        help="exponent b: fitted (default; type = better of 0.5 and 1.5), 0.5, or 1.5",
    )
    p.add_argument(
        "--background",
        choices=("power-law", "constant", "linear", "none"),
        default="power-law",
        help="under the onset: a decaying power law + constant (a ZLP tail, default), "
        "a constant, a line, or nothing (a clean SSD)",
    )
    p.add_argument(
        "--min-significance",
        type=float,
        default=5.0,
        metavar="SIGMA",
        help="flag pixels whose onset is less significant than this (default 5)",
    )
    p.add_argument(
        "--zlp",
        metavar="FILE|METHOD",
        help="raw input: the ZLP to subtract first, a measured vacuum spectrum (file) or a "
        "model (threshold, mirror, fit)",
    )
    add_search_option(p, default="-5 5; with --zlp only")
    p.add_argument(
        "--zlp-removed",
        action="store_true",
        dest="zlp_removed",
        help="the input had its ZLP taken off (check the window against the ZLP residue)",
    )
    p.add_argument(
        "--variable",
        metavar="NAME",
        help="the store variable to fit (default: ssd if present, else signal)",
    )
    add_png(p)
    add_analysis_options(p)
    add_uncertainty_options(p)
    return p


def load_spectra(path: str, chunks: Any, variable: str | None, open_kw: dict[str, Any]):
    """A store's ``variable`` (or ``ssd``), else the spectrum image eelsgpu.open reads."""
    from .. import io
    from ..errors import InputError

    if io.is_store(path):
        ds = io.open_store(path)
        name = variable or ("ssd" if "ssd" in ds.data_vars else None)
        if name is not None:
            if name not in ds.data_vars:
                raise InputError(
                    f"{path}: no variable {name!r} (it holds {', '.join(ds.data_vars)})"
                )
            da = ds[name]
            da.attrs = {**ds.attrs, **da.attrs}
            da.attrs.setdefault("source", str(path))
            return da.chunk({d: c for d, c in zip(da.dims[:-1], chunks or (), strict=False)})
    return io.open(path, chunks=chunks or "auto", **open_kw)


def write_pngs(ds, png: str, names: list[str]) -> list[Path]:
    """The first map at ``png``, the others beside it as ``<stem>_<name>.png``."""
    from ..plotting import plot_map

    first = Path(png)
    written = []
    for i, name in enumerate(names):
        if name not in ds:
            continue
        p = first if i == 0 else first.with_name(f"{first.stem}_{name}{first.suffix or '.png'}")
        plot_map(ds[name], p)
        written.append(p)
    return written


def write_fit_png(spectra, res, png: str, zlp: Any = None, search_eV=(-5.0, 5.0)) -> Path | None:
    """``<stem>_fit.png``: the spectra and onset fits of the pixels at the 10th, 50th and 90th
    percentile of Eg, over the fit window (the first look at whether the fits are sound); with
    ``zlp`` (the reference-ZLP route) the spectra less their ZLP model, as fitted."""
    import numpy as np

    from ..analysis.bandgap import fit_curves
    from ..plotting import plot_spectra

    eg = np.asarray(res["bandgap_eV"].values, float)
    flat = eg.reshape(-1)
    ok = np.nonzero(np.isfinite(flat))[0]
    if not ok.size:
        return None
    order = ok[np.argsort(flat[ok])]
    picks = sorted({int(order[int(q * (order.size - 1))]) for q in (0.1, 0.5, 0.9)})
    nav = spectra.dims[:-1]
    curves, styles = {}, {}
    for k, i in enumerate(picks):
        sel = dict(zip(nav, np.unravel_index(i, eg.shape), strict=True)) if nav else {}
        spec = spectra.isel(sel).compute()
        if zlp is not None:
            from ..analysis.bandgap import zlp_subtracted

            spec = zlp_subtracted(spec, zlp, search_eV)
        where = ", ".join(f"{d}={int(v)}" for d, v in sel.items())
        data_label = f"pixel {where}" if where else "spectrum"
        fit_label = f"fit, Eg = {flat[i]:.3f} eV"
        curves[data_label] = spec
        curves[fit_label] = fit_curves(spec, res)
        styles[data_label] = {"color": f"C{k}", "lw": 0.9, "alpha": 0.55}
        styles[fit_label] = {"color": f"C{k}", "lw": 2.0, "ls": "--"}
    lo, hi = res.attrs["bandgap_window_eV"]
    p = Path(png)
    out = p.with_name(f"{p.stem}_fit{p.suffix or '.png'}")
    plot_spectra(
        curves,
        out,
        title="onset fits (10th, 50th, 90th percentile of Eg)",
        xlim=(lo, hi),
        logy=False,
        styles=styles,
    )
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import io
    from ..analysis.bandgap import bandgap
    from ..plotting import quality_summary
    from ._common import open_kwargs

    out = output_path(args)
    spectra = load_spectra(args.input, parse_chunks(args.chunks), args.variable, open_kwargs(args))
    zlp = None
    if args.zlp is not None:
        from .deconvolve import _zlp_argument

        zlp = _zlp_argument(args.zlp, spectra)
    ds = bandgap(
        spectra,
        window_eV=args.window,
        model=args.model,
        background=args.background,
        min_significance=args.min_significance,
        zlp=zlp,
        search_eV=search_value(args) or (-5.0, 5.0),
        zlp_removed=True if args.zlp_removed else None,
        device=args.device,
        **uncertainty_kwargs(args),
    )
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    res = io.open_store(out)
    if args.png:
        write_pngs(
            res, args.png, ["bandgap_eV", "gap_type", "exponent_b", "bandgap_error_eV", "quality"]
        )
        write_fit_png(spectra, res, args.png, zlp, search_value(args) or (-5.0, 5.0))
    if not args.quiet:
        valid = np.asarray(res["valid"].values)
        eg = np.asarray(res["bandgap_eV"].values)[valid]
        lo, hi = res.attrs["bandgap_window_eV"]
        summary = (
            f"Eg median {np.median(eg):.3f} eV (5-95 %: {np.percentile(eg, 5):.3f} to "
            f"{np.percentile(eg, 95):.3f})"
            if eg.size
            else "no valid fit"
        )
        gt = np.asarray(res["gap_type"].values)[valid]
        print(
            f"wrote {out}: window {lo:.3g}:{hi:.3g} eV, {int(valid.sum())} of {valid.size} "
            f"pixels fitted ({valid.size - int(valid.sum())} flagged); {summary}; "
            f"{int((gt == 0).sum())} direct, {int((gt == 1).sum())} indirect"
        )
        print(quality_summary(res["quality"]))
        line = describe(res)
        if line:
            sig = np.asarray(res["bandgap_eV_sigma"].values)[valid]
            sig = sig[np.isfinite(sig)]
            if sig.size:
                line += f"; median bandgap_eV_sigma {np.median(sig):.3g} eV"
            print(line)
    return 0
