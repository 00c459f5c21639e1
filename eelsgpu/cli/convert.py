"""``eelsgpu convert IN -o OUT.zarr``: any file eelsgpu reads -> an eelsgpu zarr store.

The store holds the spectrum image as the variable ``signal`` (float32, pixel blocks of about
32 MiB with the energy axis whole) with its calibration. It is written under a temporary name and
renamed into place only when complete, so an interrupted conversion leaves no store at OUT.

Examples::

    eelsgpu convert EELS_SI.dm4 -o EELS_SI.zarr
    eelsgpu convert cube.npy -o cube.zarr --offset -5 --dispersion 0.05 --beam-energy 200
    eelsgpu convert velox.emd -o lowloss.zarr --signal-index 2 --codec zstd
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    add_chunks,
    add_input,
    add_open_options,
    add_output,
    add_quiet,
    open_kwargs,
    output_path,
    parse_chunks,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="convert a .dm3/.dm4/.msa/.hspy/.zspy/.emd/.npy file to an eelsgpu zarr store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p, help="input file (.dm3, .dm4, .msa, .hspy, .zspy, .emd, .npy or a zarr store)")
    add_output(p, help="the zarr store to write")
    add_chunks(p)
    p.add_argument(
        "--codec",
        choices=("lz4", "zstd"),
        default="lz4",
        help="lz4: Blosc-LZ4 + bit-shuffle, fast on CPUs (default); "
        "zstd: plain zstd, which a GPU can decode (nvCOMP)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is a store eelsgpu wrote (anything else is never replaced)",
    )
    add_open_options(p)
    add_quiet(p)
    return p


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..errors import EelsgpuError, InputError

    out = output_path(args)  # never the input, never anything but an eelsgpu store replaced
    chunks = parse_chunks(args.chunks)
    kwargs = open_kwargs(args)
    # the value checks run in the same pass as the write (one read of the input), unless masking
    # needs their answer first
    si = io.open(
        args.input,
        chunks=chunks or "auto",
        check=bool(args.mask_invalid),
        progress=not args.quiet,
        **kwargs,
    )
    if not args.mask_invalid:  # (done by io.open when it checks)
        from ..model import check_energy_scale

        check_energy_scale(si)
    try:
        io.write_store(
            si,
            out,
            codec=args.codec,
            overwrite=args.overwrite,
            progress=not args.quiet,
            check=True,
            inputs=[args.input],
        )
    except (EelsgpuError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a read error inside the dask graph: name the file
        raise InputError(
            f"{args.input}: converting to {out} failed, nothing was written ({type(exc).__name__}:"
            f" {exc}); the input may be truncated or corrupt, or the disk full"
        ) from exc
    raw = si.size * si.dtype.itemsize
    disk = _size(out)
    shape = ", ".join(f"{d} {n}" for d, n in si.sizes.items())
    chunk = "x".join(str(c) for c in si.data.chunksize)
    print(
        f"wrote {out}: {shape} ({si.dtype}), chunks {chunk}, codec {args.codec}, "
        f"{disk / 2**20:.1f} MiB on disk ({raw / max(disk, 1):.1f}x)"
    )
    return 0
