"""``eelsgpu maps IN -o OUT.zarr --window NAME=LO:HI ...``: energy-window and band-feature maps.

Any spectrum image (EELS low loss, core loss, SXES with its non-uniform energy axis). Each
``--window`` gives a map of the counts in the window (channels cut by the window edges count in
proportion); ``--background NAME=LO:HI`` (repeatable per window, e.g. before and after a line)
removes a power-law (``A E^-r``, core-loss edges) or linear (emission lines) background fitted
there. ``--centroid``, ``--peak`` (Gaussian fit, sub-channel) and ``--width`` (FWHM) map the
position and width of the band in a window; ``--ratio A/B`` the ratio of two windows. With
``--elements`` the command warns when a window holds a higher diffraction order of a known line
of one of them (SXES: O-K in 3rd order lands at 175 eV, inside B-K 170-188 eV).
``--uncertainty analytic`` or ``--uncertainty replicas:K`` adds a ``<name>_sigma`` map (counting
noise, one standard deviation) beside every intensity, ratio, centroid, peak and width map; ``--gain``
gives the detector's data units per electron (else estimated from the data, and said so).

Examples::

    eelsgpu maps CuZn.hspy -o maps.zarr --window Cu=931:1000 --background Cu=850:925 \\
        --window Zn=1020:1100 --background Zn=940:1015 --ratio Cu/Zn --png-dir maps/
    eelsgpu maps sxes.zarr -o b.zarr --window BK=170:188 --window top=187:188 \\
        --background BK=160:168 --background BK=192:198 --background-model linear \\
        --elements B,Ca,O --ratio top/BK
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ._common import (
    add_analysis_options,
    add_input,
    add_output,
    open_input,
    output_path,
)
from ._uncertainty import add_uncertainty_options, describe, uncertainty_kwargs


def _named_range(text: str) -> tuple[str, tuple[float, float]]:
    try:
        name, rng = text.split("=", 1)
        lo, hi = rng.split(":", 1)
        return name.strip(), (float(lo), float(hi))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=LO:HI with energies in eV (e.g. Cu=931:1000), not {text!r}"
        ) from None


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "maps",
        help="energy-window maps (intensity, background removal, ratio, centroid, peak, width)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p)
    add_output(p)
    p.add_argument(
        "--window",
        action="append",
        type=_named_range,
        required=True,
        metavar="NAME=LO:HI",
        help="integration window in eV (repeatable)",
    )
    p.add_argument(
        "--background",
        action="append",
        type=_named_range,
        default=[],
        metavar="NAME=LO:HI",
        help="background-fit range in eV for window NAME (repeatable, also per window)",
    )
    p.add_argument(
        "--background-model",
        choices=("power-law", "linear"),
        default="power-law",
        help="background model: power-law A E^-r (default) or linear",
    )
    p.add_argument(
        "--ratio",
        action="append",
        default=[],
        metavar="A/B",
        help="map of the ratio of windows A and B (repeatable)",
    )
    p.add_argument(
        "--centroid",
        action="append",
        default=[],
        metavar="NAME",
        help="map the centroid (eV) of the band in window NAME",
    )
    p.add_argument(
        "--peak",
        action="append",
        default=[],
        metavar="NAME",
        help="map the fitted peak position (eV, Gaussian on the top channels)",
    )
    p.add_argument(
        "--width",
        action="append",
        default=[],
        metavar="NAME",
        help="map the FWHM (eV) of the band in window NAME",
    )
    p.add_argument(
        "--peak-channels",
        type=int,
        default=3,
        metavar="N",
        help="odd number of channels in the peak fit (default 3)",
    )
    p.add_argument(
        "--elements",
        metavar="B,O,...",
        help="elements present: warn when a window holds a higher-order line of one",
    )
    p.add_argument("--max-order", type=int, default=3, help="highest diffraction order (3)")
    p.add_argument("--png-dir", metavar="DIR", help="also write every map as a PNG in DIR")
    add_uncertainty_options(p)
    add_analysis_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import io
    from ..analysis.maps import window_maps
    from ..errors import InputError
    from ..kernels.sxes import HigherOrderLineWarning

    out = output_path(args)
    windows: dict[str, tuple[float, float]] = {}
    for name, rng in args.window:
        if name in windows:
            raise InputError(f"--window {name} given twice")
        windows[name] = rng
    background: dict[str, list[tuple[float, float]]] = {}
    for name, rng in args.background:
        background.setdefault(name, []).append(rng)
    elements = [e for e in (args.elements or "").split(",") if e.strip()]
    si = open_input(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HigherOrderLineWarning)
        ds = window_maps(
            si,
            windows,
            background=background,
            background_model=args.background_model,
            ratios=args.ratio,
            centroid=args.centroid,
            peak=args.peak,
            width=args.width,
            peak_channels=args.peak_channels,
            elements=elements or None,
            max_order=args.max_order,
            device=args.device,
            **uncertainty_kwargs(args),
        )
    for w in caught:
        if issubclass(w.category, HigherOrderLineWarning):
            print(f"eelsgpu maps: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    res = io.open_store(out)
    if args.png_dir:
        from ..plotting import plot_map

        names = [
            n
            for n in res.data_vars
            if not n.endswith(("_valid", "_sigma")) and res[n].dims == ("y", "x")
        ]
        for name in names:
            sigma = res.get(f"{name}_sigma")
            plot_map(res[name], Path(args.png_dir) / f"{name}.png", sigma=sigma)
        if not args.quiet:
            print(f"wrote {len(names)} PNG maps in {args.png_dir}")
    if not args.quiet:
        line = describe(res)
        if line:
            print(line)
        for name in windows:
            valid = np.asarray(res[f"{name}_valid"].values, dtype=bool)
            vals = np.asarray(res[name].values)[valid]
            med = (
                f"median {np.median(vals):.4g} {res[name].attrs.get('units', '')}"
                if vals.size
                else "no valid pixel"
            )
            print(f"{name}: {med}; {valid.size - int(valid.sum())} of {valid.size} pixels flagged")
        print(f"wrote {out}")
    return 0
