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

from ._xp import UNIFORM_TOLERANCE as _UNIFORM_TOLERANCE
from .errors import EelsgpuError, EnergyAxisError, InputError, MissingParameterError

__all__ = [
    "ATTRS",
    "DIMS",
    "as_spectrum_image",
    "check_energy_scale",
    "energy_axis",
    "energy_scale_problem",
    "is_uniform",
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


#: An axis is uniform when every channel lies within this fraction of a channel of the straight
#: line through its ends (the same rule as the kernels' :func:`eelsgpu._xp.axis_step`).
UNIFORM_TOLERANCE = _UNIFORM_TOLERANCE


def is_uniform(energy_eV: Any, tolerance: float = UNIFORM_TOLERANCE) -> bool:
    """True when the channels of an increasing axis are evenly spaced, judged relative to the
    step: each within ``tolerance`` of a channel of the line through the first and last.

    >>> is_uniform(np.round(np.arange(2048) * 0.05 - 5.0 + 1e-7, 6))
    True
    >>> is_uniform(np.arange(100.0) ** 1.1)
    False
    """
    e = np.asarray(energy_eV, dtype=np.float64)
    if e.size < 3:
        return True
    step = (e[-1] - e[0]) / (e.size - 1)
    line = e[0] + step * np.arange(e.size)
    return bool(np.max(np.abs(e - line)) <= tolerance * abs(step))


def energy_axis(
    energy_eV: Any, *, require_uniform: bool = True, source: str | None = None
) -> tuple[float, float]:
    """Check an energy coordinate and return ``(offset_eV, dispersion_eV)``.

    The FFT-based paths (Fourier-log, Kramers-Kronig) need a uniform, increasing axis; a
    grating spectrometer's non-uniform axis (SXES) passes with ``require_uniform=False``, and the
    returned dispersion is then the mean channel width. Uniformity is judged relative to the
    channel width (:func:`is_uniform`), so an axis rounded in a text file counts as uniform.

    Raises
    ------
    EnergyAxisError
        Fewer than 2 channels, non-finite values, a decreasing axis, or (when required) one that
        is not uniform, naming ``source`` where given.

    Examples
    --------
    >>> offset, step = energy_axis([-1.0, -0.949999, -0.900001, -0.85])
    >>> offset, round(step, 9)
    (-1.0, 0.05)
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
                f"{e[-1]:g} eV); reverse the data along energy with si.sortby('energy') in "
                "Python (eelsgpu.open and the command line turn such files round themselves)"
            )
        raise EnergyAxisError(f"the energy axis{where} is not monotonic")
    mean = float((e[-1] - e[0]) / (e.size - 1))
    if require_uniform and not is_uniform(e):
        raise EnergyAxisError(
            f"the energy axis{where} is not uniform (channel widths from {step.min():.6g} to "
            f"{step.max():.6g} eV); the FFT-based analyses need a uniform axis: resample it first"
        )
    return float(e[0]), mean


# --------------------------------------------------------------------------- energy units
#: A zero-loss peak narrower than this (eV) is finer than any spectrometer resolves (the best
#: monochromated instruments reach about 4 meV): the axis is in keV, not eV.
ZLP_FWHM_MIN_EV = 0.002
#: A zero-loss peak wider than this (eV) is no ZLP (1-3 eV for a cold field emitter at worst):
#: the axis is in meV, not eV.
ZLP_FWHM_MAX_EV = 20.0


def _half_width(s: np.ndarray, e: np.ndarray, i: int) -> float | None:
    """FWHM (axis units) of the peak of ``s`` at channel ``i`` (linear interpolation)."""
    half = s[i] / 2.0
    lo = i
    while lo > 0 and s[lo] > half:
        lo -= 1
    hi = i
    while hi < s.size - 1 and s[hi] > half:
        hi += 1
    if s[lo] > half or s[hi] > half or hi - lo < 1:
        return None
    el = e[lo] + (half - s[lo]) / (s[lo + 1] - s[lo]) * (e[lo + 1] - e[lo])
    eh = e[hi - 1] + (s[hi - 1] - half) / (s[hi - 1] - s[hi]) * (e[hi] - e[hi - 1])
    return float(eh - el)


def energy_scale_problem(spectrum: Any, energy_eV: Any) -> str | None:
    """Why an energy axis labelled eV is in meV or keV, judged from the zero-loss peak's width
    and the first plasmon peak of a (mean) low-loss spectrum; None when it looks right or there is
    nothing to judge (no ZLP in the window: core loss, SXES).

    A ZLP is 0.004-3 eV wide and plasmons lie at 3-40 eV. Read on an axis in keV labelled eV,
    the ZLP is under 2 meV wide; on one in meV, over 20 eV.

    >>> e = np.arange(-5.0, 60.0, 0.05)
    >>> s = 1e4 * np.exp(-0.5 * (e / 0.2) ** 2) + 500 * np.exp(-0.5 * ((e - 15) / 2) ** 2)
    >>> print(energy_scale_problem(s, e))
    None
    >>> print(energy_scale_problem(s, e * 1000))  # doctest: +NORMALIZE_WHITESPACE
    the zero-loss peak is 472 "eV" wide and the first plasmon peak at 1.5e+04 "eV": the axis
    looks like meV labelled eV (a ZLP is 0.004-3 eV wide, plasmons lie at 3-40 eV); divide it
    by 1000
    """
    s = np.nan_to_num(np.asarray(spectrum, dtype=np.float64), nan=0.0)
    e = np.asarray(energy_eV, dtype=np.float64)
    if s.shape != e.shape or e.size < 8 or not (e[0] < 0 < e[-1]):
        return None
    extent = e[-1] - e[0]
    near = np.flatnonzero(np.abs(e) <= 0.05 * extent)
    if near.size < 3:
        return None
    i = int(near[np.argmax(s[near])])
    if not 0 < i < s.size - 1 or s[i] <= 3.0 * max(float(np.median(s)), 0.0) or s[i] <= 0:
        return None  # no clear peak near 0: nothing to judge
    w = _half_width(s, e, i)
    if w is None or w <= 0:
        return None
    # the plasmon: the highest point well past the ZLP's tail
    after = np.flatnonzero(e > e[i] + 4.0 * w)
    plasmon = None
    if after.size > 3:
        j = int(after[np.argmax(s[after])])
        if 0 < j < s.size - 1 and s[j] > 2.0 * np.median(s[after]):
            plasmon = float(e[j] - e[i])
    at = f' and the first plasmon peak at {plasmon:.4g} "eV"' if plasmon else ""
    if w < ZLP_FWHM_MIN_EV and (plasmon is None or plasmon < 0.2):
        return (
            f'the zero-loss peak is {w:.3g} "eV" wide{at}: the axis looks like keV labelled '
            "eV (a ZLP is 0.004-3 eV wide, plasmons lie at 3-40 eV); multiply it by 1000"
        )
    if w > ZLP_FWHM_MAX_EV and (plasmon is None or plasmon > 200.0):
        return (
            f'the zero-loss peak is {w:.3g} "eV" wide{at}: the axis looks like meV labelled '
            "eV (a ZLP is 0.004-3 eV wide, plasmons lie at 3-40 eV); divide it by 1000"
        )
    return None


def check_energy_scale(si: xr.DataArray, spectrum: Any = None) -> None:
    """Raise :class:`EnergyAxisError` (with the fix) when ``si``'s axis is in meV or keV though
    labelled eV (:func:`energy_scale_problem` on ``spectrum``, default: the mean spectrum of the
    first pixel block).
    """
    e = np.asarray(si["energy"].values, dtype=np.float64)
    if spectrum is None:
        data = si.data
        if isinstance(data, da.Array) and data.ndim > 1:
            data = data.blocks[(0,) * (data.ndim - 1)]
        try:
            arr = np.asarray(data, dtype=np.float64).reshape(-1, e.size)
        except EelsgpuError:
            raise
        except Exception as exc:  # a read error: name the file
            raise InputError(
                f"{si.attrs.get('source') or 'the data'}: reading the data failed; the file may "
                f"be truncated or corrupt ({type(exc).__name__}: {exc})"
            ) from exc
        with np.errstate(all="ignore"):
            spectrum = np.nanmean(arr, axis=0) if arr.size else np.zeros(e.size)
    why = energy_scale_problem(spectrum, e)
    if why is None:
        return
    factor = 1000.0 if "multiply" in why else 0.001
    offset, step = float(e[0]) * factor, float(e[1] - e[0]) * factor
    source = si.attrs.get("source") or "the data"
    raise EnergyAxisError(
        f"{source}: {why}: give --offset {offset:.6g} --dispersion {step:.6g} on the command "
        f"line, or offset_eV={offset:.6g}, dispersion_eV={step:.6g} (or energy_eV=energy * "
        f"{factor:g}) in Python"
    )


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
    reverse_decreasing: bool = False,
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
    reverse_decreasing : bool
        Turn an axis that runs from high to low energy (and the data with it) the right way
        round, recording ``energy_reversed=True`` (what :func:`eelsgpu.open` does), instead of
        refusing it.

    Returns
    -------
    xarray.DataArray
        Lazy (dask-backed) with dims from :data:`DIMS`.
    """
    arr = data if isinstance(data, da.Array) else np.asarray(data)
    _check_values_type(arr, source)
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
    reversed_ = False
    if reverse_decreasing and energy.size > 1 and np.all(np.diff(energy) < 0):
        energy, arr, reversed_ = energy[::-1].copy(), arr[..., ::-1], True
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
    if is_uniform(energy):
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
    if reversed_:
        out_attrs["energy_reversed"] = True
    out_attrs.setdefault("units", "counts")
    return xr.DataArray(lazy, dims=dims, coords=coords, name=name, attrs=out_attrs)


def _check_values_type(arr: Any, source: str | None) -> None:
    """Refuse data that are not real numbers (complex, text, objects) or that hold nothing."""
    where = f"{source}: " if source else ""
    kind = np.dtype(arr.dtype).kind
    if kind == "c":
        raise InputError(
            f"{where}the data are complex ({arr.dtype}); a spectrum holds real counts: pass "
            "data.real (or abs(data)) if that is what you mean"
        )
    if kind not in "biuf":
        raise InputError(f"{where}the data are {arr.dtype}, not numbers")
    if 0 in arr.shape:
        raise InputError(f"{where}the data are empty (shape {tuple(arr.shape)})")


#: The converter of HyperSpy signals, registered by :mod:`eelsgpu.interop` when it is imported
#: (the model layer cannot import it): :func:`as_spectrum_image` takes a signal as it is.
_SIGNAL_CONVERTER: list[Any] = []


def as_spectrum_image(si: Any, what: str = "this analysis") -> xr.DataArray:
    """Check the spectrum image a public function was given and return it with energy last.

    It must be an :class:`xarray.DataArray` with a dim named ``energy`` (anywhere: it is moved
    last) and an ``energy`` coordinate, real numbers, and not empty; anything else is one
    :class:`InputError` saying what to do.

    >>> si = spectrum_image(np.ones((2, 3, 8)), np.arange(8.0)).transpose("energy", "y", "x")
    >>> as_spectrum_image(si).dims
    ('y', 'x', 'energy')
    >>> as_spectrum_image(np.ones((2, 8)))
    Traceback (most recent call last):
    ...
    eelsgpu.errors.InputError: this analysis needs a spectrum image: an xarray.DataArray with an 'energy' dim (eV), not a numpy.ndarray; wrap an array with eelsgpu.spectrum_image(data, energy_eV=...) or open a file with eelsgpu.open(path)
    """
    if not isinstance(si, xr.DataArray) and _SIGNAL_CONVERTER and hasattr(si, "axes_manager"):
        si = _SIGNAL_CONVERTER[0](si)  # a HyperSpy signal, taken as it is (eelsgpu.interop)
    if not isinstance(si, xr.DataArray):
        kind = f"{type(si).__module__.split('.')[0]}.{type(si).__name__}"
        raise InputError(
            f"{what} needs a spectrum image: an xarray.DataArray with an 'energy' dim (eV), not "
            f"a {kind}; wrap an array with eelsgpu.spectrum_image(data, energy_eV=...) or open a "
            "file with eelsgpu.open(path)"
        )
    source = si.attrs.get("source")
    where = f"{source}: " if source else ""
    if "energy" not in si.dims:
        raise EnergyAxisError(
            f"{where}{what} needs a dim named 'energy' (eV); the data have dims {si.dims}: "
            "rename the energy dim (si.rename({'<dim>': 'energy'}))"
        )
    if "energy" not in si.coords:
        raise EnergyAxisError(f"{where}the 'energy' dim has no coordinate (energies in eV)")
    _check_values_type(si, source)
    if si.dims[-1] != "energy":
        si = si.transpose(..., "energy")
    return si


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
