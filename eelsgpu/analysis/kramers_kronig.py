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

*What goes in.* Any result of :func:`eelsgpu.deconvolve`, or a bare SSD. Outputs aligned at
0 eV (``"band-limited"``, the default KK input; ``"ssd"``; ``"reconvolved-gaussian"``) are
analysed on their energy axis as the energy loss. ``"reconvolved-zlp"`` sits where each pixel's
ZLP sat on the data's axis: every row is first moved by its ``zlp_centre_eV`` (from the
Dataset, or given) so that the analysis runs on energy relative to the ZLP centre, whatever the
axis offset; without the centres it is refused with an error saying what to give. ``"residual"``
is refused. A bare SSD DataArray with no ``output`` attribute is taken to be on a loss axis.

*Low energies.* The sum rule weights the SSD by 1/E, so the residue of the zero-loss peak near
0 eV in deconvolved, noisy data swings the thickness by tens of percent. Both metals and
insulators have Im[-1/eps] proportional to E at small E (Drude: E Gamma/Ep^2; an insulator:
eps2 / eps1(0)^2 with eps2 ~ E), so Im[-1/eps]/E is flat there. Below a cut-off E_c the loss
function is replaced by c E, with c the mean of Im[-1/eps]/E over [E_c, 2 E_c) of the same
pixel. E_c is 3 x each pixel's measured ZLP FWHM (the deconvolution's ``zlp_fwhm_eV`` map, or
``zlp_fwhm_eV=``), or ``low_energy_cutoff_eV`` for every pixel when given; with neither, 1.5 eV
(three times a typical 0.5 eV ZLP FWHM) and a :class:`KKWarning`. The cut-off of every pixel
is returned (``low_energy_cutoff_eV``). On exact data this changes the sum rule
by O(E_c^2/Ep^2) of the part below E_c (< 0.05 % for the tested models); on noisy data it removes
the 1/E amplification of the residue.

*High energies.* Beyond the window the loss function is extrapolated as A/E^3 (the asymptote of
every damped oscillator, Drude or Lorentz), A fitted by least squares over the last 10 % of the
window. Its contributions to the sum rule (A/(3 E_m^3)) and to Re[1/eps] (closed form, see
:func:`~eelsgpu.kernels.dielectric.tail_re_inverse`) are added analytically, so no padding with model values is needed.
Pixels whose loss function has not decayed at the end of the window are flagged
(``tail_decayed`` False).

