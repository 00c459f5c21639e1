"""``eelsgpu info IN``: what a file holds and how eelsgpu reads it, without reading the data.

Prints the shape and dims, the energy axis (offset, dispersion, range), the spatial calibration,
the calibration attributes (and which are missing, with the option that gives each), and the
chunking. A file with several signals lists them all; pick one with --signal-index.

Example::

    eelsgpu info EELS_SI.dm4
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_input, add_open_options, open_kwargs

_FLAGS = {
    "beam_energy_keV": ("--beam-energy", "keV"),
    "collection_angle_mrad": ("--collection-angle", "mrad"),
    "convergence_angle_mrad": ("--convergence-angle", "mrad"),
}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="show a file's shape, energy axis, calibration and chunking",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p)
    add_open_options(p)
    return p


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _row(name: str, text: str) -> str:
    return f"  {name + ':':<24}{text}"


def describe(si: Any) -> list[str]:
    """The lines ``eelsgpu info`` prints for an opened spectrum image."""
    import numpy as np

    from ..errors import EelsgpuError
    from ..model import check_energy_scale, energy_axis

    a = si.attrs
    stored = a.get("original_dtype")
    lines = [
        _row("dims", ", ".join(f"{d} {n}" for d, n in si.sizes.items())),
        _row(
            "dtype",
            str(si.dtype)
            + (f" (in the file: {stored})" if stored and stored != str(si.dtype) else ""),
        ),
    ]
    e = np.asarray(si["energy"].values)
    offset, step = energy_axis(e, require_uniform=False, source=a.get("source"))
    kind = "uniform" if "dispersion_eV" in a else "NON-UNIFORM: the FFT-based analyses refuse it"
    lines.append(_row("energy", f"{e.size} channels, {e[0]:g} to {e[-1]:g} eV"))
    lines.append(_row("  offset, dispersion", f"{offset:g} eV, {step:.6g} eV/channel ({kind})"))
    if a.get("energy_reversed"):
        lines.append(_row("  order", "stored from high to low energy; read the right way round"))
    try:
        check_energy_scale(si)
    except EelsgpuError as exc:  # meV or keV labelled eV: say it here, the analyses refuse it
        lines.append(_row("  unit", f"WRONG? {exc}"))
    for dim in si.dims[:-1]:
        c = si[dim]
        units = c.attrs.get("units", "px")
        if units == "px":
            lines.append(_row(dim, f"{si.sizes[dim]} pixels (no spatial calibration)"))
        else:
            v = np.asarray(c.values)
            pitch = float(v[1] - v[0]) if v.size > 1 else float("nan")
            lines.append(_row(dim, f"{si.sizes[dim]} pixels of {pitch:.4g} {units}"))
    missing = []
    for key, (flag, unit) in _FLAGS.items():
        if a.get(key) is not None:
            lines.append(_row(key, f"{a[key]:g} {unit}"))
        else:
            lines.append(_row(key, f"MISSING (give it with {flag})"))
            missing.append(key)
    for key in ("title", "signal_type", "signal_index", "source", "converted_from"):
        if a.get(key) not in (None, ""):
            lines.append(_row(key, str(a[key])))
    chunks = si.data.chunksize
    n_chunks = int(np.prod(si.data.numblocks))
    each = _bytes(np.prod(chunks) * si.dtype.itemsize)
    lines.append(_row("chunks", f"{chunks}, {each} each, {n_chunks} in all (energy never split)"))
    if "valid" in si.coords:
        bad = int((~np.asarray(si["valid"].values)).sum())
        lines.append(_row("valid", f"{bad} pixel(s) flagged invalid"))
    lines.append(_row("missing", ", ".join(missing) if missing else "nothing"))
    return lines


def _codec_name(codec: Any) -> str:
    """'blosc lz4 bitshuffle', 'zstd level 3'..."""
    name = type(codec).__name__.removesuffix("Codec").lower()
    parts = [name]
    for attr in ("cname", "shuffle", "level", "clevel"):
        value = getattr(codec, attr, None)
        if value is not None:
            value = getattr(value, "value", value)
            parts.append(str(value) if attr in ("cname", "shuffle") else f"{attr} {value}")
    return " ".join(parts)


def _store_lines(path: str) -> list[str]:
    """Codec and size on disk of an eelsgpu store."""
    import zarr

    from ..io import CHECK_ATTR

    p = Path(path)
    group = zarr.open_group(p, mode="r")
    arr = group["signal"]
    codecs = ", ".join(_codec_name(c) for c in arr.compressors) or "none"
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raw = arr.nbytes
    ratio = raw / max(size, 1)
    lines = [
        _row("store", f"zarr v{arr.metadata.zarr_format}, codec {codecs}"),
        _row("  on disk", f"{_bytes(size)} ({ratio:.1f}x smaller than float32 in memory)"),
    ]
    check = arr.attrs.get(CHECK_ATTR)
    if check:
        lines.append(
            _row(
                "value check",
                f"{check['nonfinite_pixels']} pixel(s) with NaN/inf, all zero: "
                f"{check['all_zero']} (recorded when written)",
            )
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..errors import EelsgpuError

    kwargs = open_kwargs(args)
    signals = io.list_signals(args.input)
    is_store = io.is_store(Path(args.input))
    print(f"{args.input}")
    if len(signals) > 1 and not is_store and kwargs.get("signal_index") is None:
        print(f"  holds {len(signals)} signals; describe one with --signal-index N:")
        for d in signals:
            print(io.format_signal(d))
        return 0
    try:
        si = io.open(args.input, check=False, **kwargs)
    except EelsgpuError:
        for d in signals:
            print(io.format_signal(d))
        raise
    for line in describe(si):
        print(line)
    if is_store:
        for line in _store_lines(args.input):
            print(line)
    return 0
