"""``eelsgpu cluster IN -o OUT.zarr -k K``: group pixels into K regions by k-means.

Features: the whole spectrum after normalisation (default), or maps of a result store
(``--features t_over_lambda,bandgap_eV``; ``integrated_intensity`` is computed from the
spectrum image). The model is fitted on a random sample of pixels, then every pixel is assigned
block by block. The store holds ``cluster`` (y, x; -1 where a feature is NaN),
``cluster_distance``, ``cluster_size`` and ``cluster_mean_spectrum`` (when spectra are at hand).

Examples::

    eelsgpu cluster lowloss.zarr -o clusters.zarr -k 4 --png clusters.png
    eelsgpu cluster thickness.zarr -o clusters.zarr -k 3 --features t_over_lambda --spectra lowloss.zarr
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    add_analysis_options,
    add_input,
    add_output,
    add_png,
    open_input,
    output_path,
)


def add_parser(sub) -> argparse.ArgumentParser:

    p = sub.add_parser(
        "cluster",
        help="k-means clustering of pixels by spectrum or by result maps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p, help="spectrum image, or a result store holding the feature maps")
    add_output(p)
    p.add_argument(
        "-k",
        "--clusters",
        type=int,
        required=True,
        dest="n_clusters",
        metavar="K",
        help="number of clusters",
    )
    p.add_argument(
        "--features",
        default="spectrum",
        metavar="spectrum|NAME,NAME",
        help="'spectrum' (default) or comma-separated map names of IN",
    )
    p.add_argument(
        "--spectra",
        metavar="SI",
        help="spectrum image for the cluster-mean spectra when IN holds only maps",
    )
    p.add_argument(
        "--energy-range",
        metavar="LO:HI",
        dest="energy_range",
        help="channels used by the spectrum features (eV)",
    )
    p.add_argument(
        "--sample-size",
        type=int,
        default=20000,
        metavar="N",
        help="pixels the model is fitted on (default 20000)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_png(p)
    add_analysis_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import xarray as xr

    from .. import io
    from ..analysis.clustering import cluster
    from .bandgap import parse_window, write_pngs

    out = output_path(args)
    features = args.features.strip()
    if features == "spectrum":
        data = open_input(args)
        feats = "spectrum"
    else:
        feats = [f.strip() for f in features.split(",") if f.strip()]
        ds_in = io.open_store(args.input) if io.is_store(args.input) else None
        if ds_in is None:
            data = xr.Dataset({"signal": open_input(args)})
        else:
            data = ds_in
            if "signal" in ds_in.data_vars:
                data = ds_in.assign(signal=open_input(args))
        if args.spectra:
            data = data.assign(signal=open_input(args, args.spectra))
    from ..io.chunks import reading_progress

    # the eager steps read the data before anything is written: count the blocks they read
    with reading_progress(args.input, f"reading {Path(args.input).name}", quiet=args.quiet):
        ds = cluster(
            data,
            n_clusters=args.n_clusters,
            features=feats,
            sample_size=args.sample_size,
            seed=args.seed,
            energy_range_eV=parse_window(args.energy_range),
            device=args.device,
            progress=not args.quiet,
        )
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    res = io.open_store(out)
    if args.png:
        written = write_pngs(res, args.png, ["cluster", "cluster_distance"])
        if "cluster_mean_spectrum" in res:
            from ..plotting import plot_spectra

            m = res["cluster_mean_spectrum"]
            p = Path(args.png)
            p = p.with_name(f"{p.stem}_spectra{p.suffix or '.png'}")
            plot_spectra(
                {
                    f"cluster {i} ({int(n)} px)": m.isel(cluster_id=i)
                    for i, n in enumerate(res["cluster_size"].values)
                },
                p,
                title="cluster-mean spectra",
            )
            written.append(p)
    if not args.quiet:
        sizes = ", ".join(f"{i}: {int(n)}" for i, n in enumerate(res["cluster_size"].values))
        n_flag = int((np.asarray(res["cluster"].values) < 0).sum())
        print(
            f"wrote {out}: {args.n_clusters} clusters (pixels per cluster {sizes}; "
            f"{n_flag} flagged)"
        )
    return 0