*Sign and trust.* Im[-1/eps] and eps2 are constrained >= 0 in the solve; the ``quality`` map
(bits of :mod:`eelsgpu.kernels.quality`) says where a result cannot be trusted, and ``valid`` is
False where a fatal bit is set: EPS2_NEGATIVE (the constraint carried more than 10 % of the
sum rule), KK_THICKNESS_DISAGREES (beside a log-ratio thickness, beyond a factor 1.5),
SURFACE_NOT_CORRECTED (eps below ``eps_trusted_from_eV``, the plasmon, is not to be trusted),
and the deconvolution's own bits. Why these numbers: :func:`eelsgpu.kernels.blocks_kk.kk_kernel`.

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
>>> from eelsgpu.kernels import quality
>>> quality.names(int(ds["quality"][0])), bool(ds["valid"][0])  # a 74 nm film: eq. 36 matters
(['SURFACE_NOT_CORRECTED'], True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..errors import InputError, MissingParameterError
from ..kernels import quality as qbits
from ..kernels.blocks_kk import (
    ALL_VARIABLES,
    CUBE_OUTPUTS,
    DEFAULT_CUBES,
    EPS2_NEGATIVE_LIMIT,
    MAP_OUTPUTS,
    SURFACE_SHARE_LIMIT,
    THICKNESS_FACTOR,
    kk_declaration,
)
from ..kernels.blocks_lowloss import ALIGNED_OUTPUTS  # zero loss at 0 eV: analysed as they are
from ..kernels.blocks_replicas import KK_ANALYTIC_TARGETS, kk_with_analytic, with_replicas
from ..kernels.loss_grid import DEFAULT_LOW_ENERGY_CUTOFF_EV, cutoff_index, loss_grid
from ..kernels.sum_rule import sum_rule_normalisation
from ..kernels.uncertainty import (
    eps_normalisation_sigmas,
    normalisation_rel_sigma,
    plasmon_crossing_shift_eV,
)
from ..model import energy_axis, require_param
from . import _checks as chk
from ._lowloss import as_map, check_calibration, mean_free_path, spectrum_input, ssd_input
from ._uncertainty import add_systematic, parse_uncertainty

__all__ = [
    "ALIGNED_OUTPUTS",
    "CUTOFF_FWHMS",
    "KKWarning",
    "kramers_kronig",
    "output_names",
    "warn_flagged",
]

#: The low-energy cut-off in ZLP FWHMs.
CUTOFF_FWHMS = 3.0


class KKWarning(UserWarning):
    """A Kramers-Kronig result that is computed but deserves care (flagged pixels)."""


#: The outputs that get a replica sigma (issue 14), where computed.
KK_SIGMA_TARGETS = (*KK_ANALYTIC_TARGETS, "loss_peak_eV")
#: What the per-channel eps sigmas are proven for (sigma/scatter over 300 realisations).
KK_EPS_SIGMA_COVERAGE = (
    "sigma/scatter 0.92-1.12 at 1e5 and 0.93-1.06 at 1e6 counts in the ZLP (eps1, eps2, the loss "
    "function and n(E) at Ep/4 to 2 Ep, Drude); NOT at 1e4 (0.48-2.6 where the SSD has 0-2 counts per channel: replicas "
    "of so few counts misstate their noise)"
)
#: What the loss-peak energy's replica sigma is proven for.
KK_LOSS_PEAK_SIGMA_COVERAGE = (
    "sigma/scatter 0.93-1.08 at 1e6 counts in the ZLP (Drude, 0.1 eV channels); 0.81-0.90 at "
    "1e5, where the sigma is 0.2 channel and the parabola's vertex jumps when the maximum "
    "channel changes (a heavy-tailed scatter: +-1 sigma still holds 70-73 %, +-2 sigma 93-95 %)"
)
#: What the analytic sigmas are proven for (tests/analysis/test_kk_analytic_uncertainty.py).
KK_ANALYTIC_SIGMA_COVERAGE = (
    "linearised (analytic): sigma/scatter 0.85-1.15 and +-1/+-2 sigma 62-74 %/92-98 % at 1e5 "
    "and 1e6 counts in the ZLP (Drude metal, Lorentz insulator; eps1, eps2, loss function, "
    "n(E) at Ep/4 to 2 Ep, thickness, plasmon energy), analytic/replicas within 20 %; NaN where "
    "a channel holds fewer than 10 electrons or 1/eps moves by more than 20 % of itself"
)
#: The KK kernel's per-pixel extras (repeated for each replica).
KK_PER_PIXEL = (
    "zlp_intensity",
    "thickness_nm",
    "valid",
    "zlp_centre_eV",
    "cutoff_eV",
    "log_ratio_thickness_nm",
    "upstream_quality",
)


def _kind(attrs: dict[str, Any]) -> str | None:
    """Which deconvolution output an SSD is (its ``deconvolution_output`` / ``output``)."""
    kind = attrs.get("deconvolution_output", attrs.get("output"))
    return None if kind is None else str(kind)


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
    zlp_fwhm_eV: Any = None,
    zlp_centre_eV: Any = None,
    log_ratio_thickness_nm: Any = None,
    mean_free_path_nm: float | None = None,
    density_g_cm3: float | None = None,
    min_thickness_nm: float = 20.0,
    thickness_tolerance: float = 1e-3,
    eps_tolerance: float = 1e-2,
    cerenkov_max_eV: float = 5.0,
    atom_density_per_nm3: float | None = None,
    nonnegative: bool = True,
    thickness_factor: float = THICKNESS_FACTOR,
    eps2_negative_limit: float = EPS2_NEGATIVE_LIMIT,
    surface_share_limit: float = SURFACE_SHARE_LIMIT,
    cubes: Sequence[str] | str | None = None,
    variables: Sequence[str] | None = None,
    surface: str = "iterate",
    surface_fit: dict[str, Any] | None = None,
    uncertainty: str | None = None,
    n_replicas: int | None = None,
    gain: float | None = None,
    noise_variance: Any = None,
    seed: int = 0,
    deconvolve: dict[str, Any] | None = None,
    refractive_index_rel_sigma: float | None = None,
    thickness_rel_sigma: Any = None,
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
        What :func:`eelsgpu.deconvolve` returns, any ``output`` but ``"residual"`` (variables
        ``ssd``, ``zlp_intensity``, ``valid``, and where present ``zlp_centre_eV``,
        ``zlp_fwhm_eV``, ``quality``, ``t_over_lambda``, ``thickness_nm``), or an SSD DataArray
        (counts per channel, dims ``(..., "energy")``, energy loss in eV with 0 eV = zero loss,
        or with an ``output`` attribute naming the deconvolution output it is). The default
        and best input is ``deconvolve(..., output="band-limited")``: the SSD band-limited by
        a Gaussian of each pixel's measured ZLP FWHM (module docstring).
    zlp_intensity : map or number, optional
        N0 in counts (default: the Dataset's ``zlp_intensity``); needed for the thickness, for a
        thickness normalisation, for the surface correction and its check.
    beam_energy_keV, collection_angle_mrad : float, optional
        E0 (keV) and beta (mrad); default: the data's attributes.
    refractive_index, metal, thickness_nm
        The normalisation (see above). n < 1 is an error.
    refractive_index_rel_sigma, thickness_rel_sigma : optional
        The relative one-sigma uncertainty of the refractive index or the thickness given as
        the normalisation (a number; the thickness's may be a map): propagated to first order
        through the normalisation factor K of Im[-1/eps] = K S (eqs. 28, 33 for n: K is
        proportional to 1 - 1/n^2, so dK/K = 2 (dn/n) / (n^2 - 1); eq. 31 for t: dK/K = dt/t)
        as the systematic ``<name>_sigma_systematic`` (attrs ``parts``: ``normalisation``) of
        eps1, eps2 (1/eps = 1 + K g gives d eps = (eps^2 - eps) dK/K), the loss function
        (dK/K of it), n(E), the KK thickness (eq. 26: dK/K of it with n; the given sigma with
        t) and the plasmon energy (eps1's shift over its slope at the zero crossing). With the
        surface correction the factor also moves the surface term: first order in K only
        (said in the attrs).
    iterations : int
        Maximum surface-correction iterations (eqs. 35-36; 0: none). One iteration is one
        Newton step plus one KK pass, about three single passes of FFT work
        (:func:`~eelsgpu.kernels.blocks_kk.kk_kernel`);
        films of 20-100 nm converge in 3-6, so 10-20 is a sensible limit.
    device : {"auto", "cpu", "gpu"}
    low_energy_cutoff_eV : float, optional
        E_c (eV) for every pixel, below which Im[-1/eps] is extrapolated linearly to 0 (module
        docstring); default 3 x each pixel's ZLP FWHM (``zlp_fwhm_eV``), else 1.5 eV.
    zlp_fwhm_eV : map or number, optional
        The measured ZLP FWHM (eV) of each pixel; default the Dataset's ``zlp_fwhm_eV`` map (or
        attribute).
    zlp_centre_eV : map or number, optional
        Each pixel's ZLP centre (eV) on the SSD's axis, for a ``"reconvolved-zlp"`` SSD given
        as a DataArray (a Dataset brings its own).
    log_ratio_thickness_nm : map or number, optional
        The log-ratio thickness (nm) to compare with; default the Dataset's ``thickness_nm``
        (deconvolve run with a mean free path), or its ``t_over_lambda`` x
        ``mean_free_path_nm`` (or the Iakoubovskii mean free path of ``density_g_cm3``).
    mean_free_path_nm, density_g_cm3 : float, optional
        The inelastic mean free path (nm), or the density (g/cm3) to compute it (Iakoubovskii
        2008), for the log-ratio thickness.
    min_thickness_nm, thickness_tolerance, eps_tolerance
        Surface correction: thinner pixels are not corrected; convergence criteria on t and
        eps (relative, see :func:`~eelsgpu.kernels.blocks_kk.kk_kernel`).
    cerenkov_max_eV : float
        Low-energy range (eV) searched for the Cerenkov condition eps1 > (c/v)^2.
    atom_density_per_nm3 : float, optional
        Gives ``n_eff`` per atom (else electrons per nm^3).
    nonnegative : bool
        Constrain Im[-1/eps] (and so eps2) >= 0 in the solve (default; False only to study the
        unconstrained result).
    thickness_factor, eps2_negative_limit, surface_share_limit : float
        Thresholds of KK_THICKNESS_DISAGREES (a factor > 1), EPS2_NEGATIVE and
        SURFACE_NOT_CORRECTED (shares, 0 to 1); defaults in :mod:`eelsgpu.kernels.blocks_kk`.
    cubes : sequence of str, or "all", optional
        Which per-pixel spectra (cubes) to compute and keep, beside every map. **Default:
        ``("eps1", "eps2")``** (:data:`~eelsgpu.kernels.blocks_kk.DEFAULT_CUBES`); any of
        ``eps1``, ``eps2``, ``loss_function``, ``surface_intensity``, ``refractive_index``,
        ``extinction_coefficient``, ``absorption_coefficient``, ``n_eff``; ``"all"`` for the
        eight; ``()`` for maps only. A cube not asked for is not computed: each costs a cube's
        memory, its copy back from a GPU (4 bytes per channel and spectrum) and its store.
    variables : sequence of str, optional
        Instead of ``cubes``: exactly which outputs (cubes and maps) to compute, e.g.
        ``("thickness_nm",)``; ``quality`` and ``valid`` always. Give one of ``cubes`` and
        ``variables``.
    surface : {"iterate", "fit"}
        ``"iterate"`` (default): the surface correction is the iteration of eqs. 35-36
        (``iterations`` steps; 0: none), as always. ``"fit"``: the same, then the pixels it
        flags SURFACE_NOT_CORRECTED (or leaves not converged) are refitted by
        :func:`eelsgpu.fit_dielectric` (thin-film-theory.md; seeded from KK) and, where the fit
        is valid, its eps, loss function and thickness replace KK's there
        (:func:`eelsgpu.analysis.film.surface_fit`: ``surface_method`` map, fit flags at
        ``quality`` bits 14-23). Computed at once, not lazily.
    surface_fit : dict, optional
        Keyword arguments of :func:`eelsgpu.fit_dielectric` for ``surface="fit"`` (``model``,
        ``retardation``, ``oxide_nm``, ``window_eV`` ...; default its own).
    uncertainty : {None, "analytic", "replicas", "replicas:K"}
        Counting sigmas (:mod:`eelsgpu.analysis._uncertainty`; none by default: K replicas
        cost K analyses). ``"replicas"``: ``n_replicas`` noise replicas of every pixel's SSD run
        through the same KK kernel (:func:`eelsgpu.kernels.blocks_replicas.with_replicas`),
        giving ``eps1_sigma``, ``eps2_sigma`` (per channel, for those cubes returned),
        ``thickness_nm_sigma`` and ``plasmon_energy_eV_sigma`` (where those outputs are
        computed). The replicas are Poisson on **the SSD's own values taken as counts**
        (``g Poisson(SSD / g)``, EELSfitter-style), with ``gain`` g the SSD's data units per
        counted electron, or Gaussian with ``noise_variance`` (data units squared, on the SSD's
        channels): KK's input is an SSD, not the recorded counts, and this is the one noise
        model that needs nothing the SSD does not carry. So the sigma covers the counting noise
        of the SSD's channels, channels independent; it does NOT cover the noise the
        deconvolution itself added or removed (its amplification, the band-limit's smoothing
        and the channels' correlation: give ``noise_variance=`` measured for the SSD, e.g.
        from ``deconvolve(..., uncertainty="replicas")``'s ``ssd_sigma`` squared, for that
        part's per-channel size), nor N0's own noise (``zlp_intensity`` is held fixed: its
        relative noise, 1/sqrt(N0), is far below the SSD's), nor the ZLP model, the tail
        beyond the window or the normalisation (n, a thickness) the user gives.
        Replicas also give ``loss_function_sigma``, ``refractive_index_sigma`` and
        ``loss_peak_eV_sigma``. Not with ``surface="fit"`` (the fit's eps would carry KK's
        sigma). Proven (sigma / scatter of 300 realisations within 0.85-1.15) at 1e5 and 1e6
        counts in the ZLP; at 1e4 the thickness and plasmon-energy sigmas hold (0.99, 0.90)
        but eps at a few eV and at 2 Ep, where the SSD has 0-2 counts per channel, does not:
        the sigma cubes say so (attrs ``coverage``).
        ``"analytic"``: the same noise model propagated by the linearisation of the KK pass
        (:func:`eelsgpu.kernels.blocks_replicas.kk_analytic_sigmas`: Im[-1/eps] is the SSD
        times the sum-rule normalisation, Re[1/eps] its Hilbert transform, so with independent
        channels the variances are the squared Hilbert kernel convolved with the channel
        variance plus rank-one terms of the normalisation, the low-energy slope and the tail
        fit, all by FFT; then eq. 34's Jacobian), for ``eps1``, ``eps2``, ``loss_function``,
        ``refractive_index`` (per channel), ``thickness_nm`` and ``plasmon_energy_eV``. Cost
        (benchmarks/bench_uncertainty.py, 2 cores): with cubes 5-10x the analysis (five FFT
        rows and about a hundred array passes per pixel, against the analysis's two rows:
        above the issue's 2x, but 10-20x cheaper than 64 replicas); maps only
        (``variables=("thickness_nm", ...)``) 1.2-2.7x. NaN where the linearisation is not honest: a
        channel with fewer than 10 electrons around it or whose 1/eps moves by more than 20 %,
        a plasmon sigma above 0.2 channel. No ``loss_peak_eV_sigma`` (a grid maximum whose
        channel jumps: replicas). Refused with the surface correction (``iterations`` > 0 or
        ``surface="fit"``: its Newton steps are not linearised). Proven at 1e5 and 1e6 counts
        on a Drude metal and a Lorentz insulator (sigma/scatter 0.85-1.15, analytic / replicas
        within 20 %, attrs ``coverage``).
    n_replicas, gain, noise_variance, seed
        Replicas per pixel (default 100); g (default: estimated from the SSD's own channel
        noise, which for a deconvolved SSD is not Poisson: give it); a measured variance; the
        replica seed (per pixel, so the sigmas do not depend on the chunking).
    deconvolve : dict, optional
        ``ssd`` is then the **recorded** low-loss spectrum image: it is deconvolved first by
        :func:`eelsgpu.deconvolve` with these options (default ``output="band-limited"``; not
        ``uncertainty``) and the result analysed. With ``uncertainty="replicas"`` the replicas
        are drawn from the recorded counts (its gain estimated from the recorded spectra, or
        ``gain``/``noise_variance`` given for them) and each goes through the same deconvolution
        and KK analysis (:mod:`eelsgpu.analysis._chain`): end to end, the sigmas cover the
        counting noise of the whole chain -- N0 and the ZLP's shape, the Fourier-log's noise
        amplification, the band limit's channel correlation, the KK pass -- which replicas of
        an SSD cannot (their eps sigmas were 0.01-0.28 of the true scatter on a band-limited
        SSD, measured). ``"analytic"`` is refused here (the roll-off is not linearised).

    Returns
    -------
    xarray.Dataset
        Lazy for a dask input (a store: computed when written or on ``.compute()``); computed
        at once, NumPy-backed, for an SSD in memory (:mod:`eelsgpu.engine.blocks`, the eager
        path; ``ssd.chunk()`` for the lazy one). Cubes on ``energy`` = k dE (k >= 1, eV, the positive-loss part of the input
        axis), by default ``eps1`` and ``eps2`` only; asked for with ``cubes``:
        ``loss_function``, ``surface_intensity`` (counts), ``refractive_index``,
        ``extinction_coefficient``, ``absorption_coefficient`` (1/nm), ``n_eff``; maps:
        ``thickness_nm``, ``re_inverse_eps0``, ``static_refractive_index``,
        ``plasmon_energy_eV``, ``loss_peak_eV``, ``iterations``, ``converged``,
        ``surface_status``, ``cerenkov``, ``tail_decayed``, ``low_energy_cutoff_eV``,
        ``eps2_negative_fraction``, ``eps2_negative_weight``, ``thickness_ratio``,
        ``surface_share``, ``eps_trusted_from_eV``, ``quality`` (uint32 bitmask, the bit table
        in its attributes) and ``valid`` (analysed and no fatal bit). Units in ``attrs``.
        With ``uncertainty``: ``<name>_sigma`` (same units, attrs ``sigma_of``, ``part``,
        ``uncertainty``) and the Dataset attrs ``uncertainty``, ``noise_model``,
        ``gain_per_electron``, ``gain_source``.

    Raises
    ------
    InputError
        A number out of range (naming it and its unit; ``thickness_nm`` a positive number, or
        a map of positive, 0 or NaN values), a ``"residual"`` output, a ``"reconvolved-zlp"``
        SSD without its ZLP centres, or an SSD that is not a DataArray with an energy axis
        (a NumPy array, empty or complex data).

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
    if deconvolve is not None:  # the recorded image: deconvolved first, replicas end to end
        from ._chain import kramers_kronig_from_raw

        options = {
            k: v
            for k, v in locals().items()
            if k not in ("ssd", "deconvolve", "kramers_kronig_from_raw")
        }
        return kramers_kronig_from_raw(ssd, deconvolve, options, kramers_kronig, KK_SIGMA_TARGETS)
    if surface not in ("iterate", "fit"):  # issue 15: the film fit where the iteration fails
        raise InputError(f"surface must be 'iterate' or 'fit', not {surface!r}")
    dataset, si, attrs = ssd_input(ssd, "kramers_kronig")
    # a DataArray with an energy axis (moved last), real numbers, not empty (an SSD: no ZLP to
    # judge its energy scale by)
    si = spectrum_input(si, "kramers_kronig", raw=False)

    def from_dataset(name: str) -> Any:
        return dataset[name] if dataset is not None and name in dataset else None

    si = si.copy(deep=False)  # (new attrs below; the data are not copied)
    si.attrs = {k: v for k, v in attrs.items() if k not in ("long_name", "units", "output")}
    source = attrs.get("source")
    where = f" ({source})" if source else ""
    e0 = chk.positive(
        "beam_energy_keV", require_param(si, "beam_energy_keV", beam_energy_keV), "keV"
    )
    beta = chk.positive(
        "collection_angle_mrad",
        require_param(si, "collection_angle_mrad", collection_angle_mrad),
        "mrad",
    )
    iterations = chk.positive_int("iterations", iterations, 0)
    min_thickness_nm = chk.at_least("min_thickness_nm", min_thickness_nm, 0.0, "nm")
    thickness_tolerance = chk.positive("thickness_tolerance", thickness_tolerance)
    eps_tolerance = chk.positive("eps_tolerance", eps_tolerance)
    cerenkov_max_eV = chk.positive("cerenkov_max_eV", cerenkov_max_eV, "eV")
    atom_density_per_nm3 = chk.optional(
        chk.positive, "atom_density_per_nm3", atom_density_per_nm3, "atoms/nm^3"
    )
    low_energy_cutoff_eV = chk.optional(
        chk.positive, "low_energy_cutoff_eV", low_energy_cutoff_eV, "eV"
    )
    thickness_factor = chk.at_least("thickness_factor", thickness_factor, 1.0)
    eps2_negative_limit = chk.in_range("eps2_negative_limit", eps2_negative_limit, 0.0, 1.0)
    surface_share_limit = chk.positive("surface_share_limit", surface_share_limit)
    check_calibration(mean_free_path_nm=mean_free_path_nm, density_g_cm3=density_g_cm3)
    _check_map("thickness_nm", thickness_nm, "nm", zero_ok=True)
    _check_map("zlp_intensity", zlp_intensity, "counts")
    _check_map("zlp_fwhm_eV", zlp_fwhm_eV, "eV")
    _check_map("log_ratio_thickness_nm", log_ratio_thickness_nm, "nm", zero_ok=True)
    if zlp_centre_eV is not None and np.ndim(zlp_centre_eV) == 0:
        chk.in_range("zlp_centre_eV", zlp_centre_eV, -1e6, 1e6, "eV")
    energy_axis(
        np.asarray(si["energy"].values, dtype=np.float64), require_uniform=True, source=source
    )

    n_norm = sum([refractive_index is not None, bool(metal), thickness_nm is not None])
    if n_norm != 1:
        raise ValueError(
            "give exactly one normalisation: refractive_index=n, metal=True or thickness_nm=t"
        )
    if refractive_index is not None:
        sum_rule_normalisation(refractive_index, False)  # n < 1 -> InputError now, not per block
    if refractive_index_rel_sigma is not None:
        if refractive_index is None:
            raise InputError("refractive_index_rel_sigma needs refractive_index=n")
        chk.in_range("refractive_index_rel_sigma", refractive_index_rel_sigma, 0.0, 1.0)
    if thickness_rel_sigma is not None:
        if thickness_nm is None:
            raise InputError("thickness_rel_sigma needs thickness_nm=t")
        if np.ndim(thickness_rel_sigma) == 0:
            chk.in_range("thickness_rel_sigma", thickness_rel_sigma, 0.0, 1.0)
        else:
            _check_map("thickness_rel_sigma", thickness_rel_sigma, "", zero_ok=True)

    extras: dict[str, Any] = {}
    # what the SSD is, and so on which energy it is analysed
    kind = _kind(attrs)
    if kind == "residual":
        raise InputError(
            f"the input{where} is deconvolve's 'residual' output (the plural scattering), not "
            "an SSD: deconvolve with output='band-limited' for Kramers-Kronig analysis"
        )
    if kind == "reconvolved-zlp":
        centre = zlp_centre_eV if zlp_centre_eV is not None else from_dataset("zlp_centre_eV")
        if centre is None:
            raise InputError(
                f"the SSD{where} is deconvolve's 'reconvolved-zlp' output, which sits where each "
                "pixel's ZLP sat on the data's axis, and its ZLP centres are not known: give the "
                "Dataset deconvolve returned (it holds zlp_centre_eV), pass zlp_centre_eV=..., or "
                "deconvolve with output='band-limited' (the default KK input)"
            )
        centre = as_map(centre, si, "zlp_centre_eV")
        # the analysis axis is the stored one less a common origin (the ZLP centre of the first
        # pixels that have one; one block of the centres is computed for it), and each row is
        # moved by its own centre's distance from that origin: zero loss lands at 0 eV whatever
        # the axis offset, even where the stored axis does not hold 0 eV at all
        origin = _common_origin(centre)
        si = si.assign_coords(energy=si["energy"].values - origin)
        si["energy"].attrs.update(units="eV", long_name="energy loss")
        extras["zlp_centre_eV"] = centre - origin
        on = (
            "energy relative to each pixel's zlp_centre_eV (reconvolved-zlp; common origin "
            f"{origin:.6g} eV on the stored axis)"
        )
    else:
        on = "the SSD's energy axis as energy loss" + (f" ({kind})" if kind else "")

    # the low-energy cut-off: given, else 3 x each pixel's ZLP FWHM, else the default
    if low_energy_cutoff_eV is not None:
        cut_scalar = float(low_energy_cutoff_eV)
        cut_how = f"{cut_scalar:g} eV (given)"
    else:
        cut_scalar = DEFAULT_LOW_ENERGY_CUTOFF_EV
        fwhm = zlp_fwhm_eV
        if fwhm is None:
            fwhm = from_dataset("zlp_fwhm_eV")
        if fwhm is None:
            fwhm = attrs.get("zlp_fwhm_eV")
        if fwhm is not None:
            extras["cutoff_eV"] = CUTOFF_FWHMS * as_map(fwhm, si, "zlp_fwhm_eV")
            cut_how = f"{CUTOFF_FWHMS:g} x each pixel's measured ZLP FWHM (zlp_fwhm_eV)"
        else:
            cut_how = f"{cut_scalar:g} eV (default: no ZLP FWHM known)"
            warnings.warn(
                f"no ZLP FWHM is known for the SSD{where}: the low-energy cut-off is "
                f"{cut_scalar:g} eV for every pixel; give zlp_fwhm_eV=... (or deconvolve's "
                "Dataset) for 3 FWHM per pixel, or low_energy_cutoff_eV=...",
                KKWarning,
                stacklevel=2,
            )
    grid = loss_grid(np.asarray(si["energy"].values, dtype=np.float64), source=source)
    cutoff_index(grid, cut_scalar)

    if zlp_intensity is None:
        zlp_intensity = from_dataset("zlp_intensity")
    if zlp_intensity is not None:
        extras["zlp_intensity"] = as_map(zlp_intensity, si, "zlp_intensity")
    elif thickness_nm is not None or iterations > 0:
        raise MissingParameterError(
            f"zlp_intensity (N0) is needed{where} to normalise by a thickness or for the surface "
            "correction: pass zlp_intensity=... or the Dataset eelsgpu.deconvolve returns"
        )
    if thickness_nm is not None:
        extras["thickness_nm"] = as_map(thickness_nm, si, "thickness_nm")
    valid_in = from_dataset("valid")
    if valid_in is not None:
        extras["valid"] = as_map(valid_in.astype(np.float64), si, "valid")
    upstream = from_dataset("quality")
    if upstream is not None:
        extras["upstream_quality"] = as_map(upstream.astype(np.float64), si, "quality")
    t_lr, t_lr_how = _log_ratio_thickness(
        si, dataset, log_ratio_thickness_nm, mean_free_path_nm, density_g_cm3, e0, beta
    )
    if t_lr is not None:
        extras["log_ratio_thickness_nm"] = as_map(t_lr, si, "log_ratio_thickness_nm")

    names = output_names(cubes, variables)
    e_out = grid.energy_eV[1:]
    decl = kk_declaration(e_out)
    kernel_params: dict[str, Any] = {}
    unc = parse_uncertainty(si, uncertainty, n_replicas, gain, noise_variance, seed)
    misses_deconvolution = unc.method is not None and kind is not None and noise_variance is None
    if misses_deconvolution:
        # measured (analysis/_chain.py): on a band-limited SSD the SSD-as-counts sigmas of eps
        # were 0.01-0.28 of the scatter of eps over raw realisations
        warnings.warn(
            f"the {unc.label} sigmas of this deconvolved SSD{where} treat its values as counts: "
            "they miss the deconvolution's own noise (its amplification, the band limit's "
            "channel correlation, N0) and can be many times too small; pass the recorded "
            "spectrum image with deconvolve={...} for replicas end to end",
            KKWarning,
            stacklevel=2,
        )
    if unc.method == "analytic":
        if int(iterations) > 0 or surface == "fit":
            raise InputError(
                "uncertainty='analytic' is not offered with the surface correction "
                "(iterations > 0 or surface='fit'): its Newton steps are not linearised; use "
                "uncertainty='replicas' (or 'replicas:K'), or iterations=0"
            )
        decl = kk_with_analytic(decl, [t for t in KK_ANALYTIC_TARGETS if t in names])
        extras.update(unc.extras(si))
        kernel_params.update(unc.kernel_params())
    if unc.method == "replicas":
        if surface == "fit":
            raise InputError(
                "uncertainty='replicas' with surface='fit': the film fit's eps would carry KK's "
                "sigma; use surface='iterate' for the sigmas"
            )
        targets = [t for t in KK_SIGMA_TARGETS if t in names]
        decl = with_replicas(decl, targets, per_pixel=KK_PER_PIXEL)
        extras.update(unc.extras(si))
        kernel_params.update(unc.kernel_params())
    if metal:
        normalisation = "metal: Re[1/eps(0)] = 0"
    elif refractive_index is not None:
        normalisation = f"refractive index n = {float(refractive_index):g}"
    else:
        normalisation = "known thickness"
    run_attrs = {
        "kk_normalisation": normalisation,
        "kk_input": on,
        "kk_low_energy_cutoff": cut_how,
        "kk_low_energy_cutoff_eV": cut_scalar,
        "kk_iterations_max": int(iterations),
        "kk_min_thickness_nm": float(min_thickness_nm),
        "kk_tail": "Im[-1/eps] ~ A/E^3 beyond the window, A fitted to its last 10 %",
        "kk_method": "eelsgpu.kramers_kronig (kk-theory.md eqs. 26-36)",
        "kk_ssd_kind": kind or "unknown",
        "kk_sign": "Im[-1/eps] >= 0 constrained in the solve" if nonnegative else "free",
        "kk_eps2_negative_limit": float(eps2_negative_limit),
        "kk_thickness_factor": float(thickness_factor),
        "kk_log_ratio_thickness": t_lr_how,
        "kk_surface_share_limit": float(surface_share_limit),
        "beam_energy_keV": e0,
        "collection_angle_mrad": beta,
        **unc.attrs(),
    }
    ds = engine.apply_kernel(
        decl,
        si,
        device=device,
        extras=extras,
        attrs=run_attrs,
        beam_energy_keV=e0,
        collection_angle_mrad=beta,
        refractive_index=None if refractive_index is None else float(refractive_index),
        metal=bool(metal),
        iterations=int(iterations),
        low_energy_cutoff_eV=cut_scalar,
        min_thickness_nm=float(min_thickness_nm),
        thickness_tolerance=float(thickness_tolerance),
        eps_tolerance=float(eps_tolerance),
        cerenkov_max_eV=float(cerenkov_max_eV),
        atom_density_per_nm3=atom_density_per_nm3,
        nonnegative=bool(nonnegative),
        eps2_negative_limit=float(eps2_negative_limit),
        thickness_factor=float(thickness_factor),
        surface_share_limit=float(surface_share_limit),
        dispersion_eV=grid.dispersion_eV,
        grid=grid,
        variables=names,
        **kernel_params,
    )
    if "energy" in ds.coords:
        ds["energy"].attrs.update({"units": "eV", "long_name": "energy loss"})
    for name in ("eps1_sigma", "eps2_sigma", "loss_function_sigma", "refractive_index_sigma"):
        if name in ds:  # measured (tests/analysis/test_kk_*_uncertainty.py), so said
            ds[name].attrs["coverage"] = (
                KK_ANALYTIC_SIGMA_COVERAGE if unc.method == "analytic" else KK_EPS_SIGMA_COVERAGE
            )
    if misses_deconvolution:
        ds.attrs["uncertainty_misses"] = (
            "the deconvolution's own noise: the SSD's values taken as counts (pass the recorded "
            "image with deconvolve={...} for end-to-end replicas)"
        )
    if unc.method == "analytic":
        ds.attrs["kk_analytic_not_covered"] = (
            "loss_peak_eV (a grid maximum: use replicas); N0's noise, the deconvolution's own "
            "noise and channel correlation, the ZLP model, the tail beyond the window"
        )
    if "loss_peak_eV_sigma" in ds:
        ds["loss_peak_eV_sigma"].attrs["coverage"] = KK_LOSS_PEAK_SIGMA_COVERAGE
    for name in ("eps2_sigma", "loss_function_sigma", "refractive_index_sigma"):
        if name not in ds:
            continue
        # A replica sigma of exactly 0 is eps2 (and Im[-1/eps]) held at 0 by the sign
        # constraint in every replica (the SSD is negative there; n = 0 exactly where, with
        # eps2 = 0, eps1 < 0), not a certainty: no sigma (NaN) rather than a false 0.
        attrs = dict(ds[name].attrs)
        ds[name] = ds[name].where(ds[name] > 0)
        ds[name].attrs = {
            **attrs,
            "note": f"NaN where {name[:-6]} is held at 0 by the sign constraint in every replica",
        }
    if refractive_index_rel_sigma is not None or thickness_rel_sigma is not None:
        ds = _normalisation_systematic(
            ds, si, refractive_index, thickness_nm, refractive_index_rel_sigma,
            thickness_rel_sigma, int(iterations),
        )  # fmt: skip
    if surface == "fit":  # issue 15: refit the pixels the surface iteration flags
        from .film import surface_fit as _surface_fit

        ds = _surface_fit(ds, ssd, zlp_intensity, e0, beta, surface_fit)
    return ds


def output_names(
    cubes: Sequence[str] | str | None, variables: Sequence[str] | None
) -> tuple[str, ...]:
    """The outputs :func:`kramers_kronig` computes: ``variables`` as given, or the ``cubes``
    (default eps1, eps2; "all") and every map; ``quality`` and ``valid`` always. Unknown names
    and both arguments at once are an :class:`InputError`.

    >>> output_names(None, None)[:3]
    ('eps1', 'eps2', 'thickness_nm')
    >>> output_names(None, ("thickness_nm",))
    ('thickness_nm', 'quality', 'valid')
    """
    if cubes is not None and variables is not None:
        raise InputError(
            "give cubes= (which spectra to keep beside every map) or variables= (exactly which "
            "outputs), not both"
        )
    if variables is not None:
        if isinstance(variables, str):
            variables = (variables,)
        names = tuple(variables)
        unknown = sorted(set(names) - set(ALL_VARIABLES))
        if unknown:
            raise InputError(f"unknown KK variables {unknown}; known: {', '.join(ALL_VARIABLES)}")
    else:
        if cubes is None:
            chosen = DEFAULT_CUBES
        elif isinstance(cubes, str):
            chosen = tuple(CUBE_OUTPUTS) if cubes == "all" else (cubes,)
        else:
            chosen = tuple(cubes)
        unknown = sorted(set(chosen) - set(CUBE_OUTPUTS))
        if unknown:
            raise InputError(
                f"unknown KK cubes {unknown}; known: {', '.join(CUBE_OUTPUTS)} (or 'all')"
            )
        names = tuple(n for n in CUBE_OUTPUTS if n in chosen) + tuple(MAP_OUTPUTS)
    return names + tuple(n for n in ("quality", "valid") if n not in names)


def _check_map(name: str, value: Any, unit: str, zero_ok: bool = False) -> None:
    """Range-check a per-pixel argument of :func:`kramers_kronig`: a number must be positive
    (an :class:`InputError` naming it and its unit); a map in memory may hold NaN (pixels to
    leave out) and, with ``zero_ok``, 0 (vacuum), but no negative or infinite value. A lazy
    (dask) map is not read here."""
    if value is None:
        return
    if np.ndim(value) == 0 and not hasattr(getattr(value, "data", None), "dask"):
        chk.positive(name, value.item() if hasattr(value, "item") else value, unit)
        return
    data = value.data if isinstance(value, xr.DataArray) else value
    if hasattr(data, "dask"):
        return
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numbers in {unit}, not {type(value).__name__}") from None
    bad = np.isinf(arr) | (arr < 0 if zero_ok else arr <= 0)
    if bad.any():
        first = arr[bad].flat[0]
        allowed = "0 (vacuum), NaN (left out) or positive" if zero_ok else "positive or NaN"
        raise InputError(
            f"{name} must be {allowed} in {unit} in every pixel; {int(bad.sum())} pixel(s) "
            f"are not (e.g. {first:g})"
        )


def _common_origin(centre: Any) -> float:
    """The median ZLP centre (eV) of the first block of ``centre`` (a map, NumPy or dask) that
    has one; 0 when none has (those pixels are not usable anyway)."""
    data = centre.data if isinstance(centre, xr.DataArray) else centre
    if hasattr(data, "blocks"):
        for index in list(np.ndindex(*data.numblocks))[:8]:
            values = np.asarray(data.blocks[index].compute(), dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                return float(np.median(values))
        return 0.0
    values = np.asarray(data, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else 0.0


def _log_ratio_thickness(si, dataset, given, mfp, density, e0, beta) -> tuple[Any, str]:
    """The log-ratio thickness (nm) to compare the KK thickness with, and where it came from."""
    if given is not None:
        return given, "given"
    if dataset is None:
        return None, "none"
    if mfp is None and density is None and "thickness_nm" in dataset:
        how = dataset.attrs.get("mean_free_path_from", "the deconvolution's mean free path")
        return dataset["thickness_nm"], f"deconvolve's thickness_nm ({how})"
    if "t_over_lambda" in dataset and (mfp is not None or density is not None):
        lam, how = mean_free_path(si, e0, beta, None, density, mfp, None)
        return dataset["t_over_lambda"] * lam, f"t_over_lambda x {lam:.4g} nm ({how})"
    return None, "none"


def warn_flagged(ds: xr.Dataset) -> None:
    """Warn (KKWarning) about pixels whose loss function had not decayed at the window's end, that
    meet the Cerenkov condition, or that carry a quality bit (computes those maps)."""
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
    if "quality" in ds:
        qual = np.asarray(ds["quality"].values).astype(np.uint32)
        for bit_name in ("EPS2_NEGATIVE", "KK_THICKNESS_DISAGREES", "SURFACE_NOT_CORRECTED"):
            bit, fatal, meaning = qbits.BITS[bit_name]
            count = int(np.sum((qual & bit) > 0))
            if count:
                warnings.warn(
                    f"{count} of {qual.size} pixels: {bit_name} ({meaning}"
                    f"{'; not valid' if fatal else ''})",
                    KKWarning,
                    stacklevel=2,
                )


def _normalisation_systematic(
    ds: xr.Dataset,
    si: xr.DataArray,
    refractive_index: float | None,
    thickness_nm: Any,
    n_rel_sigma: float | None,
    t_rel_sigma: Any,
    iterations: int,
) -> xr.Dataset:
    """The given normalisation's uncertainty through K, Im[-1/eps] = K S, to first order.

    kk-theory.md eqs. 28 and 33 (n: K proportional to 1 - 1/n^2, so
    dK/K = 2 (dn/n) / (n^2 - 1)) or eq. 31 (t: K proportional to 1/t, dK/K = dt/t);
    1/eps = 1 + K g, so d eps = (eps^2 - eps) dK/K. Relative sigmas in, sigmas in each
    output's units out (``<name>_sigma_systematic``, part ``normalisation``).
    """
    if n_rel_sigma is not None:
        n = float(refractive_index)
        r: Any = normalisation_rel_sigma(n, n_rel_sigma)
        what = (
            f"refractive index n = {n:g} +- {100 * float(n_rel_sigma):g} % (given), first order "
            "through the sum-rule normalisation (kk-theory.md eqs. 28, 33)"
        )
    else:
        r = t_rel_sigma if np.ndim(t_rel_sigma) == 0 else as_map(t_rel_sigma, si, "thickness")
        what = (
            "thickness given as the normalisation, its relative sigma (given), first order "
            "through eq. 31's factor"
        )
    if iterations > 0:
        what += "; with the surface correction only the factor's first-order part"
    if np.ndim(r) == 0:
        r_da: Any = float(r)
    else:  # a map of relative sigmas, on the image's pixels
        nav = [d for d in si.dims if d != "energy"]
        r_da = r if isinstance(r, xr.DataArray) else xr.DataArray(np.asarray(r), dims=nav)
    parts: dict[str, Any] = {}
    if "eps1" in ds and "eps2" in ds:
        # (a map of dK/K goes in per pixel, a number as a keyword)
        maps = [r_da] if np.ndim(r_da) else []
        sig = xr.apply_ufunc(
            eps_normalisation_sigmas,
            ds["eps1"],
            ds["eps2"],
            *maps,
            kwargs={} if maps else {"rel": r_da},
            input_core_dims=[["energy"], ["energy"], *([[]] * len(maps))],
            output_core_dims=[["energy"]] * 3,
            dask="parallelized",
            output_dtypes=[np.float64] * 3,
        )
        parts["eps1"], parts["eps2"] = sig[0], sig[1]
        if "refractive_index" in ds:
            parts["refractive_index"] = sig[2]
        if "plasmon_energy_eV" in ds:
            e = ds["energy"].values
            # eps1's signed move, (eps^2 - eps) dK/K's real part (eq. 34)
            e1, e2 = ds["eps1"], ds["eps2"]
            d_eps1 = (e1 * e1 - e2 * e2 - e1) * r_da
            parts["plasmon_energy_eV"] = xr.apply_ufunc(
                plasmon_crossing_shift_eV,
                e1,
                d_eps1,
                ds["plasmon_energy_eV"],
                kwargs={"e0_eV": float(e[0]), "dispersion_eV": float(e[1] - e[0])},
                input_core_dims=[["energy"], ["energy"], []],
                dask="parallelized",
                output_dtypes=[np.float64],
                dask_gufunc_kwargs={"allow_rechunk": True},
            )
    if "loss_function" in ds:
        parts["loss_function"] = abs(ds["loss_function"]) * r_da
    if "thickness_nm" in ds:  # eq. 26 with n (t proportional to 1/K); the given t's own
        parts["thickness_nm"] = abs(ds["thickness_nm"]) * r_da
    for name, sigma in parts.items():
        if isinstance(sigma, xr.DataArray):
            sigma = sigma.drop_vars([c for c in sigma.coords if c not in ds[name].coords])
        ds = add_systematic(ds, name, {"normalisation": (sigma, what)})
    return ds
