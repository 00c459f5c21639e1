"""The engine: runs a per-spectrum kernel over the pixel blocks of a spectrum image.

The split follows LiberTEM's user-defined functions: a *kernel* is a pure function, arrays in and
arrays out, that sees one block of spectra as a 2-D array ``(n_pixels, n_energy)`` in whatever
array namespace the block lives in (NumPy, CuPy, array-api-strict); the *engine* decides the blocks,
moves them to the device, calls the kernel and turns what it returns into labelled, lazy xarray
variables. Kernels never see dask, files or xarray.

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
>>> def total(block, energy_eV):
...     return {"total": block.sum(axis=-1)}
>>> si = spectrum_image(np.ones((2, 3, 10)), np.arange(10.0))
>>> decl = BlockKernel(total, outputs=(Output("total", units="counts"),))
>>> ds = apply_kernel(decl, si, device="cpu")
>>> ds["total"].values.tolist()
[[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import backend, gpu
from .kernels.declare import BlockKernel, Kernel, Output

__all__ = ["BlockKernel", "Kernel", "Output", "apply_kernel"]

#: Bytes of input per CPU tile inside a block (the kernel is called once per tile): 1 MiB is 128
#: spectra of 2048 float32 channels, whose rfft and its log (2 MiB each) stay in L2/L3. Measured
#: on this 2-core EPYC with an rfft -> log -> irfft stand-in over 64 x 64 x 2048 blocks: whole
#: blocks 47 000 spectra/s on one core, 54 000 on two threads; tiles of 64-256 spectra 72 000-91 000
#: on one core and 130 000-172 000 on two (the kernel's intermediates no longer spill to DRAM).
TILE_BYTES = 2**20


def _float_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


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
) -> np.ndarray:
    nav_shape = block.shape[:-1]
    n_e = block.shape[-1]
    flat = block.reshape(-1, n_e)
    n_pix = flat.shape[0]
    mover = gpu.mover_for(device)
    dev_energy = backend.to_device(energy, device)
    flat_extras = [
        arr.reshape(-1) if is_map else arr.reshape(-1, arr.shape[-1])
        for arr, is_map in zip(extras, extra_is_map, strict=True)
    ]
    widths = [out.width(n_e) for out in outputs]
    packed = np.empty((n_pix, int(sum(widths))), dtype=pack_dtype)
    # On a CPU the block is cut into tiles of a few MB so that the kernel's intermediates (an rfft
    # of the tile, its log...) stay in cache; on a GPU the block goes over in one copy and the
    # kernel sees it whole (the device wants large batches).
    tile = None if device == "gpu" else tile_pixels
    for rows in gpu.iter_tiles(n_pix, tile):

        def call(dev_block: Any, rows: slice = rows) -> Mapping[str, Any]:
            kwargs = dict(params)
            for name, arr in zip(extra_names, flat_extras, strict=True):
                kwargs[name] = backend.to_device(arr[rows], device)
            return kernel(dev_block, dev_energy, **kwargs)

        result = mover.run(flat[rows], call, dtype=pack_dtype)
        start = 0
        n_rows = rows.stop - rows.start
        for out, w in zip(outputs, widths, strict=True):
            if out.name not in result:
                raise KeyError(
                    f"kernel {getattr(kernel, '__name__', kernel)} did not return {out.name!r}"
                )
            host = backend.to_host(result[out.name])
            packed[rows, start : start + w] = host.reshape(n_rows, w)
            start += w
    return packed.reshape(*nav_shape, packed.shape[-1])


def default_tile_pixels(n_energy: int, itemsize: int = 4) -> int:
    """Spectra per CPU tile: about :data:`TILE_BYTES` of input (see benchmarks/bench_engine.py)."""
    return max(16, TILE_BYTES // max(1, n_energy * itemsize))


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
        return piece > 0.5 if dtype == np.bool_ else piece.astype(dtype)


# Outputs of apply_kernel -> (packed array, extractor), so that run_to_store can make ONE write
# task per block that depends on the packed block directly (2 tasks a block instead of 2 + 2 per
# output). Bounded: only graphs built recently are looked up.
_PACKED: dict[str, tuple[da.Array, _Extract]] = {}
_PACKED_MAX = 512


def _remember_packed(piece: da.Array, packed: da.Array, extract: _Extract) -> None:
    _PACKED[piece.name] = (packed, extract)
    while len(_PACKED) > _PACKED_MAX:
        _PACKED.pop(next(iter(_PACKED)))


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
    """Map a declared kernel over the pixel blocks of ``si`` and return its outputs, lazily.

    Parameters
    ----------
    decl : BlockKernel
        The kernel, its outputs and its preferred tile size (:mod:`eelsgpu.kernels.declare`).
    si : xarray.DataArray
        The spectrum image (dims ``(..., "energy")``), dask-backed or not.
    device : {"auto", "cpu", "gpu"}
        Where the kernel runs (see :mod:`eelsgpu.backend`).
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
        Lazy; one variable per output of ``decl``, with the input's navigation coordinates.
    """
    if not isinstance(decl, BlockKernel):
        raise TypeError(f"apply_kernel takes a BlockKernel, not {type(decl).__name__}")
    kernel = decl.kernel
    outputs = decl.outputs_for(params)
    if tile_pixels is None:
        tile_pixels = decl.tile_pixels
    if "energy" not in si.dims or si.dims[-1] != "energy":
        raise ValueError(f"the spectrum image must have 'energy' as its last dim, not {si.dims}")
    device = backend.resolve_device(device)
    data = si.data if isinstance(si.data, da.Array) else da.from_array(np.asarray(si.data))
    if len(data.chunks[-1]) > 1:
        data = data.rechunk({data.ndim - 1: -1})  # a kernel needs whole spectra
    nav_dims = si.dims[:-1]
    n_e = si.sizes["energy"]
    energy = np.asarray(si["energy"].values, dtype=np.float64)
    pack_dtype = _float_dtype(si.dtype)

    extra_names, extra_arrays, extra_is_map = [], [], []
    for name, value in (extras or {}).items():
        arr = value.data if isinstance(value, xr.DataArray) else value
        arr = arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr))
        is_map = tuple(arr.shape) == tuple(data.shape[:-1])
        if not is_map and tuple(arr.shape[:-1]) != tuple(data.shape[:-1]):
            raise ValueError(
                f"{name} has shape {arr.shape}; it must match the image's pixels {data.shape[:-1]}"
                f" (a map) or its whole shape {data.shape} (a cube)"
            )
        chunks = data.chunks[:-1] + (() if is_map else ((arr.shape[-1],),))
        extra_names.append(name)
        extra_arrays.append(arr.rechunk(chunks))
        extra_is_map.append(is_map)

    widths = [o.width(n_e) for o in outputs]
    total = int(sum(widths))
    host_params = {
        k: (backend.to_device(v, device) if isinstance(v, np.ndarray) else v)
        for k, v in params.items()
    }
    if tile_pixels is None:
        tile_pixels = default_tile_pixels(n_e, np.dtype(pack_dtype).itemsize)
    block_fn = _BlockFunction(
        kernel=kernel,
        energy=energy,
        outputs=tuple(outputs),
        extra_names=tuple(extra_names),
        extra_is_map=tuple(extra_is_map),
        device=device,
        pack_dtype=pack_dtype,
        params=host_params,
        tile_pixels=int(tile_pixels) or None,
    )
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
        piece = packed[..., start : start + w]
        start += w
        if out.dtype == "float":
            dtype = pack_dtype
        else:
            dtype = np.dtype(out.dtype)
        if out.axis is None:
            piece = piece[..., 0]
            dims = nav_dims
            var_coords = {}
        else:
            dims = nav_dims + (out.axis,)
            if out.coord is None:
                var_coords = {out.axis: si["energy"].values}
            else:
                var_coords = {out.axis: np.asarray(out.coord)}
        if dtype == np.bool_:
            piece = piece > 0.5
        else:
            piece = piece.astype(dtype)
        _remember_packed(piece, packed, _Extract(start - w, w, out.axis is None, dtype.str))
        var_attrs = {"units": out.units, "long_name": out.long_name or out.name, **out.attrs}
        variables[out.name] = xr.DataArray(piece, dims=dims, coords=var_coords, attrs=var_attrs)
    ds_attrs = {k: v for k, v in si.attrs.items() if k != "units"}
    ds_attrs.update(attrs or {})
    ds = xr.Dataset(variables, coords=coords, attrs=ds_attrs)
    for out in outputs:
        if out.axis == "energy" and out.coord is None:
            ds["energy"].attrs.update(si["energy"].attrs)
    return ds


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

    def __call__(self, block: np.ndarray, *extras: np.ndarray) -> np.ndarray:
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
        )


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
def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (NumPy scalars and arrays, paths, tuples...)."""
    import os

    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, xr.DataArray):
        return f"<DataArray {value.name} {dict(value.sizes)}>"
    return repr(value)


