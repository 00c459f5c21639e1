"""``eelsgpu report RESULT.zarr -o report.html``: one self-contained page of a result store.

Every map (with colour bar, scale bar, quantity and unit), the spectra of chosen pixels
(``--pixels Y,X;Y,X``) or the cluster-mean spectra (``--clusters``), and the run's parameters.
The pictures are embedded in the page: it needs no other file and no network.

Examples::

    eelsgpu report gap.zarr -o gap.html
    eelsgpu report clusters.zarr -o clusters.html --clusters
    eelsgpu report ssd.zarr -o ssd.html --pixels "3,4;10,12" --xlim 0:30
    eelsgpu report gap.zarr -o gap.html --pixels "3,4" --spectra lowloss.zarr
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of all maps and chosen spectra of a store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="RESULT.zarr", help="a result store")
    p.add_argument("-o", "--output", metavar="report.html", required=True, help="HTML to write")
    p.add_argument("--pixels", metavar="Y,X;Y,X", help="pixels whose spectra to draw (indices)")
    p.add_argument("--clusters", action="store_true", help="draw the cluster-mean spectra")
    p.add_argument(
        "--spectra",
        metavar="SI",
        help="spectrum image for the pixel / cluster spectra when the store has none",
    )
    p.add_argument(
        "--optical",
        metavar="CSV",
        help="optical constants (energy_eV, eps1, eps2 columns) drawn beside a film fit's eps",
    )
    p.add_argument("--title", help="page title")
    p.add_argument("--xlim", metavar="LO:HI", help="energy range of the spectrum plots (eV)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    return p


def _check_output(args: argparse.Namespace) -> None:
    """The page may replace an earlier HTML page, never an input or any other file."""
    from pathlib import Path

    from ..engine.outputs import related
    from ..errors import InputError
    from ._common import check_writable, input_paths

    out = Path(args.output)
    for inp in input_paths(args):
        if related(out, inp) is not None:
            raise InputError(f"{out}: overlaps the input {inp}; choose another output")
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{out}: the report is an HTML page; give a name ending in .html")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name such as report.html")
    check_writable(out, "-o")


def run(args: argparse.Namespace) -> int:
    from ..report import parse_pixels, write_report
    from .bandgap import parse_window

    _check_output(args)
    out = write_report(
        args.input,
        args.output,
        pixels=parse_pixels(args.pixels),
        clusters=args.clusters,
        title=args.title,
        xlim_eV=parse_window(args.xlim),
        spectra=args.spectra,
        optical=args.optical,
    )
    if not args.quiet:
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
