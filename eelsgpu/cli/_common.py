"""Options and helpers shared by the sub-commands, so every command spells them the same way."""

from __future__ import annotations

import argparse
from typing import Any


def add_input(
    p: argparse.ArgumentParser,
    help: str = "spectrum image (zarr store or any file eelsgpu.open reads)",
) -> None:
    p.add_argument("input", metavar="IN", help=help)


def add_output(
    p: argparse.ArgumentParser, required: bool = True, help: str = "result zarr store"
) -> None:
    p.add_argument("-o", "--output", metavar="OUT.zarr", required=required, help=help)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where kernels run: auto (GPU if CuPy finds a usable one, else CPU), cpu, gpu",
    )


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_calibration(p: argparse.ArgumentParser) -> None:
    """--beam-energy, --collection-angle, --convergence-angle (override the file's metadata)."""
    p.add_argument(
        "--beam-energy",
        type=float,
        metavar="keV",
        dest="beam_energy_keV",
        help="incident beam energy E0 in keV (default: from the file)",
    )
    p.add_argument(
        "--collection-angle",
        type=float,
        metavar="mrad",
        dest="collection_angle_mrad",
        help="collection semi-angle beta in mrad (default: from the file)",
    )
    p.add_argument(
        "--convergence-angle",
        type=float,
        metavar="mrad",
        dest="convergence_angle_mrad",
        help="convergence semi-angle alpha in mrad (default: from the file)",
    )


def add_png(p: argparse.ArgumentParser) -> None:
    p.add_argument("--png", metavar="PATH", help="also write the main map(s) as PNG here")


def add_chunks(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunks",
        metavar="Y,X",
        help="pixel block size, e.g. 64,64 (default: about 32 MiB blocks)",
    )


def parse_chunks(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--chunks takes integers like 64,64, not {text!r}"
        ) from None


def calibration_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The calibration options that were given (so the file's metadata fills the rest)."""
    out = {}
    for key in ("beam_energy_keV", "collection_angle_mrad", "convergence_angle_mrad"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def add_open_options(p: argparse.ArgumentParser) -> None:
    """Options of :func:`eelsgpu.open`: energy calibration, signal choice, NaN masking."""
    add_calibration(p)
    p.add_argument(
        "--offset",
        type=float,
        metavar="eV",
        dest="offset_eV",
        help="energy of the first channel in eV (replaces the file's; needed for .npy)",
    )
    p.add_argument(
        "--dispersion",
        type=float,
        metavar="eV",
        dest="dispersion_eV",
        help="energy per channel in eV (replaces the file's; needed for .npy)",
    )
    p.add_argument(
        "--signal-index",
        type=int,
        metavar="N",
        dest="signal_index",
        help="which signal of a file holding several (eelsgpu info lists them)",
    )
    p.add_argument(
        "--mask-invalid",
        action="store_true",
        dest="mask_invalid",
        help="accept NaN/inf values: those pixels become NaN, flagged in 'valid'",
    )


def open_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`eelsgpu.open` given on the command line."""
    out: dict[str, Any] = calibration_kwargs(args)
    for key in ("offset_eV", "dispersion_eV", "signal_index"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    if getattr(args, "mask_invalid", False):
        out["mask_invalid"] = True
    return out


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    """What every analysis command takes: --overwrite, --chunks, --device, the options of
    :func:`eelsgpu.open` (calibration, signal choice, NaN masking) and --quiet."""
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_chunks(p)
    add_device(p)
    add_open_options(p)
    add_quiet(p)


def add_mean_free_path_options(p: argparse.ArgumentParser) -> None:
    """--density, --zeff, --mean-free-path: for an absolute thickness from t/lambda."""
    p.add_argument(
        "--density",
        type=float,
        metavar="g/cm3",
        dest="density_g_cm3",
        help="density for the Iakoubovskii mean free path (needs E0, beta, alpha)",
    )
    p.add_argument(
        "--zeff",
        type=float,
        metavar="Z",
        help="effective atomic number for the Malis mean free path (needs E0, beta)",
    )
    p.add_argument(
        "--mean-free-path",
        type=float,
        metavar="nm",
        dest="mean_free_path_nm",
        help="a known inelastic mean free path (nm) for these conditions",
    )


def mean_free_path_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The mean-free-path options and the calibration overrides, as keyword arguments."""
    out = {k: getattr(args, k, None) for k in ("density_g_cm3", "zeff", "mean_free_path_nm")}
    for key in ("beam_energy_keV", "collection_angle_mrad", "convergence_angle_mrad"):
        out[key] = getattr(args, key, None)
    return out


def output_path(args: argparse.Namespace):
    """The ``-o`` store as a Path; an existing one is an error unless --overwrite."""
    from pathlib import Path

    from ..errors import InputError

    out = Path(args.output)
    if out.exists() and not getattr(args, "overwrite", False):
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    return out


def open_input(args: argparse.Namespace, path: str | None = None):
    """Open ``path`` (default: the IN argument) with the command's --chunks and open options."""
    from .. import io

    chunks = parse_chunks(getattr(args, "chunks", None))
    return io.open(path or args.input, chunks=chunks or "auto", **open_kwargs(args))
