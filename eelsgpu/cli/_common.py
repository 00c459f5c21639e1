"""Options and helpers shared by the sub-commands, so every command spells them the same way.

Every numeric option of every command is range-checked when it is parsed, with its unit in the
message (:data:`OPTION_RANGES`, applied by :func:`apply_ranges` to each command's parser), so
``--density -2.7`` is one line and exit status 2 before anything is read. :func:`output_path`
refuses an output that would destroy data (an input, a folder that holds one, anything but an
eelsgpu store with --overwrite) and a PNG path that cannot be written, before the run.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError


# --------------------------------------------------------------------------- numeric options
class Range:
    """What a numeric option accepts: ``low``/``high`` bounds (``None``: open), whether ``low``
    itself is allowed, the unit, and whole numbers only (``integer``)."""

    def __init__(
        self,
        unit: str = "",
        low: float | None = None,
        high: float | None = None,
        *,
        low_ok: bool = True,
        integer: bool = False,
    ) -> None:
        self.unit, self.low, self.high, self.low_ok, self.integer = unit, low, high, low_ok, integer

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        parts = []
        if self.low is not None:
            if self.low == 0 and not self.low_ok:
                kind = "a positive whole number" if self.integer else "a positive number"
            else:
                parts.append(f"{'at least' if self.low_ok else 'above'} {self.low:g}")
        if self.high is not None:
            parts.append(f"at most {self.high:g}")
        unit = f" in {self.unit}" if self.unit else ""
        return f"{kind}{unit}" + (f" ({', '.join(parts)})" if parts else "")

    def check(self, text: str) -> float | int:
        """The value of ``text``, or :class:`argparse.ArgumentTypeError` saying what is allowed
        (argparse puts the option's name in front)."""
        try:
            value: float | int = float(text)
            if self.integer:
                if not float(value).is_integer():
                    raise ValueError
                value = int(value)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}") from None
        ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value >= self.low if self.low_ok else value > self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text}")
        return value


_POSITIVE = {"low": 0.0, "low_ok": False}
_COUNT = {"low": 1, "integer": True}

#: The range and unit of every numeric option of the commands, by flag (checked at parse time).
OPTION_RANGES: dict[str, Range] = {
    # calibration and energy axis
    "--beam-energy": Range("keV", 0.0, 5000.0, low_ok=False),
    "--collection-angle": Range("mrad", 0.0, 1571.0, low_ok=False),
    "--convergence-angle": Range("mrad", 0.0, 1571.0),
    "--offset": Range("eV"),
    "--dispersion": Range("eV"),  # negative: an axis that runs down (turned round on reading)
    "--signal-index": Range("", integer=True),
    # mean free path and thickness
    "--density": Range("g/cm3", 0.0, 30.0, low_ok=False),
    "--zeff": Range("", 1.0, 100.0),
    "--mean-free-path": Range("nm", **_POSITIVE),
    "--refractive-index": Range("", 1.0, low_ok=False),
    "--kk-constant": Range("nm eV", **_POSITIVE),
    "--min-thickness": Range("nm", 0.0),
    # energies and widths
    "--fwhm": Range("eV", **_POSITIVE),
    "--low-energy-cutoff": Range("eV", 0.0),
    "--search": Range("eV"),
    "--min-significance": Range("", **_POSITIVE),
    # counts
    "--iterations": Range("", 0, integer=True),
    "--clusters": Range("", **_COUNT),
    "--sample-size": Range("", 2, integer=True),
    "--seed": Range("", 0, integer=True),
    "--n-components": Range("", **_COUNT),
    "--scree": Range("", **_COUNT),
    "--peak-channels": Range("", 3, integer=True),
    "--max-order": Range("", **_COUNT),
    "--size": Range("pixels", 2, 4096, integer=True),
    "--channels": Range("channels", 512, 65536, integer=True),
    # batch and schedulers
    "--workers": Range("", **_COUNT),
    "--threads-per-worker": Range("", **_COUNT),
    "--task-mib": Range("MiB", **_POSITIVE),
    "--cores": Range("", **_COUNT),
    "--gpus": Range("", **_COUNT),
    "--jobs": Range("", **_COUNT),
    "--array-index": Range("", 0, integer=True),
    "--array-size": Range("", **_COUNT),
}


