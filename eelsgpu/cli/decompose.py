"""``eelsgpu decompose IN -o OUT.zarr --method pca|nmf -n K``: PCA or NMF of a spectrum image.

PCA is a randomised SVD over the pixel blocks (Poisson-normalised unless ``--no-poisson``); NMF is
mini-batch NMF fed block by block (Poisson loss unless ``--no-poisson``). The store holds
``loadings`` (y, x, component), ``factors`` (component, energy) and, for PCA, the
``explained_variance_ratio`` of the first ``--scree`` components. ``--denoise`` adds
``denoised``, the image rebuilt from the K components. ``--png-dir`` writes the scree plot and
one picture per component.

Examples::

    eelsgpu decompose si.zarr -o pca.zarr --method pca -n 5 --png-dir pca/
    eelsgpu decompose si.zarr -o nmf.zarr --method nmf -n 3 --denoise
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    add_analysis_options,
    add_input,
    add_output,
    open_input,
    output_path,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "decompose",
        help="PCA / NMF decomposition (block-wise), scree plot, denoising",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p)
    add_output(p)
    p.add_argument("--method", choices=("pca", "nmf"), default="pca", help="pca (default) or nmf")
    p.add_argument(
        "-n",
        "--n-components",
        type=int,
        default=5,
        dest="n_components",
        metavar="K",
        help="components kept (default 5)",
    )
    p.add_argument(
        "--scree",
        type=int,
        default=20,
        metavar="N",
        help="PCA: components on the scree plot (default 20)",
    )
    p.add_argument(
        "--no-poisson",
        action="store_true",
        help="no Poisson normalisation (PCA) / least-squares loss (NMF)",
    )
    p.add_argument(
        "--denoise",
        action="store_true",
        help="also store 'denoised', the image rebuilt from the K components",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--png-dir", metavar="DIR", help="write the scree plot and components here")
    add_analysis_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..analysis.decomposition import decompose, denoise
    from ..plotting import plot_decomposition

    out = output_path(args)
    si = open_input(args)
    from ..io.chunks import reading_progress

    # the eager steps read the data before anything is written: count the blocks they read
    with reading_progress(args.input, f"reading {Path(args.input).name}", quiet=args.quiet):
        ds = decompose(
            si,
            args.method,
            args.n_components,
            poisson=not args.no_poisson,
            n_scree=args.scree,
            seed=args.seed,
            device=args.device,
        )
        if args.denoise:
            ds["denoised"] = denoise(si, ds, device=args.device)
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    res = io.open_store(out)
    if args.png_dir:
        paths = plot_decomposition(res, args.png_dir)
        if not args.quiet:
            print(f"wrote {len(paths)} pictures in {args.png_dir}")
    if not args.quiet:
        if "explained_variance_ratio" in res:
            ev = res["explained_variance_ratio"].values
            head = ", ".join(f"{v:.3g}" for v in ev[: min(8, ev.size)])
            print(f"explained variance ratio (first {min(8, ev.size)}): {head}")
        print(f"wrote {out}")
    return 0
