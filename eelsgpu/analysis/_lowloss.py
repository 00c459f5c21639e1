"""Helpers several low-loss analyses share (zlp, deconvolution, thickness, kramers_kronig).

* :func:`source_name`: the file a spectrum image came from, for messages;
* :func:`check_any_valid` and :func:`precheck`: :class:`~eelsgpu.errors.NoZeroLossPeakError`
  naming the file when no pixel has a usable zero-loss peak (cheaply, before the run), and the
  axis shift (with an :class:`AxisOffsetWarning`) where the ZLP sits far from 0 eV;
* :func:`spectrum_input`: the spectrum image a public analysis was given, checked (an
  ``xarray.DataArray`` with an energy axis, real, not empty; energy moved last; its energy
  scale where the data are in memory);
* :func:`check_negative_counts`: a negative baseline refused, naming the file (issue 12 item 9);
* :func:`check_calibration`: the calibration and mean-free-path numbers range-checked;
* :func:`search_range`, :func:`energy_range`: energy ranges (``search_eV``...) checked;
* :func:`survey_counts`: :func:`check_negative_counts` on the first block's spectra;
* :func:`mean_free_path` and :func:`with_thickness_nm`: the absolute thickness from t/lambda;
* :func:`as_map`: a per-pixel map argument as an array of the navigation shape;
* :func:`axis_numbers`: the axis' first energy and channel width as host floats, which the block
  kernels take (``axis_eV``) so that they never read a device array back (issue 13).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, NoZeroLossPeakError
from ..kernels.mean_free_path import mean_free_path_iakoubovskii_nm, mean_free_path_malis_nm
from ..kernels.zlp import SEARCH_EV, _median_rows, centre_kernel
from ..model import as_spectrum_image, check_energy_scale, require_param
from ._checks import at_least, optional, positive

__all__ = [
    "AxisOffsetWarning",
    "as_map",
    "axis_numbers",
    "check_any_valid",
    "check_calibration",
    "check_negative_counts",
    "energy_range",
    "mean_free_path",
    "precheck",
    "search_range",
    "source_name",
    "spectrum_input",
    "survey_counts",
    "with_thickness_nm",
]


def source_name(si: Any) -> str:
    """The ``source`` attribute of ``si`` (a file name), or "the data"."""
    return str(getattr(si, "attrs", {}).get("source") or "the data")


class AxisOffsetWarning(UserWarning):
    """The zero-loss peak sits far from 0 eV on the stored energy axis (not calibrated)."""


def spectrum_input(si: Any, what: str, *, raw: bool = True) -> xr.DataArray:
    """The spectrum image given to the public analysis ``what``, checked and with energy last
    (:func:`eelsgpu.model.as_spectrum_image`: an :class:`InputError` saying what to do for a
    NumPy array, empty or complex data, no energy axis). Where the data are in memory and
    ``raw`` (spectra with their ZLP), their energy scale is checked too
    (:func:`eelsgpu.model.check_energy_scale`: an axis in meV or keV labelled eV, judged from the
    ZLP's width; ``eelsgpu.open`` checks files as it opens them, so lazy data are not read again
    here). An SSD has no ZLP to judge the scale by (a broad loss peak near 0 eV would pass for
    a ZLP 25 "eV" wide): ``raw=False``."""
    si = as_spectrum_image(si, what)
    if raw and not hasattr(si.data, "dask"):
        check_energy_scale(si, spectrum=_mean_spectrum(si))
    return si


def _mean_spectrum(si: xr.DataArray, rows: int = 4096) -> np.ndarray:
    """The mean spectrum (n_E,) of an in-memory spectrum image over its finite values (float64),
    what :func:`eelsgpu.model.check_energy_scale` judges the energy scale by, in slabs of
    ``rows`` spectra: without the float64 copy of the whole image and the NaN-replaced copy of
    it that ``numpy.nanmean`` makes (for a 128 x 128 x 2048 float32 cube 0.5 GB more peak memory
    and ~1 s before the run; issue 13). The same mean to float64 rounding (the sums are
    associated per slab); NaN at a channel with no finite value."""
    n_e = si.shape[-1]
    flat = np.reshape(np.asarray(si.data), (-1, n_e))
    total = np.zeros(n_e, dtype=np.float64)
    count = np.zeros(n_e, dtype=np.float64)
    for start in range(0, flat.shape[0], rows):
        slab = flat[start : start + rows]
        finite = np.isfinite(slab)
        if finite.all():  # (the usual case: no mask, no copy)
            total += np.sum(slab, axis=0, dtype=np.float64)
            count += slab.shape[0]
        else:
            total += np.sum(np.where(finite, slab, 0.0), axis=0, dtype=np.float64)
            count += np.sum(finite, axis=0)
    with np.errstate(all="ignore"):
        return total / count if flat.size else np.zeros(n_e)


def ssd_input(ssd: Any, what: str) -> tuple[xr.Dataset | None, xr.DataArray, dict[str, Any]]:
    """The SSD an analysis of the single-scattering distribution takes (KK, the film fit).

    ``ssd`` is the Dataset :func:`eelsgpu.deconvolve` returns (or an SSD store opened as one) or a
    bare DataArray. Returns the Dataset (None for a DataArray), its ``ssd`` variable and the attrs
    of both (the variable's win), so that ``deconvolution_output`` and the recorded beam
    parameters are found wherever they were written.
    """
    if isinstance(ssd, xr.Dataset):
        if "ssd" not in ssd:
            raise InputError(
                "the Dataset has no 'ssd' variable: give eelsgpu.deconvolve's result, an SSD "
                "store, or the SSD as a DataArray"
            )
        return ssd, ssd["ssd"], {**ssd.attrs, **ssd["ssd"].attrs}
    if isinstance(ssd, xr.DataArray):
        return None, ssd, dict(ssd.attrs)
    raise InputError(
        f"{what} takes the xarray Dataset eelsgpu.deconvolve returns or an SSD as an xarray "
        f"DataArray with an 'energy' dim (eV), not a {type(ssd).__name__}; wrap an array with "
        "eelsgpu.spectrum_image(data, energy_eV=...)"
    )


def check_calibration(**values: Any) -> None:
    """Range-check the calibration and mean-free-path numbers a public analysis was given
    (None: not given), whether or not this run uses them: ``beam_energy_keV`` (keV),
    ``collection_angle_mrad`` (mrad), ``convergence_angle_mrad`` (mrad, 0 allowed),
    ``density_g_cm3``, ``mean_free_path_nm``, ``zeff``, ``kk_constant_nm_eV`` (positive),
    ``refractive_index`` (above 1)."""
    units = {
        "beam_energy_keV": "keV",
        "collection_angle_mrad": "mrad",
        "density_g_cm3": "g/cm3",
        "mean_free_path_nm": "nm",
        "zeff": "",
        "kk_constant_nm_eV": "nm eV",
    }
    for name, value in values.items():
        if name in units:
            optional(positive, name, value, units[name])
        elif name == "convergence_angle_mrad":
            optional(at_least, name, value, 0.0, "mrad")
        elif name == "refractive_index" and value is not None:
            n = positive(name, value)
            if not n > 1:
                raise InputError(f"refractive_index must be above 1 (n^2 = eps(0)), not {value!r}")
        elif name not in ("refractive_index",):
            raise TypeError(f"check_calibration: unknown number {name!r}")


def check_negative_counts(si: Any, sample: np.ndarray) -> None:
    """Refuse spectra whose baseline is negative under most channels (a dark reference or
    background subtracted too much), naming the file, before anything runs (issue 12 item 9:
    such data ran to flagged maps of nonsense, or to a store of NaN, with a message that did not
    say why).

    Counts cannot be negative beyond their noise, and in a low-loss spectrum most channels hold
    losses: where the median channel of most of the surveyed spectra ``sample`` (n, n_E) is
    below zero by more than 3 of its standard errors (the channels' noise from first
    differences, robustly), the baseline is negative. A smaller negative offset, under the gain
    side only, is a per-pixel flag (UNPHYSICAL_BACKGROUND, :func:`~eelsgpu.kernels.zlp.
    background_check`; the gduscher SiO2 file has one) and the analysis runs."""
    finite = np.all(np.isfinite(sample), axis=-1)
    if not finite.any():
        return
    rows = sample if finite.all() else sample[finite]
    # (numpy.median's values by one-k-th partitions: several times faster on 2048 channels),
    # row by row in slabs of 64 rows: the same values, with temporaries that stay in the cache
    # and are reused (a whole 1024 x 2048 float64 sample's 16 MB temporaries cost 0.1-0.6 s of
    # page faults on a fresh process, measured)
    med = np.empty(rows.shape[0], dtype=rows.dtype)
    sigma = np.empty(rows.shape[0], dtype=rows.dtype)
    for a in range(0, rows.shape[0], 64):
        slab = rows[a : a + 64]
        med[a : a + 64] = _median_rows(np, slab)
        sigma[a : a + 64] = _median_rows(np, np.abs(np.diff(slab, axis=-1)))
    sigma /= 0.6745 * math.sqrt(2.0)
    se = 1.2533 * sigma / math.sqrt(rows.shape[-1])
    if not float(np.mean(med < -3.0 * se - 1e-12)) > 0.5:
        return
    level = float(np.median(med))
    raise InputError(
        f"{source_name(si)}: the spectra have negative counts: a baseline of about {level:.3g} "
        "counts per channel (the median channel), where counts cannot be below zero beyond "
        "their noise. A dark reference or background was subtracted too much: add the offset "
        f"back (e.g. si + {-level:.3g}) or subtract a correct dark reference, then run again"
    )


def energy_range(name: str, value: Any) -> tuple[float, float]:
    """``value`` as two finite energies ``lo < hi`` (eV), else :class:`InputError` naming
    ``name``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be two energies (lo, hi) in eV, not {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"{name} must be two finite energies lo < hi in eV, not {value!r}")
    return (lo, hi)


def search_range(search_eV: Any) -> tuple[float, float] | None:
    """``search_eV`` checked: None (near 0 eV, else anywhere) or two finite energies lo < hi
    (eV), else :class:`InputError`."""
    return None if search_eV is None else energy_range("search_eV", search_eV)


def check_any_valid(valid: Any, si: Any, search_eV: tuple[float, float] | None = None) -> None:
    """Raise :class:`NoZeroLossPeakError` (naming the file) when no pixel has a usable ZLP."""
    v = np.asarray(valid)
    if v.size and not v.any():
        e = np.asarray(si["energy"].values)
        where = (
            f"between {search_eV[0]:g} and {search_eV[1]:g} eV"
            if search_eV is not None
            else "near 0 eV or anywhere else in the window"
        )
        raise NoZeroLossPeakError(
            f"{source_name(si)}: no pixel has a usable zero-loss peak {where} (the window runs "
            f"from {e[0]:g} to {e[-1]:g} eV). A ZLP must be the spectrum's first peak, with its "
            "gain side inside the window, nothing but noise below it, and stand out of the noise: "
            "a window that starts above the ZLP has none; saturated or NaN spectra cannot be used"
        )


def _sample(si: xr.DataArray, max_pixels: int = 1024) -> tuple[np.ndarray, bool]:
    """Up to ``max_pixels`` spectra of the first block of pixels as (n, n_E) float64, and
    whether they are the whole image."""
    data = si.data
    n_e = si.shape[-1]
    if hasattr(data, "blocks"):
        whole = data.npartitions == 1 or data.numblocks[:-1] == (1,) * (data.ndim - 1)
        first = data.blocks[(0,) * data.ndim] if data.ndim > 1 else data
        arr = np.asarray(first.compute() if hasattr(first, "compute") else first)
    else:
        arr, whole = np.asarray(data), True
    # the first pixels only, then float64: an in-memory image is not converted whole (a
    # float64 copy of a 128 x 128 x 2048 float32 cube is 268 MB and 0.2 s, for 1024 spectra)
    if arr.ndim > 2:  # enough rows of the first navigation axis (no copy of the rest)
        per_row = math.prod(arr.shape[1:-1])
        keep = max(1, -(-max_pixels // max(per_row, 1)))
        if arr.shape[0] > keep:
            arr, whole = arr[:keep], False
    flat = np.reshape(arr, (-1, n_e))
    if flat.shape[0] > max_pixels:
        flat, whole = flat[:max_pixels], False
    return np.asarray(flat, dtype=np.float64), whole


def survey_counts(si: xr.DataArray) -> None:
    """:func:`check_negative_counts` on the first block's spectra (up to 1024)."""
    check_negative_counts(si, _sample(si)[0])


def precheck(si: xr.DataArray, zparams: Mapping[str, Any], search_eV) -> float:
    """The ZLP survey before a run; returns the axis shift (eV) the kernels work on.

    Raises :class:`InputError` for a negative baseline (:func:`check_negative_counts`), and
    NoZeroLossPeakError early, and cheaply, when no pixel can have a ZLP: the window
    does not reach an explicit search range, or the pixels surveyed (the first block's, up to
    1024) are the whole image and none has one. A larger image is checked block by block as it
    is computed: its pixels get the NO_ZLP bit and ``valid`` False.

    The shift returned is the stored energy of the channel nearest the surveyed ZLPs' median
    centre: every kernel works on the stored axis minus it, so energies are losses from the ZLP
    (to half a channel) with a channel at exactly 0 eV, the same whatever offset the stored axis
    has (results do not depend on it), and the aligned outputs lie on that axis (their window
    covers the losses the data cover). Where the ZLPs sit beyond
    :data:`~eelsgpu.kernels.zlp.SEARCH_EV` (an axis that was never calibrated), an
    :class:`AxisOffsetWarning` says so."""
    e = np.asarray(si["energy"].values, dtype=np.float64)
    if search_eV is not None and not ((e >= search_eV[0]) & (e <= search_eV[1])).any():
        check_any_valid(np.zeros(1, bool), si, search_eV)
    sample, whole = _sample(si)
    cen = centre_kernel(sample, e, search_eV=None if search_eV is None else tuple(search_eV))
    check_negative_counts(si, sample)
    valid = np.asarray(cen["valid"])
    if whole:
        check_any_valid(valid, si, search_eV)
    if not valid.any():
        return 0.0
    c = float(np.median(np.asarray(cen["zlp_centre_eV"])[valid]))
    d = float((e[-1] - e[0]) / (e.size - 1))
    # the stored energy of the channel nearest the ZLPs' median centre: the kernels' axis then
    # has a channel exactly at 0 eV (the Fourier-log puts zero loss there with a plain roll, no
    # sub-channel resampling) and is the same whatever the stored axis' offset, also one that is
    # not a whole number of channels (rounding c to whole channels of the stored axis made the
    # raw SSD's sampling, and so borderline flags, depend on the offset modulo the step)
    k0 = min(max(round((c - float(e[0])) / d), 0), e.size - 1)
    shift = float(e[k0])
    if abs(shift) <= 1e-6 * d:  # the stored axis already has its channel at 0 eV there
        shift = 0.0
    if SEARCH_EV[0] <= c <= SEARCH_EV[1]:
        return shift
    warnings.warn(
        f"{source_name(si)}: the zero-loss peak sits at {c:.3g} eV on the stored energy axis "
        f"(not 0 eV): the axis was not calibrated. Every result is on energy relative to each "
        f"pixel's ZLP; aligned outputs lie on the stored axis minus {shift:.6g} eV, and "
        "zlp_centre_eV is on the stored axis (quality bit AXIS_OFFSET)",
        AxisOffsetWarning,
        stacklevel=3,
    )
    return shift


def with_thickness_nm(ds: xr.Dataset, mean_free_path_nm: float, how: str) -> xr.Dataset:
    """``ds`` with ``thickness_nm`` = ``t_over_lambda`` x the mean free path (nm), which the
    variable's and the dataset's attributes record (with ``how`` it was found)."""
    ds["thickness_nm"] = ds["t_over_lambda"] * mean_free_path_nm
    ds["thickness_nm"].attrs = {
        "units": "nm",
        "long_name": "thickness",
        "mean_free_path_nm": mean_free_path_nm,
    }
    ds.attrs["mean_free_path_nm"] = mean_free_path_nm
    ds.attrs["mean_free_path_from"] = how
    return ds


def mean_free_path(si, e0, beta, alpha, density, mfp, zeff) -> tuple[float | None, str]:
    """The mean free path (nm) and how it was found: given (``mfp``), from the density
    (Iakoubovskii 2008, with the angular correction), from Zeff (Malis 1988), or ``(None, "")``.
    E0 (keV), beta and alpha (mrad) default to ``si``'s calibration where needed; every number
    used is range-checked (:mod:`eelsgpu.analysis._checks`)."""
    if mfp is not None:
        return positive("mean_free_path_nm", mfp, "nm"), "given"
    if density is not None:
        density = positive("density_g_cm3", density, "g/cm3")
        e0 = positive("beam_energy_keV", require_param(si, "beam_energy_keV", e0), "keV")
        beta = positive(
            "collection_angle_mrad", require_param(si, "collection_angle_mrad", beta), "mrad"
        )
        alpha = at_least(
            "convergence_angle_mrad",
            require_param(si, "convergence_angle_mrad", alpha),
            0.0,
            "mrad",
        )
        return (
            mean_free_path_iakoubovskii_nm(density, e0, beta, alpha),
            f"Iakoubovskii 2008, density {density:g} g/cm3, angular correction",
        )
    if zeff is not None:
        zeff = positive("zeff", zeff)
        e0 = positive("beam_energy_keV", require_param(si, "beam_energy_keV", e0), "keV")
        beta = positive(
            "collection_angle_mrad", require_param(si, "collection_angle_mrad", beta), "mrad"
        )
        return mean_free_path_malis_nm(e0, beta, zeff=zeff), f"Malis 1988, Zeff {zeff:g}"
    return None, ""


def as_map(value, si: xr.DataArray, name: str):
    """A per-pixel map (DataArray or array of the navigation shape, or a number) as an array."""
    nav_shape = tuple(si.shape[:-1])
    if isinstance(value, xr.DataArray):
        arr = value.data
    else:
        arr = np.asarray(value, dtype=np.float64)
    if np.ndim(arr) == 0:
        return np.full(nav_shape, float(arr))
    if tuple(arr.shape) != nav_shape:
        raise InputError(f"{name} has shape {tuple(arr.shape)}; the SSD's pixels are {nav_shape}")
    return arr


def axis_numbers(si: xr.DataArray) -> tuple[float, float]:
    """``(first_eV, step_eV)`` of ``si``'s energy axis as host floats (the step is the mean
    channel width, as :func:`eelsgpu._xp.axis_step` gives it): the ``axis_eV`` parameter of the
    low-loss block kernels, which on a device would otherwise read the axis back (two syncs per
    call)."""
    e = np.asarray(si["energy"].values, dtype=np.float64)
    return float(e[0]), float(e[-1] - e[0]) / (e.size - 1)
