"""The data model: a spectrum image is a lazy, chunked ``xarray.DataArray``.

* dims ``("y", "x", "energy")`` for a spectrum image, ``("x", "energy")`` for a line scan and
  ``("energy",)`` for a single spectrum; float32 by default;
* backed by a dask array whose chunks hold the whole energy axis (pixel blocks of 8 to 64 MiB);
* coordinates: ``energy`` in eV (float64), ``y`` and ``x`` in nm when the file says so, else in
  pixels (``units`` attribute on each coordinate);
* attributes: ``beam_energy_keV``, ``collection_angle_mrad``, ``convergence_angle_mrad``,
  ``dispersion_eV`` and ``source`` (the file it came from). A missing one is absent, never guessed:
  every function that needs one takes it as an argument too (see :func:`require_param`).

Examples
--------
>>> import numpy as np
>>> si = spectrum_image(np.ones((4, 5, 100)), energy_eV=np.arange(100) * 0.1 - 2.0,
...                     beam_energy_keV=200.0)
>>> si.dims, si.dtype, si.attrs["dispersion_eV"]
(('y', 'x', 'energy'), dtype('float32'), 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import EnergyAxisError, InputError, MissingParameterError

__all__ = [
    "ATTRS",
    "DIMS",
    "energy_axis",
    "pixel_chunks",
    "require_param",
    "spectrum_image",
]

#: The calibration attributes a spectrum image may carry, with their meaning and unit.
ATTRS: dict[str, str] = {
    "beam_energy_keV": "incident beam energy E0 (keV)",
    "collection_angle_mrad": "spectrometer collection semi-angle beta (mrad)",
    "convergence_angle_mrad": "probe convergence semi-angle alpha (mrad)",
    "dispersion_eV": "energy per channel (eV); absent for a non-uniform axis",
    "source": "the file the data came from",
}

#: Dims by number of array dimensions.
DIMS: dict[int, tuple[str, ...]] = {1: ("energy",), 2: ("x", "energy"), 3: ("y", "x", "energy")}

#: Target size of one storage / dask chunk (the design asks for 8 to 64 MiB).
CHUNK_BYTES = 32 * 2**20

_CLI_FLAGS = {
    "beam_energy_keV": "--beam-energy",
    "collection_angle_mrad": "--collection-angle",
    "convergence_angle_mrad": "--convergence-angle",
}


def pixel_chunks(
    shape: Sequence[int], itemsize: int = 4, target_bytes: int = CHUNK_BYTES
) -> tuple[int, ...]:
    """Chunk shape of square-ish pixel blocks of about ``target_bytes``, energy never split.

    >>> pixel_chunks((1024, 1024, 2048))
    (64, 64, 2048)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return shape
    spectrum_bytes = shape[-1] * itemsize
    pixels = max(1, target_bytes // spectrum_bytes)
    nav = shape[:-1]
    if len(nav) == 1:
        return (min(nav[0], pixels), shape[-1])
    side = max(1, int(math.isqrt(pixels)))
    cy = min(nav[0], side)
    cx = min(nav[1], max(1, pixels // cy))
    return (cy, cx, shape[-1])


def energy_axis(
    energy_eV: Any, *, require_uniform: bool = True, source: str | None = None
) -> tuple[float, float]:
    """Check an energy coordinate and return ``(offset_eV, dispersion_eV)``.

    The FFT-based paths (Fourier-log, Kramers-Kronig) need a uniform, increasing axis; a
    grating spectrometer's non-uniform axis (SXES) passes with ``require_uniform=False``, and the
    returned dispersion is then the mean channel width.

    Raises
    ------
    EnergyAxisError
        Fewer than 2 channels, non-finite values, a decreasing axis, or (when required) one that
        is not uniform to 1e-6 of a channel... naming ``source`` where given.
    """
    where = f" in {source}" if source else ""
    e = np.asarray(energy_eV, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise EnergyAxisError(f"the energy axis{where} needs at least 2 channels, it has {e.size}")
    if not np.all(np.isfinite(e)):
        raise EnergyAxisError(f"the energy axis{where} has NaN or infinite values")
    step = np.diff(e)
    if np.any(step <= 0):
        if np.all(step < 0):
            raise EnergyAxisError(
                f"the energy axis{where} runs the wrong way (decreasing from {e[0]:g} to "
                f"{e[-1]:g} eV); reverse the data along energy (e.g. si.isel(energy=slice(None, "
                "None, -1))) before analysis"
            )
        raise EnergyAxisError(f"the energy axis{where} is not monotonic")
    mean = float((e[-1] - e[0]) / (e.size - 1))
    if require_uniform and np.max(np.abs(step - mean)) > 1e-6 * abs(mean) + 1e-9:
        raise EnergyAxisError(
            f"the energy axis{where} is not uniform (channel widths from {step.min():.6g} to "
            f"{step.max():.6g} eV); the FFT-based analyses need a uniform axis: resample it first"
        )
    return float(e[0]), mean


def spectrum_image(
    data: Any,
    energy_eV: Any,
    *,
    y: Any = None,
    x: Any = None,
    spatial_unit: str | None = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    source: str | None = None,
    dtype: Any = np.float32,
    chunks: Any = None,
    require_uniform: bool = False,
    name: str = "signal",
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Wrap an array (NumPy or dask) as an eelsgpu spectrum image.

    Parameters
    ----------
    data : array, shape (..., n_energy)
        Counts; 1-D (spectrum), 2-D (line scan) or 3-D (spectrum image).
    energy_eV : array, shape (n_energy,)
        Energy coordinate in eV, increasing.
    y, x : array, optional
        Pixel positions; in ``spatial_unit`` (default ``"px"`` when not given, else ``"nm"``).
    beam_energy_keV, collection_angle_mrad, convergence_angle_mrad : float, optional
        Calibration; stored as attributes when given, absent otherwise.
    source : str, optional
        The file the data came from.
    dtype : dtype
        Storage dtype (float32 by default, as on disk).
    chunks : tuple or "auto", optional
        Dask chunks; the energy axis is always whole in a chunk.
    require_uniform : bool
        Refuse a non-uniform energy axis now rather than in an FFT-based step.

    Returns
    -------
    xarray.DataArray
        Lazy (dask-backed) with dims from :data:`DIMS`.
    """
    arr = data if isinstance(data, da.Array) else np.asarray(data)
    if arr.ndim not in DIMS:
        raise InputError(
            f"a spectrum image has 1 to 3 dimensions (y, x, energy), this array has {arr.ndim}"
            + (f" ({source})" if source else "")
        )
    energy = np.asarray(energy_eV, dtype=np.float64)
    if energy.shape != (arr.shape[-1],):
        raise EnergyAxisError(
            f"energy axis has {energy.size} values but the data have {arr.shape[-1]} channels"
            + (f" in {source}" if source else "")
        )
    offset, dispersion = energy_axis(energy, require_uniform=require_uniform, source=source)
    dims = DIMS[arr.ndim]
    if chunks is None or chunks == "auto":
        chunks = pixel_chunks(arr.shape, np.dtype(dtype).itemsize)
    else:
        chunks = tuple(chunks)[: arr.ndim - 1] + (arr.shape[-1],)
    lazy = arr if isinstance(arr, da.Array) else da.from_array(arr, chunks=chunks)
    lazy = lazy.astype(dtype).rechunk(chunks)

    unit = spatial_unit or ("nm" if (x is not None or y is not None) else "px")
    coords: dict[str, Any] = {
        "energy": ("energy", energy, {"units": "eV", "long_name": "energy loss"})
    }
    for dim, values in (("y", y), ("x", x)):
        if dim in dims:
            n = arr.shape[dims.index(dim)]
            v = np.arange(n, dtype=np.float64) if values is None else np.asarray(values, float)
            if v.shape != (n,):
                raise InputError(f"coordinate {dim} has {v.size} values for {n} pixels")
            coords[dim] = (dim, v, {"units": unit if values is not None else "px"})

    out_attrs: dict[str, Any] = dict(attrs or {})
    uniform = np.allclose(np.diff(energy), dispersion, rtol=1e-6, atol=1e-9)
    if uniform:
        out_attrs["dispersion_eV"] = round(dispersion, 12)
    for key, value in (
        ("beam_energy_keV", beam_energy_keV),
        ("collection_angle_mrad", collection_angle_mrad),
        ("convergence_angle_mrad", convergence_angle_mrad),
    ):
        if value is not None:
            out_attrs[key] = float(value)
    if source is not None:
        out_attrs["source"] = str(source)
    out_attrs.setdefault("units", "counts")
    return xr.DataArray(lazy, dims=dims, coords=coords, name=name, attrs=out_attrs)


def require_param(si: xr.DataArray | xr.Dataset | None, name: str, value: Any = None) -> float:
    """The value of a calibration parameter: the argument if given, else the file's attribute.

    A parameter that is neither is a :class:`MissingParameterError` naming it, the file, and how to
    give it; eelsgpu never falls back to a silent default.
    """
    if value is not None:
        return float(value)
    attrs = getattr(si, "attrs", {}) or {}
    if attrs.get(name) is not None:
        return float(attrs[name])
    source = attrs.get("source")
    where = f" and {source} does not say" if source else " and the data do not say"
    flag = _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
    raise MissingParameterError(
        f"{name} ({ATTRS.get(name, name)}) is needed{where}: pass {name}=... in Python or "
        f"{flag} on the command line"
    )
