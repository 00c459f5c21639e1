"""Files: eelsgpu's own zarr stores (read and write).

A store is a zarr v3 group written by :meth:`xarray.Dataset.to_zarr`; the spectrum image is the
variable ``signal`` (dims ``y, x, energy``), chunked in pixel blocks with the energy axis whole,
compressed with Blosc-LZ4 + bit-shuffle by default. Results of analyses go into stores of the same
kind as named variables.

Writes are atomic: a store is written under a temporary name beside the target and renamed into
place only when complete, so an interrupted write never leaves a store that opens as if whole.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from .errors import InputError

__all__ = ["codecs", "open_store", "write_store"]

CODEC_PROFILES = ("lz4", "zstd")


def codecs(profile: str = "lz4") -> dict[str, Any]:
    """Zarr v3 compressor settings for a profile.

    ``"lz4"`` (default): Blosc-LZ4 with bit-shuffle, fast both ways on a CPU. ``"zstd"``: a plain
    zstd codec, the profile a GPU can decode (nvCOMP reads zstd frames but not Blosc).
    """
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if profile == "lz4":
        return {"compressors": (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),)}
    if profile == "zstd":
        return {"compressors": (ZstdCodec(level=3),)}
    raise ValueError(f"codec profile must be one of {CODEC_PROFILES}, not {profile!r}")


def open_store(path: str | os.PathLike, chunks: Any = "auto") -> xr.Dataset:
    """Open an eelsgpu zarr store lazily as an :class:`xarray.Dataset`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    try:
        ds = xr.open_zarr(p, chunks={} if chunks == "auto" else chunks, consolidated=False)
    except Exception as exc:
        raise InputError(f"{p}: not a readable zarr store ({type(exc).__name__}: {exc})") from exc
    if ds.attrs.get("eelsgpu_complete") is False:
        raise InputError(f"{p}: the store was not completely written (interrupted run)")
    return ds


def write_store(
    ds: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    codec: str = "lz4",
    overwrite: bool = False,
    progress: bool = False,
    encoding: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Dataset (lazy or not) to a zarr store, atomically.

    Parameters
    ----------
    ds : xarray.Dataset or DataArray
        What to write; a DataArray is written as the variable ``signal``.
    path : path
        The store to create.
    codec : {"lz4", "zstd"}
        Compression profile (see :func:`codecs`).
    overwrite : bool
        Replace an existing store; without it an existing path is an error.
    progress : bool
        Show a progress bar while the dask graph runs.

    Returns
    -------
    Path
        The store written.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists (pass overwrite=True or --overwrite)")
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name="signal")
    enc: dict[str, Any] = {}
    comp = codecs(codec)
    for name, var in ds.data_vars.items():
        enc[name] = dict(comp)
        if getattr(var.data, "chunks", None) is not None:
            enc[name]["chunks"] = tuple(c[0] for c in var.data.chunks)
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        delayed = ds.to_zarr(
            tmp, mode="w", encoding=enc, compute=False, consolidated=False, zarr_format=3
        )
        if progress:
            from .progress import progress_bar

            with progress_bar(f"writing {target.name}"):
                delayed.compute()
        else:
            delayed.compute()
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
