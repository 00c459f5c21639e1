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
import warnings
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..engine.cpu_fused import register_cpu_kernels
from ..engine.cuda import register_fused_kernels
from ..errors import InputError
from ..kernels import quality
from ..kernels.blocks_lowloss import KK_THICKNESS, LOG_RATIO
from ..kernels.blocks_replicas import with_replicas
from ..kernels.log_ratio import TAILS
from ..kernels.sum_rule import sum_rule_prefactor_nm_eV
from ..model import energy_axis, require_param
from ._checks import in_range, positive
from ._lowloss import (
    axis_numbers,
    check_calibration,
    mean_free_path,
    precheck,
    search_range,
    spectrum_input,
    with_thickness_nm,
)
from ._uncertainty import (
    UncertaintyRequest,
    add_log_ratio_sigmas,
    add_systematic,
    parse_uncertainty,
    parse_zlp_models,
    systematic_name,
    zlp_model_spread,
)
from .zlp import resolve_zlp

__all__ = [
    "MEAN_FREE_PATH_REL_SIGMA",
    "TAILS",
    "TAIL_REL_SIGMA",
    "MARGINAL_TAIL_T_OVER_LAMBDA",
    "TAIL_SIGMA_SHARE",
    "calibrate_kk_constant",
    "thickness",
]

#: The relative one-sigma of each mean-free-path formula, as its paper states it: Malis, Cheng &
#: Egerton, J. Electron Microsc. Tech. 8 (1988) 193, abstract: "absolute thickness ... to an
#: accuracy of +/- 20 % in most inorganic specimens" (checked: PubMed 3246607); Iakoubovskii et
#: al., Microsc. Res. Tech. 71 (2008) 626: about 10 % against their measured lambdas (NOT checked
#: against the paper here: no searchable copy; give ``mean_free_path_rel_sigma=`` to be sure).
#: A given lambda has none unless the user gives its relative uncertainty.
MEAN_FREE_PATH_REL_SIGMA = {"Malis": 0.20, "Iakoubovskii": 0.10}
#: The relative one-sigma of the counts extrapolated beyond the window (a convention, not a
#: measurement: the power law or Fourier-log tail is fitted on the window's end and its
#: extrapolation to infinity is its least certain part, so half of it is quoted).
TAIL_REL_SIGMA = 0.5
#: Analytic sigma: quoted only where the extrapolated tail's part of t/lambda is at most this
#: multiple of the closed form sigma (measured against replicas: part 0.3-1x the sigma at 1e5-1e6
#: counts and t/lambda 1, closed form / replicas 0.985-1.025; part 7x at 1e6 and t/lambda 2: 0.30).
TAIL_SIGMA_SHARE = 2.0
#: Analytic sigma: not quoted where a tail was judged untrusted and left out above this t/lambda
#: (the decision is marginal there; measured: closed form / replicas 0.35 at 1e6 counts and
#: t/lambda 2, 0.05 at 3; 0.95-1.04 at 1e4-1e5 counts, where no tail is ever trusted).
MARGINAL_TAIL_T_OVER_LAMBDA = 1.5

