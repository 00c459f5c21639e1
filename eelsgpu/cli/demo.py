"""``eelsgpu demo``: the main job end to end on an embedded synthetic spectrum image.

Makes a 128 x 128 x 2048 low-loss spectrum image (a Drude metal film with a thickness gradient,
holes to vacuum, ZLP drift and Poisson noise), stores it as zarr, opens it back lazily, maps its
thickness, writes the result store and a PNG, and prints a one-line summary with the accuracy
against the model's exact answer. Needs no file, no network and no GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import add_device, add_quiet


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the main pipeline on an embedded synthetic spectrum image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default="eelsgpu-demo",
        metavar="DIR",
        help="folder for the stores and pictures (default: ./eelsgpu-demo)",
    )
    p.add_argument("--size", type=int, default=128, metavar="N", help="N x N pixels (default 128)")
    p.add_argument(
        "--channels", type=int, default=2048, metavar="C", help="energy channels (default 2048)"
    )
    add_device(p)
    add_quiet(p)
    return p


def _simulate(n: int, channels: int, quiet: bool):
    """The demo's synthetic image, made in bands of rows so that a bar counts its spectra from
    the first second (one call for the whole image says nothing for 10-40 s)."""
    import numpy as np
    import xarray as xr

    from eelsgpu import synthetic
    from eelsgpu.engine.progress import BlockProgress
    from eelsgpu.model import pixel_chunks

    rng = np.random.default_rng(1)
    tl = synthetic.thickness_map((n, n), "holes", (0.2, 3.0), hole_fraction=0.08, seed=1)
    drift = rng.normal(0.0, 0.15, (n, n))  # ZLP wanders by about 0.15 eV from pixel to pixel
    band = 8
    starts = list(range(0, n, band))
    bar = BlockProgress(
        "making the synthetic image",
        n_blocks=len(starts),
        n_done=0,
        total_spectra=n * n,
        done_spectra=0,
        quiet=quiet,
    )
    pieces = []
    try:
        for b, y0 in enumerate(starts):
            rows = slice(y0, min(n, y0 + band))
            pieces.append(
                synthetic.low_loss_image(
                    synthetic.Drude(15.0, 1.5),
                    t_over_lambda=tl[rows],
                    shape=(rows.stop - rows.start, n),
                    n_channels=channels,
                    dispersion_eV=0.05,
                    offset_eV=-5.0,
                    beam_energy_keV=200.0,
                    collection_angle_mrad=10.0,
                    zlp=synthetic.ZeroLossPeak(fwhm_eV=0.4, asymmetry=0.1),
                    total_counts=2e5,
                    drift_eV=drift[rows],
                    noise=True,
                    seed=2 + b,  # each band its own Poisson draw
                    pixel_size_nm=0.5,
                    return_ssd=False,
                )
            )
            bar.tick((rows.stop - rows.start) * n)
    finally:
        bar.close()
    sim = xr.concat(pieces, dim="y", data_vars="minimal", coords="minimal", compat="override")
    sim = sim.assign_coords(y=("y", np.arange(n) * 0.5, sim["y"].attrs))
    chunks = pixel_chunks((n, n, channels), 4, 8 * 2**20)  # 8 MiB blocks: a smooth bar
    return sim.assign(signal=sim["signal"].chunk(dict(zip(("y", "x"), chunks[:2], strict=True))))


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import eelsgpu
    from eelsgpu import io, plotting

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.size
    t_start = time.perf_counter()
    if not args.quiet:
        print(
            f"eelsgpu demo: a {n} x {n} x {args.channels} synthetic low-loss spectrum image "
            f"(Drude film 0.2-3 t/lambda, holes, drift, Poisson noise) -> {out}",
            flush=True,
        )
    sim = _simulate(n, args.channels, args.quiet)
    # the store keeps the exact answer beside the data, so anyone can check the result
    stored = sim.drop_vars(["true_eps", "energy_eps", "true_refractive_index"])
    data_path = io.write_store(
        stored, out / "demo-spectrum-image.zarr", overwrite=True, progress=not args.quiet
    )
    si = io.open_store(data_path)["signal"]

    result = eelsgpu.thickness(
        si,
        method="log-ratio",
        mean_free_path_nm=float(sim["true_mean_free_path_nm"][0, 0]),
        device=args.device,
    )
    result_path = io.write_store(
        result, out / "demo-thickness.zarr", overwrite=True, progress=not args.quiet
    )
    result = io.open_store(result_path)
    png = out / "demo-t_over_lambda.png"
    plotting.plot_map(
        result["t_over_lambda"],
        png,
        title="Relative thickness t/\u03bb (log-ratio), synthetic Drude film",
    )
    if "thickness_nm" in result:
        plotting.plot_map(
            result["thickness_nm"],
            out / "demo-thickness_nm.png",
            title="Absolute thickness (log-ratio, known \u03bb)",
        )

    got = result["t_over_lambda"].values
    valid = result["valid"].values
    truth = sim["true_t_over_lambda"].values
    film = valid & (truth > 0)
    err = np.abs(got[film] - truth[film]) / truth[film]
    elapsed = time.perf_counter() - t_start
    print(f"spectrum image: {data_path}  ({n} x {n} x {args.channels}, float32)")
    print(f"thickness maps: {result_path}")
    print(f"picture:        {png}")
    print(
        f"summary: t/lambda {np.nanmin(got[film]):.2f} to {np.nanmax(got[film]):.2f} over "
        f"{film.sum()} film pixels ({(~valid).sum()} flagged); median error against the exact "
        f"answer {100 * np.median(err):.2f} % (Poisson noise included); {elapsed:.1f} s"
    )
    return 0
