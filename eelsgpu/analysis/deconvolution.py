"""Fourier-log deconvolution of spectrum images: :func:`deconvolve` (kk-theory.md eqs. 18-25).

The per-block work (the ZLP model and its checks, eq. 22 with the measured-error roll-off, the
unwrapped phase and the tail beyond the window, the log-ratio t/lambda beside it, the quality
bitmask) is :func:`eelsgpu.kernels.blocks_lowloss.deconvolve_block` on the kernels of
:mod:`eelsgpu.kernels.fourier_log`; this module checks the arguments, surveys the ZLP (the axis
shift where the stored axis is off), picks the declaration and attaches the provenance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..engine.cpu_fused import register_cpu_kernels
from ..engine.cuda import register_fused_kernels
from ..errors import InputError
from ..kernels.blocks_lowloss import ALIGNED_OUTPUTS, DECONVOLVE
from ..kernels.blocks_replicas import with_replicas
from ..kernels.fourier_log import EXTRAPOLATIONS, OUTPUTS
from ..model import energy_axis
from ._checks import in_range, optional, positive, positive_int
from ._lowloss import (
    axis_numbers,
    check_calibration,
    mean_free_path,
    precheck,
    search_range,
    spectrum_input,
    with_thickness_nm,
)
from ._uncertainty import parse_uncertainty, parse_zlp_models
from .thickness import TAIL_REL_SIGMA, _with_sigmas, check_analytic_zlp, with_zlp_model_spread
from .zlp import resolve_zlp

__all__ = ["EXTRAPOLATIONS", "OUTPUTS", "deconvolve"]


def deconvolve(
    si: xr.DataArray,
    zlp: Any = "mirror",
    output: str = "reconvolved-zlp",
    fwhm_eV: float | None = None,
    *,
    extrapolation: str = "power-law",
    pad_to: int | None = None,
    search_eV: tuple[float, float] | None = None,
    mean_free_path_nm: float | None = None,
    density_g_cm3: float | None = None,
    zeff: float | None = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    device: str = "auto",
    uncertainty: str | None = None,
    n_replicas: int | None = None,
    gain: float | None = None,
    noise_variance: Any = None,
    seed: int = 0,
    mean_free_path_rel_sigma: float | None = None,
    tail_rel_sigma: float = TAIL_REL_SIGMA,
    zlp_models: Any = None,
) -> xr.Dataset:
    """Single-scattering distribution of every pixel by Fourier-log deconvolution (eq. 22).

    kk-theory.md eqs. 18-25; Egerton 2011, section 4.1.2. Each pixel's zero-loss peak ``N0 R``
    comes from ``zlp=`` (see :func:`eelsgpu.kernels.zlp.zlp_kernel`, which says which model fits
    which ZLP) and is checked against the data
    (:func:`~eelsgpu.kernels.zlp.zlp_model_checks`); then
    :func:`~eelsgpu.kernels.fourier_log.fourier_log_kernel` returns the SSD with the phase of the
    log unwrapped, the tail continued beyond the window, the energy origin at 0 eV (eq. 25), and
    a roll-off that follows the measured error of ln(J~/Z~) in each pixel. Both steps are one
    kernel, run block by block by :func:`eelsgpu.engine.apply_kernel` (lazy, streams from disk,
    on the GPU when there is one).

    **Resolution.** The raw SSD (``output="ssd"``) is the true SSD convolved with a unit-area,
    centred point-spread whose FWHM is the ``resolution_eV`` map: its frequencies are kept up to
    where the measured error of the log reaches the signal. On every measured spectrum tried
    (shared/data) that is inside the ZLP's own band, so there the raw SSD is band-limited by a
    Gaussian of the pixel's measured ZLP FWHM (1.5 FWHM where the finer one would ring above
    0.1 of its peak); on noise-free synthetic data it is exact to 1e-3 of its peak.

    Parameters
    ----------
    si : xarray.DataArray
        Spectrum image (..., energy) in counts, uniform increasing energy axis in eV that
        includes the ZLP (anywhere: an uncalibrated axis is found and said so).
    zlp : str or array
        ``"mirror"``, ``"fit"``, ``"threshold"``, a reference spectrum (1-D, applied to every
        pixel, shifted and scaled) or a per-pixel ZLP cube of the data's shape, in counts.
    output : {"reconvolved-zlp", "ssd", "band-limited", "reconvolved-gaussian", "residual"}
        ``"reconvolved-zlp"`` (default, Egerton's advice for noisy data): the SSD convolved with
        the ZLP where it sits in the data, which amplifies no noise (not aligned: zero loss at
        each pixel's ``zlp_centre_eV``). ``"ssd"``: the raw SSD, zero loss at 0 eV, resolution
        ``resolution_eV``. ``"band-limited"``: the SSD convolved with a unit-area Gaussian of
        each pixel's measured ZLP FWHM (``zlp_fwhm_eV``), zero loss at 0 eV: the input
        Kramers-Kronig analysis takes by default. ``"reconvolved-gaussian"``: the SSD
        convolved with a unit-area Gaussian of ``fwhm_eV``, zero loss at 0 eV. ``"residual"``:
        data - ZLP - reconvolved SSD, the plural scattering (a diagnostic).
    fwhm_eV : float, optional
        FWHM (eV) of the Gaussian for ``"reconvolved-gaussian"``.
    extrapolation : {"power-law", "exponential", "none"}
        How the spectrum is continued beyond the window before the transform.
    pad_to : int, optional
        FFT length; default the next 5-smooth length >= 2 n_E.
    search_eV : (float, float), optional
        Where the ZLP maximum is looked for (eV on the stored axis). Default: near 0 eV, else
        the spectrum's first dominant peak anywhere in the window
        (:func:`~eelsgpu.kernels.zlp.centre_kernel`).
    mean_free_path_nm, density_g_cm3, zeff : float, optional
        For the absolute ``thickness_nm`` map: a known inelastic mean free path (nm), or the
        density (g/cm3, Iakoubovskii 2008 with its angular correction) or effective atomic number
        (Malis 1988) to compute it, as in :func:`eelsgpu.thickness`.
    beam_energy_keV, collection_angle_mrad, convergence_angle_mrad : float, optional
        Override the file's calibration (keV, mrad) for the mean free path.
    device : {"auto", "cpu", "gpu"}
    uncertainty : {None, "analytic", "replicas", "replicas:K"}
        Counting sigmas (:mod:`eelsgpu.analysis._uncertainty`; none by default): ``"analytic"``
        gives the maps' (``t_over_lambda``, ``thickness_nm``, ``zlp_intensity``) by the
        log-ratio's closed form, as :func:`eelsgpu.thickness` (``zlp="threshold"`` only; no
        ``ssd_sigma``); ``"replicas"`` runs ``n_replicas`` noise replicas of every spectrum
        through the same block kernel (:func:`eelsgpu.kernels.blocks_replicas.with_replicas`)
        and adds ``ssd_sigma`` per channel beside the maps' sigmas. Proven honest (0.85-1.15 of
        the observed scatter) for ``output="band-limited"`` from 5 to 45 eV; NOT for
        ``output="ssd"`` at a sharp plasmon peak (0.26 of the scatter: the adaptive roll-off
        varies between realisations more than between replicas of one) nor
        ``"reconvolved-zlp"`` within the ZLP's tail (0.6 at 5 eV).
    n_replicas, gain, noise_variance, seed, mean_free_path_rel_sigma, tail_rel_sigma
        As :func:`eelsgpu.thickness`.
    zlp_models : None, True, "all", or a sequence of "threshold", "mirror", "fit"
        The ZLP model's systematic part of the maps, as :func:`eelsgpu.thickness` gives it
        (default none): each other model's ``t_over_lambda`` and N0 come from
        ``thickness(zlp=model, tail="auto")`` (the same log-ratio maps this function returns
        beside the SSD, at the cost of one log-ratio run per model, not a deconvolution); the
        ``ssd`` has no ZLP-model part. Not for ``output="residual"``.

    Returns
    -------
    xarray.Dataset
        ``ssd`` (..., energy): the requested output in counts per channel (integral N0 t/lambda
        for the aligned outputs; the ``output`` attribute and the dataset's
        ``deconvolution_output`` say which); aligned outputs lie on the stored axis minus
        ``axis_shift_eV`` (an attribute where not 0): the stored energy of the channel
        nearest the ZLPs' median centre, so that a channel sits at exactly 0 eV loss and their
        window covers the losses the data cover, wherever the stored axis puts the ZLP (the
        result does not depend on the axis offset).
        Maps: ``zlp_intensity`` (N0 of the model, counts), ``zlp_centre_eV`` (on the stored
        axis, eV), ``zlp_fwhm_eV`` (the measured ZLP FWHM, eV), ``resolution_eV`` (FWHM of the
        point-spread the returned ``ssd`` carries: the adaptive one for ``"ssd"``, the ZLP FWHM
        for ``"band-limited"`` and ``"reconvolved-zlp"``, ``fwhm_eV``; NaN for ``"residual"``),
        ``quality`` (uint32 bitmask, :mod:`eelsgpu.kernels.quality`: NO_ZLP, ZLP_MISMATCH,
        NEGATIVE_TAIL, TAIL_UNTRUSTED, RINGING and NEGATIVE_LOBE of the raw SSD,
        NEGATIVE_T_OVER_LAMBDA, UNPHYSICAL_BACKGROUND, AXIS_OFFSET), ``valid`` (no fatal bit),
        ``t_over_lambda`` (not for ``"residual"``): the log-ratio ln(I_t/N0) with N0 of the same
        ZLP model, exactly the ``t_over_lambda`` of :func:`eelsgpu.thickness` with this ``zlp``
        (the tail beyond the window from the spectrum's power law or, where that fails, from this
        pass's raw SSD), and ``thickness_nm`` = t/lambda x the mean free path when one is given.
        Pixels whose computation failed (no ZLP, NaN counts, an undefined log) are NaN; pixels
        with another fatal bit keep their numbers with ``valid`` False. With ``uncertainty``:
        ``<name>_sigma`` (counting) and ``<name>_sigma_systematic`` (the tail beyond the window,
        the mean free path formula) as :func:`eelsgpu.thickness` gives them, and ``ssd_sigma``
        (replicas). With ``zlp_models``: ``<name>_sigma_zlp_model``, ``zlp_models_passed`` and
        the ``zlp_model`` part of ``<name>_sigma_systematic``, as :func:`eelsgpu.thickness`.

    Raises
    ------
    EnergyAxisError
        The energy axis is not uniform and increasing (naming the file).
    NoZeroLossPeakError
        No pixel can have a zero-loss peak (the window does not reach ``search_eV``, or a
        one-block image has none), naming the file.
    InputError
        A number out of range (``fwhm_eV``, ``pad_to``, the calibration and the mean free
        path's inputs), naming it; not a spectrum image (a NumPy array, empty or complex data,
        no energy axis); an axis in meV or keV labelled eV; a negative baseline.

    Warns
    -----
    AxisOffsetWarning
        The ZLP sits beyond -5..5 eV on the stored axis.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsgpu import synthetic
    >>> sim = synthetic.low_loss_image(synthetic.Drude(15.0, 1.0), t_over_lambda=1.0,
    ...                                shape=(2, 2), n_channels=512, dispersion_eV=0.1)
    >>> ds = deconvolve(sim["signal"], zlp="fit", output="ssd", device="cpu")
    >>> t = ds["ssd"].sum("energy") / ds["zlp_intensity"]
    >>> bool(np.allclose(t, 1.0, atol=0.02)), bool(ds["valid"].all())
    (True, True)
    """
    si = spectrum_input(si, "deconvolve")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    if extrapolation not in EXTRAPOLATIONS:
        raise ValueError(f"extrapolation must be one of {EXTRAPOLATIONS}, not {extrapolation!r}")
    if output == "reconvolved-gaussian" and fwhm_eV is None:
        raise ValueError("output='reconvolved-gaussian' needs fwhm_eV > 0 (eV)")
    fwhm_eV = optional(positive, "fwhm_eV", fwhm_eV, "eV")
    pad_to = optional(positive_int, "pad_to", pad_to, 2)
    check_calibration(
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        convergence_angle_mrad=convergence_angle_mrad,
        density_g_cm3=density_g_cm3,
        mean_free_path_nm=mean_free_path_nm,
        zeff=zeff,
    )
    search = search_range(search_eV)
    unc = parse_uncertainty(si, uncertainty, n_replicas, gain, noise_variance, seed)
    if unc.method == "analytic":
        if output == "residual":
            raise InputError("output='residual' has no map with an analytic sigma: use replicas")
        if unc.noise_variance is not None:
            raise InputError(
                "the analytic log-ratio sigma needs Poisson counts (gain=); with "
                "noise_variance= use uncertainty='replicas'"
            )
        check_analytic_zlp(zlp)
    if mean_free_path_rel_sigma is not None:
        mean_free_path_rel_sigma = in_range(
            "mean_free_path_rel_sigma", mean_free_path_rel_sigma, 0.0, 1.0
        )
    tail_rel_sigma = in_range("tail_rel_sigma", tail_rel_sigma, 0.0, 1.0)
    other_models = parse_zlp_models(zlp_models, zlp)
    if other_models and output == "residual":
        raise InputError(
            "output='residual' has no map with a ZLP-model spread: leave out zlp_models"
        )
    source = si.attrs.get("source")
    energy_axis(si["energy"].values, require_uniform=True, source=source)
    params, extras = resolve_zlp(si, zlp)
    attrs = {
        "deconvolution": "Fourier-log (kk-theory.md eq. 22), unwrapped phase, measured-error "
        "roll-off",
        "deconvolution_output": output,
        "zlp_method": params["method"],
        "tail_extrapolation": extrapolation,
        "zlp_search_eV": "near 0 eV, else anywhere" if search is None else list(search),
    }
    if fwhm_eV is not None:
        attrs["reconvolution_fwhm_eV"] = float(fwhm_eV)
    # no pixel can have a ZLP (the window starts above the search range): an error naming the
    # file, as thickness gives, not a store of NaN; and the axis shift where the axis is off
    shift = precheck(si, params, search)
    lam, how = mean_free_path(
        si,
        beam_energy_keV,
        collection_angle_mrad,
        convergence_angle_mrad,
        density_g_cm3,
        mean_free_path_nm,
        zeff,
    )
    if lam is not None and output == "residual":
        raise ValueError("output='residual' gives no thickness map: leave out the mean free path")
    kernel_params: dict[str, Any] = {"axis_shift_eV": float(shift), "axis_eV": axis_numbers(si)}
    if shift:
        attrs["axis_shift_eV"] = float(shift)
        if output in ALIGNED_OUTPUTS:
            kernel_params["energy_coord_eV"] = np.asarray(si["energy"].values) - shift
    register_fused_kernels()  # (the device's fused roll-off, where it has one)
    # (the compiled CPU kernels, for NumPy arrays: loaded for a job large enough to pay)
    register_cpu_kernels(n_spectra=math.prod(si.shape[:-1]))
    decl = DECONVOLVE
    if unc.method is not None:
        attrs.update(unc.attrs())
        extras = {**extras, **unc.extras(si)}
        if unc.method == "replicas":
            targets = ("ssd", "zlp_intensity") + (
                ("t_over_lambda",) if output != "residual" else ()
            )
            decl = with_replicas(DECONVOLVE, targets)
            kernel_params.update(unc.kernel_params())
    ds = engine.apply_kernel(
        decl,
        si,
        device=device,
        extras=extras,
        attrs=attrs,
        output=output,
        fwhm_eV=fwhm_eV,
        extrapolation=extrapolation,
        pad_to=pad_to,
        search_eV=search,
        **kernel_params,
        **params,
    )
    if shift and output in ALIGNED_OUTPUTS:
        ds["energy"].attrs.update(si["energy"].attrs)
        ds["energy"].attrs["note"] = f"energy loss: the stored axis minus {shift:g} eV"
    if lam is not None:
        ds = with_thickness_nm(ds, lam, how)
    if other_models:
        # the other models' log-ratio maps: the same t/lambda and N0 this run gives beside its SSD
        same = dict(
            method="log-ratio",
            tail="auto",
            beam_energy_keV=beam_energy_keV,
            collection_angle_mrad=collection_angle_mrad,
            convergence_angle_mrad=convergence_angle_mrad,
            density_g_cm3=density_g_cm3,
            mean_free_path_nm=mean_free_path_nm,
            zeff=zeff,
            search_eV=search_eV,
            device=device,
        )
        ds = with_zlp_model_spread(ds, si, zlp, other_models, same)
    if (unc.method is None and not other_models) or output == "residual":
        return ds
    # the log-ratio's I_t = N0 exp(t/lambda) (the tail included) and the window's own counts
    n0 = ds["zlp_intensity"]
    total = n0 * np.exp(ds["t_over_lambda"])
    window = si.sum("energy").astype(np.float64)
    frac = (1.0 - window / total).where(total > window)
    return _with_sigmas(
        ds,
        unc,
        mean_free_path_rel_sigma,
        tail_rel_sigma,
        total_intensity=total,
        tail_fraction=frac,
    )
