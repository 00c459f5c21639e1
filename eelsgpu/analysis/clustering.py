"""Clustering: pixels grouped into regions of like spectrum, thickness, gap... by k-means.

The model is fitted on a random sample of pixels (scikit-learn's KMeans, or MiniBatchKMeans for
large samples; for whole spectra after a PCA of the sample that keeps the signal and drops most
of the noise), then every pixel is assigned to its nearest centre block by block through
:func:`eelsgpu.engine.apply_kernel` (:data:`eelsgpu.kernels.clustering.ASSIGN_BLOCK`), so an image of any size streams from disk once (and runs on
the GPU when there is one). The cluster-mean spectra are block-wise sums, and
:func:`per_cluster` runs any pipeline on each cluster's summed spectrum: the sum of hundreds of
pixels has far better counting statistics than one pixel (Lloyd, IEEE Trans. Inf. Theory 28, 129
(1982) for k-means; the per-cluster analysis as in EELSfitter, Roest et al., Ultramicroscopy 222,
113202 (2021)).

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> regions = np.zeros((6, 6), int); regions[:, 3:] = 1
>>> sim = synthetic.low_loss_image([synthetic.Drude(15.0, 1.0), synthetic.Drude(25.0, 3.0)],
...                                regions=regions, shape=(6, 6), n_channels=256,
...                                dispersion_eV=0.2, t_over_lambda=0.5, noise=True)
>>> ds = cluster(sim["signal"], n_clusters=2, device="cpu")
>>> sorted(np.unique(ds["cluster"].values).tolist())
[0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..engine import apply_kernel
from ..errors import InputError
from ..kernels.clustering import ASSIGN_BLOCK, cluster_block_sums
from ..model import as_spectrum_image, spectrum_image
from ._checks import positive_int

__all__ = ["DIM", "cluster", "cluster_sums", "per_cluster"]

_BIG_SAMPLE = 50_000  # above this, MiniBatchKMeans
#: The dimension along clusters (the map itself is the variable ``cluster``, so the dimension
#: needs another name).
DIM = "cluster_id"


def cluster_sums(
    si: xr.DataArray, labels: xr.DataArray | np.ndarray, n_clusters: int
) -> np.ndarray:
    """Sum of the spectra of each cluster, ``(n_clusters, n_energy)``, block by block.

    Pixels labelled -1 (flagged) are left out; each block's contribution is a one-hot matrix
    product, and the blocks' partial sums are added by dask, so the image is read once.
    """
    data = si.data if isinstance(si.data, da.Array) else da.from_array(np.asarray(si.data))
    if len(data.chunks[-1]) > 1:
        data = data.rechunk({data.ndim - 1: -1})
    lab = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if lab.shape != tuple(data.shape[:-1]):
        raise InputError(f"labels have shape {lab.shape}, the image's pixels {data.shape[:-1]}")
    lab_d = da.from_array(lab, chunks=data.chunks[:-1])
    parts = [
        dask.delayed(cluster_block_sums)(d, lb, int(n_clusters))
        for d, lb in zip(data.to_delayed().ravel(), lab_d.to_delayed().ravel(), strict=True)
    ]
    return np.asarray(dask.delayed(sum)(parts).compute())


def _spectra_of(si: xr.DataArray | xr.Dataset) -> xr.DataArray | None:
    if isinstance(si, xr.DataArray):
        return si if si.dims and si.dims[-1] == "energy" else None
    for name in ("signal", "ssd"):
        if name in si.data_vars:
            return si[name]
    return None


def _feature_maps(si, features, spectra) -> list[xr.DataArray]:
    maps = []
    for f in features:
        if isinstance(f, xr.DataArray):
            maps.append(f)
        elif f in ("integrated_intensity", "total_counts"):
            if spectra is None:
                raise InputError("integrated_intensity needs a spectrum image")
            m = spectra.sum("energy")
            m.attrs = {"units": "counts", "long_name": "integrated intensity"}
            maps.append(m.rename("integrated_intensity"))
        elif isinstance(si, xr.Dataset) and f in si.data_vars:
            maps.append(si[f])
        else:
            have = sorted(si.data_vars) if isinstance(si, xr.Dataset) else []
            raise InputError(
                f"feature {f!r} is not a variable of the input (it has {have}); give a "
                "DataArray, a variable name, 'integrated_intensity' or 'spectrum'"
            )
    for m in maps:
        if "energy" in m.dims:
            raise InputError(f"feature {m.name!r} is not a map (it has an energy axis)")
    return maps


def _kmeans(sample: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if sample.shape[0] < k:
        raise InputError(f"{sample.shape[0]} usable pixels cannot make {k} clusters")
    if sample.shape[0] > _BIG_SAMPLE:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=5, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=10)
    return model.fit(sample)


@dataclass
class _Features:
    """What the model is fitted on: ``work`` (``(..., energy)``: spectra, or maps stacked along
    a pseudo energy axis) and how its pixels are turned into feature vectors."""

    work: xr.DataArray
    use_spectrum: bool
    names: list[str]
    maps: list[xr.DataArray] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # of the assign kernel


def _spectrum_features(
    spectra: xr.DataArray | None, energy_range_eV: tuple[float, float] | None, source: str
) -> _Features:
    """Whole spectra over ``energy_range_eV``, each divided by its sum (in the kernel)."""
    if spectra is None:
        raise InputError(f"{source or 'the input'}: features='spectrum' needs a spectrum image")
    energy = np.asarray(spectra["energy"].values, float)
    if energy_range_eV is not None:
        c0, c1 = (
            np.searchsorted(energy, energy_range_eV[0]),
            np.searchsorted(energy, energy_range_eV[1], side="right"),
        )
    else:
        c0, c1 = 0, energy.size
    if c1 - c0 < 2:
        raise InputError(f"{source}: energy range {energy_range_eV} holds < 2 channels")
    return _Features(
        spectra, True, ["spectrum"], params={"normalise": True, "channels": (int(c0), int(c1))}
    )


def _map_features(si, features, spectra) -> _Features:
    """Feature maps stacked along a pseudo energy axis (one channel per map), float64, chunked."""
    maps = _feature_maps(si, list(features), spectra)
    names = [str(m.name) for m in maps]
    nav = maps[0].dims
    stack = xr.concat([m.reset_coords(drop=True) for m in maps], dim="energy")
    stack = stack.transpose(*nav, "energy").astype(np.float64)
    stack = stack.assign_coords(energy=np.arange(len(maps), dtype=float))
    if not isinstance(stack.data, da.Array):
        stack = stack.chunk({d: min(256, stack.sizes[d]) for d in nav})
    return _Features(stack, False, names, maps=maps)


def _draw_sample(work: xr.DataArray, sample_size: int, seed: int) -> tuple[np.ndarray, int]:
    """``sample_size`` pixels of ``work`` drawn at random (sorted), as a host array."""
    rng = np.random.default_rng(seed)
    nav_shape = tuple(work.shape[:-1])
    n_pix = int(np.prod(nav_shape)) if nav_shape else 1
    n_take = min(int(sample_size), n_pix)
    flat_idx = np.sort(rng.choice(n_pix, size=n_take, replace=False))
    data = work.data if isinstance(work.data, da.Array) else da.from_array(np.asarray(work.data))
    if len(nav_shape) >= 2:
        idx = np.unravel_index(flat_idx, nav_shape)
        sample = np.asarray(data.vindex[idx].compute(), dtype=np.float64)
    elif len(nav_shape) == 1:
        sample = np.asarray(data[flat_idx].compute(), dtype=np.float64)
    else:
        raise InputError("clustering needs more than one pixel")
    return sample, n_take


def _usable_sample(sample: np.ndarray, feats: _Features, k: int, source: str) -> np.ndarray:
    """The sample's feature vectors (spectra cut and divided by their sums), finite rows only."""
    if feats.use_spectrum:
        c0, c1 = feats.params["channels"]
        sample = sample[:, c0:c1]
        tot = sample.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            sample = sample / np.where(tot != 0, tot, np.nan)
    sample = sample[np.all(np.isfinite(sample), axis=1)]
    if sample.shape[0] < k:
        raise InputError(
            f"{source or 'the input'}: only {sample.shape[0]} usable pixels for {k} clusters"
        )
    return sample


