"""Specimen thickness maps: :func:`thickness` by the log-ratio or the Kramers-Kronig sum rule.

* **Log-ratio** (kk-theory.md eq. 16; Egerton 2011, section 5.1.1): ``t/lambda = ln(I_t / N0)``
  per pixel, with the electrons scattered beyond the window counted
  (:func:`eelsgpu.kernels.log_ratio.log_ratio_kernel`), absolute with a mean free path
  (:mod:`eelsgpu.kernels.mean_free_path`: Iakoubovskii 2008 from the density, Malis 1988 from
  Zeff).
* **Kramers-Kronig sum rule** (kk-theory.md eqs. 26-29, :mod:`eelsgpu.kernels.sum_rule`): absolute
  thickness from the Fourier-log SSD, for an insulator of refractive index n (eq. 28) or a metal;
  the constant A of eq. 29 calibrated on a region of known thickness
  (:func:`calibrate_kk_constant`); n from a known thickness is
  :func:`eelsgpu.kernels.sum_rule.refractive_index_from_thickness`.

:func:`thickness` parses the arguments and dispatches to :func:`_thickness_log_ratio` or
:func:`_thickness_kk`, which run the declared block kernels of
:mod:`eelsgpu.kernels.blocks_lowloss` (:data:`~eelsgpu.kernels.blocks_lowloss.LOG_RATIO`,
:data:`~eelsgpu.kernels.blocks_lowloss.KK_THICKNESS`).

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_image(synthetic.Drude(15.0, 1.0), t_over_lambda=1.0, shape=(2, 2),
...                                n_channels=2048, dispersion_eV=0.1, dtype=np.float64)
>>> ds = thickness(sim["signal"], zlp="mirror", device="cpu")
>>> bool(abs(float(ds["t_over_lambda"][0, 0]) - 1.0) < 2e-3)
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..engine.cuda import register_fused_kernels
from ..errors import InputError
from ..kernels.blocks_lowloss import KK_THICKNESS, LOG_RATIO
from ..kernels.log_ratio import TAILS
from ..kernels.sum_rule import sum_rule_prefactor_nm_eV
from ..model import energy_axis, require_param
from ._checks import positive
from ._lowloss import (
    axis_numbers,
    check_calibration,
    mean_free_path,
    precheck,
    search_range,
    spectrum_input,
    with_thickness_nm,
)
from .zlp import resolve_zlp

__all__ = ["TAILS", "calibrate_kk_constant", "thickness"]


def thickness(
    si: xr.DataArray,
    method: str = "log-ratio",
    zlp: Any = "threshold",
    *,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    density_g_cm3: float | None = None,
    mean_free_path_nm: float | None = None,
    zeff: float | None = None,
    refractive_index: float | None = None,
    metal: bool = False,
    kk_constant_nm_eV: float | None = None,
    tail: str = "auto",
    search_eV: tuple[float, float] | None = None,
    device: str = "auto",
) -> xr.Dataset:
    """Thickness maps of a low-loss spectrum image (lazy; ``.compute()`` or write it).

    Parameters
    ----------
    si : xarray.DataArray
        Low-loss spectrum image (..., energy), counts, uniform increasing axis in eV, with the ZLP.
    method : {"log-ratio", "kk"}
        ``"log-ratio"``: t/lambda = ln(I_t/N0) (Egerton 2011, 5.1.1), absolute with a mean free
        path. ``"kk"``: the Kramers-Kronig sum rule on the Fourier-log SSD (kk-theory.md eq. 26),
        absolute without a mean free path, needing ``refractive_index``, ``metal=True`` or a
        calibrated ``kk_constant_nm_eV``, and the beam energy and collection angle.
    zlp : str or array
        Zero-loss model: ``"threshold"`` (default: truncation at the first minimum, robust to
        any ZLP shape, exspy's and Egerton's log-ratio recipe), ``"mirror"`` (for a symmetric
        ZLP), ``"fit"``, a reference spectrum, or a per-pixel ZLP cube (see
        :func:`eelsgpu.analysis.zlp.resolve_zlp`; which model fits which ZLP:
        :func:`eelsgpu.kernels.zlp.zlp_kernel`). N0 is the model's, in both methods and in
        :func:`eelsgpu.deconvolve`: the same ``zlp=`` gives the same t/lambda there. Each
        pixel's model is checked against the data (ZLP_MISMATCH where it does not fit).
    beam_energy_keV, collection_angle_mrad, convergence_angle_mrad : float, optional
        Override the file's calibration (keV, mrad); required only where used.
    density_g_cm3 : float, optional
        For the Iakoubovskii mean free path with its angular correction (needs E0, beta, alpha).
    mean_free_path_nm : float, optional
        A known mean free path for the measured conditions (nm); takes precedence.
    zeff : float, optional
        For the Malis mean free path (needs E0 and beta).
    refractive_index, metal : float, bool
        KK: Re[1/eps(0)] = 1/n^2 (eq. 28) or 0.
    kk_constant_nm_eV : float, optional
        KK: A of eq. 29 from :func:`calibrate_kk_constant` (replaces n / metal).
    tail : {"auto", "power-law", "fourier-log", "none"}
        Log-ratio: how scattering beyond the window is counted
        (:func:`eelsgpu.kernels.log_ratio.log_ratio_maps`): never negative, never below the
        window alone, and only where it exceeds its own uncertainty.
    search_eV : (float, float), optional
        Where the ZLP maximum may be (eV on the stored axis). Default: near 0 eV, else the
        spectrum's first dominant peak anywhere in the window (an uncalibrated axis is found,
        with an :class:`~eelsgpu.analysis._lowloss.AxisOffsetWarning`); energies are relative
        to each pixel's ZLP either way.
    device : {"auto", "cpu", "gpu"}

    Returns
    -------
    xarray.Dataset
        ``t_over_lambda``, ``thickness_nm`` (when absolute is possible), ``zlp_intensity``,
        ``zlp_centre_eV`` (on the stored axis), ``zlp_fwhm_eV``, ``quality`` (uint32 bitmask,
        :mod:`eelsgpu.kernels.quality`: NO_ZLP, ZLP_MISMATCH, NEGATIVE_TAIL, TAIL_UNTRUSTED,
        NEGATIVE_LOBE where the tail came from a Fourier-log SSD, NEGATIVE_T_OVER_LAMBDA,
        UNPHYSICAL_BACKGROUND, AXIS_OFFSET), ``valid`` (no fatal bit; pixels with a fatal bit
        keep their numbers, those without a ZLP are NaN), and ``total_intensity``,
        ``tail_fraction``, ``tail_trusted`` for log-ratio, ``kk_integral`` for kk; the run's
        parameters in ``attrs``.

    Raises
    ------
    NoZeroLossPeakError
        When no pixel has a zero-loss peak (checked on the first block of pixels, cheaply).
    MissingParameterError
        A calibration value that is needed and neither given nor in the file.
    InputError
        A number out of range (density, mean free path, angles...), naming it and its unit;
        not a spectrum image (a NumPy array, empty or complex data, no energy axis); an axis in
        meV or keV labelled eV; a negative baseline.
    """
    si = spectrum_input(si, "thickness")
    if method not in ("log-ratio", "kk"):
        raise ValueError(f"method must be 'log-ratio' or 'kk', not {method!r}")
    check_calibration(
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        convergence_angle_mrad=convergence_angle_mrad,
        density_g_cm3=density_g_cm3,
        mean_free_path_nm=mean_free_path_nm,
        zeff=zeff,
        refractive_index=refractive_index,
        kk_constant_nm_eV=kk_constant_nm_eV,
    )
    search = search_range(search_eV)
    energy_axis(si["energy"].values, require_uniform=True, source=si.attrs.get("source"))
    zparams, extras = resolve_zlp(si, zlp)
    params: dict[str, Any] = {**zparams, "search_eV": search}
    attrs: dict[str, Any] = {
        "thickness_method": method,
        "zlp_method": zparams["method"],
        "zlp_search_eV": "near 0 eV, else anywhere" if search is None else list(search),
    }
    register_fused_kernels()  # (the device's fused roll-off, where it has one)
    shift = precheck(si, zparams, search)
    params["axis_shift_eV"] = float(shift)
    params["axis_eV"] = axis_numbers(si)
    if shift:
        attrs["axis_shift_eV"] = float(shift)
    if method == "log-ratio":
        return _thickness_log_ratio(
            si,
            params,
            extras,
            attrs,
            tail=tail,
            beam_energy_keV=beam_energy_keV,
            collection_angle_mrad=collection_angle_mrad,
            convergence_angle_mrad=convergence_angle_mrad,
            density_g_cm3=density_g_cm3,
            mean_free_path_nm=mean_free_path_nm,
            zeff=zeff,
            device=device,
        )
    return _thickness_kk(
        si,
        params,
        extras,
        attrs,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        refractive_index=refractive_index,
        metal=metal,
        kk_constant_nm_eV=kk_constant_nm_eV,
        device=device,
    )


def _thickness_log_ratio(
    si: xr.DataArray,
    params: dict[str, Any],
    extras: dict[str, Any],
    attrs: dict[str, Any],
    *,
    tail: str,
    beam_energy_keV: float | None,
    collection_angle_mrad: float | None,
    convergence_angle_mrad: float | None,
    density_g_cm3: float | None,
    mean_free_path_nm: float | None,
    zeff: float | None,
    device: str,
) -> xr.Dataset:
    """``method="log-ratio"`` of :func:`thickness`: the maps of
    :data:`~eelsgpu.kernels.blocks_lowloss.LOG_RATIO`, and ``thickness_nm`` with a mean free
    path."""
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    params["tail"] = tail
    attrs["tail"] = tail
    ds = engine.apply_kernel(LOG_RATIO, si, device=device, extras=extras, attrs=attrs, **params)
    lam, how = mean_free_path(
        si,
        beam_energy_keV,
        collection_angle_mrad,
        convergence_angle_mrad,
        density_g_cm3,
        mean_free_path_nm,
        zeff,
    )
    if lam is not None:
        ds = with_thickness_nm(ds, lam, how)
    return ds


def _thickness_kk(
    si: xr.DataArray,
    params: dict[str, Any],
    extras: dict[str, Any],
    attrs: dict[str, Any],
    *,
    beam_energy_keV: float | None,
    collection_angle_mrad: float | None,
    refractive_index: float | None,
    metal: bool,
    kk_constant_nm_eV: float | None,
    device: str,
) -> xr.Dataset:
    """``method="kk"`` of :func:`thickness`: the maps of
    :data:`~eelsgpu.kernels.blocks_lowloss.KK_THICKNESS` with A of eq. 29 from a calibration, a
    metal or the refractive index (eq. 28)."""
    e0 = positive("beam_energy_keV", require_param(si, "beam_energy_keV", beam_energy_keV), "keV")
    beta = positive(
        "collection_angle_mrad",
        require_param(si, "collection_angle_mrad", collection_angle_mrad),
        "mrad",
    )
    if kk_constant_nm_eV is not None:
        a_const = positive("kk_constant_nm_eV", kk_constant_nm_eV, "nm eV")
        attrs["kk_normalisation"] = "calibrated A"
    elif metal:
        a_const = sum_rule_prefactor_nm_eV(e0)
        attrs["kk_normalisation"] = "metal (Re[1/eps(0)] = 0)"
    elif refractive_index is not None:
        n = positive("refractive_index", refractive_index)
        if not n > 1:
            raise InputError(f"refractive_index must be above 1, not {refractive_index!r}")
        a_const = sum_rule_prefactor_nm_eV(e0) / (1.0 - 1.0 / n**2)
        attrs["kk_normalisation"] = f"refractive index n = {n:g}"
        attrs["refractive_index"] = n
    else:
        raise InputError(
            "the KK thickness needs the static refractive index (refractive_index=..., "
            "--refractive-index) for an insulator or semiconductor, metal=True (--metal), or "
            "a calibrated kk_constant_nm_eV= (--kk-constant)"
        )
    attrs.update(beam_energy_keV=e0, collection_angle_mrad=beta, kk_constant_nm_eV=a_const)
    params.update(beam_energy_keV=e0, collection_angle_mrad=beta, kk_constant_nm_eV=a_const)
    return engine.apply_kernel(
        KK_THICKNESS, si, device=device, extras=extras, attrs=attrs, **params
    )


def calibrate_kk_constant(result: xr.Dataset, thickness_nm: float, where: Any = None) -> float:
    """A of eq. 29 (nm eV) from a region of known thickness: ``A = t / mean(kk_integral)``.

    ``result`` is a :func:`thickness` Dataset of ``method="kk"`` (its ``kk_integral``); ``where``
    a boolean map of the region (default: every valid pixel). Pass the result as
    ``thickness(..., kk_constant_nm_eV=A)`` to map the thickness elsewhere.
    """
    thickness_nm = positive("thickness_nm", thickness_nm, "nm")
    k = result["kk_integral"]
    mask = (
        result["valid"] if where is None else (result["valid"] & xr.DataArray(where, dims=k.dims))
    )
    vals = np.asarray(k.where(mask).values, dtype=np.float64)
    m = np.nanmean(vals) if np.isfinite(vals).any() else math.nan
    if not (math.isfinite(m) and m > 0):
        raise InputError("the calibration region has no valid pixel with a positive KK integral")
    return float(thickness_nm) / m
