"""Block mapping: runs a declared per-block kernel over the pixel blocks of a spectrum image.

The split follows LiberTEM's user-defined functions: a *kernel* is a pure function, arrays in and
arrays out, that sees one block of spectra as a 2-D array ``(n_pixels, n_energy)`` in whatever
array namespace the block lives in (NumPy, CuPy, array-api-strict); the *engine* decides the blocks,
moves them to the device, calls the kernel and turns what it returns into labelled xarray
variables. Kernels never see dask, files or xarray.

Two paths, the same blocks, tiles and numbers (bit for bit):

* **eager**, for an image held in memory (a NumPy array, a DataArray without dask chunks, a
  HyperSpy signal's data) with every extra in memory too, on dask's local schedulers: the blocks
  run at once on a thread per core (``dask.config`` ``num_workers``; one thread on the
  ``"synchronous"`` scheduler), each block's outputs written straight into preallocated NumPy
  result arrays -- no dask graph, no per-block results concatenated and then gathered again
  (those two copies of every result were a third of an in-memory Kramers-Kronig run);
* **lazy**, for a dask input (a store, a file, or anything given ``.chunk()``: that is how to get
  the lazy path for an array in memory), or with a distributed Client or the ``"processes"``
  scheduler in use: a dask graph, computed by ``.compute()`` or streamed to a store by the store
  writer (:mod:`.store`).

:func:`eager_workers` decides which.

A kernel comes declared as a :class:`~eelsgpu.kernels.declare.BlockKernel`: the function
``kernel(block, energy_eV, **params) -> dict[str, array]`` (``block`` is ``(n_pixels, n_energy)``,
``energy_eV`` the float64 energy coordinate on the same device, each returned array
``(n_pixels,)`` for a map or ``(n_pixels, m)`` for a per-pixel spectrum), the outputs it makes
(:class:`Output`) and its preferred tile size. So the engine knows the outputs' shapes before
anything is computed, and every block is computed once even when it feeds several outputs (they
are packed into one array per block and sliced apart).

Examples
--------
>>> import numpy as np
>>> from eelsgpu.model import spectrum_image
>>> from eelsgpu.engine import BlockKernel, Output, apply_kernel
>>> def total(block, energy_eV):
...     return {"total": block.sum(axis=-1)}
>>> si = spectrum_image(np.ones((2, 3, 10)), np.arange(10.0))
>>> decl = BlockKernel(total, outputs=(Output("total", units="counts"),))
>>> ds = apply_kernel(decl, si, device="cpu")
>>> ds["total"].values.tolist()
[[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..kernels.declare import BlockKernel, Kernel, Output
from ..model import as_spectrum_image
from . import device as backend
from . import transfer as gpu
from .blas import one_blas_thread

__all__ = [
    "PACKED_ENCODING",
    "TILE_BYTES",
    "PackedSource",
    "apply_kernel",
    "default_tile_pixels",
    "eager_workers",
    "packed_source",
]

#: Bytes of input per CPU tile inside a block (the kernel is called once per tile): 1 MiB is 128
#: spectra of 2048 float32 channels, whose rfft and its log (2 MiB each) stay in L2/L3. Measured
#: on this 2-core EPYC with an rfft -> log -> irfft stand-in over 64 x 64 x 2048 blocks: whole
#: blocks 47 000 spectra/s on one core, 54 000 on two threads; tiles of 64-256 spectra 72 000-91 000
#: on one core and 130 000-172 000 on two (the kernel's intermediates no longer spill to DRAM).
TILE_BYTES = 2**20


def _float_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


#: Peak device bytes per spectrum of the library's block kernels at 2048 float32 channels, measured
#: with the counting stand-in (benchmarks/bench_gpu_budget.py prints them; a test checks they still
#: hold), for declarations that do not carry
#: :attr:`~eelsgpu.kernels.declare.BlockKernel.peak_bytes_per_spectrum` yet. Scaled linearly with
#: the channel count. The kernel phase of issue 13 moves them into the declarations.
MEASURED_PEAK_BYTES: dict[str, int] = {
    # measured on one 4096 x 2048 float32 block (bench_gpu_budget.py), plus 10 %
    "deconvolve_block": 93_000,  # mirror ZLP, reconvolved-zlp and band-limited: 84 kB
    "log_ratio_block": 71_000,  # threshold ZLP, auto tail: 64 kB
    "kk_thickness_kernel": 84_000,  # 76 kB
    "kk_kernel": 270_000,  # 133 kB without the surface correction, 245 kB with 10 iterations
    # 605 kB (float64 inside; the free model continuous in b, issue 14: 433 kB before it, 311 kB
    # before the r bases were stacked)
    "bandgap": 670_000,
}

#: For a kernel with no measured peak: this many times its input spectrum (a Fourier-log kernel
#: holds about 30 block-sized float32/complex64 temporaries at once).
DEFAULT_PEAK_FACTOR = 64

#: The channel count the peaks are given at.
PEAK_CHANNELS = 2048


def peak_bytes_per_spectrum(decl: BlockKernel, n_energy: int, itemsize: int = 4) -> int:
    """Device bytes one spectrum of ``decl``'s kernel holds at its peak, for ``n_energy`` channels
    of ``itemsize`` bytes: the declaration's measured hint, else :data:`MEASURED_PEAK_BYTES`, else
    :data:`DEFAULT_PEAK_FACTOR` times the input spectrum."""
    hint = getattr(decl, "peak_bytes_per_spectrum", None) or MEASURED_PEAK_BYTES.get(decl.label)
    if hint:
        return int(hint * (n_energy / PEAK_CHANNELS) * (itemsize / 4)) + 1
    return DEFAULT_PEAK_FACTOR * n_energy * itemsize


def _run_block(
    block: np.ndarray,
    *extras: np.ndarray,
    kernel: Kernel,
    energy: np.ndarray,
    outputs: Sequence[Output],
    extra_names: Sequence[str],
    extra_is_map: Sequence[bool],
    device: str,
    pack_dtype: np.dtype,
    params: Mapping[str, Any],
    tile_pixels: int | None = None,
    peak_bytes: int = 0,
    dest: Sequence[np.ndarray] | None = None,
    stop: threading.Event | None = None,
) -> np.ndarray | None:
    """One block through the kernel: the packed ``(..., sum(widths))`` array of its outputs, or,
    given ``dest`` (one ``(n_pixels, width)`` array per output: the eager path's result arrays),
    each output written straight into them and None returned. ``stop`` set: the block ends at
    its next tile (the eager path's Ctrl-C or a failed block)."""
    nav_shape = block.shape[:-1]
    n_e = block.shape[-1]
    flat = block.reshape(-1, n_e)
    n_pix = flat.shape[0]
    flat_extras = [
        arr.reshape(-1) if is_map else arr.reshape(-1, arr.shape[-1])
        for arr, is_map in zip(extras, extra_is_map, strict=True)
    ]
    widths = [out.width(n_e) for out in outputs]
    # The device is decided HERE, in the process that runs the block (a dask worker), never on
    # the client that built the graph: `auto` on a login node without a GPU still uses the GPUs
    # of the compute nodes.
    resolved = backend.from_spec(device)
    if resolved != "cpu":
        # The GPU path (CuPy, or an array-API namespace standing in for it): the block goes over
        # whole (in passes only where device memory asks for it), results packed on the device
        # and copied back once (eelsgpu.engine.transfer).
        pool = gpu.pool_for(gpu.device_for(resolved))
        if stop is not None and stop.is_set():
            return None
        try:
            packed = pool.run(
                flat,
                kernel,
                energy=energy,
                widths=widths,
                names=[o.name for o in outputs],
                dtype=pack_dtype,
                peak_per_spectrum=peak_bytes or DEFAULT_PEAK_FACTOR * n_e * 4,
                params=params,
                extras=dict(zip(extra_names, flat_extras, strict=True)),
            )
        except KeyError as exc:
            raise KeyError(
                f"kernel {getattr(kernel, '__name__', kernel)} did not return {exc.args[0]!r}"
            ) from None
        if dest is None:
            return packed.reshape(*nav_shape, packed.shape[-1])
        start = 0
        for out, w, target in zip(outputs, widths, dest, strict=True):
            # the same cut and cast the lazy path's write or gather does (_Extract)
            piece = _extract_for(out, start, w, pack_dtype)(packed)
            target[...] = piece.reshape(target.shape)
            start += w
        return None

    mover = gpu.mover_for("cpu")
    packed = None
    if dest is None:
        packed = np.empty((n_pix, int(sum(widths))), dtype=pack_dtype)
        dest, start = [], 0
        for w in widths:
            dest.append(packed[:, start : start + w])
            start += w
    # On a CPU the block is cut into tiles of a few MB so that the kernel's intermediates (an rfft
    # of the tile, its log...) stay in cache.
    for rows in gpu.iter_tiles(n_pix, tile_pixels):
        if stop is not None and stop.is_set():
            return None

        def call(dev_block: Any, rows: slice = rows) -> Mapping[str, Any]:
            kwargs = dict(params)
            for name, arr in zip(extra_names, flat_extras, strict=True):
                kwargs[name] = arr[rows]
            return kernel(dev_block, energy, **kwargs)

        result = mover.run(flat[rows], call, dtype=pack_dtype)
        n_rows = rows.stop - rows.start
        for out, w, target in zip(outputs, widths, dest, strict=True):
            if out.name not in result:
                raise KeyError(
                    f"kernel {getattr(kernel, '__name__', kernel)} did not return {out.name!r}"
                )
            host = backend.to_host(result[out.name])
            _put(target[rows], host.reshape(n_rows, w), pack_dtype)
    if packed is None:
        return None
    return packed.reshape(*nav_shape, packed.shape[-1])


def _put(target: np.ndarray, values: np.ndarray, pack_dtype: np.dtype) -> None:
    """``values`` into ``target`` as the lazy path stores them: cast to the packed dtype, then
    (for an output of another dtype) as :class:`_Extract` casts it, so both paths agree bitwise."""
    if target.dtype == pack_dtype:
        target[...] = values
        return
    packed = values.astype(pack_dtype, copy=False)
    if target.dtype == np.bool_:
        target[...] = packed > 0.5
    else:
        target[...] = packed.astype(target.dtype)


def _output_dtype(out: Output, pack_dtype: np.dtype) -> np.dtype:
    return np.dtype(pack_dtype) if out.dtype == "float" else np.dtype(out.dtype)


def _extract_for(out: Output, start: int, width: int, pack_dtype: np.dtype) -> _Extract:
    return _Extract(start, width, out.axis is None, _output_dtype(out, pack_dtype).str)


def default_tile_pixels(n_energy: int, itemsize: int = 4) -> int:
    """Spectra per CPU tile: about :data:`TILE_BYTES` of input (see benchmarks/bench_engine.py)."""
    return max(16, TILE_BYTES // max(1, n_energy * itemsize))


def _pixel_blocks(data: Any, min_spectra: int = 256) -> da.Array:
    """``data`` as a dask array of whole spectra in pixel blocks.

    An array in memory (NumPy, a DataArray without chunks) would be one task, so one core: it is
    cut into the blocks of :func:`_memory_chunks`, each a contiguous slab of it handed to the
    kernel as a view (:func:`_from_host`: no copy, no hash of the data). A dask array keeps its
    chunks (they follow its storage, or what the caller asked for)."""
    if isinstance(data, da.Array):
        arr = data
    else:
        host = np.asarray(data)
        arr = _from_host(host, _memory_chunks(host, min_spectra))
    if len(arr.chunks[-1]) > 1:
        arr = arr.rechunk({arr.ndim - 1: -1})  # a kernel needs whole spectra
    return arr


def _memory_chunks(host: np.ndarray, min_spectra: int = 256) -> tuple[int, ...]:
    """The pixel blocks of an image held in memory (lazy and eager paths alike): about
    ``TASK_BYTES["local"]`` of float32 input each, and at least two per core where the image is
    large enough (a block keeps >= ``min_spectra`` spectra: the declaration's
    ``min_block_pixels``), each a contiguous slab (:func:`_slab_chunks`)."""
    import os

    from .chunking import TASK_BYTES

    if host.ndim <= 1:
        return tuple(host.shape)
    n_e = host.shape[-1]
    per_spectrum = n_e * 4  # the kernels' float32
    by_cores = host.size * 4 // (2 * (os.cpu_count() or 1))
    target = max(max(1, int(min_spectra)) * per_spectrum, min(TASK_BYTES["local"], by_cores))
    return _slab_chunks(host.shape, per_spectrum, target)


def _slab_chunks(shape: tuple[int, ...], per_spectrum: int, target: int) -> tuple[int, ...]:
    """Chunks of about ``target`` bytes (``per_spectrum`` bytes a spectrum) that are contiguous
    slabs of a C-ordered array: the trailing navigation dims whole while they fit, the next one
    cut, the leading ones one at a time (so a block reshapes to (n, n_E) without a copy).

    >>> _slab_chunks((128, 128, 2048), 8192, 2**25)
    (32, 128, 2048)
    >>> _slab_chunks((4, 100000, 64), 256, 2**20)
    (1, 4096, 64)
    """
    chunks = list(shape)
    inner = per_spectrum
    for d in range(len(shape) - 2, -1, -1):
        if inner * shape[d] <= target:
            inner *= shape[d]
            continue
        chunks[d] = max(1, target // inner)
        for lead in range(d):
            chunks[lead] = 1
        break
    return tuple(int(c) for c in chunks)


def _from_host(host: np.ndarray, chunks: Any) -> da.Array:
    """A dask array over ``host`` (in memory) in ``chunks``, each block a view of it put in the
    graph as it is.

    ``dask.array.from_array`` copies the whole array, hashes it for a name, and copies every
    block again when it slices it (for a 128 x 128 x 2048 float32 cube: two extra cubes and
    0.1 s of hashing); a lazy analysis of an array in memory reads it when computed, like a
    lazily indexed file (change it before then and the result changes too)."""
    import itertools
    import uuid

    from dask.array.core import normalize_chunks

    chunks = normalize_chunks(chunks, host.shape, dtype=host.dtype)
    name = f"eelsgpu-in-memory-{uuid.uuid4().hex}"
    starts = [np.cumsum((0, *c)) for c in chunks]
    dsk = {}
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        sl = tuple(slice(int(st[i]), int(st[i + 1])) for st, i in zip(starts, idx, strict=True))
        dsk[(name, *idx)] = host[sl]
    meta = np.empty((0,) * host.ndim, dtype=host.dtype)
    return da.Array(dsk, name, chunks, dtype=host.dtype, meta=meta)


@dataclass(frozen=True)
class _Extract:
    """How one output is cut from the packed per-block array (done inside the write task)."""

    start: int
    width: int
    is_map: bool
    dtype: str

    def __call__(self, packed: np.ndarray) -> np.ndarray:
        piece = packed[..., self.start : self.start + self.width]
        if self.is_map:
            piece = piece[..., 0]
        dtype = np.dtype(self.dtype)
        return piece > 0.5 if dtype == np.bool_ else piece.astype(dtype, copy=False)


@dataclass(frozen=True)
class _MapColumn:
    """A map's column of a packed block as a small contiguous (..., 1) array (no view of it)."""

    extract: _Extract

    def __call__(self, packed: np.ndarray) -> np.ndarray:
        return np.array(self.extract(packed)[..., None])


#: Key of a variable's ``encoding`` under which :func:`apply_kernel` records the packed per-block
#: array the variable is cut from (a :class:`PackedSource`). The store writer then makes ONE write
#: task per block that depends on the packed block directly (2 tasks a block instead of 2 + 2 per
#: output). xarray's writers drop encoding keys they do not know.
PACKED_ENCODING = "eelsgpu_packed"


@dataclass(frozen=True)
class PackedSource:
    """The link from an output of :func:`apply_kernel` to the packed array it is cut from.

    It holds only while the variable's data is still the dask array named ``name``: xarray carries
    a variable's encoding through many operations (``isel``, ``chunk``, arithmetic with
    ``keep_attrs``...), so a variable whose data were transformed keeps the link but not its data,
    and :meth:`source_for` then refuses it.
    """

    packed: da.Array
    extract: _Extract
    name: str

    def source_for(self, data: Any) -> tuple[da.Array, _Extract] | None:
        """``(packed, extract)`` when ``data`` is still the output as it was made, else None."""
        if not isinstance(data, da.Array) or data.name != self.name:
            return None
        if self.packed.chunks[:-1] != data.chunks[: self.packed.ndim - 1]:
            return None
        return self.packed, self.extract


def packed_source(var: xr.DataArray | xr.Variable) -> tuple[da.Array, _Extract] | None:
    """The packed array and extractor ``var`` can be written from, if it is an untouched output of
    :func:`apply_kernel` (see :class:`PackedSource`)."""
    link = var.encoding.get(PACKED_ENCODING)
    return link.source_for(var.data) if isinstance(link, PackedSource) else None


def apply_kernel(
    decl: BlockKernel,
    si: xr.DataArray,
    *,
    device: str = "auto",
    extras: Mapping[str, xr.DataArray | np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    tile_pixels: int | None = None,
    **params: Any,
) -> xr.Dataset:
    """Map a declared kernel over the pixel blocks of ``si`` and return its outputs: computed at
    once for an image in memory (eager), lazily for a dask image (module docstring).

    Parameters
    ----------
    decl : BlockKernel
        The kernel, its outputs and its preferred tile size (:mod:`eelsgpu.kernels.declare`).
    si : xarray.DataArray
        The spectrum image (dims ``(..., "energy")``), dask-backed or not. One held in memory
        (NumPy) is cut into pixel blocks of about
        :data:`~eelsgpu.engine.chunking.TASK_BYTES` ``["local"]`` (at least two per core where it
        is large enough), so that every core works on it.
    device : {"auto", "cpu", "gpu"} or array-API namespace module
        Where the kernel runs (see :mod:`eelsgpu.engine.device`), decided in the process that
        runs each block (a dask worker), not here. A namespace module (``array_api_strict``, the
        counting stand-in :data:`eelsgpu.engine.counting.xp`) runs the GPU code path with that
        namespace standing in for CuPy.
    extras : mapping, optional
        Per-pixel arrays the kernel needs beside the block, each either a map with the image's
        navigation shape or a cube with the image's shape (a per-pixel ZLP, a thickness map).
        They are chunked like ``si`` and passed to the kernel flattened like the block.
    attrs : mapping, optional
        Attributes of the result Dataset (the input's are added underneath).
    tile_pixels : int, optional
        Overrides ``decl.tile_pixels``: on a CPU, the kernel is called on tiles of this many
        spectra inside each block (results are the same; only cache use changes). Default:
        about 1 MiB of input per tile (:func:`default_tile_pixels`); 0 calls it on whole
        blocks. Ignored on a GPU.
    **params
        Passed to the kernel unchanged (scalars, or small NumPy arrays moved to the device).

    Returns
    -------
    xarray.Dataset
        One variable per output of ``decl``, with the input's navigation coordinates. Computed
        (NumPy-backed) for an image in memory (the eager path, :func:`eager_workers`; errors and
        Ctrl-C are raised here); else lazy, each variable's ``encoding[PACKED_ENCODING]`` linking
        it to the packed per-block array (:class:`PackedSource`), which the store writer uses
        while the variable is untouched. Give ``si.chunk()`` for the lazy path on an image in
        memory.
    """
    if not isinstance(decl, BlockKernel):
        raise TypeError(f"apply_kernel takes a BlockKernel, not {type(decl).__name__}")
    kernel = decl.kernel
    outputs = decl.outputs_for(params)
    if tile_pixels is None:
        tile_pixels = decl.tile_pixels
    # a DataArray with an 'energy' dim (wherever it is: moved last), real numbers, not empty
    si = as_spectrum_image(si, "apply_kernel")
    device = backend.check_device(device)  # validated; decided on the workers
    workers = eager_workers(si.data, (extras or {}).values())
    if workers:
        host = np.asarray(si.data)
        from dask.array.core import normalize_chunks

        chunks = _memory_chunks(host, decl.min_block_pixels)
        nav_chunks = normalize_chunks(chunks, host.shape, dtype=host.dtype)[:-1]
        shape = host.shape
    else:
        data = _pixel_blocks(si.data, decl.min_block_pixels)
        shape, nav_chunks = data.shape, data.chunks[:-1]
    nav_dims = si.dims[:-1]
    n_e = si.sizes["energy"]
    energy = np.asarray(si["energy"].values, dtype=np.float64)
    pack_dtype = _float_dtype(si.dtype)

    extra_names, extra_arrays, extra_is_map = [], [], []
    for name, value in (extras or {}).items():
        arr = value.data if isinstance(value, xr.DataArray) else value
        if not isinstance(arr, da.Array):
            arr = np.asarray(arr)
        is_map = tuple(arr.shape) == tuple(shape[:-1])
        if not is_map and tuple(arr.shape[:-1]) != tuple(shape[:-1]):
            raise ValueError(
                f"{name} has shape {arr.shape}; it must match the image's pixels {shape[:-1]}"
                f" (a map) or its whole shape {shape} (a cube)"
            )
        extra_names.append(name)
        if workers:
            extra_arrays.append(arr)  # eager: sliced like the image, block by block
        else:
            chunks = nav_chunks + (() if is_map else ((arr.shape[-1],),))
            # in memory: views of it in the image's blocks (no copy of a per-pixel ZLP cube)
            extra_arrays.append(
                arr.rechunk(chunks) if isinstance(arr, da.Array) else _from_host(arr, chunks)
            )
        extra_is_map.append(is_map)

    widths = [o.width(n_e) for o in outputs]
    total = int(sum(widths))
    # parameter arrays stay NumPy here: each worker copies them to its device (once per device
    # thread, on the stream its kernels run on)
    host_params = dict(params)
    if tile_pixels is None:
        tile_pixels = default_tile_pixels(n_e, np.dtype(pack_dtype).itemsize)
    block_fn = _BlockFunction(
        kernel=kernel,
        energy=energy,
        outputs=tuple(outputs),
        extra_names=tuple(extra_names),
        extra_is_map=tuple(extra_is_map),
        device=backend.device_spec(device),
        pack_dtype=pack_dtype,
        params=host_params,
        tile_pixels=int(tile_pixels) or None,
        peak_bytes=peak_bytes_per_spectrum(decl, n_e, np.dtype(pack_dtype).itemsize),
    )
    if workers:
        results = _run_eager(block_fn, host, nav_chunks, extra_arrays, widths, workers)
    else:
        data_ind = tuple(range(data.ndim))
        nav_ind = data_ind[:-1]
        args: list[Any] = [data, data_ind]
        for arr, is_map in zip(extra_arrays, extra_is_map, strict=True):
            args += [arr, nav_ind if is_map else nav_ind + (data.ndim + 1,)]
        packed = da.blockwise(
            block_fn,
            nav_ind + (data.ndim,),
            *args,
            new_axes={data.ndim: total},
            concatenate=True,
            dtype=pack_dtype,
            meta=np.empty((0,) * data.ndim, dtype=pack_dtype),
        )

    coords = {d: si.coords[d] for d in nav_dims if d in si.coords}
    variables = {}
    start = 0
    for out, w in zip(outputs, widths, strict=True):
        start += w
        dtype = _output_dtype(out, pack_dtype)
        extract = _Extract(start - w, w, out.axis is None, dtype.str)
        if workers:
            piece = results[out.name]
        elif out.axis is None:
            # each output straight from the packed blocks (a view where the dtype matches: the
            # only copy is the final gather; dask's slicing would copy every block once more);
            # a map as a small copy per block, so that it never holds its packed block
            # (map_blocks with drop_axis would first copy the whole packed block)
            piece = packed.map_blocks(
                _MapColumn(extract),
                dtype=dtype,
                chunks=packed.chunks[:-1] + ((1,),),
                meta=np.empty((0,) * packed.ndim, dtype),
            )[..., 0]
        else:
            piece = packed.map_blocks(
                extract, dtype=dtype, chunks=packed.chunks[:-1] + ((w,),),
                meta=np.empty((0,) * packed.ndim, dtype),
            )  # fmt: skip
        if out.axis is None:
            dims = nav_dims
            var_coords = {}
        else:
            dims = nav_dims + (out.axis,)
            if out.coord is None:
                var_coords = {out.axis: si["energy"].values}
            else:
                var_coords = {out.axis: np.asarray(out.coord)}
        var_attrs = {"units": out.units, "long_name": out.long_name or out.name, **out.attrs}
        variables[out.name] = xr.DataArray(piece, dims=dims, coords=var_coords, attrs=var_attrs)
        if not workers:
            link = PackedSource(packed, extract, piece.name)
            variables[out.name].encoding[PACKED_ENCODING] = link
    ds_attrs = {k: v for k, v in si.attrs.items() if k != "units"}
    ds_attrs.update(attrs or {})
    ds = xr.Dataset(variables, coords=coords, attrs=ds_attrs)
    for out in outputs:
        if out.axis == "energy" and out.coord is None:
            ds["energy"].attrs.update(si["energy"].attrs)
    return ds


def eager_workers(data: Any, extras: Iterable[Any] = ()) -> int:
    """Threads the eager path runs an image on, or 0 where :func:`apply_kernel` stays lazy.

    Eager (results computed at once, each block's outputs written straight into preallocated
    NumPy result arrays: no dask graph, no per-block results concatenated and gathered again)
    where the image and every extra are held in memory (not dask arrays) and dask's scheduler
    is a local one: its threads (``num_workers``, default one per core) or ``"synchronous"``
    (one thread). Lazy (a dask graph, computed on ``.compute()`` or by the store writer) for a
    dask input -- a store, a file, anything given ``.chunk()`` -- or with a distributed Client
    or the ``"processes"`` scheduler in use.
    """
    import os
    import sys

    import dask

    for arr in (data, *extras):
        if isinstance(getattr(arr, "data", arr), da.Array):
            return 0
    scheduler = dask.config.get("scheduler", None)
    if scheduler in ("synchronous", "single-threaded", "sync"):
        return 1
    if scheduler not in (None, "threads", "threading"):
        return 0  # processes, a Client or a get function: the user's choice of where to run
    if "distributed" in sys.modules:
        try:
            from distributed import default_client

            default_client()
            return 0  # a Client is in use: its workers run the blocks (lazy)
        except (ImportError, ValueError):
            pass
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


#: Results of the eager path at least this large (bytes) are mapped with their pages populated
#: in one system call (Linux) instead of faulted in page by page as the blocks first write them.
#: Measured on this 2-core VM for a 134 MB cube filled in 128-spectrum tiles: np.empty + fill
#: 0.085-0.51 s (median 0.3 s: one page fault per 4 KiB, slow and erratic under load), populated
#: mapping + fill 0.12-0.17 s.
POPULATE_BYTES = 32 * 2**20


def _result_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised result array; a large one on Linux as an anonymous mapping whose pages
    are populated at once (MAP_POPULATE; freed with the array). Same values either way: every
    element is written by a block."""
    import mmap

    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if nbytes < POPULATE_BYTES or populate is None:
        return np.empty(shape, dtype=dtype)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except (OSError, ValueError):  # no such mapping here: plain memory
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _run_eager(
    block_fn: _BlockFunction,
    host: np.ndarray,
    nav_chunks: tuple[tuple[int, ...], ...],
    extras: Sequence[np.ndarray],
    widths: Sequence[int],
    workers: int,
) -> dict[str, np.ndarray]:
    """Every pixel block of ``host`` through ``block_fn`` on ``workers`` threads, each block's
    outputs written straight into preallocated result arrays (the eager path of
    :func:`apply_kernel`; the blocks and tiles are the lazy path's, so the numbers are the same
    bit for bit).

    The first failing block's exception is raised once every running block has stopped (they end
    at their next tile; blocks not started are not run), and so is Ctrl-C: nothing writes into
    the results after this returns or raises.
    """
    import itertools

    nav_shape = tuple(host.shape[:-1])
    n_pix = int(np.prod(nav_shape, dtype=np.int64))
    results: dict[str, np.ndarray] = {}
    flat: list[np.ndarray] = []
    for out, w in zip(block_fn.outputs, widths, strict=True):
        shape = nav_shape if out.axis is None else (*nav_shape, w)
        arr = _result_array(shape, _output_dtype(out, block_fn.pack_dtype))
        results[out.name] = arr
        flat.append(arr.reshape(n_pix, w))  # C-ordered: a view
    starts = [np.cumsum((0, *c)) for c in nav_chunks]
    blocks = []
    for idx in itertools.product(*(range(len(c)) for c in nav_chunks)):
        sl = tuple(slice(int(st[i]), int(st[i + 1])) for st, i in zip(starts, idx, strict=True))
        # a block is a contiguous slab (_slab_chunks): its pixels are one run of the flat order
        first = int(np.ravel_multi_index([s.start for s in sl], nav_shape)) if sl else 0
        size = int(np.prod([s.stop - s.start for s in sl], dtype=np.int64))
        blocks.append((sl, slice(first, first + size)))
    stop = threading.Event()

    def run(sl: tuple[slice, ...], rows: slice) -> None:
        if stop.is_set():
            return
        dest = [f[rows] for f in flat]
        block_fn(host[sl], *(arr[sl] for arr in extras), dest=dest, stop=stop)

    if workers <= 1 or len(blocks) <= 1:
        # BLAS at one thread here too: a block's matrix products are small (a few hundred
        # rows), where OpenBLAS's own threads cost more than they give (measured: the analytic
        # KK's two products per block, 7-8 ms with 2 BLAS threads, ~1 ms with one)
        with one_blas_thread():
            for sl, rows in blocks:
                run(sl, rows)
        return results
    # Our own threads, not a ThreadPoolExecutor: each is listed before it starts, so Ctrl-C at any
    # moment (even while one is starting) still waits for every thread that may be running.
    queue = iter(blocks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not stop.is_set():
            with lock:
                item = next(queue, None)
            if item is None:
                return
            try:
                run(*item)
            except BaseException as exc:  # the first failure is raised by the caller
                with lock:
                    errors.append(exc)
                stop.set()  # running blocks end at their next tile; the rest never start
                return

    threads = [
        threading.Thread(target=worker, name=f"eelsgpu-eager-{i}", daemon=True)
        for i in range(min(workers, len(blocks)))
    ]
    # BLAS held to one thread while a block runs per core (eelsgpu.engine.blas), set from this
    # (the calling) thread -- OpenBLAS ignores a limit set from one of the block threads -- and
    # given back only once every block has stopped (never changed under a running product)
    with one_blas_thread():
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C
            stop.set()
            raise
        finally:
            for t in threads:
                if t.ident is not None:
                    t.join()  # returns (or raises) only once every block has stopped
    if errors:
        raise errors[0]
    return results


@dataclass(frozen=True)
class _BlockFunction:
    """Picklable per-block callable (dask.distributed ships it to workers)."""

    kernel: Kernel
    energy: np.ndarray
    outputs: tuple[Output, ...]
    extra_names: tuple[str, ...]
    extra_is_map: tuple[bool, ...]
    device: str
    pack_dtype: np.dtype
    params: Mapping[str, Any]
    tile_pixels: int | None = None
    peak_bytes: int = 0

    def __call__(
        self,
        block: np.ndarray,
        *extras: np.ndarray,
        dest: Sequence[np.ndarray] | None = None,
        stop: threading.Event | None = None,
    ) -> np.ndarray | None:
        return _run_block(
            block,
            *extras,
            kernel=self.kernel,
            energy=self.energy,
            outputs=self.outputs,
            extra_names=self.extra_names,
            extra_is_map=self.extra_is_map,
            device=self.device,
            pack_dtype=self.pack_dtype,
            params=self.params,
            tile_pixels=self.tile_pixels,
            peak_bytes=self.peak_bytes,
            dest=dest,
            stop=stop,
        )
