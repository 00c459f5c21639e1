"""The engine: runs a per-spectrum kernel over the pixel blocks of a spectrum image.

The split follows LiberTEM's user-defined functions: a *kernel* is a pure function, arrays in and
arrays out, that sees one block of spectra as a 2-D array ``(n_pixels, n_energy)`` in whatever
array namespace the block lives in (NumPy, CuPy, array-api-strict); the *engine* decides the blocks,
moves them to the device, calls the kernel and turns what it returns into labelled, lazy xarray
variables. Kernels never see dask, files or xarray.

A kernel has the signature::

    kernel(block, energy_eV, **params) -> dict[str, array]

where ``block`` is ``(n_pixels, n_energy)``, ``energy_eV`` is the float64 energy coordinate on the
same device, and each returned array is ``(n_pixels,)`` for a map or ``(n_pixels, m)`` for a
per-pixel spectrum. The outputs a kernel makes are declared with :class:`Output`, so the engine
knows their shapes before anything is computed, and every block is computed once even when it
feeds several outputs (they are packed into one array per block and sliced apart).

Examples
--------
>>> import numpy as np
>>> from eelsgpu.model import spectrum_image
>>> def total(block, energy_eV):
...     return {"total": block.sum(axis=-1)}
>>> si = spectrum_image(np.ones((2, 3, 10)), np.arange(10.0))
>>> ds = apply_kernel(total, si, [Output("total", units="counts")], device="cpu")
>>> ds["total"].values.tolist()
[[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import backend

__all__ = ["Output", "apply_kernel", "Kernel"]

Kernel = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class Output:
    """One output of a kernel.

    Parameters
    ----------
    name : str
        Variable name in the result Dataset.
    units : str
        Physical unit (goes into the ``units`` attribute).
    long_name : str
        Human-readable name for plots.
    dtype : str
        ``"float"`` (the block's float dtype), ``"float32"``, ``"float64"``, ``"bool"`` or
        ``"int32"``.
    axis : str or None
        ``None`` for a map (one value per pixel); else the dim of a per-pixel spectrum, e.g.
        ``"energy"`` (same length and coordinate as the input's energy axis).
    coord : array, optional
        The coordinate values along ``axis`` when it is not the input's energy axis.
    attrs : dict
        Extra attributes.
    """

    name: str
    units: str = ""
    long_name: str = ""
    dtype: str = "float"
    axis: str | None = None
    coord: Any = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def width(self, n_energy: int) -> int:
        if self.axis is None:
            return 1
        if self.coord is not None:
            return len(self.coord)
        return n_energy


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
) -> np.ndarray:
    nav_shape = block.shape[:-1]
    n_e = block.shape[-1]
    flat = block.reshape(-1, n_e)
    dev_block = backend.to_device(flat.astype(pack_dtype, copy=False), device)
    dev_energy = backend.to_device(energy, device)
    kwargs = dict(params)
    for name, arr, is_map in zip(extra_names, extras, extra_is_map, strict=True):
        a = arr.reshape(-1) if is_map else arr.reshape(-1, arr.shape[-1])
        kwargs[name] = backend.to_device(a, device)
    result = kernel(dev_block, dev_energy, **kwargs)
    n_pix = flat.shape[0]
    cols = []
    for out in outputs:
        if out.name not in result:
            raise KeyError(f"kernel {getattr(kernel, '__name__', kernel)} did not return {out.name!r}")
        host = backend.to_host(result[out.name]).astype(pack_dtype, copy=False)
        cols.append(host.reshape(n_pix, out.width(n_e)))
    packed = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    return packed.reshape(*nav_shape, packed.shape[-1])


def apply_kernel(
    kernel: Kernel,
    si: xr.DataArray,
    outputs: Sequence[Output],
    *,
    device: str = "auto",
    extras: Mapping[str, xr.DataArray | np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    **params: Any,
) -> xr.Dataset:
    """Map ``kernel`` over the pixel blocks of ``si`` and return its outputs as a lazy Dataset.

    Parameters
    ----------
    kernel : callable
        ``kernel(block, energy_eV, **extras, **params) -> dict`` (see the module docstring).
    si : xarray.DataArray
        The spectrum image (dims ``(..., "energy")``), dask-backed or not.
    outputs : sequence of Output
        What the kernel returns.
    device : {"auto", "cpu", "gpu"}
        Where the kernel runs (see :mod:`eelsgpu.backend`).
    extras : mapping, optional
        Per-pixel arrays the kernel needs beside the block, each either a map with the image's
        navigation shape or a cube with the image's shape (a per-pixel ZLP, a thickness map).
        They are chunked like ``si`` and passed to the kernel flattened like the block.
    attrs : mapping, optional
        Attributes of the result Dataset (the input's are added underneath).
    **params
        Passed to the kernel unchanged (scalars, or small NumPy arrays moved to the device).

    Returns
    -------
    xarray.Dataset
        Lazy; one variable per :class:`Output`, with the input's navigation coordinates.
    """
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
        k: (backend.to_device(v, device) if isinstance(v, np.ndarray) else v) for k, v in params.items()
    }
    block_fn = _BlockFunction(
        kernel=kernel,
        energy=energy,
        outputs=tuple(outputs),
        extra_names=tuple(extra_names),
        extra_is_map=tuple(extra_is_map),
        device=device,
        pack_dtype=pack_dtype,
        params=host_params,
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
        )
