"""PCA and NMF of a whole spectrum image, block-wise so that they scale; denoising.

The image is the matrix ``D`` (pixels x channels). Both methods see it one pixel block at a time:

* **PCA**: a randomised SVD of the (optionally Poisson-normalised) matrix with
  :func:`dask.array.linalg.svd_compressed` (Halko, Martinsson & Tropp, SIAM Rev. 53, 217 (2011)),
  which reads the blocks a few times (power iterations) and never forms ``D`` in memory. No mean
  is removed (as HyperSpy's default SVD), so ``k`` spectra mixed in a sample give ``k``
  significant components. ``explained_variance_ratio`` is ``s_i^2 / ||D~||_F^2``.
* **NMF**: scikit-learn's :class:`~sklearn.decomposition.MiniBatchNMF` fed block by block with
  ``partial_fit`` for a few epochs (factors), then non-negative loadings per pixel by
  multiplicative updates (Lee & Seung, NIPS 13, 556 (2001)) in an array-API kernel through the
  engine (:mod:`eelsgpu.kernels.decomposition`).
* **Poisson normalisation** (Keenan & Kotula, Surf. Interface Anal. 36, 203 (2004)):
  ``D~ = D / sqrt(g h^T)`` with ``g`` the mean counts of each pixel and ``h`` the mean spectrum,
  so that Poisson noise is about equally strong everywhere and the scree shows the noise floor
  flat. Factors and loadings are returned un-normalised: ``D ~= loadings @ factors``.

:func:`denoise` rebuilds the image from the first ``k`` components, lazily, block by block.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.model import spectrum_image
>>> rng = np.random.default_rng(0)
>>> maps, spectra = rng.random((8, 8, 2)), rng.random((2, 50))
>>> si = spectrum_image(rng.poisson(200 * maps @ spectra), np.arange(50.0))
>>> ds = decompose(si, "pca", n_components=2, device="cpu")
>>> bool(ds["explained_variance_ratio"][1] > 10 * ds["explained_variance_ratio"][2])
True
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ..engine import apply_kernel
from ..errors import InputError
from ..kernels.decomposition import PROJECT_BLOCK, nnls_loadings_block, reconstruct_block
from ..model import as_spectrum_image
from ._checks import positive_int

__all__ = ["METHODS", "decompose", "denoise", "poisson_weights"]

METHODS = ("pca", "nmf")


# --------------------------------------------------------------------------- public functions
def _matrix(si: xr.DataArray) -> da.Array:
    if si.ndim < 2 or si.dims[-1] != "energy":
        raise InputError(
            f"decomposition needs a spectrum image or line scan (..., energy), not dims {si.dims}"
            + (f" ({si.attrs['source']})" if si.attrs.get("source") else "")
        )
    data = si.data if isinstance(si.data, da.Array) else da.from_array(np.asarray(si.data))
    n_e = si.sizes["energy"]
    data = data.rechunk({data.ndim - 1: -1})
    if data.ndim == 2:
        return data
    # Pixels block by block (not in raster order): no rechunking into whole image rows, so the
    # memory per task stays one storage block. Only factors come from this matrix; loadings
    # are computed per block through the engine, in place.
    ny, nx = data.numblocks[:2]
    return da.concatenate(
        [data.blocks[i, j].reshape(-1, n_e) for i in range(ny) for j in range(nx)], axis=0
    )


def poisson_weights(si: xr.DataArray) -> tuple[np.ndarray, float]:
    """``sqrt(h)`` (mean spectrum, counts/channel, non-positive -> 1) and the mean of ``g``.

    Keenan & Kotula, Surf. Interface Anal. 36, 203 (2004).
    """
    mat = _matrix(si)
    h = mat.astype(np.float64).mean(axis=0).compute()
    if not np.all(np.isfinite(h)):
        raise InputError(
            "the spectrum image has NaN or infinite counts"
            + (f" ({si.attrs['source']})" if si.attrs.get("source") else "")
        )
    return np.sqrt(np.where(h > 0, h, 1.0)), float(h.mean())


def _pca(
    si: xr.DataArray,
    mat: da.Array,
    k: int,
    poisson: bool,
    n_scree: int,
    n_power_iter: int,
    seed: int,
    device: str,
) -> tuple[xr.Dataset, np.ndarray]:
    """Randomised SVD of the (Poisson-normalised) matrix; loadings block by block.

    Returns the Dataset with ``loadings`` and ``explained_variance_ratio``, and the factors.
    """
    n_pix, n_e = mat.shape
    sqrt_h, _ = poisson_weights(si) if poisson else (np.ones(n_e), 1.0)
    work = mat.astype(np.float64)
    if poisson:
        g = work.mean(axis=1)
        sqrt_g = da.sqrt(da.where(g > 0, g, 1.0))
        work = work / sqrt_g[:, None] / sqrt_h[None, :]
    rank = int(min(max(n_scree, k), n_pix, n_e))
    u, s, v = da.linalg.svd_compressed(
        work, k=rank, n_power_iter=n_power_iter, seed=seed, compute=False
    )
    total = (work**2).sum()
    s, v, total = da.compute(s, v, total)
    # Deterministic signs: each component's largest-|value| channel positive.
    sign = np.sign(v[np.arange(v.shape[0]), np.argmax(np.abs(v), axis=1)])
    sign[sign == 0] = 1.0
    v = v * sign[:, None]
    comps = v[:k]
    ds = apply_kernel(
        PROJECT_BLOCK,
        si,
        device=device,
        components=comps,
        energy_weight=sqrt_h,
        poisson=bool(poisson),
    )
    factors = comps * sqrt_h[None, :]
    scale = np.max(np.abs(factors), axis=1)
    scale[scale == 0] = 1.0
    ds["loadings"] = ds["loadings"] * scale  # keep D ~= loadings @ factors
    ds["loadings"].attrs.update(
        {"units": si.attrs.get("units", "counts"), "long_name": "PCA loading"}
    )
    factors = factors / scale[:, None]
    ds["explained_variance_ratio"] = xr.DataArray(
        s**2 / total,
        dims=("rank",),
        coords={"rank": np.arange(1, rank + 1)},
        attrs={"units": "1", "long_name": "explained variance ratio (of the normalised data)"},
    )
    return ds, factors


def _nmf(
    si: xr.DataArray,
    mat: da.Array,
    k: int,
    poisson: bool,
    epochs: int,
    nmf_iter: int,
    seed: int,
    device: str,
) -> tuple[xr.Dataset, np.ndarray]:
    """Mini-batch NMF over the pixel blocks (factors); non-negative loadings block by block.

    Returns the Dataset with ``loadings`` and ``residual_rms``, and the factors.
    """
    from sklearn.decomposition import MiniBatchNMF

    blocks = mat.clip(0, None).astype(np.float64)
    first = blocks.blocks[0].compute()
    batch = int(min(max(64, first.shape[0]), 1024))
    model = MiniBatchNMF(
        n_components=k,
        beta_loss="kullback-leibler" if poisson else "frobenius",
        batch_size=batch,
        init="nndsvda",
        random_state=seed,
        max_iter=1,
    )
    rng = np.random.default_rng(seed)
    n_blocks = blocks.numblocks[0]
    for _ in range(int(epochs)):
        for b in rng.permutation(n_blocks):
            chunk = first if b == 0 else blocks.blocks[int(b)].compute()
            for start in range(0, chunk.shape[0], batch):
                part = chunk[start : start + batch]
                if part.shape[0] >= k:
                    model.partial_fit(part)
    hmat = np.asarray(model.components_, dtype=np.float64)
    scale = hmat.max(axis=1)
    scale[scale <= 0] = 1.0
    factors = hmat / scale[:, None]
    ds = apply_kernel(
        nnls_loadings_block(si.attrs.get("units", "counts")),
        si,
        device=device,
        factors=factors,
        n_iter=nmf_iter,
        kl=bool(poisson),
    )
    return ds, factors


def decompose(
    si: xr.DataArray,
    method: str = "pca",
    n_components: int = 5,
    *,
    poisson: bool = True,
    n_scree: int = 20,
    n_power_iter: int = 3,
    epochs: int = 10,
    nmf_iter: int = 200,
    seed: int = 0,
    device: str = "auto",
) -> xr.Dataset:
    """PCA or NMF of a whole spectrum image, block-wise.

    Parameters
    ----------
    si : xarray.DataArray
        Spectrum image ``(y, x, energy)`` or line scan ``(x, energy)``, counts (lazy is fine).
    method : {"pca", "nmf"}
    n_components : int
        Components kept in ``loadings`` and ``factors``.
    poisson : bool
        PCA: Poisson-normalise (Keenan & Kotula 2004). NMF: fit the Poisson (generalised
        Kullback-Leibler) loss instead of least squares.
    n_scree : int
        PCA: singular values computed for the scree plot (>= n_components).
    n_power_iter : int
        PCA: power iterations of the randomised SVD (passes over the data).
    epochs : int
        NMF: passes of ``partial_fit`` over all pixel blocks.
    nmf_iter : int
        NMF: multiplicative updates of the per-pixel loadings.
    seed : int
        Random state of the randomised methods.
    device : {"auto", "cpu", "gpu"}
        Where the per-pixel kernels (projection, loadings) run.

    Returns
    -------
    xarray.Dataset
        ``loadings`` (``y, x, component``; counts), ``factors`` (``component, energy``; 1,
        each normalised to a maximum of 1) with ``D ~= loadings @ factors``;
        ``explained_variance_ratio`` (``rank``; PCA, of the normalised matrix) or
        ``residual_rms`` (NMF, per pixel, counts).
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, not {method!r}")
    si = as_spectrum_image(si, "decompose")
    n_scree = positive_int("n_scree", n_scree, 1)
    n_power_iter = positive_int("n_power_iter", n_power_iter, 0)
    epochs = positive_int("epochs", epochs, 1)
    nmf_iter = positive_int("nmf_iter", nmf_iter, 1)
    seed = positive_int("seed", seed, 0)
    mat = _matrix(si)
    n_pix, n_e = mat.shape
    k = positive_int("n_components", n_components, 1)
    if not 1 <= k <= min(n_pix, n_e):
        raise InputError(f"n_components must be 1..{min(n_pix, n_e)}, not {n_components}")
    energy_coord = si["energy"]
    attrs = {"analysis": "decomposition", "method": method, "poisson": bool(poisson)}
    if method == "pca":
        ds, factors = _pca(si, mat, k, poisson, n_scree, n_power_iter, seed, device)
    else:
        ds, factors = _nmf(si, mat, k, poisson, epochs, nmf_iter, seed, device)
    ds["factors"] = xr.DataArray(
        factors,
        dims=("component", "energy"),
        coords={"component": np.arange(k), "energy": energy_coord.values},
        attrs={"units": "1", "long_name": f"{method.upper()} factor (max 1)"},
    )
    ds["energy"].attrs.update(energy_coord.attrs)
    ds["component"] = np.arange(k)
    ds.attrs.update(attrs)
    return ds


