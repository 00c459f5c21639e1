"""Fourier-log deconvolution of spectrum images: :func:`deconvolve` (kk-theory.md eqs. 18-25).

The per-block work (the ZLP model, eq. 22 with the unwrapped phase and the tail beyond the
window, the log-ratio t/lambda beside it) is :func:`eelsgpu.kernels.blocks_lowloss.deconvolve_block`
on the kernels of :mod:`eelsgpu.kernels.fourier_log`; this module parses the arguments, picks the
declaration and attaches the provenance.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from .. import engine
from ..kernels.blocks_lowloss import DECONVOLVE
from ..kernels.fourier_log import EXTRAPOLATIONS, OUTPUTS
from ..model import energy_axis
from ._lowloss import mean_free_path, precheck, with_thickness_nm
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
    search_eV: tuple[float, float] = (-5.0, 5.0),
    mean_free_path_nm: float | None = None,
    density_g_cm3: float | None = None,
    zeff: float | None = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    device: str = "auto",
) -> xr.Dataset:
    """Single-scattering distribution of every pixel by Fourier-log deconvolution (eq. 22).

    kk-theory.md eqs. 18-25; Egerton 2011, section 4.1.2. Each pixel's zero-loss peak ``N0 R``
    comes from ``zlp=`` (see :func:`eelsgpu.kernels.zlp.zlp_kernel`), then
    :func:`~eelsgpu.kernels.fourier_log.fourier_log_kernel`
    returns the SSD with the phase of the log unwrapped (right up to t/lambda = 4 and beyond),
    the tail continued to zero beyond the window and the energy origin at 0 eV (eq. 25). Both
    steps are one kernel, run block by block by :func:`eelsgpu.engine.apply_kernel` (lazy,
    streams from disk, on the GPU when there is one).

    Parameters
    ----------
    si : xarray.DataArray
        Spectrum image (..., energy) in counts, uniform increasing energy axis in eV that
        includes the ZLP.
    zlp : str or array
        ``"mirror"``, ``"fit"``, ``"threshold"``, a reference spectrum (1-D, applied to every
        pixel, shifted and scaled) or a per-pixel ZLP cube of the data's shape, in counts.
    output : {"reconvolved-zlp", "ssd", "reconvolved-gaussian", "residual"}
        ``"reconvolved-zlp"`` (default, Egerton's advice for noisy data): the SSD convolved with
        the ZLP where it sits in the data, which amplifies no noise. ``"ssd"``: the raw SSD,
        zero loss at 0 eV (noisy data give noisy high frequencies: it is limited to where the
        ZLP's transform stands above 1e-3 of its peak). ``"reconvolved-gaussian"``: the SSD
        convolved with a unit-area Gaussian of ``fwhm_eV``. ``"residual"``: data - ZLP -
        reconvolved SSD, the plural scattering (a diagnostic).
    fwhm_eV : float, optional
        FWHM (eV) of the Gaussian for ``"reconvolved-gaussian"``.
    extrapolation : {"power-law", "exponential", "none"}
        How the spectrum is continued beyond the window before the transform.
    pad_to : int, optional
        FFT length; default the next 5-smooth length >= 2 n_E.
    search_eV : (float, float)
        Where the ZLP maximum is looked for (eV).
    mean_free_path_nm, density_g_cm3, zeff : float, optional
        For the absolute ``thickness_nm`` map: a known inelastic mean free path (nm), or the
        density (g/cm3, Iakoubovskii 2008 with its angular correction) or effective atomic number
        (Malis 1988) to compute it, as in :func:`eelsgpu.thickness`.
    beam_energy_keV, collection_angle_mrad, convergence_angle_mrad : float, optional
        Override the file's calibration (keV, mrad) for the mean free path.
    device : {"auto", "cpu", "gpu"}

    Returns
    -------
    xarray.Dataset
        ``ssd`` (..., energy): the requested output in counts per channel on the input's energy
        axis (integral N0 t/lambda for ``"ssd"``; the ``output`` attribute says which);
        ``zlp_intensity`` (N0, counts), ``zlp_centre_eV`` (eV) and ``valid`` maps;
        ``t_over_lambda``, the relative thickness ln(I_t/N0) made beside the SSD in the same pass
        (the log-ratio of :func:`eelsgpu.thickness`, the scattering beyond the window
        from the spectrum's power-law tail or, where that fails, from the SSD; see
        :func:`~eelsgpu.kernels.log_ratio.log_ratio_with_ssd_tail`; not for ``"residual"``),
        and ``thickness_nm`` =
        t/lambda x the mean free path when one is given. Pixels with no usable ZLP, NaN counts
        or an undefined log are ``valid = False`` with NaN everywhere. The raw SSD (``"ssd"``)
        has zero loss at 0 eV whatever the ZLP's drift: it is the aligned result, with the drift
        in ``zlp_centre_eV``.

    Raises
    ------
    EnergyAxisError
        The energy axis is not uniform and increasing (naming the file).
    NoZeroLossPeakError
        No pixel can have a zero-loss peak (the window does not reach ``search_eV``, or a
        one-block image has none), naming the file.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsgpu import synthetic
    >>> sim = synthetic.low_loss_image(synthetic.Drude(15.0, 1.0), t_over_lambda=1.0,
    ...                                shape=(2, 2), n_channels=512, dispersion_eV=0.1)
    >>> ds = deconvolve(sim["signal"], zlp="fit", output="ssd", device="cpu")
    >>> t = ds["ssd"].sum("energy") / ds["zlp_intensity"]
    >>> bool(np.allclose(t, 1.0, atol=0.02))
    True
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    if extrapolation not in EXTRAPOLATIONS:
        raise ValueError(f"extrapolation must be one of {EXTRAPOLATIONS}, not {extrapolation!r}")
    if output == "reconvolved-gaussian" and not (fwhm_eV is not None and fwhm_eV > 0):
        raise ValueError("output='reconvolved-gaussian' needs fwhm_eV > 0 (eV)")
    source = si.attrs.get("source")
    energy_axis(si["energy"].values, require_uniform=True, source=source)
    params, extras = resolve_zlp(si, zlp)
    attrs = {
        "deconvolution": "Fourier-log (kk-theory.md eq. 22), unwrapped phase",
        "deconvolution_output": output,
        "zlp_method": params["method"],
        "tail_extrapolation": extrapolation,
    }
    if fwhm_eV is not None:
        attrs["reconvolution_fwhm_eV"] = float(fwhm_eV)
    # no pixel can have a ZLP (the window starts above the search range): an error naming the
    # file, as thickness gives, not a store of NaN
    precheck(si, params, search_eV)

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
    ds = engine.apply_kernel(
        DECONVOLVE,
        si,
        device=device,
        extras=extras,
        attrs=attrs,
        output=output,
        fwhm_eV=fwhm_eV,
        extrapolation=extrapolation,
        pad_to=pad_to,
        search_eV=tuple(search_eV),
        **params,
    )
    if lam is not None:
        ds = with_thickness_nm(ds, lam, how)
    return ds
