"""Shared numerics for every kernel: the array namespace, the FFT module, and small helpers.

This is the bottom layer of eelsgpu (see the layer table in :mod:`eelsgpu.kernels`): it imports
only NumPy, SciPy and array-api-compat, and every kernel takes what it needs from here rather
than from another kernel module. Like scikit-image's ``skimage/_shared/fft.py`` it is the one
place that picks the FFT implementation.

* :func:`array_namespace`: the namespace of an array (NumPy, CuPy, array-api-strict);
* :func:`fft_module`: ``scipy.fft`` for NumPy arrays, the namespace's own ``fft`` elsewhere;
* :func:`fast_length`: the smallest 5-smooth FFT length >= n;
* :func:`moving_average`, :func:`unwrap_phase`, :func:`take_rows`, :func:`erf`,
  :func:`complex_from`, :func:`axis_step`, :func:`tiny`, :func:`itemsize`.

Examples
--------
>>> import numpy as np
>>> fast_length(1025)
1080
>>> xp = array_namespace(np.ones(3))
>>> moving_average(xp, np.arange(5.0)[None], 1).tolist()
[[0.5, 1.0, 2.0, 3.0, 3.5]]
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .errors import EnergyAxisError

__all__ = [
    "array_namespace",
    "axis_step",
    "complex_from",
    "erf",
    "fast_length",
    "fft_module",
    "is_numpy",
    "itemsize",
    "moving_average",
    "take_rows",
    "tiny",
    "unwrap_phase",
]


def is_numpy(xp: Any) -> bool:
    """True for NumPy's namespace (plain or through array-api-compat)."""
    return xp.__name__ == "numpy" or xp.__name__.startswith("array_api_compat.numpy")


def fft_module(xp: Any) -> Any:
    """The FFT functions for arrays of namespace ``xp`` (``rfft``, ``irfft``, same signatures).

    ``scipy.fft`` for NumPy arrays: it keeps float32 and plans once (numpy.fft.rfft of float32
    rows of 4096 is about 6x slower, numpy 2.4), with one worker, as dask already runs a block
    per core; ``xp.fft`` everywhere else (CuPy's cuFFT, array-api-strict's).
    """
    if is_numpy(xp):
        import scipy.fft

        return scipy.fft
    return xp.fft


