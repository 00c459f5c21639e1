"""Helpers several low-loss analyses share (zlp, deconvolution, thickness, kramers_kronig).

* :func:`source_name`: the file a spectrum image came from, for messages;
* :func:`check_any_valid` and :func:`precheck`: :class:`~eelsgpu.errors.NoZeroLossPeakError`
  naming the file when no pixel has a usable zero-loss peak (cheaply, before the run);
* :func:`mean_free_path` and :func:`with_thickness_nm`: the absolute thickness from t/lambda;
* :func:`as_map`: a per-pixel map argument as an array of the navigation shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, NoZeroLossPeakError
from ..kernels.mean_free_path import mean_free_path_iakoubovskii_nm, mean_free_path_malis_nm
from ..kernels.zlp import SEARCH_EV, centre_kernel
from ..model import require_param

__all__ = [
    "as_map",
    "check_any_valid",
    "mean_free_path",
    "precheck",
    "source_name",
    "with_thickness_nm",
]


def source_name(si: Any) -> str:
    """The ``source`` attribute of ``si`` (a file name), or "the data"."""
    return str(getattr(si, "attrs", {}).get("source") or "the data")


def check_any_valid(valid: Any, si: Any, search_eV: tuple[float, float] = SEARCH_EV) -> None:
    """Raise :class:`NoZeroLossPeakError` (naming the file) when no pixel has a usable ZLP."""
    v = np.asarray(valid)
    if v.size and not v.any():
        e = np.asarray(si["energy"].values)
        raise NoZeroLossPeakError(
            f"{source_name(si)}: no pixel has a usable zero-loss peak between {search_eV[0]:g} "
            f"and {search_eV[1]:g} eV (the window runs from {e[0]:g} to {e[-1]:g} eV). A window "
            "that starts above 0 eV has no ZLP; a ZLP far off zero needs search_eV=(lo, hi); "
            "saturated or NaN spectra cannot be used"
        )


def precheck(si: xr.DataArray, zparams: Mapping[str, Any], search_eV) -> None:
    """Raise NoZeroLossPeakError early, and cheaply, when no pixel can have a ZLP: the window does
    not reach the search range, or the image is one block of pixels and none of them has one.
    (A larger image is checked block by block as it is computed: its pixels get valid=False.)"""
    e = np.asarray(si["energy"].values)
    if not ((e >= search_eV[0]) & (e <= search_eV[1])).any():
        check_any_valid(np.zeros(1, bool), si, search_eV)
    data = si.data
    if hasattr(data, "blocks"):
        if data.npartitions > 1:
            return
        data = data.compute()
    sample = np.asarray(data, dtype=np.float64).reshape(-1, si.shape[-1])
    check_any_valid(centre_kernel(sample, e, search_eV=tuple(search_eV))["valid"], si, search_eV)


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
    E0 (keV), beta and alpha (mrad) default to ``si``'s calibration where needed."""
    if mfp is not None:
        return float(mfp), "given"
    if density is not None:
        e0 = require_param(si, "beam_energy_keV", e0)
        beta = require_param(si, "collection_angle_mrad", beta)
        alpha = require_param(si, "convergence_angle_mrad", alpha)
        return (
            mean_free_path_iakoubovskii_nm(density, e0, beta, alpha),
            f"Iakoubovskii 2008, density {density:g} g/cm3, angular correction",
        )
    if zeff is not None:
        e0 = require_param(si, "beam_energy_keV", e0)
        beta = require_param(si, "collection_angle_mrad", beta)
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