@dataclass
class _Model:
    """The fitted model: z-scoring, optional PCA axes, the k-means fit and its sorted centres."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray | None
    kmeans: Any
    centres: np.ndarray


def _fit_model(
    sample: np.ndarray,
    k: int,
    seed: int,
    use_spectrum: bool,
    n_components: int | None,
    *,
    progress: bool = False,
) -> _Model:
    """z-score the sample (one scale for spectra, one per map), PCA for spectra, k-means; the
    centres numbered by increasing first coordinate. ``progress``: a bar over the two steps (the
    fit has no blocks to count), shown as soon as it starts."""
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(
            total=2,
            desc=f"fitting the model to {sample.shape[0]:,} spectra",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        bar.set_postfix_str("PCA" if use_spectrum and n_components else "scaling")
    mean = sample.mean(axis=0)
    if use_spectrum:
        scale = np.full(sample.shape[1], float(np.std(sample - mean)) or 1.0)
    else:
        scale = sample.std(axis=0)
        scale[scale == 0] = 1.0
    z = (sample - mean) / scale
    components = None
    if use_spectrum and n_components:
        from sklearn.decomposition import PCA

        n_comp = int(min(n_components, z.shape[0], z.shape[1]))
        pca = PCA(n_components=n_comp, random_state=seed).fit(z)
        components = pca.components_
        z = z @ components.T
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(f"k-means, k = {k}")
    km = _kmeans(z, k, seed)
    if bar is not None:
        bar.update(1)
        bar.close()
    centres = km.cluster_centers_
    order = np.argsort(centres[:, 0], kind="stable")
    return _Model(mean, scale, components, km, centres[order])


def _label_dataset(labelled: xr.Dataset, k: int) -> xr.Dataset:
    """The labels (computed), distances (lazy) and cluster sizes."""
    labels = labelled["cluster"].compute()
    sizes = np.array([(labels.values == i).sum() for i in range(k)], dtype=np.int64)
    return xr.Dataset(
        {
            "cluster": labels.assign_attrs(
                units="", long_name="cluster", flag_values=-1, flag_meanings="no_features"
            ),
            "cluster_distance": labelled["cluster_distance"],
            "cluster_size": (DIM, sizes, {"units": "pixels", "long_name": "cluster size"}),
        },
        coords={DIM: (DIM, np.arange(k), {"long_name": "cluster number"})},
    )


def _add_centres(ds: xr.Dataset, feats: _Features, model: _Model) -> None:
    """``cluster_centre_<name>`` per map feature, in the feature's unit."""
    # one variable per feature (a string coordinate would be an unstable zarr v3 dtype)
    centre_units = model.centres * model.scale + model.mean
    for j, (name, m) in enumerate(zip(feats.names, feats.maps, strict=True)):
        ds[f"cluster_centre_{name}"] = (
            DIM,
            centre_units[:, j],
            {
                "units": m.attrs.get("units", ""),
                "long_name": f"cluster centre: {m.attrs.get('long_name', name)}",
            },
        )