#: The outputs whose counting sigma the replicas give, per method.
_REPLICA_TARGETS = {
    "log-ratio": ("t_over_lambda", "zlp_intensity"),
    "kk": ("thickness_nm", "t_over_lambda", "zlp_intensity"),
}


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
    uncertainty: str | None = None,
    n_replicas: int | None = None,
    gain: float | None = None,
    noise_variance: Any = None,
    seed: int = 0,
    mean_free_path_rel_sigma: float | None = None,
    tail_rel_sigma: float = TAIL_REL_SIGMA,
    zlp_models: Any = None,
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
    uncertainty : {None, "analytic", "replicas", "replicas:K"}
        Add counting sigmas (:mod:`eelsgpu.analysis._uncertainty`; none by default).
        ``"analytic"`` (log-ratio only): ``var(t/lambda) = g (1/N0 - 1/I)`` (eq. 16 linearised,
        :func:`eelsgpu.kernels.uncertainty.log_ratio_variance`), exact for the default
        ``zlp="threshold"`` (N0 a part of I's counts); other models are refused (a mirrored
        N0 scatters about twice as much: use replicas). It does not
        cover a tail's noise: NaN where an added tail's part of t/lambda passes twice the sigma,
        and where a tail was judged untrusted and left out above t/lambda 1.5 (a marginal
        decision: at 1e6 counts and t/lambda 3 replicas add it or not, 17x more scatter); there
        use ``tail="none"`` (the window's cut is then a bias) or replicas.
        ``"replicas"``:
        ``n_replicas`` noise replicas of each spectrum through the same block kernel
        (:func:`eelsgpu.kernels.blocks_replicas.with_replicas`; both methods; every source of
        counting noise, the ZLP model's and the tail's included).
    n_replicas, gain, noise_variance, seed
        Replicas per pixel (default 100); the detector's data units per electron (estimated
        from the data when neither it nor ``noise_variance`` is given); a measured variance
        (replicas only); the replica seed.
    mean_free_path_rel_sigma : float, optional
        Relative one-sigma of the mean free path (0.1 = 10 %), a systematic part of
        ``thickness_nm``. Default: the formula's own (:data:`MEAN_FREE_PATH_REL_SIGMA`: Malis
        20 %, Iakoubovskii 10 %); a given ``mean_free_path_nm`` has none unless this is given.
    tail_rel_sigma : float
        Relative one-sigma of the counts extrapolated beyond the window (default
        :data:`TAIL_REL_SIGMA`), a systematic part of ``t_over_lambda`` and ``thickness_nm``
        where a tail was added (log-ratio).
    zlp_models : None, True, "all", or a sequence of "threshold", "mirror", "fit"
        The ZLP model's systematic part (issue 14; default none: it costs one more run per
        model). The analysis is run again with each of these models besides ``zlp``; per pixel,
        the models whose checks pass (``valid`` and no ZLP_MISMATCH) are compared, and half their
        range is ``<name>_sigma_zlp_model`` for ``t_over_lambda``, ``zlp_intensity`` and
        ``thickness_nm`` (:func:`eelsgpu.analysis._uncertainty.zlp_model_spread`: NaN where
        fewer than two pass; ``zlp_models_passed`` counts them), a part of
        ``<name>_sigma_systematic`` (in quadrature with the tail and the mean free path parts,
        which are then added even without ``uncertainty``). True or ``"all"``: the three.

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
        parameters in ``attrs``. With ``uncertainty``: ``t_over_lambda_sigma``,
        ``thickness_nm_sigma``, ``zlp_intensity_sigma`` (counting), and
        ``t_over_lambda_sigma_systematic`` (the tail beyond the window, log-ratio) and
        ``thickness_nm_sigma_systematic`` (the tail and the mean free path formula) with their
        ``parts`` tables. With ``zlp_models``: ``<name>_sigma_zlp_model``,
        ``zlp_models_passed`` (attrs ``zlp_models_compared``; the same in the dataset's attrs)
        and the ``zlp_model`` part in ``<name>_sigma_systematic`` (``zlp_intensity`` too).

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
    unc = parse_uncertainty(si, uncertainty, n_replicas, gain, noise_variance, seed)
    if unc.method == "analytic" and method == "kk":
        raise InputError(
            "uncertainty='analytic' is the log-ratio's closed form; the KK thickness has its "
            "sigma from replicas: uncertainty='replicas' (or method='log-ratio')"
        )
    if unc.method == "analytic" and unc.noise_variance is not None:
        raise InputError(
            "the analytic log-ratio sigma needs Poisson counts (gain=); with noise_variance= "
            "use uncertainty='replicas'"
        )
    if unc.method == "analytic" and method == "log-ratio":
        check_analytic_zlp(zlp)
    if mean_free_path_rel_sigma is not None:
        mean_free_path_rel_sigma = in_range(
            "mean_free_path_rel_sigma", mean_free_path_rel_sigma, 0.0, 1.0
        )
    tail_rel_sigma = in_range("tail_rel_sigma", tail_rel_sigma, 0.0, 1.0)
    other_models = parse_zlp_models(zlp_models, zlp)
    zparams, extras = resolve_zlp(si, zlp)
    params: dict[str, Any] = {**zparams, "search_eV": search}
    attrs: dict[str, Any] = {
        "thickness_method": method,
        "zlp_method": zparams["method"],
        "zlp_search_eV": "near 0 eV, else anywhere" if search is None else list(search),
    }
    register_fused_kernels()  # (the device's fused roll-off, where it has one)
    # (the compiled CPU kernels, for NumPy arrays: loaded for a job large enough to pay)
    register_cpu_kernels(n_spectra=math.prod(si.shape[:-1]))
    shift = precheck(si, zparams, search)
    params["axis_shift_eV"] = float(shift)
    params["axis_eV"] = axis_numbers(si)
    if shift:
        attrs["axis_shift_eV"] = float(shift)
    if unc.method is not None:
        attrs.update(unc.attrs())
        extras = {**extras, **unc.extras(si)}
        if unc.method == "replicas":
            params.update(unc.kernel_params())
    if method == "log-ratio":
        ds = _thickness_log_ratio(
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
            unc=unc,
        )
    else:
        ds = _thickness_kk(
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
            unc=unc,
        )
    if other_models:
        # the same analysis with each other model (no sigmas: only the values are compared)
        same = dict(
            method=method,
            beam_energy_keV=beam_energy_keV,
            collection_angle_mrad=collection_angle_mrad,
            convergence_angle_mrad=convergence_angle_mrad,
            density_g_cm3=density_g_cm3,
            mean_free_path_nm=mean_free_path_nm,
            zeff=zeff,
            refractive_index=refractive_index,
            metal=metal,
            kk_constant_nm_eV=kk_constant_nm_eV,
            tail=tail,
            search_eV=search_eV,
            device=device,
        )
        ds = with_zlp_model_spread(ds, si, zlp, other_models, same)
    mfp_rel = mean_free_path_rel_sigma if method == "log-ratio" else None
    return _with_sigmas(ds, unc, mfp_rel, tail_rel_sigma)


def with_zlp_model_spread(
    ds: xr.Dataset, si: xr.DataArray, zlp: Any, others: tuple[str, ...], kwargs: dict[str, Any]
) -> xr.Dataset:
    """``ds`` (the run with ``zlp``) with the ZLP-model spread of its t/lambda, N0 and thickness:
    :func:`thickness` run with each of ``others`` (``kwargs`` its other arguments), compared by
    :func:`eelsgpu.analysis._uncertainty.zlp_model_spread`; adds ``<name>_sigma_zlp_model`` and
    ``zlp_models_passed`` (the ``zlp_model`` part of :func:`_sigmas`)."""
    label = zlp if isinstance(zlp, str) else "given"
    runs = {label: ds}
    for m in others:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the primary run has said it (the axis offset)
            runs[m] = thickness(si, zlp=m, **kwargs)
    names = tuple(n for n in ("t_over_lambda", "zlp_intensity", "thickness_nm") if n in ds)
    names = tuple(n for n in names if all(n in r for r in runs.values()))
    spread, n_pass = zlp_model_spread(runs, names)
    ds = ds.assign({f"{n}_sigma_zlp_model": v for n, v in spread.items()})
    ds["zlp_models_passed"] = n_pass
    ds.attrs["zlp_models_compared"] = list(runs)
    ds.attrs["zlp_model_spread"] = (
        "half the range of the models that pass their checks (valid, no ZLP_MISMATCH); NaN "
        "where fewer than two pass"
    )
    return ds


def check_analytic_zlp(zlp: Any) -> None:
    """The analytic log-ratio sigma knows N0's counting noise for ``zlp="threshold"`` only (N0 a
    sum of counts); a mirrored or fitted model's N0 scatters about twice as much as ``sqrt(N0)``
    (measured: analytic/observed 0.41-0.53 for the mirror), so the others need replicas."""
    if not (isinstance(zlp, str) and zlp == "threshold"):
        shown = zlp if isinstance(zlp, str) else "a reference spectrum or ZLP cube"
        raise InputError(
            f"uncertainty='analytic' knows the counting noise of N0 for zlp='threshold' only, "
            f"not {shown!r}: use uncertainty='replicas' (or zlp='threshold')"
        )


def _with_sigmas(
    ds: xr.Dataset,
    unc: UncertaintyRequest,
    mfp_rel: float | None,
    tail_rel: float,
    *,
    total_intensity: xr.DataArray | None = None,
    tail_fraction: xr.DataArray | None = None,
) -> xr.Dataset:
    """The counting sigmas the kernel did not give (analytic: the closed form; replicas: the
    thickness as lambda t/lambda) and the systematic parts: the tail beyond the window
    (``tail_rel`` of its part of t/lambda, ``-ln(1 - tail_fraction)``, where a tail was added)
    and the mean free path formula (``mfp_rel``, default the formula's own). ``total_intensity``
    and ``tail_fraction`` where ``ds`` lacks them (``deconvolve``'s result); they are not kept."""
    if unc.method is None and "t_over_lambda_sigma_zlp_model" not in ds:
        return ds
    added = [
        n
        for n, v in (("total_intensity", total_intensity), ("tail_fraction", tail_fraction))
        if v is not None and n not in ds
    ]
    if total_intensity is not None and "total_intensity" in added:
        ds = ds.assign(total_intensity=total_intensity)
    if tail_fraction is not None and "tail_fraction" in added:
        ds = ds.assign(tail_fraction=tail_fraction)
    ds = _sigmas(ds, unc, mfp_rel, tail_rel)
    return ds.drop_vars(added)


def _sigmas(
    ds: xr.Dataset, unc: UncertaintyRequest, mfp_rel: float | None, tail_rel: float
) -> xr.Dataset:
    """:func:`_with_sigmas` on a result with ``total_intensity`` and ``tail_fraction``; the
    ZLP-model part where ``<name>_sigma_zlp_model`` is there (:func:`with_zlp_model_spread`)."""
    zparts = {}
    for name in ("t_over_lambda", "zlp_intensity", "thickness_nm"):
        key = f"{name}_sigma_zlp_model"
        if key in ds:
            zparts[name] = {
                "zlp_model": (
                    ds[key],
                    "half the range of the ZLP models that pass their checks "
                    f"({', '.join(ds.attrs['zlp_models_compared'])}; zlp_models_passed per "
                    "pixel); NaN where fewer than two pass",
                )
            }
    if "zlp_intensity" in zparts:
        ds = add_systematic(ds, "zlp_intensity", zparts["zlp_intensity"])
    if unc.method == "analytic":
        ds = add_log_ratio_sigmas(ds, unc.gain)
        # the closed form counts N0 and the window; a tail fitted on the window's end and
        # extrapolated has its own fit noise, which the closed form misses: where that part of
        # t/lambda passes TAIL_SIGMA_SHARE sigmas no analytic sigma is quoted (replicas give it;
        # measured at t/lambda 3, 1e6 counts: the fit noise is 18x the closed form)
        if "tail_fraction" in ds:
            part = -np.log1p(-ds["tail_fraction"].fillna(0.0).clip(0.0, 1.0 - 1e-12))
            sig = ds["t_over_lambda_sigma"]
            # a tail judged untrusted (or negative) and left out where the window's cut matters
            # is a marginal decision: replicas add it or not, and the scatter is up to 18x the
            # closed form (1e6 counts, t/lambda 2-3); at t/lambda <= 1 it was never seen to matter
            marginal = ((ds["quality"] & (quality.TAIL_UNTRUSTED | quality.NEGATIVE_TAIL)) != 0) & (
                ds["t_over_lambda"] > MARGINAL_TAIL_T_OVER_LAMBDA
            )
            ok = (part <= TAIL_SIGMA_SHARE * sig) & ~marginal
            ds["t_over_lambda_sigma"] = sig.where(ok).assign_attrs(
                sig.attrs,
                undefined=(
                    f"NaN where the tail extrapolated beyond the window passes "
                    f"{TAIL_SIGMA_SHARE:g} sigma (its fit noise is not in the closed form), "
                    "or where a tail was judged "
                    f"untrusted and left out at t/lambda above {MARGINAL_TAIL_T_OVER_LAMBDA:g} "
                    "(a marginal decision): use uncertainty='replicas' or tail='none'"
                ),
            )
        ds["zlp_intensity_sigma"] = np.sqrt(unc.gain * abs(ds["zlp_intensity"])).assign_attrs(
            units=ds["zlp_intensity"].attrs.get("units", "counts"),
            long_name="sigma of zero-loss intensity N0 (counting)",
            sigma_of="zlp_intensity",
            uncertainty="analytic",
            part="counting",
        )
    lam = ds.attrs.get("mean_free_path_nm")
    if lam is not None and unc.method is not None and "thickness_nm_sigma" not in ds:
        ds["thickness_nm_sigma"] = (float(lam) * ds["t_over_lambda_sigma"]).assign_attrs(
            units="nm",
            long_name="sigma of thickness (counting)",
            sigma_of="thickness_nm",
            uncertainty=unc.label,
            part="counting",
        )
    tl_parts: dict[str, Any] = dict(zparts.get("t_over_lambda", {}))
    if "tail_fraction" in ds:
        frac = ds["tail_fraction"].fillna(0.0).clip(0.0, 1.0 - 1e-12)
        tl_parts["tail"] = (
            tail_rel * -np.log1p(-frac),
            f"{100 * tail_rel:g} % of the counts extrapolated beyond the window "
            "(its part of t/lambda, -ln(1 - tail_fraction)); 0 where no tail was added",
        )
    if tl_parts:
        ds = add_systematic(ds, "t_over_lambda", tl_parts)
    if "thickness_nm" not in ds:
        return ds
    parts: dict[str, Any] = dict(zparts.get("thickness_nm", {}))
    if lam is None:
        # KK thickness: no mean free path, the ZLP model's part only
        return add_systematic(ds, "thickness_nm", parts) if parts else ds
    if "tail" in tl_parts:
        parts["tail"] = (float(lam) * tl_parts["tail"][0], tl_parts["tail"][1])
    how = str(ds.attrs.get("mean_free_path_from", ""))
    if mfp_rel is None:
        for formula, rel in MEAN_FREE_PATH_REL_SIGMA.items():
            if how.startswith(formula):
                mfp_rel, source = rel, f"the {formula} formula's stated accuracy"
    else:
        source = "the user's mean_free_path_rel_sigma"
    if mfp_rel is not None:
        parts["mean_free_path"] = (
            mfp_rel * abs(ds["thickness_nm"]),
            f"{100 * mfp_rel:g} % of lambda ({source}; lambda from {how})",
        )
    if parts:
        ds = add_systematic(ds, "thickness_nm", parts)
    else:
        ds.attrs[systematic_name("thickness_nm")] = (
            "none quoted: the given mean free path has no stated uncertainty (give "
            "mean_free_path_rel_sigma=)"
        )
    return ds


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
    unc: UncertaintyRequest | None = None,
) -> xr.Dataset:
    """``method="log-ratio"`` of :func:`thickness`: the maps of
    :data:`~eelsgpu.kernels.blocks_lowloss.LOG_RATIO`, and ``thickness_nm`` with a mean free
    path."""
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    params["tail"] = tail
    attrs["tail"] = tail
    decl = LOG_RATIO
    if unc is not None and unc.method == "replicas":
        decl = with_replicas(LOG_RATIO, _REPLICA_TARGETS["log-ratio"])
    ds = engine.apply_kernel(decl, si, device=device, extras=extras, attrs=attrs, **params)
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
    unc: UncertaintyRequest | None = None,
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
    decl = KK_THICKNESS
    if unc is not None and unc.method == "replicas":
        decl = with_replicas(KK_THICKNESS, _REPLICA_TARGETS["kk"])
    return engine.apply_kernel(decl, si, device=device, extras=extras, attrs=attrs, **params)


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
