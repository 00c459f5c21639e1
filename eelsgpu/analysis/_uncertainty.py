"""The uncertainty options every analysis shares: parsing, the noise model, names (issue 14).

What the user gives
-------------------
* ``uncertainty=None`` (default: no sigma; ``"analytic"`` costs up to about 2x the analysis of
  window maps, replicas K times it, so neither is on by default), ``"analytic"`` (counting noise
  propagated by the linearisation of each estimator, closed forms where they exist), or
  ``"replicas"`` with ``n_replicas=K`` (``K`` noise replicas of every spectrum through the same
  kernels; ``"replicas:K"`` is the same). The CLI's ``--uncertainty analytic|replicas:K``.
* The noise model (:mod:`eelsgpu.kernels.uncertainty`): ``gain=g``, the detector's data units
  per counted electron (``x = g N``, so the electrons are ``x / g`` and ``var(x) = g x``; ``g = 1``
  for data in electron counts), **or** ``noise_variance=``, a measured variance in data units
  squared (a DataArray whose dims are among the image's and include ``energy``: per channel, or
  per pixel and channel) for data that are not counts times a gain; replicas are then Gaussian.
  Given neither, the gain is **estimated** from the data's own channel-to-channel noise
  (:func:`eelsgpu.kernels.uncertainty.estimate_gain` on up to 1024 pixels spread over the image),
  and the result says so in its attrs (``noise_model``, ``gain_source``, with the estimate's own
  relative scatter, about 3.1 / sqrt(channels used): 1 % on a 1024-pixel sample, 20 % on one
  spectrum of 200 channels, where giving ``gain=`` is better).
* ``zlp_models=`` (thickness, deconvolve; default none: one more run per model): the ZLP
  models to compare with ``zlp`` (:func:`parse_zlp_models`); their spread per pixel, half the
  range of those whose checks pass (:func:`zlp_model_spread`), is ``<name>_sigma_zlp_model`` and
  the ``zlp_model`` part of ``<name>_sigma_systematic``.
* ``seed`` (replicas): each pixel draws from ``(seed, its flat pixel index)``, so a rerun gives the
  same sigmas whatever the chunking.

What the result holds
---------------------
* ``<name>_sigma`` beside every output ``<name>`` that has one: one standard deviation of the
  **counting noise** (the statistical part), same dims and ``units``; attrs ``sigma_of``,
  ``uncertainty`` (``analytic`` or ``replicas:K``), ``part = "counting"``.
* ``<name>_sigma_systematic`` where systematic parts apply (the mean-free-path formula, a ZLP
  model's spread, a tail beyond the window, a user's known thickness or refractive index): their
  quadrature sum, same units, reported apart because they do not average out over pixels; its
  attrs ``parts`` is the table ``{part: description}`` (:func:`add_systematic`). The total is
  ``sqrt(sigma^2 + sigma_systematic^2)``.
* Dataset attrs: ``uncertainty``, ``noise_model`` (one line), ``gain_per_electron``,
  ``gain_source`` (``given``, ``estimated from the data's channel noise (...)`` or
  ``noise_variance``).

Plugging in another analysis
----------------------------
1. Its public function takes ``uncertainty=None, n_replicas=None, gain=None,
   noise_variance=None, seed=0``, calls :func:`parse_uncertainty` after its own checks, passes
   ``request.kernel_params()`` to the block kernel and ``request.extras(si)`` as extras, and
   merges ``request.attrs()`` into the result's attrs; the CLI adds
   :func:`eelsgpu.cli._uncertainty.add_uncertainty_options` and prints ``describe(ds)``.
2. Its kernel declaration adds an ``Output(f"{name}_sigma", same units, attrs sigma_of, part,
   uncertainty)`` per output with a sigma when ``params["uncertainty"]`` is set.
3. analytic: the kernel linearises (closed forms in :mod:`eelsgpu.kernels.uncertainty`:
   ``log_ratio_variance``, ``fourier_log_ssd_variance``, ``fourier_log_functional_variance``,
   ``sandwich_covariance``, ``linear_sigma``, ``ratio_sigma``); replicas: it calls
   ``replica_sigmas(itself, block, energy, targets, ...)`` with uncertainty off, its per-pixel
   extras passed along.
4. Systematic parts go to ``<name>_sigma_systematic`` through :func:`add_systematic`.
5. A coverage test (tests/_coverage.py) at 1e4, 1e5, 1e6 counts proves each new sigma.

Examples
--------
>>> parse_uncertainty_option("replicas:50")
('replicas', 50)
>>> sigma_name("thickness_nm"), systematic_name("thickness_nm")
('thickness_nm_sigma', 'thickness_nm_sigma_systematic')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..kernels.uncertainty import estimate_gain, log_ratio_variance
from ._checks import positive, positive_int

__all__ = [
    "DEFAULT_REPLICAS",
    "METHODS",
    "ZLP_MODELS",
    "UncertaintyRequest",
    "add_log_ratio_sigmas",
    "add_systematic",
    "estimate_image_gain",
    "parse_uncertainty",
    "parse_uncertainty_option",
    "parse_zlp_models",
    "sigma_name",
    "systematic_name",
    "zlp_model_spread",
]

METHODS = ("analytic", "replicas")
#: Replicas per pixel when the user asks for replicas without saying how many.
DEFAULT_REPLICAS = 100
#: Pixels the gain estimate reads (spread over the image).
GAIN_SAMPLE_PIXELS = 1024
#: Relative scatter of the gain estimate times sqrt(channels used) (measured, Poisson spectra).
GAIN_SCATTER = 3.1
#: The ZLP models ``zlp_models=True`` (``"all"``, the CLI's ``--zlp-models all``) compares.
ZLP_MODELS = ("threshold", "mirror", "fit")


def sigma_name(name: str) -> str:
    """The counting sigma of output ``name``: ``<name>_sigma``."""
    return f"{name}_sigma"


def systematic_name(name: str) -> str:
    """The systematic sigma of output ``name``: ``<name>_sigma_systematic``."""
    return f"{name}_sigma_systematic"


def parse_uncertainty_option(text: str | None) -> tuple[str | None, int | None]:
    """``"analytic"``, ``"replicas"`` or ``"replicas:K"`` (the CLI's ``--uncertainty``) -> (method, K).

    Examples
    --------
    >>> parse_uncertainty_option("analytic"), parse_uncertainty_option(None)
    (('analytic', None), (None, None))
    """
    if text is None or str(text).strip().lower() in ("", "none"):
        return None, None
    method, _, k = str(text).strip().partition(":")
    method = method.strip().lower()
    if method not in METHODS or (k and method != "replicas"):
        raise InputError(
            f"uncertainty must be 'analytic', 'replicas' or 'replicas:K' (K replicas per pixel), "
            f"not {text!r}"
        )
    if not k:
        return method, None
    try:
        return method, int(k)
    except ValueError:
        raise InputError(f"uncertainty {text!r}: K must be a whole number of replicas") from None


def estimate_image_gain(
    si: xr.DataArray, max_pixels: int = GAIN_SAMPLE_PIXELS
) -> tuple[float, int]:
    """The detector gain (data units per electron) from the channel noise of up to ``max_pixels``
    pixels spread over ``si`` (:func:`eelsgpu.kernels.uncertainty.estimate_gain`).

    Returns
    -------
    gain : float
    n_used : int
        Channels (4th differences) the median used.
    """
    nav = [d for d in si.dims if d != "energy"]
    if nav:
        flat = si.stack(_pix=nav).transpose("_pix", "energy")
        n = flat.sizes["_pix"]
        idx = np.unique(np.linspace(0, n - 1, min(n, int(max_pixels))).round().astype(int))
        sample = np.asarray(flat.isel(_pix=idx).values, dtype=np.float64)
    else:
        sample = np.asarray(si.values, dtype=np.float64)[None, :]
    gain, n_used = estimate_gain(sample)
    return float(gain), int(n_used)


@dataclass(frozen=True)
class UncertaintyRequest:
    """The checked uncertainty options of one analysis call."""

    method: str | None = None
    n_replicas: int = DEFAULT_REPLICAS
    seed: int = 0
    gain: float = 1.0
    gain_source: str = "given"
    noise_variance: xr.DataArray | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """``none``, ``analytic`` or ``replicas:K``."""
        if self.method is None:
            return "none"
        return "analytic" if self.method == "analytic" else f"replicas:{self.n_replicas}"

    def kernel_params(self) -> dict[str, Any]:
        """The block kernel's uncertainty parameters (none when no uncertainty is asked)."""
        if self.method is None:
            return {}
        return {
            "uncertainty": self.method,
            "gain": self.gain,
            "n_replicas": self.n_replicas,
            "seed": self.seed,
        }

    def extras(self, si: xr.DataArray) -> dict[str, Any]:
        """Per-pixel arrays the kernel needs: ``variance`` (a cube) and ``pixel_index`` (a map)."""
        out: dict[str, Any] = {}
        if self.method is None:
            return out
        if self.noise_variance is not None:
            var = self.noise_variance.broadcast_like(si).transpose(*si.dims)
            out["variance"] = var.data
        if self.method == "replicas":
            nav_shape = tuple(si.sizes[d] for d in si.dims if d != "energy")
            out["pixel_index"] = np.arange(int(np.prod(nav_shape)), dtype=np.int64).reshape(
                nav_shape
            )
        return out

    def attrs(self) -> dict[str, Any]:
        """Dataset attrs that say which uncertainty and noise model the sigmas carry."""
        if self.method is None:
            return {}
        if self.noise_variance is not None:
            model = "measured per-channel variance (noise_variance), Gaussian replicas"
        else:
            model = (
                f"Poisson counting, var(x) = g x with gain g = {self.gain:.4g} data units per "
                f"electron ({self.gain_source})"
            )
        return {
            "uncertainty": self.label,
            "noise_model": model,
            "gain_per_electron": float(self.gain),
            "gain_source": self.gain_source,
        }


def parse_uncertainty(
    si: xr.DataArray,
    uncertainty: str | None = None,
    n_replicas: int | None = None,
    gain: float | None = None,
    noise_variance: Any = None,
    seed: int = 0,
) -> UncertaintyRequest:
    """Check the uncertainty options of an analysis against its spectrum image.

    Parameters
    ----------
    si : xarray.DataArray
        The spectrum image (dims ``(..., "energy")``).
    uncertainty : {None, "analytic", "replicas", "replicas:K"}
    n_replicas : int, optional
        ``K`` (>= 2; default :data:`DEFAULT_REPLICAS`).
    gain : float, optional
        Data units per counted electron (> 0).
    noise_variance : xarray.DataArray, optional
        Measured variance, data units squared; dims among ``si``'s, with ``energy``.
    seed : int
        Replica seed.

    Returns
    -------
    UncertaintyRequest
        With the gain estimated from the data when neither ``gain`` nor ``noise_variance`` is
        given (and ``uncertainty`` is asked).
    """
    method, k_text = parse_uncertainty_option(uncertainty)
    if method is None:
        if n_replicas is not None or gain is not None or noise_variance is not None:
            raise InputError(
                "n_replicas, gain and noise_variance describe an uncertainty: also give "
                "uncertainty='analytic' or 'replicas'"
            )
        return UncertaintyRequest()
    if k_text is not None and n_replicas is not None and int(n_replicas) != k_text:
        raise InputError(f"uncertainty {uncertainty!r} and n_replicas={n_replicas} disagree")
    k = k_text if k_text is not None else (DEFAULT_REPLICAS if n_replicas is None else n_replicas)
    k = positive_int("n_replicas", k, 2)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed must be a whole number, not {seed!r}") from None
    if gain is not None and noise_variance is not None:
        raise InputError("give either gain= or noise_variance=, not both")
    if noise_variance is not None:
        var = noise_variance
        if not isinstance(var, xr.DataArray):
            raise InputError(
                "noise_variance must be an xarray.DataArray (data units squared) with an "
                "'energy' dim, per channel or per pixel and channel"
            )
        if "energy" not in var.dims or not set(var.dims) <= set(si.dims):
            raise InputError(
                f"noise_variance has dims {var.dims}; they must include 'energy' and be among "
                f"the image's {si.dims}"
            )
        for d in var.dims:
            if var.sizes[d] != si.sizes[d]:
                raise InputError(
                    f"noise_variance has {var.sizes[d]} {d} values, the image {si.sizes[d]}"
                )
        return UncertaintyRequest(method, k, seed, 1.0, "noise_variance", var)
    if gain is not None:
        return UncertaintyRequest(method, k, seed, positive("gain", gain, "data units/electron"))
    g, n_used = estimate_image_gain(si)
    if not (np.isfinite(g) and g > 0):
        raise InputError(
            f"the detector gain could not be estimated from the data's channel noise "
            f"{_source(si)}(no usable channels): give gain= (data units per electron) or "
            "noise_variance="
        )
    # the median of n correlated 4th-difference ratios scatters by about 3.1 / sqrt(n) relative
    # (measured on Poisson spectra of 200 and 2000 channels); sigma goes as sqrt(gain)
    rel = GAIN_SCATTER / np.sqrt(max(n_used, 1))
    return UncertaintyRequest(
        method,
        k,
        seed,
        g,
        f"estimated from the data's channel noise ({n_used} channels, gain +-{100 * rel:.2g} %, "
        f"so every sigma +-{50 * rel:.2g} %)",
    )


def _source(si: xr.DataArray) -> str:
    src = si.attrs.get("source")
    return f"of {src} " if src else ""


def add_systematic(
    ds: xr.Dataset, name: str, parts: Mapping[str, tuple[xr.DataArray | float, str]]
) -> xr.Dataset:
    """Add ``<name>_sigma_systematic``: the quadrature sum of systematic parts, with their table.

    Parameters
    ----------
    ds : xarray.Dataset
        Holds ``name``.
    name : str
        The output whose systematic sigma this is.
    parts : mapping part -> (sigma, description)
        Each part's one-sigma (same units as ``name``; a map or a number) and a line saying
        where it comes from (e.g. ``"mean free path: 10 % (Iakoubovskii 2008)"``).

    Returns
    -------
    xarray.Dataset
        ``ds`` with ``<name>_sigma_systematic`` (attrs ``parts``: the table, ``sigma_of``).

    Examples
    --------
    >>> ds = xr.Dataset({"t": ("x", np.array([100.0, 200.0]), {"units": "nm"})})
    >>> ds = add_systematic(ds, "t", {"mfp": (0.1 * ds["t"], "10 %"), "zlp": (5.0, "model")})
    >>> ds["t_sigma_systematic"].values.round(3).tolist(), ds["t_sigma_systematic"].attrs["units"]
    ([11.18, 20.616], 'nm')
    """
    total = xr.zeros_like(ds[name], dtype=np.float64)
    for sigma, _ in parts.values():
        total = total + (sigma if isinstance(sigma, xr.DataArray) else float(sigma)) ** 2
    out = np.sqrt(total)
    out.attrs = {
        "units": ds[name].attrs.get("units", ""),
        "long_name": f"systematic sigma of {ds[name].attrs.get('long_name', name)}",
        "sigma_of": name,
        "part": "systematic",
        "parts": {k: desc for k, (_, desc) in parts.items()},
    }
    return ds.assign({systematic_name(name): out})


def add_log_ratio_sigmas(
    ds: xr.Dataset,
    gain: float = 1.0,
    *,
    mean_free_path_rel_sigma: float | None = None,
    mean_free_path_source: str = "the user's relative uncertainty",
) -> xr.Dataset:
    """A log-ratio thickness result with its sigmas (closed form; the plug for ``thickness``).

    ``t_over_lambda_sigma = sqrt(g (1/N0 - 1/I))`` from the result's ``zlp_intensity`` and
    ``total_intensity`` (:func:`eelsgpu.kernels.uncertainty.log_ratio_variance`, eq. 16's
    counting variance); ``thickness_nm_sigma = lambda t_over_lambda_sigma`` with each pixel's
    ``lambda = thickness_nm / t_over_lambda``; with ``mean_free_path_rel_sigma``,
    ``thickness_nm_sigma_systematic`` (:func:`add_systematic`, part ``mean_free_path``). The
    Poisson noise model only (a measured variance needs the per-channel sums: the block kernel).
    A tail beyond the window is not in the counting sigma (it is a systematic part of its own).

    Parameters
    ----------
    ds : xarray.Dataset
        ``eelsgpu.thickness(..., method="log-ratio")`` (or ``deconvolve``'s) result.
    gain : float
        Data units per counted electron.
    mean_free_path_rel_sigma : float, optional
        Relative uncertainty of lambda (0.1 = 10 %).
    mean_free_path_source : str
        Where it comes from, for the parts table.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> ds = xr.Dataset({"zlp_intensity": ("x", [1e4]), "total_intensity": ("x", [2e4]),
    ...                  "t_over_lambda": ("x", [np.log(2.0)]),
    ...                  "thickness_nm": ("x", [100 * np.log(2.0)])})
    >>> out = add_log_ratio_sigmas(ds, mean_free_path_rel_sigma=0.1)
    >>> [round(float(out[k][0]), 5) for k in ("t_over_lambda_sigma", "thickness_nm_sigma",
    ...                                      "thickness_nm_sigma_systematic")]
    [0.00707, 0.70711, 6.93147]
    """
    var = xr.apply_ufunc(
        log_ratio_variance,
        ds["zlp_intensity"].astype(np.float64),
        ds["total_intensity"].astype(np.float64),
        kwargs={"gain": float(gain)},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    common = {"uncertainty": "analytic", "part": "counting"}
    out = ds.assign(
        t_over_lambda_sigma=np.sqrt(var).assign_attrs(
            units="", long_name="sigma of t/lambda (counting)", sigma_of="t_over_lambda", **common
        )
    )
    if "thickness_nm" in ds:
        tl = ds["t_over_lambda"]
        mfp = abs(ds["thickness_nm"] / tl.where(tl != 0))
        t_sigma = (mfp * out["t_over_lambda_sigma"]).assign_attrs(
            units="nm", long_name="sigma of thickness (counting)", sigma_of="thickness_nm", **common
        )
        out = out.assign(thickness_nm_sigma=t_sigma)
        if mean_free_path_rel_sigma is not None:
            rel = float(mean_free_path_rel_sigma)
            out = add_systematic(
                out,
                "thickness_nm",
                {
                    "mean_free_path": (
                        rel * abs(ds["thickness_nm"]),
                        f"{100 * rel:g} % of lambda ({mean_free_path_source})",
                    )
                },
            )
    return out


def parse_zlp_models(zlp_models: Any, zlp: Any) -> tuple[str, ...]:
    """The ZLP models to run besides ``zlp`` for the ZLP-model systematic part (issue 14).

    ``zlp_models``: None or False (default: none, the part costs one more run per model), True or
    ``"all"`` (:data:`ZLP_MODELS`), a comma-separated string or a sequence of model names. The
    compared set is ``zlp`` (whatever it is: a name, a reference spectrum, a ZLP cube) and these;
    it must hold at least two models.

    Examples
    --------
    >>> parse_zlp_models(None, "mirror")
    ()
    >>> parse_zlp_models("all", "mirror")
    ('threshold', 'fit')
    >>> parse_zlp_models(["threshold", "mirror"], "threshold")
    ('mirror',)
    """
    if zlp_models is None or zlp_models is False:
        return ()
    if zlp_models is True or zlp_models == "all":
        names: tuple[str, ...] = ZLP_MODELS
    elif isinstance(zlp_models, str):
        names = tuple(m.strip() for m in zlp_models.split(",") if m.strip())
    else:
        names = tuple(zlp_models)
    bad = [m for m in names if not (isinstance(m, str) and m in ZLP_MODELS)]
    if bad:
        raise InputError(
            f"zlp_models: {bad[0]!r} is not a ZLP model; give some of {', '.join(ZLP_MODELS)} "
            "(or True / 'all')"
        )
    primary = zlp if isinstance(zlp, str) else None
    others = tuple(dict.fromkeys(m for m in names if m != primary))
    if not others:
        raise InputError(
            f"zlp_models={zlp_models!r} names no model besides zlp={primary!r}: the ZLP-model "
            "spread needs at least two models"
        )
    return others


def zlp_model_spread(
    runs: Mapping[str, xr.Dataset], names: tuple[str, ...]
) -> tuple[dict[str, xr.DataArray], xr.DataArray]:
    """Per pixel, the spread of ``names`` across the ZLP models whose checks pass (issue 14).

    A model passes in a pixel where its run is ``valid`` and has no ZLP_MISMATCH bit
    (:mod:`eelsgpu.kernels.quality`: the model does not fit the pixel, so its number is no
    candidate). The spread is **half the range** (max - min) / 2 of the passing models' values,
    not their standard deviation: the models are two or three deterministic estimators, not
    draws from a distribution (the standard deviation of two values depends on a 1/n or 1/(n-1)
    convention by a factor sqrt(2)), and where one model is right the others' error is at most
    the range, twice the quoted sigma. NaN where fewer than two models pass (no spread can be
    measured; the count map says so).

    Parameters
    ----------
    runs : mapping model label -> Dataset
        One result per model (same pixels), each with ``valid``, ``quality`` and ``names``.
    names : tuple of str
        The outputs whose spread is wanted (same units as the outputs).

    Returns
    -------
    (dict name -> DataArray, DataArray)
        ``{name: half range}`` (attrs units, ``sigma_of``, ``part = "zlp_model"``) and the number
        of models that passed per pixel (uint8).

    Examples
    --------
    >>> q = xr.DataArray(np.array([0, 0, 2], np.uint32), dims="x")
    >>> v = xr.DataArray(np.ones(3, bool), dims="x")
    >>> a = xr.Dataset({"t": ("x", [1.0, 1.0, 1.0]), "valid": v, "quality": 0 * q})
    >>> b = xr.Dataset({"t": ("x", [1.2, 1.0, 9.0]), "valid": v, "quality": q})
    >>> c = xr.Dataset({"t": ("x", [0.0, 0.0, 0.0]), "valid": ~v, "quality": 0 * q})
    >>> spread, n = zlp_model_spread({"a": a, "b": b, "c": c}, ("t",))
    >>> spread["t"].values.round(3).tolist(), n.values.tolist()
    ([0.1, 0.0, nan], [2, 2, 1])
    """
    from ..kernels.quality import ZLP_MISMATCH

    labels = list(runs)
    ok = [
        runs[m]["valid"].astype(bool) & ((runs[m]["quality"] & ZLP_MISMATCH) == 0) for m in labels
    ]
    n_pass = sum(o.astype(np.uint8) for o in ok).astype(np.uint8)
    n_pass.attrs = {
        "long_name": "ZLP models that passed their checks (valid, no ZLP_MISMATCH)",
        "zlp_models_compared": labels,
    }
    out = {}
    for name in names:
        vals = xr.concat(
            [runs[m][name].astype(np.float64).where(o) for m, o in zip(labels, ok, strict=True)],
            dim="zlp_model",
        )
        half = ((vals.max("zlp_model") - vals.min("zlp_model")) / 2.0).where(n_pass >= 2)
        ref = runs[labels[0]][name]
        half.attrs = {
            "units": ref.attrs.get("units", ""),
            "long_name": f"ZLP-model spread of {ref.attrs.get('long_name', name)} (half range)",
            "sigma_of": name,
            "part": "zlp_model",
            "zlp_models_compared": labels,
        }
        out[name] = half.drop_vars([c for c in half.coords if c not in ref.coords])
    return out, n_pass