def run_attrs(method: str, parameters: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    """The attributes that say how a result was made: eelsgpu's version, the method, every argument."""
    from . import __version__

    return {
        "eelsgpu_version": __version__,
        "eelsgpu_method": method,
        "eelsgpu_parameters": json_safe(dict(parameters)),
        **{f"eelsgpu_{k}": json_safe(v) for k, v in more.items()},
    }


@dataclass
class RunResult:
    """What :func:`run_to_store` did."""

    path: Any
    status: str  # "written", "resumed" or "skipped"
    blocks_total: int = 0
    blocks_computed: int = 0
    spectra: int = 0
    seconds: float = 0.0


def _state_paths(target: Any) -> tuple[Any, Any]:
    from pathlib import Path

    target = Path(target)
    return (
        target.with_name(f".{target.name}.partial"),
        target.with_name(f".{target.name}.eelsgpu-run"),
    )


def is_complete(path: Any) -> bool:
    """True when ``path`` is a store that :func:`run_to_store` (or io.write_store) finished."""
    import json
    from pathlib import Path

    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("eelsgpu_complete", True) is not False


def _set_group_attrs(store: Any, updates: Mapping[str, Any]) -> None:
    """Update the group attributes of a zarr v3 store atomically (write aside, then rename)."""
    import json
    import os
    from pathlib import Path

    meta = Path(store) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc.setdefault("attributes", {}).update(json_safe(dict(updates)))
    tmp = meta.with_name(f".zarr.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, meta)


_ZARR_ARRAYS: dict[tuple[str, str, str], Any] = {}


def _zarr_array(store: str, name: str, token: str) -> Any:
    key = (store, name, token)
    arr = _ZARR_ARRAYS.get(key)
    if arr is None:
        import zarr

        # every chunk written (see io.write_store: the empty-chunk check costs a full pass)
        arr = _ZARR_ARRAYS[key] = zarr.open_array(
            store, path=name, mode="r+", config={"write_empty_chunks": True}
        )
    return arr


def _write_block(
    store: str,
    token: str,
    marker: str,
    names: Sequence[str],
    regions: Sequence[tuple[slice, ...]],
    extracts: Sequence[_Extract | None],
    source_of: Sequence[int],
    n_spectra: int,
    *sources: Any,
) -> int:
    """Write one block's results into their regions of the store, then record the block as done.

    ``sources`` are the block's computed arrays; variable ``i`` is ``extracts[i](sources[j])``
    (or ``sources[j]`` itself) with ``j = source_of[i]``. The marker is created only after every
    chunk of the block is on disk (zarr writes each chunk file atomically), so a block whose
    marker exists is complete, and one without is rewritten whole on the next run, with the same
    bytes.
    """
    import os

    for name, region, extract, j in zip(names, regions, extracts, source_of, strict=True):
        value = backend.to_host(sources[j])
        if extract is not None:
            value = extract(value)
        _zarr_array(store, name, token)[region] = value
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(n_spectra))
    os.replace(tmp, marker)
    return n_spectra


def _fingerprint(ds: xr.Dataset) -> str:
    import hashlib
    import json

    desc = {
        "vars": {
            str(k): [list(v.dims), list(v.shape), str(v.dtype), json_safe(v.chunks)]
            for k, v in ds.data_vars.items()
        },
        "coords": {
            str(k): hashlib.sha256(np.ascontiguousarray(v.values).tobytes()).hexdigest()
            for k, v in ds.coords.items()
        },
        "attrs": json_safe(dict(ds.attrs)),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _regular(ds: xr.Dataset, nav_dims: Sequence[str]) -> xr.Dataset:
    """Chunks regular along the pixel dims (zarr's grid) and whole along every other dim."""
    out = {}
    for name, var in ds.data_vars.items():
        if not isinstance(var.data, da.Array):
            continue
        spec = {}
        for d, c in zip(var.dims, var.data.chunks, strict=True):
            if d in nav_dims:
                spec[d] = c[0]
            else:
                spec[d] = -1
        out[name] = var.chunk(spec)
    return ds.assign(out)


def run_to_store(
    ds: xr.Dataset,
    path: Any,
    *,
    overwrite: bool = False,
    resume: bool = True,
    codec: str = "lz4",
    attrs: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    quiet: bool = True,
    description: str | None = None,
) -> RunResult:
    """Compute a lazy result Dataset block by block straight into a zarr store, resumably.

    The whole run is one dask graph from the input store to the output store: each task reads one
    pixel block, runs the pipeline's kernels on it, writes every result variable's region of that
    block and records the block as done. Nothing else is held, so peak memory is set by the block
    size and the number of workers, not by the size of the image.

    The store is built under a hidden name beside ``path`` (``.NAME.partial``, with a run log
    ``.NAME.eelsgpu-run/`` of finished blocks) and renamed to ``path`` when every block is done. A
    run killed at any point and started again with the same arguments computes only the blocks
    not yet recorded and gives the same bytes as an uninterrupted run; a run with different
    arguments (another fingerprint) starts afresh.

    Parameters
    ----------
    ds : xarray.Dataset
        Lazy result (e.g. from :func:`apply_kernel`); its dask variables share their pixel chunks.
    path : path
        The store to create.
    overwrite : bool
        Replace an existing finished store (it stays in place until the new one is complete).
    resume : bool
        Continue an interrupted run of the same job (default); False starts afresh.
    codec : {"lz4", "zstd"}
        Compression profile (:func:`eelsgpu.io.codecs`).
    attrs : mapping, optional
        More attributes for the store (e.g. :func:`run_attrs`); the dataset's own are kept.
    scheduler : str or distributed.Client, optional
        ``"threads"``, ``"processes"``, ``"synchronous"`` or a Client; default: dask's current one.
    quiet : bool
        No progress bar.

    Returns
    -------
    RunResult
    """
    import os
    import shutil
    import time
    from pathlib import Path

    from .errors import InputError
    from .io import codecs

    t0 = time.perf_counter()
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists (pass overwrite=True or --overwrite)")
    partial, state = _state_paths(target)
    if attrs:
        ds = ds.assign_attrs({**ds.attrs, **attrs})
    ds = ds.assign_attrs(json_safe(dict(ds.attrs)))
    lazy_vars = [k for k, v in ds.data_vars.items() if isinstance(v.data, da.Array)]
    if not lazy_vars:
        ds = ds.chunk()
        lazy_vars = list(ds.data_vars)
    nav_dims = [d for d in ds[lazy_vars[0]].dims if d in ("y", "x")] or list(
        ds[lazy_vars[0]].dims[:1]
    )
    # Per-pixel variables (pixel dims first) are written block by block; anything else that is
    # lazy (a mean spectrum, a scalar) is small: computed now and written with the metadata.
    small = [k for k in lazy_vars if tuple(ds[k].dims[: len(nav_dims)]) != tuple(nav_dims)]
    if small:
        ds = ds.assign({k: ds[k].compute(scheduler=scheduler) for k in small})
        lazy_vars = [k for k in lazy_vars if k not in small]
    if not lazy_vars:
        raise ValueError("run_to_store needs at least one per-pixel variable (dims y, x, ...)")
    ds = _regular(ds, nav_dims)
    token = _fingerprint(ds)

    # ------------------------------------------------------------------ start or resume
    run_file = state / "run.json"
    fresh = True
    if resume and partial.is_dir() and run_file.is_file():
        import json

        try:
            fresh = json.loads(run_file.read_text()).get("fingerprint") != token
        except ValueError:
            fresh = True
    if fresh:
        import json

        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        (state / "done").mkdir(parents=True)
        enc: dict[str, Any] = {}
        for name in ds.data_vars:
            enc[name] = dict(codecs(codec))
            if name in lazy_vars:
                enc[name]["chunks"] = tuple(c[0] for c in ds[name].data.chunks)
        init = ds.assign_attrs(eelsgpu_complete=False, eelsgpu_fingerprint=token)
        init.to_zarr(
            partial,
            mode="w",
            compute=False,
            encoding=enc,
            consolidated=False,
            zarr_format=3,
            write_empty_chunks=True,
        )
        tmp = state / "run.json.tmp"
        tmp.write_text(json.dumps({"fingerprint": token, "target": str(target)}))
        os.replace(tmp, run_file)  # written last: a store without it is started afresh

    # ------------------------------------------------------------------ one task per block
    import dask

    # Each variable comes from a "source" array: the packed per-block array of apply_kernel when
    # the variable is one of its outputs as it was made (the write task then cuts it out itself),
    # else the variable's own dask array.
    sources: list[da.Array] = []
    source_of: list[int] = []
    extracts: list[_Extract | None] = []
    for k in lazy_vars:
        arr = ds[k].data
        packed = _PACKED.get(arr.name)
        if packed is not None and packed[0].chunks[:-1] == arr.chunks[: packed[0].ndim - 1]:
            src, extract = packed
        else:
            src, extract = arr, None
        names_ = [a.name for a in sources]
        if src.name not in names_:
            sources.append(src)
            names_.append(src.name)
        source_of.append(names_.index(src.name))
        extracts.append(extract)
    sources = list(dask.optimize(*sources))
    delayed = [a.to_delayed(optimize_graph=False) for a in sources]
    first = ds[lazy_vars[0]]
    grid = [len(first.data.chunks[first.dims.index(d)]) for d in nav_dims]
    nav_chunks = {d: first.data.chunks[first.dims.index(d)] for d in nav_dims}
    starts = {d: np.concatenate([[0], np.cumsum(c)]) for d, c in nav_chunks.items()}
    done_dir = state / "done"
    done = set(os.listdir(done_dir)) if done_dir.is_dir() else set()
    prefix = f"eelsgpu-write-{token}"
    tasks = []
    n_blocks = int(np.prod(grid))
    spectra_per_block = []
    for b in np.ndindex(*grid):
        label = "_".join(map(str, b))
        if label in done:
            continue
        region = {
            d: slice(int(starts[d][i]), int(starts[d][i + 1]))
            for d, i in zip(nav_dims, b, strict=True)
        }
        n_spec = int(np.prod([s.stop - s.start for s in region.values()]))
        regions = [tuple(region.get(d, slice(None)) for d in ds[k].dims) for k in lazy_vars]
        values = []
        for dl in delayed:
            # sources have the pixel dims first (apply_kernel's packed array and the maps/cubes
            # it makes), one chunk along every other dim
            values.append(dl[tuple(b) + (0,) * (dl.ndim - len(b))])
        tasks.append(
            dask.delayed(_write_block, pure=True)(
                str(partial),
                token,
                str(done_dir / label),
                lazy_vars,
                regions,
                extracts,
                source_of,
                n_spec,
                *values,
                dask_key_name=f"{prefix}-{label}",
            )
        )
        spectra_per_block.append(n_spec)

    total_spectra = int(np.prod([ds.sizes[d] for d in nav_dims]))
    _compute_blocks(
        tasks,
        prefix,
        scheduler=scheduler,
        quiet=quiet,
        description=description or target.name,
        n_blocks=n_blocks,
        n_done=n_blocks - len(tasks),
        total_spectra=total_spectra,
        done_spectra=total_spectra - int(sum(spectra_per_block)),
    )

    # ------------------------------------------------------------------ finish
    missing = n_blocks - len(os.listdir(done_dir))
    if missing:
        raise RuntimeError(f"{target}: {missing} blocks were not written; run again to finish")
    _set_group_attrs(partial, {"eelsgpu_complete": True})
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(partial, target)
    shutil.rmtree(state, ignore_errors=True)
    return RunResult(
        path=target,
        status="written" if fresh or len(tasks) == n_blocks else "resumed",
        blocks_total=n_blocks,
        blocks_computed=len(tasks),
        spectra=int(sum(spectra_per_block)),
        seconds=time.perf_counter() - t0,
    )


def _compute_blocks(
    tasks: Sequence[Any],
    prefix: str,
    *,
    scheduler: Any,
    quiet: bool,
    description: str,
    n_blocks: int,
    n_done: int,
    total_spectra: int,
    done_spectra: int,
) -> None:
    """Run the block tasks with a progress bar (blocks done, spectra/s, time left)."""
    import dask

    if not tasks:
        return
    client = _distributed_client(scheduler)
    bar = None
    if not quiet:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_spectra,
            initial=done_spectra,
            desc=description,
            unit="spectra",
            unit_scale=True,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        bar.set_postfix_str(f"{n_done}/{n_blocks} blocks")
    state = {"blocks": n_done}

    def tick(n_spectra: int) -> None:
        state["blocks"] += 1
        if bar is not None:
            bar.set_postfix_str(f"{state['blocks']}/{n_blocks} blocks", refresh=False)
            bar.update(n_spectra)

    try:
        if client is not None:
            from distributed import as_completed

            futures = client.compute(list(tasks))
            for fut in as_completed(futures):
                tick(fut.result())
        else:
            from dask.callbacks import Callback

            class _Tick(Callback):
                def _posttask(self, key, result, dsk, state_, worker_id):  # noqa: ANN001
                    name = key if isinstance(key, str) else str(key[0] if key else "")
                    if name.startswith(prefix):
                        tick(int(result))

            with _Tick():
                dask.compute(*tasks, scheduler=scheduler)
    finally:
        if bar is not None:
            bar.close()


def _distributed_client(scheduler: Any) -> Any:
    """The distributed Client to run on, if any (given, or the current default one)."""
    if scheduler is not None and not isinstance(scheduler, str):
        return scheduler  # a Client
    if scheduler is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None
    return None