def ranged(flag: str, spec: Range | None = None) -> Callable[[str], float | int]:
    """An argparse ``type`` that parses and range-checks ``flag`` (default: its
    :data:`OPTION_RANGES` entry)."""
    spec = spec or OPTION_RANGES[flag]

    def convert(text: str) -> float | int:
        return spec.check(text)

    convert.__name__ = flag.lstrip("-").replace("-", "_")
    return convert


def apply_ranges(parser: argparse.ArgumentParser) -> None:
    """Give every plain ``float``/``int`` option of ``parser`` listed in :data:`OPTION_RANGES`
    its range check (the commands declare ``type=float``; the ranges and units live here, once)."""
    for action in parser._actions:
        if action.type not in (float, int):
            continue
        flag = next((f for f in action.option_strings if f in OPTION_RANGES), None)
        if flag is None:
            continue
        spec = OPTION_RANGES[flag]
        if action.type is int and not spec.integer:
            spec = Range(spec.unit, spec.low, spec.high, low_ok=spec.low_ok, integer=True)
        action.type = ranged(flag, spec)


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
    """``--chunks Y,X`` (or ``X`` for a line scan) as positive whole numbers of pixels."""
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or len(values) > 2 or min(values) < 1:
        raise InputError(
            f"--chunks must be one or two positive whole numbers of pixels like 64,64, not {text!r}"
        )
    return values


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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is a store eelsgpu wrote (anything else is never replaced)",
    )
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


#: Options that may name a file a command reads (besides IN), for the output checks.
INPUT_OPTIONS = ("input", "spectra", "zlp", "thickness", "manifest")


def input_paths(args: argparse.Namespace) -> list[str]:
    """The existing files and folders a command reads, from its arguments."""
    out = []
    for key in INPUT_OPTIONS:
        value = getattr(args, key, None)
        if isinstance(value, str) and value and Path(value).exists():
            out.append(value)
    return out


def check_writable(path: str | Path, flag: str) -> None:
    """Refuse, before the run, a path whose folder cannot be written (read-only, not a folder):
    a real file is made and removed in the nearest existing folder above it (``os.access`` says
    yes to root on a read-only mount)."""
    import tempfile

    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".eelsgpu-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write in {folder} ({exc.strerror})") from None


def output_path(args: argparse.Namespace) -> Path:
    """The ``-o`` store as a Path, checked before anything runs: it may not be, contain or lie
    inside an input; an existing one is an error unless --overwrite, and --overwrite replaces only
    an eelsgpu result store; its folder and those of --png/--png-dir must be writable."""
    from ..engine.outputs import check_output, related

    inputs = input_paths(args)
    out = check_output(args.output, inputs, overwrite=getattr(args, "overwrite", False))
    check_writable(out, "-o")
    for key, flag in (("png", "--png"), ("png_dir", "--png-dir")):
        value = getattr(args, key, None)
        if not value:
            continue
        for other in [*inputs, out]:
            if related(value, other) in ("is", "inside", "contains"):
                raise InputError(f"{flag} {value}: overlaps {other}; choose another path")
        if key == "png" and Path(value).is_dir():
            raise InputError(f"{flag} {value}: is a folder; give a file name such as map.png")
        check_writable(Path(value) / "x.png" if key == "png_dir" else value, flag)
    return out


def open_input(args: argparse.Namespace, path: str | None = None):
    """Open ``path`` (default: the IN argument) with the command's --chunks and open options."""
    from .. import io

    chunks = parse_chunks(getattr(args, "chunks", None))
    return io.open(
        path or args.input,
        chunks=chunks or "auto",
        progress=not getattr(args, "quiet", False),
        **open_kwargs(args),
    )
