"""eelsgpu's own stores: zarr v3 groups whose spectrum image is the variable ``signal``.

A store is written by :func:`write_store` (any Dataset; through the engine's one store writer,
:class:`eelsgpu.engine.store.StoreWriter`) or by :func:`eelsgpu.engine.run_to_store` (a result,
resumably). The spectrum image is the variable ``signal`` (dims ``y, x, energy``), chunked in pixel
blocks with the energy axis whole, compressed with Blosc-LZ4 + bit-shuffle by default; results of
analyses go into stores of the same kind as named variables. Writes are atomic: a store is written
under a hidden name beside the target, marked complete, and renamed into place only then, so an
interrupted write never leaves a store that opens as if whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..engine.store import StoreWriter, dataset_sources
from ..errors import EelsgpuError, EnergyAxisError, InputError
from ..model import spectrum_image
from .calibration import energy_override
from .checks import check_record, check_values, value_check_graph
from .chunks import CheckedStore

__all__ = [
    "CHECK_ATTR",
    "is_store",
    "list_store_signals",
    "open_signal",
    "open_store",
    "write_store",
]

#: Attribute of a store's ``signal`` variable holding the value checks made while writing it.
CHECK_ATTR = "eelsgpu_value_check"


def is_store(p: str | os.PathLike) -> bool:
    """An eelsgpu (zarr) store, as opposed to a HyperSpy .zspy, which is a zarr folder too."""
    p = Path(p)
    if p.suffix.lower() == ".zspy":
        return False
    return p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())


def open_store(path: str | os.PathLike, chunks: Any = "auto") -> xr.Dataset:
    """Open an eelsgpu zarr store lazily as an :class:`xarray.Dataset` (every variable in it).

    Raises :class:`InputError` naming the store when it does not exist, cannot be read, or was not
    completely written (an interrupted conversion). The store is read through
    :class:`~eelsgpu.io.chunks.CheckedStore`: a damaged chunk is a
    :class:`~eelsgpu.errors.CorruptStoreError` naming it, raised when it is read.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if p.is_dir() and not is_store(p):
        raise InputError(f"{p}: a folder but not a zarr store (no zarr.json in it)")
    try:
        ds = xr.open_zarr(
            CheckedStore(p, read_only=True),
            chunks={} if chunks == "auto" else chunks,
            consolidated=False,
        )
    except EelsgpuError:
        raise
    except Exception as exc:
        raise InputError(
            f"{p}: not a readable zarr store, it may be truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if ds.attrs.get("eelsgpu_complete") is False:
        raise InputError(
            f"{p}: the store was not completely written (an interrupted run); convert the input "
            "again"
        )
    for var in ds.data_vars.values():  # bookkeeping of the writer, not a property of the data
        var.attrs.pop(CHECK_ATTR, None)
    return ds


def _recorded_check(path: Path) -> dict[str, Any] | None:
    """The value checks :func:`write_store` recorded for the store's ``signal`` (or None)."""
    import zarr

    try:
        record = zarr.open_group(path, mode="r")["signal"].attrs.get(CHECK_ATTR)
    except Exception:
        return None
    return dict(record) if isinstance(record, Mapping) else None


def write_store(
    ds: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    codec: str = "lz4",
    overwrite: bool = False,
    progress: bool = False,
    encoding: Mapping[str, Any] | None = None,
    check: bool = False,
    inputs: Sequence[Any] = (),
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
        Replace an existing eelsgpu store; without it an existing path is an error, and with it
        anything that is not a store eelsgpu wrote is still refused (a folder of other files, a
        file, another program's store).
    progress : bool
        Show a progress bar while the blocks are written.
    encoding : mapping, optional
        Extra zarr encoding per variable.
    check : bool
        Refuse, after the pass over the data and before anything appears at ``path``, a
        ``signal`` with NaN/inf values in pixels not flagged by a ``valid`` coordinate, or one
        that is zero everywhere (the checks of :func:`open`, made in the same pass as the write,
        so ``eelsgpu convert`` reads its input once).
    inputs : sequence of paths
        The files the data come from: ``path`` may not be, contain or lie inside one of them
        (the data's ``source`` attribute is checked as well).

    Returns
    -------
    Path
        The store written.

    Notes
    -----
    This is the engine's one store writer (:class:`eelsgpu.engine.store.StoreWriter`) in its
    one-shot mode: every variable keeps its chunks, the store is written as ``.NAME.partial``
    beside the target with the attribute ``eelsgpu_complete = False``, flagged complete after the
    last chunk, and renamed into place; an error removes the partial store, and the next write
    to the same path removes one that a killed run left. One writer per path at a time. For a ``signal`` variable the value checks of :func:`open` (non-finite pixels, all
    zero) are computed in the same pass and stored in its attributes.
    """
    target = Path(path)
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name="signal")
    ds = ds.copy()
    sig = ds.data_vars.get("signal")
    checked = sig is not None and bool(sig.dims) and sig.dims[-1] == "energy"
    if checked:
        sig_data = sig.data if isinstance(sig.data, da.Array) else da.from_array(sig.values)
        ds["signal"] = sig.copy(data=sig_data)
        ds["signal"].attrs.pop(CHECK_ATTR, None)
    with StoreWriter(
        target,
        overwrite=overwrite,
        codec=codec,
        resumable=False,
        quiet=not progress,
        description=f"writing {target.name}",
        inputs=[*inputs, *dataset_sources(ds)],
    ) as writer:
        try:
            plan = writer.prepare(ds, encoding=encoding)
            checks = value_check_graph(plan.ds["signal"].data) if checked else ()
            writer.start(plan, resume=False)
            results = writer.write(plan, also=checks)
            if checked:
                import zarr

                valid = plan.ds.coords["valid"].values if "valid" in plan.ds.coords else None
                record = check_record(results[0], results[1], valid)
                zarr.open_group(writer.partial, mode="r+", zarr_format=3)["signal"].attrs[
                    CHECK_ATTR
                ] = record
                if check:
                    check_values(plan.ds["signal"], record=record)
            writer.finish(plan)
        except BaseException:
            writer.discard()
            raise
    return target


def open_signal(
    path: Path,
    chunks: Any,
    energy_eV: Any,
    offset_eV: float | None,
    dispersion_eV: float | None,
    calibration: Mapping[str, float | None],
) -> tuple[xr.DataArray, dict[str, Any] | None]:
    ds = open_store(path, chunks="auto")
    if "signal" not in ds.data_vars:
        raise InputError(
            f"{path}: an eelsgpu store without a spectrum image (no variable 'signal'); it holds "
            f"{', '.join(ds.data_vars) or 'nothing'}"
        )
    sig = ds["signal"]
    if "energy" not in sig.dims or "energy" not in ds.coords:
        raise EnergyAxisError(
            f"{path}: the variable 'signal' has no energy axis (no dim 'energy' with a "
            f"coordinate in eV; its dims are {sig.dims})"
        )
    if sig.dims[-1] != "energy":  # the energy axis is found by name, wherever it is
        sig = sig.transpose(..., "energy")
    file_energy = np.asarray(ds["energy"].values, dtype=np.float64)
    energy = energy_override(
        sig.sizes["energy"], energy_eV, offset_eV, dispersion_eV, file_energy, path
    )
    attrs = dict(sig.attrs)
    record = _recorded_check(path)
    meta = {k: attrs.pop(k) for k in list(calibration) if k in attrs}
    meta.update({k: v for k, v in calibration.items() if v is not None})
    attrs.pop("dispersion_eV", None)
    previous = attrs.pop("source", None)
    if previous and previous != str(path):
        attrs["converted_from"] = previous
    yx: dict[str, Any] = {}
    unit = None
    for dim in sig.dims[:-1]:
        c = ds.coords.get(dim)
        if c is not None and c.attrs.get("units", "px") != "px":
            yx[dim] = c.values
            unit = c.attrs["units"]
    if chunks == "auto":
        chunks = sig.data.chunksize  # the storage chunks: no rechunking
    si = spectrum_image(
        sig.data,
        file_energy if energy is None else energy,
        **yx,
        spatial_unit=unit,
        **meta,
        source=str(path),
        chunks=chunks,
        attrs=attrs,
        dtype=sig.dtype if sig.dtype.kind in "fc" else np.float32,
        reverse_decreasing=True,
    )
    if record and not record.get("nonfinite_pixels"):
        _check_chunks_present(path, sig)
    if "valid" in ds.coords and ds["valid"].dims == sig.dims[:-1]:
        si = si.assign_coords(valid=ds["valid"])
    return si, record


def _check_chunks_present(path: Path, sig: xr.DataArray) -> None:
    """A store whose recorded check found no NaN must have every chunk file of ``signal``: zarr
    reads a missing chunk as fill values (NaN), so an incomplete copy would pass silently."""
    folder = path / "signal" / "c"
    if not folder.is_dir():
        return  # another chunk-key layout: nothing to count
    expected = int(np.prod([len(c) for c in sig.data.chunks]))
    present = sum(len(files) for _, _, files in os.walk(folder))
    if present < expected:
        raise InputError(
            f"{path}: {expected - present} of {expected} chunks of 'signal' are missing (an "
            "incomplete copy or a damaged store); convert the input again"
        )


def list_store_signals(path: Path) -> list[dict[str, Any]]:
    """The variables of an eelsgpu store, described like the signals of a file."""
    ds = open_store(path)
    out = []
    for i, (name, var) in enumerate(ds.data_vars.items()):
        rng = None
        if var.dims and var.dims[-1] == "energy" and "energy" in ds.coords:
            e = ds["energy"].values
            rng = (float(e[0]), float(e[-1]))
        out.append(
            {
                "index": i,
                "title": name,
                "signal_type": "",
                "shape": var.shape,
                "dtype": str(var.dtype),
                "energy_range_eV": rng,
            }
        )
    return out
