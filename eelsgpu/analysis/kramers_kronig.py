"""Kramers-Kronig analysis of spectrum images: the dielectric function and thickness of every pixel.

From the single-scattering distribution (SSD) of a low-loss spectrum image this module computes,
per pixel (kk-theory.md eqs. 26-36; Egerton 2011, section 4.2, his program KRAKRO):

* the loss function Im[-1/eps(E)] from the SSD with the angular and relativistic factors of
  eq. 31, normalised by the Kramers-Kronig sum rule (eq. 33) from a refractive index n (eq. 28),
  as a metal (Re[1/eps(0)] = 0), or from a known thickness;
* Re[1/eps(E)] by eq. 32 as a discrete Hilbert transform done with FFTs (Maclaurin's
  odd-offset formula on the odd extension, as a *linear* convolution: the FFT length is at least
  twice the loss window, so nothing wraps around) and eps1, eps2 by eq. 34;
* the absolute thickness from the normalisation (eq. 26);
* the surface-loss correction of eqs. 35-36 by safeguarded Newton steps (a Riemann-Hilbert
  solve with FFTs, see :func:`~eelsgpu.kernels.blocks_kk.kk_kernel`), stopping per pixel;
* derived optical quantities: the absorption coefficient mu(E) = (E/hbar c) [2(|eps| - eps1)]^1/2
  in 1/nm (kk-theory.md after eq. 34; x 1e7 for 1/cm), n(E) and k(E) (n + ik = sqrt(eps)),
  n_eff(E) = (2 eps0 m0 / (pi hbar^2 e^2)) int_0^E E' eps2(E') dE' from the f-sum rule
  (electrons per nm^3, or per atom given the atom density; Egerton 2011 eq. 4.29; for a metal it
  is dominated by the Drude peak of eps2 at E -> 0, i.e. by the low-energy extrapolation), the
  energy where eps1 crosses 0 upwards (of several crossings, the one with the largest loss
  function), the loss-function maximum, and a Cerenkov flag (median eps1 over [E_c, 5 eV] above
  (c/v)^2).

Numerical treatment, and why
----------------------------
*Energy origin.* The analysis runs on the loss grid E_k = k dE, k = 0..K-1, with E_0 = 0 kept
explicitly (Im[-1/eps(0)] = 0; the odd extension puts -E_k beside E_k). When no input channel sits
exactly at 0 eV the SSD is linearly interpolated onto that grid (a shift of less than a channel,
the same for all pixels).

*Low energies.* The sum rule weights the SSD by 1/E, so the residue of the zero-loss peak near
0 eV in deconvolved, noisy data swings the thickness by tens of percent. Both metals and
insulators have Im[-1/eps] proportional to E at small E (Drude: E Gamma/Ep^2; an insulator:
eps2 / eps1(0)^2 with eps2 ~ E), so Im[-1/eps]/E is flat there. Below a cut-off
``low_energy_cutoff_eV`` (default 1.5 eV, three times a typical 0.5 eV ZLP FWHM; the public
function takes 3 FWHM where it knows the FWHM) the loss function is replaced by c E, with c the
mean of Im[-1/eps]/E over [E_c, 2 E_c) of the same pixel. On exact data this changes the sum rule
by O(E_c^2/Ep^2) of the part below E_c (< 0.05 % for the tested models); on noisy data it removes
the 1/E amplification of the residue.

*High energies.* Beyond the window the loss function is extrapolated as A/E^3 (the asymptote of
every damped oscillator, Drude or Lorentz), A fitted by least squares over the last 10 % of the
window. Its contributions to the sum rule (A/(3 E_m^3)) and to Re[1/eps] (closed form, see
:func:`~eelsgpu.kernels.dielectric.tail_re_inverse`) are added analytically, so no padding with model values is needed.
Pixels whose loss function has not decayed at the end of the window are flagged
(``tail_decayed`` False).

Where it is computed
--------------------
This module parses the arguments of :func:`kramers_kronig` and runs the block kernel
:func:`eelsgpu.kernels.blocks_kk.kk_kernel`; the equations have their homes in
:mod:`eelsgpu.kernels.loss_grid` (grid, extrapolations), :mod:`eelsgpu.kernels.sum_rule`
(eqs. 26-29, :func:`~eelsgpu.kernels.sum_rule.sum_rule_thickness_nm`),
:mod:`eelsgpu.kernels.dielectric` (eqs. 31-34), :mod:`eelsgpu.kernels.surface` (eqs. 35-36)
and :mod:`eelsgpu.kernels.optics`.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=0.5,
...     beam_energy_keV=300.0, collection_angle_mrad=10.0, dtype=np.float64)
>>> ds = kramers_kronig(sim["true_ssd"].expand_dims(y=1), zlp_intensity=sim["true_zlp_intensity"],
...     beam_energy_keV=300.0, collection_angle_mrad=10.0, metal=True,
...     variables=("thickness_nm",), device="cpu")
>>> bool(abs(float(ds["thickness_nm"][0]) / float(sim["true_t_nm"]) - 1) < 0.01)
True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..errors import InputError, MissingParameterError
from ..kernels.blocks_kk import DEFAULT_VARIABLES, kk_declaration
from ..kernels.loss_grid import DEFAULT_LOW_ENERGY_CUTOFF_EV, cutoff_index, loss_grid
from ..kernels.sum_rule import sum_rule_normalisation
from ..model import energy_axis, require_param
from ._lowloss import as_map

__all__ = ["KKWarning", "kramers_kronig", "warn_flagged"]


class KKWarning(UserWarning):
    """A Kramers-Kronig result that is computed but deserves care (flagged pixels)."""


def kramers_kronig(
    ssd: xr.Dataset | xr.DataArray,
    zlp_intensity: Any = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    refractive_index: float | None = None,
    metal: bool = False,
    thickness_nm: Any = None,
    iterations: int = 0,
    device: str = "auto",
    *,
    low_energy_cutoff_eV: float | None = None,
    zlp_fwhm_eV: float | None = None,
    min_thickness_nm: float = 20.0,
    thickness_tolerance: float = 1e-3,
    eps_tolerance: float = 1e-2,
    cerenkov_max_eV: float = 5.0,
    atom_density_per_nm3: float | None = None,
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """Kramers-Kronig analysis of every pixel: eps(E), thickness and optical quantities.

    kk-theory.md eqs. 26-36 (Egerton 2011 section 4.2), on array-API kernels
    (:func:`~eelsgpu.kernels.blocks_kk.kk_kernel`) mapped over pixel blocks by
    :func:`eelsgpu.engine.apply_kernel`.
    Give exactly one normalisation: ``refractive_index`` n (insulator or semiconductor, eq. 28),
    ``metal=True`` (Re[1/eps(0)] = 0), or ``thickness_nm`` (a number or a map, nm; 0 or NaN
    pixels, vacuum, are flagged and get NaN).

    Parameters
    ----------
    ssd : xarray.Dataset or DataArray
        What :func:`eelsgpu.deconvolve` returns (variables ``ssd``, ``zlp_intensity``, ``valid``)
        or an SSD DataArray (counts per channel, dims ``(..., "energy")``, energy loss in eV with
        0 eV = zero loss). Use the raw SSD or one reconvolved with a ZLP narrower than the
        features of interest.
    zlp_intensity : map or number, optional
        N0 in counts (default: the Dataset's ``zlp_intensity``); needed for the thickness, for a
        thickness normalisation and for the surface correction.
    beam_energy_keV, collection_angle_mrad : float, optional
        E0 (keV) and beta (mrad); default: the data's attributes.
    refractive_index, metal, thickness_nm
        The normalisation (see above). n < 1 is an error.
    iterations : int
        Maximum surface-correction iterations (eqs. 35-36; 0: none). One iteration is one
        Newton step plus one KK pass, about three single passes of FFT work
        (:func:`~eelsgpu.kernels.blocks_kk.kk_kernel`);
        films of 20-100 nm converge in 3-6, so 10-20 is a sensible limit.
    device : {"auto", "cpu", "gpu"}
    low_energy_cutoff_eV : float, optional
        E_c (eV) below which Im[-1/eps] is extrapolated linearly to 0 (module docstring);
        default 3 ZLP FWHM (``zlp_fwhm_eV``, or the data's ``zlp_fwhm_eV`` attribute), else
        1.5 eV.
    min_thickness_nm, thickness_tolerance, eps_tolerance
        Surface correction: thinner pixels are not corrected; convergence criteria on t and
        eps (relative, see :func:`~eelsgpu.kernels.blocks_kk.kk_kernel`).
    cerenkov_max_eV : float
        Low-energy range (eV) searched for the Cerenkov condition eps1 > (c/v)^2.
    atom_density_per_nm3 : float, optional
        Gives ``n_eff`` per atom (else electrons per nm^3).
    variables : sequence of str, optional
        Which outputs to compute (default: all of
        :data:`~eelsgpu.kernels.blocks_kk.CUBE_OUTPUTS` and
        :data:`~eelsgpu.kernels.blocks_kk.MAP_OUTPUTS`); e.g. ``("eps1", "eps2", "loss_function", "thickness_nm")``.

    Returns
    -------
    xarray.Dataset
        Lazy. Cubes on ``energy`` = k dE (k >= 1, eV, the positive-loss part of the input
        axis): ``eps1``, ``eps2``, ``loss_function``, ``surface_intensity`` (counts),
        ``refractive_index``, ``extinction_coefficient``, ``absorption_coefficient`` (1/nm),
        ``n_eff``; maps: ``thickness_nm``, ``re_inverse_eps0``, ``static_refractive_index``,
        ``plasmon_energy_eV``, ``loss_peak_eV``, ``iterations``, ``converged``,
        ``surface_status``, ``cerenkov``, ``tail_decayed``, ``valid``. Units in ``attrs``.

    Examples
    --------
    >>> import numpy as np, eelsgpu
    >>> sim = eelsgpu.synthetic.low_loss_image(eelsgpu.synthetic.Drude(15.0, 1.0), shape=(2, 2),
    ...     t_over_lambda=0.5, dtype=np.float64, n_channels=1024, dispersion_eV=0.1)
    >>> ds = kramers_kronig(sim["true_ssd"], zlp_intensity=sim["true_zlp_intensity"],
    ...     beam_energy_keV=200.0, collection_angle_mrad=10.0, metal=True, device="cpu")
    >>> bool(abs(float(ds["thickness_nm"][0, 0]) / float(sim["true_t_nm"][0, 0]) - 1) < 0.01)
    True
    """
    if isinstance(ssd, xr.Dataset):
        if "ssd" not in ssd:
            raise InputError(
                "the Dataset has no 'ssd' variable: give eelsgpu.deconvolve's result, an SSD "
                "store, or the SSD as a DataArray"
            )
        si = ssd["ssd"]
        attrs = {**ssd.attrs, **si.attrs}
        if zlp_intensity is None and "zlp_intensity" in ssd:
            zlp_intensity = ssd["zlp_intensity"]
        valid_in = ssd["valid"] if "valid" in ssd else None
        if zlp_fwhm_eV is None:
            zlp_fwhm_eV = attrs.get("zlp_fwhm_eV")
    elif isinstance(ssd, xr.DataArray):
        si, attrs, valid_in = ssd, dict(ssd.attrs), None
        if zlp_fwhm_eV is None:
            zlp_fwhm_eV = attrs.get("zlp_fwhm_eV")
    else:
        raise InputError("kramers_kronig takes an xarray Dataset (eelsgpu.deconvolve) or DataArray")
    si = si.copy()
    si.attrs = {k: v for k, v in attrs.items() if k not in ("long_name", "units", "output")}
    source = attrs.get("source")
    where = f" ({source})" if source else ""
    if "energy" not in si.dims or si.dims[-1] != "energy":
        raise InputError(f"the SSD{where} must have 'energy' as its last dim, not {si.dims}")
    e0 = require_param(si, "beam_energy_keV", beam_energy_keV)
    beta = require_param(si, "collection_angle_mrad", collection_angle_mrad)
    energy = np.asarray(si["energy"].values, dtype=np.float64)
    energy_axis(energy, require_uniform=True, source=source)

    n_norm = sum([refractive_index is not None, bool(metal), thickness_nm is not None])
    if n_norm != 1:
        raise ValueError(
            "give exactly one normalisation: refractive_index=n, metal=True or thickness_nm=t"
        )
    if refractive_index is not None:
        sum_rule_normalisation(refractive_index, False)  # n < 1 -> InputError now, not per block
    if low_energy_cutoff_eV is None:
        if zlp_fwhm_eV is not None and float(zlp_fwhm_eV) > 0:
            low_energy_cutoff_eV = 3.0 * float(zlp_fwhm_eV)
        else:
            low_energy_cutoff_eV = DEFAULT_LOW_ENERGY_CUTOFF_EV
    grid = loss_grid(energy, source=source)
    cutoff_index(grid, float(low_energy_cutoff_eV))
    if iterations < 0:
        raise ValueError("iterations must be >= 0")

    extras: dict[str, Any] = {}
    if zlp_intensity is not None:
        extras["zlp_intensity"] = as_map(zlp_intensity, si, "zlp_intensity")
    elif thickness_nm is not None or iterations > 0:
        raise MissingParameterError(
            f"zlp_intensity (N0) is needed{where} to normalise by a thickness or for the surface "
            "correction: pass zlp_intensity=... or the Dataset eelsgpu.deconvolve returns"
        )
    if thickness_nm is not None:
        extras["thickness_nm"] = as_map(thickness_nm, si, "thickness_nm")
    if valid_in is not None:
        extras["valid"] = as_map(valid_in.astype(np.float64), si, "valid")

    names = tuple(variables) if variables is not None else DEFAULT_VARIABLES
    unknown = set(names) - set(DEFAULT_VARIABLES)
    if unknown:
        raise ValueError(f"unknown KK variables {sorted(unknown)}; known: {DEFAULT_VARIABLES}")
    e_out = grid.energy_eV[1:]
    if metal:
        normalisation = "metal: Re[1/eps(0)] = 0"
    elif refractive_index is not None:
        normalisation = f"refractive index n = {float(refractive_index):g}"
    else:
        normalisation = "known thickness"
    run_attrs = {
        "kk_normalisation": normalisation,
        "kk_low_energy_cutoff_eV": float(low_energy_cutoff_eV),
        "kk_iterations_max": int(iterations),
        "kk_min_thickness_nm": float(min_thickness_nm),
        "kk_tail": "Im[-1/eps] ~ A/E^3 beyond the window, A fitted to its last 10 %",
        "kk_method": "eelsgpu.kramers_kronig (kk-theory.md eqs. 26-36)",
        "kk_ssd_kind": str(attrs.get("output", "unknown")),
        "beam_energy_keV": e0,
        "collection_angle_mrad": beta,
    }
    ds = engine.apply_kernel(
        kk_declaration(e_out),
        si,
        device=device,
        extras=extras,
        attrs=run_attrs,
        beam_energy_keV=e0,
        collection_angle_mrad=beta,
        refractive_index=None if refractive_index is None else float(refractive_index),
        metal=bool(metal),
        iterations=int(iterations),
        low_energy_cutoff_eV=float(low_energy_cutoff_eV),
        min_thickness_nm=float(min_thickness_nm),
        thickness_tolerance=float(thickness_tolerance),
        eps_tolerance=float(eps_tolerance),
        cerenkov_max_eV=float(cerenkov_max_eV),
        atom_density_per_nm3=None if atom_density_per_nm3 is None else float(atom_density_per_nm3),
        variables=names,
    )
    if "energy" in ds.coords:
        ds["energy"].attrs.update({"units": "eV", "long_name": "energy loss"})
    return ds


def warn_flagged(ds: xr.Dataset) -> None:
    """Warn (KKWarning) about pixels whose loss function had not decayed at the window's end, or
    that meet the Cerenkov condition (computes those two maps)."""
    for name, text in (
        ("tail_decayed", "the loss function has not decayed at the end of the window"),
        ("cerenkov", "the Cerenkov condition holds (low-energy eps not to be trusted)"),
    ):
        if name not in ds or "valid" not in ds:
            continue
        flag = np.asarray(ds[name].values)
        valid = np.asarray(ds["valid"].values)
        count = int(np.sum(valid & (~flag if name == "tail_decayed" else flag)))
        if count:
            warnings.warn(f"{count} of {valid.size} pixels: {text}", KKWarning, stacklevel=2)
