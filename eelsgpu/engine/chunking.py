"""Task and storage chunk sizes: how a spectrum image is cut into dask tasks."""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

__all__ = ["TASK_BYTES", "align_tasks", "storage_chunks", "task_chunks"]

# --------------------------------------------------------------------------- task sizes
#: Bytes of input per dask task. A task costs 0.3-0.45 ms of scheduling on the threaded
#: scheduler and 3-5 ms on a distributed one (measured on this machine); a 64 x 64 x 2048 float32
#: block (32 MiB) takes 30-150 ms to process on one core, so 32 MiB keeps the threaded overhead
#: under 1 %, and 128 MiB keeps a distributed cluster's under a few percent.
TASK_BYTES = {"local": 32 * 2**20, "distributed": 128 * 2**20}


def task_chunks(
    shape: Sequence[int],
    storage_chunks: Sequence[int],
    itemsize: int = 4,
    target_bytes: int = TASK_BYTES["local"],
) -> tuple[int, ...]:
    """Dask chunks made of whole storage chunks, merged along the pixel dims up to ``target_bytes``.

    A task that reads part of a storage chunk makes every chunk be read (and decompressed) several
    times, so tasks are always unions of whole chunks; the energy axis is never split.

    >>> task_chunks((1024, 1024, 2048), (32, 32, 2048), target_bytes=32 * 2**20)
    (64, 64, 2048)
    >>> task_chunks((1024, 1024, 2048), (64, 64, 2048), target_bytes=16 * 2**20)
    (64, 64, 2048)
    """
    shape = tuple(int(s) for s in shape)
    nav = [min(int(c), s) for c, s in zip(storage_chunks[:-1], shape[:-1], strict=True)]
    chunk_bytes = int(np.prod(nav)) * shape[-1] * itemsize
    factor = max(1, int(target_bytes // max(1, chunk_bytes)))
    mult = [1] * len(nav)
    while True:
        growable = [d for d in range(len(nav)) if nav[d] * mult[d] < shape[d]]
        if not growable:
            break
        d = min(growable, key=lambda d: nav[d] * mult[d])  # grow the shorter side: square tasks
        trial = mult.copy()
        trial[d] += 1
        if int(np.prod(trial)) > factor:
            break
        mult = trial
    return tuple(min(n * m, s) for n, m, s in zip(nav, mult, shape[:-1], strict=True)) + (
        shape[-1],
    )


def storage_chunks(si: xr.DataArray) -> tuple[int, ...] | None:
    """The chunk shape ``si`` is stored with on disk (from its zarr encoding), if known."""
    enc = si.encoding or {}
    pref = enc.get("preferred_chunks")
    if pref:
        return tuple(int(pref.get(d, si.sizes[d])) for d in si.dims)
    if enc.get("chunks"):
        return tuple(int(c) for c in enc["chunks"])
    return None


def align_tasks(
    si: xr.DataArray, target_bytes: int = TASK_BYTES["local"], min_tasks: int = 1
) -> xr.DataArray:
    """Rechunk ``si`` so that each dask task is a union of whole storage chunks of about
    ``target_bytes`` (a no-op copy of the graph when it already is), and, where the storage
    chunks allow, at least ``min_tasks`` tasks (e.g. two per worker thread, so that a small image
    still keeps every worker busy)."""
    total = int(np.prod(si.shape)) * si.dtype.itemsize
    target_bytes = max(1, min(int(target_bytes), total // max(1, int(min_tasks))))
    stored = storage_chunks(si)
    if stored is None:
        data = si.data
        stored = (
            tuple(c[0] for c in data.chunks)
            if isinstance(data, da.Array)
            else tuple(si.shape[:-1]) + (si.shape[-1],)
        )
    chunks = task_chunks(si.shape, stored, si.dtype.itemsize, target_bytes)
    return si.chunk(dict(zip(si.dims, chunks, strict=True)))


# --------------------------------------------------------------------------- streaming to a store