def denoise(
    si: xr.DataArray,
    decomposition: xr.Dataset,
    n_components: int | None = None,
    *,
    device: str = "auto",
) -> xr.DataArray:
    """The image rebuilt from the first ``n_components`` components (lazy, block by block).

    Parameters
    ----------
    si : xarray.DataArray
        The image that was decomposed (gives the blocks and coordinates).
    decomposition : xarray.Dataset
        From :func:`decompose`.
    n_components : int, optional
        Components to keep (all by default): the number of significant ones on the scree.

    Returns
    -------
    xarray.DataArray
        ``denoised`` (same dims as ``si``; counts per channel).
    """
    si = as_spectrum_image(si, "denoise")
    k_all = decomposition.sizes["component"]
    k = k_all if n_components is None else positive_int("n_components", n_components, 1)
    if not 1 <= k <= k_all:
        raise InputError(f"n_components must be 1..{k_all} (the decomposition's), not {k}")
    loadings = decomposition["loadings"].isel(component=slice(0, k))
    factors = np.asarray(decomposition["factors"].isel(component=slice(0, k)).values)
    ds = apply_kernel(
        reconstruct_block(si.attrs.get("units", "counts"), decomposition.attrs.get("method", "")),
        si,
        device=device,
        extras={"loadings": loadings.data},
        factors=factors,
    )
    out = ds["denoised"]
    out.attrs.update({k2: v for k2, v in si.attrs.items() if k2 != "units"})
    return out