def fast_length(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) that is >= ``n``: a fast FFT length.

    The same as ``scipy.fft.next_fast_len(n, real=True)`` (a test checks it), computed here so
    that kernels need no SciPy on a GPU.
    """
    n = max(int(n), 1)
    best = 1 << (n - 1).bit_length()  # a power of two always qualifies
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def moving_average(xp: Any, y: Any, half: int) -> Any:
    """Mean of ``y`` (n, m) over channels j-half..j+half (fewer at the ends), by cumulative sums."""
    m = y.shape[-1]
    c = xp.cumulative_sum(y, axis=-1, include_initial=True)  # (n, m + 1)
    j = xp.arange(m)
    lo = xp.clip(j - half, 0, m)
    hi = xp.clip(j + half + 1, 0, m)
    return (xp.take(c, hi, axis=-1) - xp.take(c, lo, axis=-1)) / xp.astype(hi - lo, y.dtype)


def unwrap_phase(phase: Any, axis: int = -1) -> Any:
    """Unwrap a phase along ``axis`` (radians): remove the 2 pi jumps between neighbours.

    The array-API twin of ``numpy.unwrap``: ``d = diff(phase)``, the correction
    ``-2 pi round(d / 2 pi)`` accumulated by ``cumulative_sum``. The first sample is kept.

    Parameters
    ----------
    phase : array
        Wrapped phase in radians (any real float array of the array API).
    axis : int
        The axis to unwrap along (default the last).

    Returns
    -------
    array
        Same shape and dtype; neighbouring samples differ by less than pi.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.angle(np.exp(1j * np.linspace(0, 12, 50)))
    >>> bool(np.allclose(unwrap_phase(p), np.linspace(0, 12, 50)))
    True
    """
    xp = array_namespace(phase)
    axis = axis % phase.ndim
    n = phase.shape[axis]
    if n < 2:
        return phase
    lo = [slice(None)] * phase.ndim
    hi = [slice(None)] * phase.ndim
    lo[axis] = slice(0, n - 1)
    hi[axis] = slice(1, n)
    first = [slice(None)] * phase.ndim
    first[axis] = slice(0, 1)
    rest = phase[tuple(hi)]
    d = rest - phase[tuple(lo)]
    two_pi = 2.0 * math.pi
    correction = xp.cumulative_sum(-two_pi * xp.round(d / two_pi), axis=axis)
    return xp.concat([phase[tuple(first)], rest + correction], axis=axis)


def take_rows(xp: Any, y: Any, idx: Any) -> Any:
    """``y[i, idx[i]]`` for (n,) integer ``idx`` (clipped into range)."""
    n_e = y.shape[-1]
    i = xp.minimum(xp.maximum(idx, 0), n_e - 1)  # (array-api-compat's clip is ~7x slower)
    return xp.take_along_axis(y, i[:, None], axis=-1)[:, 0]


def erf(xp: Any, x: Any) -> Any:
    """erf(x) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); the array API has no erf."""
    s = xp.sign(x)
    a = xp.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return s * (1.0 - poly * xp.exp(-a * a))


def complex_from(xp: Any, re: Any, im: Any) -> Any:
    """re + i im in the matching complex dtype (the array API has no complex() of arrays)."""
    if isinstance(re, np.ndarray) and isinstance(im, np.ndarray) and re.shape == im.shape:
        # NumPy: two strided copies into a new array, ~4x faster than the arithmetic below
        out = np.empty(re.shape, dtype=np.result_type(re.dtype, np.complex64))
        out.real = re
        out.imag = im
        return out
    # (a real array times a Python complex is the matching complex dtype; ~10x faster than
    # astype(im, complex) * 1j, a full complex multiplication)
    return re + im * 1j


#: An axis is uniform when every channel lies within this fraction of a channel of the straight
#: line through its ends (:func:`axis_step` and :func:`eelsgpu.model.is_uniform`): values read
#: from a text file with 6 decimals (channel widths 0.049999 to 0.050001 eV) pass, a grating
#: spectrometer's axis (widths changing by percents) does not.
UNIFORM_TOLERANCE = 0.01


def axis_step(energy_eV: Any, *, uniform: bool = False, what: str = "") -> tuple[float, float]:
    """``(first_eV, step_eV)`` of an increasing energy vector on any device.

    ``step`` is (last - first) / (n - 1). With ``uniform=True`` every channel must lie within
    :data:`UNIFORM_TOLERANCE` of a step of the straight line through the ends (judged relative
    to the step, as :func:`eelsgpu.model.is_uniform` does: an axis rounded in a text file is
    uniform; what the FFT-based kernels need). Raises :class:`EnergyAxisError` (``what`` names
    the analysis that needs it) for fewer than 2 channels, a decreasing axis, or a non-uniform
    one when asked.

    >>> import numpy as np
    >>> e = np.round(np.arange(1000) * 0.05 - 5.0 + 1e-7, 6)
    >>> e[1::3] += 1e-6  # channel widths 0.049999 to 0.050001 eV
    >>> first, step = axis_step(e, uniform=True)
    >>> round(first, 6), round(step, 9)
    (-5.0, 0.05)
    """
    n = energy_eV.shape[0]
    if n < 2:
        raise EnergyAxisError(f"the energy axis needs at least 2 channels, it has {n}")
    first = float(energy_eV[0])
    step = float(energy_eV[n - 1] - energy_eV[0]) / (n - 1)
    if not step > 0:
        raise EnergyAxisError(
            "the energy axis runs the wrong way (decreasing); reverse the data along energy first"
        )
    if uniform and n > 2:
        xp = array_namespace(energy_eV)
        e = xp.astype(energy_eV, xp.float64)
        line = first + step * xp.arange(n, dtype=xp.float64)
        if not float(xp.max(xp.abs(e - line))) <= UNIFORM_TOLERANCE * step:
            d = energy_eV[1:] - energy_eV[:-1]
            needs = f"{what} needs" if what else "this analysis needs"
            raise EnergyAxisError(
                f"{needs} a uniform, increasing energy axis (channel widths from "
                f"{float(xp.min(d)):.6g} to {float(xp.max(d)):.6g} eV)"
            )
    return first, step


@functools.lru_cache(maxsize=8)
def tiny(dtype_name: str) -> float:
    """16 x the smallest normal number of a float dtype (a floor that keeps logs finite)."""
    return float(np.finfo(np.dtype(dtype_name.split(".")[-1])).tiny) * 16


def itemsize(dt: Any) -> int:
    """Bytes per element of a dtype of any namespace."""
    return np.dtype(str(dt).split(".")[-1]).itemsize