def _add_mean_spectra(ds: xr.Dataset, spectra: xr.DataArray, k: int) -> None:
    """``cluster_mean_spectrum`` (cluster_id, energy): each cluster's summed spectrum / size."""
    sums = cluster_sums(spectra, ds["cluster"], k)
    sizes = ds["cluster_size"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / np.where(sizes > 0, sizes, np.nan)[:, None]
    ds["cluster_mean_spectrum"] = xr.DataArray(
        means,
        dims=(DIM, "energy"),
        coords={"energy": spectra["energy"].values},
        attrs={
            "units": spectra.attrs.get("units", "counts"),
            "long_name": "cluster-mean spectrum",
        },
    )
    ds["energy"].attrs.update(spectra["energy"].attrs)


def _energy_range(value: Any) -> tuple[float, float]:
    """``(lo_eV, hi_eV)`` as two finite numbers with lo < hi."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"energy_range_eV must be (lo_eV, hi_eV), not {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"energy_range_eV must be (lo_eV, hi_eV) with lo < hi, not {value!r}")
    return lo, hi


def cluster(
    si: xr.DataArray | xr.Dataset,
    n_clusters: int = 3,
    features: str | Sequence[str | xr.DataArray] = "spectrum",
    *,
    sample_size: int = 20_000,
    seed: int = 0,
    energy_range_eV: tuple[float, float] | None = None,
    n_components: int | None = 8,
    device: str = "auto",
    progress: bool = False,
) -> xr.Dataset:
    """Group the pixels of a spectrum image (or of result maps) into ``n_clusters`` by k-means.

    Parameters
    ----------
    si : xarray.DataArray or Dataset
        A spectrum image, or a Dataset holding one (``signal``) and/or feature maps.
    n_clusters : int
        k.
    features : "spectrum" or sequence
        ``"spectrum"``: each spectrum divided by its sum (over ``energy_range_eV``), reduced by
        a PCA to ``n_components`` dimensions; or maps: names of variables of ``si`` (e.g.
        ``"t_over_lambda"``, ``"bandgap_eV"``), ``"integrated_intensity"``, or DataArrays,
        each standardised (z-score) so no unit dominates.
    sample_size : int
        Pixels the model is fitted on (drawn at random with ``seed``); every pixel is then
        assigned.
    seed : int
        Random seed (sampling and k-means initialisation).
    energy_range_eV : (float, float), optional
        Channels used for ``"spectrum"`` features (default all).
    n_components : int or None
        PCA dimensions for ``"spectrum"`` (None: no PCA).
    device : {"auto", "cpu", "gpu"}
    progress : bool
        Show a bar (stderr) through the model's fit (PCA, then k-means on the sample): it holds
        no blocks to count, and takes seconds on a large sample.

    Returns
    -------
    xarray.Dataset
        ``cluster`` (y, x) int32 (-1 where the features are NaN), ``cluster_distance`` (y, x),
        ``cluster_size`` (cluster_id), ``cluster_mean_spectrum`` (cluster_id, energy; counts per
        channel, mean over the cluster's pixels, when a spectrum image is at hand) and, for map
        features, ``cluster_centre_<name>`` (cluster_id; in the feature's unit). Clusters are numbered by
        increasing first coordinate of their centre (the first feature or principal component).
    """
    k = positive_int("n_clusters", n_clusters, 1)
    sample_size = positive_int("sample_size", sample_size, 2)
    seed = positive_int("seed", seed, 0)
    if n_components is not None:
        n_components = positive_int("n_components", n_components, 1)
    if energy_range_eV is not None:
        lo, hi = _energy_range(energy_range_eV)
        energy_range_eV = (lo, hi)
    if isinstance(si, xr.DataArray):
        si = as_spectrum_image(si, "cluster")
    elif not isinstance(si, xr.Dataset):
        as_spectrum_image(si, "cluster")  # the message for anything else
    spectra = _spectra_of(si)
    attrs_src = dict((spectra if spectra is not None else si).attrs)
    source = attrs_src.get("source", "")
    use_spectrum = isinstance(features, str)
    if use_spectrum and features != "spectrum":
        features = [features]
        use_spectrum = False
    if use_spectrum:
        feats = _spectrum_features(spectra, energy_range_eV, source)
    else:
        feats = _map_features(si, features, spectra)

    sample, n_take = _draw_sample(feats.work, sample_size, seed)
    sample = _usable_sample(sample, feats, k, source)
    model = _fit_model(sample, k, seed, feats.use_spectrum, n_components, progress=progress)

    labelled = apply_kernel(
        ASSIGN_BLOCK,
        feats.work,
        device=device,
        centres=model.centres,
        mean=model.mean,
        scale=model.scale,
        components=model.components,
        **feats.params,
    )
    ds = _label_dataset(labelled, k)
    if not feats.use_spectrum:
        _add_centres(ds, feats, model)
    if spectra is not None and spectra.dims[:-1] == ds["cluster"].dims:
        _add_mean_spectra(ds, spectra, k)
    ds.attrs.update({k_: v for k_, v in attrs_src.items() if k_ != "units"})
    ds.attrs.update(
        analysis="cluster",
        cluster_method="k-means (scikit-learn)",
        cluster_n_clusters=k,
        cluster_features=feats.names,
        cluster_sample_size=int(n_take),
        cluster_seed=int(seed),
        cluster_inertia=float(model.kmeans.inertia_),
        cluster_pca_components=0 if model.components is None else int(model.components.shape[0]),
    )
    return ds


def per_cluster(
    si: xr.DataArray,
    labels: xr.DataArray | xr.Dataset | np.ndarray,
    pipeline: Callable[..., xr.Dataset],
    *,
    n_clusters: int | None = None,
    **params: Any,
) -> xr.Dataset:
    """Run ``pipeline`` on the summed spectrum of each cluster.

    Parameters
    ----------
    si : xarray.DataArray
        The spectrum image (counts).
    labels : DataArray, Dataset from :func:`cluster`, or array
        Cluster of each pixel (-1 left out).
    pipeline : callable
        Any eelsgpu analysis taking a spectrum image first (``eelsgpu.thickness``,
        ``eelsgpu.kramers_kronig``, ``eelsgpu.bandgap``...).
    n_clusters : int, optional
        Default: max label + 1.
    **params
        Passed to ``pipeline``.

    Returns
    -------
    xarray.Dataset
        The pipeline's result with a ``cluster_id`` dimension (one entry per cluster), and
        ``cluster_size``.

    Examples
    --------
    >>> res = per_cluster(si, ds, eelsgpu.bandgap, window_eV=(1, 4))  # doctest: +SKIP
    """
    if isinstance(labels, xr.Dataset):
        labels = labels["cluster"]
    lab = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    k = int(n_clusters) if n_clusters is not None else int(lab.max()) + 1
    sums = cluster_sums(si, lab, k)
    sizes = np.array([(lab == i).sum() for i in range(k)], dtype=np.int64)
    attrs = {a: v for a, v in si.attrs.items() if a not in ("units", "dispersion_eV")}
    summed = spectrum_image(
        sums,
        si["energy"].values,
        dtype=si.dtype,
        attrs={**attrs, "units": si.attrs.get("units", "counts")},
    )
    result = pipeline(summed, **params)
    result = result.rename({"x": DIM}) if "x" in result.dims else result
    result = result.drop_vars(DIM, errors="ignore").assign_coords({DIM: np.arange(k)})
    result["cluster_size"] = (DIM, sizes, {"units": "pixels", "long_name": "cluster size"})
    result.attrs["per_cluster"] = "pipeline run on the summed spectrum of each cluster"
    return result
