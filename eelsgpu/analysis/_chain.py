"""End-to-end replica uncertainties of the dielectric function: raw counts -> SSD -> eps.

:func:`eelsgpu.kramers_kronig` given a deconvolve Dataset draws its replicas from the SSD (its
values taken as counts, or a variance the user gives): that misses what the deconvolution does
to the noise -- the Fourier-log's amplification, the band limit's smoothing, which correlates
neighbouring channels, and N0's own noise -- and the default noise model, the SSD's channel
noise estimated from its fourth differences, sees almost none of it on a band-limited SSD.
Measured (Drude Ep 15 eV, t/lambda 0.5, 1e5 counts in the ZLP, 200 realisations): the
SSD-as-counts sigmas of eps1 and eps2 are 0.01-0.28 (0.02-0.43 at 1e6) of the scatter of eps from independent raw
realisations, and with ``noise_variance = ssd_sigma**2`` from deconvolve's replicas 0.29-1.24.

Here the replicas are drawn from the **recorded counts** (Poisson with the recorded spectrum
image's gain, or Gaussian with a measured variance: :func:`eelsgpu.kernels.uncertainty.
draw_replicas`, seeded per pixel) and each replica goes through the very functions a user
calls, :func:`eelsgpu.deconvolve` and then :func:`eelsgpu.kramers_kronig`, with the same
options, as one ``K``-times larger image per batch of pixels; each output is reduced per pixel
to its standard deviation (:func:`eelsgpu.kernels.uncertainty.replica_moments`, NaN where fewer
than half the replicas give a finite value) before the next batch, so no ``K``-fold cube is
ever held. Because the replicas run the whole chain, the sigma covers every counting part: the
ZLP's (N0, its centre and width, the model fitted to it), the deconvolution's, the KK pass's.

The batches run where the analyses themselves run (the eager path: in memory, a thread per
core); an image held in a store is read one batch of pixels at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..kernels.uncertainty import draw_replicas, replica_moments
from ._uncertainty import UncertaintyRequest

__all__ = ["chain_replica_sigmas"]

#: Replica spectra per batch (pixels x K): 8192 x 2048 float64 is 128 MiB of replicas.
CHAIN_BATCH_SPECTRA = 8192

#: Keyword arguments of the two analyses that may be per-pixel maps (repeated for each replica).
PER_PIXEL_OPTIONS = (
    "zlp",
    "thickness_nm",
    "zlp_intensity",
    "zlp_fwhm_eV",
    "zlp_centre_eV",
    "log_ratio_thickness_nm",
)


def _nav_dims(si: xr.DataArray) -> list[str]:
    return [d for d in si.dims if d != "energy"]


def _repeat_pixels(value: Any, si: xr.DataArray, rows: slice, k: int) -> Any:
    """A per-pixel option's rows ``rows`` (flat pixel order), each repeated ``k`` times, shaped
    like the replica image (1, n k[, ...]); scalars and strings unchanged."""
    if value is None or isinstance(value, str) or np.ndim(value) == 0:
        return value
    nav = _nav_dims(si)
    nav_shape = tuple(si.sizes[d] for d in nav)
    arr = np.asarray(value.values if isinstance(value, xr.DataArray) else value)
    if arr.shape[: len(nav_shape)] != nav_shape:
        return value  # not a per-pixel array: a shared spectrum, left as it is
    rest = arr.shape[len(nav_shape) :]
    flat = arr.reshape(-1, *rest)[rows]
    rep = np.repeat(flat, k, axis=0)
    dims = ["y", "x", *(["energy"] if rest else [])]
    return xr.DataArray(rep.reshape(1, rep.shape[0], *rest), dims=dims)


def chain_replica_sigmas(
    raw: xr.DataArray,
    run: Callable[[xr.DataArray, Mapping[str, Any]], xr.Dataset],
    targets: Sequence[str],
    unc: UncertaintyRequest,
    options: Mapping[str, Any],
    *,
    batch_spectra: int = CHAIN_BATCH_SPECTRA,
) -> dict[str, np.ndarray]:
    """The replica standard deviation of each of ``targets`` through the whole chain ``run``.

    Parameters
    ----------
    raw : DataArray (..., energy)
        The recorded spectrum image (counts, or data units with ``unc.gain`` per electron).
    run : callable
        ``run(image, options) -> Dataset``: the chain (deconvolve then KK) on a spectrum image,
        with ``options`` whose per-pixel maps (:data:`PER_PIXEL_OPTIONS`) have been repeated for
        each replica.
    targets : sequence of str
        Outputs of ``run`` (maps or per-pixel spectra) that get a sigma.
    unc : UncertaintyRequest
        ``n_replicas`` K, ``seed``, ``gain`` and the measured ``noise_variance``, if any.
    options : mapping
        The chain's options; map-valued ones are cut and repeated per batch.
    batch_spectra : int
        Replica spectra per batch.

    Returns
    -------
    dict of str to ndarray
        Each target's sigma, shaped like the target on ``raw``'s pixels (NaN where fewer than
        half the replicas give a finite value).
    """
    k = int(unc.n_replicas)
    nav = _nav_dims(raw)
    raw = raw.transpose(*nav, "energy")
    nav_shape = tuple(raw.sizes[d] for d in nav)
    n_pix = int(np.prod(nav_shape, dtype=np.int64))
    n_e = raw.sizes["energy"]
    flat = raw.data.reshape(n_pix, n_e)
    var_flat = None
    if unc.noise_variance is not None:
        var_flat = unc.noise_variance.broadcast_like(raw).transpose(*raw.dims).data
        var_flat = var_flat.reshape(n_pix, n_e)
    per_batch = max(1, int(batch_spectra) // k)
    out: dict[str, np.ndarray] = {}
    for p0 in range(0, n_pix, per_batch):
        rows = slice(p0, min(n_pix, p0 + per_batch))
        n = rows.stop - rows.start
        block = np.asarray(flat[rows])  # one batch read (a dask image: only these pixels)
        var = None if var_flat is None else np.asarray(var_flat[rows])
        reps = draw_replicas(
            block,
            k,
            pixel_index=np.arange(rows.start, rows.stop, dtype=np.int64),
            seed=unc.seed,
            gain=unc.gain,
            variance=var,
        ).astype(raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.float64)
        image = xr.DataArray(
            reps.reshape(1, n * k, n_e),
            dims=("y", "x", "energy"),
            coords={"energy": raw["energy"]},
            attrs=dict(raw.attrs),
        )
        batch_options = {
            name: (
                _repeat_pixels(v, raw, rows, k) if name.split(":")[-1] in PER_PIXEL_OPTIONS else v
            )
            for name, v in options.items()
        }
        with warnings.catch_warnings():
            # each batch's per-pixel warnings (flags, vacuum) were said once by the run itself
            warnings.simplefilter("ignore")
            ds = run(image, batch_options)
        for name in targets:
            if name not in ds:
                continue
            values = np.asarray(ds[name].values)
            extra = values.shape[2:]
            _, sd = replica_moments(values.reshape(n * k, *extra), k)
            if name not in out:
                out[name] = np.full((n_pix, *extra), np.nan, dtype=np.float64)
            out[name][rows] = sd
    return {name: sd.reshape((*nav_shape, *sd.shape[1:])) for name, sd in out.items()}


#: Deconvolve outputs KK analyses (module docstring of eelsgpu.analysis.kramers_kronig).
_KK_OUTPUTS = ("band-limited", "ssd", "reconvolved-gaussian", "reconvolved-zlp")

#: What the end-to-end sigmas cover (attrs ``covers`` of each sigma).
CHAIN_COVERS = (
    "counting noise of the recorded spectra through the whole chain (replicas of the recorded "
    "counts, each deconvolved and analysed with the same options): N0 and the ZLP's centre, "
    "width and model, the Fourier-log's noise amplification and the band limit's channel "
    "correlation, the KK pass; not the ZLP model's systematic error, the tail beyond the "
    "window, or a normalisation the user gives"
)


def kramers_kronig_from_raw(
    raw: Any,
    deconvolve_options: Mapping[str, Any],
    kk_options: dict[str, Any],
    kramers_kronig: Callable[..., xr.Dataset],
    sigma_targets: Sequence[str],
) -> xr.Dataset:
    """:func:`eelsgpu.kramers_kronig` of the recorded image ``raw`` (its ``deconvolve=``
    option): :func:`eelsgpu.deconvolve` with ``deconvolve_options`` then KK with
    ``kk_options``; with ``uncertainty="replicas"`` the sigmas come from replicas of the
    recorded counts through both (:func:`chain_replica_sigmas`) for each of ``sigma_targets``
    the result holds."""
    from ..errors import InputError
    from ._uncertainty import parse_uncertainty, sigma_name
    from .deconvolution import deconvolve

    if not isinstance(deconvolve_options, Mapping):
        raise InputError(
            "deconvolve= takes a dict of eelsgpu.deconvolve's options, e.g. {'zlp': 'mirror'}"
        )
    dec = dict(deconvolve_options)
    if "uncertainty" in dec or "n_replicas" in dec:
        raise InputError(
            "give uncertainty= to kramers_kronig, not in deconvolve=: with deconvolve= its "
            "replicas run through the deconvolution and the KK analysis both"
        )
    dec.setdefault("output", "band-limited")
    if dec["output"] not in _KK_OUTPUTS:
        raise InputError(
            f"deconvolve= output {dec['output']!r} is not an SSD that Kramers-Kronig analysis "
            f"takes: one of {', '.join(_KK_OUTPUTS)}"
        )
    dec.setdefault("device", kk_options.get("device", "auto"))
    if isinstance(raw, xr.Dataset):
        if "signal" not in raw:
            raise InputError(
                "with deconvolve=, kramers_kronig takes the recorded spectrum image (a DataArray, "
                "or a Dataset with a 'signal' variable)"
            )
        raw = raw["signal"]
    unc_names = ("uncertainty", "n_replicas", "gain", "noise_variance", "seed")
    unc = parse_uncertainty(raw, *(kk_options.get(n) for n in unc_names[:4]),
                            seed=int(kk_options.get("seed", 0)))  # fmt: skip
    if unc.method == "analytic":
        raise InputError(
            "uncertainty='analytic' is not offered with deconvolve=: the Fourier-log's roll-off "
            "is not linearised; use uncertainty='replicas' (or 'replicas:K')"
        )
    if unc.method == "replicas" and kk_options.get("surface") == "fit":
        raise InputError(
            "uncertainty='replicas' with surface='fit': the film fit's eps would carry KK's "
            "sigma; use surface='iterate' for the sigmas"
        )
    kk = {k: v for k, v in kk_options.items() if k not in unc_names}

    def chain(image: xr.DataArray, options: Mapping[str, Any]) -> xr.Dataset:
        d = deconvolve(image, **{k[4:]: v for k, v in options.items() if k[:4] == "dec:"})
        return kramers_kronig(d, **{k[3:]: v for k, v in options.items() if k[:3] == "kk:"})

    options = {**{f"dec:{k}": v for k, v in dec.items()}, **{f"kk:{k}": v for k, v in kk.items()}}
    ds = chain(raw, options)
    ds.attrs["kk_deconvolved_with"] = json_options(dec)
    if unc.method is None:
        return ds
    targets = [t for t in sigma_targets if t in ds.data_vars]
    # the replicas need only the values: not the normalisation's systematic part
    systematic = ("kk:refractive_index_rel_sigma", "kk:thickness_rel_sigma")
    per_replica = {k: v for k, v in options.items() if k not in systematic}
    sigmas = chain_replica_sigmas(raw, chain, targets, unc, per_replica)
    label = f"replicas:{unc.n_replicas}"
    for name, sd in sigmas.items():
        da = xr.DataArray(sd, dims=ds[name].dims, coords=ds[name].coords)
        if name in ("eps2", "loss_function", "refractive_index"):
            # 0 in every replica: held there by the sign constraint, not a certainty
            da = da.where(da > 0)
        da.attrs = {
            "units": ds[name].attrs.get("units", ""),
            "long_name": f"sigma of {ds[name].attrs.get('long_name', name)}",
            "sigma_of": name,
            "part": "counting",
            "uncertainty": label,
            "covers": CHAIN_COVERS,
        }
        ds[sigma_name(name)] = da
    ds.attrs.update(unc.attrs())
    ds.attrs["uncertainty_chain"] = "recorded counts -> eelsgpu.deconvolve -> kramers_kronig"
    return ds


def json_options(options: Mapping[str, Any]) -> str:
    """The scalar options as text for the attrs (arrays named by their shape)."""
    parts = []
    for k, v in options.items():
        if isinstance(v, str | int | float | bool) or v is None:
            parts.append(f"{k}={v!r}")
        else:
            parts.append(f"{k}=<array {tuple(np.shape(v))}>")
    return ", ".join(parts)
