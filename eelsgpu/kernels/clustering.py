"""k-means assignment of a block of pixels, and per-cluster sums of spectra: pure kernels.

Lloyd's k-means (IEEE Trans. Inf. Theory 28, 129 (1982)): every pixel belongs to its nearest
centre in the model space (z-scored features, optionally projected on PCA axes). The centres are
fitted on a sample by :func:`eelsgpu.cluster` (:mod:`eelsgpu.analysis.clustering`); here
:func:`assign_kernel` labels a block of pixels (array API) and :func:`cluster_block_sums` adds
the spectra of each cluster in one block (host NumPy, a one-hot matrix product).

Examples
--------
>>> out = assign_kernel(np.array([[0.1, 0.0], [9.0, 1.0]]), np.arange(2.0),
...                     centres=np.array([[0.0, 0.0], [10.0, 0.0]]),
...                     mean=np.zeros(2), scale=np.ones(2))
>>> out["cluster"].tolist()
[0, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._xp import array_namespace
from .declare import BlockKernel, Output

__all__ = ["ASSIGN_BLOCK", "ASSIGN_OUTPUTS", "TILE_PIXELS", "assign_kernel", "cluster_block_sums"]


def assign_kernel(
    block: Any,
    energy_eV: Any,
    *,
    centres: Any,
    mean: Any,
    scale: Any,
    components: Any = None,
    normalise: bool = False,
    channels: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Nearest k-means centre of every pixel of a block (array API).

    The assignment step of Lloyd's k-means (IEEE Trans. Inf. Theory 28, 129 (1982)): features
    ``x`` are z-scored, ``z = (x - mean) / scale`` (optionally each spectrum divided by its sum
    first and projected on PCA axes), and each pixel takes the centre ``c`` of least
    ``|z - c|^2 = |z|^2 - 2 z.c + |c|^2``.

    Parameters
    ----------
    block : array (n_pixels, n_features)
        Spectra (counts) or stacked feature maps.
    energy_eV : array
        Unused (the engine's signature).
    centres : array (k, n_dims)
        Cluster centres in the model space.
    mean, scale : array (n_features,)
        Feature centring and scaling (z-score) fitted on the sample.
    components : array (n_dims, n_features), optional
        PCA axes: the model space is the projection on them.
    normalise : bool
        Divide each spectrum by its sum first (shape, not intensity, is compared).
    channels : (int, int), optional
        The energy channels used.

    Returns
    -------
    dict
        ``cluster`` (int32, -1 where a pixel has NaN features) and ``cluster_distance`` (distance
        to its centre in the model space, dimensionless: z-score units), each (n_pixels,).
    """
    xp = array_namespace(block)
    x = xp.astype(block, xp.float64)
    if channels is not None:
        x = x[:, int(channels[0]) : int(channels[1])]
    if normalise:
        total = xp.sum(x, axis=1, keepdims=True)
        x = x / xp.where(total != 0, total, xp.nan)
    ok = xp.all(xp.isfinite(x), axis=1)
    x = xp.where(xp.isfinite(x), x, 0.0)
    x = (x - mean[None, :]) / scale[None, :]
    if components is not None:
        x = x @ xp.matrix_transpose(components)
    c = xp.astype(centres, xp.float64)
    d2 = xp.sum(x * x, axis=1, keepdims=True) - 2.0 * (x @ xp.matrix_transpose(c))
    d2 = d2 + xp.sum(c * c, axis=1)[None, :]
    label = xp.astype(xp.argmin(d2, axis=1), xp.int32)
    dist = xp.sqrt(xp.clip(xp.min(d2, axis=1), 0.0, None))
    return {
        "cluster": xp.where(ok, label, xp.asarray(-1, dtype=xp.int32)),
        "cluster_distance": xp.where(ok, dist, xp.nan),
    }


def cluster_block_sums(block: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Sum of the spectra of each of ``k`` clusters in one block (host NumPy).

    Parameters
    ----------
    block : numpy.ndarray (..., n_E)
        Spectra, counts per channel; NaN counts as 0.
    labels : numpy.ndarray (...)
        Cluster of each pixel; pixels labelled outside ``0..k-1`` (-1: flagged) are left out.
    k : int
        Number of clusters.

    Returns
    -------
    numpy.ndarray (k, n_E)
        Summed counts per channel: ``onehot(labels)^T @ spectra``.
    """
    flat = np.asarray(block, dtype=np.float64).reshape(-1, block.shape[-1])
    lab = np.asarray(labels).reshape(-1)
    onehot = (lab[:, None] == np.arange(k)[None, :]).astype(np.float64)
    return onehot.T @ np.nan_to_num(flat)


# --------------------------------------------------------------------------- declaration
#: Spectra per CPU tile of :func:`assign_kernel`: None, the engine's default (about 1 MiB of
#: input per tile).
TILE_PIXELS: int | None = None

#: What :func:`assign_kernel` returns, one value per pixel.
ASSIGN_OUTPUTS: tuple[Output, ...] = (
    Output("cluster", "", "cluster", dtype="int32"),
    Output("cluster_distance", "", "distance to the cluster centre"),
)

#: :func:`assign_kernel` declared for the engine.
ASSIGN_BLOCK = BlockKernel(
    assign_kernel, outputs=ASSIGN_OUTPUTS, tile_pixels=TILE_PIXELS, name="cluster"
)
